"""The layers of the configuration, read and merged by pydantic-settings: defaults, a TOML file,
``HEARTH_*`` variables and overrides; and where each resolved value came from."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from hearthlm.config.jobs import EvalConfig, FinetuneConfig
from hearthlm.config.sections import (
    AgentsConfig,
    LLMConfig,
    RetrievalConfig,
    SamplingConfig,
    ServeConfig,
    StrictModel,
)
from hearthlm.errors import ConfigError

ENV_PREFIX = "HEARTH_"
DEFAULT_CONFIG_FILE = "hearth.toml"


class HearthConfig(StrictModel):
    """The whole configuration, one section per part of hearthlm."""

    llm: LLMConfig = Field(default_factory=LLMConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> HearthConfig:
    """Build the configuration from defaults, a TOML file, the environment and overrides.

    The layers are pydantic-settings sources, merged section by section. A variable set to
    ``none`` or ``null`` sets the field to None, even when the TOML file gives it a value.

    Args:
        path: A TOML file. Defaults to ``$HEARTH_CONFIG``, then ``./hearth.toml`` if it exists.
        overrides: Highest-priority values, nested (``{"llm": {"backend": "x"}}``) or dotted
            (``{"llm.backend": "x"}``). ``None`` values are ignored, so CLI options left unset
            do not mask lower layers.
        environ: The environment to read; defaults to ``os.environ``.

    Raises:
        ConfigError: The file is missing or not valid TOML, or a value is invalid.

    Example:
        >>> load_config(environ={"HEARTH_LLM__MODEL": "none"}).llm.model is None
        True
    """
    environ = os.environ if environ is None else environ
    file = _config_file(path, environ)
    source = str(file) if file else "defaults"
    settings = _layered_settings(file, environ)
    try:
        layered = settings(**_nest(overrides or {}))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse config file {file}: {exc}. Fix its TOML syntax.") from None
    except SettingsError as exc:
        if isinstance(exc.__cause__, ConfigError):
            raise exc.__cause__ from None
        raise ConfigError(f"{exc}. Fix the HEARTH_<SECTION>__<FIELD> variable.") from None
    except ValidationError as exc:
        raise config_error_from(exc, source) from None
    # The sections are validated already; HearthConfig only regroups them, without the sources.
    return HearthConfig.model_validate(dict(layered))


def config_sources(
    path: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[HearthConfig, dict[str, str]]:
    """The configuration :func:`load_config` builds, and where each value came from: for each
    setting by its dotted name (``llm.model``, ``finetune.train.batch_size``), ``"default"``,
    the TOML file's path, or the ``HEARTH_*`` variable.

    Raises:
        ConfigError: As :func:`load_config` does.
    """
    environ = os.environ if environ is None else environ
    config = load_config(path, environ=environ)
    file = _config_file(path, environ)
    written = tomllib.loads(file.read_text(encoding="utf-8")) if file else {}
    variables = {key.upper(): key for key in environ}
    sources: dict[str, str] = {}

    def walk(model: type[BaseModel], prefix: str, given: Mapping[str, Any]) -> None:
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            inner = field.annotation
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                walk(inner, f"{key}.", given.get(name) or {})
                continue
            variable = f"{ENV_PREFIX}{key.replace('.', '__')}".upper()
            if variable in variables:
                sources[key] = variables[variable]
            elif name in given:
                sources[key] = str(file)
            else:
                sources[key] = "default"

    walk(HearthConfig, "", written)
    return config, sources


def validate_config(data: Mapping[str, Any], source: str = "config") -> HearthConfig:
    """Validate a nested mapping into a :class:`HearthConfig`, raising :class:`ConfigError`."""
    try:
        return HearthConfig.model_validate(data)
    except ValidationError as exc:
        raise config_error_from(exc, source) from None


def config_error_from(exc: ValidationError, source: str = "config") -> ConfigError:
    """Turn pydantic's report into one readable ConfigError naming each bad field."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        value = err.get("input")
        lines.append(f"{where} = {value!r}: {err['msg']}")
    env_hint = "HEARTH_<SECTION>__<FIELD>"
    return ConfigError(
        f"invalid configuration ({source}): "
        + "; ".join(lines)
        + f". Fix the value in the TOML file, the {env_hint} variable, or the option."
    )


def _config_file(path: str | Path | None, environ: Mapping[str, str]) -> Path | None:
    if path is None and environ.get("HEARTH_CONFIG"):
        path = environ["HEARTH_CONFIG"]
    if path is not None:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}. Create it or drop --config.")
        return file
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


class _EnvironSource(EnvSettingsSource):
    """``HEARTH_<SECTION>__<FIELD>`` variables from a given mapping, not only ``os.environ``.

    ``none`` and ``null`` (any case) become None, so a variable can unset a value that the TOML
    file sets. A value for a list field is read as JSON.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {
            key.lower(): None if value.lower() in {"none", "null"} else value
            for key, value in environ.items()
        }

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            names = [k for k, v in self.env_vars.items() if v == value and k.endswith(field_name)]
            key = names[0].upper() if names else field_name
            raise ConfigError(f"{key} is not a JSON list: {value!r}") from None


class _HearthSettings(BaseSettings, HearthConfig):
    """:class:`HearthConfig` read from the layered sources, by pydantic-settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )


def _layered_settings(file: Path | None, environ: Mapping[str, str]) -> type[_HearthSettings]:
    """A settings class whose sources are, highest first: overrides, ``environ``, ``file``."""

    class _Layered(_HearthSettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            toml = (TomlConfigSettingsSource(settings_cls, toml_file=file),) if file else ()
            return (init_settings, _EnvironSource(settings_cls, environ), *toml)

    return _Layered


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            _deep_merge(nested, {key: _nest(value)})
            continue
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value
