"""Bottleneck adapters: the small torch module that both training and inference load.

PEFT has no bottleneck adapters and the maintained `adapters` library does not follow current
transformers, so they live here: after a frozen block's output projection, ``h + up(gelu(down
(h)))`` with ``up`` starting at zero, so training starts from the base model exactly. The
transformers backend loads a saved folder (:func:`load_bottleneck_adapters`); ``hearthlm.finetune``
adds, trains and saves them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from hearthlm.errors import TrainingError

Place = Literal["attention", "mlp"]
PLACES = {"attention": ("self_attn", "o_proj"), "mlp": ("mlp", "down_proj")}
BOTTLENECK_FILE = "hearth_adapters.json"
BOTTLENECK_WEIGHTS = "hearth_adapters.safetensors"


def _bottleneck_class() -> Any:
    # torch loads on first use, so importing the llm layer stays cheap
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        """``base(x) + up(gelu(down(base(x))))``; ``up`` starts at zero."""

        def __init__(self, base: nn.Module, width: int, size: int) -> None:
            super().__init__()
            self.base = base
            self.down = nn.Linear(width, size)
            self.up = nn.Linear(size, width)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.base(x)
            return h + self.up(nn.functional.gelu(self.down(h)))

    return Bottleneck


_ADAPTER_WEIGHT = re.compile(r"\.(down|up)\.(weight|bias)$")


def add_bottleneck_adapters(model: Any, size: int, places: Sequence[str]) -> Any:
    """Freeze ``model`` and wrap each layer's attention/MLP output projection with an adapter."""
    bottleneck = _bottleneck_class()
    for p in model.parameters():
        p.requires_grad_(False)
    layers = _layers(model)
    for layer in layers:
        for place in places:
            block_name, proj_name = PLACES[place]
            block = getattr(layer, block_name)
            base = getattr(block, proj_name)
            wrapped = bottleneck(base, base.out_features, size).to(
                base.weight.device, base.weight.dtype
            )
            setattr(block, proj_name, wrapped)
    model.hearth_adapters = {"bottleneck": size, "places": list(places), "layers": len(layers)}
    return model


def _layers(model: Any) -> Any:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TrainingError("bottleneck adapters need a decoder with model.layers (Llama-style)")
    return layers


def save_bottleneck_adapters(model: Any, folder: Path) -> None:
    """Save only the adapter weights of ``model`` (and their shape) to ``folder``, for
    :func:`load_bottleneck_adapters`."""
    from safetensors.torch import save_file

    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if _ADAPTER_WEIGHT.search(k)
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / BOTTLENECK_WEIGHTS))
    (folder / BOTTLENECK_FILE).write_text(json.dumps(model.hearth_adapters), encoding="utf-8")


def load_bottleneck_adapters(model: Any, folder: Path) -> Any:
    """Wrap ``model`` as saved in ``folder`` and load the adapter weights."""
    from safetensors.torch import load_file

    spec = json.loads((folder / BOTTLENECK_FILE).read_text(encoding="utf-8"))
    add_bottleneck_adapters(model, int(spec["bottleneck"]), list(spec["places"]))
    missing = model.load_state_dict(load_file(str(folder / BOTTLENECK_WEIGHTS)), strict=False)
    if missing.unexpected_keys:
        raise TrainingError(f"{folder}: adapter weights do not fit this model")
    return model


def is_bottleneck_folder(folder: Path) -> bool:
    """Whether ``folder`` holds bottleneck adapters saved by :func:`save_bottleneck_adapters`."""
    return (folder / BOTTLENECK_FILE).is_file()
