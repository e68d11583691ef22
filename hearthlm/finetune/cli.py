"""``hearth finetune``: lora, prompt-tuning, full, selective, adapters, ia3, reward, ppo, dpo,
export."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from hearthlm import cli_settings
from hearthlm.cli_options import ConfigOpt, ModelOpt, cli_config
from hearthlm.config import (
    DataDefaults,
    DPOSettings,
    FinetuneConfig,
    PairTraining,
    PPOConfig,
    TrainConfig,
    config_error_from,
)
from hearthlm.errors import ConfigError, TrainingError
from hearthlm.files import write_atomic
from hearthlm.finetune import DataSpec, finetune, method_config
from hearthlm.finetune.dpo import train_dpo
from hearthlm.finetune.export import agreement, export_gguf, merge
from hearthlm.finetune.ppo import PPOTrainer, prompts_from_pairs
from hearthlm.finetune.reward import RewardModel, train_reward_model
from hearthlm.finetune.run import estimate_finetune_memory

finetune_app = typer.Typer(no_args_is_help=True, add_completion=False)  # help: hearthlm/cli.py
console = Console()

DataOpt = Annotated[
    list[Path], typer.Option("--data", help="Training data (JSON/JSONL); repeat to mix datasets.")
]
PairsOpt = Annotated[Path, typer.Option("--data", help="Preference pairs (JSONL chosen/rejected).")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder; running again resumes.")]
LimitOpt = Annotated[int | None, typer.Option(help="First N rows of each dataset.")]
ProcessesOpt = Annotated[
    int | None,
    typer.Option(
        "--num-processes",
        help="Train as N processes on this machine (one per GPU, or sharing the CPU cores), as "
        "torchrun --nproc-per-node N would; the global batch is batch size x grad accum x N.",
    ),
]


def _launched(processes: int | None) -> bool:
    """Whether this command was started as ``processes`` processes (and they have finished);
    ``False`` when this process trains (see :mod:`hearthlm.finetune.launch`)."""
    from hearthlm.finetune.launch import launch, rank

    if launch(processes, sys.argv[1:]):
        return True
    console.quiet = rank() != 0  # one report per run, from rank 0
    return False


def _validated(cls: Any, **values: Any) -> Any:
    """Settings from options; a bad value is one ConfigError line naming the option."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise config_error_from(exc, "command-line options") from exc


def _config(
    config: Path | None, model: str | None, set_values: list[str] | None, **sections: Any
) -> Any:
    """The layered configuration with this command's options on top: ``sections`` maps a
    section (``finetune__train`` for ``[finetune.train]``) to the options given for it."""
    settings = cli_settings.settings(set_values)
    for section, values in sections.items():
        dotted = section.replace("__", ".")
        settings.update({f"{dotted}.{key}": value for key, value in values.items()})
    return cli_config(config, settings, model=model)


def _method_options() -> list[Any]:
    """Every training method's own settings as options (a plugin's too), each saying which
    methods take it."""
    from hearthlm.finetune.methods import available_methods

    takers: dict[str, list[str]] = {}
    for name, config in available_methods().items():
        for field in config.model_fields:
            if field != "method":
                takers.setdefault(field, []).append(name)
    notes = {f: f"Applies to: {', '.join(m)}." for f, m in takers.items()}
    return [
        option
        for config in available_methods().values()
        for option in cli_settings.options(config, skip=("method",), notes=notes)
    ]


def _supervised(method: str) -> Any:
    # Not at the top: `hearth` starts without the training stack (methods.py is torch-free).
    from hearthlm.finetune.methods import available_methods, method_class

    def run(
        data: DataOpt,
        out: OutOpt,
        weights: Annotated[str | None, typer.Option(help="Mixture weights, e.g. 0.8,0.2.")] = None,
        limit: LimitOpt = None,
        estimate_memory: Annotated[
            bool, typer.Option(help="Print the peak memory by component and exit; no training.")
        ] = False,
        num_processes: ProcessesOpt = None,
        config: ConfigOpt = None,
        model: ModelOpt = None,
        set_values: cli_settings.SetOpt = None,
        **values: Any,
    ) -> None:
        if _launched(num_processes):
            return
        own = method_class(method)
        fields = {f for c in available_methods().values() for f in c.model_fields} - {"method"}
        _refuse_foreign_options(method, {k: v for k, v in values.items() if k in fields})
        cfg = _config(
            config,
            model,
            set_values,
            finetune__train=cli_settings.given(TrainConfig, values),
            finetune__data=cli_settings.given(DataDefaults, values),
            finetune=cli_settings.given(FinetuneConfig, values),
            **{f"finetune__methods__{method}": cli_settings.given(own, values)},
        )
        settings = cfg.finetune
        shares = [float(w) for w in weights.split(",")] if weights else [1.0] * len(data)
        if len(shares) != len(data):
            raise TrainingError(f"{len(data)} datasets but {len(shares)} weights")
        reading = settings.data.model_dump()
        specs = [
            _validated(DataSpec, path=path, weight=w, limit=limit, **reading)
            for path, w in zip(data, shares, strict=True)
        ]
        options: dict[str, Any] = {
            "method": method_config(method, **settings.methods.get(method, {})),
            "train": settings.train,
            "llm": cfg.llm,
            "max_length": settings.max_length,
            "validation": settings.validation,
            "pack": settings.pack,
            "mix_total": settings.mix_total,
            "log": console.print,
        }
        if estimate_memory:
            _print_estimate(estimate_finetune_memory(specs, **options), method, settings.train)
            return
        _report(finetune(specs, out, **options), out)

    extra = [
        *cli_settings.options(TrainConfig),
        *cli_settings.options(DataDefaults),
        *cli_settings.options(FinetuneConfig),
        *_method_options(),
    ]
    first = (method_class(method).__doc__ or method).strip().splitlines()[0]
    run.__doc__ = f"{first}\n\nEvery option is a \\[finetune] setting of hearth.toml too."
    return cli_settings.command(run, extra, name=method)


def _print_estimate(peak: Any, method: str, train: TrainConfig) -> None:
    """The estimated peak by component; on several processes, each process's, by rank 0."""
    from hearthlm.finetune.distributed import Cluster

    cluster = Cluster.from_environment()
    title = f"estimated training peak ({method}, batch {train.batch_size}"
    if not cluster.distributed:
        console.print(peak.table(f"{title}):"))
        return
    for rank, own in enumerate(cluster.gather(peak)):
        if cluster.is_main:
            console.print(own.table(f"{title} per process, process {rank}):"))


def _report(run: Any, out: Path) -> None:
    result = run.result
    console.print(
        f"[green]done:[/green] {result.steps} steps, train loss {result.train_loss:.4f}, "
        f"validation loss {result.validation_loss}, {result.tokens_per_s:.0f} tokens/s"
    )
    use = "--model" if run.output.name == "model" else "--adapter"
    console.print(f"Saved {run.output}; use it with {use} {run.output}", highlight=False)
    console.print(f"Loss curve: {out / 'loss.png'}; metrics: {out / 'metrics.jsonl'}")
    if result.memory.get("measured"):
        console.print(
            f"Training peak: {result.memory['peak_mb']:,.0f} MB "
            f"(by component in {out / 'hearth_finetune.json'})",
            highlight=False,
        )


def _refuse_foreign_options(method: str, given: dict[str, Any]) -> None:
    """An option the method does not take is an error naming the methods that do; it used to
    be dropped without a word (``hearth finetune full --rank 4`` trained in full)."""
    from hearthlm.finetune.methods import available_methods, method_class

    own = method_class(method).model_fields
    for name, value in given.items():
        if value is not None and name not in own:
            takers = [m for m, c in available_methods().items() if name in c.model_fields]
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} does not apply to 'hearth finetune {method}'; it applies to: "
                f"{', '.join(takers)}. Leave it out, or choose one of those methods."
            )


def _register_methods() -> None:
    """One sub-command per registered training method, plugins included."""
    from hearthlm.finetune.methods import available_methods

    for name in available_methods():
        finetune_app.command(name)(_supervised(name))


_register_methods()


def _reward(
    data: PairsOpt,
    out: OutOpt,
    limit: LimitOpt = None,
    num_processes: ProcessesOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    set_values: cli_settings.SetOpt = None,
    **values: Any,
) -> None:
    """Train a reward model on pairwise preferences; reports pairwise accuracy.

    Every option is a \\[finetune] setting of hearth.toml too (\\[finetune.train],
    \\[finetune.reward])."""
    if _launched(num_processes):
        return
    cfg = _config(
        config,
        model,
        set_values,
        finetune__train=cli_settings.given(TrainConfig, values),
        finetune__reward=cli_settings.given(PairTraining, values),
    )
    settings = cfg.finetune
    run = train_reward_model(
        data,
        out,
        llm=cfg.llm,
        train=settings.train,
        max_length=settings.reward.max_length,
        validation=settings.reward.validation,
        limit=limit,
        log=console.print,
    )
    console.print(f"[green]done:[/green] validation pairwise accuracy {run.validation_accuracy}")
    console.print(f"Saved the reward model to {out}", highlight=False)


def _ppo(
    reward_model: Annotated[Path, typer.Option("--reward", help="A `finetune reward` folder.")],
    data: Annotated[Path, typer.Option(help="Prompts: preference pairs or JSONL 'prompt'.")],
    out: OutOpt,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    set_values: cli_settings.SetOpt = None,
    **values: Any,
) -> None:
    """PPO against a reward model, with a frozen reference and a KL penalty.

    Every option is a \\[finetune.ppo] setting of hearth.toml too."""
    cfg = _config(config, model, set_values, finetune__ppo=cli_settings.given(PPOConfig, values))
    prompts = prompts_from_pairs(data, limit)
    llm = cfg.llm
    trainer = PPOTrainer(RewardModel.load(reward_model, llm), cfg.finetune.ppo, llm=llm)
    console.print(str(trainer.parameters))
    result = trainer.train(prompts, out)
    last = result.history[-1]
    console.print(
        f"[green]done:[/green] reward {last['reward']:.3f}, "
        f"KL to reference {last['kl_to_reference']:.3f}"
    )
    console.print(f"Saved {out / 'adapter'}; curve {out / 'ppo.png'}", highlight=False)


def _dpo(
    data: PairsOpt,
    out: OutOpt,
    limit: LimitOpt = None,
    num_processes: ProcessesOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    set_values: cli_settings.SetOpt = None,
    **values: Any,
) -> None:
    """Direct preference optimisation (TRL) of a LoRA adapter.

    Every option is a \\[finetune] setting of hearth.toml too (\\[finetune.train],
    \\[finetune.dpo])."""
    if _launched(num_processes):
        return
    cfg = _config(
        config,
        model,
        set_values,
        finetune__train=cli_settings.given(TrainConfig, values),
        finetune__dpo=cli_settings.given(DPOSettings, values),
    )
    settings = cfg.finetune
    train_dpo(
        data,
        out,
        llm=cfg.llm,
        train=settings.train,
        beta=settings.dpo.beta,
        max_length=settings.dpo.max_length,
        validation=settings.dpo.validation,
        limit=limit,
    )
    console.print(f"Saved {out / 'adapter'}; loss curve {out / 'loss.png'}", highlight=False)


finetune_app.command("reward")(
    cli_settings.command(
        _reward,
        [*cli_settings.options(TrainConfig), *cli_settings.options(PairTraining)],
        name="reward",
    )
)
finetune_app.command("ppo")(cli_settings.command(_ppo, cli_settings.options(PPOConfig), "ppo"))
finetune_app.command("dpo")(
    cli_settings.command(
        _dpo, [*cli_settings.options(TrainConfig), *cli_settings.options(DPOSettings)], "dpo"
    )
)


@finetune_app.command()
def export(
    trained: Annotated[Path, typer.Argument(help="A finetune output, adapter or model folder.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder or .gguf file.")],
    to: Annotated[str, typer.Option("--format", help="merged, gguf-f16 or gguf-q8_0.")] = "merged",
    check: Annotated[bool, typer.Option(help="Compare greedy replies after a GGUF export.")] = True,
    config: ConfigOpt = None,
    model: ModelOpt = None,
) -> None:
    """Merge the adapter into a full model folder, or write a merged GGUF for llama.cpp."""
    llm = cli_config(config, model=model).llm
    if to == "merged":
        merge(trained, out, llm)
        console.print(f"Saved {out}; use it with --model {out}", highlight=False)
        return
    if to not in ("gguf-f16", "gguf-q8_0"):
        raise TrainingError(f"--format is merged, gguf-f16 or gguf-q8_0, not {to!r}")
    export_gguf(trained, out, gguf_type=to.removeprefix("gguf-"), llm=llm)  # type: ignore[arg-type]
    console.print(f"Saved {out}; use it with --backend llamacpp --model {out}", highlight=False)
    if check:
        report = agreement(out, trained, llm=llm)
        console.print(
            f"greedy agreement with transformers: {report['identical']}/{report['prompts']} "
            f"replies identical, {report['mean_common_prefix_tokens']:.1f} common tokens on "
            "average"
        )
        write_atomic(out.with_suffix(".agreement.json"), json.dumps(report, indent=2))
