"""Preference pairs, read once for every trainer that learns from them (reward model, DPO).

A row holds ``chosen`` and ``rejected``: HH-RLHF transcripts (``"\\n\\nHuman: …\\n\\nAssistant:
…"``) or chat message lists. A row without either side is an error naming its file and line.

Example:
    >>> pairs = list(read_preference_pairs(Path("pairs.jsonl")))  # doctest: +SKIP
    >>> pairs[0].chosen[-1]["role"]  # doctest: +SKIP
    'assistant'
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hearthlm.errors import TrainingError
from hearthlm.rows import BadRows, read_rows

_TURN = re.compile(r"\n\n(Human|Assistant): ")

Messages = list[dict[str, str]]


def transcript_messages(text: str) -> Messages:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> chat messages."""
    parts = _TURN.split("\n\n" + text.lstrip("\n"))
    messages = []
    for role, content in zip(parts[1::2], parts[2::2], strict=False):
        messages.append(
            {"role": "user" if role == "Human" else "assistant", "content": content.strip()}
        )
    return messages


@dataclass
class PreferencePair:
    """Both sides of one row as chat messages, and where the row came from (``file:line``)."""

    chosen: Messages
    rejected: Messages
    source: str


def read_preference_pairs(path: Path) -> Iterator[PreferencePair]:
    """The rows of ``path`` (JSON or JSONL) as pairs of chat messages, in file order.

    Raises:
        TrainingError: A row lacks ``chosen`` or ``rejected`` (or has an empty one); the message
            names the file and line.
    """
    bad = BadRows(strict=True, error=TrainingError, hint="")
    for row in read_rows(path, bad):
        sides = []
        for key in ("chosen", "rejected"):
            value = row.values.get(key)
            messages = transcript_messages(value) if isinstance(value, str) else value
            if not isinstance(messages, list) or not messages:
                bad.add(row.path, row.line, f"missing or empty {key!r}")
                continue
            sides.append(messages)
        if len(sides) == 2:
            yield PreferencePair(sides[0], sides[1], f"{row.path}:{row.line}")
