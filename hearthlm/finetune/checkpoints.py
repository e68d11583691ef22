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

from hearthlm.files import atomic_folder, old_folder, staging_folder
from hearthlm.finetune.distributed import Cluster, full_tensor, set_full_tensor
from hearthlm.runs import read_jsonl

__all__ = [
    "load_trainable",
    "read_checkpoint",
    "resume_history",
    "trainable_state",
    "write_checkpoint",
]


def write_checkpoint(
    folder: Path,
    payload: dict[str, Any],
    state: dict[str, Any],
    own: dict[str, Any] | None = None,
    cluster: Cluster | None = None,
) -> None:
    """Write ``folder/checkpoint`` atomically: ``payload``'s tensors and the JSON ``state``,
    with ``own`` (this process's part: its optimizer state, under FSDP its shard of it) and
    every random generator. On several processes each writes its own part
    (``rank-N.pt``) into the staging folder rank 0 made, and rank 0 then puts the whole in
    place. A kill at any moment leaves the old or the new checkpoint whole."""
    cluster = cluster or Cluster()
    mine = {**(own or {}), "rng": _rng_state()}
    target = folder / "checkpoint"
    if not cluster.distributed:
        with atomic_folder(target) as staging:
            torch.save({**payload, **mine}, staging / "state.pt")
            (staging / "state.json").write_text(json.dumps(state), encoding="utf-8")
        return
    part = f"rank-{cluster.rank}.pt"
    if cluster.is_main:
        with atomic_folder(target) as staging:
            cluster.barrier()  # the staging folder is there
            torch.save(mine, staging / part)
            cluster.barrier()  # every rank's part is written
            torch.save(payload, staging / "state.pt")
            (staging / "state.json").write_text(json.dumps(state), encoding="utf-8")
    else:
        cluster.barrier()
        torch.save(mine, staging_folder(target) / part)
        cluster.barrier()
    cluster.barrier()  # in place


def read_checkpoint(
    folder: Path, cluster: Cluster | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The payload (with this process's own part) and state of ``folder/checkpoint``, this
    process's random generators restored, or ``None`` when there is none."""
    cluster = cluster or Cluster()
    target = folder / "checkpoint"
    if cluster.is_main and not (target / "state.json").is_file():
        old = old_folder(target)  # killed between the two renames of atomic_folder
        if (old / "state.json").is_file():
            old.rename(target)
    cluster.barrier()
    if not (target / "state.json").is_file():
        return None
    state = json.loads((target / "state.json").read_text(encoding="utf-8"))
    payload = torch.load(target / "state.pt", map_location="cpu", weights_only=False)
    part = target / f"rank-{cluster.rank}.pt"
    if part.is_file():  # written by several processes
        payload.update(torch.load(part, map_location="cpu", weights_only=False))
    _restore_rng(payload.pop("rng"))
    return payload, dict(state)


def _rng_state() -> dict[str, Any]:
    import numpy as np

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _restore_rng(rng: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of ``model``'s trainable tensors, by parameter name (whole, under FSDP: a
    collective, which every process calls)."""
    return {
        name: full_tensor(p.detach()).cpu().clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into ``model``'s parameters of the same names (into this
    process's shard of each, under FSDP)."""
    own = dict(model.named_parameters())
    for name, value in weights.items():
        set_full_tensor(own[name], value)


def resume_history(path: Path, up_to: int) -> list[dict[str, Any]]:
    """The logged steps up to the checkpoint, with ``path`` cut back to them: later steps are
    redone after a resume, and a torn last line is dropped."""
    return read_jsonl(path, keep=lambda record: record.get("step", 0) <= up_to)
