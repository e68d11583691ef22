"""Chain of thought, self-consistency and program-aided answers on the real default model."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from hearthlm.agents.calculator import evaluate
from hearthlm.agents.cot import (
    ChainOfThought,
    Example,
    ProgramAided,
    _gsm8k_example,
    extract_answer,
)

EXAMPLES = [
    Example(
        "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "Tom has 3 + 4 = 7 apples.\nThe answer is 7.",
        "3 + 4",
        "7",
    ),
    Example(
        "A box holds 6 eggs. How many eggs are in 5 boxes?",
        "5 boxes hold 5 * 6 = 30 eggs.\nThe answer is 30.",
        "5 * 6",
        "30",
    ),
]


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("so 5 + 3 = 8.\nThe answer is 8.", "8"),
        ("The answer is $1,250.00", "1250"),
        ("The answer is: -3", "-3"),
        ("She has 12 left, then 15.", "15"),
        ("no numbers here", None),
    ],
)
def test_answer_extraction(text, number):
    assert extract_answer(text) == number


def test_gsm8k_annotations_compose_into_one_expression():
    solution = (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
        "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"
    )
    example = _gsm8k_example("Janet's ducks...", solution)
    assert example is not None
    assert example.expression == "(16-3-4)*2"
    assert example.reasoning.endswith("The answer is 18.") and "<<" not in example.reasoning
    assert evaluate(example.expression) == 18


def test_one_parser_reads_a_solution_for_exemplars_traces_and_grading():
    from hearthlm.eval.tasks.base import gold_answers
    from hearthlm.finetune.traces import react_trace
    from hearthlm.gsm8k import parse_solution, solution_answer

    solution = (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
        "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 1,8"  # a comma in the answer
    )
    parsed = parse_solution(solution)
    assert parsed.steps == [("16-3-4", "9"), ("9*2", "18")]
    assert parsed.answer == solution_answer(solution) == "18"
    assert parsed.working.endswith("$18 every day.") and "<<" not in parsed.working
    assert gold_answers(solution) == ["1,8"]  # the text tasks keep the text after ####
    trace = react_trace("Janet's ducks...", solution, "system")
    assert trace is not None
    calls = [p["text"] for p in trace["messages"][2]["content"] if p["train"]]
    assert "16-3-4" in calls[0] and "9*2" in calls[1] and '"answer": "18"' in calls[2]
    assert parse_solution("no working at all").steps == []


def test_gsm8k_exemplars_compose_their_steps_into_one_expression(tmp_path):
    """Rows in GSM8K's format (written here, not copied from the dataset): each exemplar's
    calculator steps compose into one expression whose value is the answer; a row whose
    steps do not lead to its answer is passed over."""
    from hearthlm.agents.cot import gsm8k_examples

    rows = [
        {"question": "A box holds 6 eggs. How many eggs are in 4 boxes and 3 loose eggs?",
         "answer": "4 boxes hold 4*6 = <<4*6=24>>24 eggs.\nWith the loose ones: 24+3 = "
                   "<<24+3=27>>27 eggs.\n#### 27"},
        {"question": "No working.", "answer": "It is just known.\n#### 5"},
        {"question": "Tom has 10 apples and gives half away. How many are left?",
         "answer": "He gives 10/2 = <<10/2=5>>5 away.\n10-5 = <<10-5=5>>5 are left.\n#### 5"},
    ]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    examples = gsm8k_examples(path, 3)
    assert [e.answer for e in examples] == ["27", "5"]
    assert examples[0].expression.replace(" ", "") == "(4*6)+3"
    for example in examples:
        assert evaluate(example.expression) == Fraction(example.answer)


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_zero_shots_means_no_exemplars(tmp_path):
    from hearthlm.agents.cot import gsm8k_examples

    row = {
        "question": "Tom has 10 apples and gives half away. How many are left?",
        "answer": "He gives 10/2 = <<10/2=5>>5 away.\n10-5 = <<10-5=5>>5 are left.\n#### 5",
    }
    path = _write_rows(tmp_path / "train.jsonl", [row, row])
    assert gsm8k_examples(path, 0) == []
    assert len(gsm8k_examples(path, 1)) == 1


def test_an_exemplar_is_scored_by_its_value_not_the_numerator_of_a_fraction():
    """14/6 is 7/3: its steps do not lead to the answer 7, though "7/3" begins with a 7."""
    wrong = "Each of 6 friends gets 14/6 = <<14/6=7>>7 sweets.\n#### 7"
    right = "Each of 2 friends gets 14/2 = <<14/2=7>>7 sweets.\n#### 7"
    assert _gsm8k_example("How many sweets does each friend get?", wrong) is None
    example = _gsm8k_example("How many sweets does each friend get?", right)
    assert example is not None and example.answer == "7"


def test_a_program_aided_answer_is_the_value_of_the_expression():
    """The reply of a model that reads no grammar is scripted: a wrong expression whose value is
    7/3 must not score as 7 (the numerator of "7/3 (≈ 2.33333333333)")."""

    def program(expression: str) -> ProgramAided:
        reply = AIMessage(json.dumps({"expression": expression}))
        return ProgramAided(GenericFakeChatModel(messages=iter([reply])), EXAMPLES)

    wrong = program("14 / 6").invoke("Share 14 sweets between 2 friends. How many each?")
    assert wrong.error is None and wrong.answer != "7"
    assert wrong.answer.startswith("2.333333")
    assert program("14 / 2").invoke("Share 14 sweets between 2 friends.").answer == "7"
    assert program("5 / 2").invoke("Share 5 cakes between 2 friends.").answer == "2.5"


def test_shared_gsm8k_exemplars_load():
    from conftest import shared_data

    from hearthlm.agents.cot import gsm8k_examples

    examples = gsm8k_examples(shared_data("gsm8k/train.jsonl"), 3)
    assert len(examples) == 3
    for example in examples:
        assert evaluate(example.expression) == Fraction(example.answer)


def test_greedy_chain_of_thought_reasons_and_answers(llama_chat):
    result = ChainOfThought(llama_chat, EXAMPLES, max_new_tokens=64).invoke(
        "Sam has 2 pens and buys 5 more. How many pens does he have?"
    )
    # The 135M model follows the exemplars' format (its arithmetic is another matter).
    assert result.answer is not None
    assert result.reasoning.strip().endswith(f"The answer is {result.answer}.")


def test_self_consistency_votes_over_seeded_samples(llama_chat):
    sc = ChainOfThought(llama_chat, EXAMPLES, samples=3, temperature=0.8, max_new_tokens=48)
    question = "A bag has 4 red and 6 blue marbles. How many marbles are in the bag?"
    first, again = sc.invoke(question), sc.invoke(question)
    assert first.samples == again.samples  # seeded: reproducible
    assert len(first.samples) == 3
    assert sum(first.votes.values()) <= 3
    assert first.answer == max(first.votes, key=first.votes.get)


def test_program_aided_expression_is_computed_by_the_calculator(llama_chat):
    result = ProgramAided(llama_chat, EXAMPLES).invoke(
        "A crate holds 12 bottles. How many bottles are in 7 crates?"
    )
    assert set(result.expression) <= set("-+*/(). 0123456789")
    if result.error is None:
        assert float(result.answer) == pytest.approx(float(evaluate(result.expression)))
