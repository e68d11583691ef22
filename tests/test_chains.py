"""The chains on any chat model: as Runnables in LCEL, with constraints on ChatHearth and the
documented fallbacks (native tool calling, JSON mode, parse and retry once) elsewhere.

LangChain's ``GenericFakeChatModel`` drives the control flow that the real model cannot be made
to follow (an unreadable first reply, a native tool call); the real packaged model gives the
results.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableLambda
from retrieval_helpers import write_corpus

from hearthlm.agents.cot import ArithmeticExpression, ChainOfThought, Example, ProgramAided
from hearthlm.agents.react import ReActAgent
from hearthlm.agents.tools import calculator_tool
from hearthlm.config import RetrievalConfig
from hearthlm.errors import ConfigError
from hearthlm.llm import Constraint
from hearthlm.llm.chain import can_constrain, structured_reply
from hearthlm.retrieval import DocsChat, DocsQA, DocumentIndex, HybridRetriever
from hearthlm.retrieval.rag import Answer

EXAMPLES = [
    Example(
        "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "Tom has 3 + 4 = 7 apples.\nThe answer is 7.",
        "3 + 4",
        "7",
    ),
]


def fake(*replies: str | AIMessage) -> GenericFakeChatModel:
    """A chat model that gives ``replies`` in order and reads no constraint."""
    messages = [r if isinstance(r, AIMessage) else AIMessage(r) for r in replies]
    return GenericFakeChatModel(messages=iter(messages))


class Prompts(BaseCallbackHandler):
    """The messages of every chat-model call."""

    def __init__(self) -> None:
        self.calls: list[list[BaseMessage]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.calls.append(messages[0])


class ToolCallingFake(GenericFakeChatModel):
    """A fake with native tool calling: ``bind_tools`` is accepted, the replies are the calls."""

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self


def test_only_chat_hearth_reads_constraints(llama_chat):
    assert can_constrain(llama_chat) and can_constrain(llama_chat.bind(stop=["x"]))
    assert not can_constrain(fake("hi"))


def test_a_constraint_is_one_documented_binding(llama_chat):
    yes_no = llama_chat.bind(constraint='root ::= "yes" | "no"')  # a GBNF grammar
    # the README's example: "yes" leads "no" by 1.4 nats here ("Is Lisbon in Portugal?", which
    # it showed before, is a tie the model breaks towards "no")
    assert yes_no.invoke("Is Paris in France?").content == "yes"
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    reply = llama_chat.invoke("Where is the Eiffel Tower?", constraint=schema)  # a JSON schema
    assert list(json.loads(reply.content)) == ["city"]
    grammar = Constraint(grammar="root ::= [0-9]+")
    assert llama_chat.invoke("How many legs has a cat?", constraint=grammar).content.isdigit()
    with pytest.raises(ConfigError, match="constraint=Constraint"):
        llama_chat.invoke("hi", grammar='root ::= "x"')
    with pytest.raises(ConfigError, match="not a Constraint"):
        llama_chat.invoke("hi", constraint=42)


def test_structured_reply_parses_then_retries_once_with_the_error():
    prompts = Prompts()
    chat = fake("It is 12 times 7.", '{"expression": "12 * 7"}')
    found = structured_reply(
        chat, [], ArithmeticExpression, {"callbacks": [prompts]}, methods=("json_mode", "parse")
    )
    assert found == ArithmeticExpression(expression="12 * 7")
    assert len(prompts.calls) == 2
    assert "could not be read" in prompts.calls[1][-1].content  # the retry says why
    assert structured_reply(fake("no", "still no"), [], ArithmeticExpression) is None


def test_structured_reply_prefers_native_tool_calling():
    call = {"name": "ArithmeticExpression", "args": {"expression": "3 * 4"}, "id": "c1"}
    chat = ToolCallingFake(messages=iter([AIMessage("", tool_calls=[call])]))
    assert structured_reply(chat, [], ArithmeticExpression) == ArithmeticExpression(
        expression="3 * 4"
    )


def test_program_aided_on_a_model_without_grammars_falls_back_and_composes():
    pal = ProgramAided(fake("twelve sevens", '{"expression": "12 * 7"}'), EXAMPLES)
    result = pal.invoke({"question": "A crate holds 12 bottles. How many in 7 crates?"})
    assert (result.answer, result.expression, result.error) == ("84", "12 * 7", None)
    unreadable = ProgramAided(fake("no", "no"), EXAMPLES).invoke("How many?")
    assert unreadable.answer is None and unreadable.error


def test_chain_of_thought_is_a_runnable_on_any_chat_model():
    reply = "2 + 5 = 7.\nThe answer is 7. Next question: how many"
    answer_of = ChainOfThought(fake(reply, reply, reply), EXAMPLES) | RunnableLambda(
        lambda r: r.answer
    )
    assert answer_of.invoke("Sam has 2 pens and buys 5 more. How many?") == "7"
    assert answer_of.batch(["q1", "q2"]) == ["7", "7"]
    cot = ChainOfThought(fake(reply), EXAMPLES)

    async def collect() -> list[Any]:
        return [item async for item in cot.astream("q")]

    (result,) = asyncio.run(collect())
    assert result.reasoning == "2 + 5 = 7.\nThe answer is 7."  # stopped after the answer


def test_react_on_a_model_without_grammars_parses_each_action():
    chat = fake(
        " I multiply with the calculator.",
        '{"name": "calculator", "arguments": {"expression": "21 * 47"}}',
        " The calculator says 987.",
        '{"name": "final_answer", "arguments": {"answer": "987"}}',
    )
    result = ReActAgent(chat, [calculator_tool()]).invoke("What is 21 * 47?")
    assert result.answer == "987" and result.stopped_reason == "final_answer"
    assert [s.tool for s in result.steps] == ["calculator", "final_answer"]
    assert result.steps[0].observation == "987"


def test_react_uses_native_tool_calling_when_the_model_has_it():
    call = {"name": "calculator", "args": {"expression": "6 * 7"}, "id": "c1"}
    final = {"name": "final_answer", "args": {"answer": "42"}, "id": "c2"}
    chat = ToolCallingFake(
        messages=iter(
            [
                AIMessage(" I use the calculator."),
                AIMessage("", tool_calls=[call]),
                AIMessage(" It is 42."),
                AIMessage("", tool_calls=[final]),
            ]
        )
    )
    result = ReActAgent(chat, [calculator_tool()]).invoke({"question": "What is 6 * 7?"})
    assert result.answer == "42" and result.steps[0].observation == "42"


@pytest.fixture(scope="module")
def retriever(embeddings, tmp_path_factory: pytest.TempPathFactory) -> HybridRetriever:
    root = tmp_path_factory.mktemp("chains")
    index = DocumentIndex(RetrievalConfig(path=root / "idx"), embeddings)
    index.index_path(write_corpus(root / "docs"), progress=False)
    return HybridRetriever.from_index(index, k=2)


def test_docs_qa_on_a_model_without_grammars(retriever):
    question = "How long does a flat tyre repair take?"
    free = DocsQA(fake("It takes about 30 minutes [1]."), retriever)
    assert free.mode == "free"  # auto: a model that reads no grammar writes freely
    answer = free.invoke(question)
    assert answer.mode == "free" and answer.citations
    cited = '{"source": 1, "sentence": "A repair takes about 30 minutes."}'
    constrained = DocsQA(fake("a repair is quick", cited), retriever, answer="constrained")
    answer = constrained.invoke({"question": question})
    assert answer.text.endswith("[1].") and answer.citations[0].number == 1


def test_a_follow_up_that_stands_alone_is_not_rewritten(retriever, tmp_path):
    """Only follow-ups that point back into the chat are rewritten; a rewrite that answers
    instead of asking is not used."""
    chat = DocsChat(
        DocsQA(
            fake("Tyres [1].", "Bees [1].", "A repair is quick.", "Ten [1]."),
            retriever,
            answer="free",
        ),
        tmp_path / "history.sqlite",
    )
    chat.invoke("How long does a flat tyre repair take?")
    standalone = chat.invoke("How do bees find flowers?").standalone_question
    assert standalone == "How do bees find flowers?"  # no model call: the next reply is unused
    assert chat.invoke("And what does it cost?").standalone_question == "And what does it cost?"


def test_docs_qa_and_docs_chat_compose_in_lcel(retriever, tmp_path):
    qa = DocsQA(fake("Tyres [1].", "Bees [1]."), retriever, answer="free")
    texts = (qa | RunnableLambda(lambda a: a.text)).batch(
        ["How long does a flat tyre repair take?", "How do bees find flowers?"],
        {"max_concurrency": 1},  # the fake's replies come in order
    )
    assert texts == ["Tyres [1].", "Bees [1]."]
    chat = DocsChat(
        DocsQA(fake("Tyres [1].", "How much is a tyre repair?", "Ten [1]."), retriever),
        tmp_path / "history.sqlite",
    )
    first = chat.invoke("How long does a flat tyre repair take?")
    assert isinstance(first, Answer) and first.text == "Tyres [1]."

    async def collect() -> list[Any]:
        return [item async for item in chat.astream({"question": "And the price?"})]

    items = asyncio.run(collect())
    assert items[-1].standalone_question == "How much is a tyre repair?"
    assert "".join(i.text for i in items) == "Ten [1]."
    assert sum(items[1:], items[0]).standalone_question == "How much is a tyre repair?"
    assert len(chat.messages) == 4


@pytest.mark.slow
def test_chains_on_the_real_model_in_lcel(llama_chat, retriever):
    pal = ProgramAided(llama_chat, EXAMPLES)
    questions = ["A box holds 6 eggs. How many eggs are in 5 boxes?", "What is 3 plus 4?"]
    results = pal.batch(questions)
    assert [r.expression for r in results] == [pal.invoke(q).expression for q in questions]
    assert all(set(r.expression) <= set("-+*/(). 0123456789") for r in results)
    qa = DocsQA(llama_chat, retriever)
    assert qa.mode == "quote"  # auto on the packaged model: quote answers

    async def collect() -> list[Any]:
        return [item async for item in qa.astream("How do honey bees find flowers?")]

    items = asyncio.run(collect())
    assert isinstance(items[-1], Answer) and items[-1].mode == "quote"
    assert "waggle dance" in items[-1].text


def test_streamed_chunks_add_up_through_astream_events_and_lcel(retriever):
    """The stream contract: every chunk is an Answer, their sum is what invoke returns, and
    astream_events and an LCEL sequence see the same answer."""
    question = "How long does a flat tyre repair take?"
    reply = "[1] It takes about 30 minutes, and [9] costs little."  # [9] names no source
    chunks = list(DocsQA(fake(reply), retriever, answer="free").stream(question))
    assert all(isinstance(c, Answer) for c in chunks) and len(chunks) > 3
    total = sum(chunks[1:], chunks[0])
    expected = DocsQA(fake(reply), retriever, answer="free").invoke(question)
    assert total.text == expected.text == "It takes about 30 minutes, and costs little [1]."
    assert total.removed_citations == expected.removed_citations == [9]
    assert [s.number for s in total.sources] == [s.number for s in expected.sources]

    async def events() -> list[dict[str, Any]]:
        qa = DocsQA(fake(reply), retriever, answer="free")
        return [e async for e in qa.astream_events(question, version="v2")]

    seen = asyncio.run(events())
    streamed = [e["data"]["chunk"] for e in seen if e["event"] == "on_chain_stream"]
    ended = [e for e in seen if e["event"] == "on_chain_end"][-1]["data"]["output"]
    assert "".join(c.text for c in streamed) == ended.text == expected.text
    words = DocsQA(fake(reply), retriever, answer="free") | RunnableLambda(lambda a: a.text)
    assert words.invoke(question) == expected.text


def test_one_check_finds_the_model_that_scores_text_under_any_bindings(llama_chat):
    # The quote reader and ReAct's first action ask scorer_of: a .bind()-ed
    # ChatHearth scores as the one under it, and a chat model that cannot score is left alone.
    from hearthlm.llm.chain import scorer_of

    bound = llama_chat.bind(max_new_tokens=4).bind(temperature=0.0)
    assert scorer_of(llama_chat) is llama_chat
    assert scorer_of(bound) is llama_chat
    assert scorer_of(GenericFakeChatModel(messages=iter([AIMessage("hi")]))) is None
    assert scorer_of(RunnableLambda(lambda x: x)) is None
    score = scorer_of(bound).loglikelihoods("The capital of France is", [" Paris", " a fish"])
    assert score[0] > score[1]


def test_a_bound_chat_model_keeps_its_capabilities_in_every_check(llama_chat):
    """The reader, ReAct and the agent middleware ask through one check that looks under
    .bind(...): a bound ChatHearth still reads constraints and copies arguments (the
    middleware read the binding's own attribute, and found none)."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from hearthlm.llm.chain import argument_mode, can_constrain, scorer_of

    bound = llama_chat.bind(max_new_tokens=8).bind(temperature=0)
    assert can_constrain(bound) and argument_mode(bound) == "copy"
    assert scorer_of(bound) is llama_chat
    other = FakeListChatModel(responses=["hi"])
    assert not can_constrain(other) and argument_mode(other) == "write"
    assert scorer_of(other) is None
