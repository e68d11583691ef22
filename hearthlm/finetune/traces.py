"""Agent traces for fine-tuning: GSM8K solutions turned into ReAct runs with the calculator.

Each ``<<expression=result>>`` annotation of a GSM8K solution becomes one Thought/Action/
Observation step, with the observation computed by the real calculator, and the final number
becomes the ``final_answer`` action. The trace is written in exactly the form
:class:`~hearthlm.agents.react.ReActAgent` prompts with (its system message, ``Question: …``, the
scratchpad as the assistant's text), and observations are marked untrained, so the model learns
to think and call tools, not to guess tool output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from hearthlm.agents.calculator import CalculatorError, evaluate, format_number, normalised_value
from hearthlm.agents.react import FINAL, ReActAgent
from hearthlm.agents.tools import calculator_tool
from hearthlm.errors import TrainingError
from hearthlm.gsm8k import parse_solution
from hearthlm.rows import BadRows, read_rows


def react_trace(question: str, solution: str, system: str) -> dict[str, Any] | None:
    """One training row (chat messages with segments), or None when the annotations do not
    reproduce the answer through the calculator."""
    parsed = parse_solution(solution)
    answer, steps = parsed.answer, parsed.steps
    if answer is None or not steps:
        return None
    parts: list[dict[str, Any]] = []
    last = None
    for expression, _ in steps:
        expression = expression.strip()
        try:
            value = evaluate(expression)
        except CalculatorError:
            return None
        result = format_number(value)
        action = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
        parts.append(
            {
                "text": f"Thought: I need to calculate {expression}.\nAction: {action}\n",
                "train": True,
            }
        )
        parts.append({"text": f"Observation: {result}\n", "train": False})
        last = normalised_value(value)  # 14/6 is 2.33..., not the 7 of 7/3
    if last != answer:
        return None
    action = json.dumps({"name": FINAL, "arguments": {"answer": answer}})
    parts.append({"text": f"Thought: The answer is {answer}.\nAction: {action}", "train": True})
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": f"Question: {question}"},
            {"role": "assistant", "content": parts},
        ]
    }


def gsm8k_react_traces(source: Path, destination: Path, limit: int | None = None) -> int:
    """Write ReAct traces for the GSM8K rows of ``source`` to ``destination`` (JSONL); returns
    how many rows were usable."""
    system = ReActAgent(cast(Any, None), [calculator_tool()]).system_prompt
    written = 0
    with destination.open("w", encoding="utf-8") as sink:
        for row in read_rows(source, BadRows(strict=True, error=TrainingError, hint="")):
            trace = react_trace(
                str(row.values.get("question", "")), str(row.values.get("answer", "")), system
            )
            if trace is not None:
                sink.write(json.dumps(trace) + "\n")
                written += 1
            if limit and written == limit:
                break
    if not written:
        raise TrainingError(f"{source}: no GSM8K row could be turned into a calculator trace")
    return written
