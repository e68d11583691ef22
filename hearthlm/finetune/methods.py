"""Which weights train: full, selective, LoRA, prompt tuning, (IA)³, or bottleneck adapters.

Each method is a config class (as in peft: ``LoraConfig``, ``PromptTuningConfig``, …) holding its
own settings, its default learning rate, how it prepares the model and how it saves the result.
Methods are found by name in a registry: the built-ins below, then any installed package's
``hearthlm.methods`` entry points, loaded as backends and tools are.

LoRA, prompt tuning and (IA)³ come from PEFT, so their folders load anywhere PEFT does. PEFT has no
bottleneck adapters, so they are a small torch module in :mod:`hearthlm.llm.adapters`, where the
transformers backend loads them too.

Example:
    >>> LoraConfig(rank=4).learning_rate
    0.0002
    >>> method_config("prompt-tuning", virtual_tokens=8).learning_rate
    0.003
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError

from hearthlm.config import StrictModel, config_error_from
from hearthlm.errors import TrainingError
from hearthlm.llm.adapters import Place, add_bottleneck_adapters, save_bottleneck_adapters
from hearthlm.plugins import Registry

ENTRY_POINT_GROUP = "hearthlm.methods"


def _both_places() -> list[Place]:
    return ["attention", "mlp"]


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Inside: PEFT 0.21's reading of a property transformers 5 deprecated
    (``is_gradient_checkpointing``) warns nothing. The warning is theirs and says nothing about
    the run; it is hidden only around the PEFT calls, not in the rest of the process."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


class MethodConfig(StrictModel):
    """A training method: what trains, and how its result is saved.

    A new method subclasses this with a ``method`` name, its own fields, a default
    ``learning_rate`` and :meth:`prepare`, and registers the class under the
    ``hearthlm.methods`` entry-point group; ``finetune(method=…)`` and ``hearth finetune NAME``
    then use it like a built-in.
    """

    method: str
    learning_rate: ClassVar[float] = 2e-4  # the peak learning rate when TrainConfig sets none
    output: ClassVar[Literal["adapter", "model"]] = "adapter"  # the folder the result goes to

    def prepare(self, model: Any, tokenizer: Any) -> Any:
        """``model`` made ready to train: frozen where it should be, wrapped if needed."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to prepare a model")

    def save(self, model: Any, tokenizer: Any, folder: Path) -> None:
        """Write the trained result to ``folder`` (``OUT/adapter`` or ``OUT/model``)."""
        model.save_pretrained(folder)


class FullConfig(MethodConfig):
    """Full fine-tuning: every weight trains."""

    method: Literal["full"] = "full"
    learning_rate: ClassVar[float] = 2e-5
    output: ClassVar[Literal["adapter", "model"]] = "model"

    def prepare(self, model: Any, tokenizer: Any) -> Any:
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model: Any, tokenizer: Any, folder: Path) -> None:
        _save_model_folder(model, tokenizer, folder)


class SelectiveConfig(MethodConfig):
    """Selective: only the parameters matching the trainable patterns train; the rest freeze."""

    method: Literal["selective"] = "selective"
    learning_rate: ClassVar[float] = 5e-5
    output: ClassVar[Literal["adapter", "model"]] = "model"
    trainable: list[str] = Field(
        default_factory=lambda: [r"layers\.(2[8-9])\."],
        description="Regular expressions over parameter names.",
    )

    def prepare(self, model: Any, tokenizer: Any) -> Any:
        patterns = [re.compile(p) for p in self.trainable]
        hit = 0
        for name, p in model.named_parameters():
            keep = any(pattern.search(name) for pattern in patterns)
            p.requires_grad_(keep)
            hit += keep
        if not hit:
            names = ", ".join(n for n, _ in list(model.named_parameters())[:6])
            raise TrainingError(
                f"no parameter matches {self.trainable}; names look like: {names}, …"
            )
        return model

    def save(self, model: Any, tokenizer: Any, folder: Path) -> None:
        _save_model_folder(model, tokenizer, folder)


def _save_model_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """A full transformers folder: weights as safetensors, and the tokenizer."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


class LoraConfig(MethodConfig):
    """LoRA: low-rank updates to the chosen projections (PEFT)."""

    method: Literal["lora"] = "lora"
    learning_rate: ClassVar[float] = 2e-4
    rank: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )

    def prepare(self, model: Any, tokenizer: Any) -> Any:
        from peft import get_peft_model

        # lean_lora imports torch: here, not at the top, so `hearth` lists methods without it.
        from hearthlm.finetune.lean_lora import lighten

        with quiet_peft():
            peft_model = get_peft_model(model, lora_config(self))
        lighten(peft_model)
        return peft_model


class PromptTuningConfig(MethodConfig):
    """Prompt tuning: a trained soft prompt of virtual tokens before the input (PEFT)."""

    method: Literal["prompt-tuning"] = "prompt-tuning"
    learning_rate: ClassVar[float] = 3e-3
    virtual_tokens: int = Field(16, ge=1)
    init_text: str | None = Field(
        None, description="Initialise the soft prompt from this text's token embeddings."
    )

    def prepare(self, model: Any, tokenizer: Any) -> Any:
        from peft import PromptTuningConfig as PeftPromptTuningConfig
        from peft import PromptTuningInit, TaskType, get_peft_model

        init = PromptTuningInit.TEXT if self.init_text else PromptTuningInit.RANDOM
        peft_config = PeftPromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=self.virtual_tokens,
            prompt_tuning_init=init,
            prompt_tuning_init_text=self.init_text,
            tokenizer_name_or_path=getattr(tokenizer, "name_or_path", None),
        )
        if self.init_text:
            # PEFT re-reads the tokenizer by name; give it the one we already hold.
            return _prompt_tuning_from_text(model, tokenizer, peft_config, self)
        with quiet_peft():
            return get_peft_model(model, peft_config)


class IA3Config(MethodConfig):
    """(IA)³: learned rescaling of keys, values and feed-forward activations (PEFT)."""

    method: Literal["ia3"] = "ia3"
    learning_rate: ClassVar[float] = 1e-3

    def prepare(self, model: Any, tokenizer: Any) -> Any:
        from peft import IA3Config as PeftIA3Config
        from peft import TaskType, get_peft_model

        peft_config = PeftIA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=["k_proj", "v_proj", "down_proj"],
            feedforward_modules=["down_proj"],
        )
        with quiet_peft():
            return get_peft_model(model, peft_config)


class BottleneckAdapterConfig(MethodConfig):
    """Bottleneck adapters after the attention and MLP blocks of a frozen model."""

    method: Literal["adapters"] = "adapters"
    learning_rate: ClassVar[float] = 5e-4
    bottleneck: int = Field(32, ge=1)
    adapter_places: list[Place] = Field(default_factory=lambda: _both_places())

    def prepare(self, model: Any, tokenizer: Any) -> Any:
        return add_bottleneck_adapters(model, self.bottleneck, self.adapter_places)

    def save(self, model: Any, tokenizer: Any, folder: Path) -> None:
        save_bottleneck_adapters(model, folder)


METHODS: Registry[type[MethodConfig]] = Registry(
    ENTRY_POINT_GROUP,
    noun="training method",
    check=MethodConfig,
    builtins={
        "lora": LoraConfig,
        "prompt-tuning": PromptTuningConfig,
        "full": FullConfig,
        "selective": SelectiveConfig,
        "adapters": BottleneckAdapterConfig,
        "ia3": IA3Config,
    },
)


def available_methods() -> dict[str, type[MethodConfig]]:
    """Every training method by name: the built-ins, then plugins (``hearthlm.methods``)."""
    return METHODS.load_all()


def method_class(name: str) -> type[MethodConfig]:
    """The config class of the method registered as ``name``.

    Raises:
        ConfigError: No method has that name; the message lists the known ones.
        PluginError: A plugin's method fails to import or is not a :class:`MethodConfig`.
    """
    return METHODS.get(name)


def method_config(name: str, **fields: Any) -> MethodConfig:
    """The settings of method ``name`` from keyword fields, validated.

    Raises:
        ConfigError: An unknown method, or a field the method does not have or a bad value.
    """
    cls = method_class(name)
    try:
        return cls(method=name, **fields)
    except ValidationError as exc:
        raise config_error_from(exc, f"method {name!r}") from None


@dataclass
class ParameterCount:
    """How many parameters a method trains, of how many in the model."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable parameters: {self.trainable:,} of {self.total:,} ({self.percent:.4f}%)"


def count_parameters(model: Any) -> ParameterCount:
    """The trainable (``requires_grad``) and total parameter counts of ``model``."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return ParameterCount(trainable, total)


def prepare(model: Any, tokenizer: Any, config: MethodConfig) -> Any:
    """The model made ready for ``config``'s method: frozen where it should be, wrapped if
    needed."""
    return config.prepare(model, tokenizer)


def _prompt_tuning_from_text(
    model: Any, tokenizer: Any, peft_config: Any, config: PromptTuningConfig
) -> Any:
    import torch
    from peft import PromptTuningInit, get_peft_model

    peft_config.prompt_tuning_init = PromptTuningInit.RANDOM
    with quiet_peft():
        peft_model = get_peft_model(model, peft_config)
    ids = tokenizer.encode(config.init_text, add_special_tokens=False)
    if not ids:
        raise TrainingError("init_text has no tokens")
    ids = (ids * config.virtual_tokens)[: config.virtual_tokens]
    with torch.no_grad():
        embedding = model.get_input_embeddings()(torch.tensor(ids, device=model.device))
        peft_model.prompt_encoder["default"].embedding.weight.copy_(embedding)
    peft_config.prompt_tuning_init = PromptTuningInit.TEXT
    return peft_model


def lora_config(config: LoraConfig, task_type: str = "CAUSAL_LM") -> Any:
    """PEFT's LoRA settings from ours (causal LM, or ``SEQ_CLS`` for the reward model)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        task_type=task_type,
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
    )
