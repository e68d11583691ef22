"""Fine-tuning: adapt the local model (full, selective, LoRA, prompt tuning, (IA)³, bottleneck
adapters), align it (reward model, PPO, DPO), and export it for both backends.

Example:
    >>> from hearthlm.finetune import DataSpec, PromptTuningConfig, finetune
    >>> run = finetune([DataSpec(path=Path("train.jsonl"))], Path("runs/lora"))  # doctest: +SKIP
    >>> soft = finetune([DataSpec(path=Path("train.jsonl"))], Path("runs/pt"),
    ...                 method=PromptTuningConfig(virtual_tokens=8))  # doctest: +SKIP
    >>> ChatHearth(backend="transformers", adapter=run.output)  # doctest: +SKIP
"""

from hearthlm.finetune.data import DataSpec, build_dataset, tokenize_chat
from hearthlm.finetune.methods import (
    BottleneckAdapterConfig,
    FullConfig,
    IA3Config,
    LoraConfig,
    MethodConfig,
    PromptTuningConfig,
    SelectiveConfig,
    available_methods,
    count_parameters,
    method_config,
    prepare,
)
from hearthlm.finetune.run import FinetuneResult, finetune
from hearthlm.finetune.trainer import Objective, TrainConfig, Trainer, TrainState

__all__ = [
    "BottleneckAdapterConfig",
    "DataSpec",
    "FinetuneResult",
    "FullConfig",
    "IA3Config",
    "LoraConfig",
    "MethodConfig",
    "Objective",
    "PromptTuningConfig",
    "SelectiveConfig",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "available_methods",
    "build_dataset",
    "count_parameters",
    "finetune",
    "method_config",
    "prepare",
    "tokenize_chat",
]
