"""Alignment with human feedback on HH-RLHF harmless pairs: a reward model, then PPO against it.

1. The reward model (LoRA on a sequence-classification head) trains on the first ``--pairs`` pairs,
   keeping a fifth of them aside; its pairwise accuracy on that part is reported (chance is 0.5).
2. PPO trains the LoRA policy on prompts from later rows of the file. Prompts from the last rows,
   which neither the reward model nor PPO saw, are answered greedily before and after, and the
   reward model scores both sets of replies. The KL to the frozen reference is logged per
   iteration, with the bound each update respects.

    python benchmarks/bench_rlhf.py [--quick] [--save] [--pairs N] [--iterations N] [--reward DIR]
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import RESULTS, emit, parser

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PAIRS = DATA / "hh_rlhf" / "harmless_pairs_1800.jsonl"


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--pairs", type=int, default=None, help="preference pairs for the reward model")
    p.add_argument("--steps", type=int, default=None, help="reward-model optimizer steps")
    p.add_argument("--reward", type=Path, default=None, help="reuse a trained reward model")
    p.add_argument("--iterations", type=int, default=None, help="PPO iterations")
    p.add_argument("--lr", type=float, default=1e-3, help="PPO learning rate")
    p.add_argument("--held-out", type=int, default=None, help="held-out prompts scored")
    args = p.parse_args()
    pairs = args.pairs or (40 if args.quick else 600)
    steps = args.steps or (2 if args.quick else 16)
    iterations = args.iterations or (2 if args.quick else 24)
    held_out = args.held_out or (4 if args.quick else 48)

    import torch

    from hearthlm.finetune import TrainConfig
    from hearthlm.finetune.ppo import PPOConfig, PPOTrainer, prompts_from_pairs
    from hearthlm.finetune.reward import REWARD_FILE, RewardModel, train_reward_model

    work = Path(tempfile.mkdtemp(prefix="bench-rlhf-"))
    reward_folder = args.reward or work / "reward"
    start = time.perf_counter()
    if args.reward is None:
        train_reward_model(
            PAIRS,
            reward_folder,
            train=TrainConfig(max_steps=steps, batch_size=8, learning_rate=2e-4, eval_every=steps),
            validation=0.2,
            max_length=160,
            limit=pairs,
            log=lambda *a: None,
        )
    reward_seconds = time.perf_counter() - start
    info = json.loads((reward_folder / REWARD_FILE).read_text(encoding="utf-8"))
    pairs = info["train_pairs"] + info["validation_pairs"]

    # Prompts after the reward model's rows: PPO trains on the middle, the last rows are held out.
    prompts = prompts_from_pairs(PAIRS)
    train_prompts, test_prompts = prompts[pairs:-held_out], prompts[-held_out:]
    config = PPOConfig(
        iterations=iterations,
        prompts_per_iteration=8,
        minibatch_size=4,
        ppo_epochs=4,
        max_new_tokens=32,
        learning_rate=args.lr,
        max_update_kl=0.1,
    )
    ppo = PPOTrainer(RewardModel.load(reward_folder), config)

    def held_out_reward(greedy: bool) -> float:
        torch.manual_seed(1234)  # the same sampling noise before and after
        replies = [ppo.generate(prompt, greedy=greedy) for prompt in test_prompts]
        return statistics.mean(ppo.score(test_prompts, replies))

    before = {mode: held_out_reward(mode == "greedy") for mode in ("greedy", "sampled")}
    start = time.perf_counter()
    result = ppo.train(train_prompts, work / "ppo", progress=True)
    ppo_seconds = time.perf_counter() - start
    after = {mode: held_out_reward(mode == "greedy") for mode in ("greedy", "sampled")}
    history = result.history
    figures: dict[str, object] = {
        "reward_train_pairs": info["train_pairs"],
        "reward_validation_pairs": info["validation_pairs"],
        "reward_pairs_seen": info["steps"] * 8,
        "reward_validation_accuracy": round(info["validation_accuracy"], 4),
        "reward_train_seconds": round(reward_seconds, 1) if args.reward is None else None,
        "ppo_iterations": iterations,
        "ppo_prompts_per_iteration": config.prompts_per_iteration,
        "ppo_learning_rate": config.learning_rate,
        "ppo_trainable_params": ppo.parameters.trainable,
        "ppo_held_out_prompts": len(test_prompts),
    }
    for mode in ("greedy", "sampled"):
        figures[f"ppo_held_out_{mode}_reward_before"] = round(before[mode], 4)
        figures[f"ppo_held_out_{mode}_reward_after"] = round(after[mode], 4)
        figures[f"ppo_held_out_{mode}_reward_gain"] = round(after[mode] - before[mode], 4)
    half = len(history) // 2
    figures.update(
        {
            "ppo_first_half_train_reward": round(
                statistics.mean(h["reward"] for h in history[:half] or history), 4
            ),
            "ppo_second_half_train_reward": round(
                statistics.mean(h["reward"] for h in history[half:]), 4
            ),
            "ppo_max_kl_to_reference": round(max(h["kl_to_reference"] for h in history), 4),
            "ppo_final_kl_to_reference": round(history[-1]["kl_to_reference"], 4),
            "ppo_target_kl": config.target_kl,
            "ppo_max_update_kl": round(max(h["update_kl"] for h in history), 4),
            "ppo_update_kl_bound": config.max_update_kl,
            "ppo_seconds_per_iteration": round(ppo_seconds / iterations, 1),
        }
    )
    if args.save:
        RESULTS.mkdir(exist_ok=True)
        shutil.copy(work / "ppo" / "ppo.png", RESULTS / "bench_rlhf_ppo.png")
    emit("bench_rlhf", figures, args.save)


if __name__ == "__main__":
    main()
