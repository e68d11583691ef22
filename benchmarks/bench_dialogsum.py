"""DialogSum summarisation before and after fine-tuning, and what it costs on MMLU.

Trains LoRA and full fine-tuning of the default model on DialogSum train, plus LoRA on a 50/50
mixture of DialogSum and Alpaca (multi-task mixing against forgetting). Each model is exported to
an f16 GGUF (the zero-shot base too, so all four run the same way) and scored with ROUGE on the
DialogSum dev summaries by greedy decoding on llama.cpp; MMLU (the 12 shared subjects, 5-shot,
log-likelihood on transformers) is scored before and after.

    python benchmarks/bench_dialogsum.py [--quick] [--save] [--train N] [--dev N] [--mmlu N]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, emit, needs, parser


def train(kind: str, out: Path, rows: int, steps: int, batch: int) -> Path:
    from hearthlm.eval.tasks import DIALOGSUM_TEMPLATE
    from hearthlm.finetune import DataSpec, FullConfig, LoraConfig, TrainConfig, finetune

    dialogsum = DataSpec(
        path=DATA / "dialogsum" / "dialogsum.train.jsonl",
        template=DIALOGSUM_TEMPLATE,
        completion_field="summary",
        limit=rows,
    )
    data = [dialogsum]
    if kind == "mixed":
        alpaca = DataSpec(path=DATA / "instruction" / "alpaca_demo" / "alpaca_en_demo.json")
        data = [dialogsum, alpaca]
    method = "full" if kind == "full" else "lora"
    if (out / "hearth_finetune.json").is_file():  # finished in an earlier, interrupted benchmark
        return out / ("model" if method == "full" else "adapter")
    run = finetune(
        data,
        out,
        method=FullConfig() if method == "full" else LoraConfig(dropout=0.05),
        train=TrainConfig(
            max_steps=steps,
            batch_size=batch,
            learning_rate=5e-5 if method == "full" else 5e-4,
            eval_every=max(steps // 4, 1),
            save_every=max(steps // 4, 1),
        ),
        max_length=512,
        validation=0.05,
        mix_total=rows if kind == "mixed" else None,
    )
    return run.output


def rouge(gguf: Path, dev: int, out: Path, threads: int | None) -> dict[str, float]:
    from hearthlm.config import HearthConfig, LLMConfig
    from hearthlm.eval import evaluate, make_task
    from hearthlm.eval.tasks import DIALOGSUM_TEMPLATE, TaskSpec

    spec = TaskSpec(
        name="dialogsum",
        kind="generate",
        data=DATA / "dialogsum" / "dialogsum.dev.jsonl",
        template=DIALOGSUM_TEMPLATE,
        reference="summary",
        metrics=["rouge"],
        id="fname",
        max_new_tokens=96,
        limit=dev,
    )
    config = HearthConfig(llm=LLMConfig(backend="llamacpp", model=str(gguf), threads=threads))
    run = evaluate([make_task(spec)], out, config)
    return run.scores["tasks"]["dialogsum"]


def mmlu(model: Path | None, adapter: Path | None, limit: int, out: Path) -> float:
    from hearthlm.config import HearthConfig, LLMConfig
    from hearthlm.eval import evaluate, mmlu_tasks

    llm = LLMConfig(backend="transformers", model=str(model) if model else None, adapter=adapter)
    run = evaluate(mmlu_tasks(DATA / "mmlu", shots=5, limit=limit), out, HearthConfig(llm=llm))
    return float(run.scores["accuracy"])


def main() -> None:
    p = parser(__doc__ or "", threads=True)
    p.add_argument("--train", type=int, default=None, help="DialogSum train rows")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per model")
    p.add_argument("--dev", type=int, default=None, help="DialogSum dev rows scored")
    p.add_argument("--mmlu", type=int, default=None, help="MMLU questions per subject")
    p.add_argument("--batch", type=int, default=8, help="training batch size")
    p.add_argument("--work", type=Path, default=None, help="reuse (or resume) runs in this folder")
    args = p.parse_args()
    needs(
        DATA / "dialogsum" / "dialogsum.train.jsonl",
        DATA / "dialogsum" / "dialogsum.dev.jsonl",
        DATA / "instruction" / "alpaca_demo" / "alpaca_en_demo.json",
        DATA / "mmlu",
    )
    rows = args.train or (32 if args.quick else 800)
    steps = args.steps or (2 if args.quick else 100)
    dev = args.dev or (5 if args.quick else 200)
    limit = args.mmlu or (5 if args.quick else 40)
    from hearthlm.finetune.export import export_gguf
    from hearthlm.llm.hf_backend import cached_safetensors
    from hearthlm.llm.sources import resolve_model

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-dialogsum-"))
    base = cached_safetensors(resolve_model(None), None)
    figures: dict[str, object] = {
        "train_rows": rows, "steps": steps, "batch_size": args.batch, "dev_rows": dev,
        "mmlu_per_subject": limit, "mmlu_subjects": 12,
    }  # fmt: skip
    models = {"zero_shot": base}
    for kind in ("lora", "full", "mixed"):
        models[kind] = train(kind, work / kind, rows, steps, args.batch)
        summary = json.loads((work / kind / "hearth_finetune.json").read_text(encoding="utf-8"))
        figures[f"{kind}_train_seconds"] = summary["result"]["seconds"]
        figures[f"{kind}_final_train_loss"] = round(summary["result"]["train_loss"], 4)
    for name, trained in models.items():
        gguf = export_gguf(trained, work / f"{name}.gguf", gguf_type="f16")
        scores = rouge(gguf, dev, work / f"rouge-{name}", args.threads)
        figures[f"dialogsum_{name}_rouge1"] = round(scores["rouge1"], 4)
        figures[f"dialogsum_{name}_rougeL"] = round(scores["rougeL"], 4)
        if name == "zero_shot":
            accuracy = mmlu(None, None, limit, work / "mmlu-base")
        elif name == "full":
            accuracy = mmlu(trained, None, limit, work / f"mmlu-{name}")
        else:
            accuracy = mmlu(None, trained, limit, work / f"mmlu-{name}")
        figures[f"mmlu_{name}_accuracy"] = round(accuracy, 4)
    figures["mmlu_lora_drop_points"] = round(
        (float(figures["mmlu_zero_shot_accuracy"]) - float(figures["mmlu_lora_accuracy"])) * 100, 2
    )
    figures["mmlu_full_drop_points"] = round(
        (float(figures["mmlu_zero_shot_accuracy"]) - float(figures["mmlu_full_accuracy"])) * 100, 2
    )
    figures["mmlu_mixed_drop_points"] = round(
        (float(figures["mmlu_zero_shot_accuracy"]) - float(figures["mmlu_mixed_accuracy"])) * 100, 2
    )
    emit("bench_dialogsum", figures, args.save)


if __name__ == "__main__":
    main()
