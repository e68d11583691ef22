"""Named sets of field values for a task kind: a dataset's shape, so that its file needs no task
file of its own (``hearth eval generate --preset dialogsum``)."""

from __future__ import annotations

from typing import Any

from hearthlm.errors import EvalError
from hearthlm.eval.tasks.generate import DIALOGSUM_TEMPLATE

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "generate": {
        "dialogsum": {
            "template": DIALOGSUM_TEMPLATE,
            "reference": "summary",
            "metrics": ["rouge"],
            "id": "fname",
            "max_new_tokens": 96,
        },
    },
    "rag": {
        # BEIR: queries.jsonl with a corpus and qrels (retrieval only)
        "beir": {"template": "{text}", "id": "_id"},
        # HotpotQA's rows: a question with its gold answers
        "hotpotqa": {
            "template": "{question_text}",
            "reference": "answers_objects",
            "id": "question_id",
        },
    },
}


def preset(kind: str, name: str) -> dict[str, Any]:
    """The field values of ``kind``'s preset ``name``.

    Raises:
        EvalError: no such preset; the message lists the kind's presets.
    """
    known = PRESETS.get(kind, {})
    if name not in known:
        listed = ", ".join(known) or "none"
        raise EvalError(f"unknown {kind} preset {name!r}; available: {listed}")
    return dict(known[name])
