"""Making LangChain's own agents (``langchain.agents.create_agent``) work with a small model.

A 135M model rarely chooses a tool by itself, and once it has seen a tool call it keeps calling.
``call_tools_then_answer`` sets ``tool_choice`` per model call: a tool call is required until a
tool has answered, after which the model must answer in text. Every call stays a real
``bind_tools`` call, decoded under the tools' JSON schema.

``tool_errors_as_observations`` is LangChain's own ``ToolErrorMiddleware``, set to hand a tool's
exception back to the model as its result (as ``ReActAgent`` does) instead of ending the run.

Example:
    >>> from langchain.agents import create_agent
    >>> agent = create_agent(ChatHearth(), [calculator_tool()],  # doctest: +SKIP
    ...                      middleware=[call_tools_then_answer, tool_errors_as_observations])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain.agents.middleware import ToolErrorMiddleware, wrap_model_call
from langchain_core.messages import ToolMessage


@wrap_model_call
def call_tools_then_answer(request: Any, handler: Callable[[Any], Any]) -> Any:
    """Require a tool call until a tool result exists, then require a text answer."""
    answered = any(isinstance(m, ToolMessage) for m in request.messages)
    return handler(request.override(tool_choice="none" if answered else "any"))


def _error_observation(exc: Exception, request: Any) -> str:
    return f"Error from {request.tool_call['name']}: {exc}"


tool_errors_as_observations: ToolErrorMiddleware[Any, Any] = ToolErrorMiddleware(
    on_error=_error_observation
)
