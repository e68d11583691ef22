"""The openai backend: the same chains on a remote engine.

Real engines on loopback: llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``)
and ``hearth serve``, both on the packaged GGUF, compared with the in-process backend. vLLM and
Ollama cannot run here (no GPU, no CPU wheel; no Ollama package), so the exact bodies their kinds
send are checked against a loopback HTTP server that records them and answers in their
documented shapes. The same scripted server plays the faults: a server that is down, that fails
then succeeds, that sends a malformed body, cuts a stream, or never answers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import ALPHA, free_port
from pydantic import BaseModel

from hearthlm.errors import BackendError, ConfigError
from hearthlm.llm import ChatHearth
from hearthlm.llm.backend import Constraint
from hearthlm.llm.openai_backend import constraint_fields

Answer = tuple[int, str, bytes | Iterable[bytes]]


class Scripted:
    """A loopback HTTP server that answers each request with ``answer(method, path, body)``
    (status, content type, body or body chunks) and records every request it gets."""

    def __init__(self, answer: Callable[[str, str, Any], Answer]) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(size) if size else b""
                body = json.loads(raw) if raw else None
                scripted.requests.append((self.command, self.path, body))
                status, kind, content = answer(self.command, self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                if isinstance(content, bytes):
                    self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                for part in [content] if isinstance(content, bytes) else content:
                    self.wfile.write(part)
                    self.wfile.flush()

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[Any]:
        return [b for _, p, b in self.requests if p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _json(value: Any, status: int = 200) -> Answer:
    return status, "application/json", json.dumps(value).encode()


def _sse(texts: list[str], finish: str | None = "stop") -> Answer:
    def events() -> Iterable[bytes]:
        for i, text in enumerate(texts):
            last = i == len(texts) - 1
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": finish if last else None}  # fmt: skip
            chunk = {"id": "c", "object": "text_completion", "created": 0, "model": "m",
                     "choices": [choice]}  # fmt: skip
            yield f"data: {json.dumps(chunk)}\n\n".encode()
        if finish is not None:
            yield b"data: [DONE]\n\n"

    return 200, "text/event-stream", events()


def _echo(body: Any, score: Callable[[list[int]], list[float]]) -> Answer:
    """An echoed prompt of token ids with ``score``'s log-probabilities, in the fields that
    lm-evaluation-harness reads, and one generated token."""
    values = [None, *score(body["prompt"]), -0.5]
    n = len(values)
    logprobs = {"tokens": ["t"] * n, "token_logprobs": values,
                "text_offset": list(range(n)), "top_logprobs": [None] * n}  # fmt: skip
    choice = {"index": 0, "text": "x", "logprobs": logprobs, "finish_reason": "length"}
    return _json({"id": "c", "object": "text_completion", "created": 0, "model": "m",
                  "choices": [choice]})  # fmt: skip


class Person(BaseModel):
    name: str
    age: int


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"Sunny in {city}"


def get_time(timezone: str) -> str:
    """Get the current time in a timezone."""
    return "12:00"


@pytest.fixture
def vllm(llama_chat: ChatHearth):
    """A vLLM stand-in serving the packaged model: /v1/models with max_model_len, /tokenize,
    streamed completions, and prompts echoed with the model's own log-probabilities."""
    engine = llama_chat.engine

    def score(ids: list[int]) -> list[float]:
        with engine.lock:
            return [value for value, _ in engine.token_logprobs(ids)]

    def answer(method: str, path: str, body: Any) -> Answer:
        if path == "/v1/models":
            return _json({"data": [{"id": "Qwen/Qwen3-8B", "object": "model",
                                    "max_model_len": 4096}]})  # fmt: skip
        if path == "/tokenize":
            return _json({"tokens": engine.tokenize(body["prompt"]), "max_model_len": 4096})
        if body.get("echo"):
            return _echo(body, score)
        if "json" in body.get("structured_outputs", {}):
            return _sse(['{"name": "Alice",', ' "age": 30}'])
        return _sse(["Hello", " there"])

    server = Scripted(answer)
    yield server
    server.close()


def _remote(url: str, **options: Any) -> ChatHearth:
    return ChatHearth(backend="openai", base_url=url, max_new_tokens=24, **options).load()


# -- request bodies, per server kind ---------------------------------------------------------


def test_constraints_go_in_each_kinds_own_fields():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    json_only = Constraint(json_schema=schema)
    optional = Constraint(json_schema=schema, allow_text=True)
    grammar = Constraint(grammar='root ::= "yes" | "no"')
    assert constraint_fields("vllm", json_only) == {"structured_outputs": {"json": schema}}
    assert "grammar" in constraint_fields("vllm", optional)["structured_outputs"]
    assert constraint_fields("vllm", grammar)["structured_outputs"]["grammar"].startswith("root")
    for kind in ("llamacpp", "hearth"):
        assert set(constraint_fields(kind, json_only)) == {"grammar"}
    assert constraint_fields("ollama", json_only) == {"format": schema}
    assert constraint_fields("generic", json_only)["response_format"]["type"] == "json_schema"
    # no grammar reaches Ollama or a generic server: the caller is told, never left unconstrained
    assert constraint_fields("ollama", grammar) is None
    assert constraint_fields("generic", optional) is None


@pytest.mark.slow
def test_vllm_kind_sends_structured_outputs_and_token_prompts_never_guided_fields(vllm):
    chat = _remote(f"{vllm.url}/v1", server="vllm")
    assert chat.context_window == 4096  # max_model_len from /v1/models
    assert chat.engine.tokenizer_checked  # /tokenize agreed with the local tokenizer
    writer = chat.model_copy(update={"tool_arguments": "write"})  # the fields are generated
    person = writer.with_structured_output(Person).invoke("Alice is 30 years old.")
    assert person == Person(name="Alice", age=30)
    sent = [b for b in vllm.bodies("/v1/completions") if not b.get("echo")]
    body = sent[-1]
    assert body["structured_outputs"]["json"]["properties"].keys() == {"name", "age"}
    assert all(isinstance(t, int) for t in body["prompt"])  # token ids: exactly what was built
    assert body["model"] == "Qwen/Qwen3-8B" and body["stream"] is True
    assert body["temperature"] == 0.0 and body["top_k"] == -1
    every = json.dumps(vllm.requests)
    assert "guided_" not in every  # removed in vLLM 0.12 and ignored silently: never sent
    # two tools: the tool is chosen by scoring through echo + logprobs
    tools = chat.bind_tools([get_weather, get_time], tool_choice="any")
    reply = tools.invoke("What's the weather in Paris?")
    assert reply.response_metadata["tool_decision"] == "choose"
    scored = [b for b in vllm.bodies("/v1/completions") if b.get("echo")]
    assert scored and all(b["logprobs"] == 0 and b["max_tokens"] == 1 for b in scored)


@pytest.mark.slow
def test_ollama_kind_sends_raw_prompts_with_format_and_writes_where_it_cannot_score():
    generated = {"response": '{"name": "Alice", "age": 30}', "done": False}
    done = {"response": "", "done": True, "done_reason": "stop", "eval_count": 9}

    def answer(method: str, path: str, body: Any) -> Answer:
        if path == "/api/tags":
            return _json({"models": [{"name": "smollm2:135m"}]})
        if path == "/api/show":
            return _json({"model_info": {"llama.context_length": 131072}})  # Llama 3.1's
        lines = [json.dumps(generated).encode() + b"\n", json.dumps(done).encode() + b"\n"]
        return 200, "application/x-ndjson", lines

    ollama = Scripted(answer)
    try:
        chat = _remote(ollama.url, server="ollama")
        assert not chat.can_score and chat.decision_mode == "write"
        assert chat.argument_mode == "write"
        assert chat.with_structured_output(Person).invoke("Alice is 30.") == Person(
            name="Alice", age=30
        )
        body = ollama.bodies("/api/generate")[-1]
        assert body["raw"] is True and body["prompt"].startswith("<|im_start|>")
        assert body["format"]["properties"].keys() == {"name", "age"}
        # the window is capped: Ollama allocates a KV cache of num_ctx tokens
        assert body["options"]["num_ctx"] == 8192 and body["options"]["temperature"] == 0.0
        assert "grammar" not in body
        # an optional tool call needs a grammar, which Ollama lacks: the reply says so
        reply = chat.bind_tools([get_weather]).invoke("Weather in Paris?")
        assert reply.response_metadata["constraint"] == "not enforced"
        assert reply.response_metadata["tool_decision"] == "write"
        with pytest.raises(NotImplementedError, match="cannot score"):
            chat.loglikelihoods("Paris is in", [" France"])
    finally:
        ollama.close()


# -- faults ----------------------------------------------------------------------------------


def test_a_server_that_is_down_is_a_clear_error_not_a_hang():
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(BackendError, match="could not be reached") as caught:
        ChatHearth(backend="openai", base_url=url, retries=1).load()
    assert url in str(caught.value) and time.monotonic() - started < 10


def test_missing_base_url_and_unknown_model_say_how_to_fix(vllm):
    with pytest.raises(ConfigError, match=r"llm\.base_url"):
        ChatHearth(backend="openai").load()
    with pytest.raises(ConfigError, match="serves Qwen/Qwen3-8B"):
        ChatHearth(backend="openai", base_url=vllm.url, server="vllm", model="nope").load()


@pytest.mark.slow
def test_faults_500_then_success_malformed_cut_and_timeout():
    plan: dict[str, list[Answer]] = {}

    def answer(method: str, path: str, body: Any) -> Answer:
        if path == "/v1/models":
            return plan.get(path, [_json({"data": [{"id": "m", "max_model_len": 2048}]})])[0]
        queue = plan["/v1/completions"]
        step = queue.pop(0) if len(queue) > 1 else queue[0]
        if step[0] == 0:  # never answers
            time.sleep(30)
        return step

    scripted = Scripted(answer)
    try:
        plan["/v1/completions"] = [_json({"error": {"message": "boom"}}, 500), _sse(["Hi"])]
        writes = {"tool_arguments": "write", "tool_decision": "write"}  # no scoring probe
        chat = _remote(scripted.url, retries=2, **writes)
        assert chat.invoke("Hello").content == "Hi"  # retried with backoff, then answered
        assert len(scripted.bodies("/v1/completions")) == 2
        plan["/v1/completions"] = [_sse(["Once upon"], finish=None)]  # the stream is cut
        with pytest.raises(BackendError, match="cut off"):
            chat.invoke("Tell me a story.")
        plan["/v1/completions"] = [(200, "application/json", b"{not json")]
        with pytest.raises(BackendError):
            chat.invoke("Hello")
        plan["/v1/completions"] = [(0, "", b"")]  # never answers
        slow = _remote(scripted.url, timeout=1.0, retries=0, **writes)
        started = time.monotonic()
        with pytest.raises(BackendError, match="no answer within 1 s"):
            slow.invoke("Hello")
        assert time.monotonic() - started < 10
        plan["/v1/models"] = [(200, "application/json", b"<html>")]
        with pytest.raises(BackendError, match="not JSON"):
            _remote(scripted.url)
    finally:
        scripted.close()


# -- real engines ----------------------------------------------------------------------------

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def via_llama_cpp(llama_cpp_server) -> ChatHearth:
    return ChatHearth(
        backend="openai", base_url=llama_cpp_server, server="llamacpp", max_new_tokens=48
    ).load()


def test_llama_cpp_server_replies_equal_the_in_process_backend(via_llama_cpp, llama_chat):
    assert via_llama_cpp.engine.tokenizer_checked  # its /extras/tokenize agreed
    assert not via_llama_cpp.engine.token_prompts  # it reads text prompts only
    remote = via_llama_cpp.invoke(QUESTION)
    assert remote.content == llama_chat.invoke(QUESTION).content
    chunks = list(via_llama_cpp.stream(QUESTION))
    assert "".join(c.content for c in chunks) == remote.content
    assert remote.usage_metadata["output_tokens"] > 0
    assert remote.response_metadata["server"] == "llamacpp"


def test_llama_cpp_server_cannot_score_and_the_chains_say_so(via_llama_cpp):
    """llama-cpp-python pairs each echoed prompt token with the distribution that follows it,
    so its scores are not the prompt's: the probe finds it, and the chat model writes."""
    assert not via_llama_cpp.can_score
    with pytest.raises(NotImplementedError, match="distribution after it"):
        via_llama_cpp.loglikelihoods("The capital of France is", [" Paris", " Lyon"])
    assert (via_llama_cpp.decision_mode, via_llama_cpp.argument_mode) == ("write", "write")


def test_llama_cpp_server_tool_calls_structured_output_and_react(via_llama_cpp):
    from hearthlm.agents.react import ReActAgent
    from hearthlm.agents.tools import calculator_tool

    tools = via_llama_cpp.bind_tools([get_weather, get_time], tool_choice="any")
    reply = tools.invoke("What's the weather in Paris?")
    assert reply.tool_calls[0]["name"] == "get_weather"  # written under the server's grammar
    assert reply.tool_calls[0]["args"] == {"city": "Paris"}
    assert reply.response_metadata["tool_decision"] == "write"
    assert reply.response_metadata["constraint"] == "enforced"
    person = via_llama_cpp.with_structured_output(Person).invoke(
        "Extract the person: Alice is 30 years old."
    )
    assert person == Person(name="Alice", age=30)
    result = ReActAgent(via_llama_cpp, [calculator_tool()]).invoke("What is 1234 * 5678?")
    assert result.stopped_reason == "final_answer" and result.answer == "7006652"
    assert result.steps[0].tool == "calculator" and result.valid_action_rate == 1.0


def test_the_demo_answers_right_through_llama_cpp_server(llama_cpp_server, tmp_path: Path):
    env = {**os.environ, "HEARTH_RETRIEVAL__PATH": str(tmp_path / "idx"),
           "HEARTH_LLM__BACKEND": "openai", "HEARTH_LLM__BASE_URL": llama_cpp_server,
           "HEARTH_LLM__SERVER": "llamacpp"}  # fmt: skip
    hearth = Path(sys.executable).with_name("hearth")
    run = subprocess.run([str(hearth), "demo"], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = " ".join(run.stdout.split())
    assert "A: Warranty and returns: Every Emberline K2 kettle comes with a two-year" in out
    assert "error codes: E4 - The heating plate is overheating because of heavy limescale" in out
    assert "warranty.html, characters 21-112" in out
    assert "Q: How do I update the kettle's firmware? A: I don't know" in out


def test_hearth_serve_as_the_engine_generates_and_scores(cold_server):
    server, served_chat = cold_server
    chat = ChatHearth(backend="openai", base_url=f"{server.url}/v1", server="hearth",
                      api_key=ALPHA, max_new_tokens=48).load()  # fmt: skip
    assert chat.engine.tokenizer_checked and chat.engine.token_prompts
    assert chat.context_window == served_chat.context_window  # max_model_len
    assert chat.invoke(QUESTION).content == served_chat.invoke(QUESTION).content
    options = [" Paris", " Lyon", " Berlin"]
    remote = chat.loglikelihoods("The capital of France is", options)
    assert remote == pytest.approx(
        served_chat.loglikelihoods("The capital of France is", options), abs=0.05
    )
    # the tool chosen and the argument copied by scoring through the server, as in process
    request = "What is the time now in the Asia/Tokyo timezone?"
    reply = chat.bind_tools([get_weather, get_time], tool_choice="any").invoke(request)
    local = served_chat.bind_tools([get_weather, get_time], tool_choice="any").invoke(request)
    assert reply.tool_calls[0]["name"] == "get_time" == local.tool_calls[0]["name"]
    assert reply.tool_calls[0]["args"] == {"timezone": "Asia/Tokyo"}
    assert reply.response_metadata["tool_decision"] == "choose"
    assert reply.response_metadata["tool_arguments"] == "copy"


def test_eval_multiple_choice_scores_through_hearth_serve_as_in_process(
    server, hf_cache, tmp_path: Path
):
    """`hearth eval`'s multiple choice through a server that scores: the same predictions as
    the in-process scorer on the same model (its GGUF there, its float32 export here)."""
    from test_eval import quiz_task

    from hearthlm.config import HearthConfig, LLMConfig
    from hearthlm.eval import evaluate

    local = HearthConfig(llm=LLMConfig(backend="transformers", cache_dir=hf_cache))
    remote = HearthConfig(llm=LLMConfig(backend="openai", base_url=f"{server.url}/v1",
                                        server="hearth", api_key=ALPHA))  # fmt: skip
    runs = {}
    for name, config in (("remote", remote), ("local", local)):
        (tmp_path / name).mkdir()
        task = quiz_task(tmp_path / name)
        runs[name] = evaluate([task], tmp_path / f"run-{name}", config, progress=False)
    results = {n: json.loads(r.results_path.read_text()) for n, r in runs.items()}
    assert results["remote"]["model"]["server"] == "hearth"
    assert ALPHA not in runs["remote"].results_path.read_text()  # the key is not written
    predicted = {n: [p["predicted"] for p in r["predictions"]] for n, r in results.items()}
    assert predicted["remote"] == predicted["local"]
    accuracy = {n: r["scores"]["tasks"]["quiz"]["accuracy"] for n, r in results.items()}
    assert accuracy["remote"] == accuracy["local"]


def test_eval_generates_through_llama_cpp_server_and_refuses_to_score(
    llama_cpp_server, tmp_path: Path
):
    """Generation tasks run on any server, with the in-process backend's replies; scoring
    tasks on a server that cannot score are refused with the reason, never scored wrong."""
    from test_eval import quiz_task

    from hearthlm.config import HearthConfig, LLMConfig
    from hearthlm.errors import EvalError
    from hearthlm.eval import evaluate
    from hearthlm.eval.tasks import TaskSpec, make_task

    data = tmp_path / "capitals.jsonl"
    rows = [{"question": "What is the capital of France?", "answer": "Paris"},
            {"question": "What is the capital of Italy?", "answer": "Rome"}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = TaskSpec(name="capitals", kind="generate", data=data, metrics=["exact_match"],
                    max_new_tokens=16)  # fmt: skip
    remote = HearthConfig(llm=LLMConfig(backend="openai", base_url=llama_cpp_server,
                                        server="llamacpp"))  # fmt: skip
    predictions = {}
    for name, config in (("remote", remote), ("local", HearthConfig())):
        run = evaluate([make_task(spec)], tmp_path / name, config, progress=False)
        result = json.loads(run.results_path.read_text())
        predictions[name] = [p["prediction"] for p in result["predictions"]]
    assert predictions["remote"] == predictions["local"]
    assert all(predictions["remote"])
    (tmp_path / "quiz").mkdir()
    with pytest.raises(EvalError, match="cannot score text"):
        evaluate([quiz_task(tmp_path / "quiz")], tmp_path / "mcq", remote, progress=False)
