"""``hearth eval``: mmlu, generate, perplexity, gsm8k, rag, agent, compare."""

from __future__ import annotations

import inspect
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from hearthlm import cli_settings
from hearthlm.cli_options import AdapterOpt, BackendOpt, ConfigOpt, ModelOpt, cli_config
from hearthlm.config import EvalConfig, config_error_from
from hearthlm.errors import EvalError
from hearthlm.eval import evaluate
from hearthlm.eval.compare import compare_runs
from hearthlm.eval.tasks import MultipleChoiceSpec, TaskSpec, load_task, make_task, mmlu_tasks
from hearthlm.eval.tasks.presets import preset
from hearthlm.eval.tasks.spec import spec_class

eval_app = typer.Typer(no_args_is_help=True, add_completion=False)  # help: hearthlm/cli.py
console = Console()

OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Run folder; running again into it resumes. Default eval-runs/…"),
]
TaskOpt = Annotated[
    Path | None,
    typer.Option("--task", help="A YAML or TOML task file; options given beside it win."),
]
PresetOpt = Annotated[str | None, typer.Option(help="A dataset shape's field values.")]


def _config(options: dict[str, Any]) -> Any:
    """The layered configuration, this command's model, eval and ``--set`` options on top."""
    settings = cli_settings.settings(options.get("set_values"))
    given = cli_settings.given(EvalConfig, options)
    settings.update({f"eval.{k}": v for k, v in given.items()})
    models = {k: options.get(k) for k in ("backend", "model", "adapter")}
    return cli_config(options.get("config"), settings, **models)


def _run(suite: str, tasks: list[Any], out: Path | None, cfg: Any) -> None:
    folder = out or cfg.eval.runs / f"{suite}-{datetime.now():%Y%m%d-%H%M%S}"
    settings = cfg.eval
    run = evaluate(
        tasks, folder, cfg, suite=suite, batch_size=settings.batch_size, strict=settings.strict
    )
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


def task_spec(
    kind: str,
    cfg: Any,
    task: Path | None = None,
    preset_name: str | None = None,
    **options: Any,
) -> TaskSpec:
    """The spec of a ``kind`` task, its fields from (lowest first) the kind's defaults,
    ``[eval.tasks.KIND]``, a preset, a task file and the options given.

    Raises:
        EvalError: the file holds another kind, or no data file is named.
        ConfigError: a value that does not fit its field.
    """
    values: dict[str, Any] = dict(cfg.eval.tasks.get(kind, {}))
    if preset_name is not None:
        values.update(preset(kind, preset_name))
    if task is not None:
        spec = load_task(task)
        if spec.kind != kind:
            raise EvalError(f"{task} is a {spec.kind!r} task; this command runs {kind!r} tasks")
        values.update(spec.model_dump(exclude_unset=True, exclude={"kind"}))
    values.update(cli_settings.given(spec_class(kind), options))
    if values.get("data") is None:
        raise EvalError(f"give --task FILE or --data FILE for the {kind} task")
    values.setdefault("name", Path(values["data"]).stem)
    try:
        return TaskSpec(kind=kind, **values)
    except ValidationError as exc:
        raise config_error_from(exc, f"the {kind} task's settings") from None


def _kind_command(kind: str, suite: Any = None, pick_preset: Any = None) -> Any:
    """``hearth eval KIND``: its options are the fields of the kind's spec, and every one is
    also a ``[eval.tasks.KIND]`` setting."""

    def run(
        task: TaskOpt = None,
        out: OutOpt = None,
        preset: PresetOpt = None,
        config: ConfigOpt = None,
        backend: BackendOpt = None,
        model: ModelOpt = None,
        adapter: AdapterOpt = None,
        set_values: cli_settings.SetOpt = None,
        **values: Any,
    ) -> None:
        cfg = _config(locals() | values)
        name = preset or (pick_preset(values) if pick_preset else None)
        spec = task_spec(kind, cfg, task, name, **values)
        _run(suite(spec) if suite else spec.name, [make_task(spec)], out, cfg)

    cls = spec_class(kind)
    first = (cls.__doc__ or kind).strip().splitlines()[0]
    run.__doc__ = f"{first}\n\nEvery option is an \\[eval.tasks.{kind}] setting of hearth.toml too."
    extra = [
        *cli_settings.options(cls, skip=("kind",)),
        *cli_settings.options(EvalConfig, skip=("runs",)),
    ]
    return cli_settings.command(run, extra, name=kind)


def _register_kinds() -> None:
    eval_app.command("generate")(_kind_command("generate"))
    eval_app.command("perplexity")(_kind_command("perplexity"))
    eval_app.command("gsm8k")(_kind_command("gsm8k", suite=lambda s: f"gsm8k-{s.method}"))
    # BEIR queries come with qrels; HotpotQA's rows with their gold answers
    beir = lambda values: "beir" if values.get("qrels") else "hotpotqa"  # noqa: E731
    eval_app.command("rag")(_kind_command("rag", pick_preset=beir))
    eval_app.command("agent")(_kind_command("agent"))


_register_kinds()


def _mmlu(
    data: Annotated[Path | None, typer.Option(help="MMLU folder with test/ and dev/.")] = None,
    subjects: Annotated[str | None, typer.Option(help="Comma-separated; default all.")] = None,
    task: TaskOpt = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    set_values: cli_settings.SetOpt = None,
    **values: Any,
) -> None:
    """Multiple choice in the MMLU format, by log-likelihood; accuracy per subject and
    category. --shots and --score-by are \\[eval.tasks.multiple_choice] settings too."""
    cfg = _config(locals() | values)
    if task is not None:
        tasks = [make_task(task_spec("multiple_choice", cfg, task, **values))]
    elif data is not None:
        chosen = dict(cfg.eval.tasks.get("multiple_choice", {}))
        chosen |= cli_settings.given(MultipleChoiceSpec, values)
        names = [s.strip() for s in subjects.split(",")] if subjects else None
        options = {k: chosen[k] for k in ("shots", "score_by", "limit") if k in chosen}
        tasks = mmlu_tasks(data, names, **options)
    else:
        raise EvalError("give --data MMLU_FOLDER or --task FILE")
    _run("mmlu", tasks, out, cfg)


_MMLU_DEFAULTS = inspect.signature(mmlu_tasks).parameters
eval_app.command("mmlu")(
    cli_settings.command(
        _mmlu,
        [
            *cli_settings.options(
                MultipleChoiceSpec,
                only=("shots", "score_by", "limit"),
                defaults={k: _MMLU_DEFAULTS[k].default for k in ("shots", "score_by")},
                notes={"shots": "Taken from dev/."},
            ),
            *cli_settings.options(EvalConfig, skip=("runs",)),
        ],
        name="mmlu",
    )
)


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
