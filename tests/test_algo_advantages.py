import math

import pytest
import torch

from grpo_trainer.algo import group_advantages, reinforce_pp_advantages, reinforce_pp_baseline_advantages

# Two groups of G=3, group-major: prompt 0 -> [1, 2, 3], prompt 1 -> [0, 0, 4].
REWARDS = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0], dtype=torch.float64)


def close(actual, expected, tol=1e-6):
    expected = torch.tensor(expected, dtype=actual.dtype)
    assert torch.allclose(actual, expected, atol=tol, rtol=0), (actual, expected)


def test_grpo_group_scale_uses_unbiased_std():
    # group 0: mean 2, centred [-1, 0, 1], unbiased var (1+0+1)/2 = 1 -> std 1 -> [-1, 0, 1]
    #   (population std sqrt(2/3) = 0.8165 would give +-1.2247 instead)
    # group 1: mean 4/3, centred [-4/3, -4/3, 8/3], var (16/9+16/9+64/9)/2 = 16/3,
    #   std 4/sqrt(3) = 2.309401 -> [-0.577350, -0.577350, 1.154701]
    adv = group_advantages(REWARDS, 3, "grpo", eps=0.0)
    close(adv, [-1.0, 0.0, 1.0, -0.577350, -0.577350, 1.154701])


def test_grpo_eps_is_added_to_std():
    # group 0 with eps 1: -1 / (1 + 1) = -0.5
    adv = group_advantages(REWARDS[:3], 3, "grpo", eps=1.0)
    close(adv, [-0.5, 0.0, 0.5])


def test_grpo_batch_scale():
    # batch mean 10/6 = 5/3; squared deviations 4/9, 1/9, 16/9, 25/9, 25/9, 49/9 sum to 40/3;
    # unbiased var (40/3)/5 = 8/3 -> std 1.632993. Centring stays per group.
    # -> [-1, 0, 1, -4/3, -4/3, 8/3] / 1.632993
    adv = group_advantages(REWARDS, 3, "grpo", scale="batch", eps=0.0)
    close(adv, [-0.612372, 0.0, 0.612372, -0.816497, -0.816497, 1.632993])


def test_grpo_scale_none_equals_dr_grpo():
    # centred only: [-1, 0, 1, -4/3, -4/3, 8/3]
    expected = [-1.0, 0.0, 1.0, -4 / 3, -4 / 3, 8 / 3]
    close(group_advantages(REWARDS, 3, "grpo", scale="none"), expected)
    close(group_advantages(REWARDS, 3, "dr_grpo"), expected)


def test_sqrt_g_scale():
    # sqrt(3) * (r - mean): sqrt(3) = 1.732051; 4/3*sqrt(3) = 2.309401; 8/3*sqrt(3) = 4.618802
    adv = group_advantages(REWARDS, 3, "dr_grpo", scale="sqrt_g")
    close(adv, [-1.732051, 0.0, 1.732051, -2.309401, -2.309401, 4.618802])


def test_rloo():
    # group 0: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5
    # group 1: 0 - (0+4)/2 = -2, -2, 4 - 0 = 4
    adv = group_advantages(REWARDS, 3, "rloo")
    close(adv, [-1.5, 0.0, 1.5, -2.0, -2.0, 4.0])


def test_rloo_group_scale():
    # group 0 std 1 -> unchanged [-1.5, 0, 1.5]; group 1: [-2, -2, 4] / 2.309401
    adv = group_advantages(REWARDS, 3, "rloo", scale="group", eps=0.0)
    close(adv, [-1.5, 0.0, 1.5, -0.866025, -0.866025, 1.732051])


def test_reinforce_with_and_without_baseline():
    close(group_advantages(REWARDS, 3, "reinforce"), [1.0, 2.0, 3.0, 0.0, 0.0, 4.0])
    # batch mean 10/6 = 1.666667
    adv = group_advantages(REWARDS, 3, "reinforce", baseline=True)
    close(adv, [-0.666667, 0.333333, 1.333333, -1.666667, -1.666667, 2.333333])


def test_reinforce_pp_normalises_over_the_whole_batch():
    # batch mean 5/3, unbiased std sqrt(8/3) = 1.632993 (groups play no role):
    # [-2/3, 1/3, 4/3, -5/3, -5/3, 7/3] / 1.632993
    expected = [-0.408248, 0.204124, 0.816497, -1.020621, -1.020621, 1.428869]
    close(reinforce_pp_advantages(REWARDS, 3, eps=0.0), expected)
    close(group_advantages(REWARDS, 3, "reinforce_pp"), expected, tol=1e-5)  # eps = 1e-6
    # = reinforce with the batch-mean baseline, divided by the batch std
    baseline = group_advantages(REWARDS, 3, "reinforce", baseline=True)
    close(reinforce_pp_advantages(REWARDS, 1, eps=0.0), (baseline / REWARDS.std()).tolist())
    # one sample per prompt is fine; an all-equal batch is exactly 0
    assert torch.equal(group_advantages(torch.tensor([0.3, 0.3]), 1, "reinforce_pp"), torch.zeros(2))


def test_reinforce_pp_baseline_divides_group_centred_values_by_their_batch_std():
    # centred per group: [-1, 0, 1, -4/3, -4/3, 8/3]; their mean is 0, sum of squares 38/3,
    # unbiased var 38/15 -> std 1.591645 (grpo with scale=batch divides by 1.632993, the raw
    # rewards' std, instead)
    expected = [-0.628281, 0.0, 0.628281, -0.837708, -0.837708, 1.675416]
    close(reinforce_pp_baseline_advantages(REWARDS, 3, eps=0.0), expected)
    close(group_advantages(REWARDS, 3, "reinforce_pp_baseline"), expected, tol=1e-5)
    # a constant group is 0 but its zeros count in the std: [0, 0, 0, -1, -1, 2], std sqrt(6/5)
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 3.0], dtype=torch.float64)
    close(reinforce_pp_baseline_advantages(r, 3, eps=0.0), [0.0, 0.0, 0.0, -0.912871, -0.912871, 1.825742])
    assert torch.equal(reinforce_pp_baseline_advantages(torch.tensor([0.1] * 3 + [0.0] * 3), 3, eps=0.0),
                       torch.zeros(6))


def test_softmax_estimator_and_stability():
    # G=2, beta=1, rewards [0, ln 3]: exp -> [1, 3], softmax [0.25, 0.75], minus 1/2 -> [-.25, .25]
    r = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
    close(group_advantages(r, 2, "softmax"), [-0.25, 0.25])
    # beta = 0.5 with rewards doubled is the same softmax
    close(group_advantages(2 * r, 2, "softmax", softmax_beta=0.5), [-0.25, 0.25])
    # shift invariance: exp(1000) would overflow a naive implementation
    close(group_advantages(r + 1000.0, 2, "softmax"), [-0.25, 0.25])


DEGENERATE_CASES = [
    (est, scale)
    for est in ("grpo", "dr_grpo", "rloo")
    for scale in (None, "group", "batch", "none", "sqrt_g")
] + [("softmax", None)]


@pytest.mark.parametrize(("estimator", "scale"), DEGENERATE_CASES)
def test_group_of_one_and_constant_groups_are_exactly_zero(estimator, scale):
    # group of one: no std, no other samples -> 0
    adv = group_advantages(torch.tensor([5.0, -2.0, 0.3]), 1, estimator, scale=scale, eps=0.0)
    assert torch.equal(adv, torch.zeros(3))
    # mean([0.1]*3) is not exactly 0.1 in floating point; still exactly 0, not NaN, with eps=0
    r = torch.tensor([0.1, 0.1, 0.1, 0.0, 0.0, 0.0])
    adv = group_advantages(r, 3, estimator, scale=scale, eps=0.0)
    assert torch.equal(adv, torch.zeros(6))


def test_reinforce_baseline_on_constant_batch_is_exactly_zero():
    # raw reward by design; with the batch-mean baseline an all-equal batch gives exactly 0
    r = torch.tensor([0.1, 0.1, 0.1])
    assert torch.equal(group_advantages(r, 3, "reinforce", baseline=True), torch.zeros(3))


def test_constant_group_next_to_informative_group():
    # group 0 constant -> 0; group 1 [0, 1]: mean .5, unbiased std sqrt(.5) = .707107 -> -+.707107
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    close(group_advantages(r, 2, "grpo", eps=0.0), [0.0, 0.0, -0.707107, 0.707107])


def test_low_precision_and_integer_rewards_computed_in_fp32():
    adv = group_advantages(torch.tensor([1, 2, 3]), 3, "grpo", eps=0.0)
    assert adv.dtype == torch.float32
    close(adv, [-1.0, 0.0, 1.0])
    adv = group_advantages(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16), 3, "grpo", eps=0.0)
    assert adv.dtype == torch.float32


def test_invalid_arguments():
    with pytest.raises(ValueError, match="not divisible by group_size=4"):
        group_advantages(REWARDS, 4, "grpo")
    with pytest.raises(ValueError, match="grpo, dr_grpo, rloo, reinforce, softmax, reinforce_pp, reinforce_pp_baseline"):
        group_advantages(REWARDS, 3, "ppo")
    with pytest.raises(ValueError, match="group, batch, none, sqrt_g"):
        group_advantages(REWARDS, 3, "grpo", scale="global")
    with pytest.raises(ValueError, match="does not apply"):
        group_advantages(REWARDS, 3, "softmax", scale="group")
    with pytest.raises(ValueError, match="NaN or inf"):
        group_advantages(torch.tensor([1.0, float("nan")]), 2, "grpo")
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(REWARDS.view(2, 3), 3, "grpo")
