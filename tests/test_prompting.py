import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from hearthlm.errors import ConfigError, ContextWindowError
from hearthlm.llm import build_few_shot_prompt, count_tokens

EXAMPLES = [
    ("What is 2 + 3?", "5"),
    ("What is 10 - 4?", "6"),
    {"input": "What is 3 * 3?", "output": "9"},
    ("What is 8 / 2?", "4"),
]


def test_count_tokens_uses_the_real_tokenizer(llama_chat):
    assert count_tokens(llama_chat, "Hello world") == 2
    chat_tokens = count_tokens(llama_chat, [HumanMessage("Hello world")])
    assert chat_tokens > 2  # template and default system prompt included


def test_zero_one_and_few_shot(llama_chat):
    zero = build_few_shot_prompt(llama_chat, "What is 7 + 1?", EXAMPLES, shots=0)
    one = build_few_shot_prompt(llama_chat, "What is 7 + 1?", EXAMPLES, shots=1)
    few = build_few_shot_prompt(llama_chat, "What is 7 + 1?", EXAMPLES, instruction="Be brief.")
    assert [zero.examples_used, one.examples_used, few.examples_used] == [0, 1, 4]
    assert isinstance(few.messages[0], SystemMessage)
    assert isinstance(few.messages[-2], AIMessage) and few.messages[-1].content == "What is 7 + 1?"
    assert few.prompt_tokens == count_tokens(llama_chat, few.messages)


def test_budget_limits_the_examples_exactly(llama_chat):
    full = build_few_shot_prompt(llama_chat, "What is 7 + 1?", EXAMPLES)
    two = build_few_shot_prompt(llama_chat, "What is 7 + 1?", EXAMPLES[:2])
    tight = build_few_shot_prompt(llama_chat, "What is 7 + 1?", EXAMPLES, budget=two.prompt_tokens)
    assert tight.examples_used == 2 and tight.prompt_tokens <= two.prompt_tokens
    assert full.examples_used == 4 and full.prompt_tokens > tight.prompt_tokens


def test_default_budget_is_context_minus_reply(llama_chat):
    prompt = build_few_shot_prompt(llama_chat, "q", EXAMPLES)
    assert prompt.budget == llama_chat.context_window - llama_chat.max_new_tokens


def test_few_shot_prompt_runs_on_the_model(llama_chat):
    prompt = build_few_shot_prompt(
        llama_chat, "Count from 1 to 3.", [("Count from 1 to 2.", "1, 2")]
    )
    assert llama_chat.invoke(prompt.messages).content.startswith("1, 2, 3")


def test_bad_examples_and_impossible_budgets(llama_chat):
    with pytest.raises(ConfigError, match="input"):
        build_few_shot_prompt(llama_chat, "q", [{"question": "a", "answer": "b"}])
    with pytest.raises(ContextWindowError):
        build_few_shot_prompt(llama_chat, "q " * 50, EXAMPLES, budget=10)
