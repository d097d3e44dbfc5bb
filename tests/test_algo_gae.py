"""GAE, token rewards, the clipped value loss, whitening and explained variance (algo/gae.py)
against hand-computed values and the identities the GAE paper states (arXiv 1506.02438 sec. 3)."""

from __future__ import annotations

import pytest
import torch

from grpo_trainer import algo

ONE = torch.ones(1, 4, dtype=torch.bool)
R = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
V = torch.tensor([[0.5, 0.4, 0.3, 0.2]])


def test_gae_on_one_sequence_by_hand():
    # gamma 0.9, lambda 0.8 (gamma*lambda = 0.72), V after the last token = 0:
    # delta_3 = 1 - 0.2 = 0.8                      A_3 = 0.8
    # delta_2 = 0.9*0.2 - 0.3 = -0.12              A_2 = -0.12 + 0.72*0.8 = 0.456
    # delta_1 = 0.9*0.3 - 0.4 = -0.13              A_1 = -0.13 + 0.72*0.456 = 0.19832
    # delta_0 = 0.9*0.4 - 0.5 = -0.14              A_0 = -0.14 + 0.72*0.19832 = 0.0027904
    adv, ret = algo.gae_advantages(R, V, ONE, gamma=0.9, lam=0.8)
    assert adv.tolist()[0] == pytest.approx([0.0027904, 0.19832, 0.456, 0.8], abs=1e-6)
    assert ret.tolist()[0] == pytest.approx([0.5027904, 0.59832, 0.756, 1.0], abs=1e-6)


def test_lambda_one_is_the_monte_carlo_return_minus_v():
    adv, ret = algo.gae_advantages(R, V, ONE, gamma=0.9, lam=1.0)
    mc = torch.tensor([[0.9**3, 0.9**2, 0.9, 1.0]])  # discounted return-to-go of the final reward
    assert torch.allclose(adv, mc - V, atol=1e-6)
    assert torch.allclose(ret, mc, atol=1e-6)


def test_lambda_zero_is_the_td0_residual():
    adv, _ = algo.gae_advantages(R, V, ONE, gamma=0.9, lam=0.0)
    next_v = torch.tensor([[0.4, 0.3, 0.2, 0.0]])
    assert torch.allclose(adv, R + 0.9 * next_v - V, atol=1e-7)


def test_gamma_lambda_one_with_zero_values_is_the_reinforce_return():
    rewards = torch.tensor([[0.5, 0.0, -0.25, 1.0]])
    adv, ret = algo.gae_advantages(rewards, torch.zeros(1, 4), ONE, gamma=1.0, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([1.25, 0.75, 0.75, 1.0])
    assert torch.equal(adv, ret)


def test_masked_positions_contribute_nothing_and_stop_nothing():
    # The same 4 states with a masked token (a pad, or a tool's output) after state 1 and pads at
    # the end: the masked positions get 0 and the counted states' values are unchanged, whatever
    # reward and value the masked positions hold.
    rewards = torch.tensor([[0.0, 0.0, 7.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, -9.0, 0.3, 0.2, 3.0]])
    mask = torch.tensor([[True, True, False, True, True, False]])
    adv, ret = algo.gae_advantages(rewards, values, mask, gamma=0.9, lam=0.8)
    ref_adv, ref_ret = algo.gae_advantages(R, V, ONE, gamma=0.9, lam=0.8)
    assert torch.equal(adv[mask], ref_adv[0]) and torch.equal(ret[mask], ref_ret[0])
    assert adv[~mask].tolist() == [0.0, 0.0] and ret[~mask].tolist() == [0.0, 0.0]


def test_rows_are_independent():
    rewards = torch.cat([R, torch.tensor([[0.0, 2.0, 0.0, 0.0]])])
    values = torch.cat([V, torch.tensor([[1.0, 1.0, 0.0, 0.0]])])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    adv, _ = algo.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    ref, _ = algo.gae_advantages(R, V, ONE, gamma=1.0, lam=1.0)
    assert torch.equal(adv[0], ref[0])
    assert adv[1].tolist() == [1.0, 1.0, 0.0, 0.0]  # returns-to-go 2, 2 minus V 1, 1


@pytest.mark.parametrize("gamma,lam", [(0.0, 0.9), (1.1, 0.9), (1.0, -0.1), (1.0, 1.5)])
def test_out_of_range_gamma_or_lambda_is_refused(gamma, lam):
    with pytest.raises(ValueError, match="0 < gamma <= 1"):
        algo.gae_advantages(R, V, ONE, gamma=gamma, lam=lam)


def test_token_rewards_put_the_score_on_the_last_trained_token_and_the_kl_on_every_one():
    mask = torch.tensor([[True, True, False], [True, False, True], [False, False, False]])
    kl = torch.tensor([[0.1, 0.2, 9.0], [0.3, 9.0, -0.4], [9.0, 9.0, 9.0]])
    r = algo.token_rewards(torch.tensor([1.0, 0.5, 3.0]), mask, kl, beta=0.5)
    assert torch.allclose(r, torch.tensor([[-0.05, 0.9, 0.0], [-0.15, 0.0, 0.7], [0.0, 0.0, 0.0]]))
    assert algo.token_rewards(torch.tensor([1.0, 0.5, 3.0]), mask).tolist() == [[0, 1, 0], [0, 0, 0.5], [0, 0, 0]]


def test_clipped_value_loss_by_hand():
    # c = 0.2; per token (V, V_old, R):
    # (1.0, 0.5, 0.0): V moved +0.5 -> clipped 0.7; max(1.0, 0.49) / 2 = 0.5       (unclipped wins)
    # (1.0, 0.5, 2.0): clipped 0.7; max(1.0, 1.69) / 2 = 0.845                      (clipped wins)
    # (0.1, 0.0, 0.5): inside the band; (0.4)^2 / 2 = 0.08                          (equal terms)
    # (-0.5, 0.0, 0.5): clipped -0.2; max(1.0, 0.49) / 2 = 0.5                       (unclipped wins)
    values = torch.tensor([[1.0, 1.0, 0.1, -0.5]], requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    ret = torch.tensor([[0.0, 2.0, 0.5, 0.5]])
    per_token, stats = algo.clipped_value_loss(values, old, ret, ONE, clip=0.2)
    assert per_token.tolist()[0] == pytest.approx([0.5, 0.845, 0.08, 0.5])
    assert stats["clip_frac"].item() == pytest.approx(0.25)
    per_token.sum().backward()
    # d/dV: V - R where the unclipped term wins, 0 where the clipped one does (its V is clamped).
    assert values.grad.tolist()[0] == pytest.approx([1.0, 0.0, -0.4, -1.0])
    plain, stats = algo.clipped_value_loss(values.detach(), old, ret, ONE, clip=None)
    assert plain.tolist()[0] == pytest.approx([0.5, 0.5, 0.08, 0.5]) and stats["clip_frac"].item() == 0


def test_whitening_and_explained_variance_from_summed_moments():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, 99.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # Two "processes" holding one row each: their moments add up to the whole batch's.
    moments = algo.masked_moments(x[:1], mask[:1]) + algo.masked_moments(x[1:], mask[1:])
    assert moments.tolist() == [4.0, 10.0, 30.0]
    w = algo.whiten(x, mask, moments, eps=0.0)
    std = 1.25**0.5  # population std of 1, 2, 3, 4
    assert torch.allclose(w, torch.tensor([[-1.5 / std, -0.5 / std, 0.0], [0.5 / std, 1.5 / std, 0.0]]))
    returns = x
    assert algo.explained_variance(algo.value_moments(returns, returns, mask)) == pytest.approx(1.0)
    mean = torch.full_like(x, 2.5)
    assert algo.explained_variance(algo.value_moments(mean, returns, mask)) == pytest.approx(0.0)
    # V = R - 1 everywhere: the residual is constant, so the variance is all explained.
    assert algo.explained_variance(algo.value_moments(returns - 1, returns, mask)) == pytest.approx(1.0)
    assert algo.explained_variance(algo.value_moments(-returns, returns, mask)) == pytest.approx(-3.0)


def test_gae_is_registered_as_a_critic_estimator_and_not_a_group_one():
    entry = algo.ADVANTAGES["gae"]
    assert entry.critic and not entry.grouped and entry.bind({"gamma": 0.9, "lam": 0.8}) == {"gamma": 0.9, "lam": 0.8}
    with pytest.raises(ValueError, match="learned critic"):
        algo.group_advantages(torch.zeros(4), 2, "gae")
