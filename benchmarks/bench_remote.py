"""Remote engines: what the openai backend costs over the raw ``openai`` client, and whether the
chains give the in-process figures through a server that scores.

1. Throughput. The same greedy 128-token completions of the same prompts (chat-templated here,
   sent as raw completions), one request at a time:
   - in process (the llama.cpp backend);
   - through ``python -m llama_cpp.server`` with the raw ``openai`` client (streamed);
   - through ``ChatHearth(backend="openai", server="llamacpp")`` to the same server.
   Target: the backend's tokens/s at least 0.95 x the raw client's.
2. Agreement. ``bench_tools.py`` (held-out set, the ``bind_tools`` paths, copied arguments)
   and ``bench_answers.py`` (quote mode; the example questions and 30 of HotpotQA) run in
   process and through ``hearth serve``, a server that scores (``llama_cpp.server`` cannot:
   its echoed log-probabilities are shifted by a token). Target: every accuracy figure within
   0.02 of the in-process one.

    python benchmarks/bench_remote.py [--quick] [--save] [--no-agreement]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, parser
from bench_serve import PROMPTS, Server, free_port

HERE = Path(__file__).parent
TOKENS = 128


def completions(prompts: list[str], senders: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Tokens/s of each ``send(prompt) -> completion tokens`` over ``prompts``, one request at
    a time, the senders taking turns on each prompt (first on every other one), so that
    neither gets a quieter machine or the other's cached prompt."""
    totals = {name: [0, 0.0] for name in senders}
    for send in senders.values():
        send(prompts[0])  # warm: the first request loads caches on every path
    for i, prompt in enumerate(prompts):
        turns = list(senders.items())
        for name, send in turns[::-1] if i % 2 else turns:
            started = time.perf_counter()
            totals[name][0] += send(prompt)
            totals[name][1] += time.perf_counter() - started
    return {
        name: {"tokens": int(n), "seconds": round(t, 2), "tokens_per_s": round(n / t, 1)}
        for name, (n, t) in totals.items()
    }


def throughput(prompts: list[str], log_dir: Path) -> dict[str, Any]:
    import openai
    from langchain_core.messages import HumanMessage

    from hearthlm.llm import ChatHearth
    from hearthlm.llm.sources import packaged_model_path

    local = ChatHearth(max_new_tokens=TOKENS, stop_repetition=False).load()
    texts = [local.prompt([HumanMessage(p)]) for p in prompts]

    def in_process(text: str) -> int:
        completion = local.complete(text, max_new_tokens=TOKENS)
        "".join(completion)
        return completion.output_tokens

    figures: dict[str, Any] = completions(texts, {"in_process": in_process})
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_model_path()),
               "--port", str(port), "--n_ctx", "8192", "--interrupt_requests", "False",
               "--n_threads", str(os.cpu_count() or 1)]  # fmt: skip
    server = Server("llama_cpp.server", command, port, "/v1/models", log_dir / "llama_cpp.log")
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        model = client.models.list().data[0].id

        def raw(text: str) -> int:
            stream = client.completions.create(
                model=model, prompt=text, max_tokens=TOKENS, temperature=0.0, top_p=1.0,
                stream=True,  # the sampling fields the backend sends, so the server's work is equal
                extra_body={"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0},
            )  # fmt: skip
            return sum(1 for chunk in stream for c in chunk.choices if c.text)

        remote = ChatHearth(backend="openai", base_url=f"{server.url}/v1", server="llamacpp",
                            max_new_tokens=TOKENS, stop_repetition=False).load()  # fmt: skip

        def backend(text: str) -> int:
            completion = remote.complete(text, max_new_tokens=TOKENS)
            "".join(completion)
            return completion.output_tokens

        figures.update(completions(texts, {"raw_openai_client": raw, "chathearth_openai": backend}))
        same = [
            "".join(local.complete(t, max_new_tokens=TOKENS))
            == "".join(remote.complete(t, max_new_tokens=TOKENS))
            for t in texts[:3]
        ]
        figures["greedy_replies_equal_in_process"] = f"{sum(same)}/{len(same)}"
    finally:
        server.stop()
    ratio = (
        figures["chathearth_openai"]["tokens_per_s"] / figures["raw_openai_client"]["tokens_per_s"]
    )
    figures["backend_vs_raw_client"] = round(ratio, 3)
    return figures


def figures_of(script: str, args: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """The JSON line that ``script args`` prints, run with ``env``."""
    with log.open("w") as err:
        run = subprocess.run([sys.executable, str(HERE / script), *args], stdout=subprocess.PIPE,
                             stderr=err, text=True, env=env, check=False)  # fmt: skip
    if run.returncode:
        raise SystemExit(f"{script} failed; see {log}")
    line = next(x for x in reversed(run.stdout.splitlines()) if x.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    return result


def agreement(quick: bool, log_dir: Path) -> dict[str, Any]:
    port = free_port()
    command = [str(Path(sys.executable).with_name("hearth")), "serve", "--port", str(port)]
    server = Server("hearth serve", command, port, "/health", log_dir / "hearth.log")
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_LLM__")}
    remote_env = {**local_env, "HEARTH_LLM__BACKEND": "openai", "HEARTH_LLM__SERVER": "hearth",
                  "HEARTH_LLM__BASE_URL": f"{server.url}/v1"}  # fmt: skip
    runs = {
        "tools": ("bench_tools.py", ["--heldout", "--no-agents", "--variants", "copy"]),
        "answers": ("bench_answers.py", ["--modes", "quote", "--hotpot", "30"]),
    }
    out: dict[str, Any] = {}
    try:
        for name, (script, args) in runs.items():
            args = args + ["--quick"] * (quick and name == "tools")
            for where, env in (("in_process", local_env), ("hearth_serve", remote_env)):
                log = log_dir / f"{name}_{where}.log"
                out.setdefault(name, {})[where] = figures_of(script, args, env, log)
    finally:
        server.stop()
    return {**out, **differences(out)}


def differences(out: dict[str, Any]) -> dict[str, Any]:
    """The largest gap between in-process and remote accuracy figures, per benchmark."""
    keys = ("_parse", "_tool_accuracy", "_exact_args", "_no_tool_rate", "contains_gold", "f1")
    gaps: dict[str, float] = {}
    for name, pair in out.items():
        local, remote = _flat(pair["in_process"]), _flat(pair["hearth_serve"])
        shared = [k for k in local if k.endswith(keys) and k in remote]
        gaps[f"{name}_max_gap"] = round(max(abs(local[k] - remote[k]) for k in shared), 3)
    gaps["within_0.02"] = all(v <= 0.02 for v in gaps.values())
    return gaps


def _flat(figures: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--no-agreement", action="store_true", help="the throughput part only")
    args = p.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    print(f"server logs in {log_dir}", file=sys.stderr)
    prompts = PROMPTS[:3] if args.quick else PROMPTS
    started = time.perf_counter()
    figures: dict[str, Any] = {"tokens": TOKENS, "prompts": len(prompts)}
    figures["throughput"] = throughput(prompts, log_dir)
    figures["targets_met"] = {
        "backend_0.95_of_raw": figures["throughput"]["backend_vs_raw_client"] >= 0.95
    }
    if not args.no_agreement:
        figures["agreement"] = agreement(args.quick, log_dir)
        figures["targets_met"]["agreement_0.02"] = figures["agreement"]["within_0.02"]
    figures["seconds"] = round(time.perf_counter() - started, 1)
    emit("bench_remote", figures, args.save)


if __name__ == "__main__":
    main()
