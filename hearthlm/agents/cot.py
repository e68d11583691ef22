"""Chain of thought: few-shot step-by-step answers, self-consistency, and a program-aided variant
in which the model writes the arithmetic and the calculator computes it."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage

from hearthlm.agents.calculator import CalculatorError, calculate
from hearthlm.errors import ConfigError
from hearthlm.gsm8k import extract_answer, normalise_number
from hearthlm.llm.chat_model import ChatHearth
from hearthlm.llm.prompting import build_few_shot_prompt

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
_ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")


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
    expression, as CoT and program-aided exemplars."""
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
    body, _, final = solution.rpartition("####")
    answer = normalise_number(final)
    steps = _ANNOTATION.findall(body)
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
        if normalise_number(calculate(expression)) != answer:
            return None
    except CalculatorError:
        return None
    reasoning = _ANNOTATION.sub("", body).strip() + f"\nThe answer is {answer}."
    return Example(question, reasoning, expression, answer)


@dataclass
class CoTResult:
    """What :class:`ChainOfThought` returns: the normalised answer (None when no number was
    found), the reasoning it came from, and with self-consistency every sample and the votes."""

    answer: str | None
    reasoning: str
    samples: list[str] = field(default_factory=list)
    votes: dict[str, int] = field(default_factory=dict)


class ChainOfThought:
    """Few-shot chain of thought; with ``samples > 1``, self-consistency (majority vote).

    Example:
        >>> cot = ChainOfThought(ChatHearth(), gsm8k_examples(path))  # doctest: +SKIP
        >>> cot.invoke("Tom has 3 apples and buys 4 more. How many?").answer  # doctest: +SKIP
    """

    def __init__(
        self,
        chat: ChatHearth,
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

    def invoke(self, question: str) -> CoTResult:
        prompt = build_few_shot_prompt(
            self.chat,
            question,
            [(e.question, e.reasoning) for e in self.examples],
            instruction=COT_INSTRUCTION,
        )
        if self.samples == 1:
            text = self._reason(prompt.messages)
            return CoTResult(extract_answer(text), text, [text])
        texts = [
            self._reason(prompt.messages, temperature=self.temperature, seed=self.seed + i)
            for i in range(self.samples)
        ]
        answers = [a for a in map(extract_answer, texts) if a is not None]
        votes = Counter(answers)
        best = votes.most_common(1)[0][0] if votes else None
        reasoning = next((t for t in texts if extract_answer(t) == best), texts[0])
        return CoTResult(best, reasoning, texts, dict(votes))

    def _reason(self, messages: list[BaseMessage], **sampling: Any) -> str:
        """Stream one solution and stop as soon as its "The answer is N." sentence is complete;
        small models otherwise go on to invent the next question."""
        text = ""
        for chunk in self.chat.stream(messages, max_new_tokens=self.max_new_tokens, **sampling):
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


class ProgramAided:
    """The model writes one arithmetic expression (grammar-constrained); the calculator runs it."""

    def __init__(self, chat: ChatHearth, examples: Sequence[Example], max_new_tokens: int = 96):
        self.chat = chat
        self.examples = list(examples)
        self.max_new_tokens = max_new_tokens

    def invoke(self, question: str) -> ProgramResult:
        prompt = build_few_shot_prompt(
            self.chat,
            question,
            [(e.question, e.expression) for e in self.examples],
            instruction=PAL_INSTRUCTION,
        )
        reply = self.chat.invoke(
            prompt.messages,
            max_new_tokens=self.max_new_tokens,
            grammar=EXPRESSION_GRAMMAR,
            stop=["\n"],
        )
        expression = str(reply.content).strip()
        try:
            return ProgramResult(normalise_number(calculate(expression)), expression)
        except CalculatorError as exc:
            return ProgramResult(None, expression, str(exc))
