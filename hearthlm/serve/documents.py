"""Collections over HTTP: upload files, index them as ``hearth index`` does, ask with citations,
and chat over them in sessions kept in SQL. What a collection holds, and how uploads are checked,
is :mod:`hearthlm.serve.collections`."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from langchain_core.messages import AIMessage, HumanMessage

from hearthlm.errors import HearthError
from hearthlm.llm import ChatHearth
from hearthlm.retrieval import (
    Answer,
    build_docs_chat,
)
from hearthlm.retrieval.loaders import LoaderOptions, LoadError, load_file
from hearthlm.retrieval.rag import prompt_messages
from hearthlm.serve.collections import relative_path, safe_name
from hearthlm.serve.errors import APIError, from_library
from hearthlm.serve.formats import chat_chunk, to_messages
from hearthlm.serve.schemas import AskRequest
from hearthlm.serve.state import Caller, ServerState, caller, state_of
from hearthlm.serve.streaming import DONE, Work, add_up, collect, event_stream, opened, sse

router = APIRouter()


# -- answers and citations ----------------------------------------------------------------------


def citations(answer: Answer, folder: Path) -> list[dict[str, Any]]:
    """Where an answer came from, for a client to show: each quote with its file, page and
    characters (or, for a written answer, each cited source's chunk)."""
    if answer.quotes:
        return [
            {
                "source": q.source,
                "file": relative_path(q.path, folder),
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
            "file": relative_path(s.path, folder),
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
        quote["path"] = relative_path(quote["path"], folder)
    for source in body["sources"]:
        source["path"] = relative_path(source["path"], folder)
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
    await asyncio.to_thread(state.collections.reindex, name, folder)  # after a run going on
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
