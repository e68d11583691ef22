"""Every public name of hearthlm states its contract in a docstring.

ruff's pydocstyle rules (D1) check that modules, packages, classes and functions have docstrings;
this test checks what ruff cannot see: every class and function a module exports in ``__all__``
(re-exports included) has a docstring of its own, not one generated for it.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil

import hearthlm


def _modules() -> list[str]:
    found = ["hearthlm"]
    for info in pkgutil.walk_packages(hearthlm.__path__, "hearthlm."):
        found.append(info.name)
    return found


def _own_doc(obj: object) -> str:
    doc = (obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__) or ""
    if dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # the signature dataclasses write when the class has no docstring
    return doc.strip()


def test_every_exported_class_and_function_has_a_docstring():
    missing = []
    for name in _modules():
        module = importlib.import_module(name)
        for export in getattr(module, "__all__", []):
            obj = getattr(module, export)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not _own_doc(obj):
                missing.append(f"{name}.{export}")
    assert not missing, f"exported without a docstring: {sorted(set(missing))}"
