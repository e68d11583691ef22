"""Retrieval modes and cited answers on real documents and the real model."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import BaseCallbackHandler
from retrieval_helpers import write_corpus

from hearthlm.config import RetrievalConfig
from hearthlm.retrieval import NO_ANSWER, DocsChat, DocsQA, DocumentIndex, HybridRetriever
from hearthlm.retrieval.rag import CitedText, Source, resolve_citations


@pytest.fixture(scope="module")
def docs_index(embeddings, tmp_path_factory: pytest.TempPathFactory) -> DocumentIndex:
    root = tmp_path_factory.mktemp("rag")
    corpus = write_corpus(root / "docs")
    index = DocumentIndex(RetrievalConfig(path=root / "idx"), embeddings)
    index.index_path(corpus, progress=False)
    return index


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_each_mode_finds_the_right_chunk(docs_index, mode):
    retriever = HybridRetriever.from_index(docs_index, mode=mode, k=2)
    hits = retriever.search("How much does fixing a flat tyre cost?")
    assert hits[0].metadata["source"].endswith("page.html")
    assert hits[0].similarity is not None and hits[0].similarity > 0.3
    docs = retriever.invoke("When are expense reports due?")  # the LangChain retriever interface
    assert docs[0].metadata["source"].endswith("notes.txt")


def test_keyword_only_terms_are_found_by_bm25(docs_index):
    hits = HybridRetriever.from_index(docs_index, mode="bm25", k=1).search("potassium")
    assert "potassium" in hits[0].text


def test_filters_glob_threshold_and_mmr(docs_index):
    base = HybridRetriever.from_index(docs_index, k=3)
    only_pdf = base.model_copy(update={"source_glob": "*.pdf"}).search("planets and storms")
    assert only_pdf and all(h.metadata["source"].endswith(".pdf") for h in only_pdf)
    page_two = base.model_copy(update={"where": {"page": 2}}).search("insects")
    assert [h.metadata["page"] for h in page_two] == [2]
    assert base.model_copy(update={"source_glob": "*.docx"}).search("anything") == []
    strict = base.model_copy(update={"score_threshold": 0.99}).search("roses")
    assert strict == []
    diverse = base.model_copy(update={"mmr": True, "mmr_lambda": 0.3, "k": 3})
    sources = [h.metadata["source"] for h in diverse.search("gardens, planets and bees")]
    assert len(sources) == 3 and len(set(sources)) >= 2


def test_citation_maps_to_the_right_file_and_page(docs_index, llama_chat):
    qa = DocsQA(llama_chat, HybridRetriever.from_index(docs_index, k=1))
    answer = qa.invoke("How do honey bees communicate the direction of flowers?")
    assert answer.citations, answer.text
    cited = answer.citations[0]
    assert Path(cited.path).name == "science.pdf" and cited.page == 2
    assert "waggle dance" in cited.snippet
    assert "[1]" in answer.text and answer.removed_citations == []


def test_answers_stream_and_match_invoke(docs_index, llama_chat):
    qa = DocsQA(llama_chat, HybridRetriever.from_index(docs_index, k=2), answer="constrained")
    items = list(qa.stream("How long does a flat tyre repair take?"))
    final = sum(items[1:], items[0])  # the chunks add up to the answer
    assert len(items) > 3  # token by token
    assert final.text == qa.invoke("How long does a flat tyre repair take?").text
    # streamed already in the answer's form: the opening "[n]" of "[n] sentence." moves last
    assert not items[0].text.startswith("[") and final.text.endswith("].")
    assert all(not i.sources for i in items[:-1]) and items[-1].sources
    assert final.citations and final.citations[0].path.endswith("page.html")
    assert final.mode == "constrained" and final.grounded is not None  # written, so checked


def test_nothing_relevant_means_i_dont_know_without_calling_the_model(docs_index, llama_chat):
    class Count(BaseCallbackHandler):
        calls = 0

        def on_chat_model_start(self, *args, **kwargs) -> None:
            Count.calls += 1

    chat = llama_chat.model_copy(update={"callbacks": [Count()]})
    qa = DocsQA(chat, HybridRetriever.from_index(docs_index))
    answer = qa.invoke("Who won the football world cup in 1998?")
    assert answer.text == NO_ANSWER and answer.sources == [] and answer.citations == []
    assert Count.calls == 0


def test_citations_to_no_source_are_removed_and_reported():
    sources = [
        Source(1, "/docs/a.md", None, "", "alpha", "id1", 0.9),
        Source(2, "/docs/b.pdf", 3, "", "beta", "id2", 0.8),
    ]
    answer = resolve_citations("q", "Alpha holds [1]. Beta too [2, 7]. Gamma [9].", sources)
    assert answer.text == "Alpha holds [1]. Beta too [2]. Gamma."
    assert [c.path for c in answer.citations] == ["/docs/a.md", "/docs/b.pdf"]
    assert answer.removed_citations == [7, 9]


PIECES = ["[", "]", "1", "2", "9", ", ", " ", "  ", "\t", "\n", ".", "!", "Foo", "bar", "[1]"]
PIECES += ["[2] ", "[9]", "[1, 9]", " x"]


@settings(max_examples=3000, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14))
def test_streamed_citations_are_the_answer_as_it_will_read(parts):
    """However a reply is cut into deltas, what streams is a prefix of the checked answer:
    streamed chunks then add up to what invoke returns."""
    sources = [Source(n, f"/docs/{n}.md", None, "", "text", f"id{n}", 0.5) for n in (1, 2)]
    writer = CitedText(sources)
    streamed = "".join(writer.push(p) for p in parts)
    assert resolve_citations("q", "".join(parts), sources).text.startswith(streamed)


def test_free_citations_mode_uses_the_models_own_brackets(docs_index, llama_chat):
    qa = DocsQA(llama_chat, HybridRetriever.from_index(docs_index, k=1), citations="free")
    answer = qa.invoke("How often do roses need watering?")
    assert answer.sources and all(s.number == 1 for s in answer.sources)
    assert set(c.number for c in answer.citations) <= {1}


def test_chat_session_persists_and_resumes(docs_index, llama_chat, tmp_path: Path):
    qa = DocsQA(llama_chat, HybridRetriever.from_index(docs_index, k=1))
    history = tmp_path / "history.sqlite"
    first = DocsChat(qa, history)
    answer = first.ask("How much does a flat tyre repair cost?")
    assert answer.standalone_question == "How much does a flat tyre repair cost?"
    follow = first.ask("And how long does it take?")
    assert follow.standalone_question != "And how long does it take?"  # rewritten with history
    resumed = DocsChat(qa, history, session_id=first.session_id)
    contents = [m.content for m in resumed.messages]
    assert contents[0] == "How much does a flat tyre repair cost?" and len(contents) == 4
    assert DocsChat(qa, history).messages == []  # a new session starts empty


def test_no_room_for_any_source_is_a_clear_error(docs_index):
    from hearthlm.errors import ContextWindowError
    from hearthlm.llm import ChatHearth

    tiny = ChatHearth(context_size=128, max_new_tokens=48)
    qa = DocsQA(tiny, HybridRetriever.from_index(docs_index, k=2))
    with pytest.raises(ContextWindowError, match="no retrieved chunk fits"):
        qa.invoke("How much does a flat tyre repair cost?")
