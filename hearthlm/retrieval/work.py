"""Where an index run reads files and embeds chunks: in this process, or on Ray Data
(:mod:`hearthlm.retrieval.ray_index`). The index writes what comes back; nothing here touches
the store, so any worker can run it."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearthlm.config import RetrievalConfig
from hearthlm.retrieval.embeddings import HearthEmbeddings
from hearthlm.retrieval.ingest import Ingested, ingest_file
from hearthlm.retrieval.loaders import LoaderOptions, LoadError, check_size
from hearthlm.retrieval.splitter import Chunk, TokenSplitter


@dataclass
class FileRead:
    """One file hashed, loaded and split: its ``outcome`` (chunks, or why it was skipped);
    ``None`` when it is unchanged (``digest`` set) or could not be read (``unreadable``)."""

    source: str
    digest: str | None
    outcome: Ingested | None = None
    unreadable: str | None = None


def read_file(
    path: Path, known_hash: str | None, splitter: TokenSplitter, options: LoaderOptions
) -> FileRead:
    """Hash, load and split one file, touching no store: it runs on any worker."""
    source = str(path)
    try:
        check_size(path, options)  # before hashing: a huge file is not even read
        digest = _file_hash(path)
    except LoadError as exc:
        return FileRead(source, None, Ingested(skipped=str(exc)))
    except OSError as exc:
        return FileRead(source, None, unreadable=f"unreadable: {exc.strerror or exc}")
    if digest == known_hash:
        return FileRead(source, digest)
    return FileRead(source, digest, ingest_file(path, splitter, options))


class Work(ABC):
    """Where an index run reads files and embeds chunks; the index writes what comes back.
    A context manager, so that what it starts (a local Ray) stops with the run."""

    def __init__(self, cfg: RetrievalConfig, embeddings: HearthEmbeddings) -> None:
        self.embeddings = embeddings
        self.splitter = TokenSplitter(
            embeddings.tokenizer,
            min(cfg.chunk_tokens or embeddings.max_tokens, embeddings.max_tokens),
            cfg.chunk_overlap,
        )
        self.options = LoaderOptions(
            cfg.json_text_fields,
            cfg.json_id_field,
            max_file_bytes=int(cfg.max_file_mb * 2**20),
            max_pdf_pages=cfg.max_pdf_pages,
        )

    def __enter__(self) -> Work:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @abstractmethod
    def read(self, hashes: dict[Path, str | None]) -> Iterator[FileRead]:
        """Each file read (given the hash it was indexed with, if any), as they finish."""

    @abstractmethod
    def embed(self, chunks: list[Chunk], wave: int) -> Iterator[tuple[list[Chunk], Any]]:
        """The chunks in waves of at most ``wave``, each with its vectors."""


class InProcess(Work):
    """Files read one by one and chunks embedded in this process."""

    def read(self, hashes: dict[Path, str | None]) -> Iterator[FileRead]:
        for path, known_hash in hashes.items():
            yield read_file(path, known_hash, self.splitter, self.options)

    def embed(self, chunks: list[Chunk], wave: int) -> Iterator[tuple[list[Chunk], Any]]:
        for i in range(0, len(chunks), wave):
            batch = chunks[i : i + wave]
            yield batch, self.embeddings.encode([c.text for c in batch])


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
