"""Helpers shared by the benchmarks: their data, machine facts, medians, and the one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

RESULTS = Path(__file__).parent / "results"
# The public datasets (GSM8K, SciFact, HotpotQA, MMLU, DialogSum, Alpaca, HH-RLHF), referenced in
# place and never copied into the repository; HEARTH_DATA names another copy laid out the same.
DATA = Path(
    os.environ.get("HEARTH_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def needs(*paths: Path) -> None:
    """End the benchmark, before any work, with the data files it needs that are missing and
    where to get them."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        listed = "\n".join(f"  {p}" for p in missing)
        sys.exit(
            f"{Path(sys.argv[0]).name} needs data that is not here:\n{listed}\n"
            f"The benchmarks read the public datasets from {DATA} (its README names each "
            "source, format and licence); set HEARTH_DATA to a folder laid out the same way."
        )


def parser(description: str, threads: bool = False) -> argparse.ArgumentParser:
    """``--quick`` and ``--save``; with ``threads``, ``--threads`` for llama.cpp, so a benchmark
    can share the machine with another without their threads fighting for the cores."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="CI-sized run")
    p.add_argument("--save", action="store_true", help="also write benchmarks/results/NAME.json")
    if threads:
        p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all)")
    return p


def chat_options() -> dict[str, Any]:
    """The ``[llm]`` settings that differ from the defaults in this run's configuration (a
    ``hearth.toml``, ``HEARTH_LLM__*`` variables): with ``HEARTH_LLM__BACKEND=openai`` and its
    server's address, a benchmark runs on a remote engine unchanged."""
    from hearthlm.config import LLMConfig, load_config

    llm = load_config().llm
    return {
        name: getattr(llm, name)
        for name, field in LLMConfig.model_fields.items()
        if getattr(llm, name) != field.default
    }


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def median_of(repeats: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(repeats))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def report_to_parent(result: dict[str, Any]) -> None:
    """In a child process: add this process's peak resident memory and print the result line."""
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("RESULT " + json.dumps(result))


def run_child(
    script: str, child: str, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``script --child CHILD ARGS`` in its own process (so its peak memory is its own),
    with ``env`` if given, and return what it reported with :func:`report_to_parent`; a child
    that fails ends the benchmark with the tail of its stderr (a crash's trace included)."""
    command = [sys.executable, "-X", "faulthandler", script, "--child", child, *args]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        failed = f"{Path(script).name} --child {child} failed ({out.returncode})"
        sys.exit(f"{failed}:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def emit(name: str, figures: dict[str, Any], save: bool) -> None:
    """Print the one JSON line, and keep it under results/ when asked."""
    line = json.dumps({"benchmark": name, **figures, "machine": machine()})
    print(line)
    if save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.json").write_text(line + "\n", encoding="utf-8")
