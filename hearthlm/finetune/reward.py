"""A reward model from pairwise preferences: the base model with a scalar head (and LoRA), trained
so that ``r(chosen) > r(rejected)`` with the Bradley-Terry loss ``-log sigmoid(r_c - r_r)``.

Preference rows are read by :mod:`hearthlm.finetune.pairs` (HH-RLHF transcripts or chat message
lists). Both sides are rendered with the model's chat template and cut from the left, so the final
answers, where they differ, are kept.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hearthlm.config import LLMConfig, PairTraining
from hearthlm.errors import ConfigError, TrainingError
from hearthlm.files import atomic_folder, write_atomic
from hearthlm.finetune.distributed import Cluster, sharding
from hearthlm.finetune.methods import (
    FullConfig,
    LoraConfig,
    MethodConfig,
    ParameterCount,
    count_parameters,
    lora_config,
    quiet_peft,
)
from hearthlm.finetune.pairs import read_preference_pairs
from hearthlm.finetune.trainer import TrainConfig, Trainer, TrainResult
from hearthlm.llm.hf_backend import cached_safetensors
from hearthlm.llm.sources import resolve_model
from hearthlm.runs import claim_run, run_identity

REWARD_FILE = "hearth_reward.json"
LEARNING_RATE = 1e-4  # the reward model's default peak learning rate, here and in the CLI


@dataclass
class Pair:
    """One tokenized preference pair (chosen and rejected transcripts) and its ``file:line``."""

    chosen: list[int]
    rejected: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def read_pairs(path: Path, tokenizer: Any, max_length: int = 512) -> list[Pair]:
    """Tokenized preference pairs; a malformed row is an error naming its file and line."""
    pairs = []
    for pair in read_preference_pairs(path):
        chosen = render(tokenizer, pair.chosen, max_length)
        rejected = render(tokenizer, pair.rejected, max_length)
        if chosen == rejected:
            continue  # identical sides carry no preference
        pairs.append(Pair(chosen, rejected, pair.source))
    if not pairs:
        raise TrainingError(f"{path}: the file holds no preference pairs")
    return pairs


def render(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> list[int]:
    """``messages`` in the model's chat template as token ids, keeping the last ``max_length``
    (the end of a transcript is what the reward head reads)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    return ids[-max_length:]


def pad_id(tokenizer: Any) -> int:
    """A padding id that never occurs inside a rendered chat, so the head reads the last real
    token (the model's pooling finds it by the padding id)."""
    token = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(token, int) and token != tokenizer.unk_token_id:
        return token
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


class PairwiseObjective:
    """Bradley-Terry loss summed over pairs; validation adds pairwise accuracy."""

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def rewards(self, trainer: Trainer, sequences: list[list[int]]) -> torch.Tensor:

        width = max(map(len, sequences))
        ids = torch.tensor(
            [s + [self.pad] * (width - len(s)) for s in sequences], device=trainer.device
        )
        mask = (ids != self.pad).long()
        with torch.autocast(trainer.device_type, dtype=torch.bfloat16, enabled=trainer.bf16):
            return trainer.net(input_ids=ids, attention_mask=mask).logits[:, 0].float()

    def loss(self, trainer: Trainer, pairs: list[Pair]) -> tuple[torch.Tensor, int]:

        scores = self.rewards(trainer, [p.chosen for p in pairs] + [p.rejected for p in pairs])
        chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]
        return -torch.nn.functional.logsigmoid(chosen - rejected).sum(), len(pairs)

    def count(self, pairs: list[Pair]) -> int:
        """One loss term per pair."""
        return len(pairs)

    def validate(self, trainer: Trainer, pairs: list[Pair]) -> dict[str, float]:
        wins = 0
        for i in range(0, len(pairs), trainer.config.batch_size):
            batch = pairs[i : i + trainer.config.batch_size]
            scores = self.rewards(trainer, [p.chosen for p in batch] + [p.rejected for p in batch])
            wins += int((scores[: len(batch)] > scores[len(batch) :]).sum())
        return {"validation_accuracy": wins / max(len(pairs), 1)}


def base_folder(llm: LLMConfig) -> Path:
    """The transformers folder of the configured model (the GGUF's cached conversion)."""
    source = resolve_model(llm.model)
    return cached_safetensors(source, llm.cache_dir) if source.is_gguf else source.path


def load_reward_backbone(llm: LLMConfig, method: MethodConfig) -> tuple[Any, Any]:
    """The sequence-classification model (one score) with LoRA on it, and its tokenizer."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder = base_folder(llm)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new score head is missing by design; no load report
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, local_files_only=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_id(tokenizer)
    if isinstance(method, LoraConfig):
        config = lora_config(method, "SEQ_CLS")
        with quiet_peft():
            model = get_peft_model(model, config)
    return model, tokenizer


@dataclass
class RewardRun:
    """A finished reward-model run: its folder, parameter count, training result and the pairwise
    accuracy on the held-out pairs (None without validation pairs)."""

    folder: Path
    parameters: ParameterCount
    result: TrainResult
    validation_accuracy: float | None


def train_reward_model(
    data: Path,
    out: Path,
    *,
    llm: LLMConfig | None = None,
    method: MethodConfig | None = None,
    train: TrainConfig | None = None,
    validation: float | None = None,
    max_length: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    log: Any = print,
) -> RewardRun:
    """Train on ``data`` (JSONL pairs) into ``out``; pairwise accuracy on the held-out part.
    ``validation`` and ``max_length`` default to ``[finetune.reward]``'s
    (:class:`~hearthlm.config.PairTraining`)."""
    defaults = PairTraining()
    validation = defaults.validation if validation is None else validation
    max_length = defaults.max_length if max_length is None else max_length
    llm = llm or LLMConfig()
    method = method or LoraConfig()
    train = (train or TrainConfig()).with_default_learning_rate(LEARNING_RATE)
    if sharding(train.fsdp):
        raise ConfigError(
            "the reward model trains with DDP only: its adapter and score head are small "
            "enough for every process to hold. Leave out --fsdp."
        )
    from transformers import set_seed

    set_seed(train.seed)
    model, tokenizer = load_reward_backbone(llm, method)
    pairs = read_pairs(data, tokenizer, max_length)[:limit]
    cluster = Cluster.from_environment(cpu=train.device == "cpu")
    log = cluster.silenced(log)
    settings = {
        "model": llm.model,
        "method": method.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
        "data": str(data.resolve()),
        "validation": validation,
        "max_length": max_length,
        "limit": limit,
    }
    cluster.on_main(lambda: _claim(out, settings, data))
    held_out, train_pairs = _split(pairs, validation, train.seed)
    cluster.check_divides(len(train_pairs), "training pairs", "--limit or --validation")
    parameters = count_parameters(model)
    log(f"reward model: {len(train_pairs)} train / {len(held_out)} validation pairs")
    log(str(parameters))
    pad = pad_id(tokenizer)
    objective = PairwiseObjective(pad)
    trainer = Trainer(model, train_pairs, held_out, train, out, pad_id=pad, progress=progress,
                      objective=objective, cluster=cluster)  # fmt: skip
    result = trainer.fit()
    accuracy = _final_accuracy(trainer, result)
    summary = {
        "base": str(base_folder(llm)),
        "pad_id": pad,
        "max_length": max_length,
        "validation_accuracy": accuracy,
        "train_pairs": len(train_pairs),
        "validation_pairs": len(held_out),
        "steps": result.steps,
        "batch_size": train.batch_size,
        "train_seconds": round(result.seconds, 1),
    }
    cluster.on_main(lambda: _save(model, tokenizer, out, summary))
    return RewardRun(out, parameters, result, accuracy)


def _claim(out: Path, settings: dict[str, Any], data: Path) -> None:
    """Make ``out`` this run's folder: resume only the same run (the trainer resumes any
    checkpoint it finds there)."""
    refusal = TrainingError(
        f"{out} holds a different reward-model run; use another --out or delete it."
    )
    claim_run(out, run_identity(settings, [data]), refusal)


def _split(pairs: list[Pair], validation: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """(held out, train): the seeded shuffle's first ``validation`` share, at least one pair."""
    pairs = list(pairs)
    random.Random(seed).shuffle(pairs)
    cut = max(1, round(len(pairs) * validation)) if validation else 0
    return pairs[:cut], pairs[cut:]


def _save(model: Any, tokenizer: Any, out: Path, summary: dict[str, Any]) -> None:
    """The adapter and score head, then ``hearth_reward.json`` (which marks the folder done)."""
    with atomic_folder(out / "adapter") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    write_atomic(out / REWARD_FILE, json.dumps(summary, indent=2))


def _final_accuracy(trainer: Trainer, result: TrainResult) -> float | None:
    """The pairwise accuracy of the weights being saved: fit() validated at its last step, so
    only weights restored from an earlier, better step need a new pass."""
    final = result.history[-1] if result.history and not result.stopped_early else {}
    if "validation_accuracy" in final:
        return float(final["validation_accuracy"])
    found = trainer.evaluate().get("validation_accuracy")
    return None if found is None else float(found)


class RewardModel:
    """A trained reward model, scoring chats: ``score([[{"role": …}, …], …]) -> [float, …]``."""

    def __init__(
        self, model: Any, tokenizer: Any, max_length: int = 384, folder: Path | None = None
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad = pad_id(tokenizer)
        self.folder = folder  # where it was loaded from: part of a PPO run's identity

    @classmethod
    def load(cls, folder: Path, llm: LLMConfig | None = None) -> RewardModel:
        from peft import PeftModel

        info_path = folder / REWARD_FILE
        if not info_path.is_file():
            raise TrainingError(f"{folder} is not a reward model written by `hearth finetune`")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        model, tokenizer = load_reward_backbone(llm or LLMConfig(), FullConfig())
        with quiet_peft():
            model = PeftModel.from_pretrained(model, str(folder / "adapter")).merge_and_unload()
        return cls(model, tokenizer, int(info.get("max_length", 384)), folder)

    def score(self, chats: Sequence[list[dict[str, str]]]) -> list[float]:

        sequences = [render(self.tokenizer, list(c), self.max_length) for c in chats]
        width = max(map(len, sequences))
        ids = torch.tensor(
            [s + [self.pad] * (width - len(s)) for s in sequences], device=self.model.device
        )
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=(ids != self.pad).long()).logits
        return [float(x) for x in logits[:, 0]]
