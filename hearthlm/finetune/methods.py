"""Which weights train: full, selective, LoRA, prompt tuning, (IA)³, or bottleneck adapters.

LoRA, prompt tuning and (IA)³ come from PEFT, so their folders load anywhere PEFT does. PEFT has no
bottleneck adapters, so they are a small torch module in :mod:`hearthlm.llm.adapters`, where the
transformers backend loads them too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from hearthlm.config import StrictModel
from hearthlm.errors import TrainingError
from hearthlm.finetune.lean_lora import lighten
from hearthlm.llm.adapters import Place, add_bottleneck_adapters

Method = Literal["full", "selective", "lora", "prompt-tuning", "ia3", "adapters"]


def _both_places() -> list[Place]:
    return ["attention", "mlp"]


class MethodConfig(StrictModel):
    """What to train, and the method's own settings."""

    method: Method = "lora"
    # selective: regular expressions over parameter names; everything else is frozen
    trainable: list[str] = Field(default_factory=lambda: [r"layers\.(2[8-9])\."])
    # LoRA
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
    # prompt tuning
    virtual_tokens: int = Field(16, ge=1)
    init_text: str | None = Field(
        None, description="Initialise the soft prompt from this text's token embeddings."
    )
    # bottleneck adapters
    bottleneck: int = Field(32, ge=1)
    adapter_places: list[Place] = Field(default_factory=lambda: _both_places())


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
    """The model made ready for ``config.method``: frozen where it should be, wrapped if needed."""
    method = config.method
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if method == "selective":
        patterns = [re.compile(p) for p in config.trainable]
        hit = 0
        for name, p in model.named_parameters():
            keep = any(pattern.search(name) for pattern in patterns)
            p.requires_grad_(keep)
            hit += keep
        if not hit:
            names = ", ".join(n for n, _ in list(model.named_parameters())[:6])
            raise TrainingError(
                f"no parameter matches {config.trainable}; names look like: {names}, …"
            )
        return model
    if method == "adapters":
        return add_bottleneck_adapters(model, config.bottleneck, config.adapter_places)
    from peft import (
        IA3Config,
        PromptTuningConfig,
        PromptTuningInit,
        TaskType,
        get_peft_model,
    )

    peft_config: Any
    if method == "lora":
        peft_config = lora_config(config)
    elif method == "ia3":
        peft_config = IA3Config(
            task_type=TaskType.CAUSAL_LM,
            target_modules=["k_proj", "v_proj", "down_proj"],
            feedforward_modules=["down_proj"],
        )
    else:
        init = PromptTuningInit.TEXT if config.init_text else PromptTuningInit.RANDOM
        peft_config = PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=config.virtual_tokens,
            prompt_tuning_init=init,
            prompt_tuning_init_text=config.init_text,
            tokenizer_name_or_path=getattr(tokenizer, "name_or_path", None),
        )
        if config.init_text:
            # PEFT re-reads the tokenizer by name; give it the one we already hold.
            return _prompt_tuning_from_text(model, tokenizer, peft_config, config)
    peft_model = get_peft_model(model, peft_config)
    if method == "lora":
        lighten(peft_model)
    return peft_model


def _prompt_tuning_from_text(model: Any, tokenizer: Any, peft_config: Any, config: Any) -> Any:
    import torch
    from peft import PromptTuningInit, get_peft_model

    peft_config.prompt_tuning_init = PromptTuningInit.RANDOM
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


def lora_config(config: MethodConfig, task_type: str = "CAUSAL_LM") -> Any:
    """PEFT's LoRA settings from ours (causal LM, or ``SEQ_CLS`` for the reward model)."""
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type,
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
    )
