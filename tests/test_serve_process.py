"""`hearth serve` as a process: it refuses an open address without a key, and SIGTERM ends the
requests in flight, then closes the index and the session store cleanly."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

pytestmark = pytest.mark.slow
HEARTH = [str(Path(sys.executable).with_name("hearth"))]


def test_an_open_address_without_a_key_is_refused():
    run = subprocess.run(
        [*HEARTH, "serve", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert "refusing to serve 0.0.0.0 without an API key" in run.stderr


def start_server(tmp_path: Path, grace: float) -> tuple[subprocess.Popen, str, Any]:
    """`hearth serve` in its own process on a free port, once its health answers."""
    port = free_port()
    config = tmp_path / "hearth.toml"
    config.write_text(
        f'[retrieval]\npath = "{tmp_path / "index"}"\n'
        f'[serve]\nport = {port}\ndata_dir = "{tmp_path / "data"}"\nshutdown_grace = {grace}\n',
        encoding="utf-8",
    )
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [*HEARTH, "serve", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url, log
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            raise AssertionError((tmp_path / "server.log").read_text()[-3000:])
        time.sleep(0.3)


def stream_into(url: str, seen: list[str], max_tokens: int, prompt: str) -> threading.Thread:
    """A thread that streams a reply to ``prompt``, its lines into ``seen``."""

    def stream() -> None:
        body = {"messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "stream": True}  # fmt: skip
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
                seen.extend(line for line in r.iter_lines() if line)
        except httpx.HTTPError:
            seen.append("cut")

    reader = threading.Thread(target=stream)
    reader.start()
    return reader


def test_sigterm_finishes_requests_then_closes_the_stores(tmp_path: Path):
    process, url, log = start_server(tmp_path, grace=10)
    try:
        upload = [("files", ("note.md", b"# Kettle\n\nThe kettle boils in two minutes."))]
        assert httpx.post(f"{url}/v1/collections/notes/files", files=upload).status_code == 202
        while httpx.get(f"{url}/v1/collections/notes").json()["indexing"]["running"]:
            time.sleep(0.2)
        chat = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "How fast does it boil?"}],
                  "collection": "notes"},
            timeout=120,
        )  # fmt: skip
        assert chat.status_code == 200 and chat.json()["session_id"]
        seen: list[str] = []
        reader = stream_into(url, seen, max_tokens=64, prompt="Tell me a long story.")
        time.sleep(1.0)  # the stream is under way
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal, as a service should end on it
        assert process.wait(timeout=60) == -signal.SIGTERM
        reader.join(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert seen and seen[-1] == "data: [DONE]"  # finished, not cut off
    sessions = tmp_path / "data" / "sessions.sqlite"
    with sqlite3.connect(sessions) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM message_store").fetchone()[0] == 2
    assert not list(tmp_path.rglob("*-journal"))
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex

    reopened = DocumentIndex(RetrievalConfig(path=tmp_path / "index", collection="notes"))
    assert reopened.count == 1
    assert "Application shutdown complete" in (tmp_path / "server.log").read_text()


def test_sigterm_cancels_what_outlasts_the_grace_then_closes_the_stores(tmp_path: Path):
    """A reply longer than serve.shutdown_grace is cut when the grace runs out; the engines
    stop, and the session store and the index still close cleanly."""
    process, url, log = start_server(tmp_path, grace=1)
    try:
        upload = [("files", ("note.md", b"# Kettle\n\nThe kettle boils in two minutes."))]
        assert httpx.post(f"{url}/v1/collections/notes/files", files=upload).status_code == 202
        while httpx.get(f"{url}/v1/collections/notes").json()["indexing"]["running"]:
            time.sleep(0.2)
        chat = httpx.post(
            f"{url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "How fast does it boil?"}],
                  "collection": "notes"},
            timeout=120,
        )  # fmt: skip
        assert chat.status_code == 200
        seen: list[str] = []
        # about 450 tokens, 5 s, before it ends as it starts to loop
        story = "Write a long story about a lighthouse keeper."
        reader = stream_into(url, seen, max_tokens=4000, prompt=story)
        time.sleep(1.0)
        assert seen and "data: [DONE]" not in seen  # under way
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == -signal.SIGTERM
        stopped_in = time.monotonic() - started
        reader.join(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert stopped_in < 4  # cut after the 1 s grace, not awaited
    assert seen and "data: [DONE]" not in seen  # the stream ended without finishing
    text = (tmp_path / "server.log").read_text()
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in text
    assert "Application shutdown complete" in text and "Traceback" not in text
    with sqlite3.connect(tmp_path / "data" / "sessions.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM message_store").fetchone()[0] == 2
    assert not list(tmp_path.rglob("*-journal"))
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex

    assert DocumentIndex(RetrievalConfig(path=tmp_path / "index", collection="notes")).count == 1
