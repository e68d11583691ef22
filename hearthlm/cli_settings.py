"""Command options built from the configuration's models, and ``--set`` for the rest.

A command's settings are fields of a pydantic model (``TrainConfig``, a training method's
config, a task kind's spec). Each field becomes an option with the field's description as its
help and the field's default shown, not restated: left out, an option leaves the setting to
the lower layers (``hearth.toml``, ``HEARTH_*`` variables, the default). ``--set
section.field=value`` reaches any setting, one that has no option of its own included. A
command's function takes its options as keyword arguments, given or None.

Example:
    >>> from hearthlm.config import DataDefaults
    >>> [p.name for p in options(DataDefaults)][:2]
    ['shape', 'prompt_field']
"""

from __future__ import annotations

import inspect
import tomllib
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from hearthlm.errors import ConfigError

# Older, shorter names a few options keep beside their field's own.
ALIASES = {"learning_rate": ("--lr",), "warmup_ratio": ("--warmup",)}

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Any setting as section.field=value (a TOML value; repeat it), e.g. "
        "--set finetune.train.weight_decay=0.01.",
    ),
]


def options(
    model: type[BaseModel],
    skip: Iterable[str] = (),
    notes: Mapping[str, str] | None = None,
    only: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> list[inspect.Parameter]:
    """One keyword option per field of ``model`` that a command line can give (numbers, text,
    paths, flags, choices and lists of text), defaulting to None; ``notes`` adds a sentence to
    a field's help, ``only`` keeps those fields, and ``defaults`` shows another default than
    the field's (one the command's library function sets)."""
    kept = set(only) if only is not None else None
    found = []
    for name, field in model.model_fields.items():
        if name in skip or (kept is not None and name not in kept):
            continue
        shown = (defaults or {}).get(name, field.get_default(call_default_factory=True))
        parameter = option(name, field, (notes or {}).get(name), shown)
        if parameter is not None:
            found.append(parameter)
    return found


def option(
    name: str, field: FieldInfo, note: str | None = None, default: Any = None
) -> inspect.Parameter | None:
    """The option for one field, or None for a field no command line can give (a table);
    ``default`` is the setting's default, shown in the help."""
    kind = _cli_type(field.annotation)
    if kind is None:
        return None
    flag = "--" + name.replace("_", "-")
    declarations = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag, *ALIASES.get(name, ())]
    words = [field.description or name.replace("_", " ").capitalize() + "."]
    if _is_list(field.annotation):
        words.append("Comma-separated.")
    choices = _choices(field.annotation)
    if choices:
        words.append(f"One of: {', '.join(choices)}.")
    if note:
        words.append(note)
    shown: str | bool = False  # the setting's own default, shown; the option's is None
    if default not in (None, [], "") and field.is_required() is False:
        shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
        if kind is bool:
            shown = flag[2:] if default else f"no-{flag[2:]}"
    optional: Any = kind | None
    annotation = Annotated[
        optional, typer.Option(*declarations, help=" ".join(words), show_default=shown)
    ]
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(name, keyword, default=None, annotation=annotation)


def given(model: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``model``'s fields that were given, as the model takes them (a list
    option's text split at commas)."""
    out = {}
    for name, field in model.model_fields.items():
        value = values.get(name)
        if value is None:
            continue
        if _is_list(field.annotation) and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        out[name] = value
    return out


def settings(pairs: Iterable[str] | None) -> dict[str, Any]:
    """``--set`` pairs as dotted overrides: ``finetune.train.batch_size=2`` gives
    ``{"finetune.train.batch_size": 2}``; a value is read as TOML, else kept as text.

    Raises:
        ConfigError: a pair without ``=`` or without a key.
    """
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--set {pair!r}: write section.field=value, e.g. --set finetune.train.seed=1."
            )
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        out[key.strip()] = value
    return out


def command(
    function: Callable[..., Any], extra: Iterable[inspect.Parameter], name: str | None = None
) -> Callable[..., Any]:
    """``function`` with ``extra`` keyword options added to its own parameters, for Typer
    (whose ``**options`` take them), named ``name``."""
    own = [
        p
        for p in inspect.signature(function, eval_str=True).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    taken = {p.name for p in own}
    added = [p for p in _unique(extra) if p.name not in taken]
    parameters = [*own, *added]

    def run(**values: Any) -> Any:
        return function(**values)

    run.__name__ = name or function.__name__
    run.__qualname__ = run.__name__
    run.__doc__ = function.__doc__
    run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


def _unique(parameters: Iterable[inspect.Parameter]) -> list[inspect.Parameter]:
    seen: dict[str, inspect.Parameter] = {}
    for parameter in parameters:
        seen.setdefault(parameter.name, parameter)
    return list(seen.values())


def _optional_inner(annotation: Any) -> Any:
    """``X`` of ``X | None``; the annotation itself otherwise."""
    if get_origin(annotation) in (Union, types.UnionType):
        kept = [a for a in get_args(annotation) if a is not type(None)]
        if len(kept) == 1:
            return kept[0]
    return annotation


def _cli_type(annotation: Any) -> type | None:
    inner = _optional_inner(annotation)
    if inner in (int, float, str, bool, Path):
        return inner
    if get_origin(inner) is Literal or _is_list(annotation):
        return str
    return None


def _is_list(annotation: Any) -> bool:
    inner = _optional_inner(annotation)
    if get_origin(inner) is not list:
        return False
    (item,) = get_args(inner) or (Any,)
    return item is str or get_origin(item) is Literal


def _choices(annotation: Any) -> list[str]:
    inner = _optional_inner(annotation)
    if _is_list(annotation):
        inner = get_args(inner)[0]
    return [str(c) for c in get_args(inner)] if get_origin(inner) is Literal else []


__all__ = ["ALIASES", "SetOpt", "command", "given", "option", "options", "settings"]
