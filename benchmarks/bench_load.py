"""Load time of the transformers backend: the first load (GGUF dequantized and cached as
safetensors) against later loads (the cached copy read back).

Baseline, in the same run: transformers reading the packaged GGUF itself
(``from_pretrained(dir, gguf_file=…)``), which is what every load would cost without the cache.
The cache folder is a fresh temporary one, so the first load really converts. The README quotes
"later loads take about 0.4 s" from this benchmark; the test suite checks only that a second load
reads the cache (a time limit in a test fails on a busy shared machine).

    python benchmarks/bench_load.py [--quick] [--save]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, median_of, parser, timed


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hearthlm.llm import ChatHearth
    from hearthlm.llm.sources import resolve_model

    repeats = 1 if args.quick else 3
    gguf = resolve_model(None).path

    def raw_gguf() -> float:
        seconds, _ = timed(
            lambda: (
                AutoModelForCausalLM.from_pretrained(
                    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
                ),
                AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name),
            )
        )
        return seconds

    with tempfile.TemporaryDirectory() as cache:
        first_s, _ = timed(lambda: ChatHearth(backend="transformers", cache_dir=cache).load())
        cached_s = median_of(
            repeats,
            lambda: timed(lambda: ChatHearth(backend="transformers", cache_dir=cache).load())[0],
        )
    raw_s = median_of(repeats, raw_gguf)
    figures = {
        "repeats": repeats,
        "first_load_s": first_s,
        "cached_load_s": cached_s,
        "raw_gguf_load_s": raw_s,
        "speedup_cached_vs_raw_gguf": raw_s / cached_s,
    }
    emit(
        "bench_load",
        {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()},
        args.save,
    )


if __name__ == "__main__":
    main()
