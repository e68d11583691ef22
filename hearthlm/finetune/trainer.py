"""The training loop: AdamW, warmup, accumulation, clipping, bf16 autocast, validation, early
stopping, checkpoints that resume exactly, metrics in JSONL and a loss curve.

A checkpoint holds the trainable weights, the optimizer and scheduler, every random generator and
the position in the data, written to a temporary folder and renamed into place. A run killed at
any moment (SIGKILL included) restarts from its last checkpoint and, on the same device, ends with
the weights an uninterrupted run ends with.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from hearthlm.config import TrainConfig
from hearthlm.errors import TrainingError
from hearthlm.files import atomic_folder
from hearthlm.finetune.checkpoints import (
    load_trainable,
    read_checkpoint,
    resume_history,
    trainable_state,
    write_checkpoint,
)
from hearthlm.finetune.data import IGNORE, Example
from hearthlm.finetune.memory import (
    MemoryBreakdown,
    MemoryMeter,
    estimate,
    forward_buffers_unmapped,
    unmeasured,
)
from hearthlm.finetune.profiling import profiled
from hearthlm.llm.hf_backend import pick_device
from hearthlm.plots import saved_figure
from hearthlm.progress import progress_bar
from hearthlm.runs import append_jsonl

DEFAULT_LEARNING_RATE = 2e-4  # when neither TrainConfig nor a method sets one


@dataclass
class TrainState:
    """Where a run stands: saved as JSON in every checkpoint and restored on resume."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # examples of this epoch's order already used
    best: float | None = None  # best validation loss so far
    bad_evals: int = 0  # validations since the best one (early stopping)
    tokens: int = 0  # completion tokens the loss was computed on
    input_tokens: int = 0  # every token that went through the model
    seconds: float = 0.0  # training time before this process

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainState:
        """The state saved by :meth:`as_json` (keys it does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Objective(Protocol):
    """A loss other than next-token cross-entropy, e.g. the reward model's pairwise loss."""

    def loss(self, trainer: Trainer, examples: list[Any]) -> tuple[torch.Tensor, int]:
        """The summed loss over ``examples`` (a tensor with grad) and how many terms it sums."""
        ...

    def validate(self, trainer: Trainer, examples: list[Any]) -> dict[str, float]:
        """Extra validation figures (e.g. pairwise accuracy) logged beside the loss."""
        ...


@dataclass
class TrainResult:
    """What a training run did: steps, the last and best losses, whether it stopped early, time,
    tokens (those the loss counted, and all), and one record per logged step."""

    steps: int
    train_loss: float | None
    validation_loss: float | None
    best_validation_loss: float | None
    stopped_early: bool
    seconds: float
    tokens: int  # completion tokens the loss was computed on
    input_tokens: int  # every token that went through the model
    history: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)  # MemoryMeter.report()

    @property
    def tokens_per_s(self) -> float:
        """Training throughput: tokens through the model (prompt and completion) per second."""
        return self.input_tokens / self.seconds if self.seconds else 0.0


def _length(example: Any) -> int:
    try:
        return len(example)
    except TypeError:  # a pair for the reward model: any batch will do
        return 0


def _virtual_tokens(model: torch.nn.Module) -> int:
    """How many soft-prompt positions a PEFT prompt-learning model puts before the input."""
    config: Any = getattr(model, "active_peft_config", None)
    return int(config.num_virtual_tokens) if getattr(config, "is_prompt_learning", False) else 0


def _vocab_size(model: torch.nn.Module) -> int:
    return int(getattr(model.config, "vocab_size", 0) or 0)


def use_bf16(setting: str, device: str) -> bool:
    """Whether a ``bf16`` setting (auto, on, off) means autocast on ``device``."""
    return setting == "on" or (setting == "auto" and bf16_supported(device))


def bf16_supported(device: str) -> bool:
    """Whether ``device`` computes bf16 natively (a CUDA GPU that supports it, or a CPU with
    AVX512-BF16); elsewhere bf16 would be emulated and slower than float32."""

    if device == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.backends.mkldnn.is_available()) and "avx512_bf16" in _cpu_flags()
    except OSError:
        return False


def _cpu_flags() -> str:
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


class Trainer:
    """Train ``model`` (already prepared by :func:`~hearthlm.finetune.methods.prepare`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        train: Sequence[Any],
        validation: Sequence[Any],
        config: TrainConfig,
        folder: Path,
        *,
        pad_id: int,
        progress: bool = True,
        objective: Objective | None = None,
    ) -> None:

        if not train:
            raise TrainingError("no training examples")
        self.model = model
        self.train_examples = list(train)
        self.validation = list(validation)
        self.config = config
        self.folder = folder
        self.pad_id = pad_id
        self.progress = progress
        # The loss: next-token cross-entropy on completion tokens unless an objective (the reward
        # model's pairwise loss) supplies ``loss(trainer, examples) -> (sum, count)``.
        self.objective = objective
        self._stream: Iterator[tuple[int, list[Example]]] = iter(())  # fit's micro-batches
        self.device = pick_device(config.device)
        self.bf16 = use_bf16(config.bf16, self.device)
        if config.activation_checkpointing:
            # transformers' own API, on the model PEFT wraps where it wraps one
            base: Any = getattr(model, "get_base_model", lambda: model)()
            base.activation_checkpointing_enable()
            base.config.use_cache = False
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise TrainingError("the model has no trainable parameters")
        per_epoch = math.ceil(len(train) / (config.batch_size * config.grad_accum))
        self.total_steps = config.max_steps or max(1, math.ceil(per_epoch * config.epochs))
        rate = config.learning_rate if config.learning_rate is not None else DEFAULT_LEARNING_RATE
        self.optimizer = torch.optim.AdamW(self.params, lr=rate, weight_decay=config.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            "constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
            self.optimizer,
            num_warmup_steps=int(config.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )

    # --- data -----------------------------------------------------------------------------------

    def _order(self, epoch: int) -> list[int]:
        rng = random.Random(f"{self.config.seed}:{epoch}")
        order = list(range(len(self.train_examples)))
        rng.shuffle(order)
        return order

    def _micro_batches(self, epoch: int, start: int) -> Iterator[tuple[int, list[Example]]]:
        order = self._order(epoch)
        size = self.config.batch_size
        for position in range(start, len(order), size):
            yield (
                position + size,
                [self.train_examples[i] for i in order[position : position + size]],
            )

    def _collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:

        width = max(map(len, examples))
        ids = [e.input_ids + [self.pad_id] * (width - len(e)) for e in examples]
        labels = [e.labels + [IGNORE] * (width - len(e)) for e in examples]
        mask = [[1] * len(e) + [0] * (width - len(e)) for e in examples]
        return {
            "input_ids": torch.tensor(ids, device=self.device),
            "labels": torch.tensor(labels, device=self.device),
            "attention_mask": torch.tensor(mask, device=self.device),
        }

    def _loss(self, examples: list[Any]) -> tuple[torch.Tensor, int]:
        """Sum of token losses over completion tokens, and their count."""

        if self.objective is not None:
            loss, count = self.objective.loss(self, examples)
            return loss, int(count)
        batch = self._collate(examples)
        # Logits only where a completion token is predicted: the rest of the 49,152-way rows
        # (prompt, padding) would be most of the activation memory and are never used. Position t
        # predicts token t + 1; prompt tuning's virtual tokens come first and predict nothing.
        targets = batch["labels"][:, 1:]
        wanted = targets != IGNORE  # (batch, width - 1)
        keep = torch.nn.functional.pad(wanted, (_virtual_tokens(self.model), 1))
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                logits_to_keep=keep,
            ).logits  # (completion tokens, vocab)
        loss = torch.nn.functional.cross_entropy(
            logits.float(), targets[wanted], ignore_index=IGNORE, reduction="sum"
        )
        return loss, int(wanted.sum())

    def evaluate(self) -> dict[str, float]:
        """Validation loss per completion token (per pair for the reward model), and whatever
        else the objective measures (pairwise accuracy)."""

        if not self.validation:
            return {}
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.validation), self.config.batch_size):
                loss, n = self._loss(list(self.validation[i : i + self.config.batch_size]))
                total, count = total + float(loss), count + n
            extra = {}
            if self.objective is not None:
                extra = self.objective.validate(self, self.validation)
        self.model.train()
        return {"validation_loss": total / max(count, 1), **extra}

    def estimate_memory(self) -> MemoryBreakdown:
        """The training-phase peak by component, from the parameters and one forward pass of the
        largest micro-batch (nothing is trained); see :func:`~hearthlm.finetune.memory.estimate`.
        """
        largest = max(self._planned_batches(), key=self._batch_weight)
        self.model.to(self.device).train()
        with forward_buffers_unmapped(self.config.return_freed_memory):
            return estimate(self.model, lambda: self._loss(largest)[0], _vocab_size(self.model))

    def _planned_batches(self) -> Iterator[list[Any]]:
        """The micro-batches this run will train on, in order (without resuming)."""
        left, epoch = self.total_steps * self.config.grad_accum, 0
        while left > 0:
            for _, examples in self._micro_batches(epoch, 0):
                yield examples
                left -= 1
                if left == 0:
                    return
            epoch += 1

    def _batch_weight(self, examples: list[Any]) -> float:
        """Padded tokens, plus the completion tokens that get logits (a 49,152-way row weighs
        about half a token's activations in all layers) where the examples carry labels."""
        width = max(map(_length, examples))
        if self.objective is not None:
            return float(width * len(examples))
        completion = sum(x != IGNORE for e in examples for x in e.labels)
        return width * len(examples) + 0.5 * completion

    # --- loop -----------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train to ``total_steps`` (or early stopping), resuming from the folder's checkpoint:
        each step logged to ``metrics.jsonl``, validated every ``eval_every`` steps (the best
        weights kept), checkpointed every ``save_every``."""

        state = self._resume() or TrainState()
        if state.step == 0:
            random.seed(self.config.seed)
            torch.manual_seed(self.config.seed)
        metrics_path = self.folder / "metrics.jsonl"
        history = resume_history(metrics_path, state.step)
        self.model.to(self.device).train()
        # Measuring hooks every saved tensor and resets the process's peak: only when asked.
        meter = None
        if self.config.measure_memory:
            meter = MemoryMeter(self.model, self.optimizer, _vocab_size(self.model), self.device)
            meter.start()
        started = time.perf_counter() - state.seconds
        stopped_early = False
        train_loss = None
        with (
            progress_bar(
                self.progress, self.total_steps, "training", completed=state.step, metric="loss"
            ) as advance,
            contextlib.closing(meter) if meter else contextlib.nullcontext(),  # hooks removed
            meter.saving() if meter else contextlib.nullcontext(),
            profiled(self.config.profile_memory, self.folder, self.device),
        ):
            self._stream = self._batches(state)
            while state.step < self.total_steps:
                train_loss = self._step(state, meter)
                record = self._record(state, train_loss)
                last = state.step == self.total_steps
                if state.step % self.config.eval_every == 0 or last:
                    self._validate(state, record)
                history.append(record)
                append_jsonl(metrics_path, [record])
                advance(1, train_loss)
                patience = self.config.early_stopping
                if patience and state.bad_evals >= patience:
                    stopped_early = True
                    state.seconds = time.perf_counter() - started
                    break
                if state.step % self.config.save_every == 0 and not last:
                    state.seconds = time.perf_counter() - started
                    self._checkpoint(state)
        memory = meter.report() if meter else unmeasured()
        return self._finish(state, history, train_loss, stopped_early, started, memory)

    def _record(self, state: TrainState, train_loss: float) -> dict[str, Any]:
        """A step's line of ``metrics.jsonl`` (validation scores join it on evaluation steps)."""
        return {
            "step": state.step,
            "train_loss": round(train_loss, 6),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "tokens": state.tokens,
            "input_tokens": state.input_tokens,
        }

    def _finish(
        self,
        state: TrainState,
        history: list[dict[str, Any]],
        train_loss: float | None,
        stopped_early: bool,
        started: float,
        memory: dict[str, Any],
    ) -> TrainResult:
        """The run's result: after early stopping, the best weights restored; the loss curve
        drawn."""
        if stopped_early and (self.folder / "best").is_dir():
            self._load_weights(self.folder / "best")
        seconds = time.perf_counter() - started
        plot_curve(history, self.folder / "loss.png")
        vals = [h["validation_loss"] for h in history if "validation_loss" in h]
        return TrainResult(
            steps=state.step,
            train_loss=train_loss,
            validation_loss=vals[-1] if vals else None,
            best_validation_loss=state.best,
            stopped_early=stopped_early,
            seconds=seconds,
            tokens=state.tokens,
            input_tokens=state.input_tokens,
            history=history,
            memory=memory,
        )

    def _step(self, state: TrainState, meter: MemoryMeter | None) -> float:
        """One optimizer step over ``grad_accum`` micro-batches; returns its training loss."""

        loss_sum, token_sum = 0.0, 0
        losses = []
        for _ in range(self.config.grad_accum):
            examples = self._next_micro_batch(state)
            with forward_buffers_unmapped(self.config.return_freed_memory):
                loss, n = self._loss(examples)
            losses.append((loss, n))
            token_sum += n
            state.input_tokens += sum(map(len, examples))
        # Token-weighted over the accumulated micro-batches, as one big batch would be.
        for loss, _ in losses:
            (loss / max(token_sum, 1)).backward()
            loss_sum += float(loss.detach())
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        if meter:
            meter.stepped()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if meter:
            meter.grads_freed()
        state.step += 1
        state.tokens += token_sum
        return loss_sum / max(token_sum, 1)

    def _next_micro_batch(self, state: TrainState) -> list[Example]:
        """The next micro-batch, in the seeded order of its epoch; past the last, the first of
        the next epoch. ``state.position`` follows, so a checkpoint resumes right there."""
        try:
            position, examples = next(self._stream)
        except StopIteration:
            state.epoch, state.position = state.epoch + 1, 0
            self._stream = self._batches(state)
            position, examples = next(self._stream)
        state.position = position
        return examples

    def _validate(self, state: TrainState, record: dict[str, Any]) -> None:
        """Validation scores into ``record``; the weights saved to ``best/`` when they improve,
        else one more evaluation without improvement counted for early stopping."""
        measured = self.evaluate()
        if not measured:
            return
        val = measured["validation_loss"]
        record.update({k: round(v, 6) for k, v in measured.items()})
        if self.objective is None:
            record["validation_perplexity"] = round(math.exp(min(val, 50)), 4)
        if state.best is None or val < state.best - 1e-6:
            state.best, state.bad_evals = val, 0
            self._save_weights(self.folder / "best")
        else:
            state.bad_evals += 1

    def _batches(self, state: TrainState) -> Iterator[tuple[int, list[Example]]]:
        return self._micro_batches(state.epoch, state.position)

    # --- checkpoints ----------------------------------------------------------------------------

    def _save_weights(self, folder: Path) -> None:

        with atomic_folder(folder) as staging:
            torch.save(trainable_state(self.model), staging / "trainable.pt")

    def _load_weights(self, folder: Path) -> None:

        load_trainable(
            self.model, torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True)
        )

    def _checkpoint(self, state: TrainState) -> None:
        payload = {
            "weights": trainable_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        write_checkpoint(self.folder, payload, state.as_json())

    def _resume(self) -> TrainState | None:
        found = read_checkpoint(self.folder)
        if found is None:
            return None
        payload, state = found
        load_trainable(self.model, payload["weights"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        return TrainState.from_json(state)


def plot_curve(
    history: list[dict[str, Any]],
    path: Path,
    labels: tuple[str, str] = ("train", "validation"),
    ylabel: str = "loss (nats per completion token)",
) -> None:
    """Training and validation loss (or any two series) against step, saved as a PNG."""
    if not history:
        return
    with saved_figure(path, figsize=(7, 4)) as (_, ax):
        ax.plot([h["step"] for h in history], [h["train_loss"] for h in history], label=labels[0])
        val = [h for h in history if "validation_loss" in h]
        if val:
            ax.plot(
                [h["step"] for h in val], [h["validation_loss"] for h in val], "o-", label=labels[1]
            )
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
