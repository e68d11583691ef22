"""hearthlm's MMLU scores against lm-evaluation-harness, on the same model and the same prompts,
and hearthlm's perplexity against a plain transformers loss.

Both tools read the 12 MMLU subjects in ../shared/data/mmlu/test with 5-shot prompts from dev/ (the
harness through a generated task YAML over the local CSVs), run the cached safetensors of the
default model in float32 on the CPU with batch size 8, and are timed from model load to scores.

    python benchmarks/bench_eval_agreement.py [--quick] [--save] [--limit N]
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import DATA, emit, needs, parser

YAML = """task: {task}
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {title}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choice0}}}}\\nB. {{{{choice1}}}}\\nC. {{{{choice2}}}}\\nD. {{{{choice3}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""  # noqa: E501


def run_hearth(subjects: list[str], limit: int | None, batch_size: int) -> dict:
    from hearthlm.config import HearthConfig, LLMConfig
    from hearthlm.eval import evaluate, mmlu_tasks

    config = HearthConfig(llm=LLMConfig(backend="transformers"))
    tasks = mmlu_tasks(DATA / "mmlu", subjects, shots=5, limit=limit)
    start = time.perf_counter()
    run = evaluate(tasks, Path(tempfile.mkdtemp()) / "run", config, batch_size=batch_size)
    seconds = time.perf_counter() - start
    predictions = {r["id"]: r["predicted"] for r in run.records}
    return {"run": run, "seconds": seconds, "predictions": predictions}


def run_lm_eval(subjects: list[str], limit: int | None, batch_size: int, model: Path) -> dict:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    folder = Path(tempfile.mkdtemp())
    for subject in subjects:
        (folder / f"hearth_{subject}.yaml").write_text(
            YAML.format(
                task=f"hearth_{subject}",
                test=DATA / "mmlu" / "test" / f"{subject}_test.csv",
                dev=DATA / "mmlu" / "dev" / f"{subject}_dev.csv",
                title=subject.replace("_", " "),
            ),
            encoding="utf-8",
        )
    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model},dtype=float32",
        tasks=[f"hearth_{s}" for s in subjects],
        num_fewshot=5,
        batch_size=batch_size,
        device="cpu",
        limit=limit,
        log_samples=True,
        task_manager=TaskManager(include_path=str(folder)),
    )
    seconds = time.perf_counter() - start
    predictions = {}
    for subject in subjects:
        for sample in results["samples"][f"hearth_{subject}"]:
            scores = [float(r[0]) for r in sample["filtered_resps"]]
            predictions[(subject, sample["doc_id"])] = max(range(4), key=scores.__getitem__)
    return {"results": results["results"], "seconds": seconds, "predictions": predictions}


def perplexity_agreement(model_folder: Path, n: int) -> dict[str, float]:
    """Pooled perplexity of DialogSum summaries: hearthlm's scorer against model(labels=ids)."""
    import torch

    from hearthlm.config import LLMConfig
    from hearthlm.eval.loglik import LoglikScorer

    rows = (DATA / "dialogsum" / "dialogsum.dev.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["dialogue"] for line in rows[:n]]
    scorer = LoglikScorer.load(LLMConfig(backend="transformers"))
    scores = scorer.perplexity(texts)
    hearth = sum(-s.logprob for s in scores) / sum(s.tokens for s in scores)
    model, tokenizer = scorer.backend.model, scorer.backend.tokenizer
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([[tokenizer.eos_token_id, *tokenizer.encode(text)]])
        with torch.no_grad():
            loss = float(model(ids, labels=ids).loss)
        total += loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    plain = total / count
    return {
        "perplexity_texts": n,
        "hearth_perplexity": round(math.exp(hearth), 4),
        "transformers_perplexity": round(math.exp(plain), 4),
        "perplexity_relative_diff": round(abs(math.exp(hearth) / math.exp(plain) - 1), 6),
    }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--limit", type=int, default=None, help="first N questions per subject")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    needs(DATA / "mmlu" / "test", DATA / "mmlu" / "dev", DATA / "dialogsum" / "dialogsum.dev.jsonl")
    limit = args.limit or (10 if args.quick else None)
    subjects = sorted(
        f.name.removesuffix("_test.csv") for f in (DATA / "mmlu" / "test").glob("*_test.csv")
    )
    if args.quick:
        subjects = subjects[:3]
    from hearthlm.llm.hf_backend import cached_safetensors
    from hearthlm.llm.sources import resolve_model

    model_folder = cached_safetensors(resolve_model(None), None)
    hearth = run_hearth(subjects, limit, args.batch_size)
    reference = run_lm_eval(subjects, limit, args.batch_size, model_folder)

    run = hearth["run"]
    questions = len(run.records)
    per_subject, lm_correct, lm_total, agree = {}, 0.0, 0, 0
    for subject in subjects:
        result = reference["results"][f"hearth_{subject}"]
        n = sum(1 for r in run.records if r["task"] == subject)
        lm_acc = float(result["acc,none"])
        lm_correct += lm_acc * n
        lm_total += n
        per_subject[subject] = {
            "hearth": round(run.scores["tasks"][subject]["accuracy"], 4),
            "lm_eval": round(lm_acc, 4),
        }
    # Item-level agreement: hearthlm's item ids are "<subject>/<file>:<line>", rows in file order.
    by_subject: dict[str, list[int]] = {}
    for record in sorted(run.records, key=lambda r: int(r["id"].rpartition(":")[2])):
        by_subject.setdefault(record["task"], []).append(record["predicted"])
    for subject, predicted in by_subject.items():
        for doc_id, value in enumerate(predicted):
            agree += reference["predictions"].get((subject, doc_id)) == value
    hearth_acc = (
        run.scores["accuracy"]
        if len(subjects) > 1
        else run.scores["tasks"][subjects[0]]["accuracy"]
    )
    lm_acc_all = lm_correct / lm_total
    figures = {
        "subjects": len(subjects),
        "questions": questions,
        "shots": 5,
        "hearth_mmlu_accuracy": round(hearth_acc, 4),
        "lm_eval_mmlu_accuracy": round(lm_acc_all, 4),
        "accuracy_diff_points": round(abs(hearth_acc - lm_acc_all) * 100, 3),
        "prediction_agreement": round(agree / questions, 4),
        "hearth_questions_per_s": round(questions / hearth["seconds"], 3),
        "lm_eval_questions_per_s": round(questions / reference["seconds"], 3),
        "hearth_speedup": round(reference["seconds"] / hearth["seconds"], 2),
        "per_subject": per_subject,
        **perplexity_agreement(model_folder, 20 if args.quick else 100),
    }
    emit("bench_eval_agreement", figures, args.save)


if __name__ == "__main__":
    main()
