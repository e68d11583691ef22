"""The allocator's own view of where training memory goes, written beside the run for a closer
look than :class:`~hearthlm.finetune.memory.MemoryMeter` gives.

On the CPU, ``torch.profiler`` with ``profile_memory`` and its memory timeline by PyTorch's
categories (parameters, optimizer state, inputs, temporaries, activations, gradients, autograd
detail). torch deprecates that timeline in favour of CUDA memory snapshots, which have no CPU
counterpart; on a GPU the snapshot is written instead (open it at https://pytorch.org/memory_viz).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from hearthlm.files import write_atomic

TIMELINE = "memory_timeline.json"
SNAPSHOT = "memory_snapshot.pickle"
# The columns of torch's memory timeline: an unused first one, then its categories in this order.
CATEGORIES = (
    "parameter",
    "optimizer_state",
    "input",
    "temporary",
    "activation",
    "gradient",
    "autograd_detail",
    "unknown",
)


@contextmanager
def profiled(enabled: bool, folder: Path, device: str) -> Iterator[None]:
    """Profile the block when ``enabled``: on the CPU write ``folder/memory_timeline.json`` (the
    timeline ``[times, sizes]`` and the categories at its peak), on CUDA a memory snapshot."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    if device == "cuda":
        torch.cuda.memory._record_memory_history(max_entries=100_000)
        try:
            yield
        finally:
            torch.cuda.memory._dump_snapshot(str(folder / SNAPSHOT))
            torch.cuda.memory._record_memory_history(enabled=None)
        return
    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        yield
    target = folder / TIMELINE
    with warnings.catch_warnings():  # deprecated for CUDA snapshots, the only CPU timeline
        warnings.simplefilter("ignore", FutureWarning)
        prof.export_memory_timeline(str(target), device="cpu")
    times, sizes = json.loads(target.read_text(encoding="utf-8"))
    peak = peak_by_category(sizes)
    write_atomic(target, json.dumps({"peak_by_category_mb": peak, "times": times, "sizes": sizes}))


def peak_by_category(sizes: list[list[int]]) -> dict[str, Any]:
    """The categories (MiB) at the moment their sum is highest."""
    if not sizes:
        return {}
    row = max(sizes, key=sum)
    out = {name: round(value / 2**20, 1) for name, value in zip(CATEGORIES, row[1:], strict=False)}
    return {**out, "total": round(sum(row) / 2**20, 1)}
