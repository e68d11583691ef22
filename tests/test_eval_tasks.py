"""Task kinds: specs told apart by ``kind``, kinds added by plugins through entry points, and
the rows and scores of the generate and gsm8k kinds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import install_distribution

from hearthlm.errors import ConfigError, EvalError
from hearthlm.eval.runner import run_tasks
from hearthlm.eval.tasks import (
    Engines,
    GenerateSpec,
    MultipleChoiceSpec,
    MultipleChoiceTask,
    TaskSpec,
    load_task,
    make_task,
    task_kinds,
)

PLUGIN = """
from typing import Literal

from hearthlm.eval.tasks import Task, TaskSpec


class WordCountSpec(TaskSpec):
    kind: Literal["word_count"] = "word_count"
    most: int = 100


class WordCountTask(Task[WordCountSpec]):
    spec_class = WordCountSpec

    def item(self, row, bad):
        text = self._render(row, bad)
        return None if text is None else self._item(row, {"text": text})

    def predict(self, items, engines, progress):
        for item in items:
            progress(1)
            words = min(len(item.data["text"].split()), self.spec.most)
            yield {"id": item.id, "task": self.name, "words": words}

    def aggregate(self, records):
        return {"mean_words": sum(r["words"] for r in records) / len(records)}
"""


def install_plugin(tmp_path: Path, monkeypatch, entry: str) -> None:
    """A real distribution on sys.path declaring ``entry`` under hearthlm.tasks."""
    install_distribution(
        tmp_path, monkeypatch, "wordcount-tasks", f"[hearthlm.tasks]\n{entry}\n", PLUGIN
    )


def test_a_plugin_kind_runs_from_a_task_file(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "word_count = wordcount_tasks:WordCountTask")
    rows = [{"text": "one two three"}, {"text": "four five"}]
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "words.yaml").write_text(
        "name: words\nkind: word_count\ndata: texts.jsonl\ntemplate: '{text}'\nmost: 2\n"
    )
    spec = load_task(tmp_path / "words.yaml")
    assert type(spec).__name__ == "WordCountSpec" and spec.data == tmp_path / "texts.jsonl"
    task = make_task(spec)
    assert type(task) is task_kinds()["word_count"]
    engines = Engines(config=None, scorer=lambda: None, chat=lambda: None)
    run = run_tasks("words", [task], engines, tmp_path / "run", provenance={}, progress=False)
    assert run.scores["tasks"]["words"] == {"mean_words": 2.0}
    # and the plugin's kind is refused with another kind's field, like a built-in one
    (tmp_path / "bad.yaml").write_text("name: w\nkind: word_count\ndata: texts.jsonl\nk: 5\n")
    with pytest.raises(ConfigError, match=r"word_count\.k"):
        load_task(tmp_path / "bad.yaml")


def test_an_entry_point_that_is_not_a_task_is_refused(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "word_count = wordcount_tasks:WordCountSpec")
    with pytest.raises(ConfigError, match=r"'word_count'.*not a hearthlm\.eval\.tasks\.Task"):
        task_kinds()


def test_each_kind_has_only_its_own_fields(tmp_path):
    (tmp_path / "mixed.yaml").write_text(
        "name: q\nkind: generate\ndata: q.jsonl\nchoices: [a, b]\n"
    )
    with pytest.raises(ConfigError, match=r"generate\.choices.*not permitted"):
        load_task(tmp_path / "mixed.yaml")
    (tmp_path / "essay.yaml").write_text("name: q\nkind: essay\ndata: q.jsonl\n")
    with pytest.raises(ConfigError, match=r"unknown task kind 'essay'. Known task kinds: .*gsm8k"):
        load_task(tmp_path / "essay.yaml")


def test_task_spec_builds_the_spec_of_its_kind():
    spec = TaskSpec(name="q", kind="multiple_choice", data=Path("q.csv"), choices=["a", "b"])
    assert isinstance(spec, MultipleChoiceSpec) and spec.choices == ["a", "b"]
    assert isinstance(make_task(spec), MultipleChoiceTask)
    summary = TaskSpec(name="s", kind="generate", data=Path("d.jsonl"), metrics=["rouge"])
    assert isinstance(summary, GenerateSpec)
    with pytest.raises(ConfigError, match="MultipleChoiceTask runs MultipleChoiceSpec"):
        MultipleChoiceTask(summary)


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_row_with_an_empty_reference_list_is_reported_and_skipped(tmp_path, llama_chat):
    rows = [
        {"question": "What colour is the sky on a clear day?", "answer": ["blue", "light blue"]},
        {"question": "What colour is grass?", "answer": []},
    ]
    data = _write_rows(tmp_path / "qa.jsonl", rows)
    spec = GenerateSpec(
        name="qa", data=data, metrics=["rouge", "bleu", "chrf", "f1"], max_new_tokens=8
    )
    engines = Engines(config=None, scorer=lambda: None, chat=lambda: llama_chat)
    run = run_tasks("qa", [make_task(spec)], engines, tmp_path / "run", provenance={})
    assert run.bad_rows == [f"{data}:2: no reference in field 'answer'"]
    assert len(run.records) == 1
    assert set(run.scores["tasks"]["qa"]) >= {"rouge1", "bleu", "chrf", "f1"}
    with pytest.raises(EvalError, match=r"qa\.jsonl:2: no reference in field 'answer'"):
        run_tasks("qa", [make_task(spec)], engines, tmp_path / "strict", provenance={}, strict=True)


def test_bleu_and_chrf_score_against_every_reference():
    """As ROUGE, exact match and F1 do: a prediction equal to its item's second reference
    scores full marks, and an item with fewer references than another still counts."""
    task = make_task(GenerateSpec(name="s", data=Path("s.jsonl"), metrics=["bleu", "chrf"]))
    records = [
        {
            "prediction": "the meeting moved to friday afternoon",
            "references": ["they talk about lunch", "the meeting moved to friday afternoon"],
        },
        {"prediction": "he bought a red bicycle", "references": ["he bought a red bicycle"]},
    ]
    assert task.aggregate(records) == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}


def test_gsm8k_with_zero_shots_takes_no_exemplars(tmp_path, llama_chat):
    """shots: 0 is zero-shot: the fewshot file is not read for exemplars, so one without any
    usable exemplar does not stop the run."""
    question = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "#### 7"}
    data = _write_rows(tmp_path / "test.jsonl", [question])
    fewshot = _write_rows(tmp_path / "train.jsonl", [{"question": "?", "answer": "no working"}])
    spec = TaskSpec(name="maths", kind="gsm8k", data=data, method="pal", fewshot=fewshot, shots=0)
    engines = Engines(config=None, scorer=lambda: None, chat=lambda: llama_chat)
    run = run_tasks("maths", [make_task(spec)], engines, tmp_path / "run", provenance={})
    assert len(run.records) == 1 and run.records[0]["gold"] == "7"
