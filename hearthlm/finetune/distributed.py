"""Training on several processes: the processes a launcher started, and what they share.

``hearth finetune ... --num-processes N`` (or ``torchrun --nproc-per-node N -m hearthlm.cli
finetune ...``, or ``accelerate launch -m hearthlm.cli finetune ...``) starts N copies of one
run. Each learns its rank from the launcher's variables; accelerate's ``PartialState`` joins
them in one process group, gloo between CPU processes and NCCL between GPUs, with no code path
per device. What the trainer needs of them is here:

- **one data order**: every rank plans the same global micro-batches (``batch_size x world
  size`` examples, from the seeded order) and trains on its own slice of each, so that the
  global batch is ``batch_size x grad_accum x world size`` and the run is the run one process
  makes with ``batch_size x world size``;
- **one loss**: the tokens of a step are counted on every rank first, and each rank's loss sum
  is divided by the global count (and multiplied by the world size, since DDP averages the
  ranks' gradients), so the gradient is the one of the global batch, token weighted;
- **one writer**: rank 0 writes the metrics, plots, checkpoints and outputs; the others wait
  for it (:meth:`Cluster.barrier`) and learn of its failures (:meth:`Cluster.on_main`);
- **the model wrapped**: DDP (every rank holds all the weights and averages the gradients), or
  with ``fsdp``, torch's FSDP2 ``fully_shard`` over each decoder layer and the whole model
  (each rank holds a shard of every weight and of the optimizer's moments). Both run on CPU
  processes too (gloo), which is how the tests run them.

Example:
    >>> cluster = Cluster.from_environment()  # one process: rank 0 of 1
    >>> cluster.world_size, cluster.is_main
    (1, True)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from hearthlm.errors import ConfigError, TrainingError

T = TypeVar("T")
# What torchrun and accelerate launch set in each process they start: its place, and where the
# processes meet (accelerate sets the address alone for one process too).
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
MEETING_VARIABLES = ("MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Cluster:
    """The processes of one training run and this process's place among them."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(
        cls, environ: dict[str, str] | None = None, *, cpu: bool = False
    ) -> Cluster:
        """The cluster the launcher's variables describe, its process group joined (over gloo
        where there is no GPU, or with ``cpu``; NCCL between GPUs); one process (rank 0 of 1)
        without a launcher. The group is joined once per process: later calls return it.

        Raises:
            ConfigError: some of the launcher's variables are set and not the others (a
                ``WORLD_SIZE`` left in the shell, say): a run must not guess its place.
        """
        environ = dict(os.environ if environ is None else environ)
        given = [name for name in LAUNCHER_VARIABLES if name in environ]
        if not given:
            return cls()
        missing = [name for name in LAUNCHER_VARIABLES if name not in environ]
        if missing:
            raise _unlaunched(f"{_are(given)} set but {_are(missing)} not")
        if int(environ["WORLD_SIZE"] or 1) == 1:
            return cls()
        absent = [name for name in MEETING_VARIABLES if name not in environ]
        if absent:  # where the processes meet
            raise _unlaunched(f"WORLD_SIZE is {environ['WORLD_SIZE']} but {_are(absent)} not set")
        from accelerate import PartialState

        state = PartialState(cpu=cpu or not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state.local_process_index)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's slice of a global micro-batch: ``len(items) / world_size`` items, the
        ranks' slices in rank order making up the whole."""
        per = len(items) // self.world_size
        return list(items[self.rank * per : (self.rank + 1) * per])

    def check_divides(self, count: int, what: str, remedy: str = "--limit") -> None:
        """Refuse a data set that the processes cannot share evenly: the last global batch
        would leave a rank without examples while the others wait for its gradients.

        Raises:
            TrainingError: ``count`` is not a multiple of the world size.
        """
        if self.distributed and count % self.world_size:
            raise TrainingError(
                f"{count} {what} do not split evenly over {self.world_size} processes: use a "
                f"number of processes that divides {count}, or {remedy} to make the count a "
                f"multiple of {self.world_size}."
            )

    def sum(self, values: Sequence[float]) -> list[float]:
        """``values`` summed over the ranks (every rank gets the sums)."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        found: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(found, value)
        return found

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def on_main(self, work: Callable[[], T]) -> T | None:
        """Run ``work`` on rank 0 only and wait for it; an error there is raised on every rank
        (the others would otherwise wait for rank 0 forever)."""
        result: T | None = None
        failure: BaseException | None = None
        if self.is_main:
            try:
                result = work()
            except BaseException as exc:  # re-raised below, on every rank
                failure = exc
        if self.distributed:
            shared = [failure if self.is_main else None]
            torch.distributed.broadcast_object_list(shared, src=0)
            failure = shared[0]
        if failure is not None:
            raise failure
        return result

    def silenced(self, log: Callable[..., Any]) -> Callable[..., Any]:
        """``log`` on rank 0; a function that prints nothing on the others (one line per
        run, not one per process)."""
        return log if self.is_main else _silent

    def wrap(self, model: torch.nn.Module, fsdp: bool, device: str) -> torch.nn.Module:
        """``model`` as the ranks train it together: itself on one process, DDP, or sharded
        with FSDP2 (each decoder layer, then the whole)."""
        if not self.distributed:
            return model
        model.to(device)
        if fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in decoder_layers(model):
                fully_shard(layer)
            fully_shard(model)
            return model
        ids = [self.local_rank] if device == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def refuse_several(what: str, why: str, environ: dict[str, str] | None = None) -> None:
    """Refuse to run ``what`` as one of several processes (each would make the whole run and
    write the same folder).

    Raises:
        ConfigError: a launcher started this process as one of several.
    """
    environ = dict(os.environ if environ is None else environ)
    world = int(environ.get("WORLD_SIZE") or 1)
    if world > 1:
        raise ConfigError(
            f"{what} runs as one process ({why}), and this is one of {world}: start it without "
            "torchrun, accelerate launch or --num-processes."
        )


def _are(names: Sequence[str]) -> str:
    return f"{', '.join(names)} {'is' if len(names) == 1 else 'are'}"


def _unlaunched(found: str) -> ConfigError:
    return ConfigError(
        f"{found}: run under a launcher (hearth finetune ... --num-processes N, torchrun, "
        "accelerate launch), which sets them all, or unset them for one process."
    )


def _silent(*_: Any, **__: Any) -> None:
    return None


def sharding(fsdp: bool, environ: dict[str, str] | None = None) -> bool:
    """Whether to shard with FSDP: ``fsdp`` set, or an ``accelerate config`` naming FSDP
    (``accelerate launch`` passes it on as ``ACCELERATE_USE_FSDP``).

    Raises:
        ConfigError: the accelerate config names DeepSpeed, which hearthlm's trainer does not
            drive (FSDP shards the same three things ZeRO-3 does).
    """
    environ = dict(os.environ if environ is None else environ)
    if environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true"):
        raise ConfigError(
            "the accelerate config names DeepSpeed; hearthlm's trainer shards with FSDP "
            "instead (weights, gradients and optimizer state, as ZeRO-3 does): choose FSDP in "
            "`accelerate config`, or pass --fsdp."
        )
    return fsdp or environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight of an FSDP2-sharded ``model``, whole and on the CPU, on rank 0 (the other
    ranks get an empty dict). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    found: dict[str, Any] = get_model_state_dict(model, options=options)
    return found


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's decoder layers (the units FSDP shards one at a time)."""
    base: Any = getattr(model, "get_base_model", lambda: model)()
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise TrainingError(f"FSDP found no decoder layers in {type(base).__name__}")
    return list(layers)


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A parameter's whole value: the gathered tensor of an FSDP2 shard (a collective: every
    rank calls it), else the tensor itself."""
    gather = getattr(value, "full_tensor", None)
    return gather() if gather is not None else value


def set_full_tensor(parameter: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole saved value into ``parameter``: into this rank's shard of an FSDP2 one."""
    mesh = getattr(parameter, "device_mesh", None)
    if mesh is not None:
        from torch.distributed.tensor import distribute_tensor

        shard: Any = parameter  # a DTensor
        value = distribute_tensor(value.to(parameter.device), mesh, shard.placements)
    with torch.no_grad():
        parameter.copy_(value.to(parameter.device))


__all__ = [
    "LAUNCHER_VARIABLES",
    "Cluster",
    "decoder_layers",
    "full_state_dict",
    "full_tensor",
    "refuse_several",
    "set_full_tensor",
    "sharding",
]
