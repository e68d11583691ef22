"""The FastAPI app behind ``hearth serve``, and the uvicorn server that runs it."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from langchain_core.tools import BaseTool

from hearthlm.config import HearthConfig, load_config
from hearthlm.llm import ChatHearth
from hearthlm.serve import agent_runs, documents, errors, openai_api
from hearthlm.serve.collections import Collections
from hearthlm.serve.errors import error_body
from hearthlm.serve.state import Admission, KeyRing, Models, ServerState, caller, check_bind

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("hearthlm.serve")


def create_app(
    config: HearthConfig | None = None,
    tools: Sequence[BaseTool | Callable[..., Any]] = (),
    chat: ChatHearth | None = None,
) -> FastAPI:
    """The hearthlm server as a FastAPI app: the OpenAI-compatible API, collections, agent
    runs, the web chat at ``/`` and the OpenAPI page at ``/docs``.

    Args:
        config: the configuration (default: :func:`~hearthlm.config.load_config`); its
            ``serve`` section sets the limits and keys.
        tools: your own tools, which agent runs may then name beside the built-in ones.
        chat: an already loaded base model to serve (default: one built from ``config``
            with ``serve.parallel`` sequences decoded together).

    Example:
        >>> import uvicorn
        >>> from langchain_core.tools import tool
        >>> @tool
        ... def order_status(order_id: str) -> str:
        ...     \"\"\"The shipping status of an order.\"\"\"
        ...     return "shipped"
        >>> app = create_app(tools=[order_status])  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from hearthlm.agents.tools import resolve_tools

    config = config or load_config()
    own_tools = resolve_tools(tools)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.hearth = _state(config, own_tools, chat)
        log.info("hearth serve: %s ready", app.state.hearth.models.base_id)
        try:
            yield
        finally:
            app.state.hearth.close()

    app = FastAPI(
        title="hearthlm",
        summary="An OpenAI-compatible server for a small local model, with cited answers over "
        "your documents and agent runs.",
        version=_version(),
        lifespan=lifespan,
    )
    errors.install(app)
    _add_middleware(app, config.serve)
    app.include_router(openai_api.router)
    app.include_router(documents.router)
    app.include_router(agent_runs.router)
    _add_service_routes(app)
    if config.serve.ui:
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _add_middleware(app: FastAPI, serve: Any) -> None:
    """CORS where origins are configured (off otherwise), and the request-body limits."""
    if serve.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=serve.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            # any header: the openai SDKs send their own (x-stainless-os, -retry-count, ...)
            allow_headers=["*"],
        )
    app.add_middleware(
        BodyLimit,
        json_bytes=int(serve.max_body_mb * 2**20),
        upload_bytes=int(serve.max_upload_mb * 2**20) * serve.max_upload_files + 2**20,
    )


def _state(config: HearthConfig, tools: list[BaseTool], chat: ChatHearth | None) -> ServerState:
    from sqlalchemy import create_engine

    from hearthlm.retrieval.chat import history_url

    serve = config.serve
    models = Models(config, chat)
    collections = Collections(config, models.base)
    sessions = create_engine(history_url(serve.sessions or serve.data_dir / "sessions.sqlite"))
    limit = serve.parallel + serve.max_queue
    return ServerState(
        config=config,
        models=models,
        keys=KeyRing(serve.api_keys),
        admission=Admission(limit, serve.retry_after),
        # a thread per admitted request, and a few for indexing and embedding
        executor=ThreadPoolExecutor(limit + 4, thread_name_prefix="hearth-request"),
        tools=tools,
        collections=collections,
        sessions=sessions,
        started=time.time(),
    )


def _add_service_routes(app: FastAPI) -> None:
    @app.get("/health", tags=["Service"])
    def health() -> dict[str, str]:
        """200 once the model is loaded (no key needed)."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["Service"], response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics: requests running and waiting, tokens generated and read."""
        state = request.app.state.hearth
        caller(request)
        return Response(_metrics(state), media_type="text/plain; version=0.0.4")

    @app.get("/v1/server", tags=["Service"])
    def server(request: Request) -> dict[str, Any]:
        """What this server offers: its models, tools and limits."""
        state = request.app.state.hearth
        caller(request)
        serve = state.config.serve
        return {
            "model": state.models.base_id,
            "models": state.models.ids,
            "embedder": state.embeddings.name,
            "tools": agent_runs.available_tools(state),
            "parallel": serve.parallel,
            "max_queue": serve.max_queue,
            "max_upload_mb": serve.max_upload_mb,
            "keys_required": state.keys.required,
            "engine": _engine_stats(state),
        }


def _engine_stats(state: ServerState) -> dict[str, int]:
    """The base model's engine counters (the batched scheduler's, when it batches)."""
    engine = state.models.base.engine
    batched = getattr(engine, "batched", None)
    if batched is not None:
        return dict(batched.scheduler.stats())
    return {"running": 0, "waiting": 0, "generated_tokens": engine.generated_tokens}


def _metrics(state: ServerState) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Iterable[Any]:
            stats = _engine_stats(state)
            yield CounterMetricFamily(
                "hearth_generated_tokens", "Tokens generated", value=stats["generated_tokens"]
            )
            yield CounterMetricFamily(
                "hearth_prompt_tokens",
                "Prompt tokens evaluated",
                value=stats.get("prompt_tokens", 0),
            )
            yield GaugeMetricFamily(
                "hearth_sequences_running", "Sequences decoding now", value=stats["running"]
            )
            yield GaugeMetricFamily(
                "hearth_sequences_waiting", "Sequences waiting for a slot", value=stats["waiting"]
            )
            yield GaugeMetricFamily(
                "hearth_requests", "Requests admitted (running or waiting)",
                value=state.admission.count,
            )  # fmt: skip

    registry = CollectorRegistry(auto_describe=True)  # this app's own, not the process's
    registry.register(Collector())
    return bytes(generate_latest(registry))


class BodyLimit:
    """413 for a request body over its limit: uploads (multipart) have their own, larger one.
    The declared length is checked first; a body that streams past it (chunked, with no
    length) is cut off, and the app's answer to the cut body (FastAPI's 400 for a body it
    could not read) is replaced by the 413."""

    def __init__(self, app: Any, json_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.json_bytes = json_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
        limit = self.upload_bytes if multipart else self.json_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen, over, started = 0, False, False

        async def counted() -> Any:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _TooLarge()
            return message

        async def answer(message: Any) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a body cut short: the 413 goes instead
            started = True
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, counted, answer)
        if over and not started:
            await _too_large(send, limit)


class _TooLarge(Exception):
    pass


async def _too_large(send: Any, limit: int) -> None:
    import json

    body = json.dumps(
        error_body(413, f"the request body is over {limit} bytes.", code="request_too_large")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hearthlm")
    except PackageNotFoundError:
        return "0"


def run(config: HearthConfig, tools: Sequence[BaseTool | Callable[..., Any]] = ()) -> None:
    """Serve ``config``'s app with uvicorn until SIGTERM or Ctrl-C, which finish the requests
    in flight (cancelling those still running after ``serve.shutdown_grace`` seconds), then
    close the engines, the indexes and the session store.

    Raises:
        ConfigError: a non-loopback address without an API key (see ``serve.insecure``).
    """
    import uvicorn

    serve = config.serve
    check_bind(serve.host, KeyRing(serve.api_keys), serve.insecure)
    uvicorn.run(
        create_app(config, tools),
        host=serve.host,
        port=serve.port,
        log_level="info",
        timeout_graceful_shutdown=serve.shutdown_grace,
        server_header=False,
    )
