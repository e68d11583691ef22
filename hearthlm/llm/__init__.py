"""The local model layer that every other part of hearthlm calls."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hearthlm.llm.backend import Backend, Constraint, available_backends, load_backend
from hearthlm.llm.sources import ModelSource, list_sources, packaged_model_path, resolve_model

if TYPE_CHECKING:
    from hearthlm.llm.chat_model import ChatHearth
    from hearthlm.llm.prompting import FewShotPrompt, build_few_shot_prompt, count_tokens

# These import LangChain (about 0.4 s), so they load on first use.
_LAZY = {
    "ChatHearth": "hearthlm.llm.chat_model",
    "FewShotPrompt": "hearthlm.llm.prompting",
    "build_few_shot_prompt": "hearthlm.llm.prompting",
    "count_tokens": "hearthlm.llm.prompting",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hearthlm.llm' has no attribute {name!r}")


__all__ = [
    "Backend",
    "ChatHearth",
    "Constraint",
    "FewShotPrompt",
    "ModelSource",
    "available_backends",
    "build_few_shot_prompt",
    "count_tokens",
    "list_sources",
    "load_backend",
    "packaged_model_path",
    "resolve_model",
]
