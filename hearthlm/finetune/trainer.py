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
from hearthlm.finetune.distributed import Cluster, sharding
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

    def count(self, examples: list[Any]) -> int:
        """How many terms :meth:`loss` sums over ``examples``, known before the forward pass
        (a step's processes agree on its total first)."""
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
        cluster: Cluster | None = None,
    ) -> None:
        if not train:
            raise TrainingError("no training examples")
        self.cluster = cluster or Cluster()
        self.cluster.check_divides(len(train), "training examples")
        self.module = model  # the model itself: its weights are saved and loaded
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
        self._own = False  # see net
        self.device = pick_device(config.device)
        if self.cluster.distributed and self.device == "cuda":
            self.device = f"cuda:{self.cluster.local_rank}"
        self.bf16 = use_bf16(config.bf16, self.device_type)
        if config.activation_checkpointing:
            # transformers' own API, on the model PEFT wraps where it wraps one
            base: Any = getattr(model, "get_base_model", lambda: model)()
            base.activation_checkpointing_enable()
            base.config.use_cache = False
        if not any(p.requires_grad for p in model.parameters()):
            raise TrainingError("the model has no trainable parameters")
        # what the forward pass runs through: DDP or FSDP2 on several processes; wrapped before
        # the optimizer is made, since FSDP replaces the parameters with their shards
        self.fsdp = self.cluster.distributed and sharding(config.fsdp)
        self.model = self.cluster.wrap(model, self.fsdp, self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        global_batch = config.batch_size * config.grad_accum * self.cluster.world_size
        per_epoch = math.ceil(len(train) / global_batch)
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
        """This rank's slices of the epoch's global micro-batches (``batch_size x world size``
        examples of the seeded order), from position ``start``, with the position after each."""
        order = self._order(epoch)
        size = self.config.batch_size * self.cluster.world_size
        for position in range(start, len(order), size):
            batch = [self.train_examples[i] for i in order[position : position + size]]
            yield position + size, self.cluster.shard(batch)

    @property
    def net(self) -> torch.nn.Module:
        """What a forward pass runs through: the wrapped model (DDP averages the gradients,
        FSDP gathers each layer's weights), but under DDP the model itself outside training
        steps (:meth:`_on_own`), where each process runs its own share of the work and DDP
        would wait for a backward pass or for the others."""
        return self.module if self._own and not self.fsdp else self.model

    @contextlib.contextmanager
    def _on_own(self) -> Iterator[None]:
        """Within: forward passes that are not a training step (validation, the estimate)."""
        self._own = True
        try:
            yield
        finally:
            self._own = False

    @property
    def device_type(self) -> str:
        """``cuda`` or ``cpu``, as autocast names devices (``self.device`` may be ``cuda:1``)."""
        return self.device.split(":")[0]

    def _count(self, examples: list[Any]) -> int:
        """The terms the loss sums over ``examples``: completion tokens (each but the first
        position of an example is predicted), or the objective's own."""
        if self.objective is not None:
            return self.objective.count(examples)
        return sum(x != IGNORE for e in examples for x in e.labels[1:])

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
        keep = torch.nn.functional.pad(wanted, (_virtual_tokens(self.module), 1))
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(
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
        else the objective measures (pairwise accuracy), over every process's share of the
        validation set. Under FSDP every process runs the whole set, since each forward pass
        gathers the weights from all of them."""
        if not self.validation:
            return {}
        sharded = self.cluster.distributed and not self.fsdp
        examples = (
            self.validation[self.cluster.rank :: self.cluster.world_size]
            if sharded
            else self.validation
        )
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), self._on_own():
            for i in range(0, len(examples), self.config.batch_size):
                loss, n = self._loss(list(examples[i : i + self.config.batch_size]))
                total, count = total + float(loss), count + n
            extra = {}
            if self.objective is not None and examples:
                extra = self.objective.validate(self, examples)
        self.model.train()
        if sharded:  # sums over the ranks; the objective's figures are means, weighted by share
            names = sorted(extra)
            sums = self.cluster.sum(
                [total, count, len(examples), *(extra[k] * len(examples) for k in names)]
            )
            total, count = sums[0], int(sums[1])
            extra = {k: sums[3 + i] / max(sums[2], 1) for i, k in enumerate(names)}
        return {"validation_loss": total / max(count, 1), **extra}

    def estimate_memory(self) -> MemoryBreakdown:
        """The training-phase peak by component, from the parameters and one forward pass of the
        largest micro-batch (nothing is trained); see :func:`~hearthlm.finetune.memory.estimate`.
        """
        largest = max(self._planned_batches(), key=self._batch_weight)
        self.model.to(self.device).train()
        with forward_buffers_unmapped(self.config.return_freed_memory), self._on_own():
            return estimate(self.module, lambda: self._loss(largest)[0], _vocab_size(self.module))

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
        weights kept), checkpointed every ``save_every``. On several processes rank 0 writes
        the log, the checkpoints and the plot; every rank measures its own memory."""
        main = self.cluster.is_main
        state = self._resume() or TrainState()
        if state.step == 0:
            random.seed(self.config.seed)
            torch.manual_seed(self.config.seed)
        metrics_path = self.folder / "metrics.jsonl"
        # every process keeps the log (the same records: losses are reduced); rank 0 writes it
        found = resume_history(metrics_path, state.step) if main else None
        history: list[dict[str, Any]] = self.cluster.gather(found)[0]
        self.model.to(self.device).train()
        # Measuring hooks every saved tensor and resets the process's peak: only when asked.
        meter = None
        if self.config.measure_memory:
            meter = MemoryMeter(self.module, self.optimizer, _vocab_size(self.module), self.device)
            meter.start()
        started = time.perf_counter() - state.seconds
        stopped_early = False
        train_loss = None
        with (
            progress_bar(
                self.progress and main,
                self.total_steps,
                "training",
                completed=state.step,
                metric="loss",
            ) as advance,
            contextlib.closing(meter) if meter else contextlib.nullcontext(),  # hooks removed
            meter.saving() if meter else contextlib.nullcontext(),
            profiled(self.config.profile_memory and main, self.folder, self.device),
        ):
            self._stream = self._batches(state)
            while state.step < self.total_steps:
                train_loss = self._step(state, meter)
                record = self._record(state, train_loss)
                last = state.step == self.total_steps
                if state.step % self.config.eval_every == 0 or last:
                    self._validate(state, record)
                history.append(record)
                if main:
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
        if self.cluster.distributed:  # each process's own, in rank order
            memory = {**memory, "per_process": self.cluster.gather(memory)}
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
        if self.cluster.is_main:
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
        """One optimizer step over ``grad_accum`` micro-batches (on every process, its slice of
        each); returns the step's training loss, over the global batch.

        The step's loss terms are counted first, over every process: each micro-batch's loss
        sum is then divided by that global count (times the world size, since DDP and FSDP
        average the processes' gradients), so the gradient is the token-weighted one of the
        global batch, the one a single process with the whole batch computes."""
        batches = [self._next_micro_batch(state) for _ in range(self.config.grad_accum)]
        counts = self.cluster.sum(
            [sum(map(self._count, batches)), sum(len(e) for b in batches for e in b)]
        )
        token_sum, world = max(int(counts[0]), 1), self.cluster.world_size
        loss_sum = 0.0
        for i, examples in enumerate(batches):
            with self._gradient_sync(i == len(batches) - 1):
                with forward_buffers_unmapped(self.config.return_freed_memory):
                    loss, _ = self._loss(examples)
                (loss * world / token_sum).backward()
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
        state.tokens += int(counts[0])
        state.input_tokens += int(counts[1])
        return self.cluster.sum([loss_sum])[0] / token_sum

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Within: the backward pass averages the gradients over the processes only when
        ``sync`` (the step's last micro-batch); the others just accumulate."""
        if sync or not self.cluster.distributed:
            return contextlib.nullcontext()
        no_sync: Any = getattr(self.model, "no_sync", None)
        if no_sync is not None:  # DDP
            return no_sync()
        return _fsdp_without_sync(self.model)

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
        weights = trainable_state(self.module)  # every rank: FSDP gathers the shards
        self.cluster.on_main(lambda: _save_trainable(weights, folder))

    def _load_weights(self, folder: Path) -> None:
        saved = torch.load(folder / "trainable.pt", map_location="cpu", weights_only=True)
        load_trainable(self.module, saved)

    def _checkpoint(self, state: TrainState) -> None:
        shared = {
            "weights": trainable_state(self.module),
            "scheduler": self.scheduler.state_dict(),
        }
        own = {"optimizer": self.optimizer.state_dict()}  # under FSDP, this rank's shard
        saved = {**state.as_json(), "world_size": self.cluster.world_size}
        write_checkpoint(self.folder, shared, saved, own=own, cluster=self.cluster)

    def _resume(self) -> TrainState | None:
        found = read_checkpoint(self.folder, self.cluster)
        if found is None:
            return None
        payload, state = found
        written = int(state.get("world_size", 1))
        if written != self.cluster.world_size:
            raise TrainingError(
                f"{self.folder}'s checkpoint was written by {written} process(es); its data "
                f"order and batches depend on it. Resume with --num-processes {written}, or "
                "start again in a new --out folder."
            )
        load_trainable(self.module, payload["weights"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        return TrainState.from_json(state)


def _save_trainable(weights: dict[str, torch.Tensor], folder: Path) -> None:
    with atomic_folder(folder) as staging:
        torch.save(weights, staging / "trainable.pt")


@contextlib.contextmanager
def _fsdp_without_sync(model: torch.nn.Module) -> Iterator[None]:
    """An FSDP2 model's backward without reducing the gradients (they accumulate locally)."""
    sharded: Any = model  # an FSDPModule
    sharded.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        sharded.set_requires_gradient_sync(True)


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
