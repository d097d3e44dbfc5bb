"""algorithm.entropy_control in the micro-batched update (update.py + entropy_control.py) on the tiny
fp64 Llama of test_update.py: the step's tokens are chosen once over the whole batch, so 1 and 4
micro-batches give the same update, and Clip-Cov equals the objective with those tokens' loss
removed by hand."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from grpo_trainer import algo
from grpo_trainer.forward import completion_logprobs, pack
from test_update import FP32_ROUNDING, MAX_LEN, base_model, rows_of, run_update, step_batch  # noqa: F401 (fixtures)

# Engine log-probs that vary by token and row, so log pi x A has a spread (test_update's are all -1).
LENGTHS = [3, 8, 5, 1, 7, 2, 8, 4]  # step_batch's rows: 38 loss tokens


@pytest.fixture(scope="module")
def varied(step_batch):
    t = torch.arange(step_batch.logprobs.shape[1], dtype=torch.float32)
    row = torch.arange(8, dtype=torch.float32).unsqueeze(1)
    logprobs = torch.where(step_batch.valid, -0.1 * ((t * 7 + row * 3) % 11) - 0.05, 0.0)
    return dataclasses.replace(step_batch, logprobs=logprobs)


def chosen(batch, method: str, ratio: float, seed: int = 0) -> torch.Tensor:
    """The (N, C) selection computed on its own from the record's flat loss tokens."""
    mask = batch.loss_mask
    cov = algo.logp_adv_covariance(batch.logprobs[mask], batch.advantages[mask])
    gen = torch.Generator().manual_seed(seed)
    flat = algo.select_covariance_tokens(cov, method, ratio, 0.0, 100.0, gen)
    out = torch.zeros_like(mask)
    out[mask] = flat
    return out


def test_logged_covariance_is_the_mean_of_the_centred_products(base_model, varied):
    _, metrics = run_update(base_model, varied, micro_batch_size=3)
    mask = varied.loss_mask
    lp, a = varied.logprobs[mask].double(), varied.advantages[mask].double()
    by_hand = ((lp - lp.mean()) * (a - a.mean())).mean().item()
    assert abs(by_hand) > 1e-3
    assert metrics["train/logp_adv_cov"] == pytest.approx(by_hand, rel=1e-9)
    assert metrics["train/cov_controlled_frac"] == 0.0  # entropy_control = none


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean"])
def test_clip_cov_is_the_objective_without_the_chosen_tokens(base_model, varied, mode):
    kw = dict(entropy_control="clip_cov", clip_cov_ratio=0.25, clip_cov_low=0.0, clip_cov_high=100.0, loss_agg=mode)
    one, m1 = run_update(base_model, varied, micro_batch_size=8, **kw)
    four, m4 = run_update(base_model, varied, micro_batch_size=1, **kw)
    assert max((a - b).abs().max().item() for a, b in zip(one, four)) < 1e-6
    sel = chosen(varied, "clip_cov", 0.25)
    # k = int(0.25 * 38) = 9 tokens, drawn from those with positive covariance
    assert int(sel.sum()) == 9 and m1["train/cov_controlled_frac"] == m4["train/cov_controlled_frac"] == 9 / 38
    # The same objective written out: every row in one forward, the chosen tokens' loss set to 0
    # (they stay in the normalisers).
    model = copy.deepcopy(base_model)
    prompts, completions, advantages, _ = rows_of(varied)
    mb = pack(list(range(8)), prompts, completions, 0)
    logp, _ = completion_logprobs(model, mb, 1.0)
    per_tok, _ = algo.clipped_policy_loss(logp, logp.detach(), advantages, mb.completion_mask, 0.2, 0.2)
    per_tok = torch.where(sel[:, :logp.shape[1]], 0.0, per_tok)
    algo.aggregate_loss(per_tok, mb.completion_mask, mode, 38.0, 8.0, MAX_LEN).backward()
    direct = [p.grad for p in model.parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(one, direct)) < FP32_ROUNDING
    plain, _ = run_update(base_model, varied, micro_batch_size=8, loss_agg=mode)
    assert max((a - b).abs().max().item() for a, b in zip(one, plain)) > 1e-4  # the control did something


def test_clip_cov_draw_follows_the_seed(base_model, varied):
    assert torch.equal(chosen(varied, "clip_cov", 0.25, seed=0), chosen(varied, "clip_cov", 0.25, seed=0))
    assert not torch.equal(chosen(varied, "clip_cov", 0.25, seed=0), chosen(varied, "clip_cov", 0.25, seed=1))


def test_kl_cov_acts_from_the_second_pass_and_is_micro_batch_invariant(base_model, varied):
    kw = dict(entropy_control="kl_cov", kl_cov_ratio=0.1, kl_cov_coef=5.0, num_iterations=2)
    one, m1 = run_update(base_model, varied, micro_batch_size=8, **kw)
    four, _ = run_update(base_model, varied, micro_batch_size=1, **kw)
    scale = max(a.abs().max().item() for a in one)
    assert max((a - b).abs().max().item() for a, b in zip(one, four)) < FP32_ROUNDING * scale
    assert m1["train/cov_controlled_frac"] == 3 / 38  # k = int(0.1 * 38) = 3
    # The penalty changes the second pass only: one pass with KL-Cov is the plain update.
    plain2, _ = run_update(base_model, varied, micro_batch_size=8, num_iterations=2)
    assert max((a - b).abs().max().item() for a, b in zip(one, plain2)) > 1e-6
    once, _ = run_update(base_model, varied, micro_batch_size=8, entropy_control="kl_cov", kl_cov_ratio=0.1,
                         kl_cov_coef=5.0)
    plain1, _ = run_update(base_model, varied, micro_batch_size=8)
    assert max((a - b).abs().max().item() for a, b in zip(once, plain1)) < FP32_ROUNDING
