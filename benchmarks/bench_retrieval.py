"""Retrieval quality and latency: SciFact nDCG@10 / recall@100 for dense, BM25 and hybrid;
HotpotQA recall@5 of the supporting paragraphs; query latency at SciFact size and at 100k chunks.

``--fusion`` scores only the ways of fusing dense and BM25 (weighted RRF and convex score fusion
at several weights) against dense and BM25 alone, on SciFact and HotpotQA, and saves them as
``bench_retrieval_fusion``: the hybrid default must be at least as good as the better of its two
halves on each set.

Documents are indexed exactly as users index them (token-aware chunks); a document's rank is the
rank of its best chunk. The int8 embedder is scored beside the float32 one, since it may only be
the default if its nDCG@10 stays within 0.01.

    python benchmarks/bench_retrieval.py [--quick] [--save] [--fusion]
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, emit, needs, parser

from hearthlm.eval.tasks.rag import doc_ranking

CACHE = Path(__file__).parent / ".cache"


def scifact(quick: bool) -> tuple[Path, dict[str, str], dict[str, set[str]]]:
    corpus = DATA / "scifact" / "corpus.jsonl"
    queries = {
        q["_id"]: q["text"]
        for q in map(json.loads, (DATA / "scifact" / "queries.jsonl").open(encoding="utf-8"))
    }
    qrels: dict[str, set[str]] = {}
    with (DATA / "scifact" / "qrels" / "train.tsv").open(encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            qid, did, score = line.split()
            if int(score) > 0:
                qrels.setdefault(qid, set()).add(did)
    if quick:
        lines = corpus.read_text(encoding="utf-8").splitlines()[:600]
        keep = {json.loads(line)["_id"] for line in lines}
        qrels = {q: d for q, d in qrels.items() if d <= keep}
        corpus = Path(tempfile.mkdtemp()) / "corpus.jsonl"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus, {q: queries[q] for q in qrels}, qrels


def build(name: str, corpus: Path, precision: str, quick: bool) -> object:
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex

    suffix = "" if precision == "float32" else f"-{precision}"
    folder = CACHE / (name + ("-quick" if quick else "") + suffix)
    config = RetrievalConfig(
        path=folder,
        collection=name,
        json_text_fields=["title", "text"],
        json_id_field="_id",
        embed_precision=precision,
    )
    index = DocumentIndex(config)
    index.index_path(corpus, progress=True)
    return index


def ndcg_at(ranked: list[str], relevant: set[str], k: int) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal


# (name, fusion, dense weight): the ways of fusing dense and BM25 that --fusion compares.
FUSIONS = [
    (f"{method}_w{weight}", method, weight)
    for method in ("rrf", "score")
    for weight in (0.3, 0.4, 0.5, 0.6, 0.7)
]


def retrievers(index, modes, fetch_k: int) -> dict[str, object]:
    """Named retrievers: plain modes, and ``hybrid_<fusion>_w<weight>`` for each of FUSIONS."""
    from hearthlm.retrieval import HybridRetriever

    named = {}
    for mode in modes:
        if mode == "fusions":
            for name, method, weight in FUSIONS:
                named[f"hybrid_{name}"] = HybridRetriever.from_index(
                    index, mode="hybrid", fetch_k=fetch_k, fusion=method, dense_weight=weight
                )
        else:
            named[mode] = HybridRetriever.from_index(index, mode=mode, fetch_k=fetch_k)
    return named


def score(index, queries, qrels, modes) -> dict[str, float]:
    out = {}
    for mode, retriever in retrievers(index, modes, 300).items():
        ndcg, recall = [], []
        for qid, text in queries.items():
            ranked = doc_ranking(retriever, text, 100)
            ndcg.append(ndcg_at(ranked, qrels[qid], 10))
            recall.append(len(set(ranked) & qrels[qid]) / len(qrels[qid]))
        out[f"{mode}_ndcg_at_10"] = round(statistics.mean(ndcg), 4)
        out[f"{mode}_recall_at_100"] = round(statistics.mean(recall), 4)
    return out


def latency(index, queries: list[str]) -> dict[str, float]:
    from hearthlm.retrieval import HybridRetriever

    out = {}
    for mode in ("dense", "bm25", "hybrid"):
        retriever = HybridRetriever.from_index(index, mode=mode, k=10)
        retriever.search(queries[0])
        times = []
        for query in queries:
            start = time.perf_counter()
            retriever.search(query)
            times.append((time.perf_counter() - start) * 1000)
        out[f"{mode}_p50_ms"] = round(float(np.percentile(times, 50)), 2)
        out[f"{mode}_p95_ms"] = round(float(np.percentile(times, 95)), 2)
    return out


def scaled_copy(index, target: int, quick: bool, config=None) -> object:
    """A collection of ``target`` chunks made from the real ones (jittered vectors, same texts
    under new ids): for latency only, so nothing is re-embedded. It is kept in the benchmarks'
    cache, or made where ``config`` says (a Chroma server, a shared state)."""
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex
    from hearthlm.retrieval.splitter import Chunk

    if config is None:
        config = RetrievalConfig(path=CACHE / f"scaled-{target}", collection="scaled")
    scaled = DocumentIndex(config, index.embeddings)
    if scaled.count >= target:
        return scaled
    got = index.collection.get(include=["embeddings", "documents", "metadatas"])
    base = np.asarray(got["embeddings"], dtype=np.float32)
    rng = np.random.default_rng(0)
    made = scaled.count
    copy = made // len(base)
    while made < target:
        vectors = base + rng.normal(0, 0.01, base.shape).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"{copy}-{i}" for i in got["ids"]]
        metas = [{**m, "source": f"{m['source']}#{copy}"} for m in got["metadatas"]]
        for i in range(0, len(ids), 5000):
            scaled.collection.add(
                ids=ids[i : i + 5000],
                embeddings=vectors[i : i + 5000],
                documents=got["documents"][i : i + 5000],
                metadatas=metas[i : i + 5000],
            )
        scaled.store.add_chunks(
            Chunk(cid, text, meta)
            for cid, text, meta in zip(ids, got["documents"], metas, strict=True)
        )
        made += len(ids)
        copy += 1
    scaled.store.bump_version()
    scaled.bm25.rebuild()
    return scaled


def hotpot_index(quick: bool) -> tuple[object, list[dict]]:
    """The paragraphs of every HotpotQA dev question pooled into one index, and the rows."""
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex

    rows = [json.loads(line) for line in (DATA / "hotpotqa" / "dev_200.jsonl").open()]
    rows = rows[:30] if quick else rows
    folder = CACHE / ("hotpot-quick" if quick else "hotpot")
    folder.mkdir(parents=True, exist_ok=True)
    pooled = folder / "paragraphs.jsonl"
    with pooled.open("w", encoding="utf-8") as out:
        for row in rows:
            for ctx in row["contexts"]:
                pid = f"{row['question_id']}:{ctx['id']}"
                record = {"id": pid, "title": ctx["title"], "text": ctx["paragraph_text"]}
                out.write(json.dumps(record) + "\n")
    config = RetrievalConfig(
        path=folder / "index",
        collection="hotpot",
        json_text_fields=["title", "text"],
        json_id_field="id",
    )
    index = DocumentIndex(config)
    index.index_path(pooled, progress=True)
    return index, rows


def hotpot(quick: bool, modes=("hybrid",)) -> dict[str, float]:
    index, rows = hotpot_index(quick)
    out: dict[str, float] = {"hotpotqa_questions": len(rows), "hotpotqa_paragraphs": index.count}
    for mode, retriever in retrievers(index, modes, 100).items():
        recalls = []
        for row in rows:
            gold = {
                f"{row['question_id']}:{c['id']}" for c in row["contexts"] if c["is_supporting"]
            }
            ranked = doc_ranking(retriever, row["question_text"], 5)
            recalls.append(len(set(ranked) & gold) / len(gold))
        out[f"hotpotqa_{mode}_recall_at_5"] = round(statistics.mean(recalls), 4)
    return out


def fusion(quick: bool, save: bool) -> None:
    """Every fusion against dense and BM25 alone, on SciFact (nDCG@10) and HotpotQA (recall@5)."""
    modes = ("dense", "bm25", "hybrid", "fusions")
    corpus, queries, qrels = scifact(quick)
    index = build("scifact", corpus, "float32", quick)
    figures: dict[str, object] = {"scifact_queries": len(queries)}
    figures |= {f"scifact_{k}": v for k, v in score(index, queries, qrels, modes).items()}
    figures |= hotpot(quick, modes)
    best = {}
    for name, metric in (("scifact", "ndcg_at_10"), ("hotpotqa", "recall_at_5")):
        halves = max(figures[f"{name}_dense_{metric}"], figures[f"{name}_bm25_{metric}"])
        figures[f"{name}_best_half_{metric}"] = halves
        best[name] = {
            fused: figures[f"{name}_hybrid_{fused}_{metric}"] - halves for fused, _, _ in FUSIONS
        }
    # The fusions that never lose to their better half, best worst-case margin first.
    margins = {
        fused: min(best["scifact"][fused], best["hotpotqa"][fused]) for fused, _, _ in FUSIONS
    }
    figures["fusion_margins"] = {k: round(v, 4) for k, v in margins.items()}
    figures["fusion_best"] = max(margins, key=lambda k: margins[k])
    emit("bench_retrieval_fusion", figures, save)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--fusion", action="store_true", help="compare the fusion methods only")
    args = p.parse_args()
    scifact = (DATA / "scifact" / n for n in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv"))
    needs(*scifact, DATA / "hotpotqa" / "dev_200.jsonl")
    if args.fusion:
        fusion(args.quick, args.save)
        return
    corpus, queries, qrels = scifact(args.quick)
    figures: dict[str, object] = {"scifact_queries": len(queries)}
    index = build("scifact", corpus, "float32", args.quick)
    figures["scifact_chunks"] = index.count
    figures |= score(index, queries, qrels, ("dense", "bm25", "hybrid"))
    for precision in ("bfloat16", "int8"):
        variant = build("scifact", corpus, precision, args.quick)
        scores = score(variant, queries, qrels, ("dense", "hybrid"))
        figures |= {f"{precision}_{k}": v for k, v in scores.items()}
        figures[f"{precision}_dense_ndcg_delta"] = round(
            scores["dense_ndcg_at_10"] - figures["dense_ndcg_at_10"], 4
        )
    figures |= hotpot(args.quick)
    sample = list(queries.values())[:200]
    figures |= {f"scifact_{k}": v for k, v in latency(index, sample).items()}
    target = 10_000 if args.quick else 100_000
    scaled = scaled_copy(index, target, args.quick)
    figures["scaled_chunks"] = scaled.count
    figures |= {f"scaled_{k}": v for k, v in latency(scaled, sample[:100]).items()}
    emit("bench_retrieval", figures, args.save)


if __name__ == "__main__":
    main()
