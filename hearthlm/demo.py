"""``make demo``: the chatbot over documents, on the embedded defaults, offline.

It indexes the example folder shipped in ``examples/docs`` (incrementally: a second run embeds
nothing) and answers three questions, the last of which the documents do not answer. Each answer
shows where it came from: the file, page and characters of every quoted sentence.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from hearthlm.cli_options import print_sources, stream_text
from hearthlm.config import HearthConfig
from hearthlm.llm import ChatHearth
from hearthlm.retrieval import Answer, DocumentIndex, build_docs_qa

EXAMPLE_DOCS = Path(__file__).resolve().parent.parent / "examples" / "docs"
QUESTIONS = (
    "How long is the warranty?",
    "What does error E4 mean?",
    "How do I update the kettle's firmware?",
)


def run_demo(config: HearthConfig, console: Console, docs: Path = EXAMPLE_DOCS) -> list[Answer]:
    """Index ``docs`` and answer :data:`QUESTIONS`; returns the answers."""
    retrieval = config.retrieval.model_copy(
        update={
            "collection": "hearth-demo",
            # the benchmark's questions live beside the documents; they are not documents
            "exclude": [*config.retrieval.exclude, "questions.jsonl"],
        }
    )
    config = config.model_copy(update={"retrieval": retrieval})
    index = DocumentIndex(retrieval)
    report = index.index_path(docs)
    console.print(
        f"[dim]indexed {docs}: {report.files_indexed} new or changed files, "
        f"{report.files_unchanged} unchanged, {report.embedded} chunks embedded[/dim]",
        soft_wrap=True,
    )
    chat = ChatHearth.from_config(config).model_copy(update={"max_new_tokens": 96})
    qa = build_docs_qa(config, chat, index)
    answers = []
    for question in QUESTIONS:
        console.print(f"\n[bold]Q:[/bold] {question}")
        console.print("[bold]A:[/bold] ", end="")
        answer = stream_text(qa.stream(question), console)
        print_sources(console, answer)
        answers.append(answer)
    return answers
