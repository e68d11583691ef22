"""Generation scored against references: summaries (ROUGE) and short answers (EM, F1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hearthlm.eval import metrics
from hearthlm.eval.tasks.base import Engines, Item, Progress, Task
from hearthlm.eval.tasks.spec import GenerateSpec
from hearthlm.rows import BadRows, Row

__all__ = ["DIALOGSUM_TEMPLATE", "GenerateTask"]

# The prompt the DialogSum preset scores with, and fine-tuning on DialogSum trains with.
DIALOGSUM_TEMPLATE = "Summarize the following conversation.\n\n{dialogue}\n\nSummary:"


class GenerateTask(Task[GenerateSpec]):
    """Greedy generation scored against a reference: ROUGE, BLEU, chrF, exact match, token F1."""

    spec_class = GenerateSpec
    chunk = 16

    def item(self, row: Row, bad: BadRows) -> Item | None:
        found = self._prompt_and_reference(row, bad, self.spec.reference)
        if found is None:
            return None
        prompt, reference = found
        listed = reference if isinstance(reference, list) else [reference]
        refs = [str(r) for r in listed if r is not None and str(r).strip()]
        if not refs:
            bad.add(row.path, row.line, f"no reference in field {self.spec.reference!r}")
            return None
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
        references = [r["references"] for r in records]  # every one of each item's
        if "bleu" in self.spec.metrics:
            scores["bleu"] = metrics.bleu(predictions, references)
        if "chrf" in self.spec.metrics:
            scores["chrf"] = metrics.chrf(predictions, references)
        return scores
