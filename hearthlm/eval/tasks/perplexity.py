"""Cross-entropy and perplexity of texts, or of completions given their prompts."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from hearthlm.eval import metrics
from hearthlm.eval.loglik import Request
from hearthlm.eval.tasks.base import Engines, Item, Progress, Task
from hearthlm.eval.tasks.spec import PerplexitySpec
from hearthlm.rows import BadRows, Row, field_of

__all__ = ["PerplexityTask"]


class PerplexityTask(Task[PerplexitySpec]):
    """Cross-entropy and perplexity of each text, or of a completion given its prompt (the loss
    counts completion tokens only). Reported per token (pooled) and per sequence (mean)."""

    spec_class = PerplexitySpec
    chunk = 64

    def item(self, row: Row, bad: BadRows) -> Item | None:
        prompt = self._render(row, bad)
        if prompt is None:
            return None
        if self.spec.completion is None:
            if not prompt.strip():
                bad.add(row.path, row.line, "empty text")
                return None
            data = {"prompt": "", "completion": prompt}
        else:
            completion = field_of(row, self.spec.completion, bad)
            if completion is None:
                return None
            data = {"prompt": prompt, "completion": str(completion)}
        return self._item(row, data)

    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        whole = [i for i in items if not i.data["prompt"]]
        paired = [i for i in items if i.data["prompt"]]
        scored = list(
            zip(
                whole,
                engines.scorer.perplexity([i.data["completion"] for i in whole], progress),
                strict=True,
            )
        )
        requests = [Request(i.data["prompt"], i.data["completion"]) for i in paired]
        scored += list(zip(paired, engines.scorer.score(requests, progress), strict=True))
        for item, score in scored:
            yield {
                "id": item.id,
                "task": self.name,
                "logprob": score.logprob,
                "tokens": score.tokens,
                "cross_entropy": score.cross_entropy,
            }

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        tokens = sum(r["tokens"] for r in records)
        pooled = -sum(r["logprob"] for r in records) / max(tokens, 1)
        per_sequence = [r["cross_entropy"] for r in records]
        return {
            "cross_entropy_per_token": pooled,
            "perplexity": math.exp(pooled),
            "cross_entropy_per_sequence": metrics.mean(per_sequence),
            "perplexity_per_sequence": metrics.mean(math.exp(c) for c in per_sequence),
            "tokens": float(tokens),
        }
