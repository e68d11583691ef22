"""The one registry of extension points: built-ins and plugins, found, checked and loaded alike.

hearthlm's extension points are entry-point groups: ``hearthlm.backends`` (model backends),
``hearthlm.tools`` (agent tools), ``hearthlm.tasks`` (evaluation task kinds) and
``hearthlm.methods`` (training methods). Each has one :class:`Registry`, beside the interface its
entries implement, that lists hearthlm's own entries once, as ``"module:attribute"`` references
(or the objects themselves where they are defined in that module), and adds every installed
package's entry points to them:

- an entry is imported when it is first asked for, so listing names imports nothing;
- each loaded entry is checked (``check``), and one that fails is a :class:`PluginError` that
  names the distribution, the entry point and what was expected;
- a plugin that fails to import is a :class:`PluginError` naming its distribution and module;
- a plugin that reuses a built-in's name, or another plugin's, is refused with the names of
  both, rather than one silently replacing the other;
- discovery is cached, and found again when ``sys.path`` changes (or after :meth:`refresh`).

Example:
    >>> from hearthlm.llm.backend import BACKENDS
    >>> sorted(BACKENDS.names())
    ['llamacpp', 'openai', 'transformers']
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from hearthlm.errors import ConfigError

__all__ = ["PluginError", "Registry", "resolve"]

T = TypeVar("T")


def resolve(target: str) -> Any:
    """The object a ``"module:attribute"`` reference names, its module imported."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class PluginError(ConfigError):
    """A registered extension cannot be used: it fails to import, is not what its group takes,
    or reuses a name that is taken."""


@dataclass(frozen=True)
class _Entry:
    name: str
    target: Any  # "module:attribute", an EntryPoint, or the object itself
    source: str  # "hearthlm", or the distribution that registers it

    def load(self) -> Any:
        if isinstance(self.target, EntryPoint):
            return self.target.load()
        if isinstance(self.target, str):
            return resolve(self.target)
        return self.target


class Registry(Generic[T]):
    """Named entries of one extension point: ``builtins`` first, then the plugins registered
    under the entry-point ``group`` by installed packages.

    ``noun`` names one entry in messages ("backend"). ``check`` says what an entry must be: a
    class, whose subclasses the group takes, or a function ``check(name, obj)``, with ``what``
    describing it for messages. ``hint`` ends the message for an unknown name.
    """

    def __init__(
        self,
        group: str,
        noun: str,
        check: type | Callable[[str, Any], bool],
        builtins: Mapping[str, Any],
        what: str = "",
        hint: str = "",
    ) -> None:
        if isinstance(check, type):
            what = what or f"a {check.__module__}.{check.__qualname__} subclass"
        self.group, self.noun, self.what = group, noun, what
        self._check = _subclass_of(check) if isinstance(check, type) else check
        self.hint = hint or f"Install the package that registers it ({group!r} entry points)."
        self.builtin_names = tuple(builtins)
        self._builtins = [_Entry(name, target, "hearthlm") for name, target in builtins.items()]
        self._found: tuple[tuple[str, ...], dict[str, _Entry]] | None = None
        self._loaded: dict[str, T] = {}

    def names(self) -> list[str]:
        """Every entry's name, built-ins first, without importing any."""
        return list(self._entries())

    def __contains__(self, name: object) -> bool:
        return name in self._entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The entry registered as ``name``, imported and checked (once).

        Raises:
            ConfigError: No entry has that name; the message lists the known ones.
            PluginError: The entry fails to import, or is not what this group takes.
        """
        entries = self._entries()
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            noun = self.noun
            raise ConfigError(f"unknown {noun} {name!r}. Known {noun}s: {known}. {self.hint}")
        if name not in self._loaded:
            entry = entries[name]
            try:
                loaded = entry.load()
            except Exception as exc:
                raise PluginError(
                    f"{self._label(entry)} failed to import: {type(exc).__name__}: {exc}. "
                    f"Reinstall {entry.source}, or uninstall it."
                ) from exc
            if not self._check(name, loaded):
                raise PluginError(
                    f"{self._label(entry)} names {loaded!r}, which is not {self.what}."
                )
            self._loaded[name] = loaded
        return self._loaded[name]

    def load_all(self) -> dict[str, T]:
        """Every entry by name, each imported and checked."""
        return {name: self.get(name) for name in self.names()}

    def refresh(self) -> None:
        """Find the installed plugins again (discovery is otherwise cached per ``sys.path``)."""
        self._found = None
        self._loaded.clear()

    def _entries(self) -> dict[str, _Entry]:
        key = tuple(sys.path)
        if self._found is None or self._found[0] != key:
            self._found = (key, self._discover())
            self._loaded.clear()
        return self._found[1]

    def _discover(self) -> dict[str, _Entry]:
        found = {entry.name: entry for entry in self._builtins}
        for point in entry_points(group=self.group):
            source = point.dist.name if point.dist is not None else "an unknown distribution"
            if source.replace("_", "-").lower() == "hearthlm" and point.name in found:
                continue  # an older install's metadata listing a built-in
            entry = _Entry(point.name, point, source)
            if point.name in found:
                taken = found[point.name]
                owner = "a built-in" if taken.source == "hearthlm" else f"from {taken.source}"
                raise PluginError(
                    f"{self._label(entry)} reuses the name {point.name!r}, {owner}; "
                    f"register it under another name."
                )
            found[point.name] = entry
        return found

    def _label(self, entry: _Entry) -> str:
        where = entry.target.value if isinstance(entry.target, EntryPoint) else entry.target
        return f"the {self.group} entry {entry.name!r} ({where}, from {entry.source})"


def _subclass_of(base: type) -> Callable[[str, Any], bool]:
    """A registry check: the entry is a subclass of ``base``."""

    def check(name: str, obj: Any) -> bool:
        return isinstance(obj, type) and issubclass(obj, base)

    return check
