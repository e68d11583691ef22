"""The batched engine without HTTP: 8 streams on one llama.cpp context, and the batch order.

Two measurements on the packaged GGUF, greedy, 8 long-answer prompts, 128 new tokens each:

- **batch order** (llama.cpp alone, called from one thread, no scheduler): 8 sequences decoded
  one token each per ``llama_decode``, the batch's tokens in their sequence ids' order or in a
  fixed shuffle of it, the two taking turns round by round. The scheduler lays its batches out
  in slot order because of this figure: a request that reuses a cached prompt lands in its old
  slot, so arrival order and slot order part from the second round of requests on.
- **the engine** (``hearthlm.llm.batching``, as ``hearth serve`` runs it): 1 and then 8 threads
  calling ``generate`` at once, 3 rounds of 8 (the later rounds reuse the cached prompts, as a
  server's clients do). Its 8-stream rate against its 1-stream rate is the most batching can add
  to ``hearth serve``; ``bench_serve.py`` measures what HTTP, LangChain and the client leave.

    python benchmarks/bench_engine.py [--quick] [--save] [--threads N] [--flash-attention]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, parser
from bench_serve import PROMPTS

SHUFFLE = [3, 0, 6, 1, 7, 2, 5, 4]  # a fixed order of the 8 sequence ids


def batch_order(
    backend: Any, prompts: list[list[int]], threads: int, flash: bool, tokens: int, rounds: int
) -> dict:
    from hearthlm.config import SamplingConfig
    from hearthlm.llm.llama_batch import BatchContext, Sampler, model_of

    context = BatchContext(
        model_of(backend.llm),
        n_seq=8,
        n_ctx_seq=2048,
        n_batch=512,
        threads=threads,
        flash_attention=flash,
    )

    def one_round(order: list[int]) -> float:
        samplers = [Sampler(context.vocab, context.n_vocab, SamplingConfig()) for _ in order]
        try:
            for seq in range(8):
                context.forget(seq)
            items = [
                (t, i, seq, i == len(p) - 1)
                for seq, p in enumerate(prompts)
                for i, t in enumerate(p)
            ]
            context.decode(items)
            last = [j for j, item in enumerate(items) if item[3]]
            next_tokens = [samplers[seq].sample(context, last[seq]) for seq in range(8)]
            positions = [len(p) for p in prompts]
            start = time.perf_counter()
            for _ in range(tokens - 1):
                context.decode([(next_tokens[s], positions[s], s, True) for s in order])
                for index, seq in enumerate(order):
                    next_tokens[seq] = samplers[seq].sample(context, index)
                    positions[seq] += 1
            return 8 * (tokens - 1) / (time.perf_counter() - start)
        finally:
            for sampler in samplers:
                sampler.close()

    rates: dict[str, list[float]] = {"slot order": [], "shuffled": []}
    try:
        for _ in range(rounds):
            rates["slot order"].append(one_round(list(range(8))))
            rates["shuffled"].append(one_round(SHUFFLE))
    finally:
        context.close()
    out: dict[str, Any] = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    out["rounds"] = {k: [round(x, 1) for x in v] for k, v in rates.items()}
    out["slot_order_vs_shuffled"] = round(out["slot order"] / out["shuffled"], 2)
    return out


def engine(backend: Any, prompts: list[list[int]], tokens: int, rounds: int) -> dict:
    from hearthlm.config import SamplingConfig

    def stream(i: int, counts: list[int]) -> None:
        for n, _ in enumerate(backend.generate(prompts[i], SamplingConfig()), start=1):
            counts[i] = n
            if n >= tokens:
                break

    def one_round(streams: int) -> float:
        counts = [0] * streams
        workers = [threading.Thread(target=stream, args=(i, counts)) for i in range(streams)]
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(counts) / (time.perf_counter() - start)

    single = [one_round(1) for _ in range(rounds)]
    eight = [one_round(8) for _ in range(rounds)]
    out: dict[str, Any] = {
        "1 stream": round(statistics.median(single), 1),
        "8 streams": round(statistics.median(eight), 1),
        "rounds": {"1 stream": [round(x, 1) for x in single], "8": [round(x, 1) for x in eight]},
    }
    out["8_vs_1"] = round(out["8 streams"] / out["1 stream"], 2)
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0], threads=True)
    p.add_argument("--flash-attention", action="store_true", help="llm.flash_attention on")
    args = p.parse_args()
    import os

    from hearthlm.config import LLMConfig
    from hearthlm.llm.llamacpp_backend import LlamaCppBackend
    from hearthlm.llm.text import render_chat

    threads = args.threads or os.cpu_count() or 1
    tokens, rounds = (32, 2) if args.quick else (128, 3)
    config = LLMConfig(
        backend="llamacpp", parallel=8, threads=threads, flash_attention=args.flash_attention
    )
    backend = LlamaCppBackend.load(config)
    try:
        prompts = [  # the model's own chat template, as ChatHearth renders it
            backend.tokenize(render_chat(backend.chat_template, [{"role": "user", "content": p}]))
            for p in PROMPTS
        ]
        figures = {
            "tokens": tokens,
            "threads": threads,
            "flash_attention": args.flash_attention,
            "batch order": batch_order(
                backend, prompts, threads, args.flash_attention, tokens, rounds
            ),
            "engine": engine(backend, prompts, tokens, rounds),
        }
    finally:
        backend.close()
    emit("bench_engine", figures, args.save)


if __name__ == "__main__":
    main()
