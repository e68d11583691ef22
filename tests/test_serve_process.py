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


def test_sigterm_finishes_requests_then_closes_the_stores(tmp_path: Path):
    port = free_port()
    config = tmp_path / "hearth.toml"
    config.write_text(
        f'[retrieval]\npath = "{tmp_path / "index"}"\n'
        f'[serve]\nport = {port}\ndata_dir = "{tmp_path / "data"}"\n',
        encoding="utf-8",
    )
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [*HEARTH, "serve", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
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

        def stream() -> None:
            body = {"messages": [{"role": "user", "content": "Tell me a long story."}],
                    "max_tokens": 64, "stream": True}  # fmt: skip
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
                seen.extend(line for line in r.iter_lines() if line)

        reader = threading.Thread(target=stream)
        reader.start()
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
