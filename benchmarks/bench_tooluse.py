"""Teaching the default model to use the calculator: GSM8K train solutions become ReAct traces
(each ``<<expr=result>>`` annotation one calculator call), LoRA is trained on them, and
ReAct-with-calculator accuracy on GSM8K test_300 is measured before and after.

Both models run as f16 GGUF exports on llama.cpp, so the comparison is the adapter alone.

    python benchmarks/bench_tooluse.py [--quick] [--save] [--traces N] [--steps N] [--limit N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, emit, needs, parser

GSM8K = DATA / "gsm8k"


def react_accuracy(
    gguf: Path, rows: list[dict], label: str, threads: int | None
) -> dict[str, float]:
    from rich.progress import track

    from hearthlm.agents.cot import extract_answer, normalise_number
    from hearthlm.agents.react import ReActAgent
    from hearthlm.agents.tools import calculator_tool
    from hearthlm.llm import ChatHearth

    chat = ChatHearth(backend="llamacpp", model=str(gguf), threads=threads)
    agent = ReActAgent(chat, [calculator_tool()])
    correct, steps, valid, start = 0, 0, 0, time.perf_counter()
    for row in track(rows, description=label):
        result = agent.invoke(row["question"])
        gold = normalise_number(row["answer"].rpartition("####")[2])
        correct += extract_answer(result.answer or "") == gold
        steps += len(result.steps)
        valid += sum(s.valid for s in result.steps)
    return {
        "accuracy": round(correct / len(rows), 4),
        "valid_action_rate": round(valid / max(steps, 1), 4),
        "mean_steps": round(steps / len(rows), 2),
        "seconds_per_question": round((time.perf_counter() - start) / len(rows), 2),
    }


def main() -> None:
    p = parser(__doc__ or "", threads=True)
    p.add_argument("--traces", type=int, default=None, help="GSM8K train rows turned into traces")
    p.add_argument("--steps", type=int, default=None, help="LoRA optimizer steps")
    p.add_argument("--limit", type=int, default=None, help="test_300 questions")
    args = p.parse_args()
    needs(GSM8K / "train.jsonl", GSM8K / "test_300.jsonl")
    n_traces = args.traces or (40 if args.quick else 2000)
    steps = args.steps or (2 if args.quick else 250)
    limit = args.limit or (5 if args.quick else 300)
    from hearthlm.finetune import DataSpec, LoraConfig, TrainConfig, finetune
    from hearthlm.finetune.export import export_gguf
    from hearthlm.finetune.traces import gsm8k_react_traces
    from hearthlm.llm.hf_backend import cached_safetensors
    from hearthlm.llm.sources import resolve_model

    work = Path(tempfile.mkdtemp(prefix="bench-tooluse-"))
    written = gsm8k_react_traces(GSM8K / "train.jsonl", work / "traces.jsonl", n_traces)
    start = time.perf_counter()
    run = finetune(
        [DataSpec(path=work / "traces.jsonl")],
        work / "lora",
        method=LoraConfig(rank=16, alpha=32),
        train=TrainConfig(
            max_steps=steps,
            batch_size=8,
            learning_rate=5e-4,
            eval_every=max(steps // 5, 1),
            save_every=max(steps // 5, 1),
        ),
        max_length=768,
        validation=0.02,
    )
    train_seconds = time.perf_counter() - start
    rows = [json.loads(x) for x in (GSM8K / "test_300.jsonl").open(encoding="utf-8")][:limit]
    base = export_gguf(cached_safetensors(resolve_model(None), None), work / "base.gguf")
    tuned = export_gguf(run.output, work / "tuned.gguf")
    before = react_accuracy(base, rows, "before", args.threads)
    after = react_accuracy(tuned, rows, "after", args.threads)
    figures: dict[str, object] = {
        "traces": written,
        "steps": steps,
        "batch_size": 8,
        "train_seconds": round(train_seconds, 1),
        "final_validation_loss": run.result.validation_loss,
        "questions": len(rows),
        **{f"react_before_{k}": v for k, v in before.items()},
        **{f"react_after_{k}": v for k, v in after.items()},
        "react_accuracy_gain_points": round((after["accuracy"] - before["accuracy"]) * 100, 2),
    }
    emit("bench_tooluse", figures, args.save)


if __name__ == "__main__":
    main()
