"""Checkpoints of a training run, shared by the supervised trainer and PPO: the trainable
tensors, the optimizer's and scheduler's state, every random generator and the JSON state of the
loop, written atomically so that a kill at any moment leaves the old or the new one whole.

Example:
    >>> write_checkpoint(out, {"weights": trainable_state(model)}, {"step": 50})  # doctest: +SKIP
    >>> payload, state = read_checkpoint(out)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from hearthlm.files import atomic_folder, old_folder
from hearthlm.runs import read_jsonl

__all__ = [
    "load_trainable",
    "read_checkpoint",
    "resume_history",
    "trainable_state",
    "write_checkpoint",
]


def write_checkpoint(folder: Path, payload: dict[str, Any], state: dict[str, Any]) -> None:
    """Write ``folder/checkpoint`` atomically: tensors and every random generator to
    ``state.pt``, the JSON ``state`` beside them. A kill at any moment leaves the old or the new
    checkpoint whole."""
    import numpy as np

    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_folder(folder / "checkpoint") as staging:
        torch.save({**payload, "rng": rng}, staging / "state.pt")
        (staging / "state.json").write_text(json.dumps(state), encoding="utf-8")


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The payload and state of ``folder/checkpoint`` with the random generators restored, or
    ``None`` when there is none."""
    import numpy as np

    target = folder / "checkpoint"
    if not (target / "state.json").is_file():
        old = old_folder(target)  # killed between the two renames of atomic_folder
        if not (old / "state.json").is_file():
            return None
        old.rename(target)
    state = json.loads((target / "state.json").read_text(encoding="utf-8"))
    payload = torch.load(target / "state.pt", map_location="cpu", weights_only=False)
    rng = payload.pop("rng")
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    return payload, dict(state)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of ``model``'s trainable tensors, by parameter name."""
    return {
        name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad
    }


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into ``model``'s parameters of the same names."""

    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            own[name].copy_(value.to(own[name].device))


def resume_history(path: Path, up_to: int) -> list[dict[str, Any]]:
    """The logged steps up to the checkpoint, with ``path`` cut back to them: later steps are
    redone after a resume, and a torn last line is dropped."""
    return read_jsonl(path, keep=lambda record: record.get("step", 0) <= up_to)
