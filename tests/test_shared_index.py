"""One index shared by several machines: a real `chroma run` server holds the vectors, and the
manifest and chunk texts live in one database (an SQLite file, or a real PostgreSQL). Each
"machine" is a `hearth index` process with its own local folder, so that nothing but the server
and the database is shared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from retrieval_helpers import HEARTH
from sqlalchemy import create_engine, func, select

from hearthlm.config import RetrievalConfig
from hearthlm.retrieval import DocumentIndex, HybridRetriever
from hearthlm.retrieval.store import files_table, runs_table

pytestmark = pytest.mark.slow  # `hearth index` processes, servers

QUERIES = [
    "item 305 colour and weight",
    "history number 40",
    "Document 12 maker",
    "paragraph 7 describes item",
    "notes on the weight of item 1109",
]


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres"))
    return str(tmp_path / "shared" / "state.sqlite")


def _folder(root: Path, first: int, count: int) -> Path:
    root.mkdir(parents=True)
    for i in range(first, first + count):
        body = "\n\n".join(
            f"Document {i} paragraph {j} describes item {i * 100 + j} in detail, with notes on "
            f"its colour, weight, maker and history number {j * 7 + i}."
            for j in range(12)
        )
        (root / f"doc{i:02}.txt").write_text(body, encoding="utf-8")
    return root


def _machine(
    folder: Path, home: Path, server: str, state: str, collection: str, batch: int = 2048
) -> subprocess.Popen[str]:
    """`hearth index` as a machine with its own local index folder would run it."""
    env = {
        **os.environ,
        "HEARTH_RETRIEVAL__PATH": str(home),
        "HEARTH_RETRIEVAL__SERVER": server,
        "HEARTH_RETRIEVAL__STATE": state,
        "HEARTH_RETRIEVAL__COLLECTION": collection,
        "HEARTH_RETRIEVAL__WRITE_BATCH": str(batch),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.Popen(
        [HEARTH, "index", str(folder), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _report(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return dict(json.loads(out))


def _ranked(index: DocumentIndex, mode: str = "hybrid") -> list[list[str]]:
    retriever = HybridRetriever.from_index(index, mode=mode, k=5)
    return [[hit.id for hit in retriever.search(q)] for q in QUERIES]


def test_machines_indexing_at_once_end_with_the_union_and_share_hybrid_search(
    chroma_server, state, embeddings, tmp_path: Path
):
    left = _folder(tmp_path / "left", 0, 12)
    right = _folder(tmp_path / "right", 20, 12)
    collection = f"shared-{uuid.uuid4().hex[:8]}"

    def machine(name: str, folder: Path) -> subprocess.Popen[str]:
        return _machine(folder, tmp_path / name, chroma_server, state, collection)

    # Two machines on disjoint folders and a third on the same folder as the first, all at once.
    runs = [machine("a", left), machine("b", right), machine("c", left)]
    reports = [_report(proc) for proc in runs]
    assert [r["files_indexed"] for r in reports] == [12, 12, 12]

    reference = DocumentIndex(
        RetrievalConfig(
            path=tmp_path / "alone", server=chroma_server, collection=f"{collection}-1"
        ),
        embeddings,
    )
    for folder in (left, right):
        reference.index_path(folder, progress=False)
    expected = set(reference.collection.get(include=[])["ids"])

    # A machine that never indexed: its own empty folder, the shared server and state.
    config = RetrievalConfig(
        path=tmp_path / "query", server=chroma_server, state=state, collection=collection
    )
    reader = DocumentIndex(config, embeddings)
    ids = reader.collection.get(include=[])["ids"]
    assert len(ids) == len(set(ids)) == reader.store.count() == len(expected)  # one copy each
    assert set(ids) == expected == reader.store.chunk_ids()
    assert {Path(s).parent for s in reader.store.files()} == {left, right}
    assert _ranked(reader) == _ranked(reference)  # the keyword half was rebuilt, not lost
    assert all(_ranked(reader))
    assert list((tmp_path / "query").glob(f"servers/*/bm25/{collection}/ids.json"))  # cached

    again = _report(machine("b", right))
    assert (again["embedded"], again["chunks_added"], again["files_unchanged"]) == (0, 0, 12)
    with create_engine(state if "://" in state else f"sqlite:///{state}").connect() as db:
        live = db.scalar(
            select(func.count())
            .select_from(runs_table)
            .where(runs_table.c.collection == collection)
        )
    assert live == 0  # every run finished and said so


def test_a_run_killed_on_one_machine_is_completed_by_another(
    chroma_server, state, embeddings, tmp_path: Path
):
    folder = _folder(tmp_path / "docs", 0, 30)
    collection = f"killed-{uuid.uuid4().hex[:8]}"
    proc = _machine(folder, tmp_path / "a", chroma_server, state, collection, batch=16)
    engine = create_engine(state if "://" in state else f"sqlite:///{state}")
    recorded = select(func.count()).select_from(files_table)
    recorded = recorded.where(files_table.c.collection == collection)
    deadline = time.monotonic() + 240
    done = 0
    while time.monotonic() < deadline and proc.poll() is None and done < 3:
        try:
            with engine.connect() as db:
                done = db.scalar(recorded) or 0
        except Exception:  # the tables are not made yet
            done = 0
        time.sleep(0.05)
    assert proc.poll() is None, "indexing finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    other = DocumentIndex(
        RetrievalConfig(
            path=tmp_path / "b", server=chroma_server, state=state, collection=collection
        ),
        embeddings,
    )
    before = other.count
    assert before > 0
    report = other.index_path(folder, progress=False)
    assert report.embedded <= other.count - before + 16  # at most one batch redone
    ids = other.collection.get(include=[])["ids"]
    reference = DocumentIndex(
        RetrievalConfig(path=tmp_path / "ref", server=chroma_server, collection=f"{collection}-1"),
        embeddings,
    )
    reference.index_path(folder, progress=False)
    assert len(ids) == len(set(ids)) == other.store.count()
    assert set(ids) == set(reference.collection.get(include=[])["ids"])
    assert other.store.runs() == []  # the killed run was found and forgotten
    assert other.index_path(folder, progress=False).embedded == 0
    # Keyword search over the shared texts is the same. (Dense ranks can differ in near ties:
    # a vector embedded in a batch of 16 differs from one embedded in a batch of 360 by ~1e-7.)
    assert _ranked(other, "bm25") == _ranked(reference, "bm25")
