"""BM25 keyword search (bm25s), persisted beside the Chroma data and kept in step with it.

bm25s builds a static index, so hearthlm rebuilds it from the sidecar's chunk texts whenever an
index run changed them (a 5k-chunk corpus takes well under a second), and tags it with the
sidecar's version so a stale copy is never used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hearthlm.files import atomic_folder
from hearthlm.retrieval.store import SidecarStore


def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


class BM25Index:
    """BM25 keyword search over the sidecar's chunk texts, saved in ``folder``; ``rebuild``
    after an index run changed them, ``search`` loads the saved index on first use."""

    def __init__(self, folder: Path, store: SidecarStore) -> None:
        self.folder = folder
        self.store = store
        self._model: Any = None
        self._ids: list[str] = []
        self._position: dict[str, int] = {}
        self._version: str | None = None
        self._stem = _stemmer()

    def rebuild(self) -> None:
        """Write the index of every stored chunk, tagged with the store's version. Processes
        that rebuild at once (an index run and a server on one machine) take turns under a
        file lock beside the folder."""
        from filelock import FileLock

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.folder.with_name(f".{self.folder.name}.lock")):
            self._rebuild()

    def _rebuild(self) -> None:
        import bm25s

        # the version first: chunks written after it are then newer than the tag, and the next
        # search rebuilds; read after the corpus, it could tag an index that lacks them
        version = self.store.get_state("version") or "0"
        rows = list(self.store.corpus())
        ids, texts = zip(*rows, strict=True) if rows else ((), ())
        tokens = bm25s.tokenize(
            list(texts), stopwords="en", stemmer=self._stem, show_progress=False
        )
        with atomic_folder(self.folder) as staging:  # readers never see a half-written index
            # No keyword in any chunk (only symbols or stopwords): nothing to search, and bm25s
            # cannot build an index over an empty vocabulary.
            if tokens.vocab:
                model = bm25s.BM25()
                model.index(tokens, show_progress=False)
                model.save(str(staging / "model"))
                (staging / "ids.json").write_text(json.dumps(list(ids)), encoding="utf-8")
            (staging / "version").write_text(version, encoding="utf-8")
        self._model = None

    def _load(self) -> bool:
        import bm25s

        version = self.store.get_state("version") or "0"
        saved = self.folder / "version"
        if not saved.is_file() or saved.read_text(encoding="utf-8") != version:
            self.rebuild()
        if self._model is None or self._version != version:
            ids_file = self.folder / "ids.json"
            if not ids_file.is_file():
                self._model, self._ids = None, []
                self._version = version
                return False
            self._ids = json.loads(ids_file.read_text(encoding="utf-8"))
            self._position = {cid: i for i, cid in enumerate(self._ids)}
            self._model = bm25s.BM25.load(str(self.folder / "model"))
            self._version = version
        return self._model is not None

    def search(
        self, query: str, k: int, allowed: set[str] | None = None
    ) -> list[tuple[str, float]]:
        """Top ``k`` (chunk id, BM25 score) pairs with a positive score, among ``allowed``."""
        import bm25s

        if not self._load() or k < 1:
            return []
        tokens = bm25s.tokenize(
            [query], stopwords="en", stemmer=self._stem, show_progress=False, return_ids=False
        )
        vocab = self._model.vocab_dict
        tokens = [[t for t in tokens[0] if t in vocab]]
        if not tokens[0]:
            return []
        mask = None
        if allowed is not None:
            mask = np.zeros(len(self._ids), dtype=np.float32)
            mask[[self._position[i] for i in allowed if i in self._position]] = 1.0
        k = min(k, len(self._ids))
        docs, scores = self._model.retrieve(
            tokens, k=k, show_progress=False, weight_mask=mask, n_threads=1
        )
        return [
            (self._ids[int(d)], float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0
        ]
