"""Scoring the docs chatbot: retrieval quality, and with gold answers, answers and citations.

``rag`` reads either a BEIR corpus with qrels (SciFact: retrieval quality) or rows that carry their
own paragraphs and gold answers (HotpotQA: retrieval, answer and citation quality).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hearthlm.errors import EvalError
from hearthlm.eval import metrics
from hearthlm.eval.tasks.base import Engines, Item, Progress, Task, gold_answers
from hearthlm.eval.tasks.spec import RAGSpec
from hearthlm.files import write_atomic
from hearthlm.rows import BadRows, Row, field_of

__all__ = ["RAGTask", "doc_ranking"]


class RAGTask(Task[RAGSpec]):
    """Retrieval recall@k, MRR and nDCG@k against qrels or supporting paragraphs; with gold
    answers, the answers of the docs chatbot as ``hearth ask`` builds it from the configuration
    (its reader, search settings and relevance gates): exact match, F1, the share that contains
    a gold answer, the citations' precision, and, where rows have an empty answer list (the
    documents do not answer them), "I don't know" precision and recall."""

    spec_class = RAGSpec
    chunk = 16

    def items(self, bad: BadRows) -> list[Item]:
        self._qrels = _read_qrels(self.spec.qrels, bad) if self.spec.qrels else None
        return super().items(bad)

    def item(self, row: Row, bad: BadRows) -> Item | None:
        question = self._render(row, bad)
        if question is None:
            return None
        data: dict[str, Any] = {"question": question, "references": [], "relevant": {}}
        if "contexts" in row.values:  # HotpotQA shape: the row brings its own paragraphs
            contexts = row.values["contexts"]
            if not isinstance(contexts, list) or not contexts:
                bad.add(row.path, row.line, "'contexts' must be a non-empty list")
                return None
            # Paragraph ids are only unique within a row, so the row's id scopes them.
            scope = str(row.values.get(self.spec.id or "", row.line))
            data["paragraphs"] = [
                {
                    "_id": f"{scope}/{c.get('id')}",
                    "title": c.get("title", ""),
                    "text": c.get("paragraph_text", ""),
                }
                for c in contexts
            ]
            data["relevant"] = {
                f"{scope}/{c.get('id')}": 1.0 for c in contexts if c.get("is_supporting")
            }
        elif self._qrels is not None:
            key = str(row.values.get(self.spec.id or "_id", ""))
            if key not in self._qrels:
                return None  # a query without judgements is not scored (as in BEIR)
            data["relevant"] = self._qrels[key]
        if self.spec.reference in row.values:  # an empty list: the documents do not answer it
            data["references"] = gold_answers(field_of(row, self.spec.reference, bad))
            data["answered"] = True
        if not data["relevant"] and not data.get("answered"):
            bad.add(row.path, row.line, "nothing to score: no relevance judgements, no answers")
            return None
        return self._item(row, data)

    def predict(
        self, items: list[Item], engines: Engines, progress: Progress
    ) -> Iterator[dict[str, Any]]:
        # lazy: the retrieval stack (~0.8 s) loads only for a rag task
        from hearthlm.retrieval import HybridRetriever, build_docs_qa

        index = self._index(items, engines)
        retriever = HybridRetriever.from_index(index, k=self.spec.k, fetch_k=max(40, self.spec.k))
        asked = any(i.data.get("answered") for i in items)
        qa = build_docs_qa(engines.config, engines.chat, index) if asked else None
        for item in items:
            record: dict[str, Any] = {"id": item.id, "task": self.name}
            relevant = item.data["relevant"]
            if relevant:
                ranked = doc_ranking(retriever, item.data["question"], self.spec.k)
                record["ranked"] = ranked
                record[f"recall_at_{self.spec.k}"] = metrics.recall_at_k(
                    ranked, relevant, self.spec.k
                )
                record["mrr"] = metrics.mrr(ranked, relevant)
                record[f"ndcg_at_{self.spec.k}"] = metrics.ndcg_at_k(ranked, relevant, self.spec.k)
            if qa is not None and item.data.get("answered"):
                answer = qa.invoke(item.data["question"])
                refs = item.data["references"]
                record.update(answer=answer.text, known=answer.known, answerable=bool(refs))
                if refs:
                    record["exact_match"] = metrics.exact_match(answer.text, refs)
                    record["f1"] = metrics.token_f1(answer.text, refs)
                    record["contains_answer"] = metrics.contains_answer(answer.text, refs)
                    record["citation_precision"] = metrics.citation_precision(
                        [c.snippet for c in answer.citations], refs
                    )
            progress(1)
            yield record

    def _index(self, items: list[Item], engines: Engines) -> Any:
        from hearthlm.retrieval import DocumentIndex  # lazy, as in predict

        folder = engines.workdir / "index"
        if self.spec.corpus is not None:
            corpus = self.spec.corpus
        else:
            corpus = folder / "corpus.jsonl"
            corpus.parent.mkdir(parents=True, exist_ok=True)
            seen: dict[str, dict[str, Any]] = {}
            for item in items:
                for paragraph in item.data.get("paragraphs", []):
                    seen.setdefault(paragraph["_id"], paragraph)
            if not seen:
                raise EvalError(f"task {self.name!r} needs a 'corpus' or rows with 'contexts'")
            lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in seen.values())
            if not corpus.is_file() or corpus.read_text(encoding="utf-8") != lines:
                write_atomic(corpus, lines)
        # the configured search and answer settings, over an index of the task's own
        config = engines.config.retrieval.model_copy(
            update={
                "path": folder / "chroma",
                "server": None,
                "collection": "eval",
                "json_text_fields": ["title", "text"],
                "json_id_field": "_id",
            }
        )
        index = DocumentIndex(config)
        index.index_path(corpus, progress=True)  # incremental: a resumed run re-embeds nothing
        return index

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        names = [
            f"recall_at_{self.spec.k}",
            "mrr",
            f"ndcg_at_{self.spec.k}",
            "exact_match",
            "f1",
            "contains_answer",
            "citation_precision",
        ]
        scores = {
            name: metrics.mean(float(r[name]) for r in records if name in r)
            for name in names
            if any(name in r for r in records)
        }
        asked = [r for r in records if "known" in r]
        if any(not r["answerable"] for r in asked):
            scores |= metrics.abstention_scores(
                [r["known"] for r in asked], [r["answerable"] for r in asked]
            )
        return scores


def _read_qrels(path: Path, bad: BadRows) -> dict[str, dict[str, float]]:
    """BEIR qrels (``query-id corpus-id score``, tab-separated, with a header)."""
    if not path.is_file():
        raise EvalError(f"qrels file not found: {path}")
    qrels: dict[str, dict[str, float]] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts or (number == 1 and not parts[-1].lstrip("-").isdigit()):
                continue
            if len(parts) != 3:
                bad.add(path, number, f"expected 3 columns, got {len(parts)}")
                continue
            try:
                grade = float(parts[2])
            except ValueError:
                bad.add(path, number, f"relevance {parts[2]!r} is not a number")
                continue
            if grade > 0:
                qrels.setdefault(parts[0], {})[parts[1]] = grade
    return qrels


def doc_ranking(retriever: Any, query: str, n_docs: int) -> list[str]:
    """Document ids in rank order; a document ranks where its best chunk ranks."""
    docs: list[str] = []
    for hit in retriever.search(query, k=retriever.fetch_k):
        doc = str(hit.metadata.get("record"))
        if doc not in docs:
            docs.append(doc)
        if len(docs) == n_docs:
            break
    return docs
