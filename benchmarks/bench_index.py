"""Indexing throughput on SciFact: hearthlm vs stock LangChain vs raw sentence-transformers.

All three embed the same chunks with the same model in the same run:
- hearthlm: ``DocumentIndex.index_path`` on the corpus file (load, split, embed, Chroma, BM25);
- LangChain: ``Chroma.from_documents`` with ``HuggingFaceEmbeddings`` on hearthlm's chunks;
- ceiling: ``SentenceTransformer.encode`` on the same chunk texts.
Then it re-indexes the unchanged corpus with both tools: hearthlm embeds nothing, LangChain
embeds and stores everything again.

Awkward folder: 200 good files (SciFact abstracts, two per file, in every supported type) are
indexed alone, then mixed with 200 awkward ones (deep JSON, truncated, encrypted and over-long
PDFs, legacy encodings, NUL bytes, oversized files, …; see ``_awkward.py``), each into a fresh
index, best of two runs each. Targets: every good file indexed, every awkward file indexed or
skipped with the expected reason, and the mixed run at most 1.2x the good files' seconds.

    python benchmarks/bench_index.py [--quick] [--save] [--only scifact|awkward]
    python benchmarks/bench_index.py --embedder [--quick] [--save]
    python benchmarks/bench_index.py --server [--quick] [--save]
    python benchmarks/bench_index.py --ray [--quick] [--save]

``--embedder`` compares what runs the embedder, in one run: PyTorch float32 (the baseline),
``auto`` (bfloat16 on a CPU with native bfloat16) and dynamic int8, and OpenVINO
(``retrieval.embed_backend = "openvino"``) with its own precision and with float32. Each
encodes the SciFact abstracts (title and text, as one text each, truncated at the model's 256
tokens) and the 809 training queries: texts per second of the abstracts, dense nDCG@10 over the
whole corpus, and the lowest cosine between its vectors and the baseline's. It is saved as
``bench_index_embedder.json``.

``--server`` measures the shared index: a `chroma run` server with its state in PostgreSQL,
queried at 100,000 chunks from a machine that did not index, and PostgreSQL's full-text search
against bm25s as the keyword half (see ``_shared_index.py``). It is saved as
``bench_index_server.json``.

``--ray`` indexes SciFact (as 100 JSONL files) in one process and on a local Ray with 2 CPUs,
in the same run: chunks per second of each, with the Ray pool as two 1-CPU actors and as one
2-CPU actor, the same chunk ids and the lowest cosine between their vectors. It is saved as
``bench_index_ray.json``.

``--only awkward --save`` updates the awkward figures of the saved result and keeps its SciFact
figures (the SciFact part takes about 20 minutes on 2 cores).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _awkward import KINDS, LIMITS, write_good, write_mixed
from _common import DATA, RESULTS, emit, needs, parser

CORPUS = DATA / "scifact" / "corpus.jsonl"


def main() -> None:
    cli = parser(__doc__ or "")
    cli.add_argument("--only", choices=["scifact", "awkward"], default=None)
    cli.add_argument("--embedder", action="store_true", help="compare the embedding backends")
    cli.add_argument("--server", action="store_true", help="the shared index on a server")
    cli.add_argument("--ray", action="store_true", help="indexing on a local Ray")
    args = cli.parse_args()
    needs(CORPUS)
    if args.embedder:
        emit("bench_index_embedder", embedders(args.quick), args.save)
        return
    if args.ray:
        emit("bench_index_ray", on_ray(args.quick), args.save)
        return
    if args.server:
        import _shared_index

        emit("bench_index_server", _shared_index.figures(args.quick), args.save)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    figures: dict[str, Any] = {}
    if args.only == "awkward":
        saved = RESULTS / "bench_index.json"
        if args.save and saved.exists():  # keep the SciFact figures of the last full run
            previous = json.loads(saved.read_text(encoding="utf-8"))
            figures = {k: v for k, v in previous.items() if k not in ("benchmark", "machine")}
    else:
        figures.update(scifact(work, args.quick))
    if args.only != "scifact":
        figures.update(awkward(work, args.quick))
    shutil.rmtree(work, ignore_errors=True)
    emit("bench_index", figures, args.save)


def scifact(work: Path, quick: bool) -> dict[str, Any]:
    """hearthlm, stock LangChain and the raw embedder on the SciFact corpus."""
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex, HearthEmbeddings

    corpus = CORPUS
    if quick:
        corpus = work / "corpus.jsonl"
        lines = CORPUS.read_text(encoding="utf-8").splitlines()[:300]
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def hearth_run(precision: str) -> tuple[DocumentIndex, float]:
        config = RetrievalConfig(
            path=work / f"hearth-{precision}",
            collection="scifact",
            json_text_fields=["title", "text"],
            json_id_field="_id",
            embed_precision=precision,
        )
        index = DocumentIndex(config)
        index.embeddings.embed_query("warm up")  # model load is not indexing time
        report = index.index_path(corpus, progress=False)
        return index, report.seconds

    index, hearth_s = hearth_run("auto")  # what users get by default on this machine
    n = index.count
    _, hearth_fp32_s = hearth_run("float32")  # the plain model, to compare with the ceiling
    rows = list(index.store.get_chunks(sorted(index.store.chunk_ids())).items())
    texts = [text for _, (text, _) in rows]
    metas = [{k: v for k, v in meta.items() if v != ""} for _, (_, meta) in rows]

    plain = HearthEmbeddings(precision="float32")
    plain.embed_query("warm up")
    start = time.perf_counter()
    plain.model.encode(texts, batch_size=16, normalize_embeddings=True)
    ceiling_s = time.perf_counter() - start

    from langchain_chroma import Chroma
    from langchain_core.documents import Document
    from langchain_huggingface import HuggingFaceEmbeddings

    lc_embeddings = HuggingFaceEmbeddings(
        model_name=str(plain.path), encode_kwargs={"normalize_embeddings": True}
    )
    lc_embeddings.embed_query("warm up")
    docs = [Document(page_content=t, metadata=m) for t, m in zip(texts, metas, strict=True)]
    start = time.perf_counter()
    store = Chroma.from_documents(docs, lc_embeddings, persist_directory=str(work / "lc"))
    langchain_s = time.perf_counter() - start

    again = index.index_path(corpus, progress=False)
    lc_reindex_s = None
    if quick:  # at full size the re-run only repeats the first run's cost
        start = time.perf_counter()
        store.add_documents(docs)
        lc_reindex_s = time.perf_counter() - start

    return {
        "documents": sum(1 for _ in corpus.open(encoding="utf-8")),
        "chunks": n,
        "hearth_precision": index.embeddings.resolved_precision,
        "hearth_seconds": round(hearth_s, 2),
        "hearth_chunks_per_s": round(n / hearth_s, 2),
        "hearth_float32_chunks_per_s": round(n / hearth_fp32_s, 2),
        "langchain_chunks_per_s": round(n / langchain_s, 2),
        "ceiling_chunks_per_s": round(n / ceiling_s, 2),
        "ratio_vs_langchain": round(langchain_s / hearth_s, 3),
        "ratio_vs_ceiling_float32": round(ceiling_s / hearth_fp32_s, 3),
        "reindex_new_embeddings": again.embedded,
        "reindex_seconds": round(again.seconds, 4),
        "reindex_speedup": round(hearth_s / again.seconds, 1),
        "langchain_reindex_seconds": round(lc_reindex_s, 2) if lc_reindex_s else None,
        "langchain_count_after_reindex": store._collection.count(),
    }


EMBEDDERS = {
    "torch_float32": {"precision": "float32"},
    "torch_auto": {"precision": "auto"},  # bfloat16 where the CPU has it natively
    "torch_int8": {"precision": "int8"},
    "openvino_auto": {"backend": "openvino"},  # bfloat16 matmuls where native
    "openvino_float32": {"backend": "openvino", "precision": "float32"},
}


def embedders(quick: bool) -> dict[str, Any]:
    """Texts per second, SciFact nDCG@10 and agreement with PyTorch float32, per backend."""
    import numpy as np
    from bench_retrieval import ndcg_at, scifact

    from hearthlm.retrieval import HearthEmbeddings

    corpus, queries, qrels = scifact(quick)
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    ids = [row["_id"] for row in rows]
    texts = [f"{row['title']}\n{row['text']}" for row in rows]
    asked = list(qrels)
    figures: dict[str, Any] = {"texts": len(texts), "queries": len(asked)}
    baseline = None
    for name, options in EMBEDDERS.items():
        embedder = HearthEmbeddings(batch_size=32, **options)
        embedder.encode(texts[:64])  # loaded, converted and warm
        started = time.perf_counter()
        vectors = embedder.encode(texts)
        seconds = time.perf_counter() - started
        questions = embedder.encode([queries[q] for q in asked])
        order = np.argsort(-(questions @ vectors.T), axis=1)[:, :10]
        found = zip(asked, order, strict=True)
        ndcg = [ndcg_at([ids[j] for j in top], qrels[q], 10) for q, top in found]
        result = {"texts_per_s": round(len(texts) / seconds, 1),
                  "ndcg10": round(float(np.mean(ndcg)), 4)}  # fmt: skip
        if baseline is None:
            baseline = result | {"vectors": vectors}
        else:
            result["speedup"] = round(result["texts_per_s"] / baseline["texts_per_s"], 2)
            result["ndcg10_change"] = round(result["ndcg10"] - baseline["ndcg10"], 4)
            cosines = np.sum(vectors * baseline["vectors"], axis=1)
            result["min_cosine"] = round(float(cosines.min()), 5)
        figures[name] = result
        print(name, result, file=sys.stderr, flush=True)
    return figures


def on_ray(quick: bool) -> dict[str, Any]:
    """Chunks per second indexing SciFact (as 100 JSONL files) in one process and on a local
    2-CPU Ray, in the same run; the Ray pool as two 1-CPU actors and as one 2-CPU actor."""
    import numpy as np
    import ray

    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex, HearthEmbeddings

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    lines = CORPUS.read_text(encoding="utf-8").splitlines()[: 600 if quick else None]
    folder = work / "scifact"
    folder.mkdir()
    per_file = math.ceil(len(lines) / 100)
    for i in range(0, len(lines), per_file):
        part = "\n".join(lines[i : i + per_file]) + "\n"
        (folder / f"part{i // per_file:03}.jsonl").write_text(part, encoding="utf-8")
    embeddings = HearthEmbeddings()
    embeddings.embed_query("warm up")  # the model load is not indexing time

    def config(name: str, **extra: Any) -> RetrievalConfig:
        return RetrievalConfig(
            path=work / name, json_text_fields=["title", "text"], json_id_field="_id", **extra
        )

    alone = DocumentIndex(config("alone"), embeddings)
    report = alone.index_path(folder, progress=False)
    figures: dict[str, Any] = {
        "files": len(list(folder.iterdir())),
        "chunks": report.embedded,
        "process_chunks_per_s": round(report.embedded / report.seconds, 1),
    }
    got = alone.collection.get(include=["embeddings"])
    expected = dict(zip(got["ids"], np.asarray(got["embeddings"]), strict=True))
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    figures["ray_start_s"] = round(time.perf_counter() - started, 1)
    for name, cpus in (("ray_2x1cpu", 1.0), ("ray_1x2cpu", 2.0)):
        index = DocumentIndex(config(name, ray_actor_cpus=cpus), embeddings)
        report = index.index_path(folder, progress=False, ray=True)  # actors load in the run
        got = index.collection.get(include=["embeddings"])
        vectors = dict(zip(got["ids"], np.asarray(got["embeddings"]), strict=True))
        assert set(vectors) == set(expected), "Ray indexed other chunks"
        speed = report.embedded / report.seconds
        figures[name] = {
            "chunks_per_s": round(speed, 1),
            "vs_process": round(speed / figures["process_chunks_per_s"], 2),
            "min_cosine": round(min(float(vectors[i] @ expected[i]) for i in expected), 5),
            "rerun_embedded": index.index_path(folder, progress=False, ray=True).embedded,
        }
        print(name, figures[name], file=sys.stderr, flush=True)
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    best = max(figures["ray_2x1cpu"]["vs_process"], figures["ray_1x2cpu"]["vs_process"])
    figures["targets_met"] = {"ray_0.8x_process": best >= 0.8}
    return figures


def awkward(work: Path, quick: bool) -> dict[str, Any]:
    """200 good files alone, then with 200 awkward ones: what was indexed, skipped, and when."""
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex, HearthEmbeddings

    good_files = awkward_files = 30 if quick else 200
    with CORPUS.open(encoding="utf-8") as lines:
        docs = [json.loads(next(lines)) for _ in range(2 * good_files + awkward_files)]
    write_good(work / "good", docs, good_files)
    kinds = write_mixed(work / "mixed", work / "good", docs[2 * good_files :], awkward_files)
    embeddings = HearthEmbeddings()
    embeddings.embed_query("warm up")

    def run(folder: str, attempt: int) -> tuple[Any, DocumentIndex]:
        config = RetrievalConfig(path=work / f"idx-{folder}-{attempt}", **LIMITS)
        index = DocumentIndex(config, embeddings)
        return index.index_path(work / folder, progress=False), index

    seconds: dict[str, list[float]] = {"good": [], "mixed": []}
    for attempt in range(2):  # alternated, so a busy spell on the machine hits both
        for folder in ("good", "mixed"):
            report, index = run(folder, attempt)
            seconds[folder].append(report.seconds)
            if folder == "good":
                good_report = report
            else:
                mixed_report, mixed_index = report, index
    outcome = {Path(p).name: f"skipped: {r}" for p, r in mixed_report.skipped}
    for source in mixed_index.store.files():
        outcome[Path(source).name] = "indexed"
    unexpected = [
        {"file": name, "kind": kind, "outcome": outcome.get(name, "missing")}
        for name, kind in kinds.items()
        if not outcome.get(name, "missing").startswith(KINDS[kind][0])
    ]
    good_in_mix = sum(1 for n, o in outcome.items() if n not in kinds and o == "indexed")
    good_s, mixed_s = min(seconds["good"]), min(seconds["mixed"])
    return {
        "awkward_good_files": good_files,
        "awkward_good_indexed_alone": good_report.files_indexed,
        "awkward_good_indexed_in_mix": good_in_mix,
        "awkward_files": len(kinds),
        "awkward_accounted_for": len(kinds) - len(unexpected),
        "awkward_unexpected": unexpected,
        "awkward_indexed": sum(1 for n in kinds if outcome.get(n) == "indexed"),
        "awkward_skipped_by_reason": dict(Counter(_reason(r) for _, r in mixed_report.skipped)),
        "awkward_library_warnings": len(mixed_report.warnings),
        "awkward_chunks_good": good_report.chunks_added,
        "awkward_chunks_mixed": mixed_report.chunks_added,
        "awkward_good_seconds": round(good_s, 2),
        "awkward_mixed_seconds": round(mixed_s, 2),
        "awkward_seconds_runs": {k: [round(x, 2) for x in v] for k, v in seconds.items()},
        "awkward_ratio_vs_good": round(mixed_s / good_s, 3),
    }


def _reason(reason: str) -> str:
    """A skip reason without its particulars: "JSON nested N levels deep"."""
    head = re.split(r"[:;,(]", reason, maxsplit=1)[0].strip()
    return re.sub(r"(?<=\s)\d+", "N", head)


if __name__ == "__main__":
    main()
