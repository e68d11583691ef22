"""A server's collections: each one's folder of uploaded files under ``serve.data_dir``, its
index, its chatbot and its background indexer.

Uploaded names are checked (no folders, no ``..``, no hidden or control characters, a type the
loaders read) and written through a temporary file that replaces the target, so no name and no
planted symbolic link can write outside the folder; the indexer does not follow links either.
An index run writes its progress and its last report beside the folders, where every server
that shares ``serve.data_dir`` reads them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import UploadFile

from hearthlm.config import HearthConfig
from hearthlm.errors import HearthError
from hearthlm.files import write_atomic
from hearthlm.llm import ChatHearth
from hearthlm.retrieval import DocsQA, DocumentIndex, HearthEmbeddings, build_docs_qa
from hearthlm.retrieval.loaders import SUPPORTED
from hearthlm.serve.errors import APIError
from hearthlm.serve.state import Caller

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{1,61}[A-Za-z0-9]$")  # Chroma accepts these
TEXT_TYPES = frozenset(SUPPORTED) - {".pdf"}
# A progress file not written for this long is left from a server that died mid-run.
STALE_PROGRESS_S = 300
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


@dataclass
class IndexState:
    """What a collection's indexer is doing and did last."""

    running: bool = False
    stage: str = ""
    done: int = 0
    total: int = 0
    again: bool = False  # files changed while it ran: run once more
    last: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "error": self.error,
        }


class Collections:
    """The server's collections: their folders, indexes, chatbots and indexer threads."""

    def __init__(self, config: HearthConfig, chat: ChatHearth) -> None:
        self.config = config
        self.root = config.serve.data_dir / "collections"
        self.root.mkdir(parents=True, exist_ok=True)
        retrieval = config.retrieval
        self.embeddings = HearthEmbeddings.from_config(retrieval)
        self.embeddings.model  # noqa: B018  (load it now: the first request should not wait)
        self.chat = chat
        self._indexes: dict[str, DocumentIndex] = {}
        self._qa: dict[str, DocsQA] = {}
        self._states: dict[str, IndexState] = {}
        self._runs: dict[str, threading.Lock] = {}  # one index run at a time per collection
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()

    # -- names and folders --------------------------------------------------------------------

    def names(self, who: Caller) -> list[str]:
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME.match(p.name))
        return [n for n in found if who.may_use(n)]

    def folder(self, name: str, who: Caller, create: bool = False) -> Path:
        """The folder of collection ``name``, which ``who`` may use.

        Raises:
            APIError: 400 for a bad name; 404 when it does not exist (or belongs to a key
                ``who`` is not: another key's collections are not even named).
        """
        if not NAME.match(name):
            raise APIError(
                400,
                f"collection name {name!r}: use 3 to 63 letters, digits, '-' or '_', starting "
                "and ending with a letter or digit.",
                param="name",
            )
        folder = self.root / name
        if not who.may_use(name) or (not create and not folder.is_dir()):
            raise APIError(404, f"no collection {name!r}.", code="collection_not_found")
        folder.mkdir(exist_ok=True)
        return folder

    def index(self, name: str) -> DocumentIndex:
        with self._lock:
            if name not in self._indexes:
                retrieval = self.config.retrieval.model_copy(update={"collection": name})
                self._indexes[name] = DocumentIndex(retrieval, self.embeddings)
            return self._indexes[name]

    def qa(self, name: str, chat: Any) -> DocsQA:
        """The collection's chatbot on ``chat`` (kept for the base model). The first call
        opens the collection's index: call it on a worker thread."""
        index = self.index(name)
        if chat is not self.chat:
            return build_docs_qa(self.config, chat, index)
        with self._lock:
            if name not in self._qa:
                self._qa[name] = build_docs_qa(self.config, chat, index)
            return self._qa[name]

    # -- uploads ------------------------------------------------------------------------------

    def save(self, folder: Path, upload: UploadFile) -> dict[str, Any]:
        """Write one uploaded file into ``folder``; returns its entry. It reads and writes
        files: call it on a worker thread.

        Raises:
            APIError: 400 (bad name, empty, binary), 413 (too large), 415 (a type the loaders
                do not read).
        """
        name = safe_name(upload.filename or "")
        limit = int(self.config.serve.max_upload_mb * 2**20)
        temporary = folder / f".upload-{secrets.token_hex(8)}"
        size = 0
        head = b""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        handle = os.fdopen(os.open(temporary, flags, 0o600), "wb")
        upload.file.seek(0)
        try:
            with handle:
                while block := upload.file.read(1 << 20):
                    size += len(block)
                    if size > limit:
                        raise APIError(
                            413,
                            f"{name} is over the {self.config.serve.max_upload_mb:g} MB upload "
                            "limit (serve.max_upload_mb).",
                            code="file_too_large",
                        )
                    if len(head) < 8192:
                        head += block[: 8192 - len(head)]
                    handle.write(block)
            _check_content(name, head, size)
            os.replace(temporary, folder / name)  # replaces a planted link, never its target
        finally:
            temporary.unlink(missing_ok=True)
        return {"file": name, "bytes": size}

    # -- indexing -----------------------------------------------------------------------------

    def start_indexing(self, name: str, folder: Path) -> None:
        """Index the folder in the background; if a run is going, run once more after it."""
        with self._lock:
            state = self._states.setdefault(name, IndexState())
            if state.running:
                state.again = True
                return
            state.running, state.again, state.error = True, False, None
        thread = threading.Thread(
            target=self._index_loop, args=(name, folder, state), name=f"index-{name}", daemon=True
        )
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _index_loop(self, name: str, folder: Path, state: IndexState) -> None:
        while True:
            try:
                self.reindex(name, folder, state)
            except HearthError as exc:
                state.error = str(exc)
            with self._lock:
                if not state.again or self._closing.is_set():
                    state.running = False
                    return
                state.again = False

    def reindex(self, name: str, folder: Path, state: IndexState | None = None) -> None:
        """Bring the index up to date with the folder, now (``hearth index`` on it), after
        any run of the same collection in progress: a file deleted while the background
        indexer reads the folder leaves the index with the run that follows the deletion.

        Raises:
            IndexingStopped: the server is shutting down; the next run completes the rest.
        """
        state = state or self._states.setdefault(name, IndexState())
        progress = folder.parent / f".{name}.progress.json"
        shown = 0.0

        def observe(stage: str, done: int, total: int) -> None:
            nonlocal shown
            if self._closing.is_set():
                raise IndexingStopped(f"indexing {name} stopped: the server is shutting down.")
            state.stage, state.done, state.total = stage, done, total
            if time.monotonic() - shown > 0.5 or done == total:  # for the other servers
                shown = time.monotonic()
                shared = {**state.as_dict(), "running": True, "updated": time.time()}
                write_atomic(progress, json.dumps(shared))

        with self._lock:
            run = self._runs.setdefault(name, threading.Lock())
        with run:
            try:
                report = self.index(name).index_path(
                    folder, progress=False, observe=observe, follow_links=False
                )
            finally:
                progress.unlink(missing_ok=True)
        last = report.as_dict()
        last["skipped"] = [
            {"file": relative_path(s["path"], folder), "reason": s["reason"]}
            for s in last["skipped"]
        ]
        last["warnings"] = [
            {"file": relative_path(w["path"], folder), "message": w["message"]}
            for w in last["warnings"]
        ]
        last["finished"] = time.time()
        state.last = last
        write_atomic(folder.parent / f".{name}.last-run.json", json.dumps(last))

    def state(self, name: str, folder: Path) -> dict[str, Any]:
        index = self.index(name)
        known = index.store.files()
        state = self._states.get(name) or IndexState()
        last = state.last or _saved_json(folder.parent / f".{name}.last-run.json")
        # a run on another server that shares serve.data_dir reports its progress there
        indexing = state.as_dict() if state.running else None
        shared = _saved_json(folder.parent / f".{name}.progress.json")
        if indexing is None and time.time() - shared.get("updated", 0) < STALE_PROGRESS_S:
            indexing = {k: v for k, v in shared.items() if k != "updated"}
        skipped = {s["file"]: s["reason"] for s in last.get("skipped", [])}
        files = []
        for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            indexed = known.get(str(path))
            files.append(
                {
                    "file": path.name,
                    "bytes": path.lstat().st_size,
                    "indexed": indexed is not None,
                    "chunks": len(indexed[1]) if indexed else 0,
                    "skipped": skipped.get(path.name),
                }
            )
        return {
            "name": name,
            "files": files,
            "chunks": index.count,
            "indexing": indexing or state.as_dict(),
            "skipped": [{"file": f, "reason": r} for f, r in skipped.items()],
            "last_run": {k: v for k, v in last.items() if k not in ("skipped", "warnings")},
        }

    def close(self) -> None:
        """Stop the indexers after the file each is on (the next run completes the rest),
        then close every index."""
        self._closing.set()
        for thread in self._threads:
            thread.join(timeout=60)
        for index in self._indexes.values():
            index.close()


class IndexingStopped(HearthError):
    """An index run stopped because the server is shutting down."""


def safe_name(given: str) -> str:
    """An uploaded file's name, if it is a plain name of a type the loaders read.

    Raises:
        APIError: 400 for a path, ``..``, a hidden or empty name or control characters; 415
            for a type the loaders do not read.
    """
    name = given.strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or ".." in name:
        raise APIError(
            400, f"file name {given!r}: send a plain file name, without folders or '..'.",
            code="invalid_file_name",
        )  # fmt: skip
    if name.startswith(".") or _UNSAFE.search(name) or len(name) > 200:
        raise APIError(
            400,
            f"file name {given!r}: no leading dot, no control or reserved characters "
            '(\\ / : * ? " < > |), at most 200 characters.',
            code="invalid_file_name",
        )
    suffix = Path(name).suffix.lower()
    if suffix not in SUPPORTED:
        raise APIError(
            415,
            f"{name}: type {suffix or '(none)'} is not indexed; send one of "
            f"{', '.join(SUPPORTED)}.",
            code="unsupported_file_type",
        )
    return name


def _check_content(name: str, head: bytes, size: int) -> None:
    if size == 0:
        raise APIError(400, f"{name} is empty.", code="empty_file")
    suffix = Path(name).suffix.lower()
    if suffix in TEXT_TYPES and b"\x00" in head:
        raise APIError(400, f"{name} holds binary data, not {suffix} text.", code="binary_file")
    if suffix == ".pdf" and not head.startswith(b"%PDF"):
        raise APIError(400, f"{name} is not a PDF (no %PDF header).", code="not_a_pdf")


def relative_path(path: str, folder: Path) -> str:
    """``path`` relative to a collection's ``folder`` (its name alone where it is outside)."""
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return Path(path).name


def _saved_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}
