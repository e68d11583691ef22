"""Evaluation tasks: each is a loader, a prompt template and a scorer.

Users add a task with a YAML or TOML file (:func:`load_task`); the built-in MMLU, DialogSum and
GSM8K tasks are made from the same specs, so a task file can do whatever they do. A new kind of
task is a spec class, a task class and an entry point in the ``hearthlm.tasks`` group; the
contract is in :mod:`hearthlm.eval.tasks.base`.

Modules: ``spec`` (the spec of every kind, read as a union discriminated on ``kind``), ``base``
(:class:`Task`, :class:`Item`, :class:`Engines`), ``registry`` (kinds by name), and one module
per kind: ``multiple_choice`` (with MMLU), ``generate``, ``perplexity``, ``gsm8k``, ``rag``,
``agent``.
"""

from hearthlm.eval.tasks.agent import AgentTask
from hearthlm.eval.tasks.base import Engines, Item, Progress, Task
from hearthlm.eval.tasks.generate import DIALOGSUM_TEMPLATE, GenerateTask
from hearthlm.eval.tasks.gsm8k import DIRECT_SYSTEM, GSM8KTask
from hearthlm.eval.tasks.multiple_choice import (
    MMLU_DESCRIPTION,
    MMLU_TEMPLATE,
    MultipleChoiceTask,
    mmlu_tasks,
)
from hearthlm.eval.tasks.perplexity import PerplexityTask
from hearthlm.eval.tasks.rag import RAGTask, doc_ranking
from hearthlm.eval.tasks.registry import make_task, task_kinds
from hearthlm.eval.tasks.spec import (
    ENTRY_POINT_GROUP,
    AgentSpec,
    GenerateSpec,
    GSM8KSpec,
    Metric,
    MultipleChoiceSpec,
    PerplexitySpec,
    RAGSpec,
    TaskSpec,
    load_task,
    parse_spec,
)

__all__ = [
    "DIALOGSUM_TEMPLATE",
    "DIRECT_SYSTEM",
    "ENTRY_POINT_GROUP",
    "MMLU_DESCRIPTION",
    "MMLU_TEMPLATE",
    "AgentSpec",
    "AgentTask",
    "Engines",
    "GSM8KSpec",
    "GSM8KTask",
    "GenerateSpec",
    "GenerateTask",
    "Item",
    "Metric",
    "MultipleChoiceSpec",
    "MultipleChoiceTask",
    "PerplexitySpec",
    "PerplexityTask",
    "Progress",
    "RAGSpec",
    "RAGTask",
    "Task",
    "TaskSpec",
    "doc_ranking",
    "load_task",
    "make_task",
    "mmlu_tasks",
    "parse_spec",
    "task_kinds",
]
