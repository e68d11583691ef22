"""``hearth finetune``: lora, prompt-tuning, full, selective, adapters, ia3, reward, ppo, dpo,
export."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from hearthlm.cli_options import ConfigOpt, ModelOpt, cli_config
from hearthlm.config import config_error_from
from hearthlm.errors import ConfigError, TrainingError
from hearthlm.files import write_atomic
from hearthlm.finetune import DataSpec, TrainConfig, finetune, method_config
from hearthlm.finetune.dpo import train_dpo
from hearthlm.finetune.export import agreement, export_gguf, merge
from hearthlm.finetune.ppo import PPOConfig, PPOTrainer, prompts_from_pairs
from hearthlm.finetune.reward import RewardModel, train_reward_model
from hearthlm.finetune.run import estimate_finetune_memory

finetune_app = typer.Typer(no_args_is_help=True, add_completion=False)  # help: hearthlm/cli.py
console = Console()

DataOpt = Annotated[
    list[Path], typer.Option("--data", help="Training data (JSON/JSONL); repeat to mix datasets.")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder; running again resumes.")]
StepsOpt = Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")]
BatchOpt = Annotated[int, typer.Option(help="Examples per micro-batch.")]
LrOpt = Annotated[
    float | None, typer.Option("--lr", help="Peak learning rate (default: the method's own).")
]
LimitOpt = Annotated[int | None, typer.Option(help="First N rows of each dataset.")]
MaxLenOpt = Annotated[int, typer.Option(help="Tokens per example; longer ones are cut.")]


def _validated(cls: Any, **values: Any) -> Any:
    """Settings from options; a bad value is one ConfigError line naming the option."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise config_error_from(exc, "command-line options") from exc


def _llm(config: Path | None, model: str | None) -> Any:
    return cli_config(config, model=model).llm


def _supervised(method: str) -> Any:
    # Not at the top: `hearth` starts without the training stack (methods.py is torch-free).
    from hearthlm.finetune.methods import method_class

    def command(
        data: DataOpt,
        out: OutOpt,
        template: Annotated[str | None, typer.Option(help="Prompt template over fields.")] = None,
        prompt_field: Annotated[str, typer.Option(help="Column of the prompt.")] = "prompt",
        completion_field: Annotated[str, typer.Option(help="Column of the answer.")] = "completion",
        system: Annotated[str | None, typer.Option(help="System message, every example.")] = None,
        weights: Annotated[str | None, typer.Option(help="Mixture weights, e.g. 0.8,0.2.")] = None,
        mix_total: Annotated[int | None, typer.Option(help="Examples in the mixture.")] = None,
        max_length: MaxLenOpt = 512,
        validation: Annotated[float, typer.Option(help="Held-out share.")] = 0.1,
        pack: Annotated[bool, typer.Option(help="Pack examples into full blocks.")] = False,
        epochs: Annotated[float, typer.Option(help="Passes over the data.")] = 1.0,
        max_steps: StepsOpt = None,
        batch_size: BatchOpt = 4,
        grad_accum: Annotated[int, typer.Option(help="Micro-batches per step.")] = 1,
        lr: LrOpt = None,
        warmup: Annotated[float, typer.Option(help="Warmup share of the steps.")] = 0.05,
        eval_every: Annotated[int, typer.Option(help="Validate every N steps.")] = 50,
        save_every: Annotated[int, typer.Option(help="Checkpoint every N steps.")] = 50,
        early_stopping: Annotated[int | None, typer.Option(help="Patience in evals.")] = None,
        bf16: Annotated[str, typer.Option(help="auto, on or off.")] = "auto",
        activation_checkpointing: Annotated[
            bool, typer.Option(help="Recompute activations: less memory, slower steps.")
        ] = False,
        seed: Annotated[int, typer.Option(help="Seed for data order and init.")] = 0,
        estimate_memory: Annotated[
            bool, typer.Option(help="Print the peak memory by component and exit; no training.")
        ] = False,
        profile_memory: Annotated[
            bool, typer.Option(help="Write torch.profiler's memory timeline (slow).")
        ] = False,
        measure_memory: Annotated[
            bool, typer.Option(help="Measure the training peak by component (resets the peak).")
        ] = False,
        return_freed_memory: Annotated[
            bool, typer.Option(help="glibc: give the forward pass's buffers back (lower peak).")
        ] = False,
        rank: Annotated[int | None, typer.Option(help=_default("LoRA rank", "rank"))] = None,
        alpha: Annotated[int | None, typer.Option(help=_default("LoRA alpha", "alpha"))] = None,
        dropout: Annotated[
            float | None, typer.Option(help=_default("LoRA dropout", "dropout"))
        ] = None,
        target_modules: Annotated[str | None, typer.Option(help="LoRA modules, comma-sep.")] = None,
        virtual_tokens: Annotated[
            int | None, typer.Option(help=_default("Soft prompt length", "virtual_tokens"))
        ] = None,
        init_text: Annotated[str | None, typer.Option(help="Soft prompt init text.")] = None,
        trainable: Annotated[str | None, typer.Option(help="Selective: regexes.")] = None,
        bottleneck: Annotated[
            int | None, typer.Option(help=_default("Adapter bottleneck width", "bottleneck"))
        ] = None,
        limit: LimitOpt = None,
        config: ConfigOpt = None,
        model: ModelOpt = None,
    ) -> None:

        shares = [float(w) for w in weights.split(",")] if weights else [1.0] * len(data)
        if len(shares) != len(data):
            raise TrainingError(f"{len(data)} datasets but {len(shares)} weights")
        specs = [
            DataSpec(
                path=path,
                template=template,
                prompt_field=prompt_field,
                completion_field=completion_field,
                system=system,
                weight=w,
                limit=limit,
            )
            for path, w in zip(data, shares, strict=True)
        ]
        method_options: dict[str, Any] = {
            "rank": rank,
            "alpha": alpha,
            "dropout": dropout,
            "virtual_tokens": virtual_tokens,
            "init_text": init_text,
            "bottleneck": bottleneck,
        }
        if target_modules:
            method_options["target_modules"] = target_modules.split(",")
        if trainable:
            method_options["trainable"] = trainable.split(",")
        method_options = {k: v for k, v in method_options.items() if v is not None}
        _refuse_foreign_options(method, method_options)
        train = _validated(
            TrainConfig,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            learning_rate=lr,  # None: the method's own default, set by the library
            warmup_ratio=warmup,
            eval_every=eval_every,
            save_every=save_every,
            early_stopping=early_stopping,
            bf16=bf16,
            activation_checkpointing=activation_checkpointing,
            profile_memory=profile_memory,
            measure_memory=measure_memory,
            return_freed_memory=return_freed_memory,
            seed=seed,
        )
        options: dict[str, Any] = {
            "method": method_config(method, **method_options),
            "train": train,
            "llm": _llm(config, model),
            "max_length": max_length,
            "validation": validation,
            "pack": pack,
            "mix_total": mix_total,
            "log": console.print,
        }
        if estimate_memory:
            peak = estimate_finetune_memory(specs, **options)
            console.print(peak.table(f"estimated training peak ({method}, batch {batch_size}):"))
            return
        run = finetune(specs, out, **options)
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

    command.__doc__ = (method_class(method).__doc__ or method).strip().splitlines()[0]
    return command


def _default(text: str, field: str) -> str:
    """An option's help with the library's default, from the first method that declares
    ``field`` (the default lives in the method's config, not here)."""
    default = _method_defaults().get(field)
    return f"{text} (default {default})." if default is not None else f"{text}."


@functools.cache
def _method_defaults() -> dict[str, Any]:
    """Each method option's default, read once for every command's help."""
    from hearthlm.finetune.methods import available_methods

    defaults: dict[str, Any] = {}
    for config in available_methods().values():
        for name, field in config.model_fields.items():
            defaults.setdefault(name, field.default)
    return defaults


def _refuse_foreign_options(method: str, given: dict[str, Any]) -> None:
    """An option the method does not take is an error naming the methods that do; it used to
    be dropped without a word (``hearth finetune full --rank 4`` trained in full)."""
    from hearthlm.finetune.methods import available_methods, method_class

    own = method_class(method).model_fields
    for name in given:
        if name not in own:
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


@finetune_app.command()
def reward(
    data: Annotated[Path, typer.Option(help="Preference pairs (JSONL chosen/rejected).")],
    out: OutOpt,
    max_steps: StepsOpt = None,
    epochs: Annotated[float, typer.Option(help="Passes over the pairs.")] = 1.0,
    batch_size: BatchOpt = 4,
    lr: LrOpt = None,
    max_length: MaxLenOpt = 384,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
) -> None:
    """Train a reward model on pairwise preferences; reports pairwise accuracy."""
    train = _validated(
        TrainConfig,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=lr,  # None: the reward model's default, set by the library
    )
    run = train_reward_model(
        data,
        out,
        llm=_llm(config, model),
        train=train,
        max_length=max_length,
        limit=limit,
        log=console.print,
    )
    console.print(f"[green]done:[/green] validation pairwise accuracy {run.validation_accuracy}")
    console.print(f"Saved the reward model to {out}", highlight=False)


@finetune_app.command()
def ppo(
    reward_model: Annotated[Path, typer.Option("--reward", help="A `finetune reward` folder.")],
    data: Annotated[Path, typer.Option(help="Prompts: preference pairs or JSONL 'prompt'.")],
    out: OutOpt,
    iterations: Annotated[int, typer.Option(help="Sample-score-update rounds.")] = 20,
    prompts_per_iteration: Annotated[int, typer.Option(help="Replies sampled per round.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Reply length cap.")] = 32,
    target_kl: Annotated[float, typer.Option(help="Target KL to the reference.")] = 4.0,
    max_update_kl: Annotated[
        float, typer.Option(help="KL bound of one round's update; it stops there.")
    ] = 0.05,
    bf16: Annotated[str, typer.Option(help="auto, on or off.")] = "auto",
    lr: LrOpt = None,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
) -> None:
    """PPO against a reward model, with a frozen reference and a KL penalty."""
    llm = _llm(config, model)
    prompts = prompts_from_pairs(data, limit)
    settings = _validated(
        PPOConfig,
        iterations=iterations,
        prompts_per_iteration=prompts_per_iteration,
        max_new_tokens=max_new_tokens,
        target_kl=target_kl,
        max_update_kl=max_update_kl,
        bf16=bf16,
        **({"learning_rate": lr} if lr else {}),  # else PPOConfig's default
    )
    trainer = PPOTrainer(RewardModel.load(reward_model, llm), settings, llm=llm)
    console.print(str(trainer.parameters))
    result = trainer.train(prompts, out)
    last = result.history[-1]
    console.print(
        f"[green]done:[/green] reward {last['reward']:.3f}, "
        f"KL to reference {last['kl_to_reference']:.3f}"
    )
    console.print(f"Saved {out / 'adapter'}; curve {out / 'ppo.png'}", highlight=False)


@finetune_app.command()
def dpo(
    data: Annotated[Path, typer.Option(help="Preference pairs (JSONL chosen/rejected).")],
    out: OutOpt,
    beta: Annotated[float, typer.Option(help="DPO temperature.")] = 0.1,
    max_steps: StepsOpt = None,
    epochs: Annotated[float, typer.Option(help="Passes over the pairs.")] = 1.0,
    batch_size: BatchOpt = 4,
    lr: LrOpt = None,
    max_length: MaxLenOpt = 384,
    limit: LimitOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
) -> None:
    """Direct preference optimisation (TRL) of a LoRA adapter."""
    train = _validated(
        TrainConfig,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=lr,  # None: DPO's default, set by the library
    )
    train_dpo(
        data,
        out,
        llm=_llm(config, model),
        train=train,
        beta=beta,
        max_length=max_length,
        limit=limit,
    )
    console.print(f"Saved {out / 'adapter'}; loss curve {out / 'loss.png'}", highlight=False)


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
    llm = _llm(config, model)
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
