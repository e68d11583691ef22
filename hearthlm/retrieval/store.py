"""The sidecar beside Chroma: which files are indexed (with their hash and chunk ids) and each
chunk's text, in SQLite. It is the manifest that makes indexing incremental and crash-safe, and the
corpus that BM25 is built from.

A file's row is written only after all its chunks are in Chroma, so a run killed half-way leaves
files without rows; the next run redoes them, re-embedding only chunks Chroma does not hold.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hearthlm.retrieval.splitter import Chunk

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    collection TEXT NOT NULL, source TEXT NOT NULL, file_hash TEXT NOT NULL,
    chunk_ids TEXT NOT NULL, PRIMARY KEY (collection, source));
CREATE TABLE IF NOT EXISTS chunks (
    collection TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, text TEXT NOT NULL,
    metadata TEXT NOT NULL, PRIMARY KEY (collection, id));
CREATE INDEX IF NOT EXISTS chunks_source ON chunks (collection, source);
CREATE TABLE IF NOT EXISTS state (
    collection TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (collection, key));
"""


class SidecarStore:
    """Manifest and chunk texts of one collection."""

    def __init__(self, path: Path, collection: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.collection = collection
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- files -------------------------------------------------------------------------------
    def files(self) -> dict[str, tuple[str, list[str]]]:
        rows = self.db.execute(
            "SELECT source, file_hash, chunk_ids FROM files WHERE collection = ?",
            (self.collection,),
        )
        return {source: (h, json.loads(ids)) for source, h, ids in rows}

    def set_file(self, source: str, file_hash: str, chunk_ids: list[str]) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                (self.collection, source, file_hash, json.dumps(chunk_ids)),
            )

    def drop_file(self, source: str) -> None:
        with self.db:
            self.db.execute(
                "DELETE FROM files WHERE collection = ? AND source = ?", (self.collection, source)
            )

    # -- chunks ------------------------------------------------------------------------------
    def add_chunks(self, chunks: Iterable[Chunk]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?)",
                [
                    (self.collection, c.id, c.metadata["source"], c.text, json.dumps(c.metadata))
                    for c in chunks
                ],
            )

    def delete_chunks(self, ids: Iterable[str]) -> None:
        with self.db:
            self.db.executemany(
                "DELETE FROM chunks WHERE collection = ? AND id = ?",
                [(self.collection, i) for i in ids],
            )

    def chunk_ids(self, source: str | None = None) -> set[str]:
        sql, args = "SELECT id FROM chunks WHERE collection = ?", [self.collection]
        if source is not None:
            sql, args = sql + " AND source = ?", [*args, source]
        return {row[0] for row in self.db.execute(sql, args)}

    def chunk_metadata(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {cid: json.loads(meta) for cid, _, meta in self._select(ids)}

    def corpus(self) -> Iterator[tuple[str, str]]:
        """(id, text) of every chunk, in a stable order."""
        yield from self.db.execute(
            "SELECT id, text FROM chunks WHERE collection = ? ORDER BY id", (self.collection,)
        )

    def get_chunks(self, ids: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        return {cid: (text, json.loads(meta)) for cid, text, meta in self._select(ids)}

    def _select(self, ids: list[str]) -> Iterator[tuple[str, str, str]]:
        for i in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
            batch = ids[i : i + 500]
            marks = ",".join("?" * len(batch))
            yield from self.db.execute(
                f"SELECT id, text, metadata FROM chunks WHERE collection = ? AND id IN ({marks})",
                [self.collection, *batch],
            )

    def count(self) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM chunks WHERE collection = ?", (self.collection,)
        )
        return int(row.fetchone()[0])

    # -- run state ---------------------------------------------------------------------------
    def get_state(self, key: str) -> str | None:
        row = self.db.execute(
            "SELECT value FROM state WHERE collection = ? AND key = ?", (self.collection, key)
        ).fetchone()
        return row[0] if row else None

    def set_state(self, key: str, value: str | None) -> None:
        with self.db:
            if value is None:
                self.db.execute(
                    "DELETE FROM state WHERE collection = ? AND key = ?", (self.collection, key)
                )
            else:
                self.db.execute(
                    "INSERT OR REPLACE INTO state VALUES (?, ?, ?)", (self.collection, key, value)
                )
