"""``bench_index.py --server``: the shared index on a `chroma run` server, its state in a real
PostgreSQL, queried from a machine that did not index; and PostgreSQL's own full-text search as
the keyword half against the bm25s index that every querying machine rebuilds.

- Quality: SciFact nDCG@10 of the keyword half alone (a document ranks where its best chunk
  ranks), bm25s against ``ts_rank_cd`` over a ``tsvector`` column with a GIN index, the query's
  words OR-ed (``websearch_to_tsquery`` with ``or``), with and without length normalisation.
- Latency at 100,000 chunks (SciFact's chunks copied with jittered vectors, as
  ``bench_retrieval.py`` does): hybrid p50/p95 on the indexing machine's embedded store (the
  baseline) and on the server from a machine that never indexed, with its first query's BM25
  rebuild timed on its own; PostgreSQL's keyword query p50 on the same 100,000 texts.
- What a change costs: the seconds each machine spends rebuilding bm25s from the shared texts,
  and the seconds PostgreSQL spends writing the same rows with and without the tsvector and its
  index (paid once, by the writer).
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from bench_retrieval import build, latency, ndcg_at, scaled_copy, scifact
from servers import chroma_server, postgres

from hearthlm.eval.tasks.rag import doc_ranking

FTS_TABLE = """
CREATE TABLE fts (id TEXT PRIMARY KEY, record TEXT, text TEXT NOT NULL,
                  tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED)"""
PLAIN_TABLE = "CREATE TABLE plain (id TEXT PRIMARY KEY, record TEXT, text TEXT NOT NULL)"
FTS_QUERY = """
SELECT id, record FROM fts, websearch_to_tsquery('english', :q) query
WHERE tsv @@ query ORDER BY ts_rank_cd(tsv, query, :norm) DESC LIMIT :k"""


def _or_query(text: str) -> str:
    """The query's words joined by ``or``: BM25 matches any word, not all of them."""
    return " or ".join(re.findall(r"\w+", text))


def _load(engine: Any, table: str, rows: list[dict[str, str]]) -> float:
    from sqlalchemy import text

    start = time.perf_counter()
    with engine.begin() as db:
        for i in range(0, len(rows), 5000):
            db.execute(
                text(f"INSERT INTO {table} (id, record, text) VALUES (:id, :record, :text)"),
                rows[i : i + 5000],
            )
        if table == "fts":
            db.execute(text("CREATE INDEX fts_tsv ON fts USING GIN (tsv)"))
    return time.perf_counter() - start


def _fts_ranking(db: Any, query: str, norm: int, n_docs: int, k: int = 300) -> list[str]:
    from sqlalchemy import text

    docs: list[str] = []
    for _, record in db.execute(text(FTS_QUERY), {"q": _or_query(query), "norm": norm, "k": k}):
        if record not in docs:
            docs.append(record)
        if len(docs) == n_docs:
            break
    return docs


def _fts(url: str, rows: list[dict[str, str]], queries, qrels, sample) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    out: dict[str, Any] = {}
    with engine.begin() as db:
        db.execute(text("DROP TABLE IF EXISTS fts"))
        db.execute(text(FTS_TABLE))
    _load(engine, "fts", rows)
    with engine.connect() as db:
        for norm in (0, 1):
            ndcg = [
                ndcg_at(_fts_ranking(db, q, norm, 100), qrels[qid], 10)
                for qid, q in queries.items()
            ]
            out[f"postgres_fts_norm{norm}_ndcg_at_10"] = round(statistics.mean(ndcg), 4)
    engine.dispose()
    return out


def _fts_latency_and_writes(url: str, rows: list[dict[str, str]], sample) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as db:
        for table, schema in (("fts", FTS_TABLE), ("plain", PLAIN_TABLE)):
            db.execute(text(f"DROP TABLE IF EXISTS {table}"))
            db.execute(text(schema))
    out = {
        "postgres_write_plain_s": round(_load(engine, "plain", rows), 2),
        "postgres_write_fts_s": round(_load(engine, "fts", rows), 2),
    }
    with engine.connect() as db:
        db.execute(text("ANALYZE fts"))
        _fts_ranking(db, sample[0], 0, 10)
        times = []
        for query in sample:
            start = time.perf_counter()
            _fts_ranking(db, query, 0, 10, k=10)
            times.append((time.perf_counter() - start) * 1000)
    out["postgres_fts_p50_ms"] = round(float(np.percentile(times, 50)), 2)
    out["postgres_fts_p95_ms"] = round(float(np.percentile(times, 95)), 2)
    engine.dispose()
    return out


def _rows(index: Any) -> list[dict[str, str]]:
    chunks = index.store.get_chunks(sorted(index.store.chunk_ids()))
    return [
        {"id": cid, "record": str(meta.get("record")), "text": text}
        for cid, (text, meta) in chunks.items()
    ]


def figures(quick: bool) -> dict[str, Any]:
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex, HybridRetriever

    corpus, queries, qrels = scifact(quick)
    index = build("scifact", corpus, "float32", quick)
    sample = list(queries.values())[:100]
    out: dict[str, Any] = {"scifact_queries": len(queries), "scifact_chunks": index.count}
    bm25 = HybridRetriever.from_index(index, mode="bm25", fetch_k=300)
    ndcg = [ndcg_at(doc_ranking(bm25, q, 100), qrels[qid], 10) for qid, q in queries.items()]
    out["bm25s_ndcg_at_10"] = round(statistics.mean(ndcg), 4)

    target = 10_000 if quick else 100_000
    work = Path(tempfile.mkdtemp(prefix="bench-shared-"))
    with postgres() as url, chroma_server(work) as server:
        out |= _fts(url, _rows(index), queries, qrels, sample)
        baseline = scaled_copy(index, target, quick)  # embedded, on the indexing machine
        out["chunks"] = baseline.count
        out |= {f"embedded_{k}": v for k, v in latency(baseline, sample).items()}

        shared = RetrievalConfig(
            path=work / "indexer", server=server, state=url, collection="scaled"
        )
        start = time.perf_counter()
        made = scaled_copy(index, target, quick, shared)
        out["server_write_s"] = round(time.perf_counter() - start, 1)
        assert made.count == baseline.count

        reader = DocumentIndex(
            shared.model_copy(update={"path": work / "reader"}), index.embeddings
        )
        start = time.perf_counter()
        reader.bm25.search("warm up", 1)  # the first query rebuilds bm25s from the shared texts
        out["reader_bm25_rebuild_s"] = round(time.perf_counter() - start, 2)
        out |= {f"server_{k}": v for k, v in latency(reader, sample).items()}
        hybrid = HybridRetriever.from_index(reader, mode="hybrid", k=10)
        alone = HybridRetriever.from_index(baseline, mode="hybrid", k=10)
        same = [[h.id for h in hybrid.search(q)] == [h.id for h in alone.search(q)] for q in sample]
        out["server_same_hybrid_results"] = round(sum(same) / len(same), 3)
        out |= _fts_latency_and_writes(url, _rows(baseline), sample)
    better = max(
        ("bm25s", out["bm25s_ndcg_at_10"]),
        *((f"postgres_fts_norm{n}", out[f"postgres_fts_norm{n}_ndcg_at_10"]) for n in (0, 1)),
        key=lambda pair: pair[1],
    )
    out["keyword_half_kept"] = better[0]
    out["targets_met"] = {"server_hybrid_p50_60ms": out["server_hybrid_p50_ms"] <= 60}
    return out
