"""Task kinds by name: the built-ins, and the plugins registered under ``hearthlm.tasks``."""

from __future__ import annotations

from hearthlm.errors import ConfigError
from hearthlm.eval.tasks.agent import AgentTask
from hearthlm.eval.tasks.base import Task
from hearthlm.eval.tasks.generate import GenerateTask
from hearthlm.eval.tasks.gsm8k import GSM8KTask
from hearthlm.eval.tasks.multiple_choice import MultipleChoiceTask
from hearthlm.eval.tasks.perplexity import PerplexityTask
from hearthlm.eval.tasks.rag import RAGTask
from hearthlm.eval.tasks.spec import ENTRY_POINT_GROUP, TaskSpec, spec_class
from hearthlm.plugins import registered

__all__ = ["BUILTIN_KINDS", "make_task", "task_kinds"]

# Also listed under [project.entry-points."hearthlm.tasks"] in pyproject.toml, as a plugin lists
# its own; kept here too so that a source checkout whose installed metadata predates a kind
# still has every built-in.
BUILTIN_KINDS: dict[str, type[Task]] = {
    "multiple_choice": MultipleChoiceTask,
    "generate": GenerateTask,
    "perplexity": PerplexityTask,
    "gsm8k": GSM8KTask,
    "rag": RAGTask,
    "agent": AgentTask,
}


def task_kinds() -> dict[str, type[Task]]:
    """Every task class by kind: the built-ins, then each ``hearthlm.tasks`` entry point (a
    plugin cannot replace a built-in kind).

    Raises:
        ConfigError: An entry point names something that is not a :class:`Task` subclass.
    """
    found = dict(BUILTIN_KINDS)
    for kind, task in registered(ENTRY_POINT_GROUP):
        if kind in found:
            continue
        if not (isinstance(task, type) and issubclass(task, Task)):
            raise ConfigError(
                f"the {ENTRY_POINT_GROUP} entry point {kind!r} names {task!r}, which is not a "
                "hearthlm.eval.tasks.Task subclass; see hearthlm.eval.tasks.base for the contract."
            )
        found[kind] = task
    return found


def make_task(spec: TaskSpec) -> Task:
    """The task that runs ``spec``, of the class registered for its kind.

    Raises:
        ConfigError: No task kind of that name is registered.
    """
    spec_class(spec.kind)  # an unknown kind: the error that lists the known ones
    return task_kinds()[spec.kind](spec)
