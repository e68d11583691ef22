"""ChatHearth.loglikelihood: the same scores on both backends, and the ones a reader expects."""

from __future__ import annotations

import math

import pytest

from hearthlm.errors import ConfigError


def test_likely_continuations_score_higher_on_both_backends(llama_chat, hf_chat):
    context = "The capital of France is"
    for chat in (llama_chat, hf_chat):
        paris = chat.loglikelihood(context, " Paris")
        banana = chat.loglikelihood(context, " banana")
        assert paris < 0 and banana < paris - 3
    # the GGUF is Q4_1 and transformers runs its dequantised weights: close, not equal
    assert math.isclose(
        llama_chat.loglikelihood(context, " Paris"),
        hf_chat.loglikelihood(context, " Paris"),
        abs_tol=1.0,
    )


def test_scoring_leaves_generation_unchanged(llama_chat):
    before = llama_chat.invoke("Count from 1 to 3.").content
    llama_chat.loglikelihood("Passage: kettles boil water.\nQuestion:", " What boils water?")
    assert llama_chat.invoke("Count from 1 to 3.").content == before


def test_empty_text_is_a_clear_error(llama_chat):
    with pytest.raises(ConfigError, match="non-empty"):
        llama_chat.loglikelihood("", " Paris")


def test_alternatives_scored_together_match_each_scored_alone(llama_chat, hf_chat):
    context = "The capital of France is"
    options = [" Paris", " banana", " the city of Paris"]
    more = [" Lyon", " a river", " Rome in Italy", " London", " the capital", " Nice", " yes"]
    options += [*more, *(f"{word} and more" for word in more)]  # more than one scoring batch
    for chat in (llama_chat, hf_chat):
        together = chat.loglikelihoods(context, options)
        alone = [chat.loglikelihood(context, option) for option in options]
        assert all(math.isclose(a, b, abs_tol=1e-3) for a, b in zip(together, alone, strict=True))
        assert together[1] < together[0] - 3


def test_the_k_best_alternatives_are_exact_and_the_rest_are_skipped(llama_chat):
    context = "The capital of France is"
    options = [" Paris", " the city of Paris", " Lyon", " Rome in Italy", " banana", " a river"]
    options += [f"{option} and more" for option in options]
    exact = llama_chat.loglikelihoods(context, options)
    top = llama_chat.loglikelihoods(context, options, best_only=3)
    best = sorted(range(len(options)), key=lambda i: -exact[i])[:3]
    assert all(math.isclose(top[i], exact[i], abs_tol=1e-3) for i in best)
    rest = [top[i] for i in range(len(options)) if i not in best]
    assert all(s == -math.inf or s <= min(exact[i] for i in best) + 1e-3 for s in rest)
    assert -math.inf in rest  # those that cannot be among the best are not evaluated


def test_scores_stay_the_same_whichever_prompts_were_scored_between(llama_chat):
    """In process, scoring keeps a few contexts, each holding what it last read (a tool call
    alternates between the tools prompt and short ones): a prompt scored again, after others
    took the contexts or left it held, scores as it did first."""
    tools = "You can call these functions:\n" + "\n".join(
        f"- tool_{i}: does task number {i} for the user." for i in range(12)
    )
    prompts = [f"{tools}\nRequest: book a room\nCall:", "Function: translate\nRequest:",
               f"{tools}\nRequest: move a file\nCall:", "The capital of France is"]  # fmt: skip
    options = [" tool_3", " tool_3 now", " tool_11", " Paris", " the city of Paris"]
    first = [llama_chat.loglikelihoods(p, options) for p in prompts]
    for _ in range(2):
        for prompt, scores in zip(reversed(prompts), reversed(first), strict=True):
            again = llama_chat.loglikelihoods(prompt, options)
            assert again == pytest.approx(scores, abs=1e-3)
    assert first[0] != pytest.approx(first[1], abs=0.5)  # the prompts do score differently
