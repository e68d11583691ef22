"""Answer quality of the docs chatbot per answer mode (quote, constrained, free) with the default
model and the hybrid retriever, on the example questions and on HotpotQA dev.

Figures per mode and data set:
- ``contains_gold``: the normalised gold answer appears in the answer text (``hearth eval rag``'s
  ``contains_answer``, the same normaliser);
- ``f1``: SQuAD token F1 of the answer text against the gold answer;
- ``citation_precision``: of the answers that cite, the share whose cited source holds the gold;
- ``ceiling``: the gold answer is somewhere in the packed sources (what any reader could reach);
- ``idk_precision`` / ``idk_recall``: "I don't know" on the unanswerable example questions;
- ``seconds``: per question, retrieval included.

HotpotQA's yes/no questions cannot be answered by a quote, so every mode is scored on the others
and their number is reported. The paragraphs of all questions share one index, as a user's
documents would.

    python benchmarks/bench_answers.py [--quick] [--save] [--threads N] [--hotpot N]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import chat_options, emit, parser

from hearthlm.eval.metrics import abstention_scores, token_f1

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "docs"
MODES = ("quote", "constrained", "free")


def contains(text: str, golds: list[str]) -> bool:
    """The gold answer in the text, as ``hearth eval rag`` counts it (one normaliser)."""
    from hearthlm.eval.metrics import contains_answer

    return bool(contains_answer(text, golds))


def score(answer: Any, golds: list[str], seconds: float) -> dict[str, Any]:
    """One question's record."""
    known = answer.known
    cited = [s.snippet for s in answer.citations]
    return {
        "question": answer.question,
        "answer": answer.text,
        "gold": golds,
        "known": known,
        "contains_gold": bool(golds) and known and contains(answer.text, golds),
        "f1": token_f1(answer.text, golds) if known and golds else 0.0,
        "cites": bool(cited),
        "cited_gold": bool(golds) and any(contains(c, golds) for c in cited),
        "ceiling": bool(golds) and any(contains(s.snippet, golds) for s in answer.sources),
        "grounded": answer.grounded,
        "seconds": seconds,
    }


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    answerable = [r for r in records if r["gold"]]
    unanswerable = [r for r in records if not r["gold"]]
    citing = [r for r in answerable if r["cites"]]
    out: dict[str, Any] = {
        "questions": len(records),
        "contains_gold": _mean(r["contains_gold"] for r in answerable),
        "f1": _mean(r["f1"] for r in answerable),
        "citation_precision": _mean(r["cited_gold"] for r in citing),
        "ceiling": _mean(r["ceiling"] for r in answerable),
        "seconds": _mean(r["seconds"] for r in records),
    }
    if out["ceiling"]:
        out["of_ceiling"] = round(out["contains_gold"] / out["ceiling"], 4)
    written = [r for r in answerable if r["grounded"] is not None]
    if written:
        out["ungrounded"] = _mean(r["grounded"] is False for r in written)
    if unanswerable:
        idk = abstention_scores([r["known"] for r in records], [bool(r["gold"]) for r in records])
        out |= {k: round(v, 4) for k, v in idk.items()}
        out["unanswerable"] = len(unanswerable)
    return out


def _mean(values: Any) -> float:
    values = [float(v) for v in values]
    return round(statistics.mean(values), 4) if values else 0.0


def run(qa_by_mode: dict[str, Any], rows: list[tuple[str, list[str]]], label: str) -> dict:
    from rich.progress import track

    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in qa_by_mode}
    for question, golds in track(rows, description=label, transient=True):
        for mode, qa in qa_by_mode.items():
            start = time.perf_counter()
            answer = qa.invoke(question)
            results[mode].append(score(answer, golds, time.perf_counter() - start))
    return results


def examples_index(folder: Path) -> Any:
    from hearthlm.config import RetrievalConfig
    from hearthlm.retrieval import DocumentIndex

    config = RetrievalConfig(path=folder, collection="examples", exclude=["questions.jsonl"])
    index = DocumentIndex(config)
    index.index_path(EXAMPLES, progress=False)
    return index


def main() -> None:
    p = parser(__doc__ or "", threads=True)
    p.add_argument("--hotpot", type=int, default=200, help="HotpotQA questions (default: all)")
    p.add_argument("--modes", default=",".join(MODES), help="answer modes, comma-separated")
    p.add_argument("--records", type=Path, help="write every answer to this JSONL file")
    args = p.parse_args()
    from bench_retrieval import hotpot_index

    from hearthlm.llm import ChatHearth
    from hearthlm.retrieval import DocsQA, HybridRetriever

    chat = ChatHearth(**{**chat_options(), "threads": args.threads, "max_new_tokens": 96})
    modes = args.modes.split(",")
    figures: dict[str, Any] = {"model": "SmolLM2-135M-Instruct Q4_1 (packaged)", "k": 4}
    records: dict[str, Any] = {}

    rows = [json.loads(line) for line in (EXAMPLES / "questions.jsonl").open(encoding="utf-8")]
    with tempfile.TemporaryDirectory() as folder:
        retriever = HybridRetriever.from_index(examples_index(Path(folder)))
        qas = {mode: DocsQA(chat, retriever, answer=mode) for mode in modes}
        results = run(qas, [(r["question"], r["answers"]) for r in rows], "examples")
    for mode, recs in results.items():
        figures[f"examples_{mode}"] = summary(recs)
        records[f"examples_{mode}"] = recs

    n = 30 if args.quick else args.hotpot
    index, hotpot_rows = hotpot_index(args.quick)
    hotpot_rows = hotpot_rows[:n]
    yes_no = [r for r in hotpot_rows if _golds(r)[0].lower() in ("yes", "no")]
    asked = [(r["question_text"], _golds(r)) for r in hotpot_rows if r not in yes_no]
    figures["hotpotqa_yes_no_left_out"] = len(yes_no)
    retriever = HybridRetriever.from_index(index)
    qas = {mode: DocsQA(chat, retriever, answer=mode) for mode in modes}
    results = run(qas, asked, "hotpotqa")
    for mode, recs in results.items():
        figures[f"hotpotqa_{mode}"] = summary(recs)
        records[f"hotpotqa_{mode}"] = recs
    if "quote" in modes and "constrained" in modes:
        for name in ("examples", "hotpotqa"):
            quote, constrained = figures[f"{name}_quote"], figures[f"{name}_constrained"]
            figures[f"{name}_quote_vs_constrained"] = {
                "contains_gold": _ratio(quote["contains_gold"], constrained["contains_gold"]),
                "seconds": _ratio(quote["seconds"], constrained["seconds"]),
            }
    if args.records:
        with args.records.open("w", encoding="utf-8") as out:
            for name, recs in records.items():
                for rec in recs:
                    out.write(json.dumps({"set": name, **rec}) + "\n")
    emit("bench_answers", figures, args.save)


def _golds(row: dict[str, Any]) -> list[str]:
    return [span for answer in row["answers_objects"] for span in answer["spans"] if span]


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


if __name__ == "__main__":
    main()
