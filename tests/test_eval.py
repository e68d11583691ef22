"""Evaluation: metric values, log-likelihoods against plain transformers, batch-size invariance,
resume, user task files, malformed rows, and the compare report, all on the real model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hearthlm.config import HearthConfig, LLMConfig
from hearthlm.errors import ConfigError, EvalError
from hearthlm.eval import evaluate, load_task, make_task, metrics
from hearthlm.eval.loglik import LoglikScorer, Request
from hearthlm.eval.tasks import MultipleChoiceTask, TaskSpec

QUIZ = [
    ("What colour is the sky on a clear day?", "green", "blue", "red", "black", 1),
    ("How many legs does a cat have?", "four", "two", "six", "eight", 0),
    ("Which is a fruit?", "carrot", "potato", "apple", "onion", 2),
    ("What do bees make?", "milk", "silk", "wool", "honey", 3),
    ("Which animal barks?", "dog", "cat", "fish", "bird", 0),
    ("What is frozen water called?", "steam", "ice", "sand", "glass", 1),
    ("Which number is largest?", "3", "7", "12", "5", 2),
]


def write_quiz(path: Path, rows=QUIZ) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        writer.writerows(rows)
    return path


def quiz_task(tmp_path: Path, shots: int = 2, **extra) -> MultipleChoiceTask:
    dev = write_quiz(tmp_path / "quiz_dev.csv", QUIZ[:2])
    test = write_quiz(tmp_path / "quiz_test.csv", QUIZ[2:])
    spec = TaskSpec(
        name="quiz",
        kind="multiple_choice",
        data=test,
        fewshot=dev,
        shots=shots,
        description="The following are multiple choice questions (with answers) about trivia.\n\n",
        choices=["choice0", "choice1", "choice2", "choice3"],
        **extra,
    )
    return MultipleChoiceTask(spec)


@pytest.fixture(scope="session")
def eval_config(hf_cache) -> HearthConfig:
    return HearthConfig(llm=LLMConfig(backend="transformers", cache_dir=hf_cache))


@pytest.fixture(scope="session")
def scorer(eval_config) -> LoglikScorer:
    return LoglikScorer.load(eval_config.llm)


# --- metrics on known cases -------------------------------------------------------------------


def test_rouge_known_values():
    same = metrics.rouge("the cat sat on the mat", "the cat sat on the mat")
    assert same == {name: 1.0 for name in metrics.ROUGE_TYPES}
    half = metrics.rouge("the cat", "the cat sat on the mat")
    # 2 of 6 reference unigrams, precision 1: F1 = 2 * 1 * (1/3) / (4/3) = 0.5
    assert half["rouge1"] == pytest.approx(0.5)
    assert metrics.rouge("dogs bark", "the cat sat")["rouge1"] == 0.0


def test_bleu_and_chrf_known_values():
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(
        100.0
    )
    assert metrics.bleu(["completely different words here"], ["the cat sat on the mat"]) < 5
    assert metrics.chrf(["the cat"], ["the cat"]) == pytest.approx(100.0)


def test_exact_match_and_f1_use_squad_normalisation():
    assert metrics.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert metrics.exact_match("Paris", ["London", "paris"]) == 1.0
    assert metrics.exact_match("Paris, France", "Paris") == 0.0
    assert metrics.token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert metrics.token_f1("", "Paris") == 0.0
    # a cited answer's markers are not words of it
    assert metrics.exact_match("Paris [1].", "Paris") == 1.0
    assert metrics.contains_answer("It is the Eiffel Tower [2], in Paris.", "eiffel tower") == 1.0
    assert metrics.contains_answer("It is in Parisian style.", "Paris") == 0.0  # whole words


def test_abstentions_are_scored_against_the_questions_nothing_answers():
    answered = [True, False, False, True]
    answerable = [True, False, True, False]
    assert metrics.abstention_scores(answered, answerable) == {
        "idk_precision": 0.5,  # two "I don't know", one of them on an unanswerable question
        "idk_recall": 0.5,  # two unanswerable questions, one of them refused
    }
    assert metrics.abstention_scores([True], [True]) == {"idk_precision": 0.0, "idk_recall": 0.0}


def test_retrieval_metrics_known_values():
    ranked = ["d3", "d1", "d7", "d2"]
    assert metrics.recall_at_k(ranked, {"d1", "d2"}, 2) == 0.5
    assert metrics.recall_at_k(ranked, {"d1", "d2"}, 4) == 1.0
    assert metrics.mrr(ranked, {"d1"}) == 0.5
    assert metrics.mrr(ranked, {"d9"}) == 0.0
    ideal = 1 + 1 / math.log2(3)
    got = 1 / math.log2(3) + 1 / math.log2(5)
    assert metrics.ndcg_at_k(ranked, {"d1": 1, "d2": 1}, 10) == pytest.approx(got / ideal)


def test_citation_precision():
    cited = ["The kettle must be descaled monthly.", "Warranty lasts two years."]
    assert metrics.citation_precision(cited, ["descaled monthly"]) == 0.5
    assert metrics.citation_precision([], ["x"]) == 0.0


# --- log-likelihoods ----------------------------------------------------------------------------


def test_perplexity_matches_plain_transformers_loss(scorer):
    import torch

    texts = [
        "The kettle boils water in about three minutes.",
        "Descale the kettle every month if your water is hard, and rinse it twice afterwards.",
    ]
    model, tokenizer = scorer.backend.model, scorer.backend.tokenizer
    for text, score in zip(texts, scorer.perplexity(texts), strict=True):
        ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer.encode(text)]])
        with torch.no_grad():
            loss = float(model(ids, labels=ids).loss)
        assert score.tokens == ids.shape[1] - 1
        assert math.exp(score.cross_entropy) == pytest.approx(math.exp(loss), rel=1e-4)


def test_completion_only_loss_ignores_the_prompt(scorer):
    """The same completion after two different prompts: only completion tokens are counted."""
    a, b = scorer.score(
        [
            Request("Question: What is the capital of France?\nAnswer:", " Paris"),
            Request("Tell me a long story about dragons and knights.\nAnswer:", " Paris"),
        ]
    )
    assert a.tokens == b.tokens == 1
    assert a.logprob > b.logprob  # the prompt conditions the completion
    assert a.greedy or a.logprob < 0


def test_scores_do_not_move_with_batch_size(scorer, tmp_path):
    task = quiz_task(tmp_path)
    from hearthlm.rows import BadRows

    items = task.items(BadRows())
    from hearthlm.eval.tasks import Engines

    runs = []
    for batch_size in (1, 3, 16):
        scorer.batch_size = batch_size
        engines = Engines(None, scorer=lambda: scorer, chat=lambda: None)
        runs.append(list(task.predict(items, engines, lambda n: None)))
    scorer.batch_size = 8
    for other in runs[1:]:
        assert [r["predicted"] for r in other] == [r["predicted"] for r in runs[0]]
        for x, y in zip(other, runs[0], strict=True):
            assert x["logprobs"] == pytest.approx(y["logprobs"], abs=1e-4)


# --- runs: reports, resume, task files, bad rows ------------------------------------------------


def test_run_writes_results_and_report(eval_config, tmp_path):
    run = evaluate([quiz_task(tmp_path)], tmp_path / "run", eval_config, progress=False)
    result = json.loads(run.results_path.read_text())
    assert result["items"] == 5 and len(result["predictions"]) == 5
    assert 0.0 <= result["scores"]["tasks"]["quiz"]["accuracy"] <= 1.0
    assert len(result["model"]["sha256"]) == 64
    assert result["versions"]["transformers"]
    assert result["templates"]["quiz"]
    assert result["config"]["llm"]["backend"] == "transformers"
    lines = (tmp_path / "run" / "items.jsonl").read_text().splitlines()
    assert len(lines) == 5 and {"id", "predicted", "gold", "logprobs"} <= set(json.loads(lines[0]))
    assert "| quiz |" in (tmp_path / "run" / "report.md").read_text()


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_without_redoing_items(eval_config, tmp_path):
    task = quiz_task(tmp_path)
    task.chunk = 2
    reference = evaluate([task], tmp_path / "reference", eval_config, progress=False)

    calls: list[int] = []
    original = MultipleChoiceTask.predict

    def crash_after_first_chunk(self, items, engines, progress):
        if calls:
            raise Interrupted  # the process dies after one chunk was saved
        calls.append(len(items))
        yield from original(self, items, engines, progress)

    task.predict = crash_after_first_chunk.__get__(task)  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        evaluate([task], tmp_path / "run", eval_config, progress=False)
    saved = (tmp_path / "run" / "items.jsonl").read_text().splitlines()
    assert len(saved) == 2
    # A crash mid-write leaves a torn line; it must be dropped, not break the resume.
    with (tmp_path / "run" / "items.jsonl").open("a") as handle:
        handle.write('{"id": "quiz/torn')

    seen: list[int] = []

    def counting(self, items, engines, progress):
        seen.append(len(items))
        yield from original(self, items, engines, progress)

    task.predict = counting.__get__(task)  # type: ignore[method-assign]
    resumed = evaluate([task], tmp_path / "run", eval_config, progress=False)
    assert sum(seen) == 3  # only the items not saved before the crash
    assert resumed.scores == reference.scores
    assert len((tmp_path / "run" / "items.jsonl").read_text().splitlines()) == 5


def test_a_folder_holding_another_run_is_refused(eval_config, tmp_path):
    evaluate([quiz_task(tmp_path)], tmp_path / "run", eval_config, progress=False)
    with pytest.raises(EvalError, match="different evaluation run"):
        evaluate([quiz_task(tmp_path, shots=1)], tmp_path / "run", eval_config, progress=False)
    # the same task on an edited data file: resuming would mix its answers with the old ones
    task = quiz_task(tmp_path)
    write_quiz(tmp_path / "quiz_test.csv", QUIZ[3:])
    with pytest.raises(EvalError, match="Changed: contents"):
        evaluate([task], tmp_path / "run", eval_config, progress=False)


def test_user_task_files_yaml_and_toml(eval_config, tmp_path):
    write_quiz(tmp_path / "quiz_test.csv", QUIZ[2:])
    write_quiz(tmp_path / "quiz_dev.csv", QUIZ[:2])
    (tmp_path / "quiz.yaml").write_text(
        "name: my_quiz\nkind: multiple_choice\ndata: quiz_test.csv\nfewshot: quiz_dev.csv\n"
        "shots: 1\nchoices: [choice0, choice1, choice2, choice3]\nscore_by: text\n"
    )
    (tmp_path / "qa.jsonl").write_text(
        json.dumps({"q": "Count from 1 to 5, separated by commas.", "a": "1, 2, 3, 4, 5"}) + "\n"
    )
    (tmp_path / "qa.toml").write_text(
        'name = "count"\nkind = "generate"\ndata = "qa.jsonl"\ntemplate = "{q}"\n'
        'reference = "a"\nmetrics = ["exact_match", "f1", "rouge"]\nmax_new_tokens = 24\n'
    )
    quiz = make_task(load_task(tmp_path / "quiz.yaml"))
    count = make_task(load_task(tmp_path / "qa.toml"))
    assert quiz.spec.data == tmp_path / "quiz_test.csv"
    run = evaluate([quiz, count], tmp_path / "run", eval_config, progress=False)
    assert set(run.scores["tasks"]) == {"my_quiz", "count"}
    assert {"accuracy", "accuracy_norm"} <= set(run.scores["tasks"]["my_quiz"])
    assert run.scores["tasks"]["count"]["f1"] > 0.5  # greedy counting is within reach
    with pytest.raises(ConfigError, match="kind"):
        (tmp_path / "bad.yaml").write_text("name: x\nkind: essay\ndata: qa.jsonl\n")
        load_task(tmp_path / "bad.yaml")


def test_malformed_rows_are_reported_with_file_and_line(eval_config, tmp_path):
    test = tmp_path / "broken.csv"
    write_quiz(test, QUIZ[2:5])
    with test.open("ab") as handle:
        handle.write(b"Which is hot?,fire,ice,snow,hail,7\n")  # answer out of range: line 5
        handle.write(b"Which is \xff?,a,b,c,d,0\n")  # not UTF-8: line 6
        handle.write(b"Missing a column,a,b,c,0\n")  # line 7
    task = quiz_task(tmp_path, shots=0)
    task.spec = task.spec.model_copy(update={"data": test})
    run = evaluate([task], tmp_path / "run", eval_config, progress=False)
    assert len(run.bad_rows) == 3
    assert any(f"{test}:5: answer 7 is out of range" in row for row in run.bad_rows)
    assert any(f"{test}:6: not UTF-8" in row for row in run.bad_rows)
    assert any(f"{test}:7:" in row for row in run.bad_rows)
    assert json.loads(run.results_path.read_text())["items"] == 3
    with pytest.raises(EvalError, match=rf"{test}:5"):
        evaluate([task], tmp_path / "strict", eval_config, strict=True, progress=False)


def test_malformed_jsonl_rows(tmp_path):
    from hearthlm.rows import BadRows, read_rows

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": broken\n\xff\xfe\n[1, 2]\n{"text": "ok"}\n')
    bad = BadRows()
    rows = list(read_rows(path, bad))
    assert [r.line for r in rows] == [1, 5]
    assert [p.split(": ")[0] for p in bad.problems] == [f"{path}:2", f"{path}:3", f"{path}:4"]


def test_cli_eval_and_compare_make_a_table_and_chart(eval_config, tmp_path, monkeypatch):
    from hearthlm.cli import app

    monkeypatch.setenv("HEARTH_LLM__CACHE_DIR", str(eval_config.llm.cache_dir))
    write_quiz(tmp_path / "quiz_test.csv", QUIZ[2:])
    write_quiz(tmp_path / "quiz_dev.csv", QUIZ[:2])
    (tmp_path / "quiz.yaml").write_text(
        "name: quiz\nkind: multiple_choice\ndata: quiz_test.csv\nfewshot: quiz_dev.csv\n"
        "shots: 2\nchoices: [choice0, choice1, choice2, choice3]\n"
    )
    runner = CliRunner()
    for name, shots in (("base", "2"), ("zero", "0")):
        text = (tmp_path / "quiz.yaml").read_text().replace("shots: 2", f"shots: {shots}")
        (tmp_path / f"{name}.yaml").write_text(text)
        result = runner.invoke(
            app,
            [
                "eval",
                "mmlu",
                "--task",
                str(tmp_path / f"{name}.yaml"),
                "--out",
                str(tmp_path / name),
            ],
        )
        assert result.exit_code == 0, result.output
        assert "accuracy" in result.output
    chart = tmp_path / "compare.png"
    result = runner.invoke(
        app,
        ["eval", "compare", str(tmp_path / "base"), str(tmp_path / "zero"), "--chart", str(chart)],
    )
    assert result.exit_code == 0, result.output
    assert "quiz/accuracy" in result.output and "base" in result.output
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rag_task_scores_retrieval_against_qrels(tmp_path, hf_cache):
    corpus = [
        {
            "_id": "kettle",
            "title": "Kettle",
            "text": "Descale the kettle monthly with citric acid.",
        },
        {"_id": "router", "title": "Router", "text": "Hold the reset button for ten seconds."},
        {
            "_id": "bread",
            "title": "Bread",
            "text": "Knead the dough for ten minutes, then let it rise.",
        },
    ]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    queries = [
        {"_id": "q1", "text": "how do I reset my router"},
        {"_id": "q2", "text": "removing limescale from a kettle"},
        {"_id": "q3", "text": "a query nobody judged"},
    ]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\trouter\t1\nq2\tkettle\t1\n"
    )
    (tmp_path / "rag.yaml").write_text(
        "name: mini\nkind: rag\ndata: queries.jsonl\ncorpus: corpus.jsonl\nqrels: qrels.tsv\n"
        "template: '{text}'\nid: _id\nk: 2\n"
    )
    config = HearthConfig(llm=LLMConfig(cache_dir=hf_cache))
    run = evaluate(
        [make_task(load_task(tmp_path / "rag.yaml"))], tmp_path / "run", config, progress=False
    )
    scores = run.scores["tasks"]["mini"]
    assert json.loads(run.results_path.read_text())["items"] == 2  # q3 has no judgements
    assert scores["recall_at_2"] == 1.0 and scores["mrr"] == 1.0 and scores["ndcg_at_2"] == 1.0


def test_rag_answers_come_from_the_reader_hearth_ask_uses_and_abstentions_are_scored(
    tmp_path, hf_cache
):
    """Rows that bring their own paragraphs and gold answers (HotpotQA's shape), one with an
    empty answer list: the documents do not answer it. The answers are the configured docs
    chatbot's (a quote on the packaged model, as `hearth ask` gives), scored by whether they
    hold the gold answer, and "I don't know" by its precision and recall."""

    def row(number: int, question: str, answers: list[str], paragraphs: list[str]) -> dict:
        contexts = [
            {
                "id": i,
                "title": f"p{i}",
                "paragraph_text": text,
                "is_supporting": i == 0 and bool(answers),
            }  # nothing supports an unanswerable one
            for i, text in enumerate(paragraphs)
        ]
        return {"question_id": f"q{number}", "question_text": question, "contexts": contexts,
                "answers_objects": [{"spans": answers}] if answers else []}  # fmt: skip

    rows = [
        row(1, "How long is the warranty on the kettle?",
            ["two years"], ["The kettle comes with a warranty of two years.",
                            "Bread needs flour, water and yeast."]),
        row(2, "What colour is the router's reset button?",
            ["red"], ["The reset button on the router is red.",
                      "Trains leave every hour from platform four."]),
        row(3, "Who painted the ceiling of the chapel?",
            [], ["Tomatoes grow best in full sun.", "The library opens at nine."]),
    ]  # fmt: skip
    (tmp_path / "hotpot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    from hearthlm.eval.tasks.presets import preset

    spec = TaskSpec(
        kind="rag", name="mini", data=tmp_path / "hotpot.jsonl", k=2, **preset("rag", "hotpotqa")
    )
    config = HearthConfig(llm=LLMConfig(cache_dir=hf_cache))
    run = evaluate([make_task(spec)], tmp_path / "run", config, progress=False)
    scores = run.scores["tasks"]["mini"]
    assert scores["contains_answer"] == 1.0 and scores["recall_at_2"] == 1.0
    assert scores["idk_precision"] == 1.0 and scores["idk_recall"] == 1.0
    items = [json.loads(x) for x in (tmp_path / "run" / "items.jsonl").read_text().splitlines()]
    answers = {r["id"]: r["answer"] for r in items}
    assert answers["mini/q1"].startswith("The kettle comes with a warranty of two years.")
    assert answers["mini/q3"].startswith("I don't know")


def test_agent_task_reports_success_and_valid_actions(tmp_path, hf_cache):
    (tmp_path / "q.jsonl").write_text(
        json.dumps({"question": "What is 1234 * 5678?", "answer": "#### 7006652"}) + "\n"
    )
    (tmp_path / "agent.toml").write_text(
        'name = "maths"\nkind = "agent"\ndata = "q.jsonl"\ntemplate = "{question}"\n'
        'tools = ["calculator"]\nmax_steps = 4\n'
    )
    config = HearthConfig(llm=LLMConfig(cache_dir=hf_cache))
    run = evaluate(
        [make_task(load_task(tmp_path / "agent.toml"))], tmp_path / "run", config, progress=False
    )
    scores = run.scores["tasks"]["maths"]
    assert scores["success"] == 1.0 and scores["valid_action_rate"] == 1.0
    assert 2 <= scores["mean_steps"] <= 4
