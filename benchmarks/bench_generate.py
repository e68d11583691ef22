"""Decode speed and time to first token, per backend, through ChatHearth and the raw library.

Baselines, in the same run and on the same prompt ids: ``model.generate`` (transformers) and
``llama_cpp.Llama.create_completion`` (llama.cpp). Greedy decoding, so both sides produce the same
tokens. llama.cpp's prompt cache is reset before every timed call so no run reuses another's work.

    python benchmarks/bench_generate.py [--quick] [--save]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, median_of, parser, timed

PROMPT = "Write a long story about a dragon who learns to bake bread."


def chat_figures(chat, n_tokens: int, reset, repeats: int) -> dict[str, float]:
    """TTFT from the first streamed chunk; decode rate over the rest of an invoke."""
    import time

    def ttft() -> float:
        reset()
        start = time.perf_counter()
        next(iter(chat.stream(PROMPT, max_new_tokens=n_tokens)))
        return time.perf_counter() - start

    def decode() -> float:
        first = ttft_s
        reset()
        seconds, reply = timed(lambda: chat.invoke(PROMPT, max_new_tokens=n_tokens))
        n = reply.usage_metadata["output_tokens"]
        return (n - 1) / (seconds - first)

    chat.invoke(PROMPT, max_new_tokens=4)  # warm-up: first-call allocations are not decode speed
    ttft_s = median_of(repeats, ttft)
    return {"ttft_s": ttft_s, "tokens_per_s": median_of(repeats, decode)}


def raw_figures(run, n_tokens: int, repeats: int) -> dict[str, float]:
    """TTFT as a one-token call; decode rate over the rest. ``run(max_new) -> (seconds, n)``."""
    run(4)  # warm-up
    ttft_s = median_of(repeats, lambda: run(1)[0])

    def decode() -> float:
        seconds, n = run(n_tokens)
        return (n - 1) / (seconds - ttft_s)

    return {"ttft_s": ttft_s, "tokens_per_s": median_of(repeats, decode)}


def raw_llamacpp(llm, prompt_ids, n_tokens: int, repeats: int) -> dict[str, float]:
    def run(max_tokens: int) -> tuple[float, int]:
        llm.reset()  # no prompt-cache reuse between timed calls
        seconds, out = timed(
            lambda: llm.create_completion(
                prompt_ids, max_tokens=max_tokens, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0
            )
        )
        return seconds, out["usage"]["completion_tokens"]

    return raw_figures(run, n_tokens, repeats)


def raw_transformers(model, prompt_ids, n_tokens: int, repeats: int) -> dict[str, float]:
    import torch

    ids = torch.tensor([prompt_ids])

    def run(max_new: int) -> tuple[float, int]:
        with torch.inference_mode():
            seconds, out = timed(
                lambda: model.generate(ids, max_new_tokens=max_new, do_sample=False)
            )
        return seconds, out.shape[1] - ids.shape[1]

    return raw_figures(run, n_tokens, repeats)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    from langchain_core.messages import HumanMessage

    from hearthlm.llm import ChatHearth

    n_tokens, repeats = (32, 1) if args.quick else (128, 3)
    figures: dict[str, float | int] = {"new_tokens": n_tokens, "repeats": repeats}

    llama = ChatHearth(backend="llamacpp")
    engine = llama.engine
    prompt_ids = llama._planner.prepare([HumanMessage(PROMPT)], {}).prompt_ids
    chat = chat_figures(llama, n_tokens, engine.llm.reset, repeats)
    raw = raw_llamacpp(engine.llm, prompt_ids, n_tokens, repeats)
    figures |= {
        "llamacpp_chat_tokens_per_s": chat["tokens_per_s"],
        "llamacpp_raw_tokens_per_s": raw["tokens_per_s"],
        "llamacpp_chat_ttft_s": chat["ttft_s"],
        "llamacpp_raw_ttft_s": raw["ttft_s"],
        "overhead_llamacpp": raw["tokens_per_s"] / chat["tokens_per_s"] - 1,
    }

    for dtype in ("float32",) if args.quick else ("float32", "bfloat16"):
        hf = ChatHearth(backend="transformers", dtype=dtype)
        hf.load()  # before timing
        chat = chat_figures(hf, n_tokens, lambda: None, repeats)
        raw = raw_transformers(hf.engine.model, prompt_ids, n_tokens, repeats)
        tag = "transformers" if dtype == "float32" else "transformers_bf16"
        figures |= {
            f"{tag}_chat_tokens_per_s": chat["tokens_per_s"],
            f"{tag}_raw_tokens_per_s": raw["tokens_per_s"],
            f"{tag}_chat_ttft_s": chat["ttft_s"],
            f"{tag}_raw_ttft_s": raw["ttft_s"],
            f"overhead_{tag}": raw["tokens_per_s"] / chat["tokens_per_s"] - 1,
        }
    figures["speedup_llamacpp_vs_transformers_fp32"] = (
        figures["llamacpp_chat_tokens_per_s"] / figures["transformers_chat_tokens_per_s"]
    )
    emit(
        "bench_generate",
        {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
        args.save,
    )


if __name__ == "__main__":
    main()
