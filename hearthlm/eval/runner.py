"""Run tasks, save every prediction as it is made, and write the JSON and Markdown reports.

A run folder holds ``items.jsonl`` (one record per scored item, appended and flushed as each chunk
finishes), ``results.json`` (scores, per-item predictions, resolved config, model and adapter
hashes, package versions, prompt-template hashes, malformed rows) and ``report.md``. Running again
into the same folder skips the items already there, so an interrupted run resumes where it
stopped; a folder holding a different run is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from hearthlm.errors import EvalError
from hearthlm.eval.tasks import Engines, Task
from hearthlm.files import write_atomic
from hearthlm.progress import progress_bar
from hearthlm.rows import BadRows
from hearthlm.runs import append_jsonl, claim_run, read_jsonl, run_identity

PACKAGES = (
    "hearthlm",
    "torch",
    "transformers",
    "llama-cpp-python",
    "peft",
    "langchain-core",
    "chromadb",
    "rouge-score",
    "sacrebleu",
)


@dataclass
class RunResult:
    """A finished evaluation run: its folder, the scores (as in ``results.json``), every
    per-item record kept, and the malformed rows that were skipped (``file:line: reason``)."""

    folder: Path
    scores: dict[str, Any]
    records: list[dict[str, Any]]
    bad_rows: list[str]

    @property
    def results_path(self) -> Path:
        return self.folder / "results.json"


def run_tasks(
    suite: str,
    tasks: Sequence[Task],
    engines: Engines,
    out: Path,
    *,
    provenance: dict[str, Any],
    strict: bool = False,
    progress: bool = True,
) -> RunResult:
    """Score ``tasks`` into the run folder ``out`` (resuming what is already there)."""
    bad = BadRows(strict=strict)
    items = {task.name: task.items(bad) for task in tasks}
    refusal = EvalError(
        f"{out} holds a different evaluation run (other tasks, model or settings); "
        "choose another --out folder or delete that one."
    )
    fingerprint = claim_run(out, _identity(suite, tasks, provenance), refusal)
    engines.workdir = out
    records = read_jsonl(out / "items.jsonl")  # an attempt cut off by a crash resumes
    done = {r["id"] for r in records}
    todo = {name: [i for i in found if i.id not in done] for name, found in items.items()}
    start = time.perf_counter()
    items_file = out / "items.jsonl"
    with progress_bar(progress, sum(map(len, todo.values())), suite) as advance:
        for task in tasks:
            pending = todo[task.name]
            for begin in range(0, len(pending), task.chunk):
                fresh = list(task.predict(pending[begin : begin + task.chunk], engines, advance))
                append_jsonl(items_file, fresh)
                records.extend(fresh)
    wanted = {i.id for found in items.values() for i in found}
    records = [r for r in records if r["id"] in wanted]
    scores = aggregate(tasks, records)
    result = {
        "suite": suite,
        "scores": scores,
        "items": len(records),
        "bad_rows": {"count": len(bad), "rows": bad.problems},
        "seconds": round(time.perf_counter() - start, 2),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        "templates": {t.name: t.spec.template_hash() for t in tasks},
        "versions": package_versions(),
        "platform": platform.platform(),
        **provenance,
        "predictions": records,
    }
    write_atomic(out / "results.json", json.dumps(result, indent=2, default=str))
    write_atomic(out / "report.md", markdown_report(result))
    return RunResult(out, scores, records, bad.problems)


def aggregate(tasks: Sequence[Task], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task scores; with several tasks, per-group and overall accuracy (pooled over items,
    as lm-evaluation-harness pools MMLU) and the unweighted mean over tasks."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_task.setdefault(record["task"], []).append(record)
    per_task = {t.name: t.aggregate(by_task[t.name]) for t in tasks if by_task.get(t.name)}
    scores: dict[str, Any] = {"tasks": per_task}
    accuracy = [t for t in tasks if "accuracy" in per_task.get(t.name, {})]
    if len(accuracy) > 1:
        pooled = [r for t in accuracy for r in by_task[t.name]]
        scores["accuracy"] = sum(bool(r["correct"]) for r in pooled) / len(pooled)
        scores["accuracy_macro"] = sum(per_task[t.name]["accuracy"] for t in accuracy) / len(
            accuracy
        )
        groups: dict[str, list[dict[str, Any]]] = {}
        for t in accuracy:
            if t.spec.group:
                groups.setdefault(t.spec.group, []).extend(by_task[t.name])
        scores["groups"] = {
            g: sum(bool(r["correct"]) for r in rs) / len(rs) for g, rs in sorted(groups.items())
        }
    return scores


def package_versions() -> dict[str, str | None]:
    """The installed version of each package that can move a score (None when absent), saved
    with every run."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def file_hash(path: Path | None) -> str | None:
    """sha256 of a file, or of every file in a folder (names and bytes, in sorted order)."""
    if path is None or not path.exists():
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def markdown_report(result: dict[str, Any]) -> str:
    """``report.md`` for a run's ``results.json`` content: model, adapter and provenance, then a
    table of every task's scores and the first malformed rows."""
    scores = result["scores"]
    model = result.get("model", {})
    lines = [
        f"# Evaluation: {result['suite']}",
        "",
        f"- Model: `{model.get('name')}` (sha256 `{str(model.get('sha256'))[:12]}`)",
        f"- Adapter: `{model.get('adapter')}` (sha256 `{str(model.get('adapter_sha256'))[:12]}`)",
        f"- Items: {result['items']}; malformed rows skipped: {result['bad_rows']['count']}",
        f"- Created {result['created']} in {result['seconds']} s; "
        f"hearthlm {result['versions'].get('hearthlm')}, "
        f"transformers {result['versions'].get('transformers')}",
        "",
    ]
    if "accuracy" in scores:
        lines += [
            f"**Accuracy {scores['accuracy']:.4f}** (pooled over items; "
            f"mean over tasks {scores['accuracy_macro']:.4f})",
            "",
        ]
    if scores.get("groups"):
        lines += ["| group | accuracy |", "|---|---|"]
        lines += [f"| {g} | {v:.4f} |" for g, v in scores["groups"].items()]
        lines.append("")
    names = sorted({m for s in scores["tasks"].values() for m in s})
    lines += ["| task | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for task, values in scores["tasks"].items():
        cells = [f"{values[m]:.4f}" if m in values else "" for m in names]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if result["bad_rows"]["rows"]:
        lines += ["", "## Malformed rows", ""]
        lines += [f"- {row}" for row in result["bad_rows"]["rows"][:100]]
    return "\n".join(lines) + "\n"


def _identity(suite: str, tasks: Sequence[Task], provenance: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs the same run: tasks, templates, the contents of their files, model,
    adapter and settings."""
    settings = {
        "suite": suite,
        "tasks": [t.spec.model_dump(mode="json", exclude={"limit"}) for t in tasks],
        "model": provenance.get("model"),
        "settings": provenance.get("settings"),
    }
    inputs = {v for t in tasks for _, v in t.spec if isinstance(v, Path) and v.is_file()}
    return run_identity(settings, sorted(inputs))
