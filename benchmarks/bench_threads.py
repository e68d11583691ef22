"""llama.cpp beside torch in one process: decoding before and after the embedder has run.

torch ships its own ``libgomp.so.1``, so a llama.cpp built with OpenMP shares torch's OpenMP
runtime in any process that runs both (a docs chatbot, ``hearth serve``, the test suite). Once
torch has run in parallel, that runtime counts more threads than cores and throttles the spinning
at its barriers, so llama.cpp's threads sleep and wake at every step of every token. A llama.cpp
built with its own thread pool (``-DGGML_OPENMP=OFF``, as ``make install`` builds it) does not
share it.

For each llama.cpp install (this environment's, and each ``--compare DIR``: a llama-cpp-python
installed with ``pip install --target DIR``), fresh processes load the packaged GGUF and decode
greedy tokens from each prompt on the in-process backend or on the batched engine (one stream,
``llm.parallel`` 8, as ``hearth serve`` runs it): one never loads torch (the baseline), the other
first embeds passages with the packaged embedder, as a docs chatbot does. (Two llama.cpp contexts
decoding from two threads share an OpenMP runtime the same way, so each engine has a process.)

    python benchmarks/bench_threads.py [--quick] [--save] [--compare DIR ...] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, parser, report_to_parent, run_child

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market.",
]
PASSAGES = [f"Passage {i}: the keeper climbs the tower and trims the lamp." for i in range(64)]


ENGINES = {"in_process": 1, "batched": 8}  # llm.parallel


def child(args: Any) -> dict[str, Any]:
    """One engine's decode rate; with ``--embedder-first``, after the embedder has run."""
    tokens, prompts = args.tokens, args.prompts
    if args.embedder_first:  # as a docs chatbot runs: the index's embedder, then the chat model
        from hearthlm.retrieval.embeddings import HearthEmbeddings

        HearthEmbeddings().embed_documents(PASSAGES)
    from hearthlm.config import LLMConfig, SamplingConfig
    from hearthlm.llm.llamacpp_backend import LlamaCppBackend, warn_if_openmp
    from hearthlm.llm.text import render_chat

    backend = LlamaCppBackend.load(LLMConfig(threads=args.threads, parallel=ENGINES[args.child]))
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=tokens)

    def rate(backend: LlamaCppBackend) -> float:
        produced, seconds = 0, 0.0
        for prompt in PROMPTS[:prompts]:
            text = render_chat(backend.chat_template, [{"role": "user", "content": prompt}])
            ids = backend.tokenize(text)
            start = time.perf_counter()
            for _ in zip(range(tokens), backend.generate(ids, sampling), strict=False):
                produced += 1
            seconds += time.perf_counter() - start
        return round(produced / seconds, 1)

    rate(backend)  # warm-up
    out = {"tokens_per_s": rate(backend), "openmp": warn_if_openmp()}
    backend.close()
    return out


def measure(install: str | None, args: Any) -> dict[str, Any]:
    """Tokens/s of each engine alone and after the embedder ran, each in a fresh process."""
    out: dict[str, Any] = {}
    for engine in ENGINES:
        alone = _child(install, args, engine, embedder_first=False)
        after = _child(install, args, engine, embedder_first=True)
        out[engine] = {
            "tokens_per_s_alone": alone["tokens_per_s"],
            "tokens_per_s_after_embedder": after["tokens_per_s"],
            "after_vs_alone": round(after["tokens_per_s"] / alone["tokens_per_s"], 2),
        }
        out["openmp"] = alone["openmp"]
    return out


def _child(install: str | None, args: Any, engine: str, embedder_first: bool) -> dict[str, Any]:
    env = dict(os.environ)
    if install:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [install, env.get("PYTHONPATH")]))
    options = ["--tokens", str(args.tokens), "--prompts", str(args.prompts)]
    options += ["--embedder-first"] if embedder_first else []
    options += ["--threads", str(args.threads)] if args.threads else []
    return run_child(__file__, engine, *options, env=env)


def main() -> None:
    p = parser(__doc__.splitlines()[0], threads=True)
    p.add_argument("--compare", nargs="*", default=[], help="other llama-cpp-python installs")
    p.add_argument("--child", choices=ENGINES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--tokens", type=int, default=None, help="greedy tokens per prompt")
    p.add_argument("--prompts", type=int, default=None, help="prompts per measurement")
    p.add_argument("--embedder-first", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.tokens = args.tokens or (32 if args.quick else 128)
    args.prompts = args.prompts or (1 if args.quick else len(PROMPTS))
    if args.child:
        report_to_parent(child(args))
        return
    figures: dict[str, Any] = {"tokens": args.tokens, "prompts": args.prompts}
    figures["threads"] = args.threads or os.cpu_count()
    figures["this environment"] = measure(None, args)
    for install in args.compare:
        figures[install] = measure(install, args)
    emit("bench_threads", figures, args.save)


if __name__ == "__main__":
    main()
