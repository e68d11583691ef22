"""What a server holds: the models, the embedder, the keys, the request limit and the session
store. Nothing else: every request's state lives in the request, so several servers can stand
behind one load balancer once the model and the index live on shared engines."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from langchain_core.tools import BaseTool

from hearthlm.config import APIKey, HearthConfig
from hearthlm.errors import ConfigError, ModelLoadError
from hearthlm.llm import ChatHearth
from hearthlm.serve.errors import APIError

if TYPE_CHECKING:
    from hearthlm.serve.collections import Collections

log = logging.getLogger("hearthlm.serve")
ANONYMOUS = "local"  # the owner of sessions when no key is configured


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's name, and the collections it may use (None: all)."""

    name: str
    collections: frozenset[str] | None

    def may_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


class KeyRing:
    """The configured API keys. With none, every request is :data:`ANONYMOUS` and may use
    every collection (allowed on a loopback address only; see :func:`check_bind`)."""

    def __init__(self, keys: list[APIKey]) -> None:
        self._keys = [
            (
                k.key.get_secret_value().encode(),
                k.name or f"key-{i + 1}",
                None if "*" in k.collections else k,
            )
            for i, k in enumerate(keys)
        ]

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller whose key ``authorization`` (``Bearer KEY``) holds.

        Raises:
            APIError: 401, the key is missing or matches none.
        """
        if not self._keys:
            return Caller(ANONYMOUS, None)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "no API key: send it as 'Authorization: Bearer KEY'.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        given = token.strip().encode()
        found: Caller | None = None
        for secret, name, scoped in self._keys:  # every key is compared, in constant time
            if hmac.compare_digest(secret, given) and found is None:
                allowed = None if scoped is None else frozenset(scoped.collections)
                found = Caller(name, allowed)
        if found is None:
            raise APIError(
                401,
                "the API key is not valid.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return found


def check_bind(host: str, keys: KeyRing, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without any API key.

    Raises:
        ConfigError: ``host`` is not loopback, no key is configured and ``insecure`` is off.
    """
    import ipaddress

    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback and not keys.required and not insecure:
        raise ConfigError(
            f"refusing to serve {host} without an API key: anyone who can reach it could read "
            "your documents. Give --api-key KEY (or [[serve.api_keys]]), bind 127.0.0.1, or "
            "pass --insecure."
        )


class Admission:
    """At most ``limit`` model requests at once (running and waiting); past it, 429."""

    def __init__(self, limit: int, retry_after: int) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.count = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        """Take a place, or raise a 429 that says when to retry.

        Raises:
            APIError: 429, every place is taken.
        """
        with self._lock:
            if self.count >= self.limit:
                raise APIError(
                    429,
                    f"the server is at capacity ({self.limit} requests running or waiting); "
                    f"retry in {self.retry_after} s.",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(self.retry_after)},
                )
            self.count += 1

    def leave(self) -> None:
        with self._lock:
            self.count -= 1


class Models:
    """The chat models a server offers, by id: the base model and each configured adapter,
    each loaded once (adapters on first use), sharing nothing but the process."""

    def __init__(self, config: HearthConfig, base: ChatHearth | None = None) -> None:
        self.config = config
        serve = config.serve
        llm = config.llm.model_copy(update={"parallel": serve.parallel})
        self._given = base  # a model the caller loaded stays theirs to close
        self.base = base or ChatHearth(**llm.model_dump(), **config.sampling.model_dump())
        self.base.load()
        self.base_id = serve.model_name or _model_id(self.base)
        self._adapters = dict(serve.adapters)
        self._loaded: dict[str, ChatHearth] = {self.base_id: self.base}
        self._lock = threading.Lock()
        for name in self._adapters:
            if name == self.base_id:
                raise ConfigError(f"serve.adapters names {name!r}, the base model's own id.")

    @property
    def ids(self) -> list[str]:
        return [self.base_id, *self._adapters]

    def get(self, model_id: str | None) -> ChatHearth:
        """The chat model ``model_id`` names (None or "": the base model).

        Raises:
            APIError: 404, no model has that id.
        """
        self.check(model_id)
        if not model_id:
            return self.base
        with self._lock:
            if model_id not in self._loaded:
                self._loaded[model_id] = self._load_adapter(self._adapters[model_id])
            return self._loaded[model_id]

    async def aget(self, model_id: str | None) -> ChatHearth:
        """:meth:`get` for a route on the event loop: an adapter not loaded yet loads on a
        worker thread, so the streams in flight do not stall behind it.

        Raises:
            APIError: 404, no model has that id.
        """
        self.check(model_id)
        loaded = self._loaded.get(model_id or self.base_id)
        if loaded is not None:
            return loaded
        return await asyncio.to_thread(self.get, model_id)

    def check(self, model_id: str | None) -> None:
        """Raise unless ``model_id`` names a model this server offers (None or "": the base).

        Raises:
            APIError: 404, no model has that id.
        """
        if model_id and model_id not in self.ids:
            raise APIError(
                404,
                f"the model {model_id!r} does not exist; GET /v1/models lists: "
                f"{', '.join(self.ids)}.",
                code="model_not_found",
                param="model",
            )

    def _load_adapter(self, path: str) -> ChatHearth:
        """A PEFT folder runs on the transformers backend over the base model; a GGUF file is
        a llama.cpp LoRA of the base model, or a merged model of its own."""
        target = Path(path).expanduser()
        options = {**self.config.llm.model_dump(), **self.config.sampling.model_dump()}
        if target.is_dir():
            options.update(backend="transformers", parallel=1, adapter=target)
        elif target.suffix == ".gguf" and target.is_file():
            options["parallel"] = self.config.serve.parallel
            if _is_lora(target):
                options["adapter"] = target
            else:
                options.update(model=str(target), adapter=None)
        else:
            raise ModelLoadError(
                f"serve.adapters: {target} is neither a PEFT adapter folder nor a GGUF file."
            )
        return ChatHearth(**options).load()

    def loaded(self) -> list[tuple[str, ChatHearth | None]]:
        return [(i, self._loaded.get(i)) for i in self.ids]

    def close(self) -> None:
        """Stop the engines this server loaded."""
        for chat in self._loaded.values():
            if chat is not self._given and chat._engine is not None:
                chat._engine.close()


def _model_id(chat: ChatHearth) -> str:
    name = chat.engine.model_name
    return Path(name).stem if name.endswith(".gguf") else name


def _is_lora(path: Path) -> bool:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("general.type")
    if field is None:
        return False
    value = bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return value == "adapter"


@dataclass
class ServerState:
    """Everything the routes share; made once by :func:`hearthlm.serve.create_app`."""

    config: HearthConfig
    models: Models
    keys: KeyRing
    admission: Admission
    executor: ThreadPoolExecutor
    tools: list[BaseTool]
    collections: Collections
    sessions: Any  # an SQLAlchemy engine
    started: float = 0.0

    @property
    def embeddings(self) -> Any:
        """The configured embedder (the collections share it)."""
        return self.collections.embeddings

    def close(self) -> None:
        """Finish, once the requests in flight ended or were cancelled: stop the engines (a
        request still decoding ends at once), let the request threads end (a docs chat saves
        its turn), stop the indexers after their current file, then close every index and
        the session store."""
        self.models.close()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.collections.close()
        self.sessions.dispose()


def now() -> int:
    """The time in whole seconds, as OpenAI's ``created`` fields give it."""
    return int(time.time())


def state_of(request: Request) -> ServerState:
    """The server's :class:`ServerState`."""
    return request.app.state.hearth


def caller(request: Request) -> Caller:
    """The authenticated caller: the dependency of every protected route.

    Raises:
        APIError: 401, no valid key.
    """
    return state_of(request).keys.authenticate(request.headers.get("authorization"))
