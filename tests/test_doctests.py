"""Every example in hearthlm's docstrings runs, on the real packaged model where it uses one,
and shows what it prints. The few marked ``+SKIP`` need what a test cannot have here: a
remote server, a dataset, a training run or a server that runs until stopped."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import hearthlm

pytestmark = pytest.mark.slow


def test_every_docstring_example_runs_and_shows_what_it_prints(tmp_path, monkeypatch):
    from hearthlm.llm import ChatHearth

    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    finder = doctest.DocTestFinder()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    runner = doctest.DocTestRunner(optionflags=flags)
    # the chat model a method's example calls, as its class's example makes it
    extra = {"Path": Path, "ChatHearth": ChatHearth, "chat": ChatHearth(max_new_tokens=16)}
    failed, attempted = [], 0
    for info in pkgutil.walk_packages(hearthlm.__path__, "hearthlm."):
        module = importlib.import_module(info.name)
        for test in finder.find(module, info.name, module=module, extraglobs=extra):
            report: list[str] = []
            result = runner.run(test, out=report.append)
            attempted += result.attempted
            if result.failed:
                failed.append(f"{test.name}:\n{''.join(report)}")
    assert not failed, "\n".join(failed)
    assert attempted >= 50  # the examples run; they are not all skipped
