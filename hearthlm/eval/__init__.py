"""Evaluation: score the local model and the chains built on it, reproducibly and locally.

Example:
    >>> from hearthlm.eval import evaluate, mmlu_tasks
    >>> tasks = mmlu_tasks(Path("data/mmlu"), ["anatomy"])  # doctest: +SKIP
    >>> run = evaluate(tasks, out=Path("runs/base"))  # doctest: +SKIP
    >>> run.scores["tasks"]["anatomy"]["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hearthlm.config import HearthConfig
from hearthlm.eval.compare import compare_runs
from hearthlm.eval.loglik import LoglikScorer, RemoteScorer, Request, Score
from hearthlm.eval.runner import RunResult, file_hash, run_tasks
from hearthlm.eval.tasks import Engines, Task, TaskSpec, load_task, make_task, mmlu_tasks
from hearthlm.llm import ChatHearth
from hearthlm.llm.sources import resolve_model


def evaluate(
    tasks: Sequence[Task],
    out: Path,
    config: HearthConfig | None = None,
    *,
    suite: str | None = None,
    batch_size: int | None = None,
    strict: bool | None = None,
    progress: bool = True,
) -> RunResult:
    """Run ``tasks`` on the configured model (and adapter) into the run folder ``out``.

    Log-likelihood tasks run on the transformers backend (batched), or through the server on
    the ``openai`` backend where it can score; generation and chains use the configured backend
    with the configured (greedy by default) sampling. ``batch_size`` and ``strict`` default to
    the configuration's ``[eval]`` section.
    """
    config = config or HearthConfig()
    batch_size = config.eval.batch_size if batch_size is None else batch_size
    strict = config.eval.strict if strict is None else strict
    remote = config.llm.backend == "openai"
    chat = ChatHearth.from_config(config)
    engines = Engines(
        config,
        scorer=lambda: RemoteScorer(chat) if remote else LoglikScorer.load(config.llm, batch_size),
        chat=lambda: chat,
    )
    model: dict[str, Any]
    if remote:
        model = {"name": chat.engine.model_name, "server": config.llm.server,
                 "base_url": config.llm.base_url, "adapter": None}  # fmt: skip
    else:
        source = resolve_model(config.llm.model)
        model = {
            "name": source.name,
            "path": str(source.path),
            "sha256": file_hash(source.path),
            "adapter": str(config.llm.adapter) if config.llm.adapter else None,
            "adapter_sha256": file_hash(config.llm.adapter),
        }
    provenance: dict[str, Any] = {
        "model": model,
        "settings": {
            "llm": config.llm.model_dump(mode="json", exclude={"cache_dir", "threads"}),
            "sampling": config.sampling.model_dump(mode="json"),
        },
        "config": config.model_dump(mode="json"),
        "batch_size": batch_size,
    }
    name = suite or (tasks[0].name if len(tasks) == 1 else "suite")
    return run_tasks(
        name, tasks, engines, out, provenance=provenance, strict=strict, progress=progress
    )


__all__ = [
    "Engines",
    "LoglikScorer",
    "Request",
    "RunResult",
    "Score",
    "Task",
    "TaskSpec",
    "compare_runs",
    "evaluate",
    "load_task",
    "make_task",
    "mmlu_tasks",
]
