"""One file in, chunks or the reason it was skipped out: no single file can stop a run.

Loading and splitting touch nothing but the file, so whatever they raise belongs to that file:
a :class:`LoadError` with its reason, and equally a RecursionError, a MemoryError or any
exception from a third-party parser on a pathological file. Each becomes a skipped file.

Third-party warnings raised meanwhile (pypdf's "EOF marker not found", BeautifulSoup's
guesses) are captured per file, from Python's ``warnings`` and from the libraries' loggers,
and reported in the run summary instead of being written to stderr.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hearthlm.retrieval.loaders import load_file
from hearthlm.retrieval.sections import LoaderOptions, LoadError
from hearthlm.retrieval.splitter import Chunk, TokenSplitter

# Loggers of the libraries that run while loading and writing; their records are captured.
LIBRARY_LOGGERS = ("pypdf", "bs4", "chardet", "chromadb")
MAX_WARNINGS = 5  # distinct messages kept per file; the rest are counted


@dataclass
class Ingested:
    """What became of one file: its chunks, or the reason it was skipped."""

    chunks: list[Chunk] = field(default_factory=list)
    skipped: str | None = None
    warnings: list[str] = field(default_factory=list)


def ingest_file(path: Path, splitter: TokenSplitter, options: LoaderOptions) -> Ingested:
    """Load and split ``path``; never raises for anything the file itself causes.

    Example:
        >>> ingest_file(Path("deep.json"), splitter, LoaderOptions()).skipped  # doctest: +SKIP
        'JSON nested 100000 levels deep, over the limit of 100'
    """
    with captured_warnings() as caught:
        try:
            chunks = splitter.split(str(path), load_file(path, options))
            outcome = Ingested(chunks)
        except LoadError as exc:
            outcome = Ingested(skipped=str(exc))
        except RecursionError:
            outcome = Ingested(skipped="too deeply nested for the parser (recursion limit)")
        except MemoryError:
            outcome = Ingested(skipped="ran out of memory while loading; split the file")
        except Exception as exc:  # a third-party parser failing on this file, and only on it
            outcome = Ingested(skipped=f"{path.suffix or 'file'} parser failed: {_describe(exc)}")
    outcome.warnings = caught
    return outcome


@contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Collect Python warnings and library log records (WARNING and up) into a list.

    The libraries' loggers stop propagating meanwhile, so nothing reaches stderr or the root
    logger; their previous settings are restored afterwards.
    """
    caught: list[str] = []
    handler = _ListHandler(caught)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        # An enclosing capture (the whole run's) pauses, so each record is kept once.
        for outer in [h for h in lg.handlers if isinstance(h, _ListHandler)]:
            lg.removeHandler(outer)
        lg.addHandler(handler)
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            # Deprecations speak to developers of the library, not to someone indexing files.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            yield caught
        caught.extend(f"{w.category.__name__}: {w.message}" for w in recorded)
    finally:
        for lg, (propagate, handlers) in zip(loggers, saved, strict=True):
            lg.handlers[:] = handlers
            lg.propagate = propagate
        caught[:] = _summarize(caught)


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.append(f"{record.name}: {record.getMessage()}")
        except Exception:  # a malformed record must not become a failure of its own
            self.sink.append(f"{record.name}: {record.msg!r}")


def _summarize(messages: list[str]) -> list[str]:
    distinct = list(dict.fromkeys(messages))
    kept = distinct[:MAX_WARNINGS]
    if len(messages) > len(kept):
        kept.append(f"… and {len(messages) - len(kept)} more warnings")
    return kept


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
