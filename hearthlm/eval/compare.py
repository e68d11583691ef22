"""Side-by-side scores of several runs, as a table and a PNG chart (base against adapted)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearthlm.errors import EvalError
from hearthlm.plots import saved_figure


@dataclass
class Comparison:
    """Every score of several runs side by side: ``rows`` maps ``task/metric`` to one value per
    run (None where a run lacks it), in the order of ``labels``; ``chart`` is the saved PNG."""

    labels: list[str]  # one per run
    rows: dict[str, list[float | None]]  # "task/metric" -> value per run
    chart: Path | None


def load_run(path: Path) -> dict[str, Any]:
    """A run's results.json, given the file or its run folder."""
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise EvalError(f"no results.json at {path}; give a run folder written by `hearth eval`")
    try:
        return dict(json.loads(file.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise EvalError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from exc


def compare_runs(runs: list[Path], chart: Path | None = None) -> Comparison:
    """Every metric of every task across ``runs``; ``chart`` saves a grouped bar chart."""
    if not runs:
        raise EvalError("give at least one run folder to compare")
    loaded = [load_run(p) for p in runs]
    labels = [_label(p, r) for p, r in zip(runs, loaded, strict=True)]
    rows: dict[str, list[float | None]] = {}
    keys: list[str] = []
    for result in loaded:
        for key in _flatten(result["scores"]):
            if key not in keys:
                keys.append(key)
    for key in keys:
        rows[key] = [_flatten(r["scores"]).get(key) for r in loaded]
    if chart is not None:
        _plot(labels, rows, chart)
    return Comparison(labels, rows, chart)


def _label(path: Path, result: dict[str, Any]) -> str:
    model = result.get("model", {})
    adapter = model.get("adapter")
    base = path.name if path.is_dir() else path.parent.name
    return f"{base} ({Path(adapter).name})" if adapter else base


def _flatten(scores: dict[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for name in ("accuracy", "accuracy_macro"):
        if name in scores:
            flat[f"overall/{name}"] = float(scores[name])
    for group, value in scores.get("groups", {}).items():
        flat[f"group:{group}/accuracy"] = float(value)
    for task, values in scores.get("tasks", {}).items():
        for metric, value in values.items():
            flat[f"{task}/{metric}"] = float(value)
    return flat


def _plot(labels: list[str], rows: dict[str, list[float | None]], path: Path) -> None:
    # Scores on a 0-1 scale share one chart; counts and perplexities would flatten it.
    keys = [k for k, vs in rows.items() if all(v is None or 0.0 <= v <= 1.0 for v in vs)]
    if not keys:
        keys = list(rows)
    width = 0.8 / len(labels)
    figsize = (max(6.0, 0.6 * len(keys) * len(labels)), 4.5)
    with saved_figure(path, figsize=figsize, dpi=120) as (_, ax):
        for n, label in enumerate(labels):
            values = [rows[k][n] or 0.0 for k in keys]
            ax.bar([i + n * width for i in range(len(keys))], values, width, label=label)
        ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(keys))])
        ax.set_xticklabels(keys, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("score")
        ax.legend(fontsize=8)
        ax.set_title("hearthlm eval compare")
