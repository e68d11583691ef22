"""ReAct: Thought, Action, Observation, until a final answer, on the local model.

Each step is two short generations that share one prompt (llama.cpp reuses its KV cache for the
shared prefix): a free-text thought, then the action, decoded under a JSON-schema grammar whose
tool names are an enum and whose arguments follow the chosen tool's schema. Even the 135M default
model therefore always emits a valid action. Steps, time and tokens are bounded, and a repeated
identical action ends the run, so no run loops until an iteration limit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from hearthlm.agents.tools import resolve_tools
from hearthlm.llm.backend import Constraint
from hearthlm.llm.calls import best_scorer, choose_call, choose_tool, ranker, token_scorer
from hearthlm.llm.chain import (
    Chain,
    QuestionInput,
    argument_mode,
    call_options,
    can_constrain,
    question_text,
    scorer_of,
    structured_reply,
)
from hearthlm.llm.tools import call_schema

FINAL = "final_answer"
SYSTEM = """You answer the user's question by thinking step by step and using tools.
Tools, as JSON:
{tools}

Write one step at a time:
Thought: what to do next
Action: {{"name": <tool>, "arguments": {{...}}}}
Then you will see the Observation. When you know the answer, use the {final} tool.{example}"""
# Shown when the calculator is available: small models otherwise do the arithmetic in the thought,
# and get it wrong.
CALCULATOR_EXAMPLE = """

Example:
Question: What is 21 * 47?
Thought: I need to multiply 21 by 47, so I use the calculator.
Action: {"name": "calculator", "arguments": {"expression": "21 * 47"}}
Observation: 987
Thought: The calculator says 987.
Action: {"name": "final_answer", "arguments": {"answer": "987"}}"""


class FinalAnswer(BaseModel):
    """Give the final answer to the user's question."""

    answer: str = Field(description="The final answer")


@dataclass
class Step:
    """One Thought / Action / Observation cycle."""

    thought: str
    tool: str
    tool_input: dict[str, Any]
    observation: str
    seconds: float
    tokens: int
    valid: bool = True


@dataclass
class AgentResult:
    """The answer (None if the run stopped first), why the run ended, and the full trace.

    Streamed, a run is a chunk per step (``steps`` holds it, the reason is empty) and a last
    chunk with the answer, the reason and the totals; ``+`` joins chunks into the result.
    """

    question: str
    answer: str | None
    stopped_reason: str
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    @property
    def valid_action_rate(self) -> float:
        return sum(s.valid for s in self.steps) / len(self.steps) if self.steps else 1.0

    def __add__(self, other: AgentResult) -> AgentResult:
        if not isinstance(other, AgentResult):
            return NotImplemented
        return AgentResult(
            question=other.question or self.question,
            answer=other.answer if other.answer is not None else self.answer,
            stopped_reason=other.stopped_reason or self.stopped_reason,
            steps=self.steps + other.steps,
            seconds=self.seconds + other.seconds,
            tokens=self.tokens + other.tokens,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "stopped_reason": self.stopped_reason,
            "seconds": self.seconds,
            "tokens": self.tokens,
            "steps": [s.__dict__ for s in self.steps],
        }


class Action(BaseModel):
    """One ReAct action: a tool name and its arguments (the structured reply of a chat model
    that reads no grammar)."""

    name: str = Field(description="The tool to call")
    arguments: dict[str, Any] = Field(description="The tool's arguments")


def _tool_caller(chat: Any, specs: list[dict[str, Any]]) -> Any:
    """``chat`` bound to call one of ``specs``: with ``tool_choice="any"`` where the
    integration takes it, else with its own default (langchain-community's ChatLlamaCpp takes
    only a tool's name, and refuses "any" with a ValueError); None for a chat model without
    native tool calling (then JSON mode, then a parsed reply)."""
    for options in ({"tool_choice": "any"}, {}):
        try:
            return chat.bind_tools(specs, **options)
        except NotImplementedError:
            return None
        except ValueError:
            continue
    return None


class ReActAgent(Chain[str | QuestionInput, AgentResult]):
    """A ReAct agent over any chat model and LangChain tools.

    On ChatHearth each action is decoded under the tools' JSON-schema grammar. Another chat model
    gives its action by native tool calling (``bind_tools`` with ``tool_choice="any"``, or its
    own default where it takes no "any"), else by
    JSON mode, else as a parsed reply retried once (:func:`hearthlm.llm.chain.structured_reply`).
    The thought is prefilled as a continuation of the assistant turn (``Thought:``), which a
    remote chat API may read as a finished turn instead.

    Example:
        >>> agent = ReActAgent(ChatHearth(), [calculator_tool()])  # doctest: +SKIP
        >>> agent.invoke("What is 1234 * 5678?").answer  # doctest: +SKIP
        '7006652'
    """

    def __init__(
        self,
        chat: BaseChatModel,
        tools: Sequence[BaseTool | Callable[..., Any]],
        *,
        max_steps: int = 6,
        max_seconds: float = 120.0,
        max_tokens: int = 8000,
        thought_tokens: int = 48,
        require_tool: bool = True,
        tool_arguments: Literal["copy", "write"] | None = None,
    ) -> None:
        self.chat = chat
        self.tools = {t.name: t for t in resolve_tools(tools)}
        self.max_steps = max_steps
        self.max_seconds = max_seconds
        self.max_tokens = max_tokens
        self.thought_tokens = thought_tokens
        specs = [convert_to_openai_tool(t) for t in self.tools.values()]
        specs.append(convert_to_openai_tool(FinalAnswer))
        specs[-1]["function"]["name"] = FINAL
        self._specs = specs
        # A small model answers from its own (wrong) arithmetic if it may; with require_tool the
        # first action must be a tool call, so the answer rests on an observation.
        self._first_specs = specs[:-1] if require_tool and len(specs) > 1 else specs
        # As in ChatHearth: copied arguments are spans of the question (tool arguments) and of
        # the observations (the final answer), so the answer cannot loop or drift.
        self.tool_arguments = tool_arguments or argument_mode(chat)
        listed = "\n".join(
            json.dumps(
                {
                    "name": s["function"]["name"],
                    "description": s["function"].get("description", ""),
                    "arguments": s["function"]["parameters"].get("properties", {}),
                }
            )
            for s in specs
        )
        example = CALCULATOR_EXAMPLE if "calculator" in self.tools else ""
        self._system = SYSTEM.format(tools=listed, final=FINAL, example=example)

    @property
    def system_prompt(self) -> str:
        """The system message every step is generated under (fine-tuning traces reuse it)."""
        return self._system

    def _stream(
        self, input: str | QuestionInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[AgentResult]:
        """:class:`AgentResult` chunks that add up to the result: one per step as it
        completes, then the answer, the reason the run ended and its totals."""
        question = question_text(input)
        start = time.perf_counter()
        steps: list[Step] = []
        tokens = 0
        seen: set[str] = set()
        reason = "max_steps"
        answer = None
        for _ in range(self.max_steps):
            if time.perf_counter() - start > self.max_seconds:
                reason = "max_seconds"
                break
            if tokens > self.max_tokens:
                reason = "max_tokens"
                break
            step_start = time.perf_counter()
            scratchpad = _scratchpad(steps)
            thought_msg = self.chat.invoke(
                self._messages(question, scratchpad + "Thought:"),
                config,
                stop=["\n", "Action:", "Observation:"],
                **call_options(self.chat, max_new_tokens=self.thought_tokens),
            )
            thought = str(thought_msg.content).strip()
            prefix = f"{scratchpad}Thought: {thought}\nAction: "
            action_text, action_tokens = self._act(question, steps, prefix, config)
            step_tokens = _tokens(thought_msg) + action_tokens
            tokens += step_tokens
            name, args, valid = _parse(action_text)
            key = json.dumps([name, args], sort_keys=True)
            if name == FINAL and valid:
                answer, observation, reason = str(args.get("answer", "")), "", "final_answer"
            elif key in seen:
                observation, reason = "(not run again: same action as before)", "repeated_action"
            else:
                seen.add(key)
                observation = self._run_tool(name, args, valid, config)
            seconds = time.perf_counter() - step_start
            steps.append(Step(thought, name, args, observation, seconds, step_tokens, valid))
            yield AgentResult(question, None, "", [steps[-1]])
            if reason in ("final_answer", "repeated_action"):
                break
        yield AgentResult(question, answer, reason, [], time.perf_counter() - start, tokens)

    def _act(
        self, question: str, steps: list[Step], prefix: str, config: RunnableConfig | None
    ) -> tuple[str, int]:
        """The step's action as JSON text, and the tokens it took."""
        messages = self._messages(question, prefix)
        if can_constrain(self.chat):
            constraint = self._action_constraint(question, steps, messages)
            reply = self.chat.invoke(messages, config, constraint=constraint)
            return str(reply.content), _tokens(reply)
        specs = self._specs if steps else self._first_specs
        caller = _tool_caller(self.chat, specs)
        if caller is not None:
            reply = caller.invoke(messages, config)
            calls = getattr(reply, "tool_calls", None) or []
            if calls:
                action = {"name": calls[0]["name"], "arguments": calls[0]["args"]}
                return json.dumps(action), _tokens(reply)
        found = structured_reply(
            self.chat, messages, Action, config, methods=("json_mode", "parse")
        )
        return (found.model_dump_json() if found else ""), 0

    def _action_constraint(
        self, question: str, steps: list[Step], messages: list[BaseMessage]
    ) -> Constraint:
        specs = self._specs if steps else self._first_specs
        if self.tool_arguments != "copy":
            return Constraint(json_schema=call_schema(specs))
        model = None if steps else scorer_of(self.chat)
        if model is not None:
            # The first action is chosen as ChatHearth chooses a call (hearthlm.llm.calls):
            # the tool by the question's likelihood under each description, then each argument.
            score, prompt = best_scorer(model), model.prompt(messages)
            made: dict[str, dict[str, Any]] = {}

            def call_of(spec: dict[str, Any]) -> dict[str, Any]:
                chosen, made[spec["function"]["name"]] = choose_call(
                    score, prompt, spec, [question], ranker(model)
                )
                return chosen

            tool = choose_tool(
                score,
                specs,
                question,
                optional=False,
                per_token=token_scorer(model),
                call_of=call_of,
            )
            assert tool is not None  # a call is required, so a tool is always chosen
            fixed = made.get(tool["function"]["name"])
            if fixed is None:
                _, fixed = choose_call(score, prompt, tool, [question], ranker(model))
            return Constraint(json_schema=call_schema([fixed]))
        observations = [s.observation for s in steps if s.valid and s.tool in self.tools]
        texts = {s["function"]["name"]: [question, *observations] for s in specs}
        texts[FINAL] = observations or [question]
        return Constraint(json_schema=call_schema(specs, texts))

    def _messages(self, question: str, prefill: str) -> list[BaseMessage]:
        return [
            SystemMessage(self._system),
            HumanMessage(f"Question: {question}"),
            AIMessage(prefill),
        ]

    def _run_tool(
        self, name: str, args: dict[str, Any], valid: bool, config: RunnableConfig | None
    ) -> str:
        if not valid or name not in self.tools:
            return f"Invalid action; use one of: {', '.join([*self.tools, FINAL])}."
        try:
            return str(self.tools[name].invoke(args, config))
        except Exception as exc:  # a user tool may raise anything; the agent reads it instead
            return f"Error from {name}: {exc}"


def _scratchpad(steps: list[Step]) -> str:
    return "".join(
        f"Thought: {s.thought}\nAction: {json.dumps({'name': s.tool, 'arguments': s.tool_input})}"
        f"\nObservation: {s.observation}\n"
        for s in steps
    )


def _parse(text: str) -> tuple[str, dict[str, Any], bool]:
    try:
        data = json.loads(text)
        return str(data["name"]), dict(data["arguments"]), True
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return "", {}, False


def _tokens(message: Any) -> int:
    usage = getattr(message, "usage_metadata", None) or {}
    return int(usage.get("output_tokens", 0))
