"""The quoting reader and the grounding check, on the example documents and the real model."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from hearthlm.config import RetrievalConfig
from hearthlm.retrieval import NO_ANSWER, DocsQA, DocumentIndex, HybridRetriever
from hearthlm.retrieval.grounding import claims, unsupported
from hearthlm.retrieval.loaders import load_file
from hearthlm.retrieval.reader import Candidate, Quote, choose
from hearthlm.retrieval.retriever import Source
from hearthlm.retrieval.sentences import Span, split_sentences

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "docs"


def extracted(path: Path) -> str:
    """The file's text as the loader extracts it: what quote offsets count in."""
    sections = load_file(path)
    text = ""
    for section in sections:
        text = text.ljust(section.offset) + section.text
    return text


class CountCalls(BaseCallbackHandler):
    def __init__(self) -> None:
        self.calls = 0

    def on_chat_model_start(self, *args, **kwargs) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def examples_index(embeddings, tmp_path_factory: pytest.TempPathFactory) -> DocumentIndex:
    config = RetrievalConfig(
        path=tmp_path_factory.mktemp("examples") / "idx", exclude=["questions.jsonl"]
    )
    index = DocumentIndex(config, embeddings)
    index.index_path(EXAMPLES, progress=False)
    return index


@pytest.fixture(scope="module")
def quote_qa(examples_index, llama_chat) -> DocsQA:
    return DocsQA(llama_chat, HybridRetriever.from_index(examples_index), answer="quote")


def quote_qa_over(files: dict[str, str], embeddings, llama_chat, tmp_path: Path) -> DocsQA:
    """A quote-mode DocsQA over a fresh index of ``files`` (name -> text)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in files.items():
        (docs / name).write_text(text, encoding="utf-8")
    index = DocumentIndex(RetrievalConfig(path=tmp_path / "idx"), embeddings)
    index.index_path(docs, progress=False)
    return DocsQA(llama_chat, HybridRetriever.from_index(index), answer="quote")


# --- sentences ---------------------------------------------------------------------------------


def test_code_lines_and_list_items_are_sentences_with_exact_offsets():
    path = EXAMPLES / "troubleshooting.txt"
    text = extracted(path)
    spans = split_sentences(text)
    e4 = next(s for s in spans if s.text.startswith("E4 - "))
    assert text[e4.start : e4.end] == e4.text
    # the code line is one statement, both of its sentences included
    assert e4.text.endswith("descale it before the next use.")
    assert [s.text[:2] for s in spans if s.text[:1] == "E"] == ["E1", "E2", "E3", "E4"]

    manual = extracted(EXAMPLES / "kettle-manual.md")
    items = [s for s in split_sentences(manual) if s.text.startswith("- ")]
    assert items[0].text == "- The K2 kettle with a brushed stainless steel body"
    assert items[0].title == "In the box" and items[0].group is not None
    assert manual[items[0].group.start : items[0].group.end].count("\n- ") == 3
    assert not any(s.text.startswith("#") for s in split_sentences(manual))  # headings dropped


def test_html_paragraphs_and_pdf_pages_split_into_sentences():
    html = extracted(EXAMPLES / "warranty.html")
    spans = split_sentences(html)
    assert spans[0].text.startswith("Every Emberline K2 kettle comes with a two-year")
    assert spans[0].title == "Warranty and returns"  # the heading is context, not a sentence
    # a sentence wrapped over two lines is one sentence
    assert any(s.text.startswith("It does not cover limescale damage,\ndrops") for s in spans)
    pdf = EXAMPLES / "safety-sheet.pdf"
    pages = load_file(pdf)
    second = split_sentences(pages[1].text, pages[1].offset)
    assert second[0].text == "Do not throw the kettle away with household waste."
    assert extracted(pdf)[second[0].start : second[0].end] == second[0].text


def test_text_without_punctuation_is_cut_at_word_boundaries():
    text = " ".join(f"word{i}" for i in range(400))
    spans = split_sentences(text)
    assert len(spans) > 1 and all(len(s.text) <= 400 for s in spans)
    assert all(text[s.start : s.end] == s.text for s in spans)
    assert " ".join(s.text for s in spans) == text


# --- grounding ---------------------------------------------------------------------------------


def test_a_quote_is_led_by_its_title_unless_it_names_it():
    def reads(text: str, title: str) -> str:
        return Quote(text, 1, "a.md", None, "", 0, len(text), 1.0, title).reads

    film = "The Spiderwick Chronicles (film)"
    assert reads("Set in New England, it follows a family.", film) == (
        "The Spiderwick Chronicles (film): Set in New England, it follows a family."
    )
    assert reads("The Spiderwick Chronicles is a 2008 film.", film) == (
        "The Spiderwick Chronicles is a 2008 film."  # the name without its qualifier counts
    )
    assert reads("E4 - The heating plate is overheating.", "Error codes") == (
        "Error codes: E4 - The heating plate is overheating."
    )
    assert reads("It boils in four minutes.", "") == "It boils in four minutes."


def test_grounding_flags_numbers_codes_and_names_not_in_the_sources():
    source = "Every kettle comes with a two-year limited warranty. E4 means limescale."
    assert claims("The warranty is 2 years and 10 months [1].") == ["2", "10"]
    assert unsupported("The warranty is 2 years and 10 months [1].", [source]) == ["10"]
    assert unsupported("It lasts two years [1].", [source]) == []
    assert unsupported("E5 means limescale.", [source]) == ["E5"]
    assert unsupported("Contact Alice Smith in Paris.", [source]) == ["Alice Smith", "Paris"]
    assert unsupported("Version v2.1 ships 1,200 units.", ["v2.1 shipped 1200 units"]) == []


def test_a_written_answer_with_an_invented_number_is_flagged_or_replaced(examples_index):
    retriever = HybridRetriever.from_index(examples_index)

    def written() -> GenericFakeChatModel:  # what the 135M model wrote for this question
        reply = AIMessage("The warranty is 2 years and 10 months [1].")
        return GenericFakeChatModel(messages=iter([reply]))

    flagged = DocsQA(written(), retriever, answer="free").invoke("How long is the warranty?")
    assert flagged.grounded is False and flagged.unsupported == ["10"]
    assert flagged.text == "The warranty is 2 years and 10 months [1]."
    replaced = DocsQA(written(), retriever, answer="free", on_ungrounded="quote").invoke(
        "How long is the warranty?"
    )
    assert replaced.replaced == "The warranty is 2 years and 10 months [1]."
    assert "two-year limited warranty" in replaced.text and replaced.quotes
    assert replaced.grounded is False and replaced.unsupported == ["10"]


# --- quote answers on the real model -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "expected", "source"),
    [
        ("How long is the warranty?", "two-year limited warranty", "warranty.html"),
        (
            "What does error E4 mean?",
            "E4 - The heating plate is overheating",
            "troubleshooting.txt",
        ),
        ("How long does the kettle keep the water warm?", "60 minutes", "kettle-manual.md"),
        ("Who must not use the kettle?", "Children under 8 years", "safety-sheet.pdf"),
    ],
)
def test_quote_answers_are_right_and_point_at_their_text(quote_qa, question, expected, source):
    answer = quote_qa.invoke(question)
    assert answer.mode == "quote" and expected in answer.text
    first = answer.quotes[0]
    assert Path(first.path).name == source and expected in first.display
    assert extracted(Path(first.path))[first.start : first.end] == first.text
    assert f"[{first.source}]" in answer.text
    assert answer.citations[0].number == first.source


def test_unanswerable_questions_get_i_dont_know_without_a_model_call(quote_qa, llama_chat):
    counter = CountCalls()
    qa = DocsQA(
        llama_chat.model_copy(update={"callbacks": [counter]}),
        quote_qa.retriever,
        answer="quote",
    )
    for question in ("How do I update the kettle's firmware?", "Who won the 1998 world cup?"):
        answer = qa.invoke(question)
        assert answer.text == NO_ANSWER and not answer.known and answer.quotes == []
    assert counter.calls == 0


def test_bad_questions_get_a_clear_answer(quote_qa):
    assert quote_qa.invoke("").text == NO_ANSWER
    assert quote_qa.invoke("   ").text == NO_ANSWER
    long = quote_qa.invoke("How long is the warranty? " * 400)  # 10,000 characters
    # the embedder reads its first 256 tokens; whatever it finds, the answer is a clear one
    assert long.text == NO_ANSWER or "two-year" in long.text


def test_sources_without_punctuation_or_in_another_language(embeddings, llama_chat, tmp_path):
    words = " ".join(["the pump runs at forty litres per minute when the valve is open"] * 30)
    files = {
        "flat.txt": words,
        "de.md": "# Garantie\n\nDer Wasserkocher hat zwei Jahre Garantie ab Kaufdatum.\n",
    }
    qa = quote_qa_over(files, embeddings, llama_chat, tmp_path)
    flat = qa.invoke("How fast does the pump run?")
    assert "forty litres per minute" in flat.text and len(flat.quotes[0].text) <= 400
    german = qa.invoke("Wie lange ist die Garantie?")
    assert german.text == NO_ANSWER or "zwei Jahre Garantie" in german.text


def test_a_quote_that_names_another_document_brings_its_best_sentence(
    embeddings, llama_chat, tmp_path
):
    files = {
        "film.md": "# Kiss and Tell\n\nKiss and Tell is a 1945 American comedy film starring "
        "Shirley Temple as Corliss Archer. It was directed by Richard Wallace.\n",
        "actress.md": "# Shirley Temple\n\nShirley Temple was an American actress, singer and "
        "dancer. Later in life she served as United States Chief of Protocol.\n",
        "kettle.md": "# Kettle\n\nThe kettle boils 1.7 litres of water in four minutes.\n",
    }
    qa = quote_qa_over(files, embeddings, llama_chat, tmp_path)
    answer = qa.invoke("Which actress played Corliss Archer in the film Kiss and Tell?")
    assert answer.quotes[0].path.endswith("film.md")
    assert [Path(q.path).name for q in answer.quotes] == ["film.md", "actress.md"]


def test_a_bound_chat_model_still_chooses_among_close_sentences(llama_chat):
    # The reader asks the model which of two close sentences answers the question; a
    # ChatHearth under .bind() (as chains pass it) must be asked too, and pick the same one.
    source = Source(1, "notes.txt", None, "", "", "c1", None)
    sentences = ["The kettle holds 1.7 litres of water.", "The kettle is sold in blue and red."]
    ranked = [
        Candidate(Span(text, 0, len(text)), source, {}, score)
        for text, score in zip(sentences, (1.0, 0.99), strict=True)
    ]
    question = "Which colours does the kettle come in?"
    plain = choose(llama_chat, question, ranked, margin=0.1, most=2)
    bound = choose(llama_chat.bind(stop=["\n"]), question, ranked, margin=0.1, most=2)
    assert plain == bound == (1, True)
