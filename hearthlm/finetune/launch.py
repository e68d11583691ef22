"""``--num-processes N``: the same command started as N training processes on this machine.

The processes are started by torch's own launcher (the elastic agent behind ``torchrun
--standalone``), so a run started here is the run ``torchrun --nproc-per-node N -m
hearthlm.cli finetune ...`` makes: each process learns its rank from the launcher's variables
(:class:`~hearthlm.finetune.distributed.Cluster`). When one process fails, the launcher stops
the others (they would wait for it forever) and the command ends with that process's error.

Example:
    >>> without_option(["lora", "--num-processes", "2", "--data", "x.jsonl"], "--num-processes")
    ['lora', '--data', 'x.jsonl']
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Sequence

from hearthlm.errors import ConfigError, TrainingError
from hearthlm.finetune.distributed import LAUNCHER_VARIABLES

OPTION = "--num-processes"


def launch(processes: int | None, argv: Sequence[str]) -> bool:
    """Start ``hearth`` with ``argv`` (this command line, less the option) as
    ``processes`` processes and wait for them; ``False`` when this process should train
    itself: no option, one process, or already one of the launched processes.

    CPU processes share the machine's cores (``OMP_NUM_THREADS`` = cores / processes, unless
    set); GPU processes take one GPU each (``LOCAL_RANK``).

    Raises:
        ConfigError: ``processes`` is below 1, or differs from the launcher's world size.
        TrainingError: a process failed (its own error was printed above).
    """
    if processes is None:
        return False
    if processes < 1:
        raise ConfigError(
            f"{OPTION} is the number of training processes: 1 or more, not {processes}."
        )
    if any(name in os.environ for name in LAUNCHER_VARIABLES):
        world = int(os.environ.get("WORLD_SIZE") or 1)
        if world != processes:
            raise ConfigError(
                f"{OPTION} {processes}, but the launcher started {world} processes: leave "
                f"{OPTION} out under torchrun or accelerate launch."
            )
        return False  # one of the launched processes
    if processes == 1:
        return False
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the launcher's own log repeats what the failed process and TrainingError below say
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone
        max_restarts=0,
    )
    command = ["-m", "hearthlm.cli", *without_option(argv, OPTION)]
    try:
        elastic_launch(config, sys.executable)(*command)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise TrainingError(
            f"training process {rank} of {processes} failed (exit status {failure.exitcode}); "
            "its error is printed above, and the other processes were stopped."
        ) from None
    return True


def rank() -> int:
    """This process's rank, as the launcher set it (0 without a launcher)."""
    return int(os.environ.get("RANK") or 0)


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` or ``option=VALUE``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            kept.append(arg)
    return kept


__all__ = ["OPTION", "launch", "rank", "without_option"]
