"""Task kinds by name, from the one registry (:data:`~hearthlm.eval.tasks.spec.TASKS`): the
built-ins, and the plugins registered under ``hearthlm.tasks``."""

from __future__ import annotations

from hearthlm.eval.tasks.base import Task
from hearthlm.eval.tasks.spec import TASKS, TaskSpec

__all__ = ["make_task", "task_kinds"]


def task_kinds() -> dict[str, type[Task]]:
    """Every task class by kind: the built-ins, then each ``hearthlm.tasks`` entry point (a
    plugin cannot take a built-in kind's name).

    Raises:
        PluginError: An entry point fails to import, or names something that is not a task
            class with a spec class of its kind.
    """
    return TASKS.load_all()


def make_task(spec: TaskSpec) -> Task:
    """The task that runs ``spec``, of the class registered for its kind.

    Raises:
        ConfigError: No task kind of that name is registered.
    """
    task: Task = TASKS.get(spec.kind)(spec)
    return task
