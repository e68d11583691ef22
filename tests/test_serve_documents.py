"""Collections, cited answers, docs chat sessions and agent runs over HTTP, and what one key may
not do with another's documents."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from conftest import ALPHA, BETA

pytestmark = pytest.mark.slow
DOCS = Path(__file__).resolve().parent.parent / "examples" / "docs"
KEEP = ("kettle-manual.md", "warranty.html", "safety-sheet.pdf", "troubleshooting.txt")


def client_for(server, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


@pytest.fixture(scope="module")
def alpha(server):
    with client_for(server, ALPHA) as c:
        yield c


@pytest.fixture(scope="module")
def beta(server):
    with client_for(server, BETA) as c:
        yield c


def wait_indexed(c: httpx.Client, name: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        state = c.get(f"/v1/collections/{name}").json()
        if not state["indexing"]["running"] and state["last_run"]:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.2)


@pytest.fixture(scope="module")
def kettle(alpha) -> dict:
    files = [("files", (n, (DOCS / n).read_bytes())) for n in KEEP]
    response = alpha.post("/v1/collections/alpha/files", files=files)
    assert response.status_code == 202
    return wait_indexed(alpha, "alpha")


def test_uploads_are_indexed_as_hearth_index_does(kettle, alpha):
    files = {f["file"]: f for f in kettle["files"]}
    assert set(files) == set(KEEP) and all(f["indexed"] and f["chunks"] for f in files.values())
    assert kettle["chunks"] == sum(f["chunks"] for f in files.values())
    again = alpha.post(
        "/v1/collections/alpha/files",
        files=[("files", ("warranty.html", (DOCS / "warranty.html").read_bytes()))],
    )
    assert again.status_code == 202
    state = wait_indexed(alpha, "alpha")
    assert (
        state["last_run"]["embedded"] == 0 and state["last_run"]["files_unchanged"] >= 1
    )  # incremental


def test_ask_returns_the_quote_with_its_characters_and_the_passage(kettle, alpha):
    answer = alpha.post(
        "/v1/collections/alpha/ask", json={"question": "How long is the warranty?"}
    ).json()
    assert "two-year limited warranty" in answer["answer"] and answer["mode"] == "quote"
    cited = answer["citations"][0]
    assert cited["file"] == "warranty.html" and (cited["start"], cited["end"]) == (21, 112)
    passage = alpha.get(
        "/v1/collections/alpha/files/warranty.html/passage",
        params={"start": cited["start"], "end": cited["end"]},
    ).json()
    lo, hi = passage["highlight"]
    assert passage["text"][lo:hi] == cited["text"]
    with alpha.stream(
        "POST",
        "/v1/collections/alpha/ask",
        json={"question": "What does error E4 mean?", "stream": True},
    ) as r:
        events = [line for line in r.iter_lines() if line]
    kinds = [e.removeprefix("event: ") for e in events if e.startswith("event: ")]
    assert kinds[0] == "delta" and kinds[-1] == "answer" and events[-1] == "data: [DONE]"
    final = json.loads(events[-2].removeprefix("data: "))
    streamed = "".join(
        json.loads(e.removeprefix("data: "))["text"]
        for i, e in enumerate(events[1:], 1)
        if events[i - 1] == "event: delta"
    )
    assert streamed == final["answer"] and "heating plate" in final["answer"]
    assert final["citations"][0]["file"] == "troubleshooting.txt"
    unknown = alpha.post(
        "/v1/collections/alpha/ask", json={"question": "How do I update the firmware?"}
    ).json()
    assert unknown["answer"].startswith("I don't know")


def test_docs_chat_keeps_its_session_and_cites(kettle, alpha, beta):
    first = alpha.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "How long is the warranty?"}],
            "collection": "alpha",
        },
    ).json()
    assert "two-year" in first["choices"][0]["message"]["content"]
    assert first["citations"][0]["file"] == "warranty.html" and len(first["session_id"]) >= 16
    usage = first["usage"]  # the sources and question read, the answer's own tokens
    assert usage["prompt_tokens"] > 2 * usage["completion_tokens"] > 20
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    session = first["session_id"]
    second = alpha.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "What does error E4 mean?"}],
            "collection": "alpha",
            "session_id": session,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    lines = [
        json.loads(line[6:]) for line in second.text.splitlines() if line.startswith("data: {")
    ]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in lines if c["choices"])
    assert text.startswith("Emberline")
    assert lines[-2]["session_id"] == session and lines[-2]["citations"]
    assert lines[-2]["choices"][0]["finish_reason"] == "stop"
    assert lines[-1]["choices"] == [] and lines[-1]["usage"]["completion_tokens"] > 10
    shaped = alpha.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "How long is the warranty?"}],
            "collection": "alpha",
            "response_format": {"type": "json_object"},
        },
    )  # a docs chat's reply is a cited answer: a format cannot apply, and is not ignored
    assert shaped.status_code == 400
    assert shaped.json()["error"]["param"] == "response_format"
    missing = alpha.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "collection": "alpha",
            "session_id": "nope",
        },
    )
    assert missing.status_code == 404
    # another key can neither read this session nor this collection
    theirs = beta.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "collection": "beta",
            "session_id": session,
        },
    )
    assert theirs.status_code == 404


def test_a_key_never_sees_another_keys_collections(kettle, alpha, beta):
    assert beta.get("/v1/collections").json()["data"] == []
    assert [c["name"] for c in alpha.get("/v1/collections").json()["data"]] == ["alpha"]
    for method, path in [
        ("GET", "/v1/collections/alpha"),
        ("GET", "/v1/collections/alpha/files"),
        ("POST", "/v1/collections/alpha/ask"),
        ("DELETE", "/v1/collections/alpha/files/warranty.html"),
        ("GET", "/v1/collections/alpha/files/warranty.html/passage?start=0&end=5"),
    ]:
        body = {"question": "warranty?"} if method == "POST" else None
        response = beta.request(method, path, json=body)
        assert response.status_code == 404, path
        assert "alpha" in response.json()["error"]["message"]
    upload = beta.post("/v1/collections/alpha/files", files=[("files", ("x.txt", b"hello"))])
    assert upload.status_code == 404
    agent = beta.post(
        "/v1/agent/runs", json={"question": "warranty?", "tools": ["docs"], "collection": "alpha"}
    )
    assert agent.status_code == 404


def test_bad_uploads_are_refused_and_nothing_escapes_the_folder(server, alpha, tmp_path):
    def upload(name, content):
        return alpha.post("/v1/collections/shared/files", files=[("files", (name, content))])

    outside = tmp_path / "secret.txt"
    outside.write_text("untouched")
    cases = [
        ("../escape.txt", b"x", 400),
        ("/etc/passwd.txt", b"x", 400),
        ("..\\win.txt", b"x", 400),
        (".hidden.txt", b"x", 400),
        ("empty.txt", b"", 400),
        ("binary.txt", b"\x00\x01\x02\x03" * 100, 400),
        ("fake.pdf", b"not a pdf", 400),
        ("program.exe", b"MZ", 415),
        ("big.txt", b"a" * (2 * 2**20), 413),
    ]
    for name, content, status in cases:
        response = upload(name, content)
        assert response.status_code == status, (name, response.text)
        assert response.json()["error"]["message"]
    folder = server.data / "data" / "collections" / "shared"
    assert not (server.data / "data" / "collections" / "escape.txt").exists()
    os.symlink(outside, folder / "planted.txt")  # a link someone left in the folder
    assert upload("planted.txt", b"new text").status_code == 202
    assert outside.read_text() == "untouched"
    assert (
        not (folder / "planted.txt").is_symlink()
        and (folder / "planted.txt").read_text() == "new text"
    )
    os.symlink(outside, folder / "linked.txt")
    alpha.post(
        "/v1/collections/shared/files", files=[("files", ("ok.md", b"# Notes\n\nHello there."))]
    )
    state = wait_indexed(alpha, "shared")
    skipped = {s["file"]: s["reason"] for s in state["skipped"]}
    assert "linked.txt" in skipped and "link" in skipped["linked.txt"]
    assert not any(f["file"].startswith(".upload") for f in state["files"])
    assert len(os.listdir(folder)) == 3  # planted, linked, ok: no partial upload left behind


def test_deleting_a_file_takes_its_chunks_out_of_the_index(alpha, tmp_path):
    files = [
        ("files", ("bees.txt", b"Honey bees dance to tell the hive where flowers are.")),
        ("files", ("roses.txt", b"Roses need watering twice a week in summer.")),
    ]
    alpha.post("/v1/collections/shared/files", files=files)
    before = wait_indexed(alpha, "shared")["chunks"]
    answer = alpha.post(
        "/v1/collections/shared/ask", json={"question": "How do bees tell where flowers are?"}
    ).json()
    assert answer["citations"][0]["file"] == "bees.txt"
    deleted = alpha.delete("/v1/collections/shared/files/bees.txt")
    assert deleted.status_code == 200
    state = alpha.get("/v1/collections/shared").json()
    assert state["chunks"] == before - 1 and "bees.txt" not in {f["file"] for f in state["files"]}
    answer = alpha.post(
        "/v1/collections/shared/ask", json={"question": "How do bees tell where flowers are?"}
    ).json()
    assert all(c["file"] != "bees.txt" for c in answer["citations"])
    # deleted while the background indexer may still be reading it: it leaves the index
    # with the run that follows the deletion, never to come back from the run before it
    lines = "\n".join(f"Line {i}: the lighthouse keeper counts ships." for i in range(400))
    alpha.post(
        "/v1/collections/shared/files",
        files=[("files", ("ships.txt", lines.encode())), ("files", ("gulls.txt", b"Gulls."))],
    )
    assert alpha.delete("/v1/collections/shared/files/ships.txt").status_code == 200
    state = wait_indexed(alpha, "shared")
    files = {f["file"]: f for f in state["files"]}
    assert "ships.txt" not in files and files["gulls.txt"]["indexed"]
    assert state["chunks"] == before - 1 + files["gulls.txt"]["chunks"]
    assert alpha.delete("/v1/collections/shared/files/bees.txt").status_code == 404


def test_agent_runs_stream_their_steps(kettle, alpha):
    with alpha.stream(
        "POST", "/v1/agent/runs", json={"question": "What is 1234 * 5678?", "tools": ["calculator"]}
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    events = [
        (lines[i].removeprefix("event: "), json.loads(lines[i + 1][6:]))
        for i in range(len(lines) - 1)
        if lines[i].startswith("event: ")
    ]
    steps = [data for kind, data in events if kind == "step"]
    result = events[-1]
    assert steps[0]["tool"] == "calculator" and steps[0]["observation"] == "7006652"
    assert all({"thought", "tool", "tool_input", "observation", "seconds"} <= set(s) for s in steps)
    assert result[0] == "result" and result[1]["answer"] == "7006652"
    docs = alpha.post(
        "/v1/agent/runs",
        json={
            "question": "How long is the warranty?",
            "tools": ["docs"],
            "collection": "alpha",
            "stream": False,
            "max_steps": 2,
        },
    ).json()
    assert docs["steps"][0]["tool"] == "docs" and "warranty" in docs["steps"][0]["observation"]
    unknown = alpha.post("/v1/agent/runs", json={"question": "hi", "tools": ["rm_rf"]})
    assert unknown.status_code == 400 and "calculator" in unknown.json()["error"]["message"]


def test_tools_given_to_create_app_serve_agent_runs(server, tmp_path):
    from conftest import Served, free_port, serve_config
    from langchain_core.tools import tool

    from hearthlm.llm import ChatHearth
    from hearthlm.serve import create_app

    @tool
    def order_status(order_id: str) -> str:
        """The shipping status of an order, by its id (e.g. A-1042)."""
        return {"A-1042": "shipped on Monday"}.get(order_id, "unknown order")

    chat = ChatHearth.from_backend(server.state.models.base.engine)
    app = create_app(serve_config(tmp_path), tools=[order_status], chat=chat)
    with Served(app, free_port(), tmp_path) as own:
        listed = httpx.get(f"{own.url}/v1/server").json()["tools"]
        assert "order_status" in listed and "calculator" in listed
        result = httpx.post(
            f"{own.url}/v1/agent/runs",
            json={
                "question": "Where is my order A-1042?",
                "tools": ["order_status"],
                "stream": False,
            },
            timeout=120,
        ).json()
    assert result["steps"][0]["tool"] == "order_status"
    assert result["steps"][0]["observation"] == "shipped on Monday"


def test_a_tool_that_blocks_does_not_block_the_server(server, tmp_path):
    """An agent's tool runs on a worker thread: while it waits, the server answers others."""
    import threading

    from conftest import Served, free_port, serve_config
    from langchain_core.tools import tool

    from hearthlm.llm import ChatHearth
    from hearthlm.serve import create_app

    entered, release = threading.Event(), threading.Event()

    @tool
    def order_status(order_id: str) -> str:
        """The shipping status of an order, by its id (e.g. A-1042)."""
        entered.set()
        release.wait(timeout=60)  # a slow backend, held until the test has checked the server
        return "shipped on Monday"

    chat = ChatHearth.from_backend(server.state.models.base.engine)
    app = create_app(serve_config(tmp_path), tools=[order_status], chat=chat)
    with Served(app, free_port(), tmp_path) as own:
        run: dict = {}
        body = {"question": "Where is my order A-1042?", "tools": ["order_status"]}

        def agent() -> None:
            url = f"{own.url}/v1/agent/runs"
            run.update(httpx.post(url, json={**body, "stream": False}, timeout=120).json())

        worker = threading.Thread(target=agent)
        worker.start()
        try:
            assert entered.wait(timeout=120), "the agent never called its tool"
            for _ in range(5):
                start = time.perf_counter()
                assert httpx.get(f"{own.url}/health", timeout=5).json() == {"status": "ok"}
                assert time.perf_counter() - start < 1.0
            assert httpx.get(f"{own.url}/v1/server", timeout=5).status_code == 200
            assert not run  # all answered while the tool still waits
        finally:
            release.set()
            worker.join(timeout=120)
    assert run["steps"][0]["observation"] == "shipped on Monday"
