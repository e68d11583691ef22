"""Alignment with human feedback on HH-RLHF harmless pairs: a reward model, then PPO against it.

1. The reward model (LoRA on a sequence-classification head) trains on the first ``--pairs`` pairs,
   keeping a fifth of them aside; its pairwise accuracy on that part is reported (chance is 0.5).
   ``--reward DIR`` keeps it in DIR, and a later run reuses it from there.
2. PPO trains the LoRA policy on prompts from later rows of the file. Prompts from the last rows,
   which neither the reward model nor PPO saw, are answered before and after (greedily, and
   ``--samples`` seeded samples each), and the reward model scores the replies. The KL to the
   frozen reference is logged per iteration, with the bound each update respects.

    python benchmarks/bench_rlhf.py [--quick] [--save] [--pairs N] [--steps N] [--reward DIR]
        [--iterations N (0: reward model only)] [--prompts N] [--lr X] [--held-out N]
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

from _common import DATA, RESULTS, emit, needs, parser

PAIRS = DATA / "hh_rlhf" / "harmless_pairs_1800.jsonl"


def prompt_lines(prompts: list[str]) -> list[int | None]:
    """The line of ``PAIRS`` each prompt comes from (its first human turn); where a prompt
    recurs, its last line, since the held-out prompts are the file's last."""
    from hearthlm.finetune.pairs import transcript_messages

    last: dict[str, int] = {}
    for number, text in enumerate(PAIRS.read_text(encoding="utf-8").splitlines(), 1):
        messages = transcript_messages(str(json.loads(text).get("chosen", ""))) if text else []
        if messages:
            last[messages[0]["content"]] = number
    return [last.get(prompt) for prompt in prompts]


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--pairs", type=int, default=None, help="preference pairs for the reward model")
    p.add_argument("--steps", type=int, default=None, help="reward-model optimizer steps")
    p.add_argument("--reward-lr", type=float, default=2e-4, help="reward-model learning rate")
    p.add_argument("--max-length", type=int, default=160, help="reward-model tokens per side")
    p.add_argument(
        "--reward",
        type=Path,
        default=None,
        help="reward-model folder: reused if trained, else kept there",
    )
    p.add_argument("--iterations", type=int, default=None, help="PPO iterations (0: reward only)")
    p.add_argument("--lr", type=float, default=1e-3, help="PPO learning rate")
    p.add_argument("--prompts", type=int, default=8, help="PPO prompts per iteration")
    p.add_argument("--kl-horizon", type=int, default=100, help="replies over which β adapts")
    p.add_argument("--samples", type=int, default=4, help="sampled replies per held-out prompt")
    p.add_argument("--held-out", type=int, default=None, help="held-out prompts scored")
    args = p.parse_args()
    needs(PAIRS)
    pairs = args.pairs or (40 if args.quick else 600)
    steps = args.steps or (2 if args.quick else 16)
    iterations = (2 if args.quick else 24) if args.iterations is None else args.iterations
    held_out = args.held_out or (4 if args.quick else 48)

    import torch

    from hearthlm.finetune import TrainConfig
    from hearthlm.finetune.ppo import PPOConfig, PPOTrainer, prompts_from_pairs
    from hearthlm.finetune.reward import REWARD_FILE, RewardModel, train_reward_model

    work = Path(tempfile.mkdtemp(prefix="bench-rlhf-"))
    reward_folder = args.reward or work / "reward"
    if not (reward_folder / REWARD_FILE).is_file():
        train_reward_model(
            PAIRS,
            reward_folder,
            train=TrainConfig(
                max_steps=steps, batch_size=8, learning_rate=args.reward_lr, eval_every=steps
            ),
            validation=0.2,
            max_length=args.max_length,
            limit=pairs,
            log=lambda *a: None,
        )
    info = json.loads((reward_folder / REWARD_FILE).read_text(encoding="utf-8"))
    pairs = info["train_pairs"] + info["validation_pairs"]
    figures: dict[str, object] = {
        "reward_train_pairs": info["train_pairs"],
        "reward_validation_pairs": info["validation_pairs"],
        "reward_pairs_seen": info["steps"] * info.get("batch_size", 8),
        "reward_max_length": info["max_length"],
        "reward_validation_accuracy": round(info["validation_accuracy"], 4),
        "reward_train_seconds": info.get("train_seconds"),
    }
    if iterations == 0:
        emit("bench_rlhf_reward_model", figures, args.save)
        return

    # Prompts after the reward model's rows: PPO trains on the middle, the last rows are held out.
    prompts = prompts_from_pairs(PAIRS)
    train_prompts, test_prompts = prompts[pairs:-held_out], prompts[-held_out:]
    config = PPOConfig(
        iterations=iterations,
        prompts_per_iteration=args.prompts,
        minibatch_size=max(1, args.prompts // 2),
        ppo_epochs=4,
        max_new_tokens=32,
        learning_rate=args.lr,
        max_update_kl=0.1,
        kl_horizon=args.kl_horizon,
    )
    ppo = PPOTrainer(RewardModel.load(reward_folder), config)

    def held_out(greedy: bool) -> tuple[list[float], list[str], float]:
        """Per-prompt mean reward, the first replies, and their mean length in tokens."""
        torch.manual_seed(1234)  # the same sampling noise before and after
        per_prompt: list[list[float]] = [[] for _ in test_prompts]
        lengths, first = [], []
        for _ in range(1 if greedy else args.samples):
            replies = ppo.generate_batch(test_prompts, greedy=greedy)
            for scores, score in zip(per_prompt, ppo.score(test_prompts, replies), strict=True):
                scores.append(score)
            lengths += map(len, replies)
            first = first or [ppo.reply_text(r) for r in replies]
        return [statistics.mean(x) for x in per_prompt], first, statistics.mean(lengths)

    modes = ("greedy", "sampled")
    before = {mode: held_out(mode == "greedy") for mode in modes}
    start = time.perf_counter()
    result = ppo.train(train_prompts, work / "ppo", progress=True)
    ppo_seconds = time.perf_counter() - start
    after = {mode: held_out(mode == "greedy") for mode in modes}
    history = result.history
    figures |= {
        "ppo_iterations": iterations,
        "ppo_prompts_per_iteration": config.prompts_per_iteration,
        "ppo_learning_rate": config.learning_rate,
        "ppo_kl_horizon": config.kl_horizon,
        "ppo_trainable_params": ppo.parameters.trainable,
        "ppo_held_out_prompts": len(test_prompts),
        "ppo_held_out_samples_per_prompt": args.samples,
    }
    for mode in modes:
        (old, _, old_len), (new, _, new_len) = before[mode], after[mode]
        gains = [b - a for a, b in zip(old, new, strict=True)]
        figures[f"ppo_held_out_{mode}_reward_before"] = round(statistics.mean(old), 4)
        figures[f"ppo_held_out_{mode}_reward_after"] = round(statistics.mean(new), 4)
        figures[f"ppo_held_out_{mode}_reward_gain"] = round(statistics.mean(gains), 4)
        # Paired over prompts: the standard error of the mean gain.
        se = statistics.stdev(gains) / len(gains) ** 0.5 if len(gains) > 1 else None
        figures[f"ppo_held_out_{mode}_reward_gain_se"] = round(se, 4) if se is not None else None
        figures[f"ppo_held_out_{mode}_reply_tokens_before"] = round(old_len, 1)
        figures[f"ppo_held_out_{mode}_reply_tokens_after"] = round(new_len, 1)
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
        # The prompts stay in the shared data; the file names their lines there.
        with (RESULTS / "bench_rlhf_replies.jsonl").open("w", encoding="utf-8") as sink:
            greedy_before, greedy_after = before["greedy"][1], after["greedy"][1]
            lines = prompt_lines(test_prompts[:12])
            for line, a, b in zip(lines, greedy_before, greedy_after, strict=False):
                sink.write(json.dumps({"pairs_line": line, "before": a, "after": b}) + "\n")
    emit("bench_rlhf", figures, args.save)


if __name__ == "__main__":
    main()
