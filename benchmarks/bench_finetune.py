"""Training throughput, training-phase peak memory by component and trainable parameters of full
fine-tuning, LoRA and prompt tuning on the same data and steps, and a plain transformers + PEFT
loop as the LoRA baseline; at batch 4 x 384 tokens (every method) and 8 x 512 (full and LoRA).

Each method runs in its own process. The peak is the resident set's high-water mark, reset once
the model is loaded, and its components are counted by hearthlm's MemoryMeter (the bare loop's
too: it only measures). Each hearthlm run also records the estimate made before training.
Tokens/s counts every token that goes through the model (prompt and completion).

    python benchmarks/bench_finetune.py [--quick] [--save] [--steps N]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, emit, needs, parser, report_to_parent, run_child

TEMPLATE = "Summarize the following conversation.\n\n{dialogue}"


def hearth(
    method: str,
    steps: int,
    batch: int,
    rows: int,
    max_length: int = 384,
    checkpointing: bool = False,
    estimate: bool = False,
) -> dict:
    from hearthlm.finetune import DataSpec, TrainConfig, finetune, method_config

    run = finetune(
        [
            DataSpec(
                path=DATA / "dialogsum" / "dialogsum.dev.jsonl",
                template=TEMPLATE,
                completion_field="summary",
                limit=rows,
            )
        ],
        Path(tempfile.mkdtemp()) / method,
        method=method_config(method, **({"dropout": 0.0} if method == "lora" else {})),
        train=TrainConfig(
            max_steps=steps,
            batch_size=batch,
            eval_every=10**6,
            save_every=10**6,
            bf16="off",
            activation_checkpointing=checkpointing,
            measure_memory=True,  # the figures below are measured with both options on
            return_freed_memory=True,
        ),
        validation=0,
        max_length=max_length,
        progress=False,
        log=lambda *a: None,
        estimate_memory=estimate,
    )
    figures = {
        "tokens_per_s": round(run.result.tokens_per_s, 1),
        "trainable_params": run.parameters.trainable,
        "trainable_percent": round(run.parameters.percent, 4),
        "final_train_loss": round(run.result.train_loss or 0.0, 4),
        "train_peak_mb": run.result.memory["peak_mb"],
        "train_peak_by_component_mb": run.result.memory["by_component_mb"],
    }
    if run.memory_estimate_mb:
        figures["estimate_mb"] = run.memory_estimate_mb
        figures["estimate_vs_peak"] = round(
            run.memory_estimate_mb["total"] / run.result.memory["peak_mb"], 3
        )
    return figures


def baseline(steps: int, batch: int, rows: int, max_length: int = 384) -> dict:
    """LoRA with plain transformers + PEFT: the same examples, no hearthlm in the loop."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hearthlm.finetune.data import DataSpec, build_dataset
    from hearthlm.finetune.memory import MemoryMeter
    from hearthlm.finetune.methods import LoraConfig, lora_config
    from hearthlm.llm.hf_backend import cached_safetensors
    from hearthlm.llm.sources import resolve_model

    folder = cached_safetensors(resolve_model(None), None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    data = build_dataset(
        tokenizer,
        [
            DataSpec(
                path=DATA / "dialogsum" / "dialogsum.dev.jsonl",
                template=TEMPLATE,
                completion_field="summary",
                limit=rows,
            )
        ],
        max_length=max_length,
        validation=0,
    )
    model = get_peft_model(model, lora_config(LoraConfig(dropout=0.0)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
    meter = MemoryMeter(model, optimizer, model.config.vocab_size)  # measures, changes nothing
    meter.start()
    tokens, start = 0, time.perf_counter()
    order = list(range(len(data.train)))
    random.Random("0:0").shuffle(order)  # the order hearthlm's trainer uses for seed 0, epoch 0
    examples = [data.train[i] for i in order]
    for step in range(steps):
        chunk = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
        width = max(len(e) for e in chunk)
        ids = torch.tensor([e.input_ids + [0] * (width - len(e)) for e in chunk])
        labels = torch.tensor([e.labels + [-100] * (width - len(e)) for e in chunk])
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in chunk])
        with meter.saving():
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        meter.stepped()
        optimizer.zero_grad()
        meter.grads_freed()
        tokens += sum(len(e) for e in chunk)
    memory = meter.report()
    return {
        "tokens_per_s": round(tokens / (time.perf_counter() - start), 1),
        "train_peak_mb": memory["peak_mb"],
        "train_peak_by_component_mb": memory["by_component_mb"],
    }


SHAPES = {"b4x384": (4, 384), "b8x512": (8, 512)}
METHODS = {"b4x384": ("full", "lora", "prompt-tuning", "baseline"), "b8x512": ("full", "lora")}


def child(spec: str, steps: int, rows: int) -> None:
    method, shape = spec.split("@")
    batch, length = SHAPES[shape]
    result = (
        baseline(steps, batch, rows, length)
        if method == "baseline"
        else hearth(method, steps, batch, rows, length, estimate=True)
    )
    report_to_parent(result)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2, help="LoRA / bare-loop speed runs each")
    p.add_argument("--child", default=None, help=argparse_hidden())
    args = p.parse_args()
    needs(DATA / "dialogsum" / "dialogsum.dev.jsonl")
    # Two steps at least: full fine-tuning's peak comes once AdamW's moments exist.
    steps = args.steps or (2 if args.quick else 12)
    rows = 64
    if args.child:
        child(args.child, steps, rows)
        return
    figures: dict[str, object] = {"steps": steps, "speed_repeats": args.repeats}
    for shape, methods in METHODS.items():
        for method in methods:
            result = run_child(__file__, f"{method}@{shape}", "--steps", str(steps))
            name = {"prompt-tuning": "prompt", "baseline": "peft_baseline_lora"}.get(method, method)
            for key, value in result.items():
                figures[f"{shape}_{name}_{key}"] = value
        figures[f"{shape}_lora_vs_full_peak"] = round(
            float(figures[f"{shape}_lora_train_peak_mb"])
            / float(figures[f"{shape}_full_train_peak_mb"]),
            3,
        )
    # Speed on a shared machine: LoRA and the bare loop alternate, and each keeps its best run.
    speeds: dict[str, list[float]] = {
        "lora": [float(figures["b4x384_lora_tokens_per_s"])],
        "baseline": [float(figures["b4x384_peft_baseline_lora_tokens_per_s"])],
    }
    for _ in range(args.repeats - 1):
        for method in ("lora", "baseline"):
            result = run_child(__file__, f"{method}@b4x384", "--steps", str(steps))
            speeds[method].append(float(result["tokens_per_s"]))
    figures["b4x384_lora_tokens_per_s_runs"] = speeds["lora"]
    figures["b4x384_peft_baseline_lora_tokens_per_s_runs"] = speeds["baseline"]
    figures["lora_vs_peft_baseline_speed"] = round(max(speeds["lora"]) / max(speeds["baseline"]), 3)
    emit("bench_finetune", figures, args.save)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
