import json
from pathlib import Path

import pytest

from hearthlm.config import load_config
from hearthlm.errors import ConfigError, HearthError


def test_defaults_are_the_packaged_model_on_llamacpp_greedy():
    cfg = load_config(environ={})
    assert cfg.llm.backend == "llamacpp"
    assert cfg.llm.model is None
    assert cfg.sampling.temperature == 0.0


def test_layers_override_in_order(tmp_path: Path):
    file = tmp_path / "hearth.toml"
    file.write_text(
        '[llm]\nbackend = "transformers"\ndtype = "bfloat16"\n[sampling]\ntop_k = 5\n',
        encoding="utf-8",
    )
    env = {"HEARTH_SAMPLING__TOP_K": "7", "HEARTH_LLM__DTYPE": "float32"}
    cfg = load_config(file, overrides={"sampling.top_k": 9, "llm.model": None}, environ=env)
    assert cfg.llm.backend == "transformers"  # from the file
    assert cfg.llm.dtype == "float32"  # the environment beats the file
    assert cfg.sampling.top_k == 9  # an explicit override beats the environment
    cfg = load_config(file, environ={"HEARTH_CONFIG": "ignored-when-path-given"})
    assert cfg.sampling.top_k == 5


def test_hearth_config_variable_names_the_file(tmp_path: Path):
    file = tmp_path / "custom.toml"
    file.write_text("[sampling]\nmax_new_tokens = 33\n", encoding="utf-8")
    assert load_config(environ={"HEARTH_CONFIG": str(file)}).sampling.max_new_tokens == 33


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("sampling.temperature", -0.1, "sampling.temperature"),
        ("sampling.top_p", 0.0, "sampling.top_p"),
        ("sampling.top_p", 1.5, "sampling.top_p"),
        ("sampling.max_new_tokens", 0, "sampling.max_new_tokens"),
        ("llm.dtype", "float8", "llm.dtype"),
    ],
)
def test_invalid_values_are_config_errors_naming_field_and_value(key, value, field):
    with pytest.raises(ConfigError) as info:
        load_config(overrides={key: value}, environ={})
    assert field in str(info.value)
    assert repr(value) in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, HearthError)


def test_unknown_keys_are_rejected(tmp_path: Path):
    file = tmp_path / "hearth.toml"
    file.write_text("[llm]\nbackedn = 'llamacpp'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="backedn"):
        load_config(file, environ={})


def test_broken_toml_and_missing_file_are_reported(tmp_path: Path):
    file = tmp_path / "hearth.toml"
    file.write_text("[llm\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(file, environ={})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", environ={})


def test_environment_none_unsets_a_value_the_toml_file_sets(tmp_path: Path):
    file = tmp_path / "hearth.toml"
    file.write_text(
        '[llm]\nmodel = "big.gguf"\nadapter = "adapters/run1"\ncontext_size = 256\n',
        encoding="utf-8",
    )
    assert load_config(file, environ={}).llm.model == "big.gguf"
    env = {"HEARTH_LLM__MODEL": "none", "HEARTH_LLM__ADAPTER": "NULL"}
    cfg = load_config(file, environ=env)
    assert cfg.llm.model is None  # back to the packaged model
    assert cfg.llm.adapter is None
    assert cfg.llm.context_size == 256  # the rest of the file's section still applies
    # An override left unset (None) still does not mask the lower layers.
    assert load_config(file, overrides={"llm.model": None}, environ={}).llm.model == "big.gguf"


def test_environment_none_on_a_required_field_is_a_config_error():
    with pytest.raises(ConfigError, match=r"llm\.backend = None"):
        load_config(environ={"HEARTH_LLM__BACKEND": "none"})


def test_environment_lists_are_json_and_bad_json_names_the_variable():
    env = {"HEARTH_RETRIEVAL__INCLUDE": '["*.md", "*.txt"]'}
    assert load_config(environ=env).retrieval.include == ["*.md", "*.txt"]
    with pytest.raises(ConfigError, match="HEARTH_RETRIEVAL__INCLUDE is not a JSON list"):
        load_config(environ={"HEARTH_RETRIEVAL__INCLUDE": "[*.md"})


def test_invalid_environment_value_names_field_value_and_fix():
    with pytest.raises(ConfigError) as info:
        load_config(environ={"HEARTH_SAMPLING__TOP_K": "many"})
    message = str(info.value)
    assert "sampling.top_k = 'many'" in message
    assert "HEARTH_<SECTION>__<FIELD>" in message


def test_config_show_names_where_each_value_came_from(tmp_path: Path):
    from typer.testing import CliRunner

    from hearthlm.cli import app
    from hearthlm.config import config_sources

    toml = tmp_path / "hearth.toml"
    toml.write_text(
        "[llm]\nthreads = 3\n[[serve.api_keys]]\nkey = 'a-long-secret-key'\n", encoding="utf-8"
    )
    environ = {"HEARTH_SAMPLING__TEMPERATURE": "0.5"}
    cfg, sources = config_sources(toml, environ=environ)
    assert cfg.llm.threads == 3 and sources["llm.threads"] == str(toml)
    assert cfg.sampling.temperature == 0.5
    assert sources["sampling.temperature"] == "HEARTH_SAMPLING__TEMPERATURE"
    assert sources["retrieval.k"] == sources["llm.backend"] == "default"
    shown = CliRunner().invoke(app, ["config", "show", "-c", str(toml), "--json"], env=environ)
    assert shown.exit_code == 0, shown.output
    printed = json.loads(shown.output)
    assert printed["sampling.temperature"] == {
        "value": 0.5,
        "source": "HEARTH_SAMPLING__TEMPERATURE",
    }
    assert "a-long-secret-key" not in shown.output  # secrets are masked
    assert printed["serve.api_keys"]["source"] == str(toml)


def test_two_keys_may_share_neither_a_name_nor_a_secret():
    """A key's name owns its chat sessions: two keys of one name would read each other's."""
    keys = [{"key": "first-secret-1", "name": "team"}, {"key": "second-secret", "name": "team"}]
    with pytest.raises(ConfigError, match=r"the name\(s\) \['team'\]"):
        load_config(environ={}, overrides={"serve": {"api_keys": keys}})
    unnamed = [{"key": "first-secret-1"}, {"key": "second-secret", "name": "key-1"}]
    with pytest.raises(ConfigError, match="key-1"):
        load_config(environ={}, overrides={"serve": {"api_keys": unnamed}})
    same = [{"key": "first-secret-1", "name": "a"}, {"key": "first-secret-1", "name": "b"}]
    with pytest.raises(ConfigError, match="same secret"):
        load_config(environ={}, overrides={"serve": {"api_keys": same}})
