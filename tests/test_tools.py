"""Custom tools on the real default model: calls are strict JSON on both backends, arguments come
from the request, and every path (bind_tools, ReAct, create_agent) agrees."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
import xgrammar as xgr
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool
from pydantic import ValidationError

from hearthlm.agents.react import ReActAgent
from hearthlm.agents.tools import calculator_tool
from hearthlm.errors import ContextWindowError, ToolError
from hearthlm.llm.grammar import json_schema_gbnf
from hearthlm.llm.spans import copy_schema, text_numbers, text_spans
from hearthlm.llm.text import RepetitionGuard, ends_in_loop
from hearthlm.llm.tools import call_schema, format_tools


def order_status(order_id: str) -> str:
    """Look up the delivery status of an order by its id."""
    return f"Order {order_id} was delivered on Monday."


# -- item 1: strict JSON, by construction and on the model ------------------------------------


def _accepts(gbnf: str, text: str) -> bool:
    return bool(xgr.testing._is_grammar_accept_string(xgr.Grammar.from_ebnf(gbnf), text))


def test_grammar_strings_exclude_control_characters():
    gbnf = json_schema_gbnf(call_schema(format_tools([order_status])))
    call = '{"name": "order_status", "arguments": {"order_id": "%s"}}'
    assert _accepts(gbnf, call % "A123")
    assert _accepts(gbnf, call % "line\\nbreak \\u00e9 \\\\")  # escapes are fine
    for raw in ("\n", "\t", "\x00", "\x1f"):
        assert not _accepts(gbnf, call % f"a{raw}b"), repr(raw)


@pytest.mark.parametrize(
    ("expression", "shown"),
    [("min(3, 9)", "3"), ("round(2.567, 2)", "2.57"), ("log(8, 2)", "3"), ("max(1,500,2)", "500")],
)
def test_the_calculator_tool_takes_the_functions_it_advertises(expression, shown):
    calculator = calculator_tool()
    assert "round" in calculator.description and "min" in calculator.description
    assert calculator.invoke({"expression": expression}) == shown
    # and a model decoding the call under its grammar may write it
    gbnf = json_schema_gbnf(call_schema(format_tools([calculator])))
    call = '{"name": "calculator", "arguments": {"expression": "%s"}}'
    assert _accepts(gbnf, call % expression)


def test_the_calculator_tool_still_refuses_what_is_not_one_expression():
    calculator = calculator_tool()
    gbnf = json_schema_gbnf(call_schema(format_tools([calculator])))
    call = '{"name": "calculator", "arguments": {"expression": "%s"}}'
    for text in ("17 * 3 = 51", ", 3", "min(3; 9)", "x = 5"):
        with pytest.raises(ValidationError):
            calculator.invoke({"expression": text})
        assert not _accepts(gbnf, call % text), text


NAMES = ["city", "order_id", "count", "price", "tags", "unit", "when", "note", "options"]
LEAVES = st.sampled_from(
    [
        {"type": "string", "maxLength": 24},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "string", "enum": ["low", "high", "very high"]},
        {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 2},
    ]
)


def _objects(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.dictionaries(st.sampled_from(NAMES), values, min_size=1, max_size=3).flatmap(
        lambda props: st.sets(st.sampled_from(sorted(props))).map(
            lambda required: {
                "type": "object",
                "properties": props,
                "required": sorted(required),
            }
        )
    )


SCHEMAS = _objects(st.one_of(LEAVES, _objects(LEAVES)))
PROMPTS = st.one_of(
    st.sampled_from(
        [
            "Where is order A123?",
            "Weather in Paris\nand Rome, 3 days, tags: sun, rain",
            "Buy 2 items at 9.5 each",
            'He said "stop" \\ then\tleft.',
        ]
    ),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40),
)


def _check_calls(chat, schema, prompt, mode, temperature):
    tool = {
        "type": "function",
        "function": {"name": "act", "description": "Do it.", "parameters": schema},
    }
    # model_copy shares the loaded weights
    chat = chat.model_copy(update={"tool_arguments": mode, "max_structured_tokens": 400})
    reply = chat.bind_tools([tool], tool_choice="any").invoke(
        prompt, temperature=temperature, seed=7
    )
    assert reply.invalid_tool_calls == [], reply.invalid_tool_calls
    (call,) = reply.tool_calls
    jsonschema.validate(call["args"], schema)
    json.loads(json.dumps(call["args"]), strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["llamacpp", "transformers"])
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # each example runs the model: no shrinking
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    schema=SCHEMAS,
    prompt=PROMPTS,
    mode=st.sampled_from(["write", "copy"]),
    temperature=st.sampled_from([0.0, 1.0]),
)
def test_every_constrained_call_is_strict_json_matching_its_schema(
    request, backend, schema, prompt, mode, temperature
):
    chat = request.getfixturevalue("llama_chat" if backend == "llamacpp" else "hf_chat")
    _check_calls(chat, schema, prompt, mode, temperature)


@pytest.mark.slow
@settings(
    max_examples=30,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schema=SCHEMAS, prompt=PROMPTS, mode=st.sampled_from(["write", "copy"]))
def test_many_sampled_calls_on_llamacpp_are_strict_json(llama_chat, schema, prompt, mode):
    _check_calls(llama_chat, schema, prompt, mode, 1.0)


# -- item 2: arguments copied from the request -------------------------------------------------


def test_spans_and_numbers_of_a_request():
    spans = text_spans(["Where is my order A123? Ask Chen Wei's team."])
    assert {"A123", "A123?", "Chen Wei", "my order A123"} <= set(spans)
    assert text_numbers(["Convert 99.5 EUR, then 2025-06-12 at 07:30"])[:2] == [99.5, 2025.0]


def test_copy_schema_narrows_only_where_a_candidate_fits():
    schema = {
        "type": "object",
        "properties": {
            "order_id": {"type": "string", "pattern": "^[A-Z][0-9]+$"},
            "year": {"type": "integer", "minimum": 1900},
            "mood": {"type": "string", "enum": ["ok", "bad"]},
            "day": {"type": "string", "format": "date"},
        },
    }
    narrowed = copy_schema(schema, ["Order A123 from 1999, 3 boxes"])
    props = narrowed["properties"]
    assert props["order_id"]["enum"] == ["A123"]
    assert props["year"]["enum"] == [1999]
    assert props["mood"] == schema["properties"]["mood"]
    assert props["day"] == schema["properties"]["day"]  # no span is a date: stays free
    assert copy_schema(schema, [""])["properties"] == schema["properties"]


def test_order_status_through_bind_tools(any_chat):
    reply = any_chat.bind_tools([order_status], tool_choice="any").invoke("Where is my order A123?")
    assert reply.invalid_tool_calls == []
    assert reply.tool_calls[0]["name"] == "order_status"
    assert reply.tool_calls[0]["args"] == {"order_id": "A123"}


def test_order_status_through_react_answers_once(llama_chat):
    calls = []

    def order_status(order_id: str) -> str:
        """Look up the delivery status of an order by its id."""
        calls.append(order_id)
        return f"Order {order_id} was delivered on Monday."

    result = ReActAgent(llama_chat, [order_status]).invoke("Where is my order A123?")
    assert calls[0] == "A123"
    assert result.stopped_reason == "final_answer"
    assert result.answer is not None and result.answer.count("Monday") == 1


@pytest.mark.slow
def test_order_status_through_create_agent_answers_once(llama_chat):
    from langchain.agents import create_agent

    from hearthlm.agents.middleware import call_tools_then_answer

    agent = create_agent(llama_chat, tools=[order_status], middleware=[call_tools_then_answer])
    state = agent.invoke(
        {"messages": [HumanMessage("Where is my order A123?")]}, config={"recursion_limit": 8}
    )
    messages = state["messages"]
    assert messages[1].tool_calls[0]["args"] == {"order_id": "A123"}
    assert isinstance(messages[2], ToolMessage) and "Monday" in messages[2].content
    assert messages[-1].content.count("Monday") == 1 and not messages[-1].tool_calls


def test_structured_output_copies_fields(llama_chat):
    schema = {
        "title": "Booking",
        "type": "object",
        "properties": {"city": {"type": "string"}, "nights": {"type": "integer"}},
        "required": ["city", "nights"],
    }
    booking = llama_chat.with_structured_output(schema).invoke("Book 3 nights in Lisbon.")
    assert booking == {"city": "Lisbon", "nights": 3}


def test_named_and_auto_tool_choice_copy_arguments(llama_chat):
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    tools = [order_status, get_weather]
    named = llama_chat.bind_tools(tools, tool_choice="get_weather").invoke("Is it hot in Cairo?")
    assert named.tool_calls[0]["args"] == {"city": "Cairo"}
    auto = llama_chat.bind_tools(tools, tool_choice="auto").invoke("Where is my order Q-77?")
    assert auto.invalid_tool_calls == []
    # auto may answer in text; a call it makes carries the id from the request
    assert all(call["args"] == {"order_id": "Q-77"} for call in auto.tool_calls), auto


def test_the_issue_loop_is_stopped_after_three_repeats():
    answer = (
        "The final answer is on Monday, order_id A123 is delivered on Monday, order_id A123 is "
        "delivered on Monday, order_id A123 is delivered on Monday, order_id A123 is delivered"
    )
    guard, kept = RepetitionGuard(), []
    for word in answer.split(" "):
        if guard.push(word + " "):
            break
        kept.append(word)
    assert len(kept) < len(answer.split(" ")) - 5
    assert not ends_in_loop(["I", "like", "tea.", "I", "like", "coffee.", "I", "like", "cake."])


def test_the_guard_stops_where_a_check_of_the_whole_text_would_however_the_text_is_cut():
    # The guard keeps only the words a loop can span; a reply hundreds of words long must stop
    # at the same delta as a check of its whole text, wherever the deltas split words or spaces.
    rng = random.Random(7)
    vocabulary = ["the", "day", "is", "long,", "and", "night", "A123", "\u00e9t\u00e9", "."]
    for _ in range(60):
        words = [rng.choice(vocabulary) for _ in range(rng.randrange(20, 400))]
        if rng.random() < 0.5:  # end in a loop of a phrase of 1 to 45 words
            words += rng.choice([1, 2, 5, 30, 45]) * rng.randrange(3, 8) * [rng.choice(vocabulary)]
            phrase = [rng.choice(vocabulary) for _ in range(rng.randrange(1, 46))]
            words += phrase * 4
        text = "".join(w + rng.choice([" ", "  ", "\n", " \t"]) for w in words)
        guard, seen, expected, got = RepetitionGuard(), "", None, None
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, len(text) // 3)))
        for i, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(text)], strict=True)):
            seen += text[start:end]
            if expected is None and ends_in_loop(seen.split()):
                expected = i
            if got is None and guard.push(text[start:end]):
                got = i
        assert got == expected


# -- bad input ------------------------------------------------------------------------------------


def test_a_tool_without_arguments_is_called_with_none(llama_chat):
    def server_time() -> str:
        """Tell the current server time."""
        return "12:00"

    reply = llama_chat.bind_tools([server_time], tool_choice="any").invoke("What time is it?")
    assert reply.tool_calls[0]["name"] == "server_time" and reply.tool_calls[0]["args"] == {}


def test_a_huge_description_still_gives_a_call_or_a_clear_error(llama_chat):
    tool = StructuredTool.from_function(
        order_status, description="Look up an order. " + "Very detailed notes. " * 240
    )
    assert len(tool.description) > 5000
    reply = llama_chat.bind_tools([tool], tool_choice="any").invoke("Where is order A123?")
    assert reply.tool_calls[0]["args"] == {"order_id": "A123"}
    small = llama_chat.model_copy(update={"context_size": 512})
    small._engine = None
    with pytest.raises(ContextWindowError, match="context window"):
        small.bind_tools([tool], tool_choice="any").invoke("Where is order A123?")


def test_two_tools_with_one_name_are_refused(llama_chat):
    def lookup(order_id: str) -> str:
        """Look up an order."""
        return ""

    twin = StructuredTool.from_function(lookup)
    with pytest.raises(ToolError, match="share the name"):
        llama_chat.bind_tools([twin, StructuredTool.from_function(lookup)])
    with pytest.raises(ToolError, match="share the name"):
        ReActAgent(llama_chat, [twin, StructuredTool.from_function(lookup)])


def test_a_tool_that_raises_becomes_an_observation(llama_chat):
    def order_status(order_id: str) -> str:
        """Look up the delivery status of an order by its id."""
        raise RuntimeError("order database is down")

    result = ReActAgent(llama_chat, [order_status], max_steps=2).invoke("Where is order A123?")
    assert "order database is down" in result.steps[0].observation

    from langchain.agents import create_agent

    from hearthlm.agents.middleware import call_tools_then_answer, tool_errors_as_observations

    agent = create_agent(
        llama_chat,
        tools=[order_status],
        middleware=[call_tools_then_answer, tool_errors_as_observations],
    )
    state = agent.invoke(
        {"messages": [HumanMessage("Where is order A123?")]}, config={"recursion_limit": 8}
    )
    (observation,) = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert observation.status == "error" and "order database is down" in observation.content
    assert state["messages"][-1].content and not state["messages"][-1].tool_calls
