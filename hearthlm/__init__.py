"""hearthlm: LangChain applications on a small local model, offline by default.

Example:
    >>> from hearthlm import ChatHearth
    >>> chat = ChatHearth()  # the packaged SmolLM2-135M-Instruct on llama.cpp, greedy
    >>> chat.invoke("Name the capital of France.").content
    'The capital of France is Paris.'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hearthlm.config import HearthConfig, LLMConfig, SamplingConfig, load_config
from hearthlm.errors import (
    ConfigError,
    ContextWindowError,
    EvalError,
    GenerationError,
    HearthError,
    ModelLoadError,
    RetrievalError,
    ToolError,
    TrainingError,
)

if TYPE_CHECKING:
    from hearthlm.llm import ChatHearth, FewShotPrompt, build_few_shot_prompt, count_tokens

__version__ = "0.1.0"

# The model layer imports LangChain (about 0.4 s): it loads on first use, so that `hearth --help`
# and the document commands start without it.
_LAZY = {"ChatHearth", "FewShotPrompt", "build_few_shot_prompt", "count_tokens"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import hearthlm.llm

        return getattr(hearthlm.llm, name)
    raise AttributeError(f"module 'hearthlm' has no attribute {name!r}")


__all__ = [
    "ChatHearth",
    "ConfigError",
    "ContextWindowError",
    "EvalError",
    "FewShotPrompt",
    "GenerationError",
    "HearthConfig",
    "HearthError",
    "LLMConfig",
    "ModelLoadError",
    "RetrievalError",
    "SamplingConfig",
    "ToolError",
    "TrainingError",
    "__version__",
    "build_few_shot_prompt",
    "count_tokens",
    "load_config",
]
