"""GSM8K with the default model: direct answer, chain of thought (greedy), self-consistency (n=5),
ReAct with the calculator, and program-aided, all in one run on the same questions.

Reports accuracy, seconds per question, and for ReAct the valid-action rate and mean steps.

    python benchmarks/bench_agent.py [--quick] [--save] [--limit N] [--methods a,b]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, emit, needs, parser

GSM8K = DATA / "gsm8k"
DIRECT = "Answer the math word problem with just the final number."


def main() -> None:
    p = parser(__doc__ or "", threads=True)
    p.add_argument("--limit", type=int, default=None, help="first N questions only")
    p.add_argument(
        "--methods",
        default="direct,cot,cot_sc5,react_calculator,pal",
        help="which methods to run, comma-separated (direct always runs: the baseline)",
    )
    args = p.parse_args()
    needs(GSM8K / "test_300.jsonl", GSM8K / "train.jsonl")
    from rich.progress import Progress

    from hearthlm.agents.cot import (
        ChainOfThought,
        ProgramAided,
        extract_answer,
        gsm8k_examples,
        normalise_number,
    )
    from hearthlm.agents.react import ReActAgent
    from hearthlm.agents.tools import calculator_tool
    from hearthlm.llm import ChatHearth

    rows = [json.loads(line) for line in (GSM8K / "test_300.jsonl").open(encoding="utf-8")]
    rows = rows[: args.limit or (10 if args.quick else len(rows))]
    gold = [normalise_number(r["answer"].rpartition("####")[2]) for r in rows]
    chat = ChatHearth(threads=args.threads)
    examples = gsm8k_examples(GSM8K / "train.jsonl", 4)
    cot = ChainOfThought(chat, examples)
    self_consistency = ChainOfThought(chat, examples, samples=5, temperature=0.7)
    react = ReActAgent(chat, [calculator_tool()], max_steps=6)
    pal = ProgramAided(chat, examples)
    methods = {
        "direct": lambda q: extract_answer(
            str(chat.invoke([("system", DIRECT), ("human", q)], max_new_tokens=24).content)
        ),
        "cot": lambda q: cot.invoke(q).answer,
        "cot_sc5": lambda q: self_consistency.invoke(q).answer,
        "react_calculator": None,
        "pal": lambda q: pal.invoke(q).answer,
    }
    wanted = {"direct", *args.methods.split(",")}
    unknown = wanted - set(methods)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(methods)}")
    methods = {name: method for name, method in methods.items() if name in wanted}
    figures: dict[str, object] = {"questions": len(rows), "threads": args.threads or os.cpu_count()}
    react_steps, react_valid = [], []
    with Progress() as progress:
        for name, method in methods.items():
            task = progress.add_task(name, total=len(rows))
            correct, start = 0, time.perf_counter()
            for row, answer in zip(rows, gold, strict=True):
                if name == "react_calculator":
                    result = react.invoke(row["question"])
                    predicted = extract_answer(result.answer or "")
                    react_steps.append(len(result.steps))
                    react_valid.extend(s.valid for s in result.steps)
                else:
                    predicted = method(row["question"])  # type: ignore[misc]
                correct += predicted == answer
                progress.advance(task)
            seconds = time.perf_counter() - start
            figures[f"{name}_accuracy"] = round(correct / len(rows), 4)
            figures[f"{name}_seconds_per_question"] = round(seconds / len(rows), 2)
            progress.console.log(name, figures[f"{name}_accuracy"], f"{seconds:.0f} s")
    if react_steps:
        figures["react_valid_action_rate"] = round(sum(react_valid) / len(react_valid), 4)
        figures["react_mean_steps"] = round(statistics.mean(react_steps), 2)
        figures["react_beats_direct"] = (
            figures["react_calculator_accuracy"] > figures["direct_accuracy"]
        )
    emit("bench_agent", figures, args.save)


if __name__ == "__main__":
    main()
