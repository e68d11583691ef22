"""hearthlm: LangChain applications on a small local model, offline by default.

Example:
    >>> from hearthlm import ChatHearth
    >>> chat = ChatHearth()  # the packaged SmolLM2-135M-Instruct on llama.cpp, greedy
    >>> chat.invoke("Count from 1 to 3.").content  # doctest: +SKIP
"""

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
from hearthlm.llm import ChatHearth, FewShotPrompt, build_few_shot_prompt, count_tokens

__version__ = "0.1.0"

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
