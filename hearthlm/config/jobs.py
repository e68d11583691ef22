"""The configuration of training and evaluation runs: the ``[finetune]`` and ``[eval]`` sections
of ``hearth.toml``. Each default is written here once; the library's functions and the commands
read them, and a command's options are built from these fields.

Example:
    >>> FinetuneConfig().train.batch_size
    4
    >>> EvalConfig.model_validate({"tasks": {"gsm8k": {"shots": 2}}}).tasks["gsm8k"]
    {'shots': 2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from hearthlm.config.sections import StrictModel

# How a training file's rows are read.
Shape = Literal["auto", "prompt_completion", "messages", "alpaca", "fields"]


class TrainConfig(StrictModel):
    """How to train. Steps are optimizer steps (after gradient accumulation)."""

    epochs: float = Field(1.0, gt=0, description="Passes over the data.")
    max_steps: int | None = Field(None, ge=1, description="Overrides epochs when set.")
    batch_size: int = Field(4, ge=1, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate; None takes the method's own default (LoRA 2e-4, prompt "
        "tuning 3e-3, full 2e-5, …: MethodConfig.learning_rate), or 2e-4 elsewhere.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Warmup share of the steps.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after the warmup."
    )
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the gradients' norm to this; None: no clipping."
    )
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="bfloat16 autocast; auto uses it where the hardware runs it natively."
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each layer's activations in the backward pass: slower steps, a "
        "fraction of the activation memory (long sequences and big batches on small machines).",
    )
    eval_every: int = Field(50, ge=1, description="Validate every N optimizer steps.")
    early_stopping: int | None = Field(
        None, ge=1, description="Stop after this many validations without improvement."
    )
    save_every: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    measure_memory: bool = Field(
        False,
        description="Measure the training phase's memory peak by component (hooks on the saved "
        "tensors and the gradients, removed when training ends) and reset the process's "
        "resident-set peak when training starts (Linux), which the process cannot get back. "
        "Off, a run records only the process's peak so far, loading included.",
    )
    return_freed_memory: bool = Field(
        False,
        description="On glibc, map the forward pass's buffers on their own so that the system gets "
        "them back when the backward pass frees them: the same tensors, a lower resident peak "
        "(LoRA at batch 4 x 384: 2.8 GB instead of 4.2 GB). It fixes malloc's thresholds for "
        "the rest of the process: glibc cannot say what they were, so they are not restored.",
    )
    profile_memory: bool = Field(
        False,
        description="Run training under torch.profiler with profile_memory and write the memory "
        "timeline by category to memory_timeline.json (slow: for diagnosis, a few steps).",
    )
    fsdp: bool = Field(
        False,
        description="On several processes, shard the weights, gradients and optimizer state "
        "over them (FSDP2, each decoder layer) instead of a whole copy on each (DDP): for "
        "full and selective fine-tuning of a model one device cannot hold with its optimizer.",
    )
    seed: int = Field(0, description="Seed of the data order, the initialisation and dropout.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where to train; auto takes CUDA when present."
    )

    def with_default_learning_rate(self, rate: float) -> TrainConfig:
        """This config, with ``rate`` as its learning rate unless it sets one."""
        if self.learning_rate is not None:
            return self
        return self.model_copy(update={"learning_rate": rate})


class DataDefaults(StrictModel):
    """How every training file of a run is read (each ``--data`` file)."""

    shape: Shape = Field(
        "auto",
        description="The rows' shape: prompt_completion, messages, alpaca, fields (a "
        "template over them), or auto to tell from the first row.",
    )
    prompt_field: str = Field("prompt", description="Column of the prompt.")
    completion_field: str = Field("completion", description="Column of the answer.")
    template: str | None = Field(
        None, description="A prompt template over the row's fields, e.g. 'Summarize: {dialogue}'."
    )
    system: str | None = Field(None, description="A system message before every example.")


class PairTraining(StrictModel):
    """Training on preference pairs (the reward model, DPO): how each pair is read."""

    max_length: int = Field(384, ge=8, description="Tokens per reply with its prompt; cut past it.")
    validation: float = Field(0.1, ge=0, lt=1, description="Share of the pairs held out.")


class DPOSettings(PairTraining):
    """Direct preference optimisation."""

    beta: float = Field(
        0.1, gt=0, description="DPO's temperature: how far the policy may move from the reference."
    )


class PPOConfig(StrictModel):
    """PPO settings: iterations and prompts per iteration, the clipped-objective and value-loss
    settings, the adaptive KL penalty toward the reference model, sampling, and the seed."""

    iterations: int = Field(20, ge=1, description="Sample, score and update rounds.")
    prompts_per_iteration: int = Field(8, ge=1, description="Replies sampled per round.")
    minibatch_size: int = Field(4, ge=1, description="Replies per update minibatch.")
    ppo_epochs: int = Field(2, ge=1, description="Passes over a round's replies.")
    max_new_tokens: int = Field(32, ge=1, description="Reply length cap.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the replies.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate.")
    clip_range: float = Field(0.2, gt=0, description="PPO's ratio clip.")
    value_clip: float = Field(0.2, gt=0, description="Clip of the value head's change.")
    value_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    kl_coef: float = Field(0.05, ge=0, description="Initial β of the KL penalty.")
    target_kl: float = Field(4.0, gt=0, description="Target KL to the reference per reply.")
    kl_horizon: int = Field(
        100, ge=1, description="Replies over which β may change by a factor of about e^±0.2."
    )
    max_update_kl: float = Field(0.05, gt=0, description="KL bound of one iteration's update.")
    gamma: float = Field(1.0, gt=0, le=1, description="Discount per token.")
    lam: float = Field(0.95, gt=0, le=1, description="GAE's lambda.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the gradients' norm to this.")
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 autocast: auto uses it where the device supports it."
    )
    seed: int = Field(0, description="Seed of the sampling and the updates.")


class FinetuneConfig(StrictModel):
    """``hearth finetune``: how a run trains and reads its data, the settings of each method
    (``[finetune.methods.lora]`` ...), the reward model's, DPO's and PPO's."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataDefaults = Field(default_factory=DataDefaults)
    max_length: int = Field(512, ge=8, description="Tokens per example; longer ones are cut.")
    validation: float = Field(0.1, ge=0, lt=1, description="Share of the examples held out.")
    pack: bool = Field(False, description="Pack examples into full blocks of max_length.")
    mix_total: int | None = Field(
        None, ge=1, description="Examples in a mixture of several datasets; None: all of them."
    )
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Each training method's own settings by name, e.g. [finetune.methods.lora] "
        "rank = 16; checked against the method's config when it runs.",
    )
    reward: PairTraining = Field(default_factory=PairTraining)
    dpo: DPOSettings = Field(default_factory=DPOSettings)
    ppo: PPOConfig = Field(default_factory=PPOConfig)


class EvalConfig(StrictModel):
    """``hearth eval``: where runs go, how items are batched, and each task kind's defaults
    (``[eval.tasks.gsm8k]`` shots = 4 ...)."""

    runs: Path = Field(
        Path("eval-runs"), description="Folder that a run's own folder goes in unless --out."
    )
    batch_size: int = Field(
        8, ge=1, description="Items scored together by log-likelihood (scores do not move)."
    )
    strict: bool = Field(False, description="Stop at the first malformed row.")
    tasks: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Each task kind's field defaults by kind, e.g. [eval.tasks.gsm8k] shots = 4; "
        "checked against the kind's spec when a task is built.",
    )
