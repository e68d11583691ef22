"""Indexing throughput on SciFact: hearthlm vs stock LangChain vs raw sentence-transformers.

All three embed the same chunks with the same model in the same run:
- hearthlm: ``DocumentIndex.index_path`` on the corpus file (load, split, embed, Chroma, BM25);
- LangChain: ``Chroma.from_documents`` with ``HuggingFaceEmbeddings`` on hearthlm's chunks;
- ceiling: ``SentenceTransformer.encode`` on the same chunk texts.
Then it re-indexes the unchanged corpus with both tools: hearthlm embeds nothing, LangChain
embeds and stores everything again.

    python benchmarks/bench_index.py [--quick] [--save]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, parser

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "corpus.jsonl"


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex, HearthEmbeddings

    work = Path(tempfile.mkdtemp(prefix="bench-index-"))
    corpus = CORPUS
    if args.quick:
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
    if args.quick:  # at full size the re-run only repeats the first run's cost
        start = time.perf_counter()
        store.add_documents(docs)
        lc_reindex_s = time.perf_counter() - start

    figures = {
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
    shutil.rmtree(work, ignore_errors=True)
    emit("bench_index", figures, args.save)


if __name__ == "__main__":
    main()
