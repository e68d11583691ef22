"""Run folders: one run per folder, resumed after a crash, never mixed with another.

Evaluation, fine-tuning and PPO each write into a folder the user names. Running again into the
same folder resumes the run, so the folder records what run it holds (``run.json``: a
fingerprint of the settings), and a different run is refused rather than mixed in. Their logs are
JSONL files appended line by line and synced (:func:`append_jsonl`); a kill can cut the last line,
and :func:`read_jsonl` drops it.

Example:
    >>> from hearthlm.errors import TrainingError
    >>> out = Path("runs/lora")
    >>> refusal = TrainingError("runs/lora holds another run")
    >>> first = claim_run(out, run_identity({"method": "lora"}, []), refusal)
    >>> claim_run(out, run_identity({"method": "lora"}, []), refusal) == first  # resumed
    True
    >>> append_jsonl(out / "metrics.jsonl", [{"step": 1, "loss": 2.5}])
    >>> read_jsonl(out / "metrics.jsonl")
    [{'step': 1, 'loss': 2.5}]
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hearthlm.errors import HearthError
from hearthlm.files import write_atomic

__all__ = [
    "MARKER",
    "append_jsonl",
    "claim_run",
    "contents_digest",
    "file_digest",
    "fingerprint",
    "read_jsonl",
    "run_identity",
]

MARKER = "run.json"


def fingerprint(settings: Any) -> str:
    """The SHA-256 of ``settings`` as sorted JSON (values JSON cannot hold are written as
    ``str``): equal settings give equal fingerprints, in any process and any key order."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path | str) -> str | None:
    """The SHA-256 of a file's bytes (None when there is no such file), for a run's identity:
    a run resumed on an edited data file would mix two datasets."""
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def contents_digest(path: Path | str) -> str | None:
    """:func:`file_digest` of a file; of a folder, the SHA-256 over its files' relative paths
    and bytes, in sorted order (a reward model, an adapter); None when nothing is there."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update((file_digest(file) or "").encode())
    return digest.hexdigest()


def run_identity(settings: dict[str, Any], inputs: Iterable[Path | str]) -> dict[str, Any]:
    """What makes two runs one run: ``settings`` (the resolved configuration that shapes the
    result) and the contents of every input file or folder (``contents``, by path), for
    :func:`claim_run`. A rerun on an edited data file, or on another reward model, is then
    another run, and its folder is refused naming what changed."""
    return {**settings, "contents": {str(p): contents_digest(p) for p in inputs}}


def claim_run(folder: Path, settings: dict[str, Any], refusal: HearthError) -> str:
    """Make ``folder`` the home of the run that ``settings`` describe; returns its fingerprint.

    A new folder is created and marked with ``run.json`` (the fingerprint and the settings). A
    folder marked with the same fingerprint is the same run, to resume. A folder marked with
    another is refused: ``refusal`` is raised, with the settings that differ named, and
    nothing in the folder is touched.
    """
    digest = fingerprint(settings)
    marker = folder / MARKER
    if marker.is_file():
        record = json.loads(marker.read_text(encoding="utf-8"))
        if record.get("fingerprint") != digest:
            changed = _changed(record.get("settings"), settings)
            if changed:
                raise type(refusal)(f"{refusal} Changed: {', '.join(changed)}.") from None
            raise refusal
        return digest
    folder.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": digest, "settings": settings}
    write_atomic(marker, json.dumps(record, default=str))
    return digest


def _changed(before: Any, after: dict[str, Any]) -> list[str]:
    """The settings (dotted, two levels deep) whose values differ between a recorded run and
    this one."""
    after = json.loads(json.dumps(after, default=str))
    if not isinstance(before, dict):
        return []
    changed = []
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            inner = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
            changed += [f"{key}.{k}" for k in inner]
        else:
            changed.append(key)
    return changed


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append ``records`` to a JSONL log, one line each, and wait until they are on disk: a
    run resumed after a crash (or a power cut) then finds every record it was told was written.
    """
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    with path.open("a", encoding="utf-8") as sink:
        sink.write(lines)
        sink.flush()
        os.fsync(sink.fileno())


def read_jsonl(
    path: Path, keep: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]]:
    """The records of a JSONL log that a crash may have cut, in order.

    A line that does not decode (the torn tail of a killed write) is dropped, and so is a record
    that ``keep`` rejects (steps after the checkpoint a run resumes from). When anything was
    dropped, or the file does not end with a newline, ``path`` is rewritten atomically to the
    lines kept, so the next append starts on a fresh line. A missing file is an empty log.
    """
    if not path.is_file():
        return []
    raw = path.read_bytes()
    records, lines, dropped = [], [], False
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped = True
            continue
        if keep is not None and not keep(record):
            dropped = True
            continue
        records.append(record)
        lines.append(line + "\n")
    if dropped or (raw and not raw.endswith(b"\n")):
        write_atomic(path, "".join(lines))
    return records
