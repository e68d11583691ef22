"""Collections over HTTP: upload files, index them as ``hearth index`` does, ask with citations,
and chat over them in sessions kept in SQL.

A collection's files live in its own folder under ``serve.data_dir``. Uploaded names are
checked (no folders, no ``..``, no hidden or control characters, a type the loaders read) and
written through a temporary file that replaces the target, so no name and no planted symbolic
link can write outside the folder; the indexer does not follow links either.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from langchain_core.messages import AIMessage, HumanMessage

from hearthlm.config import HearthConfig
from hearthlm.errors import HearthError
from hearthlm.files import write_atomic
from hearthlm.llm import ChatHearth
from hearthlm.retrieval import (
    Answer,
    DocsQA,
    DocumentIndex,
    HearthEmbeddings,
    build_docs_chat,
    build_docs_qa,
)
from hearthlm.retrieval.loaders import SUPPORTED, LoaderOptions, LoadError, load_file
from hearthlm.retrieval.rag import prompt_messages
from hearthlm.serve.errors import APIError, from_library
from hearthlm.serve.formats import chat_chunk, to_messages
from hearthlm.serve.schemas import AskRequest
from hearthlm.serve.state import Caller, ServerState, caller, state_of
from hearthlm.serve.streaming import DONE, Work, add_up, collect, event_stream, opened, sse

router = APIRouter()
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
        self.embeddings = HearthEmbeddings(
            retrieval.embedder,
            batch_size=retrieval.embed_batch_size,
            device=retrieval.device,
            precision=retrieval.embed_precision,
        )
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
            {"file": _relative(s["path"], folder), "reason": s["reason"]} for s in last["skipped"]
        ]
        last["warnings"] = [
            {"file": _relative(w["path"], folder), "message": w["message"]}
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


def _relative(path: str, folder: Path) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return Path(path).name


def _saved_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


# -- answers and citations ----------------------------------------------------------------------


def citations(answer: Answer, folder: Path) -> list[dict[str, Any]]:
    """Where an answer came from, for a client to show: each quote with its file, page and
    characters (or, for a written answer, each cited source's chunk)."""
    if answer.quotes:
        return [
            {
                "source": q.source,
                "file": _relative(q.path, folder),
                "page": q.page,
                "heading": q.heading,
                "start": q.start,
                "end": q.end,
                "text": q.text,
            }
            for q in answer.quotes
        ]
    return [
        {
            "source": s.number,
            "file": _relative(s.path, folder),
            "page": s.page,
            "heading": s.heading,
            "start": s.start,
            "end": s.start + len(s.snippet),
            "text": s.snippet,
        }
        for s in answer.citations
    ]


def answer_body(answer: Answer, folder: Path) -> dict[str, Any]:
    """The ``Answer`` as JSON, its paths relative to the collection's folder."""
    body = answer.as_dict()
    for quote in body["quotes"]:
        quote["path"] = _relative(quote["path"], folder)
    for source in body["sources"]:
        source["path"] = _relative(source["path"], folder)
    body["citations"] = citations(answer, folder)
    return body


# -- routes -------------------------------------------------------------------------------------


@router.get("/v1/collections", tags=["Documents"])
def list_collections(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    """The collections this key may use."""
    return {
        "object": "list",
        "data": [{"name": n} for n in state_of(request).collections.names(who)],
    }


@router.post("/v1/collections/{name}/files", tags=["Documents"], status_code=202)
async def upload_files(
    name: str, files: list[UploadFile], request: Request, who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Upload files (multipart, field ``files``); the collection is made on first upload and
    indexed incrementally in the background: GET the collection for progress."""
    collections = state_of(request).collections
    limit = state_of(request).config.serve.max_upload_files
    if not files:
        raise APIError(400, "send at least one file in the 'files' field.", param="files")
    if len(files) > limit:
        raise APIError(
            413, f"at most {limit} files per upload (serve.max_upload_files).", param="files"
        )
    for upload in files:  # every name is checked before any file is written
        safe_name(upload.filename or "")
    folder = collections.folder(name, who, create=True)
    saved = [await asyncio.to_thread(collections.save, folder, upload) for upload in files]
    collections.start_indexing(name, folder)
    return {"collection": name, "files": saved, "indexing": True}


@router.get("/v1/collections/{name}", tags=["Documents"])
def collection_state(name: str, request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    """The collection's files (indexed, chunks, or why skipped), chunk count and the indexer's
    progress."""
    collections = state_of(request).collections
    return collections.state(name, collections.folder(name, who))


@router.get("/v1/collections/{name}/files", tags=["Documents"])
def list_files(name: str, request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    """The collection's files."""
    collections = state_of(request).collections
    return {
        "object": "list",
        "data": collections.state(name, collections.folder(name, who))["files"],
    }


@router.delete("/v1/collections/{name}/files/{file}", tags=["Documents"])
async def delete_file(
    name: str, file: str, request: Request, who: Caller = Depends(caller)
) -> dict[str, Any]:
    """Delete a file: it leaves the folder, and its chunks leave the index and BM25."""
    state = state_of(request)
    folder = state.collections.folder(name, who)
    path = folder / safe_name(file)
    if not path.is_file() or path.is_symlink():
        raise APIError(404, f"no file {file!r} in {name!r}.", code="file_not_found")
    path.unlink()
    work = Work(state, lambda: [state.collections.reindex(name, folder)], None)
    await work.result()
    return {"collection": name, "deleted": path.name}


@router.get("/v1/collections/{name}/files/{file}/passage", tags=["Documents"])
def passage(
    name: str,
    file: str,
    start: int,
    end: int,
    request: Request,
    page: int | None = None,
    who: Caller = Depends(caller),
) -> dict[str, Any]:
    """The text around characters ``start:end`` of a file's extracted text (the offsets a
    citation gives), with where those characters fall in it, to show a quote in place."""
    state = state_of(request)
    folder = state.collections.folder(name, who)
    path = folder / safe_name(file)
    if not path.is_file() or path.is_symlink():
        raise APIError(404, f"no file {file!r} in {name!r}.", code="file_not_found")
    retrieval = state.config.retrieval
    options = LoaderOptions(retrieval.json_text_fields, retrieval.json_id_field)
    try:
        sections = load_file(path, options)
    except LoadError as exc:
        raise APIError(400, f"{file} cannot be read: {exc}") from None
    for section in sections:
        inside = section.offset <= start < section.offset + max(len(section.text), 1)
        if inside and (page is None or section.page in (None, page)):
            local = start - section.offset
            lo = max(0, local - 600)
            hi = min(len(section.text), end - section.offset + 600)
            return {
                "file": path.name,
                "page": section.page,
                "heading": section.heading,
                "text": section.text[lo:hi],
                "highlight": [local - lo, min(end - section.offset, len(section.text)) - lo],
                "start": start,
                "end": end,
            }
    raise APIError(404, f"{file} has no characters {start}-{end}.", code="passage_not_found")


@router.post("/v1/collections/{name}/ask", tags=["Documents"], response_model=None)
async def ask(
    name: str, body: AskRequest, request: Request, who: Caller = Depends(caller)
) -> Response:
    """The cited answer to a question over the collection: text, quotes with file, page and
    character offsets, citations and the grounding check. With ``stream: true``, SSE
    ``delta`` events as the text is made, then one ``answer`` event."""
    state = state_of(request)
    folder = state.collections.folder(name, who)
    chat = await state.models.aget(body.model)
    work = Work(state, lambda: state.collections.qa(name, chat).stream(body.question), request)
    if not body.stream:
        return JSONResponse(answer_body(add_up(await collect(work)), folder))
    return event_stream(_answer_events(await opened(work), folder))


async def _answer_events(chunks: AsyncIterator[Answer], folder: Path) -> AsyncIterator[str]:
    parts: list[Answer] = []  # summed once at the end (see add_up)
    try:
        async for chunk in chunks:
            parts.append(chunk)
            if chunk.text:
                yield sse({"text": chunk.text}, event="delta")
    except HearthError as exc:
        yield sse(from_library(exc).body(), event="error")
    if parts:
        yield sse(answer_body(add_up(parts), folder), event="answer")
    yield DONE


async def docs_chat_completion(
    state: ServerState, chat: ChatHearth, body: Any, request: Request, who: Caller
) -> Response:
    """``/v1/chat/completions`` with ``collection``: the last user message is asked of the
    collection in a chat session (``session_id``, else a new one seeded with the request's
    earlier turns); the reply carries ``citations`` and ``session_id``. Sampling fields apply
    to the text the reader writes (a quote answer is chosen whole); fields that would shape the
    reply otherwise (tools, formats, logprobs) are refused, since the reply is a cited answer."""
    refused = body.shaping_fields()
    if refused:
        raise APIError(
            400,
            f"a docs chat (collection) replies with a cited answer; {', '.join(refused)} "
            "cannot apply to it. Send them without collection.",
            code="unsupported_parameter",
            param=refused[0],
        )
    name = body.collection
    folder = state.collections.folder(name, who)
    messages = to_messages(body.messages)
    if not isinstance(messages[-1], HumanMessage) or not messages[-1].text.strip():
        raise APIError(400, "a docs chat needs a user message last.", param="messages")
    question = messages[-1].text
    earlier = [type(m)(m.text) for m in messages[:-1] if isinstance(m, HumanMessage | AIMessage)]
    session = body.session_id or secrets.token_urlsafe(16)
    options = body.chat_options()
    reader = chat.bind(stop=body.stops(), **options) if options or body.stop else chat

    def produce() -> Iterator[Answer]:
        """On a worker thread: the session store and the index are read here, not on the
        event loop."""
        docs_chat = build_docs_chat(
            state.config,
            f"{who.name}:{session}",  # a key never reads another key's sessions
            qa=state.collections.qa(name, reader),
            history=state.sessions,
        )
        if body.session_id is not None and not docs_chat.messages:
            raise APIError(404, f"no session {body.session_id!r}.", code="session_not_found")
        if body.session_id is None and earlier:
            docs_chat.history.add_messages(earlier)
        return docs_chat.stream(question)

    model_id = body.model or state.models.base_id
    reply_id = f"chatcmpl-{secrets.token_hex(12)}"
    work = Work(state, produce, request)
    if not body.stream:
        answer = add_up(await collect(work))
        reply = {
            "id": reply_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": answer_usage(chat, answer),
            "citations": citations(answer, folder),
            "session_id": session,
        }
        return JSONResponse(reply)
    usage = bool(body.stream_options and body.stream_options.include_usage)
    chunks = await opened(work)
    return event_stream(_chat_events(chunks, (reply_id, model_id), chat, folder, session, usage))


async def _chat_events(
    chunks: AsyncIterator[Answer],
    names: tuple[str, str],
    chat: ChatHearth,
    folder: Path,
    session: str,
    include_usage: bool,
) -> AsyncIterator[str]:
    """A docs chat's stream: the answer's text as ``chat.completion.chunk`` deltas, then a
    last chunk with its citations and session, then the usage if asked."""
    reply_id, model_id = names
    yield sse(chat_chunk(reply_id, model_id, {"role": "assistant", "content": ""}))
    parts: list[Answer] = []
    try:
        async for chunk in chunks:
            parts.append(chunk)
            if chunk.text:
                yield sse(chat_chunk(reply_id, model_id, {"content": chunk.text}))
    except HearthError as exc:
        yield sse(from_library(exc).body())
        yield DONE
        return
    answer = add_up(parts) if parts else None
    cited = citations(answer, folder) if answer else []
    yield sse(chat_chunk(reply_id, model_id, {}, "stop", citations=cited, session_id=session))
    if include_usage and answer is not None:
        usage = answer_usage(chat, answer)
        yield sse({**chat_chunk(reply_id, model_id, {}), "choices": [], "usage": usage})
    yield DONE


def answer_usage(chat: ChatHearth, answer: Answer) -> dict[str, int]:
    """A cited answer's token usage: the prompt the reader read (the packed sources and the
    question, as a written answer's prompt holds them; a quote answer's model scores the same
    text) and the answer's own tokens."""
    question = answer.standalone_question or answer.question
    prompt = chat.get_num_tokens_from_messages(prompt_messages(answer.sources, question))
    completion = chat.get_num_tokens(answer.text) if answer.text else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
