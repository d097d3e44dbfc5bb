"""Turning rollout rows into model inputs, and model outputs into per-token log-probs.

The G completions of a group share one prompt, so a micro-batch stores each distinct prompt once
(`prompt_ids`, left-padded) and maps every row to its prompt (`prompt_index`). The forward then
runs in two calls (`share_prompt=True`):

1. the U distinct prompts, keeping their keys/values (and the logits of their last position,
   which predict each completion's first token);
2. the M completions (right-padded), attending to their prompt's keys/values, copied per row
   with `index_select` so that gradients flow back into the one prompt computation.

A group's prompt is thus computed once instead of G times: for GSM8K prompts (~140 tokens) and
128-token completions that is about half of the training FLOPs (measured: README, "Speed").
Log-probs come out only at completion positions, and never as a full-vocabulary log-softmax.

`share_prompt=False` runs the same rows as one `[pad… prompt | completion …pad]` sequence each:
needed with gradient checkpointing, where transformers drops the key/value cache inside
checkpointed layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from grpo_trainer.algo import entropy_from_logits, selective_log_softmax


@dataclass
class MicroBatch:
    rows: list[int]  # indices into the step's rollout rows
    prompt_ids: torch.Tensor  # (U, P) the distinct prompts, left-padded
    prompt_mask: torch.Tensor  # (U, P) long: 1 on real prompt tokens
    prompt_index: torch.Tensor  # (M,) long: row -> its prompt in prompt_ids
    completion_ids: torch.Tensor  # (M, C) right-padded
    completion_mask: torch.Tensor  # (M, C) bool: real completion tokens

    def to(self, device) -> "MicroBatch":
        return MicroBatch(self.rows, *(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.prompt_index,
                                                               self.completion_ids, self.completion_mask)))

    @property
    def attention_mask(self) -> torch.Tensor:  # (M, P+C): the flat layout's mask
        return torch.cat([self.prompt_mask[self.prompt_index], self.completion_mask.long()], dim=1)

    @property
    def padded_tokens(self) -> int:  # what the shared-prompt forward computes: U*P + M*C
        return self.prompt_ids.numel() + self.completion_ids.numel()


def pack(rows: list[int], prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> MicroBatch:
    """Pad the given rows into one micro-batch (prompts[i] and completions[i] belong to rows[i]).
    Rows with equal prompts share one entry of `prompt_ids`."""
    distinct: dict[tuple[int, ...], int] = {}
    index = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    P = max(len(p) for p in distinct)
    C = max(max(len(c) for c in completions), 1)
    prompt_ids = torch.full((len(distinct), P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(distinct), P), dtype=torch.long)
    for u, p in enumerate(distinct):
        prompt_ids[u, P - len(p):] = torch.tensor(p, dtype=torch.long)
        prompt_mask[u, P - len(p):] = 1
    completion_ids = torch.full((len(rows), C), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(rows), C), dtype=torch.bool)
    for i, c in enumerate(completions):
        completion_ids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[i, :len(c)] = True
    return MicroBatch(rows, prompt_ids, prompt_mask, torch.tensor(index, dtype=torch.long), completion_ids,
                      completion_mask)


def plan_micro_batches(prompts: list[list[int]], completions: list[list[int]], micro_batch_size: int,
                       max_tokens: int | None = None) -> list[list[int]]:
    """Split row indices into micro-batches of at most `micro_batch_size` rows and, if given, at
    most `max_tokens` computed tokens (U*P + M*C, see `MicroBatch.padded_tokens`).

    Rows of one prompt stay adjacent, so a micro-batch computes few distinct prompts; prompts are
    ordered by length and rows by completion length, so that little of each micro-batch is padding.
    """
    keys = [tuple(p) for p in prompts]
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i, key in enumerate(keys):
        by_prompt.setdefault(key, []).append(i)
    groups = sorted(by_prompt.items(), key=lambda kv: (len(kv[0]), max(len(completions[i]) for i in kv[1])))
    order = [i for _, rows in groups for i in sorted(rows, key=lambda i: len(completions[i]))]

    def cost(rows: list[int]) -> int:
        distinct = {keys[i] for i in rows}
        return len(distinct) * max(map(len, distinct)) + len(rows) * max(max(len(completions[i]) for i in rows), 1)

    plan: list[list[int]] = []
    for i in order:
        if plan and len(plan[-1]) < micro_batch_size and (max_tokens is None or cost(plan[-1] + [i]) <= max_tokens):
            plan[-1].append(i)
        else:
            plan.append([i])
    return plan


def micro_batches(rows: list[int], prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                  micro_batch_size: int, max_tokens: int | None = None) -> list[MicroBatch]:
    """`rows` (indices into prompts/completions) planned by `plan_micro_batches` and packed."""
    plan = plan_micro_batches([prompts[i] for i in rows], [completions[i] for i in rows], micro_batch_size,
                              max_tokens)
    return [pack([rows[j] for j in p], [prompts[rows[j]] for j in p], [completions[rows[j]] for j in p], pad_id)
            for p in plan]


def completion_logprobs(model, mb: MicroBatch, temperature: float, with_entropy: bool = False,
                        share_prompt: bool = True):
    """log pi(o_t | q, o_<t) at completion positions, with the sampling temperature applied.

    Returns (logp (M, C), entropy (M, C) or None)."""
    C = mb.completion_ids.shape[1]
    if share_prompt:
        # 1. Each distinct prompt once; the last position's logits predict completion token 0.
        positions = (mb.prompt_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: RoPE sees 0, 1, 2, ...
        out = model(input_ids=mb.prompt_ids, attention_mask=mb.prompt_mask, position_ids=positions,
                    use_cache=True, logits_to_keep=1)
        # 2. Every row's completion on a copy of its prompt's keys/values.
        cache = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, mb.prompt_index),
                                              layer.values.index_select(0, mb.prompt_index))
                                             for layer in out.past_key_values.layers])
        start = mb.prompt_mask.sum(-1)[mb.prompt_index]  # (M,) each row's prompt length
        positions = start[:, None] + torch.arange(C, device=start.device)[None]  # (M, C)
        comp = model(input_ids=mb.completion_ids, attention_mask=mb.attention_mask, position_ids=positions,
                     past_key_values=cache, use_cache=True, logits_to_keep=C)
        # Completion position t predicts token t+1 (its last predicts nothing); the prompt's last
        # position predicts token 0. Scored apart, so the (M, C, V) logits are never copied.
        parts = [(out.logits[mb.prompt_index], mb.completion_ids[:, :1]),
                 (comp.logits[:, :-1], mb.completion_ids[:, 1:])]
    else:
        attention = mb.attention_mask
        input_ids = torch.cat([mb.prompt_ids[mb.prompt_index], mb.completion_ids], dim=1)  # (M, P+C)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                    logits_to_keep=C + 1, use_cache=False)
        parts = [(out.logits[:, :-1], mb.completion_ids)]  # position t predicts completion token t
    logp, entropy = [], []
    for logits, targets in parts:  # logits (M, c, V), targets (M, c)
        if temperature != 1.0:
            logits = logits / temperature
        logp.append(selective_log_softmax(logits, targets))
        if with_entropy:
            entropy.append(entropy_from_logits(logits.detach()))
    return torch.cat(logp, dim=1), (torch.cat(entropy, dim=1) if with_entropy else None)
