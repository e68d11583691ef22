"""ReAct on the real default model, user tools, limits, and LangChain's own agent."""

from __future__ import annotations

import json

import pytest
from conftest import install_distribution
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from hearthlm.agents.react import AgentResult, ReActAgent, Step
from hearthlm.agents.tools import as_tool, calculator_tool, resolve_tools
from hearthlm.errors import ToolError


def test_react_answers_through_the_calculator(llama_chat):
    result = ReActAgent(llama_chat, [calculator_tool()]).invoke("What is 1234 * 5678?")
    assert result.stopped_reason == "final_answer"
    assert result.answer == "7006652"
    first = result.steps[0]
    assert first.tool == "calculator" and first.observation == "7006652"
    assert first.tool_input["expression"].replace(" ", "") == "1234*5678"
    assert result.valid_action_rate == 1.0
    assert all(step.seconds > 0 and step.tokens > 0 for step in result.steps)


def test_a_user_function_plugs_in_with_one_line(llama_chat):
    calls = []

    def lookup_order(order_id: str) -> str:
        """Look up the delivery status of an order by its id."""
        calls.append(order_id)
        return f"Order {order_id} was delivered on Monday."

    agent = ReActAgent(llama_chat, [lookup_order])
    result = agent.invoke("What is the delivery status of order A-77?")
    assert calls, result.steps
    assert result.steps[0].tool == "lookup_order"
    assert "delivered on Monday" in result.steps[0].observation


@pytest.mark.slow
def test_react_runs_on_a_chat_model_that_takes_no_tool_choice_any():
    """langchain-community's ChatLlamaCpp refuses tool_choice="any" with a ValueError: the
    agent then binds its tools with the model's own default, and the run goes on."""
    from langchain_community.chat_models import ChatLlamaCpp

    from hearthlm.llm.sources import packaged_model_path

    chat = ChatLlamaCpp(
        model_path=str(packaged_model_path()),
        chat_format="chatml-function-calling",
        temperature=0.0,
        max_tokens=96,
        n_ctx=4096,
        verbose=False,
    )
    with pytest.raises(ValueError, match="any"):
        chat.bind_tools([calculator_tool()], tool_choice="any")
    result = ReActAgent(chat, [calculator_tool()], max_steps=2).invoke("What is 12 * 3?")
    # it ran (it raised before), and ended as a run ends, whatever the 135M model wrote
    assert result.steps and result.stopped_reason in (
        "final_answer",
        "max_steps",
        "repeated_action",
    )
    assert all(s.tool in ("calculator", "final_answer") or not s.valid for s in result.steps)


def test_steps_stream_and_callbacks_fire(llama_chat):
    class Events(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tools: list[str] = []
            self.model_calls = 0

        def on_tool_start(self, serialized, input_str, **kwargs) -> None:
            self.tools.append(serialized["name"])

        def on_chat_model_start(self, *args, **kwargs) -> None:
            self.model_calls += 1

    events = Events()
    agent = ReActAgent(llama_chat, [calculator_tool()])
    items = list(agent.stream("What is 1234 * 5678?", {"callbacks": [events]}))
    assert all(len(i.steps) == 1 and not i.stopped_reason for i in items[:-1])
    result = sum(items[1:], items[0])  # the chunks add up to the result
    assert isinstance(result, AgentResult) and result.stopped_reason == "final_answer"
    assert all(isinstance(s, Step) for s in result.steps) and result.answer == "7006652"
    assert events.tools == ["calculator"]
    assert events.model_calls == 2 * len(result.steps)  # a thought and an action per step


def test_token_and_step_limits_end_gracefully(llama_chat):
    agent = ReActAgent(llama_chat, [calculator_tool()], max_tokens=1)
    result = agent.invoke("What is 1234 * 5678?")
    assert result.stopped_reason == "max_tokens" and result.answer is None
    assert len(result.steps) == 1
    result = ReActAgent(llama_chat, [calculator_tool()], max_steps=1).invoke("What is 1234 * 5678?")
    assert result.stopped_reason == "max_steps" and len(result.steps) == 1
    result = ReActAgent(llama_chat, [calculator_tool()], max_seconds=0).invoke("What is 2 + 2?")
    assert result.stopped_reason == "max_seconds" and result.steps == []


def _scripted(*actions: dict) -> FakeMessagesListChatModel:
    """A model that replays thoughts and actions: the real one will not loop on demand."""
    responses = []
    for action in actions:
        responses += [AIMessage("thinking"), AIMessage(json.dumps(action))]
    return FakeMessagesListChatModel(responses=responses)


def test_a_repeated_action_is_detected_and_stopped():
    same = {"name": "calculator", "arguments": {"expression": "1 + 1"}}
    agent = ReActAgent(_scripted(same, same, same), [calculator_tool()])  # type: ignore[arg-type]
    result = agent.invoke("loop please")
    assert result.stopped_reason == "repeated_action"
    assert [s.observation for s in result.steps] == ["2", "(not run again: same action as before)"]


def test_tool_failures_become_observations():
    @tool
    def flaky(x: str) -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    actions = [
        {"name": "calculator", "arguments": {"expression": "1/0"}},
        {"name": "flaky", "arguments": {"x": "a"}},
        {"name": "final_answer", "arguments": {"answer": "gave up"}},
    ]
    agent = ReActAgent(_scripted(*actions), [calculator_tool(), flaky])  # type: ignore[arg-type]
    result = agent.invoke("try")
    assert result.answer == "gave up"
    assert "division by zero" in result.steps[0].observation
    assert "disk on fire" in result.steps[1].observation


def test_tool_resolution_errors():
    def undocumented(x: int) -> int:
        return x

    with pytest.raises(ToolError, match="docstring"):
        as_tool(undocumented)
    with pytest.raises(ToolError, match="calculator"):
        resolve_tools([calculator_tool(), calculator_tool()])


@pytest.mark.slow
def test_langchain_create_agent_drives_the_local_model(llama_chat):
    from langchain.agents import create_agent

    from hearthlm.agents.middleware import call_tools_then_answer

    agent = create_agent(llama_chat, tools=[calculator_tool()], middleware=[call_tools_then_answer])
    state = agent.invoke(
        {"messages": [HumanMessage("What is 1234 * 5678?")]}, config={"recursion_limit": 8}
    )
    messages = state["messages"]
    assert messages[1].tool_calls[0]["name"] == "calculator"
    assert isinstance(messages[2], ToolMessage) and messages[2].content == "7006652"
    assert "7006652" in messages[-1].content and not messages[-1].tool_calls


def test_plugin_tools_register_through_entry_points(tmp_path, monkeypatch):
    """A real distribution on sys.path declaring a hearthlm.tools entry point."""
    module = (
        "def forecast(city: str) -> str:\n"
        '    """Tomorrow\'s weather forecast for a city."""\n'
        "    return f'Rain in {city}.'\n"
    )
    entry = "[hearthlm.tools]\nforecast = weather_plugin:forecast\n"
    install_distribution(tmp_path, monkeypatch, "weather-plugin", entry, module)
    from hearthlm.agents.tools import plugin_tools

    (found,) = [t for t in plugin_tools() if t.name == "forecast"]
    assert found.invoke({"city": "Oslo"}) == "Rain in Oslo."
