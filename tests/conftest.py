"""Shared fixtures: the real packaged model on both backends, greedy, loaded once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import pytest

from hearthlm.llm import ChatHearth


@pytest.fixture(scope="session")
def hf_cache(tmp_path_factory: pytest.TempPathFactory):
    """A fresh cache folder, so the GGUF-to-safetensors conversion itself is exercised."""
    return tmp_path_factory.mktemp("hearth-cache")


@pytest.fixture(scope="session")
def llama_chat() -> ChatHearth:
    chat = ChatHearth(backend="llamacpp", max_new_tokens=48)
    return chat.load()  # now, so test timings exclude it


@pytest.fixture(scope="session")
def hf_chat(hf_cache) -> ChatHearth:
    chat = ChatHearth(backend="transformers", max_new_tokens=48, cache_dir=hf_cache)
    return chat.load()


@pytest.fixture(scope="session", params=["llamacpp", "transformers"])
def any_chat(request: pytest.FixtureRequest) -> ChatHearth:
    """Each test using this runs once per backend."""
    return request.getfixturevalue("llama_chat" if request.param == "llamacpp" else "hf_chat")
