"""OpenAI's chat shapes: its messages as LangChain's, and the stream's chunks."""

from __future__ import annotations

import json
import secrets
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from hearthlm.serve.errors import APIError
from hearthlm.serve.schemas import Message
from hearthlm.serve.state import now


def to_messages(messages: list[Message]) -> list[BaseMessage]:
    """OpenAI chat messages as LangChain messages.

    Raises:
        APIError: 400, an assistant's tool call has arguments that are not a JSON object.
    """
    names: dict[str, str] = {}
    out: list[BaseMessage] = []
    for i, message in enumerate(messages):
        text = message.text()
        if message.role in ("system", "developer"):
            out.append(SystemMessage(text))
        elif message.role == "user":
            out.append(HumanMessage(text))
        elif message.role == "assistant":
            calls = []
            for call in message.tool_calls or []:
                try:
                    args = json.loads(call.function.arguments or "{}")
                except json.JSONDecodeError as exc:
                    raise APIError(
                        400,
                        f"messages[{i}]: a tool call's arguments are not JSON ({exc}).",
                        param="messages",
                    ) from None
                if not isinstance(args, dict):
                    raise APIError(
                        400, f"messages[{i}]: tool call arguments must be an object.",
                        param="messages",
                    )  # fmt: skip
                call_id = call.id or f"call_{secrets.token_hex(6)}"
                names[call_id] = call.function.name
                calls.append({"name": call.function.name, "args": args, "id": call_id})
            out.append(AIMessage(text, tool_calls=calls))
        else:
            call_id = message.tool_call_id or ""
            name = message.name or names.get(call_id)
            out.append(ToolMessage(text, tool_call_id=call_id, name=name))
    return out


def chat_chunk(
    reply_id: str,
    model_id: str,
    delta: dict[str, Any],
    finish: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {
        "id": reply_id,
        "object": "chat.completion.chunk",
        "created": now(),
        "model": model_id,
        "choices": [choice],
        **extra,
    }
