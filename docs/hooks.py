"""MkDocs hooks: the reference pages written from the code itself, at build time.

A page asks for a generated part with a marker line:

- ``<!-- generated: config -->``: every config section and field, with its type, default and
  the ``Field`` description (``hearthlm.config``);
- ``<!-- generated: cli -->``: every ``hearth`` command with its arguments and options, from
  the commands themselves;
- ``<!-- generated: benchmarks -->``: every saved result under ``benchmarks/results``, with the
  machine it ran on.
"""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.M)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Each marker line of a page, replaced by the part it names."""
    return MARKER.sub(lambda m: GENERATORS[m[1]](), markdown)


# -- configuration -------------------------------------------------------------------------------


def config_reference() -> str:
    """A table of fields for each config section (and for the entries of a list section)."""
    from hearthlm.config import HearthConfig

    parts = []
    for name, field in HearthConfig.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        parts.append(f"### `[{name}]`\n\n{_doc(model)}\n")
        parts.append(_fields_table(model))
        for nested_name, nested, many in _nested_models(model):
            title = f"`[{name}.{nested_name}]`" + (" entries" if many else "")
            parts.append(f"#### {title}\n\n{_doc(nested)}\n")
            parts.append(_fields_table(nested))
    return "\n".join(parts)


def _fields_table(model: type[BaseModel]) -> str:
    rows = ["| key | type | default | what it sets |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        default = "" if field.is_required() else _default(field)
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | {_type(field.annotation)} | {default} | {description} |")
    return "\n".join(rows) + "\n"


def _nested_models(model: type[BaseModel]) -> list[tuple[str, type[BaseModel], bool]]:
    """The sections inside a section (``[finetune.train]``) and the models of its lists'
    entries (``[[serve.api_keys]]``): (name, model, whether a list's)."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.append((name, annotation, False))
            continue
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found.append((name, arg, True))
    return found


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return ""
    else:
        value = field.default
    if value is None:
        return "unset"
    if hasattr(value, "get_secret_value"):
        return "(secret)"
    return f"`{json.dumps(value, default=str)}`"


def _type(annotation: Any) -> str:
    text = _type_text(annotation)
    return f"`{text}`".replace("|", "\\|")


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is not None:
        inner = ", ".join(_type_text(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _doc(obj: Any) -> str:
    return (obj.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


# -- command line --------------------------------------------------------------------------------


def cli_reference() -> str:
    """A heading and a table of arguments and options for each command, sub-apps included."""
    import typer

    from hearthlm.cli import app

    root = typer.main.get_command(app)
    parts: list[str] = []
    _command(root, "hearth", parts, None)
    return "\n".join(parts)


def _command(command: Any, path: str, parts: list[str], ctx: Any) -> None:
    import typer

    context = typer.Context(command, info_name=path.split()[-1], parent=ctx)
    subcommands = getattr(command, "list_commands", None)
    if subcommands is not None and path != "hearth":
        loaded = getattr(command, "loaded", command)  # a sub-app imported on first use
        parts.append(f"{_heading(path)} `{path}`\n\n{_text(command.help)}\n")
        command = loaded
    if subcommands is not None:
        for name in command.list_commands(context):
            _command(command.get_command(context, name), f"{path} {name}", parts, context)
        return
    parts.append(f"{_heading(path)} `{path}`\n\n{_text(command.help)}\n")
    rows = ["| argument or option | default | what it does |", "| --- | --- | --- |"]
    for param in command.params:
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        if param.param_type_name == "argument":
            name = f"`{param.name.upper()}`"
        else:
            name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        default = param.default
        if isinstance(getattr(param, "show_default", None), str):
            default = param.show_default  # a setting's own default; the option's is None
        shown = "" if default in (None, (), [], False) or param.required else f"`{default}`"
        helped = _text(getattr(param, "help", "") or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {name} | {shown} | {helped} |")
    if len(rows) > 2:
        parts.append("\n".join(rows) + "\n")


def _heading(path: str) -> str:
    return "#" * (path.count(" ") + 2)  # hearth X: ###, hearth eval X: ####


def _text(text: str | None) -> str:
    return re.sub(r"\s*\n\s*", " ", (text or "").strip())


# -- benchmarks ----------------------------------------------------------------------------------


def benchmark_results() -> str:
    """A collapsed table of every figure of each saved result, headed by its machine."""
    parts = []
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if "benchmark" not in result:  # recorded replies beside a result, not a result
            continue
        machine = result.pop("machine", {})
        name = result.pop("benchmark", path.stem)
        where = ", ".join(f"{k} {v}" for k, v in machine.items() if v is not None)
        rows = ["| figure | value |", "| --- | --- |"]
        rows += [f"| `{k}` | {v} |" for k, v in _leaves(result)]
        body = "\n".join("    " + line for line in rows)
        parts.append(f'??? note "{name} (`{path.name}`)"\n    Machine: {where}.\n\n{body}\n')
    return "\n".join(parts)


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            found += _leaves(item, f"{prefix}.{key}" if prefix else str(key))
        return found
    text = json.dumps(value, ensure_ascii=False)
    if len(text) > 120:
        text = text[:117] + "…"
    return [(prefix, text.replace("|", "\\|"))]


GENERATORS = {
    "config": config_reference,
    "cli": cli_reference,
    "benchmarks": benchmark_results,
}
