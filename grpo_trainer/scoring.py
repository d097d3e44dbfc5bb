"""Scoring a rollout record with a reward function: the one path the trainer's steps, its held-out
evaluation and `python -m grpo_trainer.evaluate` share, so all three call the reward function
with the same arguments (TRL's keyword contract plus the data set's other columns)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from grpo_trainer.record import RolloutRecord
from grpo_trainer.rewards import RewardOutput

# Columns the reward function receives under other names (answers) or not at all.
_NOT_COLUMNS = ("question", "answer", "gold")


@dataclass(frozen=True)
class PromptSet:
    """Prompts rendered once (data.render_prompts): a record's `example_idx` indexes all three."""

    examples: list[dict[str, Any]]  # the data set rows kept (prompts over the length limit dropped)
    texts: list[str]  # the rendered chat prompt of each
    ids: list[list[int]]  # its token ids


def score(record: RolloutRecord, reward_fn, prompts: PromptSet) -> tuple[RolloutRecord, RewardOutput]:
    """The record with rewards, each reward component (NaN where a function gave no opinion),
    correctness and format filled in; and the reward function's whole output (what the
    verifiers parsed, for evaluate's records)."""
    G, idx = record.group_size, record.example_idx.tolist()
    rows = [prompts.examples[i] for i in idx for _ in range(G)]
    columns = {k: [row[k] for row in rows] for k in (rows[0] if rows else {}) if k not in _NOT_COLUMNS}
    out = reward_fn(prompts=[prompts.texts[i] for i in idx for _ in range(G)], completions=record.texts,
                    completion_ids=record.completion_lists(), answers=[row["answer"] for row in rows], **columns)
    scored = replace(
        record, rewards=torch.tensor(out.rewards, dtype=torch.float32),
        components={label: torch.tensor([math.nan if s is None else s for s in scores], dtype=torch.float32)
                    for label, scores in out.components.items()},
        correct=torch.tensor(out.correct, dtype=torch.bool), formatted=torch.tensor(out.formatted, dtype=torch.bool),
        num_timeouts=out.num_timeouts, parsed=list(out.parsed))
    return scored, out
