"""``hearth eval``: mmlu, generate, perplexity, gsm8k, rag, agent, compare."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from hearthlm.cli_options import AdapterOpt, BackendOpt, ConfigOpt, ModelOpt, cli_config, overrides
from hearthlm.errors import EvalError
from hearthlm.eval import evaluate
from hearthlm.eval.compare import compare_runs
from hearthlm.eval.tasks import DIALOGSUM_TEMPLATE, TaskSpec, load_task, make_task, mmlu_tasks

eval_app = typer.Typer(no_args_is_help=True, add_completion=False)  # help: hearthlm/cli.py
console = Console()

OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Run folder; running again into it resumes. Default eval-runs/…"),
]
BatchOpt = Annotated[int, typer.Option(help="Log-likelihood batch size (scores do not move).")]
StrictOpt = Annotated[bool, typer.Option(help="Stop at the first malformed row.")]
LimitOpt = Annotated[int | None, typer.Option(help="First N items (per subject/task).")]
TaskOpt = Annotated[Path | None, typer.Option("--task", help="A YAML or TOML task file.")]
DataOpt = Annotated[Path | None, typer.Option(help="Data file (CSV, JSONL or JSON).")]
TemplateOpt = Annotated[str | None, typer.Option(help="Prompt template, e.g. 'Q: {question}'.")]


def _run(
    suite: str,
    tasks: list[Any],
    out: Path | None,
    options: dict[str, Any],  # the command's locals(): config, backend, model, adapter
    batch_size: int = 8,
    strict: bool = False,
) -> None:
    model_options = {k: options.get(k) for k in ("backend", "model", "adapter")}
    cfg = cli_config(options.get("config"), **overrides(model_options))
    folder = out or Path("eval-runs") / f"{suite}-{datetime.now():%Y%m%d-%H%M%S}"
    run = evaluate(tasks, folder, cfg, suite=suite, batch_size=batch_size, strict=strict)
    _print_scores(run.scores)
    if run.bad_rows:
        console.print(f"[yellow]{len(run.bad_rows)} malformed row(s) skipped:[/yellow]")
        for row in run.bad_rows[:10]:
            console.print(f"  {row}", highlight=False)
    console.print(f"Saved {run.results_path} and {folder / 'report.md'}", highlight=False)


def _print_scores(scores: dict[str, Any]) -> None:
    if "accuracy" in scores:
        console.print(f"[bold]accuracy {scores['accuracy']:.4f}[/bold] (pooled over items)")
    for group, value in scores.get("groups", {}).items():
        console.print(f"  {group}: {value:.4f}")
    table = Table("task", "metric", "value")
    for task, values in scores["tasks"].items():
        for metric, value in values.items():
            table.add_row(task, metric, f"{value:.4f}")
    console.print(table)


def _spec(task: Path | None, kind: str, **fields: Any) -> Any:
    """A task from ``--task`` (it must be of ``kind``) or from the command's options."""
    if task is not None:
        spec = load_task(task)
        if spec.kind != kind:
            raise EvalError(f"{task} is a {spec.kind!r} task; this command runs {kind!r} tasks")
        if fields.get("limit"):
            spec = spec.model_copy(update={"limit": fields["limit"]})
        return make_task(spec)
    if fields.get("data") is None:
        raise EvalError(f"give --task FILE or --data FILE for the {kind} task")
    values = {k: v for k, v in fields.items() if v is not None}
    values.setdefault("name", Path(values["data"]).stem)
    return make_task(TaskSpec(kind=kind, **values))


@eval_app.command()
def mmlu(
    data: Annotated[Path | None, typer.Option(help="MMLU folder with test/ and dev/.")] = None,
    subjects: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    shots: Annotated[int, typer.Option(help="Worked examples from dev/.")] = 5,
    score_by: Annotated[str, typer.Option(help="letter or text (the choice itself).")] = "letter",
    task: TaskOpt = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    batch_size: BatchOpt = 8,
    strict: StrictOpt = False,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Multiple choice in the MMLU format, by log-likelihood; accuracy per subject and category."""
    if task is not None:
        tasks = [_spec(task, "multiple_choice", limit=limit)]
    elif data is not None:
        if score_by not in ("letter", "text"):
            raise EvalError(f"--score-by is 'letter' or 'text', not {score_by!r}")
        names = [s.strip() for s in subjects.split(",")] if subjects else None
        tasks = mmlu_tasks(data, names, shots, score_by, limit)  # type: ignore[arg-type]
    else:
        raise EvalError("give --data MMLU_FOLDER or --task FILE")
    _run("mmlu", tasks, out, locals(), batch_size, strict)


@eval_app.command()
def generate(
    task: TaskOpt = None,
    data: DataOpt = None,
    template: TemplateOpt = None,
    reference: Annotated[str | None, typer.Option(help="Column of the reference.")] = None,
    metrics: Annotated[str | None, typer.Option(help="rouge,bleu,chrf,exact_match,f1")] = None,
    preset: Annotated[str | None, typer.Option(help="dialogsum: its template and ROUGE.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Reply length cap.")] = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    strict: StrictOpt = False,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Generation scored against references: summarisation (ROUGE) or QA (EM and F1)."""
    fields: dict[str, Any] = {
        "data": data,
        "template": template,
        "reference": reference,
        "max_new_tokens": max_new_tokens,
        "limit": limit,
    }
    if preset == "dialogsum":
        fields = {
            "template": DIALOGSUM_TEMPLATE,
            "reference": "summary",
            "metrics": ["rouge"],
            "id": "fname",
            "max_new_tokens": 96,
            **{k: v for k, v in fields.items() if v},
        }
    elif preset is not None:
        raise EvalError(f"unknown preset {preset!r}; available: dialogsum")
    if metrics:
        fields["metrics"] = [m.strip() for m in metrics.split(",")]
    built = _spec(task, "generate", **fields)
    _run(built.name, [built], out, locals(), strict=strict)


@eval_app.command()
def perplexity(
    task: TaskOpt = None,
    data: DataOpt = None,
    template: TemplateOpt = None,
    completion: Annotated[
        str | None, typer.Option(help="Column of the completion; the template is its prompt.")
    ] = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    batch_size: BatchOpt = 8,
    strict: StrictOpt = False,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Cross-entropy and perplexity of texts, or of completions given prompts."""
    built = _spec(
        task,
        "perplexity",
        data=data,
        template=template or "{text}",
        completion=completion,
        limit=limit,
    )
    _run(built.name, [built], out, locals(), batch_size, strict)


@eval_app.command()
def gsm8k(
    data: DataOpt = None,
    method: Annotated[str, typer.Option(help="direct, cot or pal.")] = "cot",
    fewshot: Annotated[Path | None, typer.Option(help="GSM8K train.jsonl for exemplars.")] = None,
    shots: Annotated[int, typer.Option(help="Exemplars.")] = 4,
    task: TaskOpt = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    strict: StrictOpt = False,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Grade-school maths with numeric answer extraction."""
    built = _spec(
        task,
        "gsm8k",
        data=data,
        method=method,
        fewshot=fewshot,
        shots=shots if fewshot else 0,
        limit=limit,
        reference="answer",
    )
    _run(f"gsm8k-{method}", [built], out, locals(), strict=strict)


@eval_app.command()
def rag(
    task: TaskOpt = None,
    data: Annotated[Path | None, typer.Option(help="Queries (BEIR) or HotpotQA rows.")] = None,
    corpus: Annotated[Path | None, typer.Option(help="BEIR corpus.jsonl.")] = None,
    qrels: Annotated[Path | None, typer.Option(help="BEIR qrels .tsv.")] = None,
    k: Annotated[int, typer.Option("--k", help="Cut-off for recall, MRR and nDCG.")] = 10,
    template: TemplateOpt = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    strict: StrictOpt = False,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Retrieval (recall@k, MRR, nDCG@k) and, with gold answers, answers and citations."""
    fields: dict[str, Any] = {
        "data": data,
        "corpus": corpus,
        "qrels": qrels,
        "k": k,
        "limit": limit,
        "template": template,
    }
    if qrels is not None:  # BEIR queries
        fields.update(template=template or "{text}", id="_id")
    else:  # HotpotQA rows
        fields.update(
            template=template or "{question_text}", reference="answers_objects", id="question_id"
        )
    built = _spec(task, "rag", **fields)
    _run(built.name, [built], out, locals(), strict=strict)


@eval_app.command()
def agent(
    task: TaskOpt = None,
    data: DataOpt = None,
    tools: Annotated[str, typer.Option(help="Comma-separated tool names.")] = "calculator",
    max_steps: Annotated[int, typer.Option(help="Most Thought/Action cycles.")] = 6,
    template: TemplateOpt = None,
    limit: LimitOpt = None,
    out: OutOpt = None,
    strict: StrictOpt = False,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
) -> None:
    """Task success, valid-action rate and steps of the ReAct agent over a question set."""
    built = _spec(
        task,
        "agent",
        data=data,
        template=template,
        tools=[t.strip() for t in tools.split(",")],
        max_steps=max_steps,
        limit=limit,
    )
    _run(built.name, [built], out, locals(), strict=strict)


@eval_app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or results.json files).")],
    chart: Annotated[Path, typer.Option(help="Where to save the PNG chart.")] = Path(
        "eval-compare.png"
    ),
) -> None:
    """A table of every score across runs, and a bar chart of base against adapted models."""
    result = compare_runs(runs, chart)
    table = Table("score", *result.labels, title="hearth eval compare")
    for key, values in result.rows.items():
        table.add_row(key, *("" if v is None else f"{v:.4f}" for v in values))
    console.print(table)
    console.print(f"Chart saved to {chart}", highlight=False)
