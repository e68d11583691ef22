from hypothesis import given
from hypothesis import strategies as st

from hearthlm.llm.text import CHATML_TEMPLATE, IncrementalDetokenizer, StopScanner, render_chat


def _scan(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    scanner = StopScanner(stops)
    out = "".join(scanner.push(p) for p in pieces)
    if not scanner.stopped:
        out += scanner.flush()
    return out, scanner.stopped


@given(
    st.text(max_size=60), st.lists(st.integers(1, 5), max_size=20), st.text(min_size=1, max_size=4)
)
def test_stop_scanner_matches_str_split_whatever_the_chunking(text, cuts, stop):
    pieces, rest = [], text
    for n in cuts:
        pieces.append(rest[:n])
        rest = rest[n:]
    pieces.append(rest)
    out, stopped = _scan(pieces, [stop])
    assert out == text.split(stop)[0]
    assert stopped == (stop in text)


def test_stop_scanner_releases_earliest_stop_only():
    assert _scan(["ab", "c\nUser", ": hi"], ["User:", "\n"]) == ("abc", True)


def test_chatml_fallback_renders_generation_prompt():
    text = render_chat(CHATML_TEMPLATE, [{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>assistant\n")


def test_detokenizer_never_splits_multibyte_characters(llama_chat):
    engine = llama_chat.engine
    text = "Crème brûlée 🍮 costs 5€ — 日本語 too."
    detok = IncrementalDetokenizer(engine.decode)
    pieces = [detok.push(t) for t in engine.tokenize(text)]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
