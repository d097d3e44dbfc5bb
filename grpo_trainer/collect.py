"""Collecting a step's rollouts: sample groups from the engine, score them, and with DAPO dynamic
sampling keep only the groups whose rewards differ, sampling fresh prompts until every process
holds its share (or the round cap is reached). The result is one rollout record (record.py) to
train on, plus every scored round for the step's reward metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from grpo_trainer import algo
from grpo_trainer.metrics import PhaseTimer
from grpo_trainer.record import RolloutRecord
from grpo_trainer.rollout import SamplingConfig
from grpo_trainer.scoring import PromptSet, score
from grpo_trainer.step_stats import StepStats


@dataclass
class Collected:
    record: RolloutRecord  # the groups to train on (this process's share), scored and shaped
    generated: list[RolloutRecord]  # every round as scored, before filtering: what the reward metrics describe
    weight: float  # dynamic_sampling=upweight: the advantage multiplier (1 otherwise)


def rollout_seed(seed: int, step: int, round_: int, rank: int) -> int:
    # A function of (seed, step, round, rank) only: a resumed run draws the same completions.
    return (seed * 1_000_003 + step * 7919 + round_ * 104_729 + rank) % (2**31)


def sample(engine, reward_fn, prompts: PromptSet, idx: list[int], sampling: SamplingConfig, seed: int, tokenizer,
           algorithm, timer: PhaseTimer) -> RolloutRecord:
    """One round: G completions of each prompt in `idx`, scored, with DAPO's soft overlong
    punishment added to the reward when it is on."""
    with timer("rollout"):
        batch = engine.generate([prompts.ids[i] for i in idx], sampling, seed)
    with timer("reward"):
        record, _ = score(RolloutRecord.from_engine(batch, idx, tokenizer), reward_fn, prompts)
        if algorithm.overlong_penalty:
            record = replace(record, rewards=record.rewards + algo.soft_overlong_penalty(
                record.completion_lens, sampling.max_tokens, algorithm.overlong_cache_len,
                algorithm.overlong_penalty_factor))
    return record


def collect(engine, reward_fn, sampler, prompts: PromptSet, *, acc, tokenizer, sampling: SamplingConfig, algorithm,
            num_prompts: int, seed: Callable[[int], int], stats: StepStats, timer: PhaseTimer) -> Collected:
    """Rounds of `sample` over the sampler's next `num_prompts` prompts. With
    `algorithm.dynamic_sampling == "refill"` groups that all agree (all correct or all wrong; with no
    correctness verifier, all of equal reward) are dropped and rounds
    repeat until every process holds `num_prompts` groups or `max_gen_rounds` is reached (then it
    trains on what there is). `seed(round)` seeds each round. Adds the dynamic/* sums to `stats`."""
    a, G = algorithm, sampling.num_generations
    refill = a.dynamic_sampling == "refill"
    kept: list[RolloutRecord] = []
    generated: list[RolloutRecord] = []
    rounds = dropped = have = 0
    while True:
        rounds += 1
        record = sample(engine, reward_fn, prompts, sampler.next_batch(num_prompts), sampling, seed(rounds - 1),
                        tokenizer, a, timer)
        generated.append(record)
        # DAPO eq. 11 keeps a group when 0 < |correct| < G: on accuracy, not on the shaped reward,
        # which a format bonus or the soft overlong penalty makes differ within almost every group
        # (then nothing would ever be filtered). Without a correctness verifier: the rewards.
        keep = list(range(record.num_groups))
        if refill:
            signal = record.correct.float() if reward_fn.judges_correctness else record.rewards
            informative = algo.informative_groups(signal, G)
            keep = informative.nonzero().flatten().tolist()
            dropped += int((~informative).sum())
        kept.append(record.select_groups(keep))
        have += len(keep)
        # Every process must run the same number of rounds: stop on the least filled one.
        least = acc.gather(torch.tensor([have], device=acc.device)).min().item()
        if not refill or least >= num_prompts or rounds >= a.max_gen_rounds:
            break
    if not have:  # nothing informative anywhere: keep one group so every process takes part
        kept, have = [record.select_groups([0])], 1
    record = RolloutRecord.concat(kept).select_groups(list(range(min(have, num_prompts))))
    if a.overlong_filter:  # DAPO: truncated samples give no loss and do not count in the normalisers
        record = record.without_rows_in_loss(record.truncated)
    weight = 1.0
    if a.dynamic_sampling == "upweight":
        weight = algo.group_upweight(acc.gather(algo.informative_groups(record.rewards, G).to(acc.device)))
    stats.add("dynamic/filtered_groups", float(dropped))
    stats.add("dynamic/generated_groups", float(rounds * num_prompts))
    stats.peak("dynamic/gen_rounds", float(rounds))
    stats.peak("dynamic/upweight", weight)
    return Collected(record, generated, weight)
