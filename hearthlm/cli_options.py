"""Options, config plumbing and output shared by the ``hearth`` commands and sub-commands."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hearthlm.config import HearthConfig, load_config

if TYPE_CHECKING:
    from hearthlm.llm.chat_model import ChatHearth

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default ./hearth.toml).")
]
BackendOpt = Annotated[str | None, typer.Option(help="Backend: llamacpp or transformers.")]
ModelOpt = Annotated[str | None, typer.Option(help="GGUF file or Hugging Face model folder.")]
AdapterOpt = Annotated[Path | None, typer.Option(help="PEFT adapter folder to apply.")]
TemperatureOpt = Annotated[float | None, typer.Option(help="0 is greedy.")]
TopPOpt = Annotated[float | None, typer.Option("--top-p", help="Nucleus mass in (0, 1].")]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="0 disables top-k.")]
MaxTokensOpt = Annotated[int | None, typer.Option("--max-new-tokens", help="Reply length cap.")]
RepetitionOpt = Annotated[float | None, typer.Option(help="1 disables it.")]
SeedOpt = Annotated[int | None, typer.Option(help="Sampling seed.")]
SystemOpt = Annotated[str | None, typer.Option(help="System message.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


CollectionOpt = Annotated[str | None, typer.Option(help="Chroma collection name.")]
ServerOpt = Annotated[str | None, typer.Option(help="URL of a `chroma run` server.")]
StateOpt = Annotated[
    str | None,
    typer.Option(help="The index's shared state: an SQLAlchemy URL or an SQLite file."),
]
IndexDirOpt = Annotated[Path | None, typer.Option("--index", help="Index folder (embedded).")]
KOpt = Annotated[int | None, typer.Option("--k", help="Chunks to retrieve.")]
AnswerOpt = Annotated[
    str | None,
    typer.Option(
        help="Answer mode: quote, constrained, free, or auto (quote on the default model)."
    ),
]
# Which config section each command option sets.
SECTIONS = {
    **dict.fromkeys(("backend", "model", "adapter"), "llm"),
    **dict.fromkeys(
        ("temperature", "top_p", "top_k", "max_new_tokens", "repetition_penalty", "seed"),
        "sampling",
    ),
    **dict.fromkeys(("collection", "server", "state", "index_dir", "k", "answer"), "retrieval"),
}
FIELD_NAMES = {"index_dir": "path"}


def overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The config-backed options among a command's arguments."""
    return {k: v for k, v in options.items() if k in SECTIONS}


def cli_config(
    config: Path | None, settings: dict[str, Any] | None = None, **options: Any
) -> HearthConfig:
    """Load the layered config with a command's options on top: ``options`` by their name
    (``model``, ``k``, ...), ``settings`` as dotted keys (``finetune.train.seed``). Options left
    unset (None) do not override lower layers."""
    overrides = dict(settings or {})
    overrides.update({f"{SECTIONS[k]}.{FIELD_NAMES.get(k, k)}": v for k, v in options.items()})
    return load_config(config, overrides=overrides)


def chat_model(cfg: HearthConfig) -> ChatHearth:
    """The :class:`~hearthlm.llm.ChatHearth` that the ``llm`` and ``sampling`` sections of
    ``cfg`` describe (the model loads on first use)."""
    from hearthlm.llm.chat_model import ChatHearth  # LangChain: only when a model is needed

    return ChatHearth.from_config(cfg)


def stream_text(chunks: Iterable[Any], out: Any = None) -> Any:
    """Print the text of a chain's answer chunks as they come; returns their sum."""
    total = None
    for chunk in chunks:
        if out is None:
            print(chunk.text, end="", flush=True)
        else:
            out.print(chunk.text, end="", highlight=False)
        total = chunk if total is None else total + chunk
    print() if out is None else out.print()
    return total


def print_sources(out: Any, answer: Any) -> None:
    """Where an answer came from: each quote with its file, page and character offsets, or each
    cited source; then what a written answer stated without a source."""
    for removed in answer.removed_citations:
        out.print(f"[yellow]removed citation [{removed}]: no such source[/yellow]")
    if answer.replaced is not None:
        out.print(f"[yellow]replaced a written answer: {answer.replaced}[/yellow]", highlight=False)
    elif answer.grounded is False:
        unsupported = ", ".join(answer.unsupported)
        out.print(f"[yellow]not in the cited sources: {unsupported}[/yellow]", highlight=False)
    for quote in answer.quotes:
        page = f", page {quote.page}" if quote.page else ""
        out.print(
            f"  [{quote.source}] {quote.path}{page}, characters {quote.start}-{quote.end}"
            f' [dim]"{quote.display}"[/dim]',
            highlight=False,
        )
    if answer.quotes:
        return
    for cited in answer.citations:
        out.print(
            f"  [{cited.number}] {cited.path}"
            + (f", page {cited.page}" if cited.page else "")
            + (f" ({cited.heading})" if cited.heading else ""),
            highlight=False,
        )
