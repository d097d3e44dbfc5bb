import math

import pytest
import torch

from grpo_trainer.algo import (
    adaptive_kl_beta,
    group_upweight,
    informative_groups,
    kl_estimate,
    logprob_mismatch,
    overlong_loss_mask,
    soft_overlong_penalty,
)

LN2 = math.log(2.0)


def test_kl_estimators_hand_values():
    logp = torch.tensor([0.0, 0.0, LN2], dtype=torch.float64)
    ref = torch.tensor([0.0, LN2, 0.0], dtype=torch.float64)
    # x = ref - logp = [0, ln2, -ln2]
    # k1 = -x = [0, -0.693147, 0.693147]
    k1 = kl_estimate(logp, ref, "k1")
    assert torch.allclose(k1, torch.tensor([0.0, -LN2, LN2], dtype=torch.float64))
    # k2 = x^2/2 = [0, 0.240227, 0.240227]
    k2 = kl_estimate(logp, ref, "k2")
    assert torch.allclose(k2, torch.tensor([0.0, 0.240227, 0.240227], dtype=torch.float64))
    # k3 = e^x - x - 1 = [0, 2 - 0.693147 - 1, 0.5 + 0.693147 - 1] = [0, 0.306853, 0.193147]
    k3 = kl_estimate(logp, ref, "k3")
    assert torch.allclose(k3, torch.tensor([0.0, 0.306853, 0.193147], dtype=torch.float64))


def test_k3_nonnegative_and_clamped():
    gen = torch.Generator().manual_seed(0)
    logp = torch.randn(64, 32, generator=gen) * 5
    ref = torch.randn(64, 32, generator=gen) * 5
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    # log-ratio 50 is clamped to 20: e^20 - 20 - 1 = 485165174.4; finite, not e^50
    k3 = kl_estimate(torch.tensor([0.0]).double(), torch.tensor([50.0]).double(), "k3")
    assert k3.item() == pytest.approx(math.exp(20.0) - 21.0)
    # log-ratio -1000 is clamped to -20: e^-20 + 20 - 1 = 19.000000002
    k3 = kl_estimate(torch.tensor([1000.0]), torch.tensor([0.0]), "k3")
    assert k3.item() == pytest.approx(19.0)


def test_logprob_mismatch_hand_values():
    engine = torch.tensor([[math.log(0.5), math.log(0.2), -1.0, float("nan")]])
    trainer = torch.tensor([[math.log(0.25), math.log(0.4), -1.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    k3, diff = logprob_mismatch(engine, trainer, mask)
    # x = log(pi_trainer / pi_engine) = [ln(0.25/0.5), ln(0.4/0.2), 0] = [-ln2, ln2, 0]
    # k3 = e^x - x - 1 = [0.5 + 0.693147 - 1, 2 - 0.693147 - 1, 0] = [0.193147, 0.306853, 0]
    # |x| = [0.693147, 0.693147, 0]; the masked NaN engine value gives 0, not NaN
    assert torch.allclose(k3, torch.tensor([[0.193147, 0.306853, 0.0, 0.0]], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(diff, torch.tensor([[LN2, LN2, 0.0, 0.0]], dtype=torch.float64), atol=1e-6)
    # A healthy fp32 engine: x = 1e-5 gives k3 = x^2/2 + x^3/6 = 5.0000167e-11, which fp32's
    # exp(x) - x - 1 cannot resolve (its spacing near 1 is 1.2e-7); the result is fp64.
    k3, _ = logprob_mismatch(torch.tensor([[-2.0]]), torch.tensor([[-2.0 + 1e-5]], dtype=torch.float64),
                             torch.tensor([[True]]))
    assert k3.dtype == torch.float64 and k3.item() == pytest.approx(5.0000167e-11, rel=1e-4)


def test_kl_invalid_estimator():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


def test_adaptive_kl_beta():
    # target 0.02: bounds 1.5 * 0.02 = 0.03 and 0.02 / 1.5 = 0.013333
    assert adaptive_kl_beta(0.1, 0.04, 0.02) == pytest.approx(0.2)  # 0.04 > 0.03 -> x2
    assert adaptive_kl_beta(0.1, 0.01, 0.02) == pytest.approx(0.05)  # 0.01 < 0.0133 -> /2
    assert adaptive_kl_beta(0.1, 0.02, 0.02) == 0.1
    assert adaptive_kl_beta(0.1, 0.029, 0.02) == 0.1
    assert adaptive_kl_beta(0.1, 0.014, 0.02) == 0.1
    with pytest.raises(ValueError, match="target"):
        adaptive_kl_beta(0.1, 0.01, 0.0)


def test_informative_groups():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.1, 0.1, 0.1])
    # [1,1,1] equal; [0,1,0] differ; [0.1]*3 equal despite float noise in the mean
    assert informative_groups(r, 3).tolist() == [False, True, False]
    # groups of one never carry signal
    assert informative_groups(torch.tensor([0.0, 1.0]), 1).tolist() == [False, False]
    with pytest.raises(ValueError, match="not divisible"):
        informative_groups(r, 4)


def test_overlong_loss_mask():
    m = overlong_loss_mask(torch.tensor([True, False, True]))
    assert m.dtype == torch.float32 and m.tolist() == [0.0, 1.0, 0.0]


def test_soft_overlong_penalty_breakpoints():
    # max_len 20, cache 4 -> ramp starts after 16: (16 - L) / 4
    lengths = torch.tensor([0, 16, 17, 18, 20, 21, 100])
    # 0, 0 (L <= 16), -1/4, -2/4, -4/4 (L = max_len), -1, -1 (L > max_len)
    pen = soft_overlong_penalty(lengths, max_len=20, cache_len=4)
    assert pen.tolist() == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0]
    # factor scales everything: 0.5 * (16 - 18) / 4 = -0.25
    pen = soft_overlong_penalty(lengths, max_len=20, cache_len=4, factor=0.5)
    assert pen.tolist() == [0.0, 0.0, -0.125, -0.25, -0.5, -0.5, -0.5]
    with pytest.raises(ValueError, match="cache_len=30 must be <= max_len=20"):
        soft_overlong_penalty(lengths, max_len=20, cache_len=30)


def test_group_upweight():
    # 1 of 4 dropped: 1 / (1 - 1/4) = 4/3
    assert group_upweight(torch.tensor([True, True, False, True])) == pytest.approx(4 / 3)
    assert group_upweight(torch.tensor([True, True])) == 1.0
    assert group_upweight(torch.tensor([False, False])) == 0.0
