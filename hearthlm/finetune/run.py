"""``finetune()``: data, method and training loop put together, with outputs every chain can use.

The output folder holds ``adapter/`` (PEFT format, or hearthlm's bottleneck adapters) or, for full
and selective training, ``model/`` (a full transformers folder); ``hearth_finetune.json`` (the
settings, data report, parameter counts and results), ``metrics.jsonl`` and ``loss.png``.
``--adapter OUT`` (or ``--model OUT/model``) makes every chain and ``hearth eval`` use it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearthlm.config import FinetuneConfig, LLMConfig
from hearthlm.errors import ConfigError, TrainingError
from hearthlm.files import atomic_folder, write_atomic
from hearthlm.finetune.data import DataSpec, build_dataset
from hearthlm.finetune.distributed import Cluster, full_state_dict, sharding
from hearthlm.finetune.memory import MemoryBreakdown
from hearthlm.finetune.methods import (
    LoraConfig,
    MethodConfig,
    ParameterCount,
    count_parameters,
    prepare,
)
from hearthlm.finetune.trainer import TrainConfig, Trainer, TrainResult
from hearthlm.llm.hf_backend import TransformersBackend
from hearthlm.runs import claim_run, run_identity

SUMMARY = "hearth_finetune.json"


@dataclass
class FinetuneResult:
    """A finished fine-tuning run: its folder (``output`` is the adapter or model to load), the
    parameter count, the data report, the training result, and the trained model in memory."""

    folder: Path
    parameters: ParameterCount
    data: dict[str, Any]
    result: TrainResult
    model: Any = None  # the trained model in memory (a PEFT model for adapter methods)
    memory_estimate_mb: dict[str, float] | None = None  # with finetune(estimate_memory=True)

    @property
    def output(self) -> Path:
        """The adapter folder, or the full model folder for full and selective training."""
        model = self.folder / "model"
        return model if model.is_dir() else self.folder / "adapter"


def load_base(llm: LLMConfig) -> tuple[Any, Any, Any]:
    """(model, tokenizer, backend) of the base model in float32 on the transformers backend."""
    backend = TransformersBackend.load(
        llm.model_copy(update={"backend": "transformers", "dtype": "float32", "adapter": None})
    )
    return backend.model, backend.tokenizer, backend


def finetune(
    data: Sequence[DataSpec],
    out: Path,
    *,
    method: MethodConfig | None = None,
    train: TrainConfig | None = None,
    llm: LLMConfig | None = None,
    max_length: int | None = None,
    validation: float | None = None,
    pack: bool | None = None,
    mix_total: int | None = None,
    progress: bool = True,
    log: Any = print,
    estimate_memory: bool = False,
) -> FinetuneResult:
    """Adapt the local model on ``data`` into ``out``; an interrupted run resumes from there.

    ``method`` defaults to LoRA; a ``train`` config without a learning rate takes the method's
    own (``method.learning_rate``: 3e-3 for prompt tuning, 2e-4 for LoRA, …), as the CLI does.
    ``hearth_finetune.json`` records the measured training-phase peak by component; with
    ``estimate_memory`` the estimate made before training is recorded beside it.
    """
    method = method or LoraConfig()
    train = (train or TrainConfig()).with_default_learning_rate(method.learning_rate)
    llm = llm or LLMConfig()
    max_length, validation, pack = _run_defaults(max_length, validation, pack)
    _check_sharding(method, train)
    settings = {
        "method": method.model_dump(mode="json"),
        "train": train.model_dump(mode="json"),
        "data": [d.model_dump(mode="json") for d in data],
        "model": llm.model,
        "max_length": max_length,
        "validation": validation,
        "pack": pack,
        "mix_total": mix_total,
    }
    cluster = Cluster.from_environment(cpu=train.device == "cpu")
    log = cluster.silenced(log)
    # Resume only the same run: the same data, method and training settings.
    identity = run_identity(settings, [d.path for d in data])
    refusal = TrainingError(
        f"{out} holds a different fine-tuning run; choose another --out or delete it."
    )
    cluster.on_main(lambda: claim_run(out, identity, refusal))
    setup = _set_up(
        data, out, method, train, llm, max_length, validation, pack, mix_total, log, progress
    )
    estimate = setup.trainer.estimate_memory().megabytes() if estimate_memory else None
    result = setup.trainer.fit()
    model = _save_result(setup, method, llm, out)
    summary = _summary(settings, setup, result, estimate)
    cluster.on_main(lambda: write_atomic(out / SUMMARY, json.dumps(summary, indent=2)))
    return FinetuneResult(out, setup.parameters, setup.report, result, model, estimate)


def _save_result(setup: _Setup, method: MethodConfig, llm: LLMConfig, out: Path) -> Any:
    """The trained result saved by rank 0 (:func:`save_output`), and returned. An FSDP-sharded
    model is gathered whole into a copy of the base model first, the copy returned on rank 0."""
    trainer, model = setup.trainer, setup.model
    if trainer.fsdp:
        whole = full_state_dict(trainer.model)  # every rank takes part; rank 0 gets it
        if trainer.cluster.is_main:
            model = load_base(llm)[0]
            model.load_state_dict(whole)
    trainer.cluster.on_main(lambda: save_output(model, setup.tokenizer, method, out))
    return model


def _summary(
    settings: dict[str, Any], setup: _Setup, result: TrainResult, estimate: Any
) -> dict[str, Any]:
    """``hearth_finetune.json``: the run's settings, base model, trainable parameters, data
    report, result and memory (measured, and estimated where asked)."""
    parameters = setup.parameters
    return {
        "settings": settings,
        "base_model": setup.backend.source.name,
        "base_model_path": str(setup.backend.source.path),
        "parameters": {
            "trainable": parameters.trainable,
            "total": parameters.total,
            "percent": round(parameters.percent, 6),
        },
        "data": setup.report,
        "result": {
            "steps": result.steps,
            "train_loss": result.train_loss,
            "validation_loss": result.validation_loss,
            "best_validation_loss": result.best_validation_loss,
            "stopped_early": result.stopped_early,
            "seconds": round(result.seconds, 2),
            "tokens": result.tokens,
            "input_tokens": result.input_tokens,
            "tokens_per_s": round(result.tokens_per_s, 2),
        },
        "memory": {**result.memory, **({"estimate_mb": estimate} if estimate else {})},
    }


def estimate_finetune_memory(
    data: Sequence[DataSpec],
    *,
    method: MethodConfig | None = None,
    train: TrainConfig | None = None,
    llm: LLMConfig | None = None,
    max_length: int | None = None,
    validation: float | None = None,
    pack: bool | None = None,
    mix_total: int | None = None,
    log: Any = print,
) -> MemoryBreakdown:
    """The training-phase peak of :func:`finetune` with these settings, by component, without
    training: parameters give weights, gradients and AdamW's moments, and one forward pass of the
    largest micro-batch gives the activations and logits.

    Example:
        >>> print(estimate_finetune_memory([spec]).table("estimate"))  # doctest: +SKIP
    """
    method, llm = method or LoraConfig(), llm or LLMConfig()
    train = (train or TrainConfig()).with_default_learning_rate(method.learning_rate)
    max_length, validation, pack = _run_defaults(max_length, validation, pack)
    _check_sharding(method, train)
    with tempfile.TemporaryDirectory() as folder:
        setup = _set_up(
            data, Path(folder), method, train, llm, max_length, validation, pack, mix_total, log
        )
        return setup.trainer.estimate_memory()


def _check_sharding(method: MethodConfig, train: TrainConfig) -> None:
    """Refuse FSDP for a method that trains an adapter, before anything is written.

    Raises:
        ConfigError: FSDP asked of an adapter method, or DeepSpeed of the trainer.
    """
    if sharding(train.fsdp) and method.output == "adapter":
        raise ConfigError(
            f"FSDP shards full and selective fine-tuning; {method.method}'s adapter is small "
            "enough for every process to hold (DDP, without --fsdp)."
        )


def _run_defaults(
    max_length: int | None, validation: float | None, pack: bool | None
) -> tuple[int, float, bool]:
    """The arguments given, else ``[finetune]``'s defaults (:class:`FinetuneConfig`)."""
    defaults = FinetuneConfig()
    return (
        defaults.max_length if max_length is None else max_length,
        defaults.validation if validation is None else validation,
        defaults.pack if pack is None else pack,
    )


@dataclass
class _Setup:
    model: Any
    tokenizer: Any
    backend: Any
    trainer: Trainer
    parameters: ParameterCount
    report: dict[str, Any]


def _set_up(
    data: Sequence[DataSpec],
    out: Path,
    method: MethodConfig,
    train: TrainConfig,
    llm: LLMConfig,
    max_length: int,
    validation: float,
    pack: bool,
    mix_total: int | None,
    log: Any,
    progress: bool = False,
) -> _Setup:
    """The base model loaded and prepared for ``method``, the data built, and the trainer."""
    model, tokenizer, backend = load_base(llm)
    dataset = build_dataset(
        tokenizer,
        data,
        max_length=max_length,
        validation=validation,
        pack=pack,
        seed=train.seed,
        total=mix_total,
    )
    report = dataset.report()
    cluster = Cluster.from_environment(cpu=train.device == "cpu")
    cluster.check_divides(
        len(dataset.train), "training examples", "--limit, --mix-total or --validation"
    )
    log(
        f"data: {report['train_examples']} train / {report['validation_examples']} validation "
        f"examples, {report['truncated']} truncated to {max_length} tokens, "
        f"{report['dropped']} dropped"
    )
    from transformers import set_seed

    set_seed(train.seed)  # new weights (LoRA, soft prompt, adapters) start the same every run
    model = prepare(model, tokenizer, method)
    parameters = count_parameters(model)
    log(str(parameters))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    trainer = Trainer(
        model,
        dataset.train,
        dataset.validation,
        train,
        out,
        pad_id=int(pad),
        progress=progress,
        cluster=cluster,
    )
    return _Setup(model, tokenizer, backend, trainer, parameters, report)


def save_output(model: Any, tokenizer: Any, method: MethodConfig, out: Path) -> None:
    """The trained result in ``out/adapter`` or ``out/model``, as the method saves it, written
    into a staging folder that replaces the target whole (a kill mid-write leaves the last
    complete result, or none)."""
    with atomic_folder(out / method.output) as staging:
        method.save(model, tokenizer, staging)
