"""In-context learning helpers: token counts and few-shot prompts that fit a token budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from hearthlm.errors import ConfigError, ContextWindowError
from hearthlm.llm.chat_model import ChatHearth

Example = tuple[str, str] | Mapping[str, str]


@dataclass(frozen=True)
class FewShotPrompt:
    """Chat messages with as many examples as fit, and the counts that decided it."""

    messages: list[BaseMessage]
    examples_used: int
    examples_available: int
    prompt_tokens: int
    budget: int


def count_tokens(model: ChatHearth, content: str | Sequence[BaseMessage]) -> int:
    """Tokens in a text, or in a whole chat prompt (template included), with the real tokenizer.

    Example:
        >>> count_tokens(ChatHearth(), "Hello world")
        2
    """
    if isinstance(content, str):
        return model.get_num_tokens(content)
    return model.get_num_tokens_from_messages(list(content))


def build_few_shot_prompt(
    model: ChatHearth,
    query: str,
    examples: Sequence[Example] = (),
    *,
    instruction: str | None = None,
    shots: int | None = None,
    budget: int | None = None,
) -> FewShotPrompt:
    """A zero-, one- or few-shot chat prompt holding as many examples as fit the budget.

    Examples become user/assistant turns, in the order given (put the most useful first). Each is
    added only if the whole prompt, rendered with the model's chat template, still fits.

    Args:
        model: The chat model whose tokenizer and template count the tokens.
        query: The question to answer after the examples.
        examples: ``(input, output)`` pairs or mappings with ``input`` and ``output`` keys.
        instruction: An optional system message.
        shots: The most examples to include: 0 zero-shot, 1 one-shot, None as many as fit.
        budget: Tokens the prompt may use; defaults to the context window minus the reply's
            ``max_new_tokens``.

    Raises:
        ContextWindowError: Even the prompt without examples exceeds the budget.

    Example:
        >>> prompt = build_few_shot_prompt(ChatHearth(), "2+2?", [("1+1?", "2")], shots=1)
        >>> prompt.examples_used
        1
    """
    if shots is not None and shots < 0:
        raise ConfigError(f"shots must be 0 or more, got {shots}.")
    if budget is None:
        budget = model.context_window - model.max_new_tokens
    pairs = [_pair(e, i) for i, e in enumerate(examples)]
    head: list[BaseMessage] = [SystemMessage(instruction)] if instruction else []
    tail: list[BaseMessage] = [HumanMessage(query)]
    shown: list[BaseMessage] = []
    tokens = count_tokens(model, head + tail)
    if tokens > budget:
        raise ContextWindowError(
            f"the prompt needs {tokens} tokens without any example but the budget is {budget}. "
            "Shorten the query or instruction, or lower max_new_tokens."
        )
    used = 0
    for question, answer in pairs[: shots if shots is not None else len(pairs)]:
        candidate = [*shown, HumanMessage(question), AIMessage(answer)]
        needed = count_tokens(model, head + candidate + tail)
        if needed > budget:
            break
        shown, tokens, used = candidate, needed, used + 1
    return FewShotPrompt(head + shown + tail, used, len(pairs), tokens, budget)


def _pair(example: Example, index: int) -> tuple[str, str]:
    if isinstance(example, Mapping):
        try:
            return str(example["input"]), str(example["output"])
        except KeyError:
            raise ConfigError(
                f"example {index} has keys {sorted(example)}; it needs 'input' and 'output'."
            ) from None
    question, answer = example
    return question, answer
