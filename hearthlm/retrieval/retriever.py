"""Search: dense (Chroma), keyword (BM25) and hybrid by weighted fusion, with MMR, metadata
filters, a source glob, and a similarity threshold.

Hybrid search fuses the two rankings either by weighted reciprocal-rank fusion (``rrf``: each list
adds ``w / (60 + rank)``) or by score fusion (``score``: each list's scores are min-max normalised
over its candidates and combined with convex weights). ``dense_weight`` is the dense list's
weight; BM25 gets ``1 - dense_weight``. The defaults are the measured best of
``benchmarks/bench_retrieval.py`` on SciFact and HotpotQA (see the README).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from pydantic import ConfigDict, Field

from hearthlm.retrieval.index import DocumentIndex

RRF_K = 60  # the constant from Cormack et al. (2009); robust across corpora
Fusion = Literal["rrf", "score"]


@dataclass
class Hit:
    """One retrieved chunk and why it was chosen."""

    id: str
    text: str
    metadata: dict[str, Any]
    score: float  # fused score (hybrid), cosine similarity (dense) or BM25 score
    similarity: float | None = None  # cosine similarity to the query
    bm25: float | None = None

    def to_document(self) -> Document:
        meta = {**self.metadata, "id": self.id, "score": self.score, "similarity": self.similarity}
        return Document(page_content=self.text, metadata=meta, id=self.id)


@dataclass
class Source:
    """A chunk given to the model, numbered as in the prompt."""

    number: int
    path: str
    page: int | None
    heading: str
    snippet: str
    chunk_id: str
    similarity: float | None
    start: int = 0  # character offset of the snippet in the file's extracted text

    @classmethod
    def from_hit(cls, number: int, hit: Hit) -> Source:
        meta = hit.metadata
        return cls(
            number=number,
            path=str(meta.get("source", "")),
            page=meta.get("page"),
            heading=str(meta.get("heading", "")),
            snippet=hit.text,
            chunk_id=hit.id,
            similarity=hit.similarity,
            start=int(meta.get("start", 0)),
        )

    def label(self) -> str:
        where = Path(self.path).name
        if self.page is not None:
            where += f", page {self.page}"
        if self.heading:
            where += f", {self.heading}"
        return where


class HybridRetriever(BaseRetriever):
    """A LangChain retriever over a :class:`DocumentIndex`.

    Example:
        >>> retriever = HybridRetriever(index=index, k=4)  # doctest: +SKIP
        >>> [h.metadata["source"] for h in retriever.search("install on linux")]  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: DocumentIndex
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    fusion: Fusion = "score"
    dense_weight: float = Field(0.4, ge=0.0, le=1.0)
    k: int = 4
    fetch_k: int = 40
    mmr: bool = False
    mmr_lambda: float = 0.5
    where: dict[str, Any] | None = None
    source_glob: str | None = None
    score_threshold: float | None = None

    @classmethod
    def from_index(cls, index: DocumentIndex, **overrides: Any) -> HybridRetriever:
        cfg = index.config
        values: dict[str, Any] = {
            "mode": cfg.search,
            "fusion": cfg.fusion,
            "dense_weight": cfg.dense_weight,
            "k": cfg.k,
            "fetch_k": cfg.fetch_k,
            "mmr": cfg.mmr,
            "mmr_lambda": cfg.mmr_lambda,
            "score_threshold": cfg.score_threshold,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(index=index, **values)

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        """``retriever.invoke(query, k=3)`` overrides ``k`` for one call."""
        return [hit.to_document() for hit in self.search(query, k=k)]

    def search(self, query: str, k: int | None = None) -> list[Hit]:
        """The best ``k`` chunks for ``query``, best first."""
        k = k or self.k
        fetch = max(self.fetch_k, k)
        where = self._where()
        if where == {"source": {"$in": []}}:
            return []  # the glob matches no indexed file
        # Every hit gets its cosine similarity, BM25 hits too: thresholds, MMR and the answer
        # chain's "I don't know" all read it.
        query_vector = np.asarray(self.index.embeddings.embed_query(query), dtype=np.float32)
        dense: list[tuple[str, float]] = []
        if self.mode in ("dense", "hybrid"):
            dense = self._dense(query_vector, fetch, where)
        keyword: list[tuple[str, float]] = []
        if self.mode in ("bm25", "hybrid"):
            allowed = self._allowed(where)
            keyword = self.index.bm25.search(query, fetch, allowed)
        if self.mode == "dense":
            ranked = dense
        elif self.mode == "bm25":
            ranked = keyword
        else:
            ranked = fuse(dense, keyword, self.fusion, self.dense_weight)
        if not ranked:
            return []
        # MMR and the threshold choose among all candidates; otherwise the best k suffice.
        keep = fetch if self.mmr or self.score_threshold is not None else k
        candidates = ranked[:keep]
        hits = self._hits(candidates, dict(dense), dict(keyword), query_vector)
        if self.score_threshold is not None:
            threshold = self.score_threshold
            hits = [h for h in hits if h.similarity is not None and h.similarity >= threshold]
        if self.mmr and hits:
            vectors = self._vectors([h.id for h in hits])
            order = maximal_marginal_relevance(
                query_vector, [vectors[h.id] for h in hits], lambda_mult=self.mmr_lambda, k=k
            )
            hits = [hits[i] for i in order]
        return hits[:k]

    def _where(self) -> dict[str, Any] | None:
        clauses = [self.where] if self.where else []
        if self.source_glob:
            sources = [s for s in self.index.store.files() if fnmatch.fnmatch(s, self.source_glob)]
            clauses.append({"source": {"$in": sources}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}

    def _allowed(self, where: dict[str, Any] | None) -> set[str] | None:
        if where is None:
            return None
        return set(self.index.collection.get(where=where, include=[])["ids"])

    def _dense(self, vector: Any, n: int, where: dict[str, Any] | None) -> list[tuple[str, float]]:
        n = min(n, self.index.count)
        if n < 1:
            return []
        result = self.index.collection.query(
            query_embeddings=[vector], n_results=n, where=where, include=["distances"]
        )
        distances = result["distances"] or [[]]
        return [
            (cid, 1.0 - float(d)) for cid, d in zip(result["ids"][0], distances[0], strict=True)
        ]

    def _vectors(self, ids: list[str]) -> dict[str, Any]:
        got = self.index.collection.get(ids=ids, include=["embeddings"])
        vectors: Any = got["embeddings"] if got["embeddings"] is not None else []
        return {
            cid: np.asarray(v, dtype=np.float32) for cid, v in zip(got["ids"], vectors, strict=True)
        }

    def _hits(
        self,
        ranked: list[tuple[str, float]],
        dense: dict[str, float],
        keyword: dict[str, float],
        query_vector: Any,
    ) -> list[Hit]:
        ids = [cid for cid, _ in ranked]
        chunks = self.index.store.get_chunks(ids)
        missing = [cid for cid in ids if cid not in dense]
        if missing:
            # BM25-only hits: their similarity decides thresholds and "I don't know".
            for cid, vec in self._vectors(missing).items():
                dense[cid] = float(np.dot(vec, query_vector))
        hits = []
        for cid, score in ranked:
            if cid not in chunks:
                continue
            text, meta = chunks[cid]
            hits.append(Hit(cid, text, meta, score, dense.get(cid), keyword.get(cid)))
        return hits


def fuse(
    dense: list[tuple[str, float]],
    keyword: list[tuple[str, float]],
    method: Fusion = "rrf",
    dense_weight: float = 0.5,
) -> list[tuple[str, float]]:
    """One ranking from a dense and a keyword ranking (each best first), best first.

    ``rrf`` adds ``weight / (60 + rank)`` per list; ``score`` adds ``weight * normalised score``,
    each list min-max normalised over its own candidates (an id a list did not return gets 0).
    """
    fused: dict[str, float] = {}
    for ranking, weight in ((dense, dense_weight), (keyword, 1.0 - dense_weight)):
        if method == "rrf":
            for rank, (cid, _) in enumerate(ranking, start=1):
                fused[cid] = fused.get(cid, 0.0) + weight / (RRF_K + rank)
            continue
        scores = [score for _, score in ranking]
        low, span = (min(scores), max(scores) - min(scores)) if scores else (0.0, 0.0)
        for cid, score in ranking:
            normalised = (score - low) / span if span > 0 else 1.0
            fused[cid] = fused.get(cid, 0.0) + weight * normalised
    return sorted(fused.items(), key=lambda item: -item[1])
