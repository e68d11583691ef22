"""Atomic writes: a file or folder is written beside its target, then renamed over it.

A rename within one file system is atomic, so a reader (or a run resumed after a kill) sees the
old content or the new, never half of either. Every writer in hearthlm that must survive a crash
goes through here: eval reports and logs, training checkpoints and weights, the BM25 index, the
converted model cache, merged models and GGUF exports.

Example:
    >>> with atomic_folder(Path("runs/lora/checkpoint")) as staging:
    ...     _ = (staging / "state.json").write_text("{}")
    >>> sorted(p.name for p in Path("runs/lora").iterdir())
    ['checkpoint']
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_file",
    "atomic_folder",
    "made_once",
    "old_folder",
    "staging_folder",
    "write_atomic",
]


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a staging path beside ``target``; when the block ends without an error, the file
    written there replaces ``target`` in one rename. On an error the staging file is removed and
    ``target`` is left as it was."""
    staging = target.with_name(f".{target.name}.tmp")
    try:
        yield staging
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, target)


def write_atomic(target: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_file(target) as staging:
        staging.write_text(text, encoding="utf-8")


def old_folder(target: Path) -> Path:
    """Where :func:`atomic_folder` keeps the previous ``target`` between its two renames. A kill
    in that instant leaves the previous content whole here; a reader that must never find the
    folder missing (training checkpoints) renames it back."""
    return target.with_name(f".{target.name}.old")


def staging_folder(target: Path) -> Path:
    """Where :func:`atomic_folder` stages ``target`` (without ``unique``): ``.<name>.tmp``
    beside it, so that other processes can add their parts while it is open."""
    return target.with_name(f".{target.name}.tmp")


def made_once(folder: Path, made: Callable[[Path], bool], make: Callable[[Path], None]) -> Path:
    """``folder``, made by ``make(folder)`` unless ``made(folder)`` says it is there already.
    Processes that want it at once take turns under a file lock beside it: one makes it, and
    the others find it made (``make`` should write through :func:`atomic_folder`)."""
    if made(folder):
        return folder
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(f".{folder.name}.lock")):
        if not made(folder):  # made while this process waited
            make(folder)
    return folder


@contextmanager
def atomic_folder(target: Path, *, unique: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; when the block ends without an error, it
    replaces ``target`` (moved aside to :func:`old_folder`, then deleted).

    The staging folder is ``.<name>.tmp``, cleared first, so a run killed while writing leaves no
    growing litter. With ``unique=True`` it has a fresh random name, for writers that may run in
    two processes at once (the converted-model cache). On an error the staging folder is removed
    and ``target`` is left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if unique:
        staging = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        )
        old = staging.with_suffix(".old")
    else:
        staging, old = staging_folder(target), old_folder(target)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
