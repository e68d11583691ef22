"""Every Python example in the documentation (README, ``docs/*.md``, ARCHITECTURE.md) works.

Each example compiles, and every name it imports from hearthlm exists. The examples of a page
then run in order, in one namespace (a later example may use an earlier one's ``chat``), on the
real packaged model, with the index and the chat history under the test's own folder, and print
what the page's comments say they print (``PRINTED``). An example
that needs what a test cannot have (a GPU server, a dataset, minutes of training) says so on the
line above its fence, ``<!-- not run: why -->``, and is still compiled and checked.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "ARCHITECTURE.md"]
FENCE = re.compile(
    r"(?:<!-- not run: (?P<why>[^>]*) -->\n)?```python\n(?P<code>.*?)^```", re.S | re.M
)


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    code: str
    not_run: str | None  # why, for an example the test cannot run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def examples(page: Path) -> list[Example]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        found.append(Example(page, line, match["code"], match["why"]))
    return found


ALL = [example for page in PAGES for example in examples(page)]
# What a page's comments say its examples print, where that is a fact of the packaged model's
# greedy replies rather than a description ("# yes", "# 7006652 final_answer").
PRINTED = {
    "README.md": ["'args': {'city': 'Lisbon'}", "\nyes\n"],
    "getting-started.md": ["'args': {'city': 'Lisbon'}", "\nyes\n", "name='John' age=31"],
    "agents.md": ["7006652 final_answer"],
}
RUN = sorted({e.page for e in ALL if e.not_run is None})


def test_the_documentation_has_examples_and_most_of_them_run():
    assert len(ALL) >= 15 and len(RUN) >= 4
    assert sum(e.not_run is None for e in ALL) > len(ALL) / 2


@pytest.mark.parametrize("example", ALL, ids=lambda e: e.where)
def test_every_example_compiles_and_imports_only_names_that_exist(example: Example):
    tree = ast.parse(example.code, example.where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hearthlm"):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{example.where}: {node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hearthlm"):
                    importlib.import_module(alias.name)
    assert example.not_run is None or example.not_run.strip(), f"{example.where}: say why"


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN, ids=lambda p: p.name)
def test_the_examples_of_each_page_run(page: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # the examples read examples/docs
    monkeypatch.setenv("HEARTH_RETRIEVAL__PATH", str(tmp_path / "index"))
    monkeypatch.setenv("HEARTH_RETRIEVAL__HISTORY_PATH", str(tmp_path / "history.sqlite"))
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for example in examples(page):
        if example.not_run is None:
            exec(compile(example.code, example.where, "exec"), namespace)
    printed = capsys.readouterr().out
    for expected in PRINTED.get(page.name, []):
        assert expected in printed, f"{page.name} says its examples print {expected!r}"
