"""The local model layer that every other part of hearthlm calls."""

from hearthlm.llm.backend import Backend, Constraint, available_backends, load_backend
from hearthlm.llm.chat_model import ChatHearth
from hearthlm.llm.prompting import FewShotPrompt, build_few_shot_prompt, count_tokens
from hearthlm.llm.sources import ModelSource, list_sources, packaged_model_path, resolve_model

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
