"""Scoring the ReAct agent with the named tools over a question set: task success, valid-action
rate and steps."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hearthlm.agents.react import ReActAgent
from hearthlm.agents.tools import build_tools
from hearthlm.eval import metrics
from hearthlm.eval.tasks.base import Engines, Item, Progress, Task, gold_answers
from hearthlm.eval.tasks.spec import AgentSpec
from hearthlm.gsm8k import extract_answer, solution_answer
from hearthlm.rows import BadRows, Row

__all__ = ["AgentTask"]


class AgentTask(Task[AgentSpec]):
    """The ReAct agent with the named tools: task success, valid-action rate and steps."""

    spec_class = AgentSpec
    chunk = 4

    def item(self, row: Row, bad: BadRows) -> Item | None:
        found = self._prompt_and_reference(row, bad, self.spec.reference)
        if found is None:
            return None
        question, answer = found
        text = str(answer)
        numeric = solution_answer(text) if "####" in text else None
        return self._item(
            row, {"question": question, "references": gold_answers(answer), "number": numeric}
        )

    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        tools = build_tools(engines.config, self.spec.tools)
        agent = ReActAgent(engines.chat, tools, max_steps=self.spec.max_steps)
        for item in items:
            result = agent.invoke(item.data["question"])
            answer = result.answer or ""
            if item.data["number"] is not None:
                success = extract_answer(answer) == item.data["number"]
            else:
                success = bool(metrics.exact_match(answer, item.data["references"]))
            progress(1)
            yield {
                "id": item.id,
                "task": self.name,
                "answer": answer,
                "success": success,
                "steps": len(result.steps),
                "valid_actions": sum(s.valid for s in result.steps),
                "stopped_reason": result.stopped_reason,
                "seconds": round(result.seconds, 3),
            }

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        actions = sum(r["steps"] for r in records)
        return {
            "success": metrics.mean(float(r["success"]) for r in records),
            "valid_action_rate": sum(r["valid_actions"] for r in records) / max(actions, 1),
            "mean_steps": metrics.mean(float(r["steps"]) for r in records),
            "seconds_per_task": metrics.mean(float(r["seconds"]) for r in records),
        }
