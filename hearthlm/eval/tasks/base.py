"""The base of every evaluation task kind, and the contract for writing one.

A task kind is a spec class, a task class and one registration line; built-in kinds and plugins
are written and registered the same way.

1. **Spec**: subclass :class:`~hearthlm.eval.tasks.spec.TaskSpec` with
   ``kind: Literal["my_kind"] = "my_kind"`` and only your kind's fields (pydantic, extra fields
   refused). Path fields are resolved beside the task file.
2. **Task**: subclass :class:`Task` with ``spec_class = MySpec`` and implement
   - ``item(row, bad)``: one :class:`Item` per data row (``self._item(row, data)``), or
     ``None`` after recording why in ``bad`` (``bad.add(row.path, row.line, reason)``);
   - ``predict(items, engines, progress)``: yield one JSON-serialisable record per item, each
     with its ``"id"`` (``item.id``) and ``"task"`` (``self.name``); call ``progress(1)`` per
     item. ``engines.chat`` is the configured chat
     model, ``engines.scorer`` the log-likelihood scorer, ``engines.config`` the
     :class:`~hearthlm.config.HearthConfig`, ``engines.workdir`` the run folder;
   - ``aggregate(records)``: the task's scores, ``{metric: float}``.
   ``chunk`` sets how many items are scored between two saves of the run (records are saved
   as each chunk ends, so an interrupted run resumes after the last whole chunk).
3. **Register** the task class under the ``hearthlm.tasks`` entry-point group, named by its
   kind::

       [project.entry-points."hearthlm.tasks"]
       my_kind = "my_package.tasks:MyTask"

Then ``kind: my_kind`` in a task file, ``make_task`` and ``hearth eval`` use it.

Example, a complete plugin kind (``word_count``)::

    from typing import Literal

    from hearthlm.eval.tasks import Task, TaskSpec

    class WordCountSpec(TaskSpec):
        kind: Literal["word_count"] = "word_count"

    class WordCountTask(Task[WordCountSpec]):
        spec_class = WordCountSpec

        def item(self, row, bad):
            text = self._render(row, bad)
            return None if text is None else self._item(row, {"text": text})

        def predict(self, items, engines, progress):
            for item in items:
                reply = engines.chat.invoke(item.data["text"])
                progress(1)
                words = len(str(reply.content).split())
                yield {"id": item.id, "task": self.name, "words": words}

        def aggregate(self, records):
            return {"mean_words": sum(r["words"] for r in records) / len(records)}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from hearthlm.errors import ConfigError, EvalError
from hearthlm.eval.tasks.spec import TaskSpec
from hearthlm.gsm8k import parse_solution
from hearthlm.rows import BadRows, Row, field_of, read_rows

__all__ = ["Engines", "Item", "Progress", "Task", "gold_answers"]

SpecT = TypeVar("SpecT", bound=TaskSpec)


@dataclass
class Item:
    """One thing to score: a stable id, where it came from, and what the scorer needs."""

    id: str
    where: str
    task: str
    data: dict[str, Any]


Progress = Callable[[float], None]  # told how many items were done


class Engines:
    """What tasks share, made on first use: a log-likelihood scorer and a chat model, plus the
    configuration (for tools) and the run folder (for indexes)."""

    def __init__(
        self,
        config: Any,
        scorer: Callable[[], Any],
        chat: Callable[[], Any],
        workdir: Path | None = None,
    ) -> None:
        self.config = config
        self.workdir = workdir or Path.cwd()
        self._make_scorer, self._make_chat = scorer, chat
        self._scorer: Any = None
        self._chat: Any = None

    @property
    def scorer(self) -> Any:
        if self._scorer is None:
            self._scorer = self._make_scorer()
        return self._scorer

    @property
    def chat(self) -> Any:
        if self._chat is None:
            self._chat = self._make_chat()
        return self._chat


class Task(ABC, Generic[SpecT]):
    """A loader, a prompt template and a scorer for one kind of task (see the module's contract).

    Raises:
        ConfigError: ``spec`` is not of this task's ``spec_class``.
    """

    spec_class: ClassVar[type[TaskSpec]] = TaskSpec
    chunk = 64  # items scored between two saves of the run

    def __init__(self, spec: SpecT) -> None:
        if not isinstance(spec, self.spec_class):
            raise ConfigError(
                f"task {spec.name!r} is of kind {spec.kind!r}; {type(self).__name__} runs "
                f"{self.spec_class.__name__} ({self.spec_class.model_fields['kind'].default!r})"
            )
        self.spec: SpecT = spec
        self.name = spec.name

    def items(self, bad: BadRows) -> list[Item]:
        """The task's items: one per usable row of ``data``, at most ``limit``.

        Raises:
            EvalError: No row is usable.
        """
        out = []
        for row in read_rows(self.spec.data, bad):
            item = self.item(row, bad)
            if item is not None:
                out.append(item)
            if self.spec.limit and len(out) == self.spec.limit:
                break
        if not out:
            raise EvalError(f"{self.spec.data}: no usable rows for task {self.name!r}")
        return out

    def _id(self, row: Row) -> str:
        if self.spec.id and self.spec.id in row.values:
            return f"{self.name}/{row.values[self.spec.id]}"
        return f"{self.name}/{row.path.name}:{row.line}"

    def _item(self, row: Row, data: dict[str, Any]) -> Item:
        return Item(self._id(row), f"{row.path}:{row.line}", self.name, data)

    def _prompt_and_reference(
        self, row: Row, bad: BadRows, reference_column: str
    ) -> tuple[str, Any] | None:
        """The rendered prompt and the reference field, or None (recorded) when either fails."""
        prompt = self._render(row, bad)
        reference = field_of(row, reference_column, bad)
        if prompt is None or reference is None:
            return None
        return prompt, reference

    def _render(self, row: Row, bad: BadRows) -> str | None:
        try:
            return self.spec.template.format(**row.values)
        except (KeyError, IndexError) as exc:
            bad.add(row.path, row.line, f"the template needs field {exc}")
            return None

    @abstractmethod
    def item(self, row: Row, bad: BadRows) -> Item | None:
        """The item of one data row, or None after recording in ``bad`` why it is unusable."""

    @abstractmethod
    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        """One record per item (with its "id" and "task"), in any order."""

    @abstractmethod
    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """The task's scores over its records, by metric name."""


def gold_answers(value: Any) -> list[str]:
    """Gold answers from a string, a list of strings, or HotpotQA's ``[{"spans": [...]}]``."""
    if isinstance(value, str):
        return [parse_solution(value).final if "####" in value else value]
    out: list[str] = []
    for entry in value if isinstance(value, list) else [value]:
        if isinstance(entry, dict):
            out.extend(str(s) for s in entry.get("spans", []))
        elif entry is not None:
            out.append(str(entry))
    return out
