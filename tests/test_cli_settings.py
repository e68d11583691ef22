"""Command options built from the configuration's models: every setting reachable from the
command line and from hearth.toml, layered the same way, and refused where it does not apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hearthlm.cli_settings import settings
from hearthlm.config import DataDefaults, EvalConfig, PPOConfig, TrainConfig
from hearthlm.errors import ConfigError

HEARTH = str(Path(sys.executable).with_name("hearth"))


@pytest.fixture()
def captured(monkeypatch) -> dict[str, Any]:
    """What the training and evaluation functions were called with, instead of running them:
    these tests are about how the command line reaches them."""
    import hearthlm.eval.cli as eval_cli
    import hearthlm.finetune.cli as finetune_cli

    calls: dict[str, Any] = {}

    def finetune(specs: Any, out: Path, **options: Any) -> Any:
        calls["finetune"] = {"specs": specs, "out": out, **options}
        raise SystemExit(0)

    def run(suite: str, tasks: list[Any], out: Path | None, cfg: Any) -> None:
        calls["eval"] = {"suite": suite, "specs": [t.spec for t in tasks], "cfg": cfg}

    monkeypatch.setattr(finetune_cli, "finetune", finetune)
    monkeypatch.setattr(eval_cli, "_run", run)
    return calls


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    from hearthlm.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def test_a_setting_comes_from_the_option_the_variable_the_file_or_its_default(
    captured, tmp_path, monkeypatch
):
    data = tmp_path / "train.jsonl"
    data.write_text('{"q": "Hi?", "completion": "Hello."}\n', encoding="utf-8")
    toml = tmp_path / "hearth.toml"
    toml.write_text(
        "[finetune.train]\nbatch_size = 2\nseed = 1\n"
        '[finetune.data]\nprompt_field = "q"\n'
        "[finetune.methods.lora]\nalpha = 32\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("HEARTH_FINETUNE__TRAIN__EPOCHS", "3")
    result = invoke(
        "finetune", "lora", "--data", str(data), "--out", str(tmp_path / "out"),
        "-c", str(toml), "--seed", "7", "--rank", "16", "--target-modules", "q_proj,v_proj",
        "--set", "finetune.train.weight_decay=0.01", "--lr", "1e-4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    call = captured["finetune"]
    train, method = call["train"], call["method"]
    assert (train.batch_size, train.epochs, train.seed) == (2, 3.0, 7)  # file, variable, option
    assert train.weight_decay == 0.01 and train.learning_rate == 1e-4
    assert train.warmup_ratio == TrainConfig().warmup_ratio  # the library's default
    assert (method.rank, method.alpha, method.target_modules) == (16, 32, ["q_proj", "v_proj"])
    assert call["specs"][0].prompt_field == "q" and call["max_length"] == 512


def test_an_option_of_another_method_is_refused_and_a_bad_value_names_its_setting(tmp_path):
    result = invoke("finetune", "full", "--data", "x.jsonl", "--out", "o", "--alpha", "4")
    assert isinstance(result.exception, ConfigError)
    assert "--alpha does not apply to 'hearth finetune full'; it applies to: lora" in str(
        result.exception
    )
    result = invoke("finetune", "lora", "--data", "x.jsonl", "--out", "o", "--batch-size", "0")
    assert isinstance(result.exception, ConfigError)
    assert "finetune.train.batch_size = 0" in str(result.exception)
    result = invoke("finetune", "lora", "--data", "x", "--out", "o", "--set", "finetune.nope=1")
    assert isinstance(result.exception, ConfigError) and "finetune.nope" in str(result.exception)
    with pytest.raises(ConfigError, match=r"section\.field=value"):
        settings(["seed"])
    assert settings(["a.b=[1, 2]", "a.c=text", "a.d=true"]) == {
        "a.b": [1, 2], "a.c": "text", "a.d": True,
    }  # fmt: skip


def test_every_training_and_evaluation_setting_has_an_option(monkeypatch):
    """No setting is left to the file alone: each field of the models is an option of the
    commands that read it (a table, like [finetune.methods], is a file or --set setting)."""
    from hearthlm.cli import app
    from hearthlm.eval.tasks.spec import spec_classes

    def flags(*command: str) -> set[str]:
        found = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300"}).output
        words = found.replace(",", " ").split()
        return {word.strip("│") for word in words if word.startswith("--")}

    lora = flags("finetune", "lora")
    for model in (TrainConfig, DataDefaults):
        assert {"--" + f.replace("_", "-") for f in model.model_fields} <= lora, model
    assert {"--rank", "--alpha", "--virtual-tokens", "--bottleneck", "--set"} <= lora
    ppo = flags("finetune", "ppo")
    assert {"--" + f.replace("_", "-") for f in PPOConfig.model_fields} <= ppo
    assert {"--beta", "--max-length", "--validation"} <= flags("finetune", "dpo")
    for kind, spec in spec_classes().items():
        if kind == "multiple_choice":
            continue  # hearth eval mmlu builds them from an MMLU folder
        wanted = {"--" + f.replace("_", "-") for f in spec.model_fields if f != "kind"}
        wanted |= {"--batch-size", "--strict", "--task", "--set"}
        assert wanted <= flags("eval", kind), kind
    assert EvalConfig.model_fields.keys() >= {"batch_size", "strict"}


def test_a_task_file_and_the_options_beside_it_are_merged_options_first(captured, tmp_path):
    (tmp_path / "test.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    task = tmp_path / "gsm.yaml"
    task.write_text("name: gsm\nkind: gsm8k\ndata: test.jsonl\nmethod: direct\nshots: 3\n")
    toml = tmp_path / "hearth.toml"
    toml.write_text("[eval]\nbatch_size = 2\n[eval.tasks.gsm8k]\nmax_new_tokens = 64\n")
    result = invoke("eval", "gsm8k", "--task", str(task), "--shots", "2", "-c", str(toml))
    assert result.exit_code == 0, result.output
    (spec,) = captured["eval"]["specs"]
    assert (spec.method, spec.shots, spec.max_new_tokens) == ("direct", 2, 64)
    assert (
        captured["eval"]["suite"] == "gsm8k-direct" and captured["eval"]["cfg"].eval.batch_size == 2
    )
    result = invoke(
        "eval", "generate", "--preset", "dialogsum", "--data", str(tmp_path / "d.jsonl")
    )
    (spec,) = captured["eval"]["specs"]
    assert (spec.reference, spec.metrics, spec.max_new_tokens) == ("summary", ["rouge"], 96)
    refused = invoke("eval", "generate", "--task", str(task))
    assert "is a 'gsm8k' task; this command runs 'generate' tasks" in str(refused.exception)


def test_a_plugin_method_s_own_setting_is_an_option_of_its_command(tmp_path):
    """A training method from another distribution gets its fields as options, as the
    built-ins do, and another method's command refuses them naming it."""
    module = (
        "from pydantic import Field\n"
        "from hearthlm.finetune.methods import LoraConfig\n"
        "class DeepConfig(LoraConfig):\n"
        "    '''LoRA on the last layers only.'''\n"
        "    method: str = 'deep'\n"
        "    depth: int = Field(2, ge=1, description='Layers from the top that train.')\n"
    )
    (tmp_path / "deep_lora.py").write_text(module, encoding="utf-8")
    info = tmp_path / "deep_lora-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Name: deep-lora\nVersion: 1.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[hearthlm.methods]\ndeep = deep_lora:DeepConfig\n")
    env = {"PYTHONPATH": str(tmp_path), "COLUMNS": "200", "HF_HUB_OFFLINE": "1", "PATH": ""}

    def hearth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([HEARTH, *args], capture_output=True, text=True, env=env, timeout=120)

    shown = hearth("finetune", "deep", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "--depth" in shown.stdout and "Applies to: deep" in shown.stdout
    bad = hearth("finetune", "deep", "--data", "x.jsonl", "--out", "o", "--depth", "0")
    assert bad.returncode == 1 and "depth = 0" in bad.stderr  # the method's own check
    refused = hearth("finetune", "lora", "--data", "x.jsonl", "--out", "o", "--depth", "3")
    assert refused.returncode == 1 and "--depth does not apply" in refused.stderr
    assert "it applies to: deep" in refused.stderr
