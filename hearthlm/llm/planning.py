"""How a chat call becomes what a backend decodes: the messages under the chat template, fitted to
the context window, and the decoding mode the call asks for, with its constraint. A tool is chosen
by likelihood and its arguments copied from the request (``hearthlm.llm.calls``) on a model that
scores text; a response format or JSON mode is decoded under its grammar; an explicit
``constraint=`` overrides both."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage

from hearthlm.errors import ConfigError, ContextWindowError
from hearthlm.llm.backend import Constraint
from hearthlm.llm.call_options import (
    JSON_OBJECT,
    TEXT_ONLY,
    explicit_constraint,
    json_mode_schema,
    json_schema_of,
    template_message,
)
from hearthlm.llm.calls import (
    best_scorer,
    choose_arguments,
    choose_call,
    choose_tool,
    ranker,
    token_scorer,
)
from hearthlm.llm.spans import copy_schema
from hearthlm.llm.text import render_chat
from hearthlm.llm.tools import (
    call_schema,
    render_tool_call,
    select_tools,
    strict_schema,
    tools_instructions,
)

if TYPE_CHECKING:
    from hearthlm.llm.chat_model import ChatHearth


@dataclass
class Prepared:
    """A request ready for a backend: prompt ids, grammar, and what was done to fit it."""

    prompt_ids: list[int]
    constraint: Constraint | None
    tools_active: bool
    dropped_messages: int
    fixed: str | None = None  # the whole reply, chosen without generating (a tool call)


class Planner:
    """The prompt and constraint of each call of one :class:`~hearthlm.llm.ChatHearth`: its
    template, its backend's tokenizer, and the choices it scores with its own model."""

    def __init__(self, chat: ChatHearth) -> None:
        self.chat = chat

    def prepare(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> Prepared:
        if kwargs.get("model") is not None:
            raise ConfigError(
                f"model={kwargs['model']!r} was passed with a call, but ChatHearth serves the one "
                "model it loaded. Make another ChatHearth(model=...) for another model."
            )
        tools, tools_optional = select_tools(kwargs.get("tools") or [], kwargs.get("tool_choice"))
        text_only = bool(kwargs.get("tools")) and kwargs.get("tool_choice") == "none"
        response_format = kwargs.get("response_format")
        explicit = explicit_constraint(kwargs)
        fitted, ids, dropped = self.fit(messages, tools, response_format, tools_optional)
        request = fitted[-1].text if isinstance(fitted[-1], HumanMessage) else None
        choosing = self.chat.decision_mode == "choose" and request is not None and explicit is None
        source = self.copy_source(messages)
        made: dict[str, tuple[dict[str, Any], dict[str, Any], str | None]] = {}

        def call_of(tool: dict[str, Any]) -> dict[str, Any]:
            made[tool["function"]["name"]] = self.chosen_call(fitted, tool, source or [])
            return made[tool["function"]["name"]][0]

        if choosing and tools and (tools_optional or len(tools) > 1):
            chosen = choose_tool(
                best_scorer(self.chat),
                tools,
                str(request),
                optional=tools_optional,
                per_token=token_scorer(self.chat),
                call_of=call_of if source is not None else None,
            )
            tools, tools_optional, text_only = (
                ([chosen], False, False) if chosen else ([], True, True)
            )
            rendered = self.template_messages(fitted, tools, None, tools_optional or not tools)
            ids = self.prompt_ids(rendered)
        constraint = explicit
        fixed = None
        if constraint is not None:
            pass
        elif tools and len(tools) == 1 and not tools_optional and source is not None:
            name = tools[0]["function"]["name"]
            _, schema, fixed = made.get(name) or self.chosen_call(fitted, tools[0], source)
            constraint = Constraint(schema)
        elif tools:
            constraint = Constraint(call_schema(tools, source), allow_text=tools_optional)
        elif text_only:
            constraint = Constraint(grammar=TEXT_ONLY)  # earlier calls in the chat are not copied
        elif response_format == JSON_OBJECT:
            constraint = Constraint(json_mode_schema(str(request or "")))
        elif response_format is not None:
            schema = strict_schema(json_schema_of(response_format))
            if source is not None:  # fields chosen as a call's arguments are
                rendered = self.template_messages(fitted, [], response_format, True)
                opening = self.prompt_text(rendered) + "{"
                chosen, schema = choose_arguments(
                    best_scorer(self.chat), opening, schema, source, rank=ranker(self.chat)
                )
                fields = schema.get("properties")
                if isinstance(fields, dict) and fields and set(chosen) == set(fields):
                    fixed = json.dumps(chosen, ensure_ascii=False)
                schema = copy_schema(schema, source)
            constraint = Constraint(schema)
        return Prepared(ids, constraint, bool(tools), dropped, fixed)

    def chosen_call(
        self, messages: list[BaseMessage], tool: dict[str, Any], source: list[str]
    ) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        """The arguments the model chose by likelihood for a call of ``tool``
        (:mod:`hearthlm.llm.calls`), the call schema with them fixed, and the call's text when
        every argument was chosen."""
        prompt = self.prompt_text(self.template_messages(messages, [tool], None, False))
        chosen, spec = choose_call(best_scorer(self.chat), prompt, tool, source, ranker(self.chat))
        every = set(chosen) == set(spec["function"]["parameters"].get("properties", {}))
        name = tool["function"]["name"]
        text = render_tool_call(name, chosen) if every else None
        return chosen, call_schema([spec], source), text

    def fit(
        self,
        messages: list[BaseMessage],
        tools: list[dict[str, Any]],
        response_format: Any,
        tools_optional: bool,
    ) -> tuple[list[BaseMessage], list[int], int]:
        """The messages that fit the context window, their prompt ids, and how many were
        dropped (only with ``truncation="drop_oldest"``)."""
        messages = list(messages)
        dropped = 0
        while True:
            rendered = self.template_messages(
                messages, tools, response_format, tools_optional or not tools
            )
            ids = self.prompt_ids(rendered)
            if len(ids) < self.chat.context_window:
                return messages, ids, dropped
            droppable = [i for i, m in enumerate(messages[:-1]) if not isinstance(m, SystemMessage)]
            if self.chat.truncation != "drop_oldest" or not droppable:
                raise ContextWindowError(
                    f"the prompt is {len(ids)} tokens but the context window is "
                    f"{self.chat.context_window}. Shorten the input, raise llm.context_size, or "
                    "set llm.truncation = 'drop_oldest' to drop the oldest turns (reported)."
                )
            del messages[droppable[0]]
            dropped += 1

    def copy_source(self, messages: list[BaseMessage]) -> list[str] | None:
        """The texts that arguments are copied from (the user's messages and tool results), or
        None when arguments are written."""
        if self.chat.argument_mode != "copy":
            return None
        kept = (m for m in messages if isinstance(m, HumanMessage | ToolMessage))
        return [m.text if isinstance(m.text, str) else str(m.content) for m in kept]

    def template_messages(
        self,
        messages: list[BaseMessage],
        tools: list[dict[str, Any]],
        response_format: Any,
        tools_optional: bool,
    ) -> list[dict[str, str]]:
        rendered = [template_message(m) for m in messages]
        extra = ""
        if tools:
            extra = tools_instructions(tools, required=not tools_optional)
        elif response_format == JSON_OBJECT:
            extra = "Reply with only a JSON object."
        elif response_format is not None:
            schema = json.dumps(json_schema_of(response_format).get("properties", {}))
            extra = f"Reply with only a JSON object with these fields: {schema}"
        if extra:
            if rendered and rendered[0]["role"] == "system":
                rendered[0] = {"role": "system", "content": f"{rendered[0]['content']}\n\n{extra}"}
            else:
                rendered.insert(0, {"role": "system", "content": extra})
        return rendered

    def prompt_ids(self, rendered: list[dict[str, str]]) -> list[int]:
        """Token ids of the rendered chat (:meth:`_prompt_text`)."""
        return self.chat.engine.tokenize(self.prompt_text(rendered))

    def prompt_text(self, rendered: list[dict[str, str]]) -> str:
        """The rendered chat as prompt text. A final assistant message is continued, not closed:
        that is how a reply is prefilled (e.g. "Thought:" in ReAct)."""
        engine = self.chat.engine
        prefill = rendered[-1]["content"] if rendered[-1]["role"] == "assistant" else ""
        prompt = render_chat(
            engine.chat_template,
            rendered,
            add_generation_prompt=not prefill,
            bos_token=engine.bos_token,
            eos_token=engine.eos_token,
        )
        if prefill:
            prompt = prompt[: prompt.rindex(prefill) + len(prefill)]
        return prompt
