"""What a task file holds: one spec class per kind, told apart by ``kind``.

Every spec has the fields of :class:`TaskSpec` (name, kind, data, template, id, limit, group);
each kind adds only its own, and a field of another kind is refused (``extra="forbid"``). A task
file is read as the union of the registered spec classes, discriminated on ``kind``, so a plugin's
kind is read exactly as a built-in one.

    name: my_quiz
    kind: multiple_choice          # or generate, perplexity, gsm8k, rag, agent, a plugin's kind
    data: quiz.csv                 # relative to the task file
    template: "{question}"
    choices: [a, b, c, d]          # columns holding the choice texts
    answer: answer                 # 0-based index or a letter
    fewshot: quiz_dev.csv
    shots: 3
"""

from __future__ import annotations

import hashlib
import string
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError

from hearthlm.config import StrictModel, config_error_from
from hearthlm.errors import ConfigError
from hearthlm.plugins import Registry

__all__ = [
    "ENTRY_POINT_GROUP",
    "TASKS",
    "AgentSpec",
    "GSM8KSpec",
    "GenerateSpec",
    "Metric",
    "MultipleChoiceSpec",
    "PerplexitySpec",
    "RAGSpec",
    "TaskSpec",
    "load_task",
    "parse_spec",
    "spec_classes",
]

ENTRY_POINT_GROUP = "hearthlm.tasks"
Metric = Literal["rouge", "bleu", "chrf", "exact_match", "f1"]


def _default_metrics() -> list[Metric]:
    return ["exact_match", "f1"]


class TaskSpec(StrictModel):
    """The fields every task has; each kind's spec class adds its own.

    ``TaskSpec(kind="generate", name=…, data=…, …)`` builds the spec class registered for that
    kind (here :class:`GenerateSpec`), so code written before the kinds had their own classes
    keeps working. Templates are Python format strings over the row's fields.
    """

    name: str = Field(description="The task's name in results; default: the data file's name.")
    kind: str
    data: Path = Field(description="The items: a CSV, JSONL or JSON file.")
    template: str = Field("{question}", description="The prompt, e.g. 'Q: {question}\\nA:'.")
    id: str | None = Field(None, description="Column with a stable item id; else file:line.")
    limit: int | None = Field(None, ge=1, description="First N items.")
    group: str | None = Field(None, description="Category for grouped scores (MMLU).")

    def __new__(cls, *args: Any, **data: Any) -> TaskSpec:
        if cls is TaskSpec:  # the base names no kind of its own: build the registered one
            cls = spec_class(data.get("kind"))
        return super().__new__(cls)

    def template_hash(self) -> str:
        """A short hash of everything that shapes the prompt, saved with each run's results."""
        # The same parts for every kind (absent ones at their old defaults), so a spec hashes as
        # it did when every kind shared one class.
        parts = [
            self.template,
            getattr(self, "description", ""),
            getattr(self, "system", None) or "",
            getattr(self, "score_by", "letter"),
            str(getattr(self, "shots", 0)),
        ]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


class MultipleChoiceSpec(TaskSpec):
    """k-shot multiple choice scored by log-likelihood (MMLU format)."""

    kind: Literal["multiple_choice"] = "multiple_choice"
    choices: list[str] = Field(default_factory=list, description="Columns with choice texts.")
    answer: str = Field("answer", description="Column of the gold answer (index or letter).")
    labels: list[str] = Field(
        default_factory=lambda: list(string.ascii_uppercase[:4]), description="Choice labels."
    )
    score_by: Literal["letter", "text"] = Field(
        "letter", description="Score each choice's label, or its text."
    )
    fewshot: Path | None = Field(None, description="Rows to take worked examples from.")
    shots: int = Field(0, ge=0, description="Worked examples before each question.")
    description: str = Field("", description="A line before the questions.")


class GenerateSpec(TaskSpec):
    """Greedy generation scored against a reference column."""

    kind: Literal["generate"] = "generate"
    reference: str = Field("answer", description="Column of the reference answer or summary.")
    metrics: list[Metric] = Field(default_factory=_default_metrics, description="Scores.")
    system: str | None = Field(None, description="A system message before each prompt.")
    max_new_tokens: int = Field(128, ge=1, description="Reply length cap.")


class PerplexitySpec(TaskSpec):
    """Perplexity of each text, or of a completion column given the template as its prompt."""

    kind: Literal["perplexity"] = "perplexity"
    template: str = Field("{text}", description="The text, or the completion's prompt.")
    completion: str | None = Field(
        None, description="Column of the completion (the template is the prompt)."
    )


class GSM8KSpec(TaskSpec):
    """Grade-school maths: direct answer, chain of thought or program-aided."""

    kind: Literal["gsm8k"] = "gsm8k"
    reference: str = Field("answer", description="Column of the solution ending '#### N'.")
    method: Literal["direct", "cot", "pal"] = Field(
        "cot", description="direct answer, chain of thought, or program-aided."
    )
    fewshot: Path | None = Field(
        None, description="GSM8K training rows to take worked exemplars from; None: none."
    )
    shots: int = Field(4, ge=0, description="Exemplars taken from fewshot.")
    system: str | None = Field(None, description="A system message before each question.")
    max_new_tokens: int = Field(128, ge=1, description="Reply length cap.")


class RAGSpec(TaskSpec):
    """Retrieval (and, with gold answers, answer and citation) quality of the docs chatbot."""

    kind: Literal["rag"] = "rag"
    reference: str = Field("answer", description="Column of the gold answers.")
    corpus: Path | None = Field(None, description="A BEIR corpus.jsonl to index.")
    qrels: Path | None = Field(None, description="BEIR qrels (query-id corpus-id score).")
    k: int = Field(10, ge=1, description="Cut-off for recall, MRR and nDCG.")


class AgentSpec(TaskSpec):
    """Task success of the ReAct agent with the named tools."""

    kind: Literal["agent"] = "agent"
    reference: str = Field("answer", description="Column of the gold answer.")
    tools: list[str] = Field(default_factory=lambda: ["calculator"], description="agent tools")
    max_steps: int = Field(6, ge=1, description="Most Thought/Action cycles.")


def _task_of_kind(kind: str, task: Any) -> bool:
    """Whether ``task`` is a task class for ``kind``: what the runner calls, and a spec class
    whose ``kind`` is the name it is registered under."""
    spec = getattr(task, "spec_class", None)
    return (
        isinstance(task, type)
        and all(callable(getattr(task, m, None)) for m in ("item", "predict", "aggregate"))
        and isinstance(spec, type)
        and issubclass(spec, TaskSpec)
        and spec.model_fields["kind"].default == kind
    )


# The task kinds, built-ins listed here once; each task module defines its spec class above.
TASKS: Registry[Any] = Registry(
    ENTRY_POINT_GROUP,
    noun="task kind",
    what="a hearthlm.eval.tasks.Task subclass whose spec_class has that kind",
    check=_task_of_kind,
    builtins={
        "multiple_choice": "hearthlm.eval.tasks.multiple_choice:MultipleChoiceTask",
        "generate": "hearthlm.eval.tasks.generate:GenerateTask",
        "perplexity": "hearthlm.eval.tasks.perplexity:PerplexityTask",
        "gsm8k": "hearthlm.eval.tasks.gsm8k:GSM8KTask",
        "rag": "hearthlm.eval.tasks.rag:RAGTask",
        "agent": "hearthlm.eval.tasks.agent:AgentTask",
    },
    hint="Set 'kind' to one of them, or install the package that registers it.",
)


def spec_classes() -> dict[str, type[TaskSpec]]:
    """Every task kind's spec class by kind, built-ins and plugins alike.

    Raises:
        PluginError: A plugin's entry point names no task with a spec class for its kind.
    """
    return {kind: TASKS.get(kind).spec_class for kind in TASKS.names()}


def spec_class(kind: Any) -> type[TaskSpec]:
    """The spec class of ``kind``.

    Raises:
        ConfigError: No kind of that name is registered; the message lists the known ones.
    """
    cls: type[TaskSpec] = TASKS.get(str(kind)).spec_class
    return cls


def parse_spec(raw: dict[str, Any], source: str = "task") -> TaskSpec:
    """The spec that ``raw`` describes, read as the union of every registered kind's spec class
    discriminated on ``kind``.

    Raises:
        ConfigError: The kind is unknown, or a field is missing, of the wrong type, or belongs
            to another kind; the message names ``source`` and each bad field.
    """
    spec_class(raw.get("kind"))
    kinds = tuple(spec_classes().values())
    union: Any = Annotated[Union[kinds], Field(discriminator="kind")]  # noqa: UP007
    try:
        spec: TaskSpec = TypeAdapter(union).validate_python(raw)
    except ValidationError as exc:
        raise config_error_from(exc, source) from exc
    return spec


def load_task(path: Path) -> TaskSpec:
    """A spec from a YAML or TOML task file; every relative path in it (``data``, ``fewshot``,
    ``corpus``, a plugin's own path fields) is resolved beside the file."""
    if not path.is_file():
        raise ConfigError(f"task file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: task files are .yaml, .yml or .toml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # yaml.YAMLError is a ValueError-free
        raise ConfigError(f"{path}: cannot parse the task file: {exc}") from exc
    except Exception as exc:  # yaml.YAMLError
        raise ConfigError(f"{path}: cannot parse the task file: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a task file is a mapping of settings")
    spec = parse_spec(raw, str(path))
    updates = {name: path.parent / value for name, value in spec if isinstance(value, Path)}
    return spec.model_copy(update=updates)
