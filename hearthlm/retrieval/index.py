"""The document index: Chroma (embedded or a `chroma run` server) plus the BM25 and manifest
sidecars, updated incrementally.

Chunk ids are hashes of file and content, so re-indexing an unchanged folder embeds and writes
nothing, a changed file replaces only the chunks that changed, and a deleted file's chunks go.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hearthlm.config import RetrievalConfig
from hearthlm.errors import HearthError, RetrievalError
from hearthlm.progress import progress_bar
from hearthlm.retrieval.bm25 import BM25Index
from hearthlm.retrieval.embeddings import HearthEmbeddings
from hearthlm.retrieval.ingest import captured_warnings
from hearthlm.retrieval.loaders import walk
from hearthlm.retrieval.splitter import Chunk
from hearthlm.retrieval.store import Run, SidecarStore
from hearthlm.retrieval.work import FileRead, InProcess, Work

CHROMA_BATCH = 5000
STORE_SOURCE = "(index)"  # the source named for warnings raised outside any one file


@dataclass
class IndexReport:
    """What an index run did."""

    files_seen: int = 0
    files_indexed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    embedded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (path, library warning)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "warnings": [{"path": p, "message": m} for p, m in self.warnings],
        }


class DocumentIndex:
    """One Chroma collection with its sidecars.

    Example:
        >>> index = DocumentIndex(RetrievalConfig(path=Path("idx")))  # doctest: +SKIP
        >>> index.index_path(Path("docs")).chunks_added  # doctest: +SKIP
        42
    """

    def __init__(
        self,
        config: RetrievalConfig,
        embeddings: HearthEmbeddings | None = None,
        *,
        create: bool = True,
    ) -> None:
        """Open (with ``create``, or make) the collection ``config`` names.

        Raises:
            RetrievalError: the Chroma server cannot be reached; the collection was built with
                another embedder; without ``create``, there is no such collection (a reader
                with a mistyped name would otherwise make an empty one and find nothing).
        """
        import chromadb

        self.config = config
        self.embeddings = embeddings or HearthEmbeddings.from_config(config)
        settings = chromadb.Settings(anonymized_telemetry=False)
        if config.server:
            url = urlparse(config.server)
            if not url.hostname:
                raise RetrievalError(
                    f"retrieval.server {config.server!r} is not a URL; use http://host:port."
                )
            try:
                self.client = chromadb.HttpClient(
                    host=url.hostname,
                    port=url.port or 8000,
                    ssl=url.scheme == "https",
                    settings=settings,
                )
                self.client.heartbeat()
            except Exception as exc:  # chromadb raises transport-specific errors
                raise RetrievalError(
                    f"cannot reach the Chroma server at {config.server}: {exc}. Start it with "
                    "`chroma run --path DIR --port N`, or unset retrieval.server."
                ) from None
            state_dir = config.path / "servers" / f"{url.hostname}_{url.port or 8000}"
        else:
            config.path.mkdir(parents=True, exist_ok=True)
            self.client = chromadb.PersistentClient(path=str(config.path), settings=settings)
            state_dir = config.path
        if not create:
            names = sorted(c.name for c in self.client.list_collections())
            if config.collection not in names:
                where = config.server or config.path
                there = f" (collections there: {', '.join(names)})" if names else ""
                raise RetrievalError(
                    f"there is no collection {config.collection!r} at {where}{there}; index "
                    f"documents into it with `hearth index DIR --collection {config.collection}`."
                )
        self.collection = self.client.get_or_create_collection(
            config.collection,
            metadata={"embedding_model": self.embeddings.name},
            configuration={"hnsw": {"space": "cosine"}},
            embedding_function=None,
        )
        recorded = (self.collection.metadata or {}).get("embedding_model")
        if recorded != self.embeddings.name:
            raise RetrievalError(
                f"collection {config.collection!r} was built with embedder {recorded!r}, not "
                f"{self.embeddings.name!r}. Query it with the same embedder, or index into a new "
                "collection."
            )
        self.store = SidecarStore(config.state or state_dir / "hearth.sqlite", config.collection)
        self.bm25 = BM25Index(state_dir / "bm25" / config.collection, self.store)

    @property
    def count(self) -> int:
        return int(self.collection.count())

    # -- indexing ----------------------------------------------------------------------------

    def index_path(
        self,
        root: Path,
        progress: bool = True,
        observe: Observer | None = None,
        follow_links: bool = True,
        ray: str | bool | None = None,
    ) -> IndexReport:
        """Bring the index up to date with the files under ``root``.

        A file that cannot be loaded is skipped with its reason in the report, whatever it
        raises; library warnings go to ``report.warnings``, not to stderr. Only a failure of the
        store itself (Chroma, the sidecar, the disk) stops the run, as a :class:`RetrievalError`;
        files finished before it stay indexed and the next run completes the rest.

        Args:
            root: A file or a folder, walked recursively.
            progress: Show progress (a bar on a terminal, a line now and then in a log).
            observe: Called with ``(stage, done, total)`` as files are read (stage "files")
                and chunks embedded ("chunks"), for a caller that shows progress itself.
            follow_links: Index files that symbolic links under ``root`` point to; off, a
                link is skipped (a server's upload folder must not read outside itself).
            ray: Read, split and embed on Ray Data (``pip install 'hearthlm[scale]'``): True
                starts a local Ray, a string is the address of a Ray cluster ("auto",
                "ray://head:10001"). Chunks are written here, with the same crash safety.

        Raises:
            RetrievalError: ``root`` does not exist, or the store failed.
        """
        start = time.perf_counter()
        root = root.expanduser().resolve()
        if not root.exists():
            raise RetrievalError(f"nothing to index at {root}: no such file or folder.")
        report = IndexReport()
        try:
            with captured_warnings() as caught, self.store.begin_run() as run:
                if ray is None or ray is False:
                    work: Work = InProcess(self.config, self.embeddings)
                else:
                    from hearthlm.retrieval.ray_index import RayWork

                    address = None if ray is True else ray
                    work = RayWork(self.config, self.embeddings, address)
                with work:
                    self._index(root, report, _Progress(progress, observe), follow_links, run, work)
        except HearthError:
            raise
        except Exception as exc:  # Chroma, SQLite, the disk or the embedder: not one file
            raise RetrievalError(
                f"writing the index at {self.config.server or self.config.path} failed while "
                f"indexing {root}: {type(exc).__name__}: {str(exc).rstrip('.')}. Files finished "
                "before the failure stay indexed; fix the cause (disk space, permissions, the "
                "Chroma server) and run the same command again to complete the rest."
            ) from exc
        report.warnings.extend((STORE_SOURCE, message) for message in caught)
        report.seconds = time.perf_counter() - start
        return report

    def _index(
        self,
        root: Path,
        report: IndexReport,
        progress: _Progress,
        follow_links: bool,
        run: Run,
        work: Work,
    ) -> None:
        cfg = self.config
        changed = False
        interrupted, others_live = run.others()
        if interrupted and not others_live:
            # A run was killed: Chroma may hold chunks it never recorded. Only with no other run
            # going, since a live run's chunks are in Chroma a moment before they are recorded.
            self._reconcile()
            self.store.forget_runs(interrupted)
            changed = True  # and BM25 may predate the files it finished
        known = self.store.files()
        unreadable: list[tuple[Path, str]] = []
        files = list(
            walk(root, cfg.include, cfg.exclude, follow_links=follow_links, unreadable=unreadable)
        )
        for folder, reason in unreadable:
            report.skipped.append((str(folder), f"a folder that cannot be read ({reason}); "
                                   "the files indexed from it are kept"))  # fmt: skip
        if not follow_links:
            for link in [p for p in files if p.is_symlink()]:  # walk left out linked folders
                report.skipped.append((str(link), "a symbolic link; links are not followed"))
                files.remove(link)
        report.files_seen = len(files)
        present = {str(p) for p in files}
        # Files that were indexed from under this root and are gone now, and files an
        # interrupted run had begun (chunks stored, no file row) that are gone too; not while
        # another run is live, whose files are in that state until it records them.
        begun = set() if others_live else self.store.chunk_sources() - set(known)
        for source in sorted(set(known) | begun):
            if any(_under(source, folder) for folder, _ in unreadable):
                continue  # not seen, not gone
            if _under(source, root) and source not in present:
                report.chunks_removed += self._drop(source, known, begun)
                report.files_removed += source in known
                changed = True
        pending: list[tuple[str, str, list[Chunk]]] = []
        hashes = {path: known[str(path)][0] if str(path) in known else None for path in files}
        with progress.stage(len(files), "files") as advance:
            for read in work.read(hashes):
                changed |= self._take(read, known, begun, pending, report)
                advance()
        if pending:
            changed = True
            self._write(pending, known, report, progress, work)
        if changed:
            self.store.bump_version()
            self.bm25.rebuild()

    def _take(
        self,
        read: FileRead,
        known: dict[str, tuple[str, list[str]]],
        begun: set[str],
        pending: list[tuple[str, str, list[Chunk]]],
        report: IndexReport,
    ) -> bool:
        """Queue one file's chunks, or count it unchanged or skipped; True when the index lost
        a file's chunks."""
        source, outcome = read.source, read.outcome
        if outcome is None:
            if read.digest is None:
                report.skipped.append((source, read.unreadable or "unreadable"))
            else:
                report.files_unchanged += 1
            return False
        report.warnings.extend((source, message) for message in outcome.warnings)
        if outcome.skipped is None:
            assert read.digest is not None
            pending.append((source, read.digest, outcome.chunks))
            return False
        report.skipped.append((source, outcome.skipped))
        if source not in known and source not in begun:
            return False
        report.chunks_removed += self._drop(source, known, begun)  # unusable now
        return True

    def _write(
        self,
        pending: list[tuple[str, str, list[Chunk]]],
        known: dict[str, tuple[str, list[str]]],
        report: IndexReport,
        progress: _Progress,
        work: Work,
    ) -> None:
        """Embed and store new chunks wave by wave; finish each file once all its chunks are in."""
        stored = self.store.chunk_ids()
        todo: list[Chunk] = []
        for _, _, chunks in pending:
            todo.extend(c for c in chunks if c.id not in stored)
        # Chunks Chroma already holds (a run killed after Chroma's write) are not embedded again.
        in_chroma = self._existing([c.id for c in todo])
        recovered = [c for c in todo if c.id in in_chroma]
        self.store.add_chunks(recovered)
        todo = _dedupe([c for c in todo if c.id not in in_chroma])
        waiting = list(pending)
        done: set[str] = set(stored) | in_chroma
        with progress.stage(len(todo), "chunks") as advance:
            for wave, vectors in work.embed(todo, self.config.write_batch):
                self.collection.upsert(
                    ids=[c.id for c in wave],
                    embeddings=vectors,
                    documents=[c.text for c in wave],
                    metadatas=[c.metadata for c in wave],
                )
                self.store.add_chunks(wave)
                report.embedded += len(wave)
                done.update(c.id for c in wave)
                waiting = self._finish_files(waiting, done, known, report)
                advance(len(wave))
        self._finish_files(waiting, done, known, report)

    def _finish_files(
        self,
        waiting: list[tuple[str, str, list[Chunk]]],
        done: set[str],
        known: dict[str, tuple[str, list[str]]],
        report: IndexReport,
    ) -> list[tuple[str, str, list[Chunk]]]:
        still = []
        for source, digest, chunks in waiting:
            ids = [c.id for c in chunks]
            if not all(i in done for i in ids):
                still.append((source, digest, chunks))
                continue
            new = set(ids)
            previous = set(known.get(source, ("", []))[1])
            old = previous | self.store.chunk_ids(source)  # also chunks of an interrupted run
            report.chunks_removed += self._remove(sorted(old - new))
            report.chunks_added += len(new - previous)
            self._refresh_metadata(chunks)
            self.store.set_file(source, digest, ids)
            report.files_indexed += 1
        return still

    def _refresh_metadata(self, chunks: list[Chunk]) -> None:
        """Unchanged text can move within its file: update offsets without re-embedding."""
        current = self.store.chunk_metadata([c.id for c in chunks])
        moved = [c for c in chunks if current.get(c.id) != c.metadata]
        if moved:
            self.collection.update(ids=[c.id for c in moved], metadatas=[c.metadata for c in moved])
            self.store.add_chunks(moved)

    def _drop(self, source: str, known: dict[str, tuple[str, list[str]]], begun: set[str]) -> int:
        """Remove a file from the index: the chunks its row lists, or those an interrupted
        run stored under its name (``begun``), then its row; how many chunks went."""
        if source in known:
            removed = self._remove(known[source][1])
            self.store.drop_file(source)
            return removed
        return self._remove(sorted(self.store.chunk_ids(source))) if source in begun else 0

    def _remove(self, ids: list[str]) -> int:
        for batch in _batches(ids):
            self.collection.delete(ids=batch)
        self.store.delete_chunks(ids)
        return len(ids)

    def _existing(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for batch in _batches(ids):
            found.update(self.collection.get(ids=batch, include=[])["ids"])
        return found

    def _reconcile(self) -> None:
        """After an interrupted run: Chroma and the sidecar must hold the same chunks."""
        in_chroma = set(self.collection.get(include=[])["ids"])
        in_store = self.store.chunk_ids()
        for batch in _batches(sorted(in_chroma - in_store)):
            self.collection.delete(ids=batch)
        missing = in_store - in_chroma
        if missing:
            self.store.delete_chunks(missing)
            for source, (_, ids) in self.store.files().items():
                if missing & set(ids):
                    self.store.drop_file(source)  # re-indexed by this run

    def close(self) -> None:
        self.store.close()


Observer = Callable[[str, int, int], None]


class _Progress:
    """Progress shown on the terminal (or log), and told to an observer."""

    def __init__(self, show: bool, observe: Observer | None) -> None:
        self.show = show
        self.observe = observe

    @contextmanager
    def stage(self, total: int, label: str) -> Iterator[Callable[..., None]]:
        done = 0
        if self.observe:
            self.observe(label, 0, total)
        with progress_bar(self.show, total, label) as advance:

            def step(n: int = 1) -> None:
                nonlocal done
                done += n
                advance(n)
                if self.observe:
                    self.observe(label, done, total)

            yield step


def _batches(ids: list[str]) -> Iterator[list[str]]:
    """Slices Chroma accepts in one call (its limit is about 5,400 ids)."""
    for i in range(0, len(ids), CHROMA_BATCH):
        yield ids[i : i + CHROMA_BATCH]


def _dedupe(chunks: list[Chunk]) -> list[Chunk]:
    seen: dict[str, Chunk] = {}
    for chunk in chunks:
        seen.setdefault(chunk.id, chunk)
    return list(seen.values())


def _under(source: str, root: Path) -> bool:
    return source == str(root) or source.startswith(str(root) + os.sep)
