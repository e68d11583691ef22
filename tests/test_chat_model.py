"""The chat model on the real packaged model, greedy, on both backends."""

from __future__ import annotations

import asyncio
import logging

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from hearthlm.config import SamplingConfig
from hearthlm.errors import ConfigError
from hearthlm.llm import ChatHearth
from hearthlm.llm.text import render_chat


def test_greedy_is_repeatable_and_stream_equals_invoke(any_chat):
    question = "Name three primary colors."
    first = any_chat.invoke(question).content
    assert first  # a real answer
    assert any_chat.invoke(question).content == first
    assert "".join(c.content for c in any_chat.stream(question)) == first


def test_known_answer_on_transformers(hf_chat):
    assert hf_chat.invoke("What is the capital of France?").content == (
        "The capital of France is Paris."
    )


def test_usage_metadata_and_context_window(any_chat):
    reply = any_chat.invoke("Say hello.")
    usage = reply.usage_metadata
    prompt_tokens = any_chat.get_num_tokens_from_messages([HumanMessage("Say hello.")])
    assert usage["input_tokens"] == prompt_tokens
    assert 0 < usage["output_tokens"] <= 48
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert any_chat.context_window == 8192
    assert reply.response_metadata["model_name"] == "SmolLM2-135M-Instruct"


def test_max_new_tokens_ends_with_length(llama_chat):
    reply = llama_chat.invoke("Write a long story about a dragon.", max_new_tokens=5)
    assert reply.usage_metadata["output_tokens"] == 5
    assert reply.response_metadata["finish_reason"] == "length"


def test_stop_sequences_are_honoured(any_chat):
    full = any_chat.invoke("Count from 1 to 10.").content
    assert full.startswith("1. 1\n2. 2\n3. 3")
    reply = any_chat.invoke("Count from 1 to 10.", stop=["3."])
    assert reply.content == "1. 1\n2. 2\n"
    streamed = "".join(c.content for c in any_chat.stream("Count from 1 to 10.", stop=["3."]))
    assert streamed == reply.content


def test_backends_agree_on_first_tokens(llama_chat, hf_chat):
    """Q4_1 weights: llama.cpp quantizes activations too, so long outputs drift apart; the
    agreement observed is recorded in the README."""
    prompt = render_chat(
        hf_chat.engine.chat_template, [{"role": "user", "content": "Count from 1 to 10."}]
    )
    ids = hf_chat.engine.tokenize(prompt)
    assert ids == llama_chat.engine.tokenize(prompt)  # same template, same tokens
    outputs = []
    for engine in (hf_chat.engine, llama_chat.engine):
        with engine.lock:
            tokens = engine.generate(ids, SamplingConfig())
            outputs.append([next(tokens) for _ in range(12)])
            tokens.close()
    assert outputs[0] == outputs[1]


def test_seeded_sampling_is_reproducible(any_chat):
    kwargs = {"temperature": 1.0, "top_p": 0.9, "top_k": 40, "seed": 7, "max_new_tokens": 20}
    a = any_chat.invoke("Tell me a word.", **kwargs).content
    b = any_chat.invoke("Tell me a word.", **kwargs).content
    assert a == b


def test_async_and_batch(llama_chat):
    async def run():
        one = await llama_chat.ainvoke("Say hello.")
        parts = [c.content async for c in llama_chat.astream("Say hello.")]
        many = await llama_chat.abatch(["Say hello.", "Count from 1 to 10."])
        return one, parts, many

    one, parts, many = asyncio.run(run())
    assert "".join(parts) == one.content
    assert many[0].content == one.content
    assert [m.content for m in llama_chat.batch(["Say hello.", "Count from 1 to 10."])] == [
        m.content for m in many
    ]


def test_callbacks_see_every_token(llama_chat):
    class Collect(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs) -> None:
            self.tokens.append(token)

    handler = Collect()
    text = "".join(
        c.content for c in llama_chat.stream("Say hello.", config={"callbacks": [handler]})
    )
    assert "".join(handler.tokens) == text and len(handler.tokens) > 3


def test_history_with_system_and_ai_turns(llama_chat):
    messages = [
        SystemMessage("You are a terse assistant."),
        HumanMessage("My name is Ada."),
        AIMessage("Nice to meet you, Ada."),
        HumanMessage("What is my name?"),
    ]
    assert "Ada" in llama_chat.invoke(messages).content


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny in {city}"


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def send_email(to: str, subject: str, body: str) -> str:
    """Send an email."""
    return "sent"


REQUESTS = [
    "What's the weather in Paris?",
    "What is 12 times 7?",
    "Email bob@example.com that the meeting moved to 3pm.",
    "Is it raining in Tokyo right now?",
    "Multiply 345 by 12.",
    "Send a message to alice@example.org saying thanks.",
    "How hot is it in Cairo today?",
    "What is the product of 9 and 81?",
    "Tell Carol at carol@example.net the report is done.",
    "Weather forecast for Oslo please.",
]
SCHEMAS = {
    "get_weather": {"city": str},
    "multiply": {"a": int, "b": int},
    "send_email": {"to": str, "subject": str, "body": str},
}


@pytest.mark.slow
def test_bind_tools_gives_schema_valid_calls_on_ten_requests(any_chat):
    bound = any_chat.bind_tools([get_weather, multiply, send_email], tool_choice="any")
    for request in REQUESTS:
        reply = bound.invoke(request)
        assert reply.invalid_tool_calls == [], request
        assert len(reply.tool_calls) == 1, request
        call = reply.tool_calls[0]
        fields = SCHEMAS[call["name"]]
        assert set(call["args"]) == set(fields), (request, call)
        assert all(isinstance(call["args"][k], t) for k, t in fields.items()), (request, call)
        assert reply.response_metadata["finish_reason"] == "tool_calls"


def test_named_tool_choice_forces_that_tool_and_tool_runs(llama_chat):
    reply = llama_chat.bind_tools([get_weather, multiply], tool_choice="multiply").invoke(
        "What is 6 times 7?"
    )
    call = reply.tool_calls[0]
    assert call["name"] == "multiply"
    assert multiply.invoke(call["args"]) == call["args"]["a"] * call["args"]["b"]


def test_auto_tool_choice_allows_plain_answers_and_streams_calls_whole(llama_chat):
    bound = llama_chat.bind_tools([get_weather])
    answer = bound.invoke("Hello, who are you?")
    assert answer.tool_calls == [] and answer.content
    chunks = list(bound.bind(tool_choice="any").stream("What's the weather in Paris?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.tool_calls[0]["name"] == "get_weather"
    assert merged.content == ""


def test_tool_results_in_history_are_accepted(llama_chat):
    from langchain_core.messages import ToolMessage

    call = {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1", "type": "tool_call"}
    messages = [
        HumanMessage("What's the weather in Paris?"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("sunny, 21 degrees", tool_call_id="call_1", name="get_weather"),
    ]
    # Asked for an answer, the model states the tool's result in words.
    answer = llama_chat.bind_tools([get_weather], tool_choice="none").invoke(messages)
    assert answer.tool_calls == [] and answer.response_metadata["finish_reason"] == "stop"
    assert "sunny" in answer.content and "21" in answer.content
    # Left to choose, the greedy 135M model calls the tool again with the request's own
    # well-formed arguments (agents stop such repeats: see test_tools).
    again = llama_chat.bind_tools([get_weather]).invoke(messages)
    assert again.invalid_tool_calls == []
    assert [(c["name"], c["args"]) for c in again.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]


class Person(BaseModel):
    name: str = Field(description="The person's first name")
    age: int = Field(description="Age in years")


def test_with_structured_output_returns_valid_object(any_chat):
    person = any_chat.with_structured_output(Person).invoke("John is 31 years old.")
    assert person == Person(name="John", age=31)


def test_structured_output_other_forms(llama_chat):
    schema = {
        "title": "City",
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    as_dict = llama_chat.with_structured_output(schema).invoke("I live in Rome.")
    assert as_dict == {"city": "Rome"}
    raw = llama_chat.with_structured_output(Person, include_raw=True).invoke("Ann is 40.")
    assert raw["parsed"] == Person(name="Ann", age=40) and raw["parsing_error"] is None
    assert isinstance(raw["raw"], AIMessage)  # the model's own message, beside what it parsed to
    via_tool = llama_chat.with_structured_output(Person, method="function_calling")
    assert via_tool.invoke("Ann is 40.") == Person(name="Ann", age=40)


def test_second_transformers_load_reads_the_cached_copy(hf_chat, hf_cache, caplog):
    # How much faster the cached load is: benchmarks/bench_load.py.
    cached = list(hf_cache.glob("models/*/model.safetensors"))
    assert len(cached) == 1
    written = cached[0].stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="hearthlm"):
        again = ChatHearth(backend="transformers", cache_dir=hf_cache, max_new_tokens=48).load()
    assert not [r for r in caplog.records if "converting" in r.getMessage()]  # no new conversion
    assert cached[0].stat().st_mtime_ns == written  # the copy was read, not rewritten
    assert not list(hf_cache.glob("models/.converting-*"))
    question = "Name three primary colors."
    assert again.invoke(question).content == hf_chat.invoke(question).content


def test_llama_cpp_runs_its_own_threads_not_torchs_openmp(monkeypatch, caplog):
    """Sharing torch's OpenMP runtime made decoding 3x slower once the embedder had run
    (benchmarks/bench_threads.py): the install builds llama.cpp with its own thread pool, and
    an OpenMP build is named in a warning with the command that rebuilds it."""
    import llama_cpp

    from hearthlm.llm.llamacpp_backend import warn_if_openmp

    assert b"OPENMP = 1" not in llama_cpp.llama_print_system_info()
    warn_if_openmp.cache_clear()
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"AVX2 = 1 | OPENMP = 1 |")
    try:
        with caplog.at_level(logging.WARNING, logger="hearthlm.llm.llamacpp_backend"):
            assert warn_if_openmp() and warn_if_openmp()
    finally:
        warn_if_openmp.cache_clear()
    (record,) = caplog.records  # once a process
    assert "OpenMP" in record.message and 'CMAKE_ARGS="-DGGML_OPENMP=OFF"' in record.message


def test_the_batched_engine_decodes_its_sequences_in_slot_order_whatever_order_they_came_in():
    """llama.cpp decodes a batch of sequences in their ids' order 1.5x faster than the same
    tokens shuffled (benchmarks/bench_engine.py). Requests that come back to their cached
    prompts land in their old slots in any order, and the steps must still list them in order."""
    from hearthlm.config import LLMConfig
    from hearthlm.llm.llamacpp_backend import LlamaCppBackend

    backend = LlamaCppBackend.load(LLMConfig(parallel=4))
    context = backend.batched.scheduler.context
    batches: list[list[int]] = []
    decode = context.decode
    context.decode = lambda items: (batches.append([i[2] for i in items]), decode(items))[1]
    questions = [
        "Write a long story about a lighthouse keeper.",
        "Explain in detail how a steam engine works.",
        "Describe a walk through a busy market.",
        "Tell the story of a ship lost at sea.",
    ]
    prompts = [
        backend.tokenize(render_chat(backend.chat_template, [{"role": "user", "content": q}]))
        for q in questions
    ]
    greedy = SamplingConfig(temperature=0)
    try:
        for arrival in ([0, 1, 2, 3], [3, 1, 0, 2]):  # the second reuses each cached prompt
            streams = [backend.generate(prompts[i], greedy) for i in arrival]
            for stream in streams:
                next(stream)  # admitted, and decoding, before the next one comes
            for _ in range(6):
                for stream in streams:
                    next(stream, None)
            for stream in streams:
                stream.close()
    finally:
        backend.close()
    decoding = [b for b in batches if len(b) == len(set(b)) == 4]
    assert len(decoding) >= 6
    assert all(b == sorted(b) for b in decoding), decoding


def test_a_follow_up_turn_finds_its_conversation_cached_after_another_user_came_and_went():
    """Another user's request shares only the system prompt with a finished conversation. It
    takes an empty slot rather than that conversation's, with a copy of the system prompt's
    cells, so it evaluates only its own tokens, and the follow-up turn evaluates only its new
    tokens (the server's eight users keep their eight caches); a prompt that a slot holds
    entirely is read from that slot."""
    from hearthlm.config import LLMConfig
    from hearthlm.llm import batching
    from hearthlm.llm.llamacpp_backend import LlamaCppBackend

    backend = LlamaCppBackend.load(LLMConfig(parallel=2))
    scheduler, greedy = backend.batched.scheduler, SamplingConfig(temperature=0)

    def chat(*turns: str) -> list[int]:
        roles = ["user", "assistant"] * len(turns)
        messages = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=False)]
        return backend.tokenize(render_chat(backend.chat_template, messages))

    def evaluated(prompt: list[int]) -> tuple[list[int], int]:
        """The reply's tokens, and how many prompt tokens the request evaluated."""
        before = scheduler.stats()["prompt_tokens"]
        reply = list(backend.generate(prompt, greedy))  # to the end-of-turn token
        return reply, scheduler.stats()["prompt_tokens"] - before

    try:
        first = chat("Say hello.")
        reply, _ = evaluated(first)
        other = chat("Name a colour.")
        other_reply, other_cost = evaluated(other)
        copied = scheduler.stats()["copied_tokens"]
        answer = backend.decode(reply)
        follow_up = chat("Say hello.", answer, "Now say goodbye.")
        _, cost = evaluated(follow_up)
        _, again = evaluated(first)  # the same prompt again: it is in the follow-up's cells
    finally:
        backend.close()
    fresh = LlamaCppBackend.load(LLMConfig(parallel=2))  # nothing cached: all evaluated
    try:
        other_in_full = list(fresh.generate(other, greedy))
    finally:
        fresh.close()
    system = next(i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b)
    assert system >= batching.MIN_COPIED_PREFIX and copied == system  # from the first slot
    assert other_cost == len(other) - system  # only its own tokens were evaluated
    assert other_in_full == other_reply  # the same reply as with every token evaluated
    held = first + reply  # the cells of the first conversation's slot
    assert follow_up[: len(held)] == held
    assert cost == len(follow_up) - len(held)
    assert again == 1  # only its last token, for the logits of the first reply token


@pytest.mark.slow
def test_a_dropped_batched_backend_stops_its_scheduler_before_its_model_is_freed():
    """Freed while its scheduler still decoded, the model crashed the process (SIGSEGV)."""
    import gc

    from hearthlm.config import LLMConfig
    from hearthlm.llm.llamacpp_backend import LlamaCppBackend

    backend = LlamaCppBackend.load(LLMConfig(parallel=2))
    scheduler = backend.batched.scheduler._thread
    prompt = render_chat(backend.chat_template, [{"role": "user", "content": "Tell a story."}])
    tokens = backend.generate(backend.tokenize(prompt), SamplingConfig(temperature=0))
    assert [t for _, t in zip(range(3), tokens, strict=False)]
    del backend, tokens
    gc.collect()
    assert not scheduler.is_alive()


def test_a_binding_without_a_context_setting_the_engine_sets_is_refused(monkeypatch):
    """ctypes takes an assignment to a field a structure lacks without a word, so an older
    llama-cpp-python would drop flash attention or the per-sequence cache silently: the
    start-up check names the missing field as it names a missing function."""
    import ctypes

    import llama_cpp

    from hearthlm.errors import ModelLoadError
    from hearthlm.llm import llama_batch

    llama_batch.check_bindings()  # the installed version has them all
    fields = [f for f in llama_cpp.llama_context_params._fields_ if f[0] != "flash_attn_type"]
    older = type("llama_context_params", (ctypes.Structure,), {"_fields_": fields})
    monkeypatch.setattr(llama_cpp, "llama_context_params", older)
    monkeypatch.delattr(llama_cpp, "llama_vocab_is_eog")
    with pytest.raises(ModelLoadError) as refused:
        llama_batch.check_bindings()
    message = str(refused.value)
    assert "llama_context_params.flash_attn_type" in message and "llama_vocab_is_eog" in message
    assert "llama-cpp-python >=0.3.17,<0.4" in message


def test_logprobs_are_each_tokens_as_it_was_sampled(any_chat):
    """``logprobs=True`` gives each generated token's log-probability from the logits it was
    sampled from, in ChatOpenAI's form: a greedy reply took the likeliest token every time."""
    reply = any_chat.invoke("Name a colour.", max_new_tokens=8, logprobs=True, top_logprobs=2)
    content = reply.response_metadata["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == reply.content
    assert len(content) == reply.usage_metadata["output_tokens"]
    for token in content:
        best = token["top_logprobs"]
        assert len(best) == 2 and best[0]["logprob"] >= best[1]["logprob"]
        assert token["token"] == best[0]["token"] and token["logprob"] == best[0]["logprob"]
    with pytest.raises(ConfigError, match="top_logprobs needs logprobs"):
        any_chat.invoke("Hi", top_logprobs=2)
