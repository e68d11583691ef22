"""Training throughput, peak memory and trainable parameters of full fine-tuning, LoRA and prompt
tuning on the same data and steps, and a plain transformers + PEFT loop as the LoRA baseline.

Each method runs in its own process so its peak resident memory is its own. Tokens/s counts every
token that goes through the model (prompt and completion).

    python benchmarks/bench_finetune.py [--quick] [--save] [--steps N]
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, parser, report_to_parent, run_child

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEMPLATE = "Summarize the following conversation.\n\n{dialogue}"


def hearth(
    method: str,
    steps: int,
    batch: int,
    rows: int,
    max_length: int = 384,
    checkpointing: bool = False,
) -> dict:
    from hearthlm.finetune import DataSpec, MethodConfig, TrainConfig, finetune

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
        method=MethodConfig(method=method, dropout=0.0),
        train=TrainConfig(
            max_steps=steps,
            batch_size=batch,
            eval_every=10**6,
            save_every=10**6,
            bf16="off",
            activation_checkpointing=checkpointing,
        ),
        validation=0,
        max_length=max_length,
        progress=False,
        log=lambda *a: None,
    )
    return {
        "tokens_per_s": round(run.result.tokens_per_s, 1),
        "trainable_params": run.parameters.trainable,
        "trainable_percent": round(run.parameters.percent, 4),
        "final_train_loss": round(run.result.train_loss or 0.0, 4),
    }


def baseline(steps: int, batch: int, rows: int) -> dict:
    """LoRA with plain transformers + PEFT: the same examples, no hearthlm in the loop."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hearthlm.finetune.data import DataSpec, build_dataset
    from hearthlm.finetune.methods import MethodConfig, lora_config
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
        max_length=384,
        validation=0,
    )
    model = get_peft_model(model, lora_config(MethodConfig(method="lora", dropout=0.0)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    model.train()
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
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        tokens += sum(len(e) for e in chunk)
    return {"tokens_per_s": round(tokens / (time.perf_counter() - start), 1)}


def child(method: str, steps: int, batch: int, rows: int) -> None:
    result = (
        baseline(steps, batch, rows) if method == "baseline" else hearth(method, steps, batch, rows)
    )
    report_to_parent(result)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--child", default=None, help=argparse_hidden())
    args = p.parse_args()
    steps = args.steps or (3 if args.quick else 12)
    batch, rows = 4, 64
    if args.child:
        child(args.child, steps, batch, rows)
        return
    figures: dict[str, object] = {"steps": steps, "batch_size": batch, "max_length": 384}
    for method in ("full", "lora", "prompt-tuning", "baseline"):
        result = run_child(__file__, method, "--steps", str(steps))
        name = {"prompt-tuning": "prompt", "baseline": "peft_baseline_lora"}.get(method, method)
        for key, value in result.items():
            figures[f"{name}_{key}"] = value
    figures["lora_vs_peft_baseline"] = round(
        float(figures["lora_tokens_per_s"]) / float(figures["peft_baseline_lora_tokens_per_s"]), 3
    )
    emit("bench_finetune", figures, args.save)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
