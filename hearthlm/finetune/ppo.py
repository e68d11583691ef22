"""A compact PPO for the local model: LoRA policy with a value head, the frozen base as reference
(the same weights with the adapter switched off), rewards from a trained reward model.

Each iteration samples replies to a batch of prompts, scores them with the reward model, and takes
the per-token KL to the reference as a penalty (``reward_t = -β·KL_t``, plus the reward-model score
on the last token). Advantages come from GAE over the reply tokens. The update is the clipped
surrogate objective with a clipped value loss. Each minibatch first measures how far the policy
has moved from the one that sampled; past ``max_update_kl`` (the KL bound of the update) the
iteration takes no further step, as in Spinning Up's PPO. β adapts so the KL to the reference
tracks ``target_kl`` (Ziegler et al., 2019).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hearthlm.config import LLMConfig, PPOConfig
from hearthlm.errors import TrainingError
from hearthlm.files import atomic_file, atomic_folder
from hearthlm.finetune.checkpoints import (
    load_trainable,
    read_checkpoint,
    resume_history,
    trainable_state,
    write_checkpoint,
)
from hearthlm.finetune.distributed import refuse_several
from hearthlm.finetune.methods import LoraConfig, MethodConfig, count_parameters, prepare
from hearthlm.finetune.pairs import transcript_messages
from hearthlm.finetune.reward import RewardModel
from hearthlm.finetune.run import load_base
from hearthlm.finetune.trainer import use_bf16
from hearthlm.plots import saved_figure
from hearthlm.progress import progress_bar
from hearthlm.rows import BadRows, read_rows
from hearthlm.runs import append_jsonl, claim_run, fingerprint, run_identity

# Why PPO is not data-parallel here: an iteration is one batch of sampled replies, and what it
# does with them (advantages whitened over the batch, the KL coefficient adapted to the batch's
# KL, the update stopped once the KL passes its bound) are decisions over the whole batch.
PPO_SINGLE_PROCESS = (
    "an iteration is one batch of sampled replies whose advantage whitening, adaptive KL "
    "coefficient and KL bound are decisions over the whole batch"
)


@dataclass
class Rollout:
    """One sampled reply and what PPO computes for it: the reward-model score, the log-probs of
    the policy and the reference, the values, advantages and returns (tensors over reply tokens)."""

    prompt: list[int]
    reply: list[int]
    score: float
    logprobs: torch.Tensor | None = None  # policy at sampling time, per reply token
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None


@dataclass
class PPOResult:
    """A finished PPO run: one metrics record per iteration and the output folder."""

    history: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = None


class PPOTrainer:
    """PPO with LoRA on the local model. ``step(prompts)`` runs one iteration."""

    def __init__(
        self,
        reward_model: RewardModel,
        config: PPOConfig | None = None,
        *,
        llm: LLMConfig | None = None,
        method: MethodConfig | None = None,
    ) -> None:
        from transformers import set_seed

        self.config = config or PPOConfig()
        set_seed(self.config.seed)
        self.llm, self.method = llm or LLMConfig(), method or LoraConfig()
        model, tokenizer, backend = load_base(self.llm)
        self.tokenizer = tokenizer
        self.device = backend.device
        self.policy = prepare(model, tokenizer, self.method)
        hidden = model.config.hidden_size
        self.value_head = torch.nn.Linear(hidden, 1).to(self.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.params += list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=self.config.learning_rate)
        self.reward_model = reward_model
        self.kl_coef = self.config.kl_coef
        self.eos = set(backend.stop_token_ids)
        self.pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.parameters = count_parameters(self.policy)
        self.bf16 = use_bf16(self.config.bf16, self.device)

    def _autocast(self) -> Any:

        return torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.bf16)

    # --- sampling and scoring -------------------------------------------------------------------

    def prompt_ids(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, prompt: str, greedy: bool = False) -> list[int]:
        return self.generate_batch([prompt], greedy)[0]

    def generate_batch(self, prompts: Sequence[str], greedy: bool = False) -> list[list[int]]:
        """Replies to ``prompts``, sampled in one left-padded batch; each ends at its first stop
        token (kept) or at ``max_new_tokens``."""

        ids, mask = self._left_padded([self.prompt_ids(p) for p in prompts])
        self.policy.eval()
        with torch.no_grad(), self._autocast():
            out = self.policy.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=not greedy,
                temperature=self.config.temperature if not greedy else None,
                top_k=0 if not greedy else None,
                top_p=1.0 if not greedy else None,
                max_new_tokens=self.config.max_new_tokens,
                pad_token_id=self.pad,
                eos_token_id=sorted(self.eos),
            )
        replies = []
        for row in out[:, ids.shape[1] :].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in self.eos), len(row))
            replies.append(row[:end])
        return replies

    def _left_padded(self, sequences: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:

        width = max(map(len, sequences))
        ids = [[self.pad] * (width - len(s)) + s for s in sequences]
        mask = [[0] * (width - len(s)) + [1] * len(s) for s in sequences]
        return (
            torch.tensor(ids, device=self.device),
            torch.tensor(mask, device=self.device),
        )

    def reply_text(self, reply: list[int]) -> str:
        return str(self.tokenizer.decode(reply, skip_special_tokens=True)).strip()

    def score(self, prompts: Sequence[str], replies: Sequence[list[int]]) -> list[float]:
        chats = [
            [{"role": "user", "content": p}, {"role": "assistant", "content": self.reply_text(r)}]
            for p, r in zip(prompts, replies, strict=True)
        ]
        return self.reward_model.score(chats)

    def _forward(
        self, rollouts: Sequence[Rollout], with_values: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-reply-token log-probs (and values), padded: (batch, reply_len) each, plus mask.

        Prompts are padded on the left and replies on the right, so every reply starts in the
        same column and only the reply positions go through the vocabulary projection."""

        prompt_ids, prompt_mask = self._left_padded([r.prompt for r in rollouts])
        longest = max(len(r.reply) for r in rollouts)
        replies = [r.reply + [self.pad] * (longest - len(r.reply)) for r in rollouts]
        reply_mask = torch.tensor(
            [[1] * len(r.reply) + [0] * (longest - len(r.reply)) for r in rollouts],
            device=self.device,
        )
        ids = torch.cat([prompt_ids, torch.tensor(replies, device=self.device)], 1)
        mask = torch.cat([prompt_mask, reply_mask], 1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        with self._autocast():
            out = self.policy(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                logits_to_keep=longest + 1,
                output_hidden_states=with_values,
            )
        # The last prompt position predicts the first reply token; the final position is unused.
        logprobs = out.logits[:, :-1].float().log_softmax(-1)
        lp = logprobs.gather(-1, ids[:, -longest:, None])[..., 0]
        values = torch.zeros_like(lp)
        if with_values:
            hidden = out.hidden_states[-1][:, -longest - 1 : -1].float()
            values = self.value_head(hidden)[..., 0]
        reply_mask = reply_mask.float()
        return lp * reply_mask, values * reply_mask, reply_mask

    # --- one iteration --------------------------------------------------------------------------

    def step(self, prompts: Sequence[str]) -> dict[str, Any]:
        """One iteration: sample replies to ``prompts``, score them, then update the policy
        and the value head for ``ppo_epochs`` passes (or until one update moves the policy
        past ``max_update_kl``); returns the iteration's figures."""
        rollouts = self._rollouts(prompts)
        old_lp, old_values, mask, kl, advantages, returns = self._advantages(rollouts)
        stats, epochs_run, stopped = self._update(rollouts, old_lp, old_values, advantages, returns)
        kl_per_reply = float(kl.sum(1).mean())
        self._adapt_kl(kl_per_reply, len(rollouts))
        return {
            "reward": sum(r.score for r in rollouts) / len(rollouts),
            "kl_to_reference": kl_per_reply,
            "kl_coef": self.kl_coef,
            "update_kl": max(stats["update_kl"]),
            "stopped_at_kl_bound": stopped,
            "epochs": epochs_run,
            "pg_loss": sum(stats["pg_loss"]) / len(stats["pg_loss"]),
            "value_loss": sum(stats["value_loss"]) / len(stats["value_loss"]),
            "clipfrac": sum(stats["clipfrac"]) / len(stats["clipfrac"]),
            "reply_tokens": float(mask.sum(1).float().mean()),
        }

    def _rollouts(self, prompts: Sequence[str]) -> list[Rollout]:
        """A sampled reply to each prompt and its reward-model score (empty replies dropped).

        Raises:
            TrainingError: every reply was empty.
        """
        replies = self.generate_batch(prompts)
        keep = [(p, r) for p, r in zip(prompts, replies, strict=True) if r]
        if not keep:
            raise TrainingError("the policy produced only empty replies")
        scores = self.score([p for p, _ in keep], [r for _, r in keep])
        return [Rollout(self.prompt_ids(p), r, s) for (p, r), s in zip(keep, scores, strict=True)]

    def _advantages(self, rollouts: list[Rollout]) -> tuple[torch.Tensor, ...]:
        """Before the update: the replies' log-probs, values and mask under the policy, the
        per-token KL to the reference, and GAE advantages (whitened) and returns of the
        rewards (the score at each reply's last token, minus β times the KL at every token).
        Each tensor is (replies, reply tokens)."""

        cfg = self.config
        with torch.no_grad():
            old_lp, old_values, mask = self._forward(rollouts, with_values=True)
            with self.policy.disable_adapter():
                ref_lp, _, _ = self._forward(rollouts, with_values=False)
        kl = (old_lp - ref_lp) * mask  # per-token KL estimate to the reference
        rewards = -self.kl_coef * kl
        lengths = mask.sum(1).long()
        for i, r in enumerate(rollouts):
            rewards[i, lengths[i] - 1] += r.score
        advantages, returns = _gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        return old_lp, old_values, mask, kl, _whiten(advantages, mask), returns

    def _update(
        self,
        rollouts: list[Rollout],
        old_lp: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> tuple[dict[str, list[float]], int, bool]:
        """The clipped-objective passes over shuffled minibatches: each minibatch's figures,
        the epochs run, and whether the update stopped at ``max_update_kl``."""
        cfg = self.config
        self.policy.train()
        stats: dict[str, list[float]] = {
            "pg_loss": [],
            "value_loss": [],
            "clipfrac": [],
            "update_kl": [],
        }
        epochs_run, stopped = 0, False
        order = list(range(len(rollouts)))
        for _ in range(cfg.ppo_epochs):
            random.shuffle(order)
            for start in range(0, len(order), cfg.minibatch_size):
                idx = order[start : start + cfg.minibatch_size]
                loss, figures = self._minibatch_loss(
                    [rollouts[i] for i in idx], idx, old_lp, old_values, advantages, returns
                )
                for name, value in figures.items():
                    stats[name].append(value)
                if figures["update_kl"] > cfg.max_update_kl:
                    # The policy has moved as far as one iteration may: no further step.
                    stopped = True
                    break
                self._optimizer_step(loss)
            epochs_run += 1
            if stopped:
                break
        return stats, epochs_run, stopped

    def _minibatch_loss(
        self,
        batch: list[Rollout],
        idx: list[int],
        old_lp: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One minibatch's clipped policy loss plus its weighted, clipped value loss, token
        weighted, and its figures (the KL of the update so far, the clipped share)."""

        cfg = self.config
        new_lp, values, m = self._forward(batch, with_values=True)
        n = m.shape[1]
        adv, ret = advantages[idx, :n], returns[idx, :n]
        old, old_v = old_lp[idx, :n], old_values[idx, :n]
        ratio = torch.exp(new_lp - old)
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
        v_clipped = old_v + (values - old_v).clamp(-cfg.value_clip, cfg.value_clip)
        vf = 0.5 * torch.max((values - ret) ** 2, (v_clipped - ret) ** 2)
        tokens = m.sum().clamp(min=1)
        pg_loss, value_loss = (pg * m).sum() / tokens, (vf * m).sum() / tokens
        with torch.no_grad():
            log_ratio = new_lp - old
            update_kl = float((((ratio - 1) - log_ratio) * m).sum() / tokens)
            clipfrac = float((((ratio - 1).abs() > cfg.clip_range) * m).sum() / tokens)
        figures = {
            "pg_loss": float(pg_loss.detach()),
            "value_loss": float(value_loss.detach()),
            "clipfrac": clipfrac,
            "update_kl": update_kl,
        }
        return pg_loss + cfg.value_coef * value_loss, figures

    def _optimizer_step(self, loss: torch.Tensor) -> None:

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()

    def _adapt_kl(self, kl: float, n: int) -> None:
        error = max(-0.2, min(0.2, kl / self.config.target_kl - 1))
        self.kl_coef *= 1 + error * n / self.config.kl_horizon

    def train(
        self, prompts: Sequence[str], out: Path, progress: bool = True, save_every: int = 1
    ) -> PPOResult:
        """``iterations`` steps over ``prompts`` (cycled, seeded order); saves the LoRA policy,
        the value head, ``metrics.jsonl`` and ``ppo.png``.

        Every ``save_every`` iterations a checkpoint (policy, value head, optimizer, β, random
        generators, position in the prompts) is written atomically; running again into the same
        ``out`` after a kill resumes from it and ends where an uninterrupted run would."""

        if not prompts:
            raise TrainingError("PPO needs prompts")
        refuse_several("PPO", PPO_SINGLE_PROCESS)
        settings = {
            "config": self.config.model_dump(),
            "prompts": fingerprint(prompts),
            "model": self.llm.model,
            "method": self.method.model_dump(mode="json"),
        }
        reward = self.reward_model.folder
        identity = run_identity(settings, [reward] if reward is not None else [])
        refusal = TrainingError(
            f"{out} holds a PPO run with other settings, prompts or reward model; "
            "give a new --out, or delete the folder to start again"
        )
        claim_run(out, identity, refusal)
        state = self._resume(out) or {"iteration": 0, **identity}
        pool = list(prompts)
        random.Random(self.config.seed).shuffle(pool)
        per = self.config.prompts_per_iteration
        metrics_path = out / "metrics.jsonl"
        history = resume_history(metrics_path, state["iteration"])
        with progress_bar(
            progress,
            self.config.iterations,
            "ppo",
            completed=state["iteration"],
            metric="reward",
        ) as advance:
            for iteration in range(state["iteration"] + 1, self.config.iterations + 1):
                cursor = (iteration - 1) * per
                batch = [pool[(cursor + i) % len(pool)] for i in range(per)]
                record = {"step": iteration, **self.step(batch)}
                history.append(record)
                append_jsonl(metrics_path, [record])
                advance(1, record["reward"])
                state["iteration"] = iteration
                if iteration % save_every == 0 and iteration < self.config.iterations:
                    self._checkpoint(out, state)
        with atomic_folder(out / "adapter") as staging:
            self.policy.save_pretrained(staging)
        with atomic_file(out / "value_head.pt") as staging_file:
            torch.save(self.value_head.state_dict(), staging_file)
        _plot(history, out / "ppo.png", self.config.target_kl)
        return PPOResult(history, out)

    def _checkpoint(self, out: Path, state: dict[str, Any]) -> None:
        payload = {
            "policy": trainable_state(self.policy),
            "value_head": self.value_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        write_checkpoint(out, payload, {**state, "kl_coef": self.kl_coef})

    def _resume(self, out: Path) -> dict[str, Any] | None:
        found = read_checkpoint(out)
        if found is None:
            return None
        payload, state = found
        load_trainable(self.policy, payload["policy"])
        self.value_head.load_state_dict(payload["value_head"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.kl_coef = float(state.pop("kl_coef"))
        return state


def _gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:

    advantages = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, advantages + values


def _whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / n
    return (x - mean) / (var.sqrt() + 1e-8) * mask


def _plot(history: list[dict[str, Any]], path: Path, target_kl: float) -> None:
    """Two panels over the iterations: the reward-model score (with a running mean), and the KL
    to the reference against its target."""
    if not history:
        return
    steps = [h["step"] for h in history]
    rewards = [h["reward"] for h in history]
    window = max(1, len(rewards) // 10)
    running = []
    for i in range(len(rewards)):
        recent = rewards[max(0, i - window + 1) : i + 1]
        running.append(sum(recent) / len(recent))
    kl = [h["kl_to_reference"] for h in history]
    with saved_figure(path, 2, 1, figsize=(7, 5.5), sharex=True) as (_, (top, bottom)):
        top.plot(steps, rewards, alpha=0.45, label="mean reward of the iteration's replies")
        top.plot(steps, running, label=f"running mean ({window} iterations)")
        top.set_ylabel("reward")
        top.legend()
        bottom.plot(steps, kl, "o-", ms=3, label="KL to reference")
        bottom.axhline(target_kl, color="grey", ls="--", label="target")
        bottom.set_ylabel("KL per reply (nats)")
        bottom.set_xlabel("iteration")
        bottom.legend()
        for ax in (top, bottom):
            ax.grid(alpha=0.3)


def prompts_from_pairs(path: Path, limit: int | None = None) -> list[str]:
    """Prompts for PPO: each row's ``prompt`` field, or else the first human turn of its
    ``chosen`` transcript (a preference pair, as in HH-RLHF).

    Raises:
        TrainingError: the file holds no prompt in either form.
    """
    prompts = []
    for row in read_rows(path, BadRows(strict=True, error=TrainingError, hint="")):
        prompt = row.values.get("prompt")
        if isinstance(prompt, str) and prompt.strip():
            prompts.append(prompt.strip())
        else:
            messages = transcript_messages(str(row.values.get("chosen", "")))
            if messages and messages[0]["role"] == "user" and messages[0]["content"]:
                prompts.append(messages[0]["content"])
        if limit and len(prompts) == limit:
            break
    if not prompts:
        raise TrainingError(
            f"{path}: no prompts found. Give each row a 'prompt' field, or a 'chosen' transcript "
            "that opens with a Human turn (a preference pair)."
        )
    return prompts
