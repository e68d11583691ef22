"""Training under ``torch.profiler`` with ``profile_memory``: the allocator's own view of where
memory goes, by PyTorch's categories (parameters, optimizer state, inputs, temporaries,
activations, gradients, autograd detail), written beside the run for a closer look than
:class:`~hearthlm.finetune.memory.MemoryMeter` gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TIMELINE = "memory_timeline.json"
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
    """Profile the block when ``enabled`` and write ``folder/memory_timeline.json``: the
    timeline ``[times, sizes]`` from ``export_memory_timeline`` and the categories at its peak."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(
        activities=activities, profile_memory=True, record_shapes=True, with_stack=True
    ) as prof:
        yield
    target = folder / TIMELINE
    prof.export_memory_timeline(str(target), device="cuda:0" if device == "cuda" else "cpu")
    times, sizes = json.loads(target.read_text(encoding="utf-8"))
    peak = peak_by_category(sizes)
    target.write_text(
        json.dumps({"peak_by_category_mb": peak, "times": times, "sizes": sizes}), encoding="utf-8"
    )


def peak_by_category(sizes: list[list[int]]) -> dict[str, Any]:
    """The categories (MiB) at the moment their sum is highest."""
    if not sizes:
        return {}
    row = max(sizes, key=sum)
    out = {name: round(value / 2**20, 1) for name, value in zip(CATEGORIES, row[1:], strict=False)}
    return {**out, "total": round(sum(row) / 2**20, 1)}
