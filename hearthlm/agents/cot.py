"""Chain of thought: few-shot step-by-step answers, self-consistency, and a program-aided variant
in which the model writes the arithmetic and the calculator computes it."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, Field

from hearthlm.agents.calculator import CalculatorError, evaluate, normalised_value
from hearthlm.errors import ConfigError
from hearthlm.gsm8k import extract_answer, normalise_number, parse_solution
from hearthlm.llm.backend import Constraint
from hearthlm.llm.chain import (
    Chain,
    QuestionInput,
    call_options,
    can_constrain,
    question_text,
    structured_reply,
    unwrap,
)
from hearthlm.llm.prompting import build_few_shot_prompt

__all__ = [
    "ArithmeticExpression",
    "ChainOfThought",
    "CoTResult",
    "Example",
    "ProgramAided",
    "ProgramResult",
    "extract_answer",
    "few_shot_messages",
    "gsm8k_examples",
    "normalise_number",
]

COT_INSTRUCTION = (
    "Solve the math word problem step by step. End with 'The answer is N.' where N is a number."
)
PAL_INSTRUCTION = (
    "Write one arithmetic expression that computes the answer to the problem. "
    "Use only numbers, + - * / and parentheses."
)
# The program-aided reply may only be arithmetic, so the calculator can always read it.
EXPRESSION_GRAMMAR = 'root ::= [-+*/(). 0-9]+ "\\n"?\n'
# "The answer is N." followed by whitespace: the reasoning is over, so decoding stops there.
_ANSWER_DONE = re.compile(r"answer is[:\s]*\$?\s*-?[\d,]*\.?\d+\.?\s", re.IGNORECASE)


@dataclass
class Example:
    """One worked GSM8K problem used as an exemplar: the chain-of-thought prompt shows
    ``reasoning``, the program-aided prompt shows ``expression``; ``answer`` is normalised."""

    question: str
    reasoning: str  # step-by-step solution ending "The answer is N."
    expression: str  # one arithmetic expression for the answer
    answer: str


def gsm8k_examples(path: Path, n: int = 4) -> list[Example]:
    """The first ``n`` GSM8K training problems whose calculator annotations compose into one
    expression, as CoT and program-aided exemplars; none for ``n`` 0 (zero-shot)."""
    if n <= 0:
        return []
    examples = []
    for line in path.open(encoding="utf-8"):
        row = json.loads(line)
        example = _gsm8k_example(row["question"], row["answer"])
        if example:
            examples.append(example)
        if len(examples) == n:
            break
    if not examples:
        raise ConfigError(f"no usable GSM8K exemplars in {path}")
    return examples


def _gsm8k_example(question: str, solution: str) -> Example | None:
    parsed = parse_solution(solution)
    answer, steps = parsed.answer, parsed.steps
    if not answer or not steps:
        return None
    # Compose the annotated steps into one expression: later steps use earlier results.
    known: dict[str, str] = {}
    expression = ""
    for expr, result in steps:
        expression = re.sub(
            r"\d+(?:\.\d+)?",
            lambda m: f"({known[m.group(0)]})" if m.group(0) in known else m.group(0),
            expr,
        )
        known[result.strip()] = expression
    try:
        if normalised_value(evaluate(expression)) != answer:
            return None
    except CalculatorError:
        return None
    reasoning = parsed.working + f"\nThe answer is {answer}."
    return Example(question, reasoning, expression, answer)


def few_shot_messages(
    chat: Any, question: str, pairs: list[tuple[str, str]], instruction: str
) -> list[BaseMessage]:
    """The few-shot prompt: on a model that states its context window (ChatHearth), as many
    examples as fit it (:func:`~hearthlm.llm.prompting.build_few_shot_prompt`); on another model,
    every example."""
    model = unwrap(chat)
    if hasattr(model, "context_window"):
        return build_few_shot_prompt(model, question, pairs, instruction=instruction).messages
    shots: list[BaseMessage] = []
    for asked, answered in pairs:
        shots += [HumanMessage(asked), AIMessage(answered)]
    return [SystemMessage(instruction), *shots, HumanMessage(question)]


@dataclass
class CoTResult:
    """What :class:`ChainOfThought` returns: the normalised answer (None when no number was
    found), the reasoning it came from, and with self-consistency every sample and the votes."""

    answer: str | None
    reasoning: str
    samples: list[str] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)


class ChainOfThought(Chain[str | QuestionInput, CoTResult]):
    """Few-shot chain of thought; with ``samples > 1``, self-consistency (majority vote).

    A Runnable over any chat model: ``invoke``, ``batch``, ``astream`` and LCEL (``|``). The
    sampling options (``temperature``, ``seed``, ``max_new_tokens``) are passed to a ChatHearth
    with each call; another chat model samples with its own settings, so give it a temperature
    above 0 for self-consistency.

    Example:
        >>> cot = ChainOfThought(ChatHearth(), gsm8k_examples(path))  # doctest: +SKIP
        >>> cot.invoke("Tom has 3 apples and buys 4 more. How many?").answer  # doctest: +SKIP
    """

    def __init__(
        self,
        chat: BaseChatModel,
        examples: Sequence[Example],
        *,
        samples: int = 1,
        temperature: float = 0.7,
        seed: int = 0,
        max_new_tokens: int = 256,
    ) -> None:
        if samples < 1:
            raise ConfigError(f"samples must be 1 or more, got {samples}")
        self.chat = chat
        self.examples = list(examples)
        self.samples = samples
        self.temperature = temperature
        self.seed = seed
        self.max_new_tokens = max_new_tokens

    def _stream(
        self, input: str | QuestionInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[CoTResult]:
        """The :class:`CoTResult` once every sample is in."""
        question = question_text(input)
        messages = few_shot_messages(
            self.chat,
            question,
            [(e.question, e.reasoning) for e in self.examples],
            COT_INSTRUCTION,
        )
        if self.samples == 1:
            text = self._reason(messages, config)
            yield CoTResult(extract_answer(text), text, [text])
            return
        texts = [
            self._reason(messages, config, temperature=self.temperature, seed=self.seed + i)
            for i in range(self.samples)
        ]
        answers = [a for a in map(extract_answer, texts) if a is not None]
        votes = Counter(answers)
        best = votes.most_common(1)[0][0] if votes else None
        reasoning = next((t for t in texts if extract_answer(t) == best), texts[0])
        yield CoTResult(best, reasoning, texts, dict(votes))

    def _reason(
        self, messages: list[BaseMessage], config: RunnableConfig | None, **sampling: Any
    ) -> str:
        """Stream one solution and stop as soon as its "The answer is N." sentence is complete;
        small models otherwise go on to invent the next question."""
        options = call_options(self.chat, max_new_tokens=self.max_new_tokens, **sampling)
        text = ""
        for chunk in self.chat.stream(messages, config, **options):
            text += str(chunk.content)
            if _ANSWER_DONE.search(text):
                break
        return text.strip()


@dataclass
class ProgramResult:
    """What :class:`ProgramAided` returns: the calculator's normalised answer and the expression
    the model wrote; ``error`` says why the calculator refused it (then ``answer`` is None)."""

    answer: str | None
    expression: str
    error: str | None = None


class ArithmeticExpression(BaseModel):
    """The program of a program-aided answer (the structured reply of a model that reads no
    grammar)."""

    expression: str = Field(
        description="One arithmetic expression: numbers, + - * / and parentheses only"
    )


class ProgramAided(Chain[str | QuestionInput, ProgramResult]):
    """The model writes one arithmetic expression; the calculator runs it.

    On ChatHearth the expression is decoded under a grammar that admits only arithmetic. Another
    chat model is asked for an :class:`ArithmeticExpression` by native tool calling, JSON mode,
    or a parsed reply retried once (:func:`hearthlm.llm.chain.structured_reply`).
    """

    def __init__(
        self, chat: BaseChatModel, examples: Sequence[Example], max_new_tokens: int = 96
    ) -> None:
        self.chat = chat
        self.examples = list(examples)
        self.max_new_tokens = max_new_tokens

    def _stream(
        self, input: str | QuestionInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[ProgramResult]:
        """The :class:`ProgramResult`."""
        messages = few_shot_messages(
            self.chat,
            question_text(input),
            [(e.question, e.expression) for e in self.examples],
            PAL_INSTRUCTION,
        )
        if can_constrain(self.chat):
            reply = self.chat.invoke(
                messages,
                config,
                max_new_tokens=self.max_new_tokens,
                constraint=Constraint(grammar=EXPRESSION_GRAMMAR),
                stop=["\n"],
            )
            expression = str(reply.content).strip()
        else:
            program = structured_reply(self.chat, messages, ArithmeticExpression, config)
            if program is None:
                yield ProgramResult(None, "", "the model gave no readable expression")
                return
            expression = program.expression.strip()
        try:
            yield ProgramResult(normalised_value(evaluate(expression)), expression)
        except CalculatorError as exc:
            yield ProgramResult(None, expression, str(exc))
