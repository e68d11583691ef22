"""Training on several processes, for real: CPU processes started by ``--num-processes`` (torch's
launcher), joined over gloo, each on one thread. Two processes with a per-process batch of b
train as one process with a batch of 2b; a run killed with SIGKILL resumes; FSDP shards full
training; the reward model and DPO run under the same launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from finetune_helpers import FACTS as BASE_FACTS
from finetune_helpers import MORE_FACTS, write_jsonl
from safetensors.torch import load_file
from typer.testing import CliRunner

from hearthlm.errors import ConfigError
from hearthlm.finetune import DataSpec, LoraConfig, TrainConfig, finetune
from hearthlm.finetune.distributed import Cluster, refuse_several, sharding
from hearthlm.finetune.ppo import PPO_SINGLE_PROCESS

pytestmark = pytest.mark.slow

FACTS = [*BASE_FACTS, *MORE_FACTS]
# LoRA at its own learning rate, without dropout or bf16: the runs must agree to float32 noise
LORA = ["--max-steps", "6", "--bf16", "off", "--dropout", "0", "--validation", "0.2"]
LORA += ["--eval-every", "3", "--save-every", "2"]


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("facts")
    return write_jsonl(folder / "facts.jsonl", [{"prompt": q, "completion": a} for q, a in FACTS])


def hearth(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """``hearth ARGS`` in its own session (a SIGKILL to the group reaches every process)."""
    return subprocess.Popen(
        [sys.executable, "-m", "hearthlm.cli", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        start_new_session=True,
        **popen,
    )


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    process = hearth(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = process.communicate(timeout=900)
    return subprocess.CompletedProcess(process.args, process.returncode, out)


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def runs(facts, tmp_path_factory, hf_cache) -> dict[str, Path]:
    """The same LoRA run as 1 process with a batch of 2, and as 2 processes with a batch of 1
    each (memory measured)."""
    folder = tmp_path_factory.mktemp("runs")
    env = {"HEARTH_LLM__CACHE_DIR": str(hf_cache)}
    one = run("finetune", "lora", "--data", str(facts), "--out", str(folder / "one"),
              "--batch-size", "2", *LORA, env=env)  # fmt: skip
    assert one.returncode == 0, one.stdout
    two = run("finetune", "lora", "--data", str(facts), "--out", str(folder / "two"),
              "--batch-size", "1", "--num-processes", "2", "--measure-memory", *LORA,
              env=env)  # fmt: skip
    assert two.returncode == 0, two.stdout
    assert two.stdout.count("done: 6 steps") == 1  # one report, from rank 0
    return {"one": folder / "one", "two": folder / "two", "log": two.stdout}


def test_two_processes_train_as_one_process_with_the_global_batch(runs):
    one, two = metrics(runs["one"]), metrics(runs["two"])
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5, 6]  # one log, each step once
    for a, b in zip(one, two, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4, (a, b)
        assert a["tokens"] == b["tokens"] and a["input_tokens"] == b["input_tokens"]
        assert ("validation_loss" in a) == ("validation_loss" in b)
        if "validation_loss" in a:
            assert abs(a["validation_loss"] - b["validation_loss"]) < 1e-4, (a, b)
    single, double = adapter(runs["one"]), adapter(runs["two"])
    assert single.keys() == double.keys()
    moved = max(float(v.abs().max()) for k, v in single.items() if "lora_B" in k)
    assert moved > 5e-4  # the adapters trained (LoRA B starts at zero)
    for key in single:
        assert float((single[key] - double[key]).abs().max()) < 1e-4, key


def test_torchrun_and_accelerate_launch_run_the_same_command(runs, facts, tmp_path, hf_cache):
    """The command unchanged under either launcher: the same losses as --num-processes."""
    env = {"HEARTH_LLM__CACHE_DIR": str(hf_cache)}
    command = ["-m", "hearthlm.cli", "finetune", "lora", "--data", str(facts),
               "--batch-size", "1", *LORA, "--max-steps", "2"]  # fmt: skip
    bin_ = Path(sys.executable).parent
    accelerate = ["launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                  "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    launchers = {
        "torchrun": [str(bin_ / "torchrun"), "--standalone", "--nproc-per-node", "2"],
        "accelerate": [str(bin_ / "accelerate"), *accelerate],
    }
    losses = {}
    for name, launcher in launchers.items():
        out = tmp_path / name
        done = subprocess.run(
            [*launcher, *command, "--out", str(out)],
            env={**os.environ, "OMP_NUM_THREADS": "1", **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        losses[name] = [r["train_loss"] for r in metrics(out)]
    assert losses["torchrun"] == losses["accelerate"]
    # the first step comes before any update: the same as the 1-process run's
    assert abs(losses["torchrun"][0] - metrics(runs["one"])[0]["train_loss"]) < 1e-5


def test_only_rank_0_writes_and_the_output_is_complete(runs):
    folder = runs["two"]
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["adapter", "best", "checkpoint", "hearth_finetune.json", "loss.png",
                     "metrics.jsonl", "run.json"]  # fmt: skip
    assert (folder / "adapter" / "adapter_config.json").is_file()
    checkpoint = sorted(p.name for p in (folder / "checkpoint").iterdir())
    assert checkpoint == ["rank-0.pt", "rank-1.pt", "state.json", "state.pt"]
    summary = json.loads((folder / "hearth_finetune.json").read_text())
    assert summary["result"]["steps"] == 6
    assert summary["result"]["tokens"] == metrics(runs["one"])[-1]["tokens"]


def test_each_processs_memory_is_measured_and_estimated_within_15_percent(runs, facts, hf_cache):
    memory = json.loads((runs["two"] / "hearth_finetune.json").read_text())["memory"]
    peaks = [p["peak_mb"] for p in memory["per_process"]]
    assert len(peaks) == 2 and all(p > 500 for p in peaks)
    estimate = run("finetune", "lora", "--data", str(facts), "--out", "unused",
                   "--batch-size", "1", "--num-processes", "2", "--estimate-memory", *LORA,
                   env={"HEARTH_LLM__CACHE_DIR": str(hf_cache)})  # fmt: skip
    assert estimate.returncode == 0, estimate.stdout
    totals = [
        float(line.split()[-2].replace(",", ""))
        for line in estimate.stdout.splitlines()
        if line.strip().startswith("total")
    ]
    assert len(totals) == 2, estimate.stdout
    for measured, estimated in zip(peaks, totals, strict=True):
        assert abs(estimated - measured) / measured < 0.15, (peaks, totals)


def test_two_processes_killed_after_a_checkpoint_resume_to_the_same_adapter(
    runs, facts, tmp_path, hf_cache
):
    env = {"HEARTH_LLM__CACHE_DIR": str(hf_cache)}
    single = ["finetune", "lora", "--data", str(facts), "--out", str(tmp_path / "killed"),
              "--batch-size", "1", *LORA]  # fmt: skip
    args = [*single, "--num-processes", "2"]
    victim = hearth(*args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    deadline = time.monotonic() + 600
    while not state.is_file():
        assert victim.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)  # the launcher and both training processes
    victim.wait()
    assert json.loads(state.read_text())["step"] in (2, 4)
    assert not (tmp_path / "killed" / "adapter").exists()

    # another world size would change the data order: refused, with what to do
    other = run(*single, env=env)
    assert other.returncode == 1
    assert "written by 2 process(es)" in other.stdout and "--num-processes 2" in other.stdout

    resumed = run(*args, env=env)
    assert resumed.returncode == 0, resumed.stdout
    whole, again = adapter(runs["two"]), adapter(tmp_path / "killed")
    for key in whole:
        assert float((whole[key] - again[key]).abs().max()) < 1e-6, key
    assert [r["step"] for r in metrics(tmp_path / "killed")] == [1, 2, 3, 4, 5, 6]


def test_fsdp_shards_full_training_over_cpu_processes(facts, tmp_path, hf_cache):
    env = {"HEARTH_LLM__CACHE_DIR": str(hf_cache)}
    common = ["--data", str(facts), "--max-steps", "2", "--bf16", "off", "--validation", "0.2",
              "--eval-every", "1", "--trainable", r"layers\.29\."]  # fmt: skip
    one = run("finetune", "selective", *common, "--out", str(tmp_path / "one"),
              "--batch-size", "2", env=env)  # fmt: skip
    assert one.returncode == 0, one.stdout
    two = run("finetune", "selective", *common, "--out", str(tmp_path / "two"),
              "--batch-size", "1", "--num-processes", "2", "--fsdp", env=env)  # fmt: skip
    assert two.returncode == 0, two.stdout
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
        assert abs(a["validation_loss"] - b["validation_loss"]) < 1e-4
    # the saved model is whole (gathered from the shards) and the one one process trains
    single = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    sharded = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    assert single.keys() == sharded.keys()
    for key in single:
        assert single[key].shape == sharded[key].shape, key
        assert float((single[key] - sharded[key]).abs().max()) < 1e-4, key


def test_the_reward_model_and_dpo_train_on_two_processes(tmp_path, hf_cache):
    rows = [
        {
            "chosen": f"\n\nHuman: {q}\n\nAssistant: Happy to help! {a}",
            "rejected": f"\n\nHuman: {q}\n\nAssistant: Figure it out yourself.",
        }
        for q, a in FACTS[:8]
    ]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    env = {"HEARTH_LLM__CACHE_DIR": str(hf_cache)}
    reward = run("finetune", "reward", "--data", str(pairs), "--out", str(tmp_path / "rm"),
                 "--max-steps", "2", "--batch-size", "2", "--validation", "0.25",
                 "--num-processes", "2", env=env)  # fmt: skip
    assert reward.returncode == 0, reward.stdout
    summary = json.loads((tmp_path / "rm" / "hearth_reward.json").read_text())
    assert summary["steps"] == 2 and summary["validation_pairs"] == 2
    assert summary["validation_accuracy"] in (0.0, 0.5, 1.0)  # over both processes' shares
    dpo = run("finetune", "dpo", "--data", str(pairs), "--out", str(tmp_path / "dpo"),
              "--max-steps", "2", "--batch-size", "1", "--num-processes", "2", env=env)  # fmt: skip
    assert dpo.returncode == 0, dpo.stdout
    assert (tmp_path / "dpo" / "adapter" / "adapter_model.safetensors").is_file()
    assert [h["step"] for h in metrics(tmp_path / "dpo") if "loss" in h] == [1, 2]


# --- bad input ----------------------------------------------------------------------------------


def test_bad_launches_are_refused_with_what_to_do(facts, tmp_path, hf_cache, monkeypatch):
    from hearthlm.cli import app

    cli = CliRunner()
    zero = cli.invoke(app, ["finetune", "lora", "--data", str(facts), "--out",
                            str(tmp_path / "z"), "--num-processes", "0"])  # fmt: skip
    assert isinstance(zero.exception, ConfigError) and "1 or more" in str(zero.exception)

    # 10 rows, 2 held out: 8 split over 2 processes but not over 3
    odd = run("finetune", "lora", "--data", str(facts), "--out", str(tmp_path / "odd"),
              "--validation", "0.2", "--num-processes", "3", "--max-steps", "1",
              env={"HEARTH_LLM__CACHE_DIR": str(hf_cache)})  # fmt: skip
    assert odd.returncode == 1
    assert "8 training examples do not split evenly over 3 processes" in odd.stdout
    assert "training process" in odd.stdout and "failed" in odd.stdout
    assert not (tmp_path / "odd" / "metrics.jsonl").exists()

    # a launcher's variable left in the shell, without the launcher
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"WORLD_SIZE is set but RANK, LOCAL_RANK.*are not"):
        finetune([DataSpec(path=facts)], tmp_path / "stray", method=LoraConfig(),
                 train=TrainConfig(max_steps=1), progress=False)  # fmt: skip
    monkeypatch.delenv("WORLD_SIZE")
    assert Cluster.from_environment() == Cluster()


def test_ppo_refuses_to_run_as_one_of_several_processes():
    with pytest.raises(ConfigError, match=r"PPO runs as one process.*one of 2"):
        refuse_several("PPO", PPO_SINGLE_PROCESS, {"WORLD_SIZE": "2", "RANK": "1"})
    refuse_several("PPO", PPO_SINGLE_PROCESS, {"WORLD_SIZE": "1"})  # one process: runs


def test_fsdp_is_refused_where_it_does_not_apply():
    with pytest.raises(ConfigError, match="DeepSpeed"):
        sharding(False, {"ACCELERATE_USE_DEEPSPEED": "true"})
    assert sharding(False, {"ACCELERATE_USE_FSDP": "true"})  # accelerate config's choice
    assert not sharding(False, {})
    with pytest.raises(ConfigError, match="adapter is small enough"):
        finetune([DataSpec(path=Path("unused.jsonl"))], Path("unused"),
                 train=TrainConfig(fsdp=True), progress=False)  # fmt: skip
