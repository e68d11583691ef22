"""Fine-tuning: adapt the local model (full, selective, LoRA, prompt tuning, (IA)³, bottleneck
adapters), align it (reward model, PPO, DPO), and export it for both backends.

Example:
    >>> from hearthlm.finetune import DataSpec, MethodConfig, finetune
    >>> run = finetune([DataSpec(path=Path("train.jsonl"))], Path("runs/lora"))  # doctest: +SKIP
    >>> ChatHearth(backend="transformers", adapter=run.output)  # doctest: +SKIP
"""

import warnings

from hearthlm.finetune.data import DataSpec, build_dataset, tokenize_chat
from hearthlm.finetune.methods import MethodConfig, count_parameters, prepare
from hearthlm.finetune.run import FinetuneResult, finetune
from hearthlm.finetune.trainer import TrainConfig, Trainer

# PEFT 0.21 reads a property transformers 5 deprecated; the warning is theirs and says nothing
# about the run, so it is not shown on every adapter.
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

__all__ = [
    "DataSpec",
    "FinetuneResult",
    "MethodConfig",
    "TrainConfig",
    "Trainer",
    "build_dataset",
    "count_parameters",
    "finetune",
    "prepare",
    "tokenize_chat",
]
