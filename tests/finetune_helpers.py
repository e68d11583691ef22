"""What the fine-tuning tests train on: short facts as prompt/completion rows."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [
    ("What colour is a ripe banana?", "A ripe banana is yellow."),
    ("What do cows drink?", "Cows drink water."),
    ("How many days are in a week?", "A week has seven days."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Where do fish live?", "Fish live in water."),
    ("What season follows winter?", "Spring follows winter."),
]
MORE_FACTS = [
    ("What do bees make?", "Bees make honey."),
    ("What colour is the sky on a clear day?", "The sky is blue on a clear day."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What falls from clouds?", "Rain falls from clouds."),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
