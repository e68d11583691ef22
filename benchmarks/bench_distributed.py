"""Data-parallel training on CPU processes: the same 12-step LoRA run on DialogSum as one process
with a batch of 4 and as two processes (``--num-processes 2``, gloo) with a batch of 2 each, every
process on one thread. Reports each run's tokens/s (every token through the model over the
training time, from ``hearth_finetune.json``), the scaling efficiency ``tokens_per_s_2 / (2 x
tokens_per_s_1)``, and the largest difference between the two runs' losses at any step.

The runs alternate, ``--rounds`` times each, and each keeps its best speed (the machine is
shared); the losses are those of the first round (every round trains the same numbers).

    python benchmarks/bench_distributed.py [--quick] [--save] [--rounds N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, emit, needs, parser

DIALOGSUM = DATA / "dialogsum" / "dialogsum.dev.jsonl"
TEMPLATE = "Summarize the following conversation.\n\n{dialogue}"


def train(processes: int, steps: int, global_batch: int, rows: int) -> dict:
    """One ``hearth finetune lora`` run; its result and per-step losses."""
    out = Path(tempfile.mkdtemp()) / f"p{processes}"
    command = [
        sys.executable, "-m", "hearthlm.cli", "finetune", "lora",
        "--data", str(DIALOGSUM), "--template", TEMPLATE, "--completion-field", "summary",
        "--limit", str(rows), "--mix-total", str(rows), "--max-length", "384",
        "--validation", "0",
        "--max-steps", str(steps), "--batch-size", str(global_batch // processes),
        "--dropout", "0", "--bf16", "off", "--save-every", "1000", "--eval-every", "1000",
        "--out", str(out), "--num-processes", str(processes),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{processes}-process run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    result = json.loads((out / "hearth_finetune.json").read_text(encoding="utf-8"))["result"]
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {**result, "losses": [json.loads(line)["train_loss"] for line in lines]}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rounds", type=int, default=2, help="runs of each, best speed kept")
    args = p.parse_args()
    needs(DIALOGSUM)
    steps = 3 if args.quick else 12
    global_batch, rows = 4, 32
    best: dict[int, float] = {}
    losses: dict[int, list[float]] = {}
    for _ in range(1 if args.quick else args.rounds):
        for processes in (1, 2):
            run = train(processes, steps, global_batch, rows)
            best[processes] = max(best.get(processes, 0.0), float(run["tokens_per_s"]))
            losses.setdefault(processes, run["losses"])
    difference = max(abs(a - b) for a, b in zip(losses[1], losses[2], strict=True))
    emit(
        "bench_distributed",
        {
            "steps": steps,
            "global_batch": global_batch,
            "max_length": 384,
            "threads_per_process": 1,
            "tokens_per_s_1": round(best[1], 1),
            "tokens_per_s_2": round(best[2], 1),
            "scaling_efficiency": round(best[2] / (2 * best[1]), 3),
            "max_loss_difference": round(difference, 7),
            "final_loss_1": losses[1][-1],
            "final_loss_2": losses[2][-1],
            "targets": {"scaling_efficiency": ">= 0.8", "max_loss_difference": "<= 1e-4"},
        },
        args.save,
    )


if __name__ == "__main__":
    main()
