"""Training methods: one config class each, found by name in a registry open to plugins."""

from __future__ import annotations

import re

import pytest
from conftest import install_distribution

from hearthlm.errors import ConfigError
from hearthlm.finetune import (
    LoraConfig,
    PromptTuningConfig,
    TrainConfig,
    method_config,
)
from hearthlm.finetune.methods import METHODS, count_parameters, method_class, prepare


def _tiny_llama():
    """A two-layer Llama with random weights: the packaged model's architecture, in miniature."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.mark.parametrize(
    ("name", "options", "trains"),
    [
        ("full", {}, lambda n: True),
        ("selective", {"trainable": [r"layers\.1\."]}, lambda n: "layers.1." in n),
        ("lora", {"rank": 4}, lambda n: "lora_" in n),
        ("ia3", {}, lambda n: "ia3_" in n),
        ("prompt-tuning", {"virtual_tokens": 4}, lambda n: "prompt_encoder" in n),
        ("adapters", {}, lambda n: re.search(r"\.(down|up)\.(weight|bias)$", n) is not None),
    ],
)
def test_each_built_in_method_trains_what_its_name_says(name, options, trains):
    """Every built-in method, by name, makes a model ready to train: the parameters it leaves
    trainable are exactly those its method adapts, and none of the others."""
    config = method_config(name, **options)
    assert config.method == name and type(config) is METHODS.get(name)
    model = prepare(_tiny_llama(), None, config)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and trainable == {n for n in params if trains(n)}
    share = count_parameters(model).percent
    assert share == 100.0 if name == "full" else share < 50.0
    if name == "lora":  # the rank given is the rank of every update
        assert {p.shape[0] for n, p in params.items() if "lora_A" in n} == {4}


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
    entry = "[hearthlm.methods]\nbias-only = bias_plugin:BiasOnlyConfig\n"
    install_distribution(tmp_path, monkeypatch, "bias-plugin", entry, PLUGIN)
    config = method_config("bias-only")
    assert type(config).__name__ == "BiasOnlyConfig" and config.learning_rate == 1e-3
    assert method_class("lora") is LoraConfig  # the built-ins are still there
