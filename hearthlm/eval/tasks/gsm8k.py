"""GSM8K: grade-school maths, the model's number against the number after ``####``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hearthlm.agents.cot import ChainOfThought, Example, ProgramAided, gsm8k_examples
from hearthlm.eval import metrics
from hearthlm.eval.tasks.base import Engines, Item, Progress, Task
from hearthlm.eval.tasks.spec import GSM8KSpec
from hearthlm.gsm8k import extract_answer, solution_answer
from hearthlm.rows import BadRows, Row

__all__ = ["DIRECT_SYSTEM", "GSM8KTask"]

DIRECT_SYSTEM = "Answer the math word problem with just the final number."


class GSM8KTask(Task[GSM8KSpec]):
    """Grade-school maths: the number after ``####`` against the model's extracted answer, by
    direct answer, few-shot chain of thought, or program-aided (the calculator computes)."""

    spec_class = GSM8KSpec
    chunk = 8

    def item(self, row: Row, bad: BadRows) -> Item | None:
        found = self._prompt_and_reference(row, bad, self.spec.reference)
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
        examples: list[Example] = []  # zero-shot without a fewshot file, or with shots 0
        if self.spec.fewshot and self.spec.shots:
            examples = gsm8k_examples(self.spec.fewshot, self.spec.shots)
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
