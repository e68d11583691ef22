"""Fine-tuning on the real packaged model: data shapes and masking, loss going down, adapters that
reload to the same greedy outputs, SIGKILL resume, reward model, PPO's KL bound, DPO, export."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from finetune_helpers import FACTS, write_jsonl
from typer.testing import CliRunner

from hearthlm.config import LLMConfig
from hearthlm.errors import ConfigError, TrainingError
from hearthlm.finetune import (
    BottleneckAdapterConfig,
    DataSpec,
    LoraConfig,
    PromptTuningConfig,
    TrainConfig,
    build_dataset,
    finetune,
)
from hearthlm.finetune.data import IGNORE, read_conversations, tokenize_chat


@pytest.fixture(scope="session")
def llm(hf_cache) -> LLMConfig:
    return LLMConfig(backend="transformers", cache_dir=hf_cache)


@pytest.fixture(scope="session")
def tokenizer(hf_chat):
    return hf_chat.engine.tokenizer


@pytest.fixture
def facts(tmp_path) -> Path:
    return write_jsonl(tmp_path / "facts.jsonl", [{"prompt": q, "completion": a} for q, a in FACTS])


# --- data -------------------------------------------------------------------------------------


def test_loss_mask_keeps_only_assistant_tokens(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello there."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]
    ids, labels = tokenize_chat(tokenizer, messages)
    assert len(ids) == len(labels)
    kept = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE]
    assert tokenizer.decode(kept) == "Hello there.<|im_end|>Goodbye.<|im_end|>"
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids) == rendered.rstrip("\n")
    assert labels[: ids.index(tokenizer.encode("Hello")[0])] == [IGNORE] * ids.index(
        tokenizer.encode("Hello")[0]
    )


@pytest.mark.parametrize("reply", ["    def f():\n        return 1", "\n\nHello", "  Hi"])
def test_a_reply_that_begins_with_spaces_is_learned_as_the_model_writes_it(tokenizer, reply):
    """Encoded whole, such a reply merges its first characters into the template's
    "assistant\n" token; it is learned as the tokens the model writes after the prompt."""
    messages = [{"role": "user", "content": "Write it."}, {"role": "assistant", "content": reply}]
    ids, labels = tokenize_chat(tokenizer, messages)
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[: len(prompt_ids)] == prompt_ids
    assert labels[: len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    assert labels[len(prompt_ids) :] == ids[len(prompt_ids) :]
    assert tokenizer.decode(ids[len(prompt_ids) :]) == reply + "<|im_end|>"


def test_the_four_shapes_read_the_same_conversation(tmp_path):
    rows = {
        "pc.jsonl": {"prompt": "Say hi", "completion": "Hi!"},
        "alpaca.json": None,
        "chat.jsonl": {
            "messages": [
                {"role": "user", "content": "Say hi"},
                {"role": "assistant", "content": "Hi!"},
            ]
        },
        "mapped.jsonl": {"verb": "Say", "what": "hi", "answer": "Hi!"},
    }
    (tmp_path / "alpaca.json").write_text(
        json.dumps([{"instruction": "Say hi", "input": "", "output": "Hi!"}])
    )
    for name, row in rows.items():
        if row is not None:
            write_jsonl(tmp_path / name, [row])
    specs = [
        DataSpec(path=tmp_path / "pc.jsonl"),
        DataSpec(path=tmp_path / "alpaca.json"),
        DataSpec(path=tmp_path / "chat.jsonl"),
        DataSpec(
            path=tmp_path / "mapped.jsonl", template="{verb} {what}", completion_field="answer"
        ),
    ]
    expected = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    for spec in specs:
        assert read_conversations(spec)[0][0] == expected, spec.path.name


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty\.jsonl: the file holds no examples"),
        (
            b'{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n',
            r"empty\.jsonl:2: missing field 'completion'",
        ),
        (b'{"prompt": "a", "completion": "b"}\n\xff\xfe\n', r"empty\.jsonl:2: not UTF-8"),
        (b'{"prompt": "a", "completion": "b"}\n{"prompt": \n', r"empty\.jsonl:2: not JSON"),
    ],
)
def test_bad_training_data_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(TrainingError, match=message):
        read_conversations(DataSpec(path=path))


def test_truncation_split_packing_and_mixing(tokenizer, tmp_path):
    long = write_jsonl(
        tmp_path / "long.jsonl", [{"prompt": "Repeat.", "completion": "word " * 400}]
    )
    short = write_jsonl(
        tmp_path / "short.jsonl",
        [{"prompt": f"Number {i}?", "completion": str(i)} for i in range(20)],
    )
    data = build_dataset(tokenizer, [DataSpec(path=long)], max_length=64, validation=0)
    assert data.truncated == 1 and len(data.train[0]) == 64

    data = build_dataset(tokenizer, [DataSpec(path=short)], max_length=64, validation=0.25)
    assert len(data.validation) == 5 and len(data.train) == 15
    train_ids = {tuple(e.input_ids) for e in data.train}
    assert not any(tuple(e.input_ids) in train_ids for e in data.validation)

    packed = build_dataset(
        tokenizer, [DataSpec(path=short)], max_length=256, validation=0, pack=True
    )
    assert len(packed.train) < 20 and all(len(e) <= 256 for e in packed.train)
    assert sum(len(e) for e in packed.train) == sum(
        len(e)
        for e in build_dataset(
            tokenizer, [DataSpec(path=short)], max_length=256, validation=0
        ).train
    )

    facts = write_jsonl(
        tmp_path / "facts.jsonl", [{"prompt": q, "completion": a} for q, a in FACTS]
    )
    mixed = build_dataset(
        tokenizer,
        [DataSpec(path=short, weight=3), DataSpec(path=facts, weight=1)],
        max_length=64,
        validation=0,
        total=40,
    )
    origins = [e.source.split(":")[0] for e in mixed.train]
    assert len(origins) == 40
    assert origins.count(str(short)) == 30 and origins.count(str(facts)) == 10


# --- training -----------------------------------------------------------------------------------


def lora_run(facts: Path, out: Path, llm: LLMConfig, steps: int = 8, **train):
    return finetune(
        [DataSpec(path=facts)],
        out,
        method=LoraConfig(rank=8, dropout=0.0),
        train=TrainConfig(
            max_steps=steps, batch_size=3, learning_rate=2e-3, eval_every=steps, bf16="off", **train
        ),
        llm=llm,
        validation=0,
        progress=False,
        log=lambda *a: None,
    )


def test_completion_only_logits_and_activation_checkpointing_keep_the_loss(
    facts, tmp_path, llm, tokenizer
):
    from hearthlm.finetune.trainer import Trainer

    plain = lora_run(facts, tmp_path / "plain", llm, steps=3)
    recomputed = lora_run(facts, tmp_path / "ckpt", llm, steps=3, activation_checkpointing=True)
    assert recomputed.model.get_base_model().is_activation_checkpointing
    assert [h["train_loss"] for h in recomputed.result.history] == pytest.approx(
        [h["train_loss"] for h in plain.result.history], rel=1e-4
    )

    # The trainer's loss (logits from the first completion position on) is transformers' own.
    examples = build_dataset(tokenizer, [DataSpec(path=facts)], max_length=128, validation=0).train
    trainer = Trainer(
        plain.model, examples, [], TrainConfig(bf16="off"), tmp_path / "t", pad_id=0, progress=False
    )
    batch = trainer._collate(examples[:4])
    total, count = trainer._loss(examples[:4])
    reference = plain.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    assert float(total.detach()) / count == pytest.approx(float(reference.detach()), rel=1e-5)


def test_a_few_steps_lower_the_loss_and_the_adapter_reloads_identically(facts, tmp_path, llm):
    from hearthlm.llm import ChatHearth

    run = lora_run(facts, tmp_path / "lora", llm)
    history = run.result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 0.7
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "lora" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "lora" / "metrics.jsonl").read_text().splitlines()) == 8
    summary = json.loads((tmp_path / "lora" / "hearth_finetune.json").read_text())
    assert 0 < summary["parameters"]["percent"] < 5
    # unasked, training does not measure (no hooks, no reset peak): it records the process's
    assert summary["memory"]["measured"] is False and summary["memory"]["process_peak_mb"] > 0

    question = [("human", FACTS[0][0])]
    # The model as trained, in memory, against the adapter saved to disk and loaded again.
    from hearthlm.llm.hf_backend import TransformersBackend
    from hearthlm.llm.sources import resolve_model

    merged = copy.deepcopy(run.model).merge_and_unload().eval()
    tokenizer = ChatHearth(backend="transformers", cache_dir=llm.cache_dir).engine.tokenizer
    in_memory = ChatHearth.from_backend(
        TransformersBackend(merged, tokenizer, resolve_model(None), "cpu"), max_new_tokens=12
    )
    loaded = ChatHearth(
        backend="transformers",
        adapter=tmp_path / "lora",
        cache_dir=llm.cache_dir,
        max_new_tokens=12,
    )
    again = ChatHearth(
        backend="transformers",
        adapter=tmp_path / "lora" / "adapter",
        cache_dir=llm.cache_dir,
        max_new_tokens=12,
    )
    first, second = loaded.invoke(question).content, again.invoke(question).content
    assert first == second == in_memory.invoke(question).content
    assert "yellow" in str(first).lower()  # it learned the fact it was trained on


def test_bottleneck_adapter_and_prompt_tuning_train_save_and_reload(facts, tmp_path, llm):
    from hearthlm.llm import ChatHearth

    methods = (
        (BottleneckAdapterConfig(), 2e-3),
        (PromptTuningConfig(virtual_tokens=8, init_text="Answer briefly."), 3e-2),
    )
    for method, lr in methods:
        out = tmp_path / method.method
        run = finetune(
            [DataSpec(path=facts)],
            out,
            method=method,
            train=TrainConfig(max_steps=4, batch_size=3, learning_rate=lr, bf16="off"),
            llm=llm,
            validation=0,
            progress=False,
            log=lambda *a: None,
        )
        assert run.result.history[-1]["train_loss"] < run.result.history[0]["train_loss"]
        chat = ChatHearth(
            backend="transformers", adapter=out, cache_dir=llm.cache_dir, max_new_tokens=8
        )
        a, b = chat.invoke([("human", "Hi")]).content, chat.invoke([("human", "Hi")]).content
        assert a == b and a


# A run killed and resumed in another process ends where an uninterrupted run ends, up to the
# rounding of matrix products, which need not be the same in two processes: MKL splits them
# by thread, and bf16 rounds coarsely. So the runs train in float32 on one thread
# (ONE_THREAD), as the distributed tests do, and the adapters may differ by a tenth of the
# learning rate: AdamW moves a weight by about the learning rate at each step (by exactly that at
# its first), so a step lost, repeated or taken with the wrong optimizer state, data or random
# generators shows far above it. (bf16 on two threads left them 8e-4 apart; float32 on two
# threads, 9e-6.)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from hearthlm.config import LLMConfig
from hearthlm.finetune import DataSpec, LoraConfig, TrainConfig, finetune
finetune([DataSpec(path=Path(sys.argv[1]))], Path(sys.argv[2]),
         method=LoraConfig(rank=4),
         train=TrainConfig(max_steps=6, batch_size=2, learning_rate=1e-3, save_every=2,
                           eval_every=3, bf16="off"),
         llm=LLMConfig(cache_dir=Path(sys.argv[3])), validation=0.2, progress=False)
"""


def test_sigkill_resumes_and_ends_where_an_uninterrupted_run_ends(facts, tmp_path, llm):
    from safetensors.torch import load_file

    def train(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, str(facts), str(out), str(llm.cache_dir)],
            env={**os.environ, **ONE_THREAD},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    assert train(tmp_path / "whole").wait(timeout=600) == 0
    victim = train(tmp_path / "killed")
    deadline = time.monotonic() + 600
    state = tmp_path / "killed" / "checkpoint" / "state.json"
    while not state.is_file():
        assert victim.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "adapter").exists()
    assert json.loads(state.read_text())["step"] in (2, 4)
    assert train(tmp_path / "killed").wait(timeout=600) == 0

    whole = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:  # a tenth of the learning rate, 1e-3 (see ONE_THREAD)
        assert (whole[key] - resumed[key]).abs().max() < 1e-4, key
    lines = [
        json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in lines] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_folder_holding_another_run(facts, tmp_path, llm):
    lora_run(facts, tmp_path / "run", llm, steps=1)
    with pytest.raises(TrainingError, match=r"different fine-tuning run.*Changed: .*max_steps"):
        lora_run(facts, tmp_path / "run", llm, steps=2)
    # the same path with other rows in it is another run, not one to resume on the new rows
    with facts.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "Capital of Peru?", "completion": "Lima."}) + "\n")
    with pytest.raises(TrainingError, match="Changed: contents"):
        lora_run(facts, tmp_path / "run", llm, steps=1)


def test_python_finetune_trains_at_the_methods_own_learning_rate(facts, tmp_path, llm):
    # No learning rate given: prompt tuning's 3e-3, as `hearth finetune prompt-tuning` uses.
    run = finetune(
        [DataSpec(path=facts)],
        tmp_path / "pt",
        method=PromptTuningConfig(virtual_tokens=2),
        train=TrainConfig(max_steps=1, batch_size=2, scheduler="constant", bf16="off"),
        llm=llm,
        validation=0,
        progress=False,
        log=lambda *a: None,
    )
    assert run.result.history[0]["learning_rate"] == pytest.approx(3e-3)
    summary = json.loads((tmp_path / "pt" / "hearth_finetune.json").read_text())
    assert summary["settings"]["train"]["learning_rate"] == 3e-3


# --- alignment ----------------------------------------------------------------------------------

POLITE = [
    "Of course, happy to help with that.",
    "Sure, here is a clear answer for you.",
    "Certainly, I can explain it step by step.",
]
RUDE = [
    "No. Figure it out yourself, idiot.",
    "That is a stupid question, go away.",
    "I refuse, you are annoying.",
]


@pytest.fixture(scope="module")
def reward_folder(tmp_path_factory, llm):
    """A reward model trained on polite-over-rude pairs: ``rm/`` and its ``pairs.jsonl``."""
    from hearthlm.finetune.reward import train_reward_model

    folder = tmp_path_factory.mktemp("reward")
    rows = []
    for i, question in enumerate(q for q, _ in FACTS):
        rows.append(
            {
                "chosen": f"\n\nHuman: {question}\n\nAssistant: {POLITE[i % 3]}",
                "rejected": f"\n\nHuman: {question}\n\nAssistant: {RUDE[i % 3]}",
            }
        )
    data = write_jsonl(folder / "pairs.jsonl", rows * 2)
    run = train_reward_model(
        data,
        folder / "rm",
        llm=llm,
        validation=0.25,
        progress=False,
        log=lambda *a: None,
        train=TrainConfig(
            max_steps=12, batch_size=4, learning_rate=5e-4, eval_every=12, bf16="off"
        ),
    )
    assert run.validation_accuracy == 1.0
    return folder


@pytest.fixture(scope="module")
def reward_model(reward_folder, llm):
    from hearthlm.finetune.reward import RewardModel

    return RewardModel.load(reward_folder / "rm", llm)


def test_a_reward_run_on_an_edited_data_file_is_refused(reward_folder, llm, tmp_path):
    """The trainer resumes the checkpoints it finds in its folder: rerun on edited pairs, it
    would have gone on training the old run on the new data."""
    from hearthlm.finetune.reward import train_reward_model

    lines = (reward_folder / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines[:8]) + "\n", encoding="utf-8")
    quick = TrainConfig(max_steps=1, batch_size=4, bf16="off")
    options = {"llm": llm, "validation": 0.25, "progress": False, "log": lambda *a: None}
    train_reward_model(data, tmp_path / "rm", train=quick, **options)
    data.write_text("\n".join(lines[:6]) + "\n", encoding="utf-8")
    with pytest.raises(TrainingError, match=r"different reward-model run.*Changed: contents"):
        train_reward_model(data, tmp_path / "rm", train=quick, **options)


def test_reward_model_prefers_chosen_after_training(reward_model):
    polite, rude = reward_model.score(
        [
            [
                {"role": "user", "content": "Can you help me?"},
                {"role": "assistant", "content": POLITE[0]},
            ],
            [
                {"role": "user", "content": "Can you help me?"},
                {"role": "assistant", "content": RUDE[0]},
            ],
        ]
    )
    assert polite > rude


def test_ppo_update_runs_and_stops_at_its_kl_bound(reward_model, llm):
    from hearthlm.finetune.ppo import PPOConfig, PPOTrainer

    prompts = [q for q, _ in FACTS[:4]]
    free = PPOTrainer(
        reward_model,
        PPOConfig(
            prompts_per_iteration=4,
            minibatch_size=2,
            ppo_epochs=2,
            max_new_tokens=8,
            max_update_kl=10.0,
        ),
        llm=llm,
    )
    stats = free.step(prompts)
    assert stats["epochs"] == 2 and not stats["stopped_at_kl_bound"]
    assert stats["kl_to_reference"] == pytest.approx(0.0, abs=1e-4)  # LoRA starts as the base

    def fast(bound: float) -> PPOTrainer:
        config = PPOConfig(
            prompts_per_iteration=4,
            minibatch_size=2,
            ppo_epochs=4,
            max_new_tokens=8,
            learning_rate=5e-3,
            max_update_kl=bound,
        )
        return PPOTrainer(reward_model, config, llm=llm)

    bounded, unbounded = fast(1e-6), fast(1e3)
    stats = bounded.step(prompts)
    assert stats["stopped_at_kl_bound"] and stats["epochs"] == 1
    assert stats["update_kl"] > 1e-6
    # Only the first minibatch stepped: the second found the policy past the bound and stopped.
    steps = {int(state["step"]) for state in bounded.optimizer.state.values()}
    assert steps == {1}
    assert unbounded.step(prompts)["epochs"] == 4
    # The same seed samples the same first replies; the bound then keeps the policy nearer the
    # reference than the same update run to the end.
    near, far = bounded.step(prompts), unbounded.step(prompts)
    assert near["kl_to_reference"] != 0.0
    assert abs(near["kl_to_reference"]) < abs(far["kl_to_reference"])


def test_interrupted_ppo_resumes_and_ends_like_an_uninterrupted_run(tmp_path, reward_model, llm):
    import torch

    from hearthlm.finetune.ppo import PPOConfig, PPOTrainer

    prompts = [q for q, _ in FACTS[:4]]
    config = PPOConfig(
        iterations=2, prompts_per_iteration=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=6
    )
    whole = PPOTrainer(reward_model, config, llm=llm).train(prompts, tmp_path / "whole", False)

    interrupted = PPOTrainer(reward_model, config, llm=llm)
    real_step, calls = interrupted.step, []

    def killed_in_second_iteration(batch):
        calls.append(batch)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_step(batch)

    interrupted.step = killed_in_second_iteration  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        interrupted.train(prompts, tmp_path / "resumed", False)
    assert (tmp_path / "resumed" / "checkpoint").is_dir()

    resumed = PPOTrainer(reward_model, config, llm=llm).train(prompts, tmp_path / "resumed", False)
    assert [h["reward"] for h in resumed.history] == [h["reward"] for h in whole.history]
    assert [h["kl_to_reference"] for h in resumed.history] == pytest.approx(
        [h["kl_to_reference"] for h in whole.history], abs=1e-6
    )
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    from safetensors.torch import load_file

    a = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    other = PPOConfig(**{**config.model_dump(), "max_new_tokens": 7})
    with pytest.raises(TrainingError, match=r"other settings.*Changed: config\.max_new_tokens"):
        PPOTrainer(reward_model, other, llm=llm).train(prompts, tmp_path / "resumed", False)
    edited = [prompt + " Answer briefly." for prompt in prompts]  # as many prompts, other words
    with pytest.raises(TrainingError, match="Changed: prompts"):
        PPOTrainer(reward_model, config, llm=llm).train(edited, tmp_path / "resumed", False)
    # another reward model in the same place: retrained, or edited
    import shutil

    from hearthlm.finetune.reward import RewardModel

    folder = tmp_path / "rm"
    shutil.copytree(reward_model.folder, folder)
    judge = RewardModel(reward_model.model, reward_model.tokenizer, reward_model.max_length, folder)
    once = PPOConfig(**{**config.model_dump(), "iterations": 1})
    PPOTrainer(judge, once, llm=llm).train(prompts, tmp_path / "judged", False)
    info = folder / "hearth_reward.json"
    info.write_text(info.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(TrainingError, match=rf"reward model.*Changed: contents\.{folder}"):
        PPOTrainer(judge, once, llm=llm).train(prompts, tmp_path / "judged", False)


def test_an_option_the_method_does_not_take_is_refused_not_dropped(facts, tmp_path):
    from hearthlm.cli import app

    out = tmp_path / "full"
    base = ["--data", str(facts), "--out", str(out)]
    result = CliRunner().invoke(app, ["finetune", "full", *base, "--rank", "4"])
    assert isinstance(result.exception, ConfigError)
    assert "--rank does not apply to 'hearth finetune full'" in str(result.exception)
    assert "lora" in str(result.exception).split("applies to:")[1]
    result = CliRunner().invoke(app, ["finetune", "lora", *base, "--virtual-tokens", "8"])
    assert isinstance(result.exception, ConfigError)
    assert "prompt-tuning" in str(result.exception)
    assert not out.exists()  # refused before anything was loaded or written


def test_ppo_prompts_come_from_a_prompt_file_or_from_preference_pairs(tmp_path):
    from hearthlm.finetune.ppo import prompts_from_pairs

    plain = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Say hi."}, {"prompt": " Why? "}])
    assert prompts_from_pairs(plain) == ["Say hi.", "Why?"]
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"chosen": "\n\nHuman: Hello?\n\nAssistant: Hi.", "rejected": "..."}],
    )
    assert prompts_from_pairs(pairs) == ["Hello?"]
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"question": "no prompt field"}])
    with pytest.raises(TrainingError, match=r"empty\.jsonl: no prompts found.*'prompt' field"):
        prompts_from_pairs(empty)


def test_cli_finetune_ppo_trains_against_a_reward_folder(reward_folder, tmp_path, llm, monkeypatch):
    from hearthlm.cli import app

    monkeypatch.setenv("HEARTH_LLM__CACHE_DIR", str(llm.cache_dir))
    out = tmp_path / "ppo"
    args = ["finetune", "ppo", "--reward", str(reward_folder / "rm")]
    args += ["--data", str(reward_folder / "pairs.jsonl"), "--out", str(out)]
    args += ["--iterations", "1", "--prompts-per-iteration", "2", "--max-new-tokens", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trainable parameters" in result.output and "KL to reference" in result.output
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "ppo.png").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    missing = CliRunner().invoke(app, [*args[:3], str(tmp_path), *args[4:]])
    assert isinstance(missing.exception, TrainingError)  # `hearth` prints it as one red line
    assert "not a reward model" in str(missing.exception)


def test_a_long_conversation_keeps_its_replies_for_dpo(tokenizer):
    """TRL cuts a pair that is too long from its end; the prompt's oldest turns go first, so
    the two replies the pair is about are still there to compare."""
    from hearthlm.finetune.dpo import latest_turns

    history = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"Tell me fact number {i} about the sea, in detail."},
            {"role": "assistant", "content": f"Fact {i}: the sea is deep and salty. " * 4},
        ]
    row = {
        "prompt": [{"role": "system", "content": "Be kind."}, *history,
                   {"role": "user", "content": "Thanks! Now, how do I fix my bike?"}],
        "chosen": [{"role": "assistant", "content": "Patch the tube, then pump it up."}],
        "rejected": [{"role": "assistant", "content": "Figure it out yourself."}],
    }  # fmt: skip
    fitted = latest_turns(tokenizer, row, max_length=128)
    assert fitted["prompt"][0] == row["prompt"][0] and fitted["prompt"][-1] == row["prompt"][-1]
    assert fitted["prompt"][1]["role"] == "user" and len(fitted["prompt"]) < len(row["prompt"])
    for reply in ("chosen", "rejected"):
        text = tokenizer.apply_chat_template(fitted["prompt"] + fitted[reply], tokenize=False)
        assert len(tokenizer.encode(text, add_special_tokens=False)) <= 128
    assert latest_turns(tokenizer, row, max_length=4096) == row  # it fits: left as it is


def test_dpo_through_trl_saves_an_adapter(tmp_path, llm):
    from hearthlm.finetune.dpo import train_dpo

    rows = [
        {
            "chosen": f"\n\nHuman: {q}\n\nAssistant: {POLITE[0]}",
            "rejected": f"\n\nHuman: {q}\n\nAssistant: {RUDE[0]}",
        }
        for q, _ in FACTS
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    run = train_dpo(
        data,
        tmp_path / "dpo",
        llm=llm,
        max_length=128,
        validation=0,
        train=TrainConfig(max_steps=2, batch_size=2, learning_rate=1e-4),
    )
    assert (tmp_path / "dpo" / "adapter" / "adapter_config.json").is_file()
    assert [h["loss"] for h in run.history if "loss" in h]
    # TRL resumes the checkpoints it finds: rerun on edited pairs, it would have gone on
    # training the old run on the new data
    write_jsonl(data, rows[:-1])
    with pytest.raises(TrainingError, match=r"different DPO run.*Changed: contents"):
        train_dpo(data, tmp_path / "dpo", llm=llm, max_length=128, validation=0,
                  train=TrainConfig(max_steps=2, batch_size=2, learning_rate=1e-4))  # fmt: skip


# In float32 on one thread, for the reason given above TRAIN_SCRIPT.
DPO_SCRIPT = """
import sys
from pathlib import Path
from hearthlm.config import LLMConfig
from hearthlm.finetune import TrainConfig
from hearthlm.finetune.dpo import train_dpo
train_dpo(Path(sys.argv[1]), Path(sys.argv[2]), llm=LLMConfig(cache_dir=Path(sys.argv[3])),
          max_length=128, validation=0,
          train=TrainConfig(max_steps=6, batch_size=2, learning_rate=1e-4, save_every=2,
                            bf16="off"))
"""


def test_dpo_sigkill_resumes_and_ends_where_an_uninterrupted_run_ends(tmp_path, llm):
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", _dpo_rows())

    def train(out: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", DPO_SCRIPT, str(data), str(out), str(llm.cache_dir)],
            env={**os.environ, **ONE_THREAD},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    assert train(tmp_path / "whole").wait(timeout=900) == 0
    assert sorted(p.name for p in (tmp_path / "whole" / "trl").glob("checkpoint-*")) == [
        "checkpoint-4",
        "checkpoint-6",
    ]  # a checkpoint every save_every steps, the last two kept
    import torch

    saved = tmp_path / "whole" / "trl" / "checkpoint-6" / "training_args.bin"
    args = torch.load(saved, weights_only=False)  # what TRL trained with
    assert args.bf16 is False  # the run's own setting reaches TRL
    assert (args.learning_rate, args.save_steps) == (1e-4, 2)
    victim = train(tmp_path / "killed")
    deadline = time.monotonic() + 900
    state = tmp_path / "killed" / "trl" / "checkpoint-2" / "trainer_state.json"
    while not state.is_file():
        assert victim.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "killed" / "adapter").exists()
    assert train(tmp_path / "killed").wait(timeout=900) == 0

    whole = load_file(str(tmp_path / "whole" / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    assert whole.keys() == resumed.keys()
    for key in whole:  # a tenth of the learning rate, 1e-4 (see ONE_THREAD)
        assert (whole[key] - resumed[key]).abs().max() < 1e-5, key
    metrics = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    lines = [json.loads(x) for x in metrics]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("train", "refused"),
    [
        (TrainConfig(early_stopping=2), "early_stopping = 2"),
        (TrainConfig(profile_memory=True), "profile_memory = True"),
        (TrainConfig(return_freed_memory=True), "return_freed_memory = True"),
        (TrainConfig(measure_memory=True), "measure_memory = True"),
    ],
)
def test_dpo_refuses_training_settings_it_cannot_honour(tmp_path, train, refused):
    from hearthlm.finetune.dpo import train_dpo

    data = write_jsonl(tmp_path / "pairs.jsonl", _dpo_rows())
    with pytest.raises(ConfigError, match="DPO cannot honour") as info:
        train_dpo(data, tmp_path / "dpo", train=train)
    assert refused in str(info.value)
    with pytest.raises(ConfigError, match="LoRA adapters, not 'prompt-tuning'"):
        train_dpo(data, tmp_path / "dpo", method=PromptTuningConfig())
    assert not (tmp_path / "dpo").exists()  # refused before anything was loaded or written


def test_dpo_refuses_a_folder_that_holds_another_run(tmp_path):
    from hearthlm.finetune.dpo import train_dpo
    from hearthlm.runs import claim_run

    data = write_jsonl(tmp_path / "pairs.jsonl", _dpo_rows())
    out = tmp_path / "dpo"
    claim_run(out, {"another": "run"}, TrainingError("unused"))
    with pytest.raises(TrainingError, match="holds a different DPO run"):
        train_dpo(data, out, beta=0.2)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]  # nothing of it was touched


def _dpo_rows() -> list[dict]:
    return [
        {
            "chosen": f"\n\nHuman: {q}\n\nAssistant: {POLITE[0]}",
            "rejected": f"\n\nHuman: {q}\n\nAssistant: {RUDE[0]}",
        }
        for q, _ in FACTS
    ]


# --- outputs ------------------------------------------------------------------------------------


def test_merge_and_gguf_export_agree_with_the_adapter(facts, tmp_path, llm):
    from hearthlm.finetune.export import agreement, export_gguf, merge
    from hearthlm.llm import ChatHearth

    lora_run(facts, tmp_path / "lora", llm, steps=6)
    merged = merge(tmp_path / "lora", tmp_path / "merged", llm)
    question = [("human", FACTS[0][0])]
    adapted = ChatHearth(
        backend="transformers",
        adapter=tmp_path / "lora",
        cache_dir=llm.cache_dir,
        max_new_tokens=12,
    )
    full = ChatHearth(backend="transformers", model=str(merged), max_new_tokens=12)
    assert adapted.invoke(question).content == full.invoke(question).content

    gguf = export_gguf(tmp_path / "lora", tmp_path / "lora.gguf", gguf_type="f16", llm=llm)
    report = agreement(gguf, tmp_path / "lora", prompts=[q for q, _ in FACTS[:3]], llm=llm)
    assert report["identical"] >= 2, report["rows"]


def test_cli_finetune_lora_prints_parameters_and_writes_outputs(facts, tmp_path, llm, monkeypatch):
    from hearthlm.cli import app

    monkeypatch.setenv("HEARTH_LLM__CACHE_DIR", str(llm.cache_dir))
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            "lora",
            "--data",
            str(facts),
            "--out",
            str(tmp_path / "out"),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--validation",
            "0.34",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trainable parameters" in result.output and "%" in result.output
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    bad = CliRunner().invoke(
        app,
        [
            "finetune",
            "lora",
            "--data",
            str(facts),
            "--out",
            str(tmp_path / "bad"),
            "--bf16",
            "maybe",
        ],
    )
    assert bad.exit_code != 0


def test_gsm8k_traces_teach_calls_not_observations(tmp_path, tokenizer):
    from hearthlm.finetune.traces import gsm8k_react_traces

    source = write_jsonl(
        tmp_path / "gsm8k.jsonl",
        [
            {
                "question": "Natalia sold 48 clips in April and half as many in May. How many?",
                "answer": "May: 48/2 = <<48/2=24>>24.\nTotal 48+24 = <<48+24=72>>72.\n#### 72",
            },
            {"question": "Broken annotations", "answer": "<<2+2=5>>5\n#### 5"},
            {"question": "A fraction", "answer": "<<14/6=7>>7\n#### 7"},  # 7/3, not 7
        ],
    )
    assert gsm8k_react_traces(source, tmp_path / "traces.jsonl") == 1  # 2+2 is not 5
    messages = read_conversations(DataSpec(path=tmp_path / "traces.jsonl"))[0][0]
    assert messages[0]["content"].startswith("You answer the user's question")
    assert messages[1]["content"].startswith("Question: Natalia")
    ids, labels = tokenize_chat(tokenizer, messages)
    learned = tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE])
    assert '"expression": "48/2"' in learned and '"answer": "72"' in learned
    assert "Observation" not in learned and "24\n" not in learned


def test_importing_hearthlm_leaves_the_processs_warning_filters_as_they_were():
    # A library embedded in someone's process must not change what it warns about: the one
    # PEFT warning hearthlm hides is hidden only around its PEFT calls (methods.quiet_peft).
    code = (
        "import warnings\n"
        "import langchain_core.language_models, peft, requests, transformers, trl\n"
        "import langsmith._internal._beta_decorator\n"
        "before = list(warnings.filters)\n"
        "import hearthlm.cli, hearthlm.finetune, hearthlm.finetune.dpo, hearthlm.finetune.ppo\n"
        "import hearthlm.finetune.reward, hearthlm.serve.app\n"
        "print([f for f in warnings.filters if f not in before])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
