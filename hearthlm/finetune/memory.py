"""Where fine-tuning memory goes: weights, gradients, optimizer states, activations (the logits
apart) and everything else, estimated before a run and measured during it.

The measurement counts bytes with PyTorch's own hooks: ``saved_tensors_hooks`` see every tensor
autograd keeps for the backward pass (each storage once, parameters excluded, the ones whose last
dimension is the vocabulary counted as logits), ``register_post_accumulate_grad_hook`` sees each
gradient arrive, and the optimizer's ``state`` holds its moments. The accounted total is tracked
as it changes, and its composition at its highest point is the breakdown. The peak itself is the
kernel's: the resident-set high-water mark (``VmHWM``), reset with ``/proc/self/clear_refs`` when
training starts so that loading does not count. What the hooks do not see (the interpreter and
libraries, transient buffers inside an operator, allocator slack) is ``other``.

Both change the process a library runs in, so both are opt-in: ``TrainConfig.measure_memory``
(``--measure-memory``) turns the measurement on, and the hooks are removed when training ends;
the reset peak cannot be given back. ``TrainConfig.return_freed_memory``
(``--return-freed-memory``) turns on the allocator tuning below, whose thresholds glibc cannot
report, so they stay at glibc's own ceiling afterwards.

On glibc, :func:`forward_buffers_unmapped` fixes malloc's mmap threshold during forward passes:
by default glibc raises it after each large free, so activation buffers of a few MB come from the
heap, where the small tensors kept beside them pin the freed space, and its pages stay in the
process. Measured on LoRA at batch 4 x 384 tokens, the peak resident set fell from 4.2 GB to
2.8 GB with the same tensors allocated (mapping every buffer in the backward pass too saves a
little more, but its page faults cost a third of the speed).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

MB = 2**20
COMPONENTS = ("weights", "gradients", "optimizer", "activations", "logits", "other")
# glibc mallopt parameters (malloc.h); 128 KiB is glibc's own starting mmap threshold
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 128 * 1024
HEAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


@dataclass
class MemoryBreakdown:
    """Bytes by component at the peak; ``total`` is their sum."""

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    logits: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        return sum(asdict(self).values())

    def megabytes(self) -> dict[str, float]:
        """Each component and the total in MiB, rounded to 0.1."""
        out = {k: round(v / MB, 1) for k, v in asdict(self).items()}
        return {**out, "total": round(self.total / MB, 1)}

    def table(self, title: str) -> str:
        """Aligned lines, one per component, for the terminal."""
        rows = [title] + [
            f"  {name:<12}{value:>10,.0f} MB" for name, value in self.megabytes().items()
        ]
        return "\n".join(rows)


@functools.cache
def _libc_function(name: str) -> Any:
    """glibc's ``mallopt`` or ``malloc_trim``, or ``None`` off glibc."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def _mallopt() -> Any:
    return _libc_function("mallopt")


@contextmanager
def forward_buffers_unmapped(enabled: bool = True) -> Iterator[None]:
    """Inside: glibc maps every buffer of 128 KiB or more on its own, so the activations a forward
    pass keeps go back to the system when the backward pass frees them. Outside: a fixed 32 MiB
    threshold (glibc's own dynamic ceiling), so the backward pass's short-lived buffers are reused
    from the heap without fresh page faults. Does nothing off glibc or when not ``enabled``."""
    mallopt = _mallopt() if enabled else None
    if mallopt is None:
        yield
        return
    # Setting a threshold also turns off glibc's dynamic adjustment of both.
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, MMAP_THRESHOLD)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD)
        mallopt(_M_TRIM_THRESHOLD, 2 * HEAP_THRESHOLD)


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark to the current resident set (Linux);
    returns whether it could."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def _status(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def rss() -> int:
    """The resident set now, in bytes (0 where /proc is missing)."""
    return _status("VmRSS") or 0


def peak_rss() -> int:
    """The resident-set high-water mark in bytes, since the last :func:`reset_peak_rss`."""
    found = _status("VmHWM")
    return found if found is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def unmeasured() -> dict[str, Any]:
    """What a run records without ``measure_memory``: the process's resident-set peak so far
    (loading and anything before it included), read without changing anything."""
    return {"measured": False, "process_peak_mb": round(peak_rss() / MB, 1)}


def tensor_bytes(tensors: Iterator[Any]) -> int:
    """Bytes held by ``tensors`` (elements times element size)."""
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_bytes(optimizer: Any) -> int:
    """Bytes of every tensor the optimizer keeps per parameter (AdamW: two moments and a step)."""

    return sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


class MemoryMeter:
    """Accounts the bytes of a training run by component and keeps their composition at the
    accounted peak. Use :meth:`saving` around forward and backward passes, call :meth:`stepped`
    after the optimizer step and :meth:`grads_freed` after ``zero_grad``.

    Example:
        >>> meter = MemoryMeter(model, optimizer, vocab_size=49152)  # doctest: +SKIP
        >>> with meter.saving():  # doctest: +SKIP
        ...     loss = model(**batch).loss; loss.backward()
    """

    def __init__(self, model: Any, optimizer: Any, vocab_size: int, device: str = "cpu") -> None:
        self.optimizer = optimizer
        self.device = device
        self.vocab_size = vocab_size
        params = list(model.parameters())
        self._params = params
        self._param_storages = {p.untyped_storage().data_ptr() for p in params}
        self.weights = tensor_bytes(iter(params))
        self.live = {"gradients": 0, "optimizer": 0, "activations": 0, "logits": 0}
        self._saved: dict[int, list[Any]] = {}  # storage -> [kind, bytes, holders]
        self._graded: set[int] = set()
        self.peak = MemoryBreakdown(weights=self.weights)
        self._handles = [
            p.register_post_accumulate_grad_hook(self._grad_arrived)
            for p in params
            if p.requires_grad
        ]
        self.start_rss = 0

    def start(self) -> None:
        """Reset the peak (resident set; CUDA's allocated peak on a GPU): what follows is the
        training phase."""
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.start_rss = torch.cuda.memory_allocated()
            return

        with torch.no_grad():  # page in weights that loading mapped from disk but never read
            for p in self._params:
                p.sum()
        trim = _libc_function("malloc_trim")
        if trim is not None:  # free heap pages from loading or an earlier run leave the count
            trim(0)
        reset_peak_rss()
        self.start_rss = rss()

    def _peak(self) -> int:
        if self.device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        return peak_rss()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # --- accounting -----------------------------------------------------------------------------

    def _check(self) -> None:
        accounted = self.weights + sum(self.live.values())
        if accounted > self.peak.total:
            self.peak = MemoryBreakdown(weights=self.weights, **self.live)

    def _pack(self, tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if tensor.device.type == "meta" or key in self._param_storages or not key:
            return tensor.detach()
        entry = self._saved.get(key)
        if entry is None:
            is_logits = tensor.dim() >= 2 and tensor.shape[-1] == self.vocab_size
            kind = "logits" if is_logits else "activations"
            entry = self._saved[key] = [kind, storage.nbytes(), 0]
            self.live[entry[0]] += entry[1]
            self._check()
        entry[2] += 1
        # A detached alias (same storage and version counter): returning ``tensor`` itself would
        # tie an output saved by its own node into a cycle through C++ that is never freed.
        alias = tensor.detach()
        weakref.finalize(alias, self._unpacked, key)
        return alias

    def _unpacked(self, key: int) -> None:
        entry = self._saved.get(key)
        if entry is None:
            return
        entry[2] -= 1
        if entry[2] <= 0:
            self.live[entry[0]] -= entry[1]
            del self._saved[key]

    def _grad_arrived(self, param: Any) -> None:
        if id(param) not in self._graded and param.grad is not None:
            self._graded.add(id(param))
            self.live["gradients"] += param.grad.numel() * param.grad.element_size()
            self._check()

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Count what autograd saves for the backward pass inside this block."""

        with torch.autograd.graph.saved_tensors_hooks(self._pack, _identity):
            yield

    def stepped(self) -> None:
        """After ``optimizer.step()``: the moments exist now, beside the gradients."""
        self.live["optimizer"] = optimizer_bytes(self.optimizer)
        self._check()

    def grads_freed(self) -> None:
        """After ``zero_grad(set_to_none=True)``."""
        self.live["gradients"] = 0
        self._graded.clear()

    def report(self) -> dict[str, Any]:
        """The measured peak and its composition, in MiB: ``other`` is the peak less what the
        hooks accounted; ``other_at_start`` what was resident outside the weights when training
        began (interpreter, libraries, data). The peak is the resident set's on the CPU and
        ``torch.cuda.max_memory_allocated`` on a GPU."""
        peak = self._peak()
        at_peak = MemoryBreakdown(**{**asdict(self.peak), "other": 0})
        at_peak.other = max(0, peak - at_peak.total)
        return {
            "measured": True,
            "device": self.device,
            "peak_mb": round(peak / MB, 1),
            "by_component_mb": at_peak.megabytes(),
            "other_at_start_mb": round(max(0, self.start_rss - self.weights) / MB, 1),
        }


def _identity(tensor: Any) -> Any:
    return tensor


def estimate(
    model: Any,
    forward: Callable[[], Any],
    vocab_size: int,
    optimizer_moments: int = 2,
) -> MemoryBreakdown:
    """The training-phase peak by component, before training.

    Weights, gradients and optimizer states follow from the parameters (AdamW keeps
    ``optimizer_moments`` tensors the size of each trainable one). Activations and logits are what
    autograd saves in one forward pass of the largest micro-batch (``forward`` runs it; nothing is
    updated). ``other`` is the resident set outside the weights now (interpreter, libraries,
    data).

    The peak is the larger of two moments: the start of the backward pass (every activation
    saved, the logits' gradient beside them, and the moments from earlier steps), and the first
    optimizer step (every gradient and the new moments).
    """
    params = list(model.parameters())
    weights = tensor_bytes(iter(params))
    trainable = tensor_bytes(p for p in params if p.requires_grad)
    meter = MemoryMeter(model, optimizer=None, vocab_size=vocab_size)
    meter.close()  # no gradients arrive: nothing runs backward
    with meter.saving():
        out = forward()
    activations, logits = meter.peak.activations, meter.peak.logits
    del out
    other = max(0, rss() - weights)
    moments = optimizer_moments * trainable
    backward_start = MemoryBreakdown(
        weights, 0, moments, activations, 2 * logits, other
    )  # the gradient of the logits is as large as they are
    first_step = MemoryBreakdown(weights, trainable, moments, 0, 0, other)
    return max(backward_start, first_step, key=lambda b: b.total)
