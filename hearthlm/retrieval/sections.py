"""What loading a file produces (sections), what limits it, and how it refuses a file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Section:
    """A piece of a file that splits on its own: a page, a markdown section, a JSON record."""

    text: str
    offset: int = 0  # character offset of ``text`` in the file's extracted text
    page: int | None = None
    heading: str = ""
    record: str | None = None  # a JSON record's id or line number
    encoding: str | None = None  # how a text-like file was decoded ("utf-8", "cp1252", …)


class LoadError(Exception):
    """Raised inside a loader; becomes a skipped-file entry, with this message as its reason."""


@dataclass
class LoaderOptions:
    """Which JSON fields hold text, and what one file may cost.

    Attributes:
        json_text_fields: Fields of a JSON record joined into its text.
        json_id_field: Field of a JSON record with its id (else its position).
        max_file_bytes: Larger files are skipped without being read.
        max_pdf_pages: PDFs with more pages are skipped.
        max_json_depth: JSON nested deeper is skipped (Python's parser would recurse past its
            limit on pathological files).
    """

    json_text_fields: Sequence[str] = ("text",)
    json_id_field: str | None = None
    max_file_bytes: int = 100 * 2**20
    max_pdf_pages: int = 2000
    max_json_depth: int = 100
