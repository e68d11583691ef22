"""Peak memory of LoRA training with and without activation checkpointing: the same DialogSum
dialogues, batch and steps, each run in its own process so its peak resident memory is its own.
The baseline is the default (no checkpointing).

    python benchmarks/bench_train_memory.py [--quick] [--save] [--steps N]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, parser, report_to_parent, run_child
from bench_finetune import hearth

BATCH, MAX_LENGTH, ROWS = 8, 512, 32


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--child", choices=["plain", "checkpointed"], default=None)
    args = p.parse_args()
    steps = args.steps or (1 if args.quick else 2)
    if args.child:
        report_to_parent(
            hearth("lora", steps, BATCH, ROWS, MAX_LENGTH, args.child == "checkpointed")
        )
        return
    figures: dict[str, object] = {"steps": steps, "batch_size": BATCH, "max_length": MAX_LENGTH}
    for child in ("plain", "checkpointed"):
        for key, value in run_child(__file__, child, "--steps", str(steps)).items():
            figures[f"lora_{child}_{key}"] = value
    for figure, key in (("memory", "peak_rss_mb"), ("speed", "tokens_per_s")):
        plain, checkpointed = figures[f"lora_plain_{key}"], figures[f"lora_checkpointed_{key}"]
        figures[f"checkpointed_{figure}_ratio"] = round(float(checkpointed) / float(plain), 3)
    emit("bench_train_memory", figures, args.save)


if __name__ == "__main__":
    main()
