"""The hearthlm error tree.

Every error names what failed, the offending value, and what to do about it. Each subclass also
derives from the built-in exception that callers would naturally catch (``ValueError`` for bad
values, ``FileNotFoundError`` for missing files), so code written against the standard library keeps
working.
"""

from __future__ import annotations


class HearthError(Exception):
    """Root of every error raised on purpose by hearthlm."""


class ConfigError(HearthError, ValueError):
    """A configuration value is invalid: out of range, of the wrong type, or unknown."""


class ModelLoadError(HearthError, FileNotFoundError):
    """A model, tokenizer or adapter could not be found or loaded."""


class ContextWindowError(HearthError, ValueError):
    """A prompt does not fit the model's context window."""


class GenerationError(HearthError, RuntimeError):
    """Generation failed inside a backend."""


class BackendError(HearthError, ConnectionError):
    """A model server could not be reached, failed, or answered in a shape it should not."""


class RetrievalError(HearthError, ValueError):
    """Indexing or retrieval failed."""


class ToolError(HearthError, ValueError):
    """A tool was misused or failed."""


class TrainingError(HearthError, ValueError):
    """A fine-tuning run could not start or continue."""


class EvalError(HearthError, ValueError):
    """An evaluation task or metric could not run."""


__all__ = [
    "BackendError",
    "ConfigError",
    "ContextWindowError",
    "EvalError",
    "GenerationError",
    "HearthError",
    "ModelLoadError",
    "RetrievalError",
    "ToolError",
    "TrainingError",
]
