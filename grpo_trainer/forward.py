"""Turning rollout rows into model inputs, and model outputs into per-token log-probs.

A micro-batch lays each sequence out as `[pad… prompt | completion …pad]`: prompts are left-padded
so that every completion starts at the same column. The model then only needs logits for the last
`C + 1` positions (`logits_to_keep`), never for the prompt, and never a full-vocabulary
log-softmax over the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpo_trainer.algo import entropy_from_logits, selective_log_softmax


@dataclass
class MicroBatch:
    rows: list[int]  # indices into the step's rollout rows
    input_ids: torch.Tensor  # (M, P+C)
    attention_mask: torch.Tensor  # (M, P+C)
    position_ids: torch.Tensor  # (M, P+C)
    completion_ids: torch.Tensor  # (M, C)
    completion_mask: torch.Tensor  # (M, C) bool: real completion tokens

    def to(self, device) -> "MicroBatch":
        return MicroBatch(self.rows, *(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                               self.position_ids, self.completion_ids,
                                                               self.completion_mask)))


def pack(rows: list[int], prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> MicroBatch:
    """Pad the given rows into one micro-batch (prompts[i] and completions[i] belong to rows[i])."""
    P = max(len(p) for p in prompts)
    C = max(max(len(c) for c in completions), 1)
    M = len(rows)
    input_ids = torch.full((M, P + C), pad_id, dtype=torch.long)
    attention = torch.zeros((M, P + C), dtype=torch.long)
    completion_ids = torch.full((M, C), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((M, C), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        input_ids[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
        attention[i, P - len(p):P + len(c)] = 1
        completion_ids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[i, :len(c)] = True
    # Left padding shifts positions; derive them from the mask so RoPE sees 0, 1, 2, ...
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return MicroBatch(rows, input_ids, attention, position_ids, completion_ids, completion_mask)


def plan_micro_batches(lengths: list[int], micro_batch_size: int) -> list[list[int]]:
    """Split row indices into micro-batches of at most `micro_batch_size` rows, grouping rows of
    similar length so that little of each micro-batch is padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]


def completion_logprobs(model, mb: MicroBatch, temperature: float, with_entropy: bool = False):
    """log pi(o_t | q, o_<t) at completion positions, with the sampling temperature applied.

    Returns (logp (M, C), entropy (M, C) or None)."""
    C = mb.completion_ids.shape[1]
    out = model(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                logits_to_keep=C + 1, use_cache=False)
    logits = out.logits[:, :-1]  # (M, C, V): position t predicts completion token t
    if temperature != 1.0:
        logits = logits / temperature
    logp = selective_log_softmax(logits, mb.completion_ids)
    entropy = entropy_from_logits(logits.detach()) if with_entropy else None
    return logp, entropy
