"""Agent runs over HTTP: a question, tools by name and limits in; each step streamed as an SSE
``step`` event (thought, action, observation, seconds) as it completes, then the ``result``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from langchain_core.tools import BaseTool

from hearthlm.agents.react import AgentResult, ReActAgent
from hearthlm.agents.tools import build_tools, docs_tool
from hearthlm.errors import HearthError
from hearthlm.retrieval import HybridRetriever
from hearthlm.serve.errors import APIError, from_library
from hearthlm.serve.schemas import AgentRunRequest
from hearthlm.serve.state import Caller, ServerState, caller, state_of
from hearthlm.serve.streaming import DONE, Work, add_up, collect, event_stream, opened, sse

router = APIRouter()


def available_tools(state: ServerState) -> list[str]:
    """The tool names a run may ask for: the built-ins, plugin tools and the app's own."""
    from hearthlm.agents.tools import TOOLS, plugin_tools

    plugins = [t.name for t in plugin_tools()]
    names = [*TOOLS.builtin_names, *plugins, *(t.name for t in state.tools)]
    return list(dict.fromkeys(names))


def _tools(state: ServerState, body: AgentRunRequest, who: Caller) -> list[BaseTool]:
    known = available_tools(state)
    unknown = [n for n in body.tools if n not in known]
    if unknown:
        raise APIError(
            400, f"unknown tool(s) {unknown}; this server has: {', '.join(known)}.", param="tools"
        )
    own = {t.name: t for t in state.tools}
    chosen: list[BaseTool] = [own[n] for n in body.tools if n in own]
    wanted = [n for n in body.tools if n not in own]
    if "docs" in wanted or (
        "web_search" in wanted and state.config.agents.search_backend == "docs"
    ):
        if body.collection is None:
            raise APIError(400, "the docs tool needs a collection.", param="collection")
        state.collections.folder(body.collection, who)  # 404 for another key's collection
        index = state.collections.index(body.collection)
        if "docs" in wanted:
            chosen.append(docs_tool(HybridRetriever.from_index(index)))
            wanted.remove("docs")
        config = state.config.model_copy(
            update={
                "retrieval": state.config.retrieval.model_copy(
                    update={"collection": body.collection}
                )
            }
        )
    else:
        config = state.config
    return chosen + build_tools(config, wanted) if wanted else chosen


@router.post("/v1/agent/runs", tags=["Agents"], response_model=None)
async def run_agent(
    body: AgentRunRequest, request: Request, who: Caller = Depends(caller)
) -> Response:
    """Run a ReAct agent. Streamed (the default): a ``step`` event per step as it completes,
    then a ``result`` event with the answer, why the run ended, and its totals."""
    state = state_of(request)
    limits = state.config.agents
    chat = await state.models.aget(body.model)

    def produce() -> Iterator[AgentResult]:
        """On a worker thread: a docs tool opens its collection's index here."""
        agent = ReActAgent(
            chat,
            _tools(state, body, who),
            max_steps=body.max_steps or limits.max_steps,
            max_seconds=body.max_seconds or limits.max_seconds,
            max_tokens=body.max_tokens or limits.max_tokens,
        )
        return agent.stream(body.question)

    work = Work(state, produce, request)
    if not body.stream:
        return JSONResponse(add_up(await collect(work)).as_dict())
    return event_stream(_events(await opened(work)))


async def _events(chunks: AsyncIterator[AgentResult]) -> AsyncIterator[str]:
    parts: list[AgentResult] = []
    try:
        async for chunk in chunks:
            parts.append(chunk)
            for step in chunk.steps:
                yield sse(step.__dict__, event="step")
    except HearthError as exc:
        yield sse(from_library(exc).body(), event="error")
    if parts:
        yield sse(add_up(parts).as_dict(), event="result")
    yield DONE
