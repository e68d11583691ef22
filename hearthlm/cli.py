"""``hearth``: the command line, a thin layer over the library.

Every option can also be set in the config file or a ``HEARTH_*`` variable. Library errors are
printed as one red line and exit with status 1, here and nowhere else.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from hearthlm.cli_options import (
    AdapterOpt,
    AnswerOpt,
    BackendOpt,
    CollectionOpt,
    ConfigOpt,
    IndexDirOpt,
    JsonOpt,
    KOpt,
    MaxTokensOpt,
    ModelOpt,
    RepetitionOpt,
    SeedOpt,
    ServerOpt,
    StateOpt,
    SystemOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    chat_model,
    cli_config,
    overrides,
    print_sources,
    stream_text,
)
from hearthlm.config import APIKey, HearthConfig, load_config
from hearthlm.errors import HearthError
from hearthlm.llm.backend import BACKENDS
from hearthlm.llm.sources import list_sources
from hearthlm.plugins import resolve

# Each command imports what it runs inside itself (the retrieval stack, LangChain, the agents),
# and `hearth eval` and `hearth finetune` are imported when they run, so that `hearth --help`
# starts in a fraction of a second (benchmarks/bench_startup.py).


class _LazyGroup(TyperGroup):
    """A sub-app, listed by ``hearth --help`` with its help and imported when it runs."""

    def __init__(self, name: str, target: str, help: str) -> None:
        super().__init__(name=name, help=help, no_args_is_help=True)
        self.target = target

    @functools.cached_property
    def loaded(self) -> TyperGroup:
        group = typer.main.get_command(resolve(self.target))
        assert isinstance(group, TyperGroup), self.target
        group.help = self.help
        return group

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        return self.loaded.make_context(info_name, args, parent=parent, **extra)

    def list_commands(self, ctx: Any) -> list[str]:
        return self.loaded.list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return self.loaded.get_command(ctx, cmd_name)


# `hearth eval` and `hearth finetune`: where each lives, and its help.
SUB_APPS = {
    "eval": (
        "hearthlm.eval.cli:eval_app",
        "Score the model and the chains: MMLU, generation, perplexity, GSM8K, RAG, agents.",
    ),
    "finetune": (
        "hearthlm.finetune.cli:finetune_app",
        "Adapt the local model: supervised methods, reward model, PPO, DPO, and export.",
    ),
}


class _Commands(TyperGroup):
    """``hearth``'s commands: those defined here, then the sub-apps, imported on first use."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, (target, text) in SUB_APPS.items():
            self.add_command(_LazyGroup(name, target, text))


app = typer.Typer(
    cls=_Commands,
    help="hearthlm: chat, agents, fine-tuning and evaluation on a small local model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


@app.command()
def models(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the models hearthlm can find, and where each was found."""
    cfg = cli_config(config)
    rows = list_sources(cfg.llm.cache_dir)
    if cfg.llm.model:
        rows.insert(
            0,
            {
                "name": cfg.llm.model,
                "kind": "configured",
                "path": cfg.llm.model,
                "found_by": "config",
            },
        )
    if as_json:
        print(json.dumps({"models": rows, "backends": sorted(BACKENDS.names())}, indent=2))
        return
    table = Table("name", "kind", "path", "found by", title="Models")
    for row in rows:
        table.add_row(row["name"], row["kind"], row["path"], row["found_by"])
    console.print(table)
    console.print(f"Backends: {', '.join(sorted(BACKENDS.names()))}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    system: SystemOpt = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop sequence (repeatable).")] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they come.")] = True,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    repetition_penalty: RepetitionOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Answer one prompt with the local model."""
    cfg = cli_config(config, **overrides(locals()))
    chat = chat_model(cfg)
    messages = _messages(system, prompt)
    if as_json or not stream:
        reply = chat.invoke(messages, stop=stop)
        if as_json:
            print(
                json.dumps(
                    {
                        "text": reply.content,
                        "usage": reply.usage_metadata,
                        "metadata": reply.response_metadata,
                    }
                )
            )
        else:
            print(reply.content)
        return
    for chunk in chat.stream(messages, stop=stop):
        print(chunk.content, end="", flush=True)
    print()


@app.command()
def chat(
    docs: Annotated[bool, typer.Option("--docs", help="Chat over the indexed documents.")] = False,
    session: Annotated[str | None, typer.Option(help="Resume this chat session (--docs).")] = None,
    collection: CollectionOpt = None,
    server: ServerOpt = None,
    state: StateOpt = None,
    index_dir: IndexDirOpt = None,
    answer: AnswerOpt = None,
    system: SystemOpt = None,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    repetition_penalty: RepetitionOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Interactive chat that streams replies. /reset clears the history, /exit (or EOF) quits."""
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

    cfg = cli_config(config, **overrides(locals()))
    if docs:
        _docs_chat(cfg, session)
        return
    model_ = chat_model(cfg)
    base: list[BaseMessage] = [SystemMessage(system)] if system else []
    history = list(base)
    err_console.print("[dim]hearth chat: /reset clears history, /exit quits[/dim]")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if line.strip() in {"/exit", "/quit"}:
            break
        if line.strip() == "/reset":
            history = list(base)
            continue
        if not line.strip():
            continue
        history.append(HumanMessage(line))
        print("bot> ", end="", flush=True)
        parts = []
        for chunk in model_.stream(history):
            parts.append(chunk.text)
            print(chunk.text, end="", flush=True)
        print()
        history.append(AIMessage("".join(parts)))


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="File or folder to index.")],
    collection: CollectionOpt = None,
    server: ServerOpt = None,
    state: StateOpt = None,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also list library warnings, file by file.")
    ] = False,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Read, split and embed on Ray Data (a local Ray); needs hearthlm\\[scale].",
        ),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Run on this Ray cluster instead ('auto', 'ray://head:10001'); implies --ray."
        ),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Index documents incrementally: unchanged files cost nothing, deleted files are removed."""
    from hearthlm.retrieval import DocumentIndex

    cfg = cli_config(config, **overrides(locals()))
    docs = DocumentIndex(cfg.retrieval)
    report = docs.index_path(path, progress=not as_json, ray=ray_address or ray)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    console.print(
        f"{report.files_indexed} files indexed, {report.files_unchanged} unchanged, "
        f"{report.files_removed} removed; {report.chunks_added} chunks added, "
        f"{report.chunks_removed} removed, {report.embedded} embedded "
        f"({docs.count} in '{cfg.retrieval.collection}') in {report.seconds:.1f}s",
        soft_wrap=True,
    )
    for skipped, reason in report.skipped:  # one line each, also in a log
        console.print(
            f"[yellow]skipped[/yellow] {skipped}: {reason}", highlight=False, soft_wrap=True
        )
    if verbose:
        for source, message in report.warnings:
            console.print(
                f"[dim]warning[/dim] {source}: {message}", highlight=False, soft_wrap=True
            )
    elif report.warnings:
        count, files = len(report.warnings), len({source for source, _ in report.warnings})
        console.print(
            f"[dim]{count} library warning{'s' * (count != 1)} from {files} "
            f"file{'s' * (files != 1)}; --verbose lists them[/dim]"
        )


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: KOpt = None,
    mode: Annotated[str | None, typer.Option(help="hybrid, dense or bm25.")] = None,
    source: Annotated[str | None, typer.Option(help="Only files matching this glob.")] = None,
    collection: CollectionOpt = None,
    server: ServerOpt = None,
    state: StateOpt = None,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Show the chunks a question retrieves, with their sources (no model call)."""
    from hearthlm.retrieval import DocumentIndex, HybridRetriever

    cfg = cli_config(config, **overrides(locals()))
    retriever = HybridRetriever.from_index(
        DocumentIndex(cfg.retrieval, create=False), mode=mode, source_glob=source
    )
    hits = retriever.search(query)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": h.id,
                        "score": h.score,
                        "similarity": h.similarity,
                        "text": h.text,
                        **h.metadata,
                    }
                    for h in hits
                ]
            )
        )
        return
    for rank, hit in enumerate(hits, 1):
        where = hit.metadata["source"] + (
            f" p.{hit.metadata['page']}" if "page" in hit.metadata else ""
        )
        console.print(
            f"[bold]{rank}.[/bold] {where} [dim]{hit.metadata.get('heading', '')} "
            f"score={hit.score:.3f}[/dim]",
            highlight=False,
        )
        console.print(f"   {hit.text[:300]}", highlight=False)


def _print_answer(answer: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer.as_dict()))
        return
    print_sources(console, answer)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question about the indexed documents.")],
    k: KOpt = None,
    collection: CollectionOpt = None,
    server: ServerOpt = None,
    state: StateOpt = None,
    index_dir: IndexDirOpt = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    answer: AnswerOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    repetition_penalty: RepetitionOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Answer a question from the indexed documents, with cited sources.

    The sampling options matter to the answer modes that write (constrained, free); a quote
    answer chooses sentences and ignores them.
    """
    from hearthlm.retrieval import DocumentIndex, build_docs_qa

    cfg = cli_config(config, **overrides(locals()))
    qa = build_docs_qa(cfg, index=DocumentIndex(cfg.retrieval, create=False))
    if as_json:
        _print_answer(qa.invoke(question), True)
        return
    _print_answer(stream_text(qa.stream(question)), False)


@app.command()
def agent(
    question: Annotated[str, typer.Argument(help="The task for the agent.")],
    tools: Annotated[
        str | None, typer.Option(help="Comma-separated: calculator,web_search,docs,…")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Most Thought/Action cycles.")] = None,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    max_new_tokens: MaxTokensOpt = None,
    repetition_penalty: RepetitionOpt = None,
    seed: SeedOpt = None,
) -> None:
    """Run a ReAct agent with tools, showing each step as it happens."""
    from hearthlm.agents.react import AgentResult, ReActAgent
    from hearthlm.agents.tools import build_tools

    cfg = cli_config(config, **overrides(locals()))
    names = [t.strip() for t in tools.split(",") if t.strip()] if tools else None
    limits = cfg.agents
    runner = ReActAgent(
        chat_model(cfg),
        build_tools(cfg, names),
        max_steps=max_steps or limits.max_steps,
        max_seconds=limits.max_seconds,
        max_tokens=limits.max_tokens,
    )
    result: AgentResult | None = None
    for chunk in runner.stream(question):
        result = chunk if result is None else result + chunk
        for step in [] if as_json else chunk.steps:
            console.print(f"[dim]Thought:[/dim] {step.thought}", highlight=False)
            console.print(
                f"[cyan]Action:[/cyan] {step.tool} {json.dumps(step.tool_input)}", highlight=False
            )
            if step.observation:
                console.print(
                    f"[magenta]Observation:[/magenta] {step.observation}", highlight=False
                )
    assert result is not None  # a run always ends with its result chunk
    if as_json:
        print(json.dumps(result.as_dict()))
    elif result.answer is not None:
        console.print(f"[bold green]Answer:[/bold green] {result.answer}", highlight=False)
    else:
        console.print(f"[yellow]Stopped ({result.stopped_reason}) without an answer.[/yellow]")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="A key clients must send; it may use every collection."),
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback address without a key.")
    ] = False,
    parallel: Annotated[int | None, typer.Option(help="Requests decoded together.")] = None,
    config: ConfigOpt = None,
    backend: BackendOpt = None,
    model: ModelOpt = None,
) -> None:
    """Serve the model over HTTP: OpenAI's API, cited answers over collections, agent runs and
    a web chat at http://HOST:PORT/ (the API's own page is /docs)."""
    from hearthlm.serve import run

    options = {"serve.host": host, "serve.port": port, "serve.parallel": parallel}
    if insecure:
        options["serve.insecure"] = True
    cfg = load_config(config, overrides={**options, "llm.backend": backend, "llm.model": model})
    if api_key:
        keys = [*cfg.serve.api_keys, APIKey(key=api_key, name="cli")]
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"api_keys": keys})})
    run(cfg)


config_app = typer.Typer(
    help="The configuration: each setting's value and where it came from.", no_args_is_help=True
)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print every setting as hearthlm resolves it, with its source: the default, the TOML file,
    or a HEARTH_* variable (secrets masked)."""
    from hearthlm.config import config_sources

    cfg, sources = config_sources(config)
    values = cfg.model_dump(mode="json")
    rows = []
    for key, source in sources.items():
        value: Any = values
        for part in key.split("."):
            value = value[part]
        rows.append((key, value, source))
    if as_json:
        print(json.dumps({key: {"value": v, "source": s} for key, v, s in rows}, indent=2))
        return
    table = Table("setting", "value", "source")
    for key, value, source in rows:
        shown = json.dumps(value) if not isinstance(value, str) else value
        table.add_row(key, shown, source if source != "default" else "[dim]default[/dim]")
    console.print(table)


@app.command()
def demo(config: ConfigOpt = None) -> None:
    """Index the example documents and answer two questions with cited sources, offline."""
    from hearthlm.demo import run_demo

    run_demo(cli_config(config), console)


def _docs_chat(cfg: HearthConfig, session: str | None) -> None:
    from hearthlm.retrieval import build_docs_chat

    docs_chat = build_docs_chat(cfg, session_id=session)
    err_console.print(
        f"[dim]session {docs_chat.session_id} (resume with --session "
        f"{docs_chat.session_id}); /exit quits[/dim]"
    )
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        if line.strip() in {"/exit", "/quit"}:
            break
        if not line.strip():
            continue
        print("bot> ", end="", flush=True)
        _print_answer(stream_text(docs_chat.stream(line)), False)


def _messages(system: str | None, prompt: str) -> list[Any]:
    from langchain_core.messages import HumanMessage, SystemMessage

    return ([SystemMessage(system)] if system else []) + [HumanMessage(prompt)]


def main() -> None:
    """Entry point: run the app, turning library errors into one red line and exit status 1."""
    try:
        app()
    except HearthError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # python -m hearthlm.cli: what torchrun and accelerate launch start
    main()
