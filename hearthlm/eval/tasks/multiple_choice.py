"""Multiple choice by log-likelihood, and the MMLU preset built on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from hearthlm.errors import ConfigError, EvalError
from hearthlm.eval import metrics
from hearthlm.eval.loglik import Request
from hearthlm.eval.tasks.base import Engines, Item, Progress, Task
from hearthlm.eval.tasks.spec import MultipleChoiceSpec
from hearthlm.rows import BadRows, Row, field_of, read_rows

__all__ = ["MMLU_DESCRIPTION", "MMLU_TEMPLATE", "MultipleChoiceTask", "mmlu_tasks"]

MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"
MMLU_TEMPLATE = "{question}"


class MultipleChoiceTask(Task[MultipleChoiceSpec]):
    """k-shot multiple choice, scored by the log-likelihood of the answer letter (or the choice
    text, then also length-normalised), in the MMLU format lm-evaluation-harness uses."""

    spec_class = MultipleChoiceSpec
    chunk = 256

    def __init__(self, spec: MultipleChoiceSpec) -> None:
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
            MultipleChoiceSpec(
                name=subject,
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
