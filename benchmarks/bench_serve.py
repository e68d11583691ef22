"""Many clients, one model: `hearth serve` against llama-cpp-python's and llama.cpp's servers.

The same GGUF and the same prompts go to three servers started in this run, by 1, 4 and 8
concurrent streaming clients, 128 new greedy tokens each:

- ``hearth serve`` (continuous batching, ``serve.parallel`` 8), with its defaults (flash
  attention on for the batched engine) and with ``llm.flash_attention = false``;
- ``python -m llama_cpp.server`` (llama-cpp-python's own OpenAI server: one request at a time,
  and by default a new request interrupts the stream in progress);
- llama.cpp's ``llama-server --parallel 8`` (continuous batching), built once from the
  llama.cpp that the llama-cpp-python sdist vendors and cached outside the repository.

All servers are up at once and take turns, round by round, so that the machine's slower and
faster spells fall on each alike (a shared VM's speed drifts from minute to minute). Reported
per server and client count, over 3 rounds: aggregate output tokens/s, per-stream tokens/s, time
to first token p50 and p95, errors and interrupted streams (ended without a finish reason).

    python benchmarks/bench_serve.py [--quick] [--save]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import emit, parser

# Every stream of a run gets a prompt that no server has seen before in it (a task and a
# subject no earlier request had together), so that no server answers from a prompt its cache
# already holds: each first token costs the evaluation of a new prompt.
TASKS = [
    "Write a long story about {}.",
    "Explain in detail how {} works.",
    "Describe {} to someone who has never seen it.",
    "Write a long letter to a friend about {}.",
    "List the good and bad sides of {}, with reasons.",
    "Write a poem about {}.",
]
SUBJECTS = [
    "a lighthouse keeper",
    "a steam engine",
    "a busy market",
    "a holiday by the sea",
    "a ship lost at sea",
    "the seasons of the year",
    "a dragon who loves books",
    "a bakery at dawn",
    "a mountain railway",
    "a clock tower",
    "a river delta",
    "a night train",
    "a beehive",
    "a library in the rain",
    "a lost glove",
    "a desert oasis",
    "a windmill",
    "a village school",
    "a telescope",
    "a coral reef",
]
LLAMA_CPP_VERSION = "0.3.36"
CACHE = Path(os.environ.get("HEARTH_BENCH_CACHE", Path.home() / ".cache" / "hearthlm" / "bench"))


def llama_server_binary(build: bool) -> Path | None:
    """llama.cpp's ``llama-server``, built once from the llama.cpp that the llama-cpp-python
    sdist vendors (so both servers run the same llama.cpp), cached under ``CACHE`` by version
    and build flags."""
    cpu = shlex.split(os.environ.get("CMAKE_ARGS") or cmake_args())
    key = hashlib.sha256(" ".join(cpu).encode()).hexdigest()[:8]
    binary = CACHE / f"llama-server-{LLAMA_CPP_VERSION}-{key}" / "llama-server"
    if binary.is_file() or not build:
        return binary if binary.is_file() else None
    work = Path(tempfile.mkdtemp(prefix="llama-server-"))
    note = f"building llama-server from the llama-cpp-python {LLAMA_CPP_VERSION} sdist in {work}"
    print(note + " (once: a few minutes)", file=sys.stderr)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    subprocess.run([*pip, f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", str(work)], check=True)
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as archive:
        archive.extractall(work, filter="data")
    source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    flags = ["-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"]
    flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    # llama-cpp-python's flags (`make cmake-args`: no AMX, which crashes on Q4_1; llama.cpp's
    # own thread pool), so that both servers run the same build of the same llama.cpp
    flags += cpu
    subprocess.run(["cmake", "-S", str(source), "-B", str(work / "build"), *flags], check=True)
    jobs = str(os.cpu_count() or 2)
    subprocess.run(
        ["cmake", "--build", str(work / "build"), "--target", "llama-server", "-j", jobs],
        check=True,
    )
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(next((work / "build" / "bin").glob("llama-server")), binary)
    shutil.rmtree(work, ignore_errors=True)
    return binary


def cmake_args() -> str:
    """The flags ``make install`` builds llama-cpp-python with."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(["make", "-s", "-C", str(root), "cmake-args"], capture_output=True)
    return out.stdout.decode().strip() if out.returncode == 0 else "-DGGML_NATIVE=ON"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server process on a free loopback port, up once ``health`` answers 200."""

    def __init__(self, name: str, command: list[str], port: int, health: str, log: Path):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("w")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(self.url + health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


async def one_stream(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, tokens: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    pieces = 0
    usage = None
    finish = None
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    if choice.get("delta", {}).get("content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        pieces += 1
                    finish = choice.get("finish_reason") or finish
    except httpx.HTTPError as exc:
        return {"error": type(exc).__name__}
    produced = (usage or {}).get("completion_tokens") or pieces
    return {
        "ttft": (first or time.perf_counter()) - start,
        "tokens": produced,
        "seconds": (last or start) - start,
        "stream_seconds": (last - first) if first and last and last > first else None,
        "interrupted": finish is None,
    }


# Eight prompts for the benchmarks that send the same ones again (bench_engine, bench_remote).
PROMPTS = [TASKS[i % len(TASKS)].format(SUBJECTS[i]) for i in range(8)]


def prompt(n: int) -> str:
    """The ``n``-th prompt of a run: each a task and a subject that no earlier one combined."""
    return TASKS[n % len(TASKS)].format(SUBJECTS[n // len(TASKS) % len(SUBJECTS)])


async def warm(url: str) -> str:
    """The server's model id, after one short request (model pages, caches)."""
    async with httpx.AsyncClient(timeout=600) as client:
        model = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]
        await one_stream(client, url, model, "Say hello.", 8)
    return str(model)


async def one_round(
    url: str, model: str, prompts: list[str], tokens: int
) -> tuple[list[dict[str, Any]], float]:
    """One stream per prompt, all at once: each stream's figures, and the wall time."""
    limits = httpx.Limits(max_connections=len(prompts) + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        streams = (one_stream(client, url, model, p, tokens) for p in prompts)
        results = await asyncio.gather(*streams)
        return list(results), time.perf_counter() - start


def summary(clients: int, results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft"] for r in ok)
    per_stream = [r["tokens"] / r["stream_seconds"] for r in ok if r["stream_seconds"]]
    return {
        "clients": clients,
        "requests": len(results),
        "aggregate_tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "per_stream_tokens_per_s": round(statistics.median(per_stream), 1) if per_stream else 0.0,
        "ttft_p50_s": round(_quantile(ttfts, 0.5), 3),
        "ttft_p95_s": round(_quantile(ttfts, 0.95), 3),
        "mean_tokens": round(statistics.mean(r["tokens"] for r in ok), 1) if ok else 0,
        "errors": len(results) - len(ok),
        "interrupted": sum(r["interrupted"] for r in ok),
    }


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]


def servers(
    gguf: Path, work: Path, threads: int, binary: Path | None
) -> list[tuple[str, list[str], str]]:
    """(name, command, health path) of each server to measure."""
    bin_dir = Path(sys.executable).parent

    def hearth(flash: bool) -> list[str]:
        toml = work / f"hearth{'' if flash else '-no-flash'}.toml"
        setting = "" if flash else "flash_attention = false\n"  # on by default when batched
        toml.write_text(
            f"[llm]\nthreads = {threads}\n{setting}"
            f'[retrieval]\npath = "{work / "index"}"\n'
            f'[serve]\nparallel = 8\ndata_dir = "{work / "data"}"\n',
            encoding="utf-8",
        )
        return [str(bin_dir / "hearth"), "serve", "-c", str(toml), "--port", "{port}"]

    cores = [str(threads)] * 2
    python_server = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    python_server += ["--port", "{port}", "--n_ctx", "8192", "--flash_attn", "true"]
    python_server += ["--n_threads", cores[0], "--n_threads_batch", cores[1]]
    found = [
        ("hearth serve", hearth(flash=True), "/health"),
        ("hearth serve, flash attention off", hearth(flash=False), "/health"),
        ("llama_cpp.server", python_server, "/v1/models"),
    ]
    if binary is not None:
        native = [str(binary), "-m", str(gguf), "--port", "{port}", "--parallel", "8"]
        native += ["-c", str(8 * 8192), "-t", cores[0], "-tb", cores[1], "--no-webui"]
        found.append(("llama-server", native, "/health"))
    return found


def main() -> None:
    args = parser(__doc__.splitlines()[0], threads=True).parse_args()
    from hearthlm.llm.sources import packaged_model_path

    gguf = packaged_model_path()
    threads = args.threads or os.cpu_count() or 1
    tokens = 32 if args.quick else 128
    counts = (1, 4) if args.quick else (1, 4, 8)
    rounds = 1 if args.quick else 3
    binary = llama_server_binary(build=not args.quick)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    figures: dict[str, Any] = {"tokens": tokens, "rounds": rounds, "threads": threads}
    up: list[Server] = []  # stopped at the end, even one whose warm-up failed
    started: dict[str, tuple[Server, str]] = {}  # each server and its model id
    try:
        for name, command, health in servers(gguf, work, threads, binary):
            port = free_port()
            log = work / f"{name.replace(' ', '_')}.log"
            argv = [c.replace("{port}", str(port)) for c in command]
            up.append(Server(name, argv, port, health, log))
            started[name] = (up[-1], asyncio.run(warm(up[-1].url)))
        # Rounds take turns across the servers (all up, the others idle), so that a slower or
        # faster spell of the machine falls on every server alike.
        used = 0  # prompts handed out so far: every round's are new to every server
        for n in counts:
            runs: dict[str, tuple[list[dict[str, Any]], float]] = {k: ([], 0.0) for k in started}
            for _ in range(rounds):
                prompts = [prompt(used + i) for i in range(n)]
                used += n
                for name, (server, model) in started.items():
                    results, wall = asyncio.run(one_round(server.url, model, prompts, tokens))
                    runs[name] = (runs[name][0] + results, runs[name][1] + wall)
            for name, (results, wall) in runs.items():
                figures.setdefault(name, {})[str(n)] = summary(n, results, wall)
            print(json.dumps({k: figures[k][str(n)] for k in started}), file=sys.stderr)
    finally:
        for server in up:
            server.stop()
    if binary is None:
        figures["llama-server"] = "not built (run without --quick to build it once)"
    figures["ratios"] = ratios(figures, counts)
    emit("bench_serve", figures, args.save)
    shutil.rmtree(work, ignore_errors=True)


def ratios(figures: dict[str, Any], counts: tuple[int, ...]) -> dict[str, Any]:
    out = {"default": _ratios(figures, "hearth serve", counts)}
    out["flash_attention_off"] = _ratios(figures, "hearth serve, flash attention off", counts)
    return out


def _ratios(figures: dict[str, Any], name: str, counts: tuple[int, ...]) -> dict[str, Any]:
    hearth, baseline = figures[name], figures["llama_cpp.server"]
    most = str(counts[-1])
    out = {
        "single_vs_llama_cpp_server": _ratio(hearth["1"], baseline["1"]),
        f"aggregate_{most}_vs_own_single": round(
            hearth[most]["aggregate_tokens_per_s"] / hearth["1"]["aggregate_tokens_per_s"], 2
        ),
        f"aggregate_{most}_vs_llama_cpp_server": _ratio(hearth[most], baseline[most]),
        f"ttft_p95_{most}_vs_llama_cpp_server": round(
            hearth[most]["ttft_p95_s"] / baseline[most]["ttft_p95_s"], 2
        ),
    }
    if isinstance(figures.get("llama-server"), dict):
        out[f"aggregate_{most}_vs_llama_server"] = _ratio(
            hearth[most], figures["llama-server"][most]
        )
        out["single_vs_llama_server"] = _ratio(hearth["1"], figures["llama-server"]["1"])
    return out


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    return round(a["aggregate_tokens_per_s"] / b["aggregate_tokens_per_s"], 2)


if __name__ == "__main__":
    main()
