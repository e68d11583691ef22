"""`hearth serve` through real clients over real HTTP: the official `openai` client, LangChain's
ChatOpenAI and OpenAIEmbeddings, and httpx for the routes OpenAI has no client for."""

from __future__ import annotations

import base64
import itertools
import json
import struct
import threading
import time

import httpx
import openai
import pytest
from conftest import ALPHA

from hearthlm.llm import ChatHearth

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=ALPHA, max_retries=0)


@pytest.fixture(scope="module")
def http(server) -> httpx.Client:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ALPHA}"}, timeout=120
    ) as c:
        yield c


def ask(client: openai.OpenAI, text: str, model: str = MODEL, **options):
    messages = [{"role": "user", "content": text}]
    return client.chat.completions.create(model=model, messages=messages, **options)


def engine_stats(http: httpx.Client) -> dict:
    return http.get("/v1/server").json()["engine"]


def test_chat_replies_equal_the_in_process_model_and_stream_the_same(cold_server):
    served, local = cold_server
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=ALPHA, max_retries=0)
    question = "What is the capital of France?"
    reply = ask(client, question, max_tokens=24, temperature=0)
    expected = local.invoke(question, max_new_tokens=24).content
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 24 and reply.usage.prompt_tokens > 0
    stream = ask(
        client, question, max_tokens=24, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected and len(chunks) > 5  # token by token
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    system = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Answer with one word."},
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one."},
        ],
        max_tokens=8,
        stop=["\n"],
    )
    assert system.choices[0].message.content and "\n" not in system.choices[0].message.content


def test_tool_calls_are_chosen_as_bind_tools_chooses_them(client, served_chat):
    reply = ask(client, "What's the weather in Paris?", tools=[WEATHER], tool_choice="required")
    call = reply.choices[0].message.tool_calls[0]
    assert (
        reply.choices[0].finish_reason == "tool_calls" and reply.choices[0].message.content is None
    )
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {
        "city": "Paris"
    }
    local = served_chat.bind_tools([WEATHER], tool_choice="required").invoke(
        "What's the weather in Paris?"
    )
    assert local.tool_calls[0]["args"] == json.loads(call.function.arguments)
    streamed = list(
        ask(
            client,
            "What's the weather in Paris?",
            tools=[WEATHER],
            tool_choice="required",
            stream=True,
        )
    )
    deltas = [
        c.choices[0].delta.tool_calls
        for c in streamed
        if c.choices and c.choices[0].delta.tool_calls
    ]
    assert deltas and deltas[0][0].function.name == "get_weather"
    assert json.loads(deltas[0][0].function.arguments) == {"city": "Paris"}
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    # the assistant's call and the tool's result go back as messages
    follow = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=24,
    )
    assert follow.choices[0].message.content and not follow.choices[0].message.tool_calls


def test_structured_output_follows_its_schema_and_impossible_ones_are_refused(client):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    reply = ask(
        client, "Paris is the capital of France. Give the city and country.", response_format=fmt
    )
    assert json.loads(reply.choices[0].message.content) == {"city": "Paris", "country": "France"}
    plain = ask(
        client, "Give a JSON object with a 'name' key.", response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(plain.choices[0].message.content), dict)
    impossible = [
        {"type": "integer", "minimum": 5, "maximum": 1},
        {"type": "object", "properties": {}, "required": ["x"], "additionalProperties": False},
        {"enum": []},
        {"type": "objekt"},
        {"not": {}},
    ]
    for bad in impossible:
        with pytest.raises(openai.BadRequestError) as caught:
            ask(
                client,
                "hi",
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": bad},
                },
            )
        assert caught.value.body["code"] == "invalid_schema"
    choice = ask(
        client, "Is Paris in France?", extra_body={"structured_outputs": {"choice": ["yes", "no"]}}
    )
    assert choice.choices[0].message.content in ("yes", "no")
    code = ask(
        client, "Make up an order id.", extra_body={"structured_outputs": {"regex": r"[A-Z]-\d{4}"}}
    )
    assert len(code.choices[0].message.content) == 6 and code.choices[0].message.content[1] == "-"
    with pytest.raises(openai.BadRequestError) as caught:  # vLLM's removed field, never ignored
        ask(client, "Is it?", extra_body={"guided_choice": ["yes", "no"]})
    assert caught.value.body["code"] == "unsupported_parameter"


def test_embeddings_and_models(client, http, embeddings):
    models = {m.id: m for m in client.models.list().data}
    assert models[MODEL].max_model_len == 8192
    assert models["all-MiniLM-L6-v2"].max_model_len == embeddings.max_tokens
    floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a kettle", "a teapot"])
    assert len(floats.data) == 2 and floats.data[0].embedding == pytest.approx(
        embeddings.embed_query("a kettle"), abs=1e-5
    )
    packed = http.post(
        "/v1/embeddings", json={"input": "a kettle", "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    raw = base64.b64decode(packed)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(
        floats.data[0].embedding, abs=1e-6
    )
    same = client.embeddings.create(model="all-MiniLM-L6-v2", input="a kettle", dimensions=384)
    assert same.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    with pytest.raises(openai.BadRequestError, match="gives 384 dimensions"):
        client.embeddings.create(model="all-MiniLM-L6-v2", input="a kettle", dimensions=128)


def test_completions_score_text_as_the_in_process_model_does(client, http, served_chat):
    reply = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=0, echo=True, logprobs=2
    )
    choice = reply.choices[0]
    assert choice.text == "The capital of France is" and choice.logprobs.token_logprobs[0] is None
    _, local = served_chat.token_logprobs("The capital of France is", top=2)
    assert choice.logprobs.token_logprobs[1:] == pytest.approx([lp for lp, _ in local], abs=1e-3)
    assert all(len(t) == 2 for t in choice.logprobs.top_logprobs[1:])
    # a continuation's log-likelihood: what hearthlm's choosing paths ask of a remote model
    context = http.post("/tokenize", json={"prompt": "The capital of France is"}).json()
    full = client.completions.create(
        model=MODEL, prompt="The capital of France is Paris", max_tokens=0, echo=True, logprobs=0
    )
    remote = sum(full.choices[0].logprobs.token_logprobs[context["count"] :])
    expected = served_chat.loglikelihood("The capital of France is", " Paris")
    assert remote == pytest.approx(expected, abs=1e-3)
    text = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=6)
    assert text.choices[0].text and text.usage.completion_tokens <= 6
    tokens = http.post(
        "/tokenize", json={"prompt": "Hello world", "return_token_strs": True}
    ).json()
    assert tokens["max_model_len"] == 8192 and "".join(tokens["token_strs"]) == "Hello world"
    back = http.post("/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back == {"prompt": "Hello world"}
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["count"] == len(served_chat.engine.tokenize(served_chat.prompt([_human("Hi")])))


def _human(text: str):
    from langchain_core.messages import HumanMessage

    return HumanMessage(text)


def test_langchain_clients_run_through_the_server(server):
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    from hearthlm.agents.middleware import call_tools_then_answer

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"It is sunny in {city}."

    llm = ChatOpenAI(model=MODEL, base_url=f"{server.url}/v1", api_key=ALPHA, max_tokens=48)
    call = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Rome?")
    assert call.tool_calls[0]["name"] == "get_weather" and call.tool_calls[0]["args"] == {
        "city": "Rome"
    }
    # the middleware that makes create_agent work on the small model in process works remotely
    agent = create_agent(llm, [get_weather], middleware=[call_tools_then_answer])
    result = agent.invoke(
        {"messages": [("user", "What's the weather in Rome?")]}, {"recursion_limit": 8}
    )
    messages = result["messages"]
    assert messages[1].tool_calls[0]["args"] == {"city": "Rome"}
    assert messages[2].type == "tool" and messages[2].content == "It is sunny in Rome."
    assert messages[-1].type == "ai" and messages[-1].content and not messages[-1].tool_calls
    vectors = OpenAIEmbeddings(
        model="all-MiniLM-L6-v2",
        base_url=f"{server.url}/v1",
        api_key=ALPHA,
        check_embedding_ctx_length=False,
    ).embed_documents(["a kettle", "a teapot"])
    assert len(vectors) == 2 and len(vectors[0]) == 384


def test_eight_clients_at_once_get_the_replies_each_gets_alone(client, http, server):
    """Three greedy requests from each of 8 clients at once: each reply is the reply to the
    same request alone, token for token, or first differs where the two likeliest tokens of
    the reply alone are those two and nearly tie (within 0.05)."""
    prompts = [
        "Write a short poem about the sea.",
        "List three fruits.",
        "What is a kettle for?",
        "Describe a cat in one sentence.",
        "Say something about Mondays.",
        "Name two planets.",
        "Why is the sky blue?",
        "Give me a tip for sleeping well.",
    ]

    def tokens(prompt: str, top: int = 0) -> list:
        """The reply's tokens as generated, each with its top alternatives."""
        reply = ask(client, prompt, max_tokens=32, logprobs=True, top_logprobs=top)
        content = reply.choices[0].logprobs.content
        assert "".join(t.token for t in content) == reply.choices[0].message.content
        return content

    alone = {p: tokens(p, top=2) for p in prompts}
    got: dict[tuple[int, int], list] = {}
    errors: list[Exception] = []

    def run(i: int) -> None:
        try:
            for round_ in range(3):
                got[i, round_] = tokens(prompts[i])
        except Exception as exc:  # collected, then failed below
            errors.append(exc)

    before = engine_stats(http)["steps"]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(got) == 24
    steps = engine_stats(http)["steps"] - before
    assert steps < 24 * 32 / 2  # decoded together: far fewer steps than tokens
    for (i, _), batched in got.items():
        expected = [t.token for t in alone[prompts[i]]]
        produced = [t.token for t in batched]
        if produced == expected:
            continue
        k = next(
            (j for j, (a, b) in enumerate(zip(expected, produced, strict=False)) if a != b),
            len(produced),  # the batched reply ended first: its end-of-turn token reads ""
        )
        assert k < len(expected), (prompts[i], produced)  # longer than alone: no tie to read
        produced.append("")
        top = {t.token: t.logprob for t in alone[prompts[i]][k].top_logprobs}
        assert {expected[k], produced[k]} <= set(top), (prompts[i], k, top)
        assert abs(top[expected[k]] - top[produced[k]]) <= 0.05, (prompts[i], k, top)


def test_chat_logprobs_give_each_generated_token_and_its_alternatives(client):
    reply = ask(client, "Name a colour.", max_tokens=12, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert len(content) == reply.usage.completion_tokens
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        best = [t.logprob for t in token.top_logprobs]
        assert best == sorted(best, reverse=True) and token.logprob <= best[0] + 1e-6
        assert bytes(token.bytes).decode() == token.token
    streamed = list(
        ask(client, "Name a colour.", max_tokens=12, stream=True, logprobs=True, top_logprobs=3)
    )
    logprobs = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert [t.token for lp in logprobs for t in lp.content] == [t.token for t in content]


def test_a_client_that_disconnects_stops_its_generation(server, http):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 400,
        "stream": True,
    }
    with (
        httpx.Client(timeout=60) as one,
        one.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {ALPHA}"},
        ) as response,
    ):
        for n, _ in enumerate(response.iter_lines()):
            if n > 10:
                break
        # read while the stream is still open: every token after this one counts
        at_close = engine_stats(http)["generated_tokens"]
    time.sleep(1.5)
    settled = engine_stats(http)
    assert settled["generated_tokens"] - at_close <= 5
    assert settled["running"] == 0


def test_scoring_for_a_client_that_already_left_ends_at_once(server, http):
    """A completion with logprobs whose client left while it generated scores with its cancel
    event set; the scoring must end at once, or the worker thread waits for ever on rows no
    slot computes and, a few such clients later, the server answers every request 429."""
    from hearthlm.errors import GenerationError
    from hearthlm.llm.backend import cancel_scope

    engine = server.state.models.base.engine
    ids = engine.tokenize("The capital of France is Paris.")
    ended: dict[str, BaseException] = {}

    def score(name: str, call) -> None:
        gone = threading.Event()
        gone.set()
        with cancel_scope(gone):
            try:
                call()
            except BaseException as exc:  # the test looks at which
                ended[name] = exc

    calls = {
        "rows": lambda: engine.batched.rows(ids),
        "loglikelihoods": lambda: engine.batched.loglikelihoods(ids[:4], [ids[4:]]),
    }
    threads = [threading.Thread(target=score, args=item, daemon=True) for item in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a cancelled scoring hung"
    assert {name: type(exc) for name, exc in ended.items()} == dict.fromkeys(calls, GenerationError)
    assert engine_stats(http)["waiting"] == 0


def test_a_full_server_answers_429_and_never_hangs(server, llama_chat, tmp_path):
    from conftest import Served, free_port, serve_config

    from hearthlm.serve import create_app

    config = serve_config(tmp_path, parallel=1, max_queue=0, retry_after=3)
    chat = ChatHearth.from_backend(server.state.models.base.engine)
    with Served(create_app(config, chat=chat), free_port(), tmp_path) as small:
        story = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
        body = {"messages": story, "max_tokens": 400, "stream": True}  # 400 tokens: 5 s
        official = openai.OpenAI(base_url=f"{small.url}/v1", api_key="-", max_retries=0)
        with httpx.Client(base_url=small.url, timeout=60) as c:
            with c.stream("POST", "/v1/chat/completions", json=body) as first:
                # keep the line iterator: a discarded one closes the connection, which the
                # server rightly takes as a client that left, and frees its place
                lines = first.iter_lines()
                next(lines)
                busy = c.post("/v1/chat/completions", json=body)
                assert busy.status_code == 429 and busy.headers["retry-after"] == "3"
                assert busy.json()["error"]["type"] == "rate_limit_error"
                with pytest.raises(openai.RateLimitError) as caught:
                    official.chat.completions.create(model=MODEL, messages=story, max_tokens=4)
                assert caught.value.response.headers["retry-after"] == "3"
                with pytest.raises(openai.APIStatusError) as caught:  # 413 has no class of its own
                    official.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": "x" * 5_000_000}]
                    )
                assert caught.value.status_code == 413
            time.sleep(0.5)
            again = c.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
            assert again.status_code == 200


def test_bad_input_is_answered_in_openai_shape_and_the_server_keeps_serving(server, client):
    url = f"{server.url}/v1/chat/completions"
    auth = {"Authorization": f"Bearer {ALPHA}"}

    def still_serving() -> None:
        reply = ask(client, "Say hello.", max_tokens=2)
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0

    def chat(**body) -> bytes:
        return json.dumps({"model": MODEL, **body}).encode()

    user = [{"role": "user", "content": "x"}]
    cases = [
        (b"{not json", 400),
        (chat(messages="hello"), 400),
        (chat(messages=[]), 400),
        (chat(messages=[{"role": "user", "content": ""}]), 400),
        (chat(messages=[{"role": "system", "content": " "}, {"role": "user", "content": ""}]), 400),
        (chat(messages=[{"role": "robot", "content": "x"}]), 400),
        (chat(messages=user, temperature="hot"), 400),
        (chat(messages=user, n=3), 400),
        (chat(messages=[{"role": "user", "content": "x" * 5_000_000}]), 413),
    ]
    for raw, status in cases:
        response = httpx.post(
            url, content=raw, headers={**auth, "Content-Type": "application/json"}
        )
        assert response.status_code == status, raw[:80]
        error = response.json()["error"]
        assert (
            set(error) == {"message", "type", "param", "code"}
            and "Traceback" not in error["message"]
        )
        still_serving()

    def tool(**function) -> dict:
        return {"tools": [{"type": "function", "function": function}]}

    impossible = {"type": "integer", "minimum": 5, "maximum": 1}  # no value satisfies it
    refused = [
        (openai.NotFoundError, {"model": "no-such-model"}),
        (openai.BadRequestError, {"text": "word " * 40_000}),  # 200,000 characters
        (openai.BadRequestError, tool(name="x", parameters={"type": 12})),
        (openai.BadRequestError, tool(name="bad name!")),
        (
            openai.BadRequestError,
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": impossible},
                }
            },
        ),
    ]
    for error_type, options in refused:
        text = options.pop("text", "hi")
        with pytest.raises(error_type) as caught:
            ask(client, text, **options)
        if "word" in text:
            assert caught.value.body["code"] == "context_length_exceeded"
        still_serving()
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="wrong-key-123", max_retries=0
        ).models.list()
    still_serving()
    missing = httpx.get(f"{server.url}/v1/models")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    still_serving()
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


def test_what_the_server_would_not_follow_is_refused_and_streams_count_their_tokens(
    server, client, http
):
    """Token ids outside the vocabulary never reach a batch (llama.cpp would fail it, other
    clients' requests with it); fields the reply would not follow are refused; a body that
    streams past the limit gets 413 as a declared one does; a streamed completion sends its
    usage when asked."""
    auth = {"Authorization": f"Bearer {ALPHA}"}

    def post(path: str, **body) -> httpx.Response:
        return httpx.post(f"{server.url}{path}", json={"model": MODEL, **body}, headers=auth)

    unknown = 10**8
    refused = [
        ("/v1/completions", {"prompt": [1, 2, unknown], "max_tokens": 2}, "prompt"),
        ("/v1/loglikelihoods", {"context": [1, unknown], "continuations": [[2]]}, "context"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/v1/embeddings", {"input": [[5, -3]], "model": None}, "input"),
        ("/v1/completions", {"prompt": "def f(", "suffix": "return 1"}, "suffix"),
        ("/v1/completions", {"prompt": "Hi", "logit_bias": {"50": 5}}, "logit_bias"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "best_of": 2},
            "best_of",
        ),
        ("/v1/completions", {"prompt": "Hi", "stream": True, "logprobs": 0}, "stream"),
    ]
    for path, body, param in refused:
        response = post(path, **body)
        assert response.status_code == 400, (path, body, response.text)
        assert response.json()["error"]["param"] == param
    assert post("/v1/completions", prompt="Hi", max_tokens=1).status_code == 200

    def chunks():  # no Content-Length: the body streams past serve.max_body_mb
        for _ in range(6):
            yield b" " * 2**20

    streamed = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=chunks(),
        headers={**auth, "Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "request_too_large"

    prompt = "One, two, three,"
    alone = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6)
    pieces = list(
        client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(p.choices[0].text for p in pieces if p.choices) == alone.choices[0].text
    assert pieces[-1].choices == [] and pieces[-1].usage == alone.usage
    none = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, stream=True))
    assert [(c.choices[0].text, c.choices[0].finish_reason) for c in none] == [("", "length")]


def test_a_browser_app_on_an_allowed_origin_may_send_the_openai_sdk_headers(server, tmp_path):
    from conftest import Served, free_port, serve_config

    from hearthlm.serve import create_app

    config = serve_config(tmp_path, cors_origins=["http://app.example"])
    chat = ChatHearth.from_backend(server.state.models.base.engine)
    with Served(create_app(config, chat=chat), free_port(), tmp_path) as browser_facing:
        sdk_headers = "authorization,content-type,x-stainless-os,x-stainless-retry-count"
        preflight = httpx.options(
            f"{browser_facing.url}/v1/chat/completions",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": sdk_headers,
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.options(
            f"{browser_facing.url}/v1/chat/completions",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert other.status_code == 400


def test_cors_is_off_and_metrics_count_tokens(server, http):
    preflight = httpx.options(
        f"{server.url}/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    metrics = http.get("/metrics").text
    assert "hearth_generated_tokens_total" in metrics and "hearth_sequences_running" in metrics
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    routes = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize"]
    routes += ["/v1/collections/{name}/files", "/v1/collections/{name}/ask", "/v1/agent/runs"]
    assert set(routes) <= set(paths)
    assert httpx.get(f"{server.url}/metrics").status_code == 401


def test_adapters_are_listed_and_picked_by_model(server, hf_chat, hf_cache, tmp_path):
    """[serve.adapters]: a PEFT folder (served on transformers) and a merged GGUF, each listed
    with its context length and chosen by the request's `model`."""
    import shutil as files

    import torch
    from conftest import Served, free_port, serve_config
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from hearthlm.llm import packaged_model_path
    from hearthlm.serve import create_app

    (folder,) = (p.parent for p in hf_cache.glob("models/*/model.safetensors"))
    torch.manual_seed(0)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type=TaskType.CAUSAL_LM)  # fmt: skip
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)  # large enough to change greedy output
    model.save_pretrained(tmp_path / "lora")
    merged = tmp_path / "merged.gguf"
    files.copy(packaged_model_path(), merged)
    adapters = {"tuned": str(tmp_path / "lora"), "merged": str(merged)}
    settings = serve_config(tmp_path, adapters=adapters)
    settings = settings.model_copy(
        update={"llm": settings.llm.model_copy(update={"cache_dir": hf_cache})}
    )
    chat = ChatHearth.from_backend(server.state.models.base.engine)
    with Served(create_app(settings, chat=chat), free_port(), tmp_path) as own:
        remote = openai.OpenAI(base_url=f"{own.url}/v1", api_key="none", max_retries=0)
        cards = {m.id: m for m in remote.models.list().data}
        assert cards["tuned"].parent == MODEL and cards["merged"].parent == MODEL
        assert cards["tuned"].max_model_len == 8192
        tuned = ask(remote, "Name three primary colors.", model="tuned", max_tokens=24)
        local = ChatHearth(backend="transformers", adapter=tmp_path / "lora", cache_dir=hf_cache)
        expected = local.invoke("Name three primary colors.", max_new_tokens=24).content
        assert tuned.choices[0].message.content == expected
        base = ask(remote, "Name three primary colors.", max_tokens=24).choices[0].message.content
        assert expected != base
        copy = ask(remote, "Name three primary colors.", model="merged", max_tokens=24)
        assert copy.choices[0].message.content == base


def test_a_long_prompt_does_not_freeze_the_streams_running(server):
    """Prompt processing is chunked: while a 3,000-token prompt is read, a stream already
    running keeps getting tokens, its longest pause a fraction of that prompt's reading time."""
    auth = {"Authorization": f"Bearer {ALPHA}"}
    story = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
             "max_tokens": 300, "stream": True}  # fmt: skip
    arrivals: list[float] = []
    started = threading.Event()

    def read_story() -> None:
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=story, headers=auth,
                          timeout=120) as response:  # fmt: skip
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.perf_counter())
                    if len(arrivals) == 10:
                        started.set()

    reader = threading.Thread(target=read_story)
    reader.start()
    started.wait(60)
    long_prompt = " ".join(f"Fact {i}: the kettle is blue." for i in range(400))  # ~3,000 tokens
    sent = time.perf_counter()
    body = {"model": MODEL, "messages": [{"role": "user", "content": long_prompt}], "max_tokens": 1}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=auth, timeout=120)
    reading = time.perf_counter() - sent
    reader.join()
    assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] > 2500
    during = [b - a for a, b in itertools.pairwise(arrivals) if sent <= a <= sent + reading]
    assert during, "the story streamed nothing while the long prompt was read"
    assert max(during) < reading / 3


def test_loglikelihoods_scores_continuations_and_refuses_what_cannot_be_scored(server):
    auth = {"Authorization": f"Bearer {ALPHA}"}
    url = f"{server.url}/v1/loglikelihoods"
    body = {"context": "The capital of France is", "continuations": [" Paris", " Lyon"]}
    scores = httpx.post(url, json=body, headers=auth).json()["loglikelihoods"]
    assert scores[0] > scores[1]  # Paris is likelier
    best = httpx.post(url, json={**body, "best_only": True}, headers=auth).json()
    assert best["loglikelihoods"][0] == pytest.approx(scores[0], abs=1e-3)
    assert best["loglikelihoods"][1] is None or best["loglikelihoods"][1] < scores[0]
    empty = httpx.post(url, json={**body, "continuations": [""]}, headers=auth)
    assert empty.status_code == 400
    long = httpx.post(url, json={**body, "context": "word " * 9000}, headers=auth)
    assert long.status_code == 400
    assert long.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.post(url, json=body).status_code == 401  # no key
