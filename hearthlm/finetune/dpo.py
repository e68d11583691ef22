"""Direct preference optimisation through TRL's ``DPOTrainer``: the offline alternative to PPO.

The policy is the local model with LoRA; with a PEFT model TRL uses the same weights with the
adapter switched off as the reference, so no second copy is held in memory.

The run honours :class:`~hearthlm.finetune.trainer.TrainConfig` as the other trainers do: bf16
where the hardware runs it natively (``bf16="auto"``), a checkpoint every ``save_every`` steps,
and a run killed at any moment (SIGKILL included) resumes from its last whole checkpoint when
started again with the same folder. The settings it cannot honour (``early_stopping``,
``profile_memory``, ``return_freed_memory``) are refused with a ConfigError, not ignored.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearthlm.config import DPOSettings, LLMConfig
from hearthlm.errors import ConfigError, TrainingError
from hearthlm.files import atomic_folder, write_atomic
from hearthlm.finetune.distributed import Cluster
from hearthlm.finetune.methods import LoraConfig, MethodConfig, lora_config, quiet_peft
from hearthlm.finetune.pairs import read_preference_pairs
from hearthlm.finetune.run import load_base
from hearthlm.finetune.trainer import TrainConfig, plot_curve, use_bf16
from hearthlm.runs import claim_run, fingerprint, run_identity

LEARNING_RATE = 5e-5  # DPO's default peak learning rate, here and in the CLI
# TrainConfig fields that TRL's trainer has no counterpart for here, and why.
UNSUPPORTED = {
    "early_stopping": "TRL would have to keep and reload a best checkpoint",
    "profile_memory": "the memory profiler wraps hearthlm's own training loop",
    "measure_memory": "the memory meter wraps hearthlm's own training loop",
    "return_freed_memory": "the buffer mapping wraps hearthlm's own training loop",
}


@dataclass
class DPORun:
    """A finished DPO run: its folder (``adapter/``, ``metrics.jsonl``, ``loss.png``) and TRL's
    log history."""

    folder: Path
    history: list[dict[str, Any]]


def preference_rows(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """``{"prompt", "chosen", "rejected"}`` in TRL's conversational form, from pairs that share
    every turn but the last assistant reply (HH-RLHF transcripts or message lists)."""
    rows = []
    for pair in read_preference_pairs(path):
        chosen, rejected = pair.chosen, pair.rejected
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            continue  # nothing to prefer
        rows.append({"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]})
        if limit and len(rows) == limit:
            break
    if not rows:
        raise TrainingError(f"{path}: no usable preference pairs")
    return rows


def latest_turns(tokenizer: Any, row: dict[str, Any], max_length: int) -> dict[str, Any]:
    """``row`` with its prompt's oldest turns left out (the system message kept) until the
    prompt and the longer reply fit in ``max_length`` tokens, or one user turn is left. TRL
    truncates a pair from its end (``keep_start``, the only mode it has), which would cut away
    the replies the pair is about: both would then add log 2 to the loss and nothing to learn."""
    prompt = list(row["prompt"])
    head = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
    turns = prompt[len(head) :]

    def length(turns: list[dict[str, Any]]) -> int:
        return max(
            len(tokenizer.encode(
                tokenizer.apply_chat_template([*head, *turns, *row[reply]], tokenize=False),
                add_special_tokens=False,
            ))
            for reply in ("chosen", "rejected")
        )  # fmt: skip

    while len(turns) > 1 and length(turns) > max_length:
        turns = turns[1:]
        while len(turns) > 1 and turns[0]["role"] != "user":
            turns = turns[1:]  # a prompt opens with the user's turn
    return {**row, "prompt": [*head, *turns]}


def train_dpo(
    data: Path,
    out: Path,
    *,
    llm: LLMConfig | None = None,
    method: MethodConfig | None = None,
    train: TrainConfig | None = None,
    beta: float | None = None,
    max_length: int | None = None,
    validation: float | None = None,
    limit: int | None = None,
) -> DPORun:
    """Train a LoRA adapter on the preference pairs in ``data`` into ``out/adapter``.
    ``beta``, ``max_length`` and ``validation`` default to ``[finetune.dpo]``'s
    (:class:`~hearthlm.config.DPOSettings`).

    Running again with the same ``out`` resumes from the last checkpoint in ``out/trl``.

    Raises:
        ConfigError: ``method`` is not LoRA, or ``train`` sets a field DPO cannot honour.
        TrainingError: ``out`` holds a DPO run with other settings or pairs.
    """
    defaults = DPOSettings()
    beta = defaults.beta if beta is None else beta
    max_length = defaults.max_length if max_length is None else max_length
    validation = defaults.validation if validation is None else validation
    llm = llm or LLMConfig()
    method = method or LoraConfig()
    train = train or TrainConfig()
    if not isinstance(method, LoraConfig):
        raise ConfigError(
            f"DPO here trains LoRA adapters, not {method.method!r}; pass a LoraConfig."
        )
    _refuse_unsupported(train)
    rows = preference_rows(data, limit)  # a bad file fails before the model loads
    settings = {
        "method": method.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
        "data": str(data.resolve()),
        "pairs": fingerprint(rows),
        "model": llm.model,
        "beta": beta,
        "max_length": max_length,
        "validation": validation,
    }
    # Resume only the same run: TRL would resume any checkpoint it finds in out/trl. On
    # several processes (TRL's trainer runs on accelerate, DDP) rank 0 claims and writes.
    cluster = Cluster.from_environment(cpu=train.device == "cpu")
    identity = run_identity(settings, [data])
    refusal = TrainingError(f"{out} holds a different DPO run; choose another --out or delete it.")
    cluster.on_main(lambda: claim_run(out, identity, refusal))
    resume = cluster.on_main(lambda: last_whole_checkpoint(out / "trl"))
    resume = cluster.gather(resume)[0]  # rank 0's choice, torn checkpoints removed
    model, tokenizer, backend = load_base(llm)
    rows = [latest_turns(tokenizer, row, max_length) for row in rows]
    cut = max(1, round(len(rows) * validation)) if validation and len(rows) > 1 else 0
    args = _trl_arguments(out, train, beta, max_length, backend.device, validate=bool(cut))
    trained, history = _train(model, tokenizer, args, method, rows, cut, resume)
    cluster.on_main(lambda: _save(trained, history, out))
    return DPORun(out, history)


def _save(trained: Any, history: list[dict[str, Any]], out: Path) -> None:
    """The adapter, ``metrics.jsonl`` and the loss curve."""
    with atomic_folder(out / "adapter") as staging:
        trained.save_pretrained(staging)
    _write_history(history, out)


def _trl_arguments(
    out: Path,
    train: TrainConfig,
    beta: float,
    max_length: int,
    device: str,
    validate: bool,
) -> Any:
    """TRL's ``DPOConfig`` for ``train``'s settings: checkpoints in ``out/trl``, the last two
    kept, every step logged."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate or LEARNING_RATE,
        weight_decay=train.weight_decay,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is a ratio of the steps
        lr_scheduler_type="constant_with_warmup"
        if train.scheduler == "constant"
        else train.scheduler,
        max_grad_norm=train.max_grad_norm or 0.0,
        activation_checkpointing=train.activation_checkpointing,
        beta=beta,
        max_length=max_length,
        logging_steps=1,
        eval_strategy="steps" if validate else "no",
        eval_steps=train.eval_every,
        save_strategy="steps",
        save_steps=train.save_every,
        save_total_limit=2,  # the newest may be torn by a kill; the one before is whole
        report_to=[],
        seed=train.seed,
        data_seed=train.seed,
        use_cpu=device == "cpu",
        bf16=use_bf16(train.bf16, device),
        disable_tqdm=False,
    )


def _train(
    model: Any,
    tokenizer: Any,
    args: Any,
    method: LoraConfig,
    rows: list[dict[str, Any]],
    cut: int,
    resume: str | None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Train (from the checkpoint ``resume``, where one is given) on ``rows[cut:]``,
    validating on ``rows[:cut]``: the trained model, and TRL's log history."""
    from datasets import Dataset
    from trl import DPOTrainer

    # TRL wraps the model with PEFT here, and its loss reads the deprecated property each step.
    with quiet_peft():
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows[cut:]),
            eval_dataset=Dataset.from_list(rows[:cut]) if cut else None,
            processing_class=tokenizer,
            peft_config=lora_config(method),
        )
        trainer.train(resume_from_checkpoint=resume)
    return trainer.model, [dict(h) for h in trainer.state.log_history]


def _write_history(history: list[dict[str, Any]], out: Path) -> None:
    """``metrics.jsonl`` (TRL's log, whole, written atomically) and the loss curve."""
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    evals = {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}
    curve = [
        {"step": h["step"], "train_loss": h["loss"]}
        | ({"validation_loss": evals[h["step"]]} if h["step"] in evals else {})
        for h in history
        if "loss" in h
    ]
    plot_curve(curve, out / "loss.png", ylabel="DPO loss")


def _refuse_unsupported(train: TrainConfig) -> None:
    defaults = TrainConfig()
    refused = [
        f"{name} = {getattr(train, name)!r} ({why})"
        for name, why in UNSUPPORTED.items()
        if getattr(train, name) != getattr(defaults, name)
    ]
    if refused:
        raise ConfigError(
            "DPO cannot honour these training settings: "
            + "; ".join(refused)
            + ". Leave them at their defaults for `hearth finetune dpo`."
        )


def last_whole_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was written to the end, or None.

    transformers writes a checkpoint's ``trainer_state.json`` last, so a checkpoint without a
    readable one was cut short by a kill; it is removed, and the one before it is used.
    """
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in found:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shutil.rmtree(checkpoint, ignore_errors=True)
            continue
        return str(checkpoint)
    return None
