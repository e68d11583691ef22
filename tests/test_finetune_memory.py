"""Fine-tuning memory on the real packaged model: the measured peak by component, the estimate
before training, the profiler's timeline, and LoRA's lean forward (fewer saved activations, the
same numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hearthlm.config import LLMConfig
from hearthlm.finetune import DataSpec, LoraConfig, TrainConfig, finetune, method_config

SENTENCES = [
    "The ferry leaves the north pier at seven and returns before noon.",
    "Tickets are sold at the kiosk beside the harbour office.",
    "On windy days the crossing is cancelled and the fare is refunded.",
    "Children under five travel free when they sit on a parent's lap.",
]


@pytest.fixture(scope="module")
def llm(hf_cache) -> LLMConfig:
    return LLMConfig(backend="transformers", cache_dir=hf_cache)


@pytest.fixture
def notices(tmp_path) -> Path:
    """Eight examples of about 250 tokens: long enough that activations weigh in the peak."""
    rows = []
    for i in range(8):
        text = " ".join(SENTENCES[(i + j) % 4] for j in range(16))
        rows.append({"prompt": f"Summarize notice {i}:\n{text}", "completion": SENTENCES[i % 4]})
    path = tmp_path / "notices.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train(data: Path, out: Path, llm: LLMConfig, method: str, **options) -> object:
    return finetune(
        [DataSpec(path=data)],
        out,
        method=method_config(method),
        train=TrainConfig(
            max_steps=2,
            batch_size=4,
            bf16="off",
            eval_every=100,
            save_every=100,
            measure_memory=True,
            return_freed_memory=True,
            **options,
        ),
        llm=llm,
        validation=0,
        max_length=320,
        progress=False,
        log=lambda *a: None,
        estimate_memory=True,
    )


CHILD = """
import sys
from pathlib import Path
from hearthlm.config import LLMConfig
from tests.test_finetune_memory import train
train(Path(sys.argv[1]), Path(sys.argv[2]), LLMConfig(backend="transformers",
      cache_dir=Path(sys.argv[3])), sys.argv[4])
"""


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_components_add_up_to_the_measured_peak_and_the_estimate_is_close(
    notices, tmp_path, llm, method
):
    # A process of its own, as the benchmark and `hearth finetune` run: what an earlier run in
    # the same process left behind would blur its resident set.
    out = tmp_path / method
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-c", CHILD, str(notices), str(out), str(llm.cache_dir), method],
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    memory = json.loads((out / "hearth_finetune.json").read_text())["memory"]
    parts = memory["by_component_mb"]
    # What the hooks counted, plus what was resident outside the weights when training began.
    counted = sum(parts[k] for k in ("weights", "gradients", "optimizer", "activations", "logits"))
    assert counted + memory["other_at_start_mb"] == pytest.approx(memory["peak_mb"], rel=0.10)
    assert parts["activations"] > 100  # long enough examples for activations to matter
    if method == "full":
        assert parts["optimizer"] == pytest.approx(2 * parts["weights"], rel=0.01)  # AdamW
    assert memory["estimate_mb"]["total"] == pytest.approx(memory["peak_mb"], rel=0.15)


@pytest.mark.slow
def test_the_profiler_leaves_the_loss_unchanged_and_writes_its_timeline(notices, tmp_path, llm):
    plain = train(notices, tmp_path / "plain", llm, "lora")
    profiled = train(notices, tmp_path / "profiled", llm, "lora", profile_memory=True)
    assert [h["train_loss"] for h in profiled.result.history] == [
        h["train_loss"] for h in plain.result.history
    ]
    timeline = json.loads((tmp_path / "profiled" / "memory_timeline.json").read_text())
    peak = timeline["peak_by_category_mb"]
    assert peak["parameter"] > 400 and peak["activation"] > 0
    assert not (tmp_path / "plain" / "memory_timeline.json").exists()


def test_estimate_memory_prints_components_and_exits_without_training(
    notices, tmp_path, llm, monkeypatch
):
    from hearthlm.cli import app

    monkeypatch.setenv("HEARTH_LLM__CACHE_DIR", str(llm.cache_dir))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["finetune", "full", "--data", str(notices), "--out", str(out), "--estimate-memory"],
    )
    assert result.exit_code == 0, result.output
    for name in ("weights", "gradients", "optimizer", "activations", "logits", "other", "total"):
        assert name in result.output
    assert not out.exists()  # nothing trained, nothing written


def test_lean_lora_keeps_fewer_activations_and_the_same_numbers(llm):
    import torch
    from peft import get_peft_model

    from hearthlm.finetune.memory import MemoryMeter
    from hearthlm.finetune.methods import lora_config, prepare
    from hearthlm.finetune.run import load_base

    _, tokenizer, _ = load_base(llm)
    ids = torch.tensor([tokenizer.encode(" ".join(SENTENCES * 3))] * 2)
    config = LoraConfig(dropout=0.05)
    results = []
    for lean in (False, True):
        model, _, _ = load_base(llm)
        torch.manual_seed(0)
        model = (
            prepare(model, tokenizer, config)
            if lean
            else get_peft_model(model, lora_config(config))
        )
        model.train()
        meter = MemoryMeter(model, torch.optim.AdamW(model.parameters()), tokenizer.vocab_size)
        torch.manual_seed(1)  # the same dropout masks
        with meter.saving():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        results.append((float(loss.detach()), grads, meter.peak.activations))
    (plain_loss, plain_grads, plain_saved), (lean_loss, lean_grads, lean_saved) = results
    assert lean_loss == plain_loss
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, lean_grads, strict=True))
    assert lean_saved < 0.6 * plain_saved
