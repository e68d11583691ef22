"""Making LangChain's own agents (``langchain.agents.create_agent``) work with a small model.

A 135M model rarely chooses a tool by itself, and once it has seen a tool call it keeps calling.
``call_tools_then_answer`` sets ``tool_choice`` per model call: a tool call is required until a
tool has answered, after which the model must answer in text, copied from the tool results.
Every call stays a real ``bind_tools`` call, decoded under the tools' JSON schema.

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

from hearthlm.llm.backend import Constraint
from hearthlm.llm.chain import argument_mode
from hearthlm.llm.grammar import choice_gbnf
from hearthlm.llm.spans import text_spans


@wrap_model_call
def call_tools_then_answer(request: Any, handler: Callable[[Any], Any]) -> Any:
    """Require a tool call until a tool result exists, then require a text answer.

    On ``ChatHearth`` with ``tool_arguments="copy"`` the answer is copied, as ``ReActAgent``'s is:
    it must be a word span of the tool results, since the small model's free answer drifts from
    them ("The order_status returned a result of the "A123" status code").
    """
    results = [m.text for m in request.messages if isinstance(m, ToolMessage)]
    if not results:
        return handler(request.override(tool_choice="any"))
    settings = dict(request.model_settings)
    spans = text_spans(results)
    if argument_mode(request.model) == "copy" and spans:
        settings["constraint"] = Constraint(grammar=choice_gbnf(spans))
    return handler(request.override(tool_choice="none", model_settings=settings))


def _error_observation(exc: Exception, request: Any) -> str:
    return f"Error from {request.tool_call['name']}: {exc}"


tool_errors_as_observations: ToolErrorMiddleware[Any, Any] = ToolErrorMiddleware(
    on_error=_error_observation
)
