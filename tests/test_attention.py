"""The CPU training attention (grpo_trainer/attention.py) against a hand-written formula, against
float64 finite differences, and against torch's SDPA through the trainer's own forward."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from grpo_trainer import attention
from grpo_trainer.forward import completion_logprobs, micro_batches

CFG = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)  # grouped-query: 2 query heads per key/value head


@pytest.fixture
def budget():
    """Sets this process's budget; puts the default back afterwards (it is process-wide)."""
    yield attention.implementation
    attention.implementation(attention.DEFAULT_GIB)


def models(impl: str):
    torch.manual_seed(0)
    state = LlamaForCausalLM(CFG).state_dict()
    out = []
    for name in ("sdpa", impl):
        m = LlamaForCausalLM._from_config(copy.deepcopy(CFG), attn_implementation=name)
        m.load_state_dict(state)
        out.append(m)
    return out


def batch():
    """Two groups with prompts of different lengths (left padding) and ragged completions."""
    g = torch.Generator().manual_seed(1)
    prompts, comps = [], []
    for plen in (9, 23):
        p = torch.randint(1, 300, (plen,), generator=g).tolist()
        for n in (3, 17, 40):
            prompts.append(p)
            comps.append(torch.randint(1, 300, (n,), generator=g).tolist())
    return micro_batches(list(range(len(prompts))), prompts, comps, 0, 8)[0]


def logprobs_and_grads(model, mb, share_prompt: bool, bf16: bool = False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logp, _ = completion_logprobs(model, mb, 1.0, share_prompt=share_prompt)
    logp = logp.float() * mb.completion_mask
    logp.sum().backward()
    return logp.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_matches_the_formula_and_its_gradient_is_right():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 5, 8, dtype=torch.float64, requires_grad=True)  # (B, H, Q, D)
    k = torch.randn(2, 2, 7, 8, dtype=torch.float64, requires_grad=True)  # (B, Hkv, K, D)
    v = torch.randn(2, 2, 7, 8, dtype=torch.float64, requires_grad=True)
    mask = attention.causal_mask(5, 7, "cpu").expand(2, 1, 5, 7).clone()
    mask[1, :, :, :2] = False  # row 1's first two keys are padding
    out = attention.matmul_attention(q, k, v, mask, 8 ** -0.5)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)  # head h reads key/value head h // 2
    scores = (q @ kk.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ vv, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b, c: attention.matmul_attention(a, b, c, mask, 0.3), (q, k, v))


def test_causal_mask_is_the_last_queries_of_the_keys():
    assert attention.causal_mask(2, 4, "cpu")[0, 0].tolist() == [[True, True, True, False], [True, True, True, True]]


@pytest.mark.parametrize("share_prompt", [True, False])
def test_fp32_log_probs_and_gradients_match_sdpa(budget, share_prompt):
    sdpa, matmul = models(budget(1.0))
    mb = batch()
    lp_s, g_s = logprobs_and_grads(sdpa, mb, share_prompt)
    lp_m, g_m = logprobs_and_grads(matmul, mb, share_prompt)
    assert not torch.equal(g_s, g_m)  # another computation ran, not SDPA again
    torch.testing.assert_close(lp_m, lp_s, rtol=0, atol=1e-5)
    assert ((g_m - g_s).norm() / g_s.norm()).item() < 1e-5


def test_bf16_is_as_close_to_fp32_as_sdpa_is(budget):
    sdpa, matmul = models(budget(1.0))
    mb = batch()
    lp_ref, g_ref = logprobs_and_grads(sdpa, mb, True)
    errors = {}
    for name, model in (("sdpa", sdpa), ("matmul", matmul)):
        lp, g = logprobs_and_grads(model, mb, True, bf16=True)
        errors[name] = ((lp - lp_ref).abs().max().item(), ((g - g_ref).norm() / g_ref.norm()).item())
    assert errors["matmul"][0] < 2 * errors["sdpa"][0] and errors["matmul"][1] < 2 * errors["sdpa"][1], errors


def test_over_the_budget_it_is_sdpa(budget):
    sdpa, matmul = models(budget(1e-9))
    mb = batch()
    lp_s, g_s = logprobs_and_grads(sdpa, mb, True)
    lp_m, g_m = logprobs_and_grads(matmul, mb, True)
    assert torch.equal(lp_s, lp_m) and torch.equal(g_s, g_m)


def test_budget_zero_loads_sdpa_and_generation_matches(budget):
    assert budget(0) == "sdpa"
    sdpa, matmul = models(budget(1.0))
    prompt = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        a = sdpa.eval().generate(prompt, max_new_tokens=12, do_sample=False)
        b = matmul.eval().generate(prompt, max_new_tokens=12, do_sample=False)
    assert a.tolist() == b.tolist()
