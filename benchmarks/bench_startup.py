"""Start-up of the command line: ``hearth --help`` and ``hearth eval --help``, each in a fresh
process, against the eager start-up it replaced, in the same run.

``hearth`` imports each command's stack inside the command, the model layer (LangChain) on first
use, and the ``eval`` and ``finetune`` sub-apps when they run. The baseline is the eager start:
the same ``hearth --help`` after importing what every ``hearth`` start used to import (both
sub-apps, the ReAct agent and the chat model). Runs alternate between the two, so a slower spell
of the machine falls on both alike. Also reported: which heavy packages ``hearth --help`` loads.

    python benchmarks/bench_startup.py [--quick] [--save]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import emit, parser

HEAVY = ("torch", "transformers", "langchain_core", "chromadb", "sqlalchemy", "llama_cpp")
EAGER = (
    "import hearthlm.eval.cli, hearthlm.finetune.cli, hearthlm.agents.react, "
    "hearthlm.llm.chat_model"
)


def started(argv: list[str], before: str = "") -> float:
    """Seconds from a fresh interpreter to the end of ``hearth ARGV``."""
    code = f"{before}\nimport sys\nfrom hearthlm.cli import main\nsys.argv = {argv!r}\n"
    code += "try:\n    main()\nexcept SystemExit:\n    pass\n"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def loaded() -> dict[str, bool]:
    """Which heavy packages a ``hearth --help`` process has imported once it is done."""
    code = "import contextlib, io, json, sys\nfrom hearthlm.cli import main\n"
    code += "sys.argv = ['hearth', '--help']\n"
    code += "with contextlib.redirect_stdout(io.StringIO()):\n"
    code += "    try:\n        main()\n    except SystemExit:\n        pass\n"
    code += f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))\n"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    result: dict[str, bool] = json.loads(out.stdout.splitlines()[-1])
    return result


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    repeats = 3 if args.quick else 15
    started(["hearth", "--help"], EAGER)  # the file cache warm for both
    times: dict[str, list[float]] = {"help": [], "eval_help": [], "eager_help": []}
    for _ in range(repeats):
        times["help"].append(started(["hearth", "--help"]))
        times["eager_help"].append(started(["hearth", "--help"], EAGER))
        times["eval_help"].append(started(["hearth", "eval", "--help"]))
    figures: dict[str, Any] = {"repeats": repeats}
    for name, values in times.items():
        figures[f"{name}_median_s"] = round(statistics.median(values), 3)
        figures[f"{name}_max_s"] = round(max(values), 3)
    figures["speedup_help"] = round(figures["eager_help_median_s"] / figures["help_median_s"], 2)
    figures["help_imports"] = loaded()
    emit("bench_startup", figures, args.save)


if __name__ == "__main__":
    main()
