"""Turning rollout rows into model inputs, and model outputs into per-token log-probs.

The G completions of a group share one prompt, so a micro-batch stores each of its groups'
prompts once (`prompt_ids`, left-padded) and maps every row to its prompt (`prompt_index`). The
trainer's rows come from a rollout record (record.py), which names each row's group: planning
and packing read that, never the prompt tokens. The forward then
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

A micro-batch's model calls run inside one autocast region (`_one_autocast_region`). accelerate
enters autocast inside every call of a prepared model, and autocast keeps its bf16 copy of each
weight only until its outermost region ends: two calls in two regions cast every weight twice,
and in backward cast both weight gradients back to fp32 and add them, about 50 ms a micro-batch
for the 135M model under bf16 (measured: README, "Speed").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from grpo_trainer.algo import entropy_from_logits, selective_log_softmax, selective_log_softmax_and_entropy
from grpo_trainer.record import RolloutRecord


@dataclass
class MicroBatch:
    rows: list[int]  # indices into the step's rollout rows
    prompt_ids: torch.Tensor  # (U, P) the distinct prompts, left-padded
    prompt_mask: torch.Tensor  # (U, P) long: 1 on real prompt tokens
    prompt_index: torch.Tensor  # (M,) long: row -> its prompt in prompt_ids
    completion_ids: torch.Tensor  # (M, C) right-padded
    completion_mask: torch.Tensor  # (M, C) bool: real completion tokens (what attention sees)
    loss_mask: torch.Tensor  # (M, C) bool: the tokens trained on (the record's loss mask)

    def to(self, device) -> "MicroBatch":
        return MicroBatch(self.rows, *(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.prompt_index,
                                                               self.completion_ids, self.completion_mask,
                                                               self.loss_mask)))

    @property
    def attention_mask(self) -> torch.Tensor:  # (M, P+C): the flat layout's mask
        return torch.cat([self.prompt_mask[self.prompt_index], self.completion_mask.long()], dim=1)

    @property
    def padded_tokens(self) -> int:  # what the shared-prompt forward computes: U*P + M*C
        return self.prompt_ids.numel() + self.completion_ids.numel()


def pack_record(record: RolloutRecord, rows: list[int]) -> MicroBatch:
    """The given rows of a rollout record as one micro-batch: each of their groups' prompts once
    (in order of first appearance), completions cut to the longest of these rows."""
    r = torch.tensor(rows, dtype=torch.long)
    distinct: dict[int, int] = {}
    index = [distinct.setdefault(g, len(distinct)) for g in record.group[r].tolist()]
    groups = torch.tensor(list(distinct), dtype=torch.long)
    plens = record.prompt_lens[groups]
    P = int(plens.max())
    prompt_ids = torch.full((len(distinct), P), record.pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(distinct), P), dtype=torch.long)
    for u, (g, n) in enumerate(zip(groups.tolist(), plens.tolist())):
        prompt_ids[u, P - n:] = record.prompt_ids[g, :n]
        prompt_mask[u, P - n:] = 1
    lens = record.completion_lens[r]
    C = max(int(lens.max()), 1)
    return MicroBatch(rows, prompt_ids, prompt_mask, torch.tensor(index, dtype=torch.long),
                      record.completion_ids[r, :C], torch.arange(C)[None] < lens[:, None], record.loss_mask[r, :C])


def record_micro_batches(record: RolloutRecord, rows: list[int], micro_batch_size: int,
                         max_tokens: int | None = None) -> list[MicroBatch]:
    """`rows` of the record planned by `plan_groups` and packed."""
    r = torch.tensor(rows, dtype=torch.long)
    groups = record.group[r]
    plan = plan_groups(groups.tolist(), record.prompt_lens[groups].tolist(), record.completion_lens[r].tolist(),
                       micro_batch_size, max_tokens)
    return [pack_record(record, [rows[j] for j in p]) for p in plan]


def record_per_token(record: RolloutRecord, fn, micro_batch_size: int, max_tokens: int | None, device) -> torch.Tensor:
    """(N, C) float32: `fn(micro_batch) -> (M, c)` over every row of the record, without gradients,
    0 at padding (the reference's log-probs, the critic's old values)."""
    out = torch.zeros(record.completion_ids.shape, dtype=torch.float32)
    with torch.no_grad():
        for mb in record_micro_batches(record, list(range(record.num_rows)), micro_batch_size, max_tokens):
            v = fn(mb.to(device)).float().cpu()
            out[mb.rows, :v.shape[1]] = torch.where(mb.completion_mask.cpu(), v, torch.zeros((), dtype=torch.float32))
    return out


def pack(rows: list[int], prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> MicroBatch:
    """Pad the given rows into one micro-batch (prompts[i] and completions[i] belong to rows[i]),
    for callers holding plain lists (tests, the benchmark). Rows with equal prompts share one
    entry of `prompt_ids`; every real token is trained on."""
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
                      completion_mask, completion_mask)


def plan_groups(groups: list[int], prompt_lens: list[int], completion_lens: list[int], micro_batch_size: int,
                max_tokens: int | None = None) -> list[list[int]]:
    """Split positions 0..n-1 (one per row: its group, prompt length and completion length) into
    micro-batches of at most `micro_batch_size` rows and, if given, at most `max_tokens` computed
    tokens (U*P + M*C, see `MicroBatch.padded_tokens`).

    Rows of one group stay adjacent, so a micro-batch computes few distinct prompts; groups are
    ordered by prompt length and rows by completion length, so that little of each micro-batch is
    padding.
    """
    by_group: dict[int, list[int]] = {}
    for j, g in enumerate(groups):
        by_group.setdefault(g, []).append(j)
    ordered = sorted(by_group.values(), key=lambda js: (prompt_lens[js[0]], max(completion_lens[j] for j in js)))
    order = [j for js in ordered for j in sorted(js, key=lambda j: completion_lens[j])]

    def cost(js: list[int]) -> int:
        distinct = {groups[j]: prompt_lens[j] for j in js}
        return len(distinct) * max(distinct.values()) + len(js) * max(max(completion_lens[j] for j in js), 1)

    plan: list[list[int]] = []
    for j in order:
        if plan and len(plan[-1]) < micro_batch_size and (max_tokens is None or cost(plan[-1] + [j]) <= max_tokens):
            plan[-1].append(j)
        else:
            plan.append([j])
    return plan


def plan_micro_batches(prompts: list[list[int]], completions: list[list[int]], micro_batch_size: int,
                       max_tokens: int | None = None) -> list[list[int]]:
    """`plan_groups` for plain lists: rows with equal prompts form a group."""
    ids: dict[tuple[int, ...], int] = {}
    groups = [ids.setdefault(tuple(p), len(ids)) for p in prompts]
    return plan_groups(groups, [len(p) for p in prompts], [len(c) for c in completions], micro_batch_size, max_tokens)


def micro_batches(rows: list[int], prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                  micro_batch_size: int, max_tokens: int | None = None) -> list[MicroBatch]:
    """`rows` (indices into prompts/completions) planned by `plan_micro_batches` and packed (plain lists)."""
    plan = plan_micro_batches([prompts[i] for i in rows], [completions[i] for i in rows], micro_batch_size,
                              max_tokens)
    return [pack([rows[j] for j in p], [prompts[rows[j]] for j in p], [completions[rows[j]] for j in p], pad_id)
            for p in plan]


def _one_autocast_region(device_type: str):
    """An autocast region that changes no setting (on or off, dtype, cache as the caller has them),
    so that the autocast regions entered inside it share one weight-cast cache (see above)."""
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                          enabled=torch.is_autocast_enabled(device_type),
                          cache_enabled=torch.is_autocast_cache_enabled())


def completion_outputs(model, mb: MicroBatch, share_prompt: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The model's output at every position that predicts a completion token, as parts
    [(outputs (M, c + e, ·), the tokens they predict (M, c))] whose c add up to C; the e (0 or 1)
    outputs past the c predict nothing and are for the caller to drop from its results. They are
    kept because slicing the (M, C, V) logits would make autograd allocate and zero a gradient of
    their full size in backward (8 rows x 128 tokens at V = 49k: 100 MB in bf16). The policy's
    outputs are logits; the critic's (critic.py) values, one per state before each token."""
    C = mb.completion_ids.shape[1]
    if share_prompt:
        with _one_autocast_region(mb.prompt_ids.device.type):  # both calls: one weight cast
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
            # position predicts token 0. Kept apart, so the (M, C, V) logits are never copied.
            return [(out.logits[mb.prompt_index], mb.completion_ids[:, :1]), (comp.logits, mb.completion_ids[:, 1:])]
    attention = mb.attention_mask
    input_ids = torch.cat([mb.prompt_ids[mb.prompt_index], mb.completion_ids], dim=1)  # (M, P+C)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                logits_to_keep=C + 1, use_cache=False)
    return [(out.logits, mb.completion_ids)]  # position t predicts completion token t; the last nothing


def completion_values(model, mb: MicroBatch, share_prompt: bool = True) -> torch.Tensor:  # (M, C)
    """A one-output model's (the critic's) output at every position that predicts a completion
    token: V of the state before each token."""
    parts = completion_outputs(model, mb, share_prompt)  # [(values (M, c + e, 1), tokens (M, c))]
    return torch.cat([out[:, :tokens.shape[1], 0] for out, tokens in parts], dim=1)


def completion_logprobs(model, mb: MicroBatch, temperature: float, with_entropy: bool = False,
                        share_prompt: bool = True, entropy_grad: bool = False):
    """log pi(o_t | q, o_<t) at completion positions, with the sampling temperature applied.

    Returns (logp (M, C), entropy (M, C) or None). The entropy comes from the log-probs' own pass
    over the logits, without gradient, unless `entropy_grad` (an entropy bonus in the loss)."""
    logp, entropy = [], []
    for logits, targets in completion_outputs(model, mb, share_prompt):  # logits (M, c + e, V), targets (M, c)
        c = targets.shape[1]
        targets = torch.nn.functional.pad(targets, (0, logits.shape[1] - c))  # token 0 where nothing is predicted
        # Nothing but the log-probs reads these logits after this, unless the entropy has a gradient.
        if with_entropy and not entropy_grad:
            lp, ent = selective_log_softmax_and_entropy(logits, targets, temperature=temperature, reuse_logits=True)
        else:
            lp = selective_log_softmax(logits, targets, temperature=temperature, reuse_logits=not with_entropy)
            ent = entropy_from_logits(logits, temperature=temperature) if with_entropy else None
        logp.append(lp[:, :c])
        entropy.append(None if ent is None else ent[:, :c])
    return torch.cat(logp, dim=1), (torch.cat(entropy, dim=1) if with_entropy else None)
