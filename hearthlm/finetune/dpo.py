"""Direct preference optimisation through TRL's ``DPOTrainer``: the offline alternative to PPO.

The policy is the local model with LoRA; with a PEFT model TRL uses the same weights with the
adapter switched off as the reference, so no second copy is held in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearthlm.config import LLMConfig
from hearthlm.errors import TrainingError
from hearthlm.finetune.methods import MethodConfig, lora_config
from hearthlm.finetune.reward import transcript_messages
from hearthlm.finetune.run import load_base
from hearthlm.finetune.trainer import TrainConfig, plot_curve
from hearthlm.rows import BadRows, read_rows


@dataclass
class DPORun:
    """A finished DPO run: its folder (``adapter/``, ``metrics.jsonl``, ``loss.png``) and TRL's
    log history."""

    folder: Path
    history: list[dict[str, Any]]


def preference_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """``{"prompt", "chosen", "rejected"}`` in TRL's conversational form, from pairs that share
    every turn but the last assistant reply (HH-RLHF transcripts or message lists)."""
    bad = BadRows(strict=True, error=TrainingError, hint="")
    rows = []
    for row in read_rows(path, bad):
        sides = []
        for key in ("chosen", "rejected"):
            value = row.values.get(key)
            messages = transcript_messages(value) if isinstance(value, str) else value
            if not isinstance(messages, list) or not messages:
                bad.add(row.path, row.line, f"missing or empty {key!r}")
                continue
            sides.append(messages)
        chosen, rejected = sides
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            continue  # nothing to prefer
        rows.append({"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]})
        if limit and len(rows) == limit:
            break
    if not rows:
        raise TrainingError(f"{path}: no usable preference pairs")
    return rows


def train_dpo(
    data: Path,
    out: Path,
    *,
    llm: LLMConfig | None = None,
    method: MethodConfig | None = None,
    train: TrainConfig | None = None,
    beta: float = 0.1,
    max_length: int = 384,
    validation: float = 0.1,
    limit: int | None = None,
) -> DPORun:
    """Train a LoRA adapter on preference pairs (JSONL ``chosen``/``rejected``) with TRL's DPO
    against the frozen base model, into ``out/adapter``.

    Raises:
        TrainingError: ``method`` is not LoRA, or a pair is malformed.
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    llm = llm or LLMConfig()
    method = method or MethodConfig(method="lora")
    train = train or TrainConfig(learning_rate=5e-5)
    if method.method != "lora":
        raise TrainingError("DPO here trains LoRA adapters; use --method lora")
    model, tokenizer, backend = load_base(llm)
    rows = preference_rows(data, limit)
    cut = max(1, round(len(rows) * validation)) if validation and len(rows) > 1 else 0
    args = DPOConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is a ratio of the steps
        lr_scheduler_type=train.scheduler,
        max_grad_norm=train.max_grad_norm or 0.0,
        beta=beta,
        max_length=max_length,
        logging_steps=1,
        eval_strategy="steps" if cut else "no",
        eval_steps=train.eval_every,
        save_strategy="no",
        report_to=[],
        seed=train.seed,
        use_cpu=backend.device == "cpu",
        bf16=False,
        disable_tqdm=False,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows[cut:]),
        eval_dataset=Dataset.from_list(rows[:cut]) if cut else None,
        processing_class=tokenizer,
        peft_config=lora_config(method),
    )
    trainer.train()
    trained: Any = trainer.model
    trained.save_pretrained(out / "adapter")
    history = [dict(h) for h in trainer.state.log_history]
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps(h) + "\n" for h in history), encoding="utf-8"
    )
    evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    curve = [
        {"step": h["step"], "train_loss": h["loss"]}
        | ({"validation_loss": evals[h["step"]]} if h["step"] in evals else {})
        for h in history
        if "loss" in h
    ]
    plot_curve(curve, out / "loss.png", ylabel="DPO loss")
    return DPORun(out, history)
