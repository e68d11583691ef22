"""The one loader of plugins: objects that installed packages register under an entry-point group.

hearthlm's extension points are entry-point groups: ``hearthlm.backends`` (model backends),
``hearthlm.tools`` (agent tools), ``hearthlm.tasks`` (evaluation task kinds) and
``hearthlm.methods`` (training methods). hearthlm's own built-ins are registered in its
``pyproject.toml`` exactly as a plugin registers in its own.

Example:
    >>> dict(registered("hearthlm.backends"))["transformers"]  # doctest: +SKIP
    <class 'hearthlm.llm.hf_backend.TransformersBackend'>
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

__all__ = ["registered"]


def registered(group: str) -> list[tuple[str, Any]]:
    """Every ``(name, object)`` registered under the entry-point ``group`` by an installed
    package, each object imported (``module:attribute``), in the order Python lists them. A
    plugin that fails to import raises its own error here, naming the module."""
    return [(ep.name, ep.load()) for ep in entry_points(group=group)]
