"""Evaluation tasks: each is a loader, a prompt template and a scorer.

Users add a task with a YAML or TOML file (:func:`load_task`); the built-in MMLU, DialogSum and
GSM8K tasks are made from the same :class:`TaskSpec`, so a task file can do whatever they do.

    name: my_quiz
    kind: multiple_choice          # or generate, perplexity, gsm8k
    data: quiz.csv                 # relative to the task file
    template: "{question}"
    choices: [a, b, c, d]          # columns holding the choice texts
    answer: answer                 # 0-based index or a letter
    fewshot: quiz_dev.csv
    shots: 3
"""

from __future__ import annotations

import hashlib
import json
import math
import string
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from hearthlm.agents.cot import ChainOfThought, ProgramAided, gsm8k_examples
from hearthlm.config import StrictModel, config_error_from
from hearthlm.errors import ConfigError, EvalError
from hearthlm.eval import metrics
from hearthlm.eval.loglik import Request
from hearthlm.gsm8k import extract_answer, solution_answer
from hearthlm.rows import BadRows, Row, field_of, read_rows

Metric = Literal["rouge", "bleu", "chrf", "exact_match", "f1"]
Kind = Literal["multiple_choice", "generate", "perplexity", "gsm8k", "rag", "agent"]
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"
MMLU_TEMPLATE = "{question}"
# The prompt the DialogSum preset scores with, and fine-tuning on DialogSum trains with.
DIALOGSUM_TEMPLATE = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"


def _default_metrics() -> list[Metric]:
    return ["exact_match", "f1"]


class TaskSpec(StrictModel):
    """What a task file holds. Templates are Python format strings over the row's fields."""

    name: str
    kind: Kind
    data: Path
    template: str = Field("{question}", description="The prompt, e.g. 'Q: {question}\\nA:'.")
    # multiple_choice
    choices: list[str] = Field(default_factory=list, description="Columns with choice texts.")
    answer: str = Field("answer", description="Column of the gold answer (index or letter).")
    labels: list[str] = Field(default_factory=lambda: list(string.ascii_uppercase[:4]))
    score_by: Literal["letter", "text"] = "letter"
    fewshot: Path | None = None
    shots: int = Field(0, ge=0)
    description: str = ""
    # generate / gsm8k / perplexity
    reference: str = Field("answer", description="Column of the reference answer or summary.")
    metrics: list[Metric] = Field(default_factory=_default_metrics)
    system: str | None = None
    max_new_tokens: int = Field(128, ge=1)
    completion: str | None = Field(
        None, description="perplexity: column of the completion (the template is the prompt)."
    )
    method: Literal["direct", "cot", "pal"] = "cot"
    id: str | None = Field(None, description="Column with a stable item id; else file:line.")
    limit: int | None = Field(None, ge=1)
    group: str | None = Field(None, description="Category for grouped scores (MMLU).")
    # rag / agent
    corpus: Path | None = Field(None, description="rag: a BEIR corpus.jsonl to index.")
    qrels: Path | None = Field(None, description="rag: BEIR qrels (query-id corpus-id score).")
    k: int = Field(10, ge=1, description="rag: cut-off for recall, MRR and nDCG.")
    tools: list[str] = Field(default_factory=lambda: ["calculator"], description="agent tools")
    max_steps: int = Field(6, ge=1)

    def template_hash(self) -> str:
        parts = [self.template, self.description, self.system or "", self.score_by, str(self.shots)]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def load_task(path: Path) -> TaskSpec:
    """A :class:`TaskSpec` from YAML or TOML; relative data paths are resolved beside it."""
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
    try:
        spec = TaskSpec(**raw)
    except ValidationError as exc:
        raise config_error_from(exc, str(path)) from exc
    updates: dict[str, Any] = {"data": (path.parent / spec.data)}
    for name in ("fewshot", "corpus", "qrels"):
        if getattr(spec, name) is not None:
            updates[name] = path.parent / getattr(spec, name)
    return spec.model_copy(update=updates)


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


class Task(ABC):
    """A loader, a prompt template and a scorer."""

    chunk = 64  # items scored between two saves of the run

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.name = spec.name

    def items(self, bad: BadRows) -> list[Item]:
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

    def _prompt_and_reference(self, row: Row, bad: BadRows) -> tuple[str, Any] | None:
        """The rendered prompt and the reference field, or None (recorded) when either fails."""
        prompt = self._render(row, bad)
        reference = field_of(row, self.spec.reference, bad)
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
    def item(self, row: Row, bad: BadRows) -> Item | None: ...

    @abstractmethod
    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        """One record per item (with its "id"), in any order."""

    @abstractmethod
    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]: ...


class MultipleChoiceTask(Task):
    """k-shot multiple choice, scored by the log-likelihood of the answer letter (or the choice
    text, then also length-normalised), in the MMLU format lm-evaluation-harness uses."""

    chunk = 256

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__(spec)
        if not spec.choices:
            raise ConfigError(f"task {spec.name!r}: 'choices' must name the choice columns")
        if len(spec.labels) < len(spec.choices):
            raise ConfigError(f"task {spec.name!r}: fewer labels than choices")
        self._prefix: str | None = None

    def prefix(self, bad: BadRows) -> str:
        """The description and the k worked examples every question shares."""
        if self._prefix is None:
            shots = []
            if self.spec.shots:
                if self.spec.fewshot is None:
                    raise ConfigError(f"task {self.name!r}: shots need a 'fewshot' data file")
                for row in read_rows(self.spec.fewshot, bad):
                    parsed = self._parse(row, bad)
                    if parsed:
                        question, gold = parsed
                        shots.append(f"{question} {self._answer_text(row, gold)}")
                    if len(shots) == self.spec.shots:
                        break
                if len(shots) < self.spec.shots:
                    raise EvalError(
                        f"{self.spec.fewshot}: {self.spec.shots} shots asked for, "
                        f"{len(shots)} usable rows"
                    )
            self._prefix = self.spec.description + "".join(s + "\n\n" for s in shots)
        return self._prefix

    def _parse(self, row: Row, bad: BadRows) -> tuple[str, int] | None:
        question = self._render(row, bad)
        choices = [field_of(row, c, bad) for c in self.spec.choices]
        gold = _answer_index(row, self.spec.answer, self.spec.labels[: len(choices)], bad)
        if question is None or None in choices or gold is None:
            return None
        lines = [question.strip()]
        lines += [
            f"{label}. {str(c).strip()}"
            for label, c in zip(self.spec.labels, choices, strict=False)
        ]
        return "\n".join(lines) + "\nAnswer:", gold

    def _answer_text(self, row: Row, gold: int) -> str:
        if self.spec.score_by == "letter":
            return self.spec.labels[gold]
        return str(row.values[self.spec.choices[gold]]).strip()

    def item(self, row: Row, bad: BadRows) -> Item | None:
        parsed = self._parse(row, bad)
        if parsed is None:
            return None
        question, gold = parsed
        if self.spec.score_by == "letter":
            options = [f" {label}" for label in self.spec.labels[: len(self.spec.choices)]]
        else:
            options = [f" {str(row.values[c]).strip()}" for c in self.spec.choices]
        data = {"question": question, "options": options, "gold": gold}
        return self._item(row, data)

    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        prefix = self.prefix(BadRows())
        requests = [
            Request(prefix + item.data["question"], option)
            for item in items
            for option in item.data["options"]
        ]
        per_item = len(items[0].data["options"]) if items else 1
        scores = engines.scorer.score(requests, lambda n: progress(n / per_item))
        cursor = 0
        for item in items:
            n = len(item.data["options"])
            mine, cursor = scores[cursor : cursor + n], cursor + n
            logprobs = [s.logprob for s in mine]
            normalised = [
                s.logprob / max(len(o.encode()), 1)
                for s, o in zip(mine, item.data["options"], strict=True)
            ]
            predicted = max(range(n), key=logprobs.__getitem__)
            predicted_norm = max(range(n), key=normalised.__getitem__)
            yield {
                "id": item.id,
                "task": self.name,
                "gold": item.data["gold"],
                "predicted": predicted,
                "correct": predicted == item.data["gold"],
                "correct_norm": predicted_norm == item.data["gold"],
                "logprobs": [round(x, 6) for x in logprobs],
            }

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        scores = {"accuracy": metrics.mean(float(r["correct"]) for r in records)}
        if self.spec.score_by == "text":
            scores["accuracy_norm"] = metrics.mean(float(r["correct_norm"]) for r in records)
        return scores


def _answer_index(row: Row, column: str, labels: list[str], bad: BadRows) -> int | None:
    value = field_of(row, column, bad)
    if value is None:
        return None
    text = str(value).strip()
    if text.upper() in labels:
        return labels.index(text.upper())
    try:
        index = int(text)
    except ValueError:
        bad.add(row.path, row.line, f"answer {text!r} is neither an index nor one of {labels}")
        return None
    if not 0 <= index < len(labels):
        bad.add(row.path, row.line, f"answer {index} is out of range 0..{len(labels) - 1}")
        return None
    return index


class GenerateTask(Task):
    """Greedy generation scored against a reference: ROUGE, BLEU, chrF, exact match, token F1."""

    chunk = 16

    def item(self, row: Row, bad: BadRows) -> Item | None:
        found = self._prompt_and_reference(row, bad)
        if found is None:
            return None
        prompt, reference = found
        refs = reference if isinstance(reference, list) else [str(reference)]
        return self._item(row, {"prompt": prompt, "references": refs})

    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        for item in items:
            messages = [("system", self.spec.system)] if self.spec.system else []
            messages.append(("human", item.data["prompt"]))
            reply = engines.chat.invoke(messages, max_new_tokens=self.spec.max_new_tokens)
            text = str(reply.content).strip()
            record: dict[str, Any] = {
                "id": item.id,
                "task": self.name,
                "prediction": text,
                "references": item.data["references"],
            }
            refs = item.data["references"]
            if "rouge" in self.spec.metrics:
                best = max((metrics.rouge(text, r) for r in refs), key=lambda s: s["rouge1"])
                record.update(best)
            if "exact_match" in self.spec.metrics:
                record["exact_match"] = metrics.exact_match(text, refs)
            if "f1" in self.spec.metrics:
                record["f1"] = metrics.token_f1(text, refs)
            progress(1)
            yield record

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        scores: dict[str, float] = {}
        per_item = [m for m in (*metrics.ROUGE_TYPES, "exact_match", "f1") if m in records[0]]
        for name in per_item:
            scores[name] = metrics.mean(float(r[name]) for r in records)
        predictions = [r["prediction"] for r in records]
        references = [r["references"][0] for r in records]
        if "bleu" in self.spec.metrics:
            scores["bleu"] = metrics.bleu(predictions, references)
        if "chrf" in self.spec.metrics:
            scores["chrf"] = metrics.chrf(predictions, references)
        return scores


class PerplexityTask(Task):
    """Cross-entropy and perplexity of each text, or of a completion given its prompt (the loss
    counts completion tokens only). Reported per token (pooled) and per sequence (mean)."""

    chunk = 64

    def item(self, row: Row, bad: BadRows) -> Item | None:
        prompt = self._render(row, bad)
        if prompt is None:
            return None
        if self.spec.completion is None:
            if not prompt.strip():
                bad.add(row.path, row.line, "empty text")
                return None
            data = {"prompt": "", "completion": prompt}
        else:
            completion = field_of(row, self.spec.completion, bad)
            if completion is None:
                return None
            data = {"prompt": prompt, "completion": str(completion)}
        return self._item(row, data)

    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        whole = [i for i in items if not i.data["prompt"]]
        paired = [i for i in items if i.data["prompt"]]
        scored = list(
            zip(
                whole,
                engines.scorer.perplexity([i.data["completion"] for i in whole], progress),
                strict=True,
            )
        )
        requests = [Request(i.data["prompt"], i.data["completion"]) for i in paired]
        scored += list(zip(paired, engines.scorer.score(requests, progress), strict=True))
        for item, score in scored:
            yield {
                "id": item.id,
                "task": self.name,
                "logprob": score.logprob,
                "tokens": score.tokens,
                "cross_entropy": score.cross_entropy,
            }

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        tokens = sum(r["tokens"] for r in records)
        pooled = -sum(r["logprob"] for r in records) / max(tokens, 1)
        per_sequence = [r["cross_entropy"] for r in records]
        return {
            "cross_entropy_per_token": pooled,
            "perplexity": math.exp(pooled),
            "cross_entropy_per_sequence": metrics.mean(per_sequence),
            "perplexity_per_sequence": metrics.mean(math.exp(c) for c in per_sequence),
            "tokens": float(tokens),
        }


class GSM8KTask(Task):
    """Grade-school maths: the number after ``####`` against the model's extracted answer, by
    direct answer, few-shot chain of thought, or program-aided (the calculator computes)."""

    chunk = 8

    def item(self, row: Row, bad: BadRows) -> Item | None:
        found = self._prompt_and_reference(row, bad)
        if found is None:
            return None
        question, answer = found
        gold = solution_answer(str(answer))
        if gold is None:
            bad.add(row.path, row.line, f"no number in the answer {str(answer)[-40:]!r}")
            return None
        return self._item(row, {"question": question, "gold": gold})

    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        examples = gsm8k_examples(self.spec.fewshot, self.spec.shots) if self.spec.fewshot else []
        chat = engines.chat
        for item in items:
            question = item.data["question"]
            if self.spec.method == "cot":
                result = ChainOfThought(chat, examples).invoke(question)
                predicted, text = result.answer, result.reasoning
            elif self.spec.method == "pal":
                program = ProgramAided(chat, examples).invoke(question)
                predicted, text = program.answer, program.expression
            else:
                messages = [("system", self.spec.system or DIRECT_SYSTEM), ("human", question)]
                text = str(chat.invoke(messages, max_new_tokens=self.spec.max_new_tokens).content)
                predicted = extract_answer(text)
            progress(1)
            yield {
                "id": item.id,
                "task": self.name,
                "gold": item.data["gold"],
                "predicted": predicted,
                "correct": predicted == item.data["gold"],
                "output": text,
            }

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        return {"accuracy": metrics.mean(float(r["correct"]) for r in records)}


DIRECT_SYSTEM = "Answer the math word problem with just the final number."
KINDS: dict[str, type[Task]] = {
    "multiple_choice": MultipleChoiceTask,
    "generate": GenerateTask,
    "perplexity": PerplexityTask,
    "gsm8k": GSM8KTask,
}


def make_task(spec: TaskSpec) -> Task:
    if spec.kind in ("rag", "agent"):
        from hearthlm.eval.chains import AgentTask, RAGTask

        return (RAGTask if spec.kind == "rag" else AgentTask)(spec)
    return KINDS[spec.kind](spec)


def mmlu_tasks(
    folder: Path,
    subjects: list[str] | None = None,
    shots: int = 5,
    score_by: Literal["letter", "text"] = "letter",
    limit: int | None = None,
) -> list[Task]:
    """One task per subject of an MMLU folder (``test/<s>_test.csv``, ``dev/<s>_dev.csv``,
    optional ``subject_categories.json``), in the prompt format of the original paper."""
    tests = sorted((folder / "test").glob("*_test.csv"))
    available = {p.name.removesuffix("_test.csv"): p for p in tests}
    if not available:
        raise EvalError(f"{folder}: no MMLU test files (expected test/<subject>_test.csv)")
    chosen = subjects or sorted(available)
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise EvalError(f"unknown MMLU subjects {unknown}; available: {sorted(available)}")
    categories = _mmlu_categories(folder / "subject_categories.json")
    return [
        MultipleChoiceTask(
            TaskSpec(
                name=subject,
                kind="multiple_choice",
                data=available[subject],
                fewshot=folder / "dev" / f"{subject}_dev.csv",
                shots=shots,
                description=MMLU_DESCRIPTION.format(subject=subject.replace("_", " ")),
                template=MMLU_TEMPLATE,
                choices=["choice0", "choice1", "choice2", "choice3"],
                score_by=score_by,
                group=categories.get(subject),
                limit=limit,
            )
        )
        for subject in chosen
    ]


def _mmlu_categories(path: Path) -> dict[str, str]:
    """subject -> top-level category ("STEM", "humanities", ...), when the mapping file exists."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    top = {sub: cat for cat, subs in data.get("categories", {}).items() for sub in subs}
    return {
        subject: top.get(subs[0], subs[0])
        for subject, subs in data.get("subcategories", {}).items()
        if subs
    }
