"""Training methods: one config class each, found by name in a registry open to plugins."""

from __future__ import annotations

import pytest

from hearthlm.errors import ConfigError
from hearthlm.finetune import (
    BottleneckAdapterConfig,
    FullConfig,
    IA3Config,
    LoraConfig,
    PromptTuningConfig,
    SelectiveConfig,
    TrainConfig,
    available_methods,
    method_config,
)
from hearthlm.finetune.methods import method_class


def test_each_builtin_method_has_its_own_config_and_learning_rate():
    expected = {
        "lora": (LoraConfig, 2e-4),
        "prompt-tuning": (PromptTuningConfig, 3e-3),
        "full": (FullConfig, 2e-5),
        "selective": (SelectiveConfig, 5e-5),
        "adapters": (BottleneckAdapterConfig, 5e-4),
        "ia3": (IA3Config, 1e-3),
    }
    for name, (cls, rate) in expected.items():
        assert available_methods()[name] is cls
        config = method_config(name)
        assert type(config) is cls and config.method == name
        assert config.learning_rate == rate
    assert method_config("lora", rank=4).rank == 4
    assert FullConfig.output == SelectiveConfig.output == "model"
    assert LoraConfig.output == "adapter"


def test_a_train_config_without_a_learning_rate_takes_the_methods_own():
    assert TrainConfig().learning_rate is None
    resolved = TrainConfig().with_default_learning_rate(PromptTuningConfig.learning_rate)
    assert resolved.learning_rate == 3e-3
    explicit = TrainConfig(learning_rate=1e-5)
    assert explicit.with_default_learning_rate(3e-3).learning_rate == 1e-5


def test_unknown_methods_and_foreign_fields_are_config_errors():
    with pytest.raises(ConfigError, match="unknown training method 'qlora'") as info:
        method_config("qlora")
    assert "adapters, full, ia3, lora, prompt-tuning, selective" in str(info.value)
    with pytest.raises(ConfigError, match="rank") as info:
        method_config("prompt-tuning", rank=4)  # a LoRA option on prompt tuning
    assert "method 'prompt-tuning'" in str(info.value)
    with pytest.raises(ConfigError, match="virtual_tokens = 0"):
        method_config("prompt-tuning", virtual_tokens=0)


PLUGIN = '''
from typing import Any, ClassVar, Literal

from hearthlm.finetune.methods import MethodConfig


class BiasOnlyConfig(MethodConfig):
    """Bias-only: train only the bias terms."""

    method: Literal["bias-only"] = "bias-only"
    learning_rate: ClassVar[float] = 1e-3

    def prepare(self, model: Any, tokenizer: Any) -> Any:
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith("bias"))
        return model
'''


def test_plugin_methods_register_through_entry_points(tmp_path, monkeypatch):
    """A real distribution on sys.path declaring a hearthlm.methods entry point."""
    (tmp_path / "bias_plugin.py").write_text(PLUGIN, encoding="utf-8")
    dist = tmp_path / "bias_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Name: bias-plugin\nVersion: 1.0\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        "[hearthlm.methods]\nbias-only = bias_plugin:BiasOnlyConfig\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # the registry finds plugins again
    config = method_config("bias-only")
    assert type(config).__name__ == "BiasOnlyConfig" and config.learning_rate == 1e-3
    assert method_class("lora") is LoraConfig  # the built-ins are still there
