"""The micro-batch layout of grpo_trainer/forward.py: one prompt computation per group.

The shared-prompt forward (prompt once, completions on copies of its keys/values) must give the
log-probs and gradients of the plain layout (every row its own prompt + completion)."""

from __future__ import annotations

import torch

from grpo_trainer.forward import completion_logprobs, pack, plan_micro_batches
from grpo_trainer.models import load_causal_lm

PROMPTS = [[5, 6, 7, 8, 9], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
COMPLETIONS = [[21, 22, 23], [24, 25, 26, 27, 28, 29, 30, 31], [32, 33, 34, 35, 36], [37],
               [41, 42, 43, 44, 45, 46, 47], [48, 49], [50, 51, 52, 53, 54, 55, 56, 57], [58, 59, 60, 61]]
ROW_PROMPTS = [PROMPTS[i // 4] for i in range(8)]


def test_pack_stores_each_distinct_prompt_once():
    mb = pack(list(range(8)), ROW_PROMPTS, COMPLETIONS, pad_id=0)
    assert mb.prompt_ids.shape == (2, 9) and mb.prompt_index.tolist() == [0] * 4 + [1] * 4
    assert mb.prompt_ids[0].tolist() == [0] * 4 + PROMPTS[0]  # left-padded
    assert mb.prompt_mask[0].tolist() == [0] * 4 + [1] * 5
    assert mb.completion_ids.shape == (8, 8) and mb.completion_mask.sum().item() == 38
    assert mb.padded_tokens == 2 * 9 + 8 * 8
    assert mb.attention_mask[3].tolist() == [0] * 4 + [1] * 5 + [1] + [0] * 7


def test_shared_prompt_forward_matches_the_plain_layout(tiny_llama):
    model = load_causal_lm(str(tiny_llama)).double()
    mb = pack(list(range(8)), ROW_PROMPTS, COMPLETIONS, pad_id=0)
    adv = torch.linspace(-1, 1, 8, dtype=torch.float64)[:, None]
    out = {}
    for share in (True, False):
        model.zero_grad()
        logp, ent = completion_logprobs(model, mb, 0.7, with_entropy=True, share_prompt=share)
        (logp * adv * mb.completion_mask).sum().backward()
        out[share] = (logp.detach() * mb.completion_mask, ent * mb.completion_mask,
                      [p.grad.clone() for p in model.parameters()])
    assert (out[True][0] - out[False][0]).abs().max() < 1e-12
    assert (out[True][1] - out[False][1]).abs().max() < 1e-12
    # Gradients through transformers' fp32 RMSNorm carry fp32 rounding even in fp64.
    worst = max((a - b).abs().max().item() for a, b in zip(out[True][2], out[False][2]))
    scale = max(a.abs().max().item() for a in out[True][2])
    assert worst < 1e-6 * scale and scale > 1e-3
    # A row's log-probs do not depend on which other rows share its micro-batch.
    alone = pack([5], [ROW_PROMPTS[5]], [COMPLETIONS[5]], pad_id=0)
    with torch.no_grad():
        single = completion_logprobs(model, alone, 0.7)[0][0]
    assert (single - out[True][0][5, :2]).abs().max() < 1e-12


def test_plan_keeps_groups_together_and_respects_the_token_budget():
    plan = plan_micro_batches(ROW_PROMPTS, COMPLETIONS, micro_batch_size=4)
    assert sorted(sum(plan, [])) == list(range(8))
    assert [sorted(mb) for mb in plan] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # one group each
    assert [len(COMPLETIONS[i]) for i in plan[0]] == [1, 3, 5, 8]  # by completion length
    # Budget 20: a micro-batch costs 5 (prompt) + rows * longest completion, at most 20.
    plan = plan_micro_batches(ROW_PROMPTS, COMPLETIONS, micro_batch_size=8, max_tokens=20)
    assert plan[0] == [3, 0, 2]  # 5 + 3 * 5 = 20; adding the 8-token row would cost 5 + 4 * 8
    for mb in plan:
        rows = [ROW_PROMPTS[i] for i in mb]
        cost = len({tuple(p) for p in rows}) * max(map(len, rows)) + len(mb) * max(len(COMPLETIONS[i]) for i in mb)
        assert cost <= 20 or len(mb) == 1
    assert sorted(sum(plan, [])) == list(range(8))
