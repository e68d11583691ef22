"""The index's shared state: which files are indexed (with their hash and chunk ids), each chunk's
text, the runs in progress and a version counter, in any SQL database SQLAlchemy reaches. It is
the manifest that makes indexing incremental and crash-safe, and the corpus that BM25 is built
from.

By default it is an SQLite file beside the index. A team that indexes into one `chroma run`
server from several machines names one database for all of them (``retrieval.state``,
PostgreSQL for a team): every machine then sees the same manifest, and any machine that queries
rebuilds the same BM25 index from the same chunk texts.

A file's row is written only after all its chunks are in Chroma, so a run killed half-way leaves
files without rows; the next run (on any machine) redoes them, re-embedding only chunks Chroma
does not hold. Each run is recorded while it lives, with a heartbeat, so that a run can tell an
interrupted run (whose leftovers it may clean up) from one still going on another machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    cast,
    create_engine,
    delete,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from hearthlm.errors import RetrievalError
from hearthlm.retrieval.splitter import Chunk

HEARTBEAT_SECONDS = 10.0  # how often a live run says so
STALE_SECONDS = 60.0  # a run silent this long is taken for dead
SELECT_BATCH = 500  # ids per IN (...): SQLite caps the bound parameters of one statement

metadata = MetaData()
files_table = Table(
    "files",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("source", Text, primary_key=True),
    Column("file_hash", Text, nullable=False),
    Column("chunk_ids", Text, nullable=False),
)
chunks_table = Table(
    "chunks",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("id", String(255), primary_key=True),
    Column("source", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("metadata", Text, nullable=False),
    Index("chunks_source", "collection", "source"),
)
state_table = Table(
    "state",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
)
runs_table = Table(
    "runs",
    metadata,
    Column("collection", String(255), primary_key=True),
    Column("run_id", String(64), primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("heartbeat", Float, nullable=False),
    Column("failed", Integer, nullable=False, default=0),
)
DIALECTS = ("sqlite", "postgresql")  # those with an upsert statement SQLAlchemy writes


def state_url(state: Path | str) -> str:
    """The SQLAlchemy URL of ``state``: a string with ``://`` is used as it is (PostgreSQL,
    MySQL, any database SQLAlchemy reaches); a path is an SQLite file, its folder made."""
    if isinstance(state, str) and "://" in state:
        return state
    path = Path(state).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    # Several processes may write one SQLite file: wait for its lock instead of failing at once.
    engine = create_engine(url, connect_args={"timeout": 120, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _wal(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


class SidecarStore:
    """Manifest, chunk texts and runs of one collection, in the database at ``url`` (or an
    SQLite file at a path).

    Example:
        >>> store = SidecarStore("postgresql+psycopg://hearth@db/hearth", "docs")  # doctest: +SKIP
        >>> len(store.files())  # doctest: +SKIP
        12
    """

    def __init__(self, url: Path | str, collection: str) -> None:
        self.url = state_url(url)
        self.collection = collection
        self.engine = _engine(self.url)
        if self.engine.dialect.name not in DIALECTS:
            raise RetrievalError(
                f"retrieval.state {self.engine.url!r} is a {self.engine.dialect.name} database; "
                "the index state lives in SQLite or PostgreSQL (postgresql+psycopg://...)."
            )
        self._create_tables()

    def _create_tables(self) -> None:
        """Make the tables that are missing. Machines starting at once race to make them: the
        loser's CREATE fails on a table the winner just made, and its next look finds it."""
        for attempt in range(5):
            try:
                metadata.create_all(self.engine)
                return
            except DBAPIError:
                if attempt == 4:
                    raise
                time.sleep(0.1 * (attempt + 1))

    def close(self) -> None:
        self.engine.dispose()

    def _where(self, table: Table) -> Any:
        return table.c.collection == self.collection

    def _insert(self, table: Table) -> Any:
        """This database's INSERT, with its ON CONFLICT clauses."""
        from sqlalchemy.dialects import postgresql, sqlite

        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        return dialect.insert(table)

    def _upsert(self, db: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows``, replacing those with the same primary key, in one statement."""
        if not rows:
            return
        keys = [c.name for c in table.primary_key.columns]
        statement = self._insert(table)
        values = {c.name: statement.excluded[c.name] for c in table.c if c.name not in keys}
        db.execute(statement.on_conflict_do_update(index_elements=keys, set_=values), rows)

    # -- files -------------------------------------------------------------------------------
    def files(self) -> dict[str, tuple[str, list[str]]]:
        t = files_table
        with self.engine.connect() as db:
            rows = db.execute(
                select(t.c.source, t.c.file_hash, t.c.chunk_ids).where(self._where(t))
            )
            return {source: (h, json.loads(ids)) for source, h, ids in rows}

    def set_file(self, source: str, file_hash: str, chunk_ids: list[str]) -> None:
        row = {
            "collection": self.collection,
            "source": source,
            "file_hash": file_hash,
            "chunk_ids": json.dumps(chunk_ids),
        }
        with self.engine.begin() as db:
            self._upsert(db, files_table, [row])

    def drop_file(self, source: str) -> None:
        t = files_table
        with self.engine.begin() as db:
            db.execute(delete(t).where(self._where(t), t.c.source == source))

    # -- chunks ------------------------------------------------------------------------------
    def add_chunks(self, chunks: Iterable[Chunk]) -> None:
        rows = [
            {
                "collection": self.collection,
                "id": c.id,
                "source": c.metadata["source"],
                "text": c.text,
                "metadata": json.dumps(c.metadata),
            }
            for c in chunks
        ]
        with self.engine.begin() as db:
            self._upsert(db, chunks_table, rows)

    def delete_chunks(self, ids: Iterable[str]) -> None:
        t = chunks_table
        ids = list(ids)
        with self.engine.begin() as db:
            for i in range(0, len(ids), SELECT_BATCH):
                db.execute(delete(t).where(self._where(t), t.c.id.in_(ids[i : i + SELECT_BATCH])))

    def chunk_ids(self, source: str | None = None) -> set[str]:
        t = chunks_table
        query = select(t.c.id).where(self._where(t))
        if source is not None:
            query = query.where(t.c.source == source)
        with self.engine.connect() as db:
            return set(db.scalars(query))

    def chunk_sources(self) -> set[str]:
        """The sources that have chunks stored, with a file row or not (a file an interrupted
        run had begun)."""
        t = chunks_table
        with self.engine.connect() as db:
            return set(db.scalars(select(t.c.source).where(self._where(t)).distinct()))

    def chunk_metadata(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {cid: json.loads(meta) for cid, _, meta in self._select(ids)}

    def corpus(self) -> Iterator[tuple[str, str]]:
        """(id, text) of every chunk, in a stable order."""
        t = chunks_table
        with self.engine.connect() as db:
            rows = db.execution_options(yield_per=10_000).execute(
                select(t.c.id, t.c.text).where(self._where(t)).order_by(t.c.id)
            )
            yield from rows.tuples()

    def get_chunks(self, ids: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        return {cid: (text, json.loads(meta)) for cid, text, meta in self._select(ids)}

    def _select(self, ids: list[str]) -> Iterator[tuple[str, str, str]]:
        t = chunks_table
        with self.engine.connect() as db:
            for i in range(0, len(ids), SELECT_BATCH):
                query = select(t.c.id, t.c.text, t.c.metadata).where(
                    self._where(t), t.c.id.in_(ids[i : i + SELECT_BATCH])
                )
                yield from db.execute(query).tuples()

    def count(self) -> int:
        t = chunks_table
        with self.engine.connect() as db:
            return int(db.scalar(select(func.count()).select_from(t).where(self._where(t))) or 0)

    # -- state -------------------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        t = state_table
        with self.engine.connect() as db:
            return db.scalar(select(t.c.value).where(self._where(t), t.c.key == key))

    def set_state(self, key: str, value: str | None) -> None:
        t = state_table
        with self.engine.begin() as db:
            if value is None:
                db.execute(delete(t).where(self._where(t), t.c.key == key))
            else:
                row = {"collection": self.collection, "key": key, "value": value}
                self._upsert(db, t, [row])

    def bump_version(self) -> str:
        """Count one change of the chunk texts, atomically: every machine's cached BM25 built
        under an older count is rebuilt before it is used again. Returns the new count."""
        t = state_table
        where = and_(self._where(t), t.c.key == "version")
        with self.engine.begin() as db:
            first = {"collection": self.collection, "key": "version", "value": "0"}
            db.execute(self._insert(t).on_conflict_do_nothing(), [first])
            db.execute(
                update(t).where(where).values(value=cast(cast(t.c.value, Integer) + 1, Text))
            )
            return str(db.scalar(select(t.c.value).where(where)))

    # -- runs --------------------------------------------------------------------------------
    def begin_run(self) -> Run:
        """Record a run of this process as live, while the returned :class:`Run`'s ``with``
        block lasts; it beats on a thread."""
        return Run(self)

    def runs(self) -> list[dict[str, Any]]:
        t = runs_table
        with self.engine.connect() as db:
            return [dict(row._mapping) for row in db.execute(select(t).where(self._where(t)))]

    def forget_runs(self, run_ids: Iterable[str]) -> None:
        t = runs_table
        with self.engine.begin() as db:
            db.execute(delete(t).where(self._where(t), t.c.run_id.in_(list(run_ids))))


def _alive(run: dict[str, Any], now: float) -> bool:
    """Whether a recorded run is still going: not failed, beating, and (on this host) its
    process exists."""
    if run["failed"] or now - run["heartbeat"] > STALE_SECONDS:
        return False
    if run["host"] == socket.gethostname():
        try:
            os.kill(run["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
    return True


class Run:
    """One live index run in the shared state: a row with a heartbeat that a daemon thread keeps
    fresh, used as a context manager: removed when the block ends, marked failed when it raises.
    A run killed outright leaves its row, which goes stale, so another run knows it was
    interrupted."""

    def __init__(self, store: SidecarStore) -> None:
        self.store = store
        self.id = uuid.uuid4().hex
        now = time.time()
        row = {
            "collection": store.collection,
            "run_id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": now,
            "heartbeat": now,
            "failed": 0,
        }
        with store.engine.begin() as db:
            db.execute(runs_table.insert(), [row])
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._beating, name="hearth-index-run", daemon=True)
        self._beat.start()

    def _beating(self) -> None:
        t = runs_table
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with self.store.engine.begin() as db:
                    db.execute(update(t).where(t.c.run_id == self.id).values(heartbeat=time.time()))
            except Exception:  # the database is away for a moment: the next beat tries again
                continue

    def others(self) -> tuple[list[str], bool]:
        """The ids of interrupted runs, and whether any other run is still going."""
        now = time.time()
        interrupted, live = [], False
        for run in self.store.runs():
            if run["run_id"] == self.id:
                continue
            if _alive(run, now):
                live = True
            else:
                interrupted.append(run["run_id"])
        return interrupted, live

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._stop.set()
        self._beat.join()
        if kind is None:
            self.store.forget_runs([self.id])
            return
        # Stopped by an error or an interrupt: marked failed, so that the next run (on any
        # machine) cleans up after it at once. If the database itself failed, the row goes
        # stale instead.
        with contextlib.suppress(Exception):
            t = runs_table
            with self.store.engine.begin() as db:
                db.execute(update(t).where(t.c.run_id == self.id).values(failed=1))
