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
