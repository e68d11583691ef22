"""Text plumbing shared by every backend: chat-template rendering, incremental detokenizing and
stop sequences. Keeping it in one place is what makes the backends agree: both see the same prompt
string and both stop on the same text.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hearthlm.errors import GenerationError

# Used when a model ships no template of its own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
_ENV.globals["raise_exception"] = _raise_exception


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> Any:
    """A chat template compiled once: compiling costs about 5 ms, more than rendering."""
    return _ENV.from_string(template)


def render_chat(
    template: str,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render chat messages with a model's Jinja chat template, as Hugging Face does.

    Example:
        >>> render_chat(CHATML_TEMPLATE, [{"role": "user", "content": "Hi"}])
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
    """
    try:
        return _compiled(template).render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except TemplateError as exc:
        raise GenerationError(
            f"the model's chat template failed on these messages: {exc}. "
            "Check the message roles and order the model expects."
        ) from None


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas without splitting multi-byte characters.

    It decodes a short window of recent tokens rather than each token alone, because a token may
    hold half a UTF-8 character; text is released only once it no longer ends in U+FFFD.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context
        self._read = 0  # end of the tokens already turned into released text

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""


class StopScanner:
    """Finds stop sequences in streamed text and holds back text that may begin one.

    ``push`` returns the text that is safe to release and whether a stop sequence was reached;
    the stop sequence itself is never released.
    """

    def __init__(self, stops: Sequence[str] | None) -> None:
        self._stops = [s for s in (stops or []) if s]
        self._buffer = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._buffer += text
        hits = [i for i in (self._buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._buffer = self._buffer[: min(hits)], ""
            return out
        keep = self._longest_stop_prefix_suffix()
        out = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return out

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._buffer)), best, -1):
                if self._buffer.endswith(stop[:k]):
                    best = k
                    break
        return best


class RepetitionGuard:
    """Notices free text that has started to loop, so that a reply stops there rather than at its
    length cap: a small model that repeats a phrase three times in a row repeats it until the cap.

    ``push`` takes each text delta and returns True once the text ends in the same phrase of up to
    ``max_phrase_words`` words three times in a row (a single word: six times).
    """

    def __init__(self, max_phrase_words: int = 40) -> None:
        self.max_phrase_words = max_phrase_words
        self._words: list[str] = []  # the last words that a loop can span, all complete
        self._partial = ""  # the word being written (no whitespace after it yet)
        self.looped = False

    def push(self, text: str) -> bool:
        # The words of the whole text, kept incrementally and only as many as a loop can span,
        # so that each delta costs the same however long the reply has grown.
        if self.looped or not text:
            return self.looped
        joined = self._partial + text
        words = joined.split()
        self._partial = words.pop() if words and not joined[-1].isspace() else ""
        self._words.extend(words)
        del self._words[: -max(6, 3 * self.max_phrase_words)]
        tail = [*self._words, self._partial] if self._partial else self._words
        self.looped = ends_in_loop(tail, self.max_phrase_words)
        return self.looped


def ends_in_loop(words: list[str], max_phrase_words: int = 40) -> bool:
    """Whether ``words`` end in one phrase repeated three times in a row (one word: six)."""
    n = len(words)
    for size in range(1, max_phrase_words + 1):
        repeats = 6 if size == 1 else 3
        if size * repeats > n:
            break
        if words[n - 1] != words[n - 1 - size]:  # the phrase before does not end the same
            continue
        tail = words[n - size :]
        if all(words[n - size * (k + 1) : n - size * k] == tail for k in range(1, repeats)):
            return True
    return False
