"""Shared fixtures: the real packaged model on both backends, greedy, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import pytest
import servers
from servers import free_port

from hearthlm.llm import ChatHearth

# Tests that use one of these fixtures load the real chat model (and most also generate with
# it or train it), so they carry the `slow` mark: `make test-fast` (-m "not slow") skips them.
# Other heavy tests (a `hearth` process, training, over ~5 s) carry the mark themselves.
MODEL_FIXTURES = frozenset(
    {"llama_chat", "served_chat", "hf_chat", "any_chat", "hf_cache", "server", "llama_cpp_server",
     "cold_server"}
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory):
    """A fresh cache folder, so the GGUF-to-safetensors conversion itself is exercised."""
    return tmp_path_factory.mktemp("hearth-cache")


@pytest.fixture(scope="session")
def llama_chat() -> ChatHearth:
    chat = ChatHearth(backend="llamacpp", max_new_tokens=48)
    return chat.load()  # now, so test timings exclude it


@pytest.fixture(scope="session")
def served_chat() -> ChatHearth:
    """The in-process model with the settings of `hearth serve`'s batched engine: flash
    attention on (an unset ``llm.flash_attention`` turns it on when requests are batched)."""
    chat = ChatHearth(backend="llamacpp", max_new_tokens=48, flash_attention=True)
    return chat.load()


@pytest.fixture(scope="session")
def hf_chat(hf_cache) -> ChatHearth:
    chat = ChatHearth(backend="transformers", max_new_tokens=48, cache_dir=hf_cache)
    return chat.load()


@pytest.fixture(scope="session", params=["llamacpp", "transformers"])
def any_chat(request: pytest.FixtureRequest) -> ChatHearth:
    """Each test using this runs once per backend."""
    return request.getfixturevalue("llama_chat" if request.param == "llamacpp" else "hf_chat")


@pytest.fixture(scope="session")
def embeddings():
    from hearthlm.retrieval import HearthEmbeddings

    emb = HearthEmbeddings()
    emb.embed_query("warm up")  # load once per session
    return emb


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `chroma run` server on a free loopback port, for the scale-out code path."""
    with servers.chroma_server(tmp_path_factory.mktemp("chroma-server")) as url:
        yield url


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL in a fresh cluster on a free loopback port: its SQLAlchemy URL."""
    with servers.postgres() as url:
        yield url


@pytest.fixture(scope="session")
def llama_cpp_server(tmp_path_factory: pytest.TempPathFactory):
    """llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``) on a free loopback
    port with the packaged GGUF: a real remote engine for the openai backend. It runs with
    ``--interrupt_requests False``, or a second request would cut off the stream in progress."""
    import sys

    from hearthlm.llm.sources import packaged_model_path

    port = free_port()
    data = tmp_path_factory.mktemp("llama-cpp-server")
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192",
               "--interrupt_requests", "False", "--verbose", "False",
               "--n_threads", str(os.cpu_count() or 1)]  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    with servers.process(command, f"{url}/models", data):
        yield url


@pytest.fixture(params=["embedded", "server"])
def retrieval_config(request: pytest.FixtureRequest, tmp_path):
    """The same index tests run on an embedded store and against a `chroma run` server."""
    import uuid

    from hearthlm.config import RetrievalConfig

    server = request.getfixturevalue("chroma_server") if request.param == "server" else None
    name = f"test-{uuid.uuid4().hex[:8]}"  # the server outlives each test
    return RetrievalConfig(path=tmp_path / "index", server=server, collection=name)


def install_distribution(
    folder: Path, monkeypatch: pytest.MonkeyPatch, dist: str, entry_points: str, module: str = ""
) -> None:
    """A real distribution on ``sys.path``, found by ``importlib.metadata`` as an installed
    package is: ``dist``'s ``.dist-info`` with ``entry_points`` (the text of entry_points.txt)
    and, with ``module``, the source of its one module, named after it (``-`` as ``_``)."""
    name = dist.replace("-", "_")
    if module:
        (folder / f"{name}.py").write_text(module, encoding="utf-8")
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Name: {dist}\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))


def shared_data(relative: str) -> Path:
    """A file of the public datasets (``$HEARTH_DATA``, else ``../shared/data`` beside the
    checkout), which the repository references and never copies. Missing, the test is skipped
    with the reason in the summary, or fails where ``HEARTH_REQUIRE_DATA`` is set (a machine
    that is meant to have the data)."""
    root = Path(
        os.environ.get("HEARTH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    path = root / relative
    if not path.exists():
        reason = f"{path} is not here: set HEARTH_DATA to the public datasets' folder"
        if os.environ.get("HEARTH_REQUIRE_DATA"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


ALPHA, BETA = "alpha-key-0123456789", "beta-key-0123456789"


class Served:
    """A running `hearth serve` app on a loopback port, in this process."""

    def __init__(self, app, port: int, data: object) -> None:
        import threading

        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"
        self.app = app
        self.data = data

    def __enter__(self) -> Served:
        import time

        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    @property
    def state(self):
        return self.app.state.hearth


def serve_config(root, **serve):
    from hearthlm.config import load_config

    return load_config(
        environ={},
        overrides={
            "retrieval": {"path": str(root / "index"), "history_path": str(root / "h.sqlite")},
            "serve": {"data_dir": str(root / "data"), **serve},
        },
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The real server (batched llama.cpp, 8 sequences) with two keys, each with its own
    collections: the clients' tests run against it over real HTTP."""
    from hearthlm.serve import create_app

    root = tmp_path_factory.mktemp("serve")
    keys = [
        {"key": ALPHA, "name": "alpha", "collections": ["alpha", "shared"]},
        {"key": BETA, "name": "beta", "collections": ["beta"]},
    ]
    config = serve_config(root, api_keys=keys, parallel=8, max_upload_mb=1.0)
    with Served(create_app(config), free_port(), root) as served:
        yield served


@pytest.fixture
def cold_server(tmp_path):
    """A server of its own (batched llama.cpp, 8 sequences) that has evaluated nothing yet, and
    a freshly loaded in-process model with the same settings: a lone request's greedy reply is
    the same on both. The session's `server` is warm: a prompt there reuses cells that another
    request's batch computed, which llama.cpp's kernels may round differently (its server
    warns the same of ``cache_prompt``), so a reply can part from the in-process one where the
    two likeliest tokens are nearly tied."""
    from hearthlm.serve import create_app

    config = serve_config(tmp_path, api_keys=[{"key": ALPHA, "name": "alpha"}], parallel=8)
    local = ChatHearth(backend="llamacpp", max_new_tokens=48, flash_attention=True).load()
    with Served(create_app(config), free_port(), tmp_path) as served:
        yield served, local
