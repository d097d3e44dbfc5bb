"""Clip-Cov / KL-Cov (arXiv 2505.22617) on tiny hand-computed tensors (grpo_trainer/algo/covariance.py)."""

import pytest
import torch

from grpo_trainer.algo import cov_controlled_loss, logp_adv_covariance, select_covariance_tokens

# Four loss tokens: log pi mean -1.5 -> centred [1.5, 0.5, -0.5, -1.5]; A mean 0.5 -> centred
# [1.5, 1.5, -1.5, -1.5]; cov_t = [2.25, 0.75, 0.75, 2.25].
LOGP = torch.tensor([0.0, -1.0, -2.0, -3.0])
ADV = torch.tensor([2.0, 2.0, -1.0, -1.0])


def test_covariance_per_token_and_its_mean():
    cov = logp_adv_covariance(LOGP, ADV)
    assert cov.dtype == torch.float64
    assert cov.tolist() == [2.25, 0.75, 0.75, 2.25]
    # its mean is the batch covariance E[lA] - E[l]E[A] = 0.75 - (-1.5)(0.5) = 1.5
    assert cov.mean().item() == 1.5
    assert logp_adv_covariance(torch.zeros(0), torch.zeros(0)).numel() == 0


def test_kl_cov_takes_the_largest_covariances_ties_by_position():
    cov = logp_adv_covariance(LOGP, ADV)
    # k = max(1, int(0.5 * 4)) = 2: the two 2.25s
    assert select_covariance_tokens(cov, "kl_cov", 0.5).tolist() == [True, False, False, True]
    # k = 1: of the tied 2.25s, the first
    assert select_covariance_tokens(cov, "kl_cov", 0.25).tolist() == [True, False, False, False]
    # int(1e-4 * 4) = 0, but at least one token is taken
    assert select_covariance_tokens(cov, "kl_cov", 1e-4).tolist() == [True, False, False, False]
    assert not select_covariance_tokens(cov, "none", 0.5).any()


def test_clip_cov_draws_from_the_covariance_band_reproducibly():
    cov = logp_adv_covariance(LOGP, ADV)
    # band (1, 5): tokens 0 and 3 (2.25); k = 1 of them, drawn by the generator
    draws = [select_covariance_tokens(cov, "clip_cov", 0.25, 1.0, 5.0, torch.Generator().manual_seed(s))
             for s in range(8)]
    assert all(d.sum() == 1 and (d[0] or d[3]) for d in draws)
    assert {int(d.nonzero()) for d in draws} == {0, 3}  # both occur over 8 seeds
    again = select_covariance_tokens(cov, "clip_cov", 0.25, 1.0, 5.0, torch.Generator().manual_seed(3))
    assert torch.equal(again, draws[3])
    # k = 4 > 2 candidates: all candidates; band (0.5, 1): the two 0.75s; band (3, 5): none
    assert select_covariance_tokens(cov, "clip_cov", 1.0, 1.0, 5.0).tolist() == [True, False, False, True]
    assert select_covariance_tokens(cov, "clip_cov", 1.0, 0.5, 1.0).tolist() == [False, True, True, False]
    assert not select_covariance_tokens(cov, "clip_cov", 1.0, 3.0, 5.0).any()


def test_clip_cov_zeroes_the_loss_and_gradient_of_selected_tokens():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -4.0]], requires_grad=True)
    per_token = -torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]]) * logp  # -A log pi
    selected = torch.tensor([[False, True, False], [True, False, False]])
    out = cov_controlled_loss(per_token, logp, logp.detach(), selected, "clip_cov")
    assert torch.allclose(out, torch.tensor([[1.0, 0.0, 0.5], [0.0, -0.6, -8.0]]))
    out.sum().backward()
    # d(-A log pi)/d log pi = -A, 0 where selected
    assert logp.grad.tolist() == [[-1.0, 0.0, -1.0], [0.0, 2.0, 2.0]]


def test_kl_cov_adds_the_absolute_log_ratio_penalty_on_selected_tokens():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -4.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0, -0.5], [-0.2, -0.8, -3.0]])
    per_token = torch.zeros(2, 3) * logp
    selected = torch.tensor([[True, True, False], [False, True, True]])
    out = cov_controlled_loss(per_token, logp, old, selected, "kl_cov", kl_coef=2.0)
    # 2 * |logp - old| where selected: |0.5| -> 1, |-1| -> 2, |0.5| -> 1, |-1| -> 2
    assert torch.allclose(out, torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 2.0]]))
    out.sum().backward()
    # 2 * sign(logp - old) where selected
    assert logp.grad.tolist() == [[2.0, -2.0, 0.0], [0.0, 2.0, -2.0]]
    # at pi = pi_old (the first pass) the penalty and its gradient are 0
    logp.grad = None
    cov_controlled_loss(torch.zeros(2, 3) * logp, logp, logp.detach(), selected, "kl_cov", kl_coef=2.0).sum().backward()
    assert logp.grad.abs().sum().item() == 0.0


def test_bad_arguments_are_one_line_errors():
    cov = logp_adv_covariance(LOGP, ADV)
    with pytest.raises(ValueError, match="unknown entropy control 'clipcov'; choose one of none, clip_cov, kl_cov"):
        select_covariance_tokens(cov, "clipcov", 0.1)
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
        select_covariance_tokens(cov, "kl_cov", 0.0)
    with pytest.raises(ValueError, match="need low < high"):
        select_covariance_tokens(cov, "clip_cov", 0.1, 5.0, 1.0)
    with pytest.raises(ValueError, match="1-D of the same length"):
        logp_adv_covariance(LOGP, ADV[:3])
