import math

import pytest
import torch

from grpo_trainer.algo import aggregate_loss, clipped_policy_loss, tis_weights

NAN, INF = float("nan"), float("inf")
EPS_LOW, EPS_HIGH = 0.2, 0.28  # clip range [0.8, 1.28]


def hand_example():
    # row 0, A = +1: ratios 1.1 (inside), 1.5 (> 1.28, clipped high), pad with NaN logp
    # row 1, A = -2: ratios 0.5 (< 0.8, clipped low), 1.5 (unclipped pessimistic branch), pad inf
    old = torch.zeros(2, 3, dtype=torch.float64)
    logp = torch.tensor(
        [[math.log(1.1), math.log(1.5), NAN], [math.log(0.5), math.log(1.5), INF]],
        dtype=torch.float64,
        requires_grad=True,
    )
    mask = torch.tensor([[True, True, False], [True, True, False]])
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    return logp, old, adv, mask


def test_clipped_loss_hand_values_and_gradients():
    logp, old, adv, mask = hand_example()
    loss, stats = clipped_policy_loss(logp, old, adv, mask, EPS_LOW, EPS_HIGH)
    # row 0: -min(1.1*1, 1.1*1) = -1.1;  -min(1.5*1, 1.28*1) = -1.28
    # row 1: -min(0.5*-2, 0.8*-2) = -min(-1, -1.6) = 1.6;  -min(1.5*-2, 1.28*-2) = -(-3) = 3
    expected = torch.tensor([[-1.1, -1.28, 0.0], [1.6, 3.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(loss, expected, atol=1e-12)
    loss.sum().backward()
    # d(-ratio*A)/dlogp = -ratio*A: token (0,0) -> -1.1, token (1,1) -> -1.5*-2 = 3;
    # clipped tokens (0,1), (1,0) exactly 0; pads exactly 0 despite NaN/inf logp
    expected_grad = torch.tensor([[-1.1, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(logp.grad, expected_grad, atol=1e-12)
    assert logp.grad[0, 1] == 0 and logp.grad[1, 0] == 0
    assert logp.grad[0, 2] == 0 and logp.grad[1, 2] == 0
    # 4 masked-in tokens: one clipped low (ratio .5, A<0), one clipped high (ratio 1.5, A>0)
    assert stats["clip_frac_low"].item() == 0.25
    assert stats["clip_frac_high"].item() == 0.25
    assert stats["dual_clip_frac"].item() == 0.0
    assert not any(v.requires_grad for v in stats.values())


def test_nan_advantage_and_old_logp_in_pad_do_not_leak():
    logp = torch.tensor([[0.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.0, -INF]])
    adv = torch.tensor([[1.0, NAN]])  # per-token advantages
    loss, _ = clipped_policy_loss(logp, old, adv, torch.tensor([[1.0, 0.0]]), EPS_LOW, EPS_HIGH)
    # token 0 at ratio 1: -1 * 1 = -1; pad 0
    assert loss.tolist() == [[-1.0, 0.0]]
    loss.sum().backward()
    assert logp.grad.tolist() == [[-1.0, 0.0]]


def test_gradient_at_ratio_one_is_plain_policy_gradient():
    # ratio 1 sits inside the clip range: gradient of the loss w.r.t. logp is -A
    logp = torch.tensor([[0.3, -1.2], [-0.5, -2.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([0.7, -0.3], dtype=torch.float64)
    loss, stats = clipped_policy_loss(logp, logp.detach().clone(), adv, torch.ones(2, 2), 0.2, 0.2)
    loss.sum().backward()
    expected = torch.tensor([[-0.7, -0.7], [0.3, 0.3]], dtype=torch.float64)
    assert torch.allclose(logp.grad, expected, atol=1e-12)
    assert stats["clip_frac_low"].item() == 0.0 and stats["clip_frac_high"].item() == 0.0


def test_dual_clip_caps_negative_advantage_loss():
    # A = -2, c = 3 -> loss capped at -c*A = 6.
    # ratio 2: -min(-4, 1.28*-2 = -2.56) = 4 < 6, kept;  ratio 4: -min(-8, -2.56) = 8 -> capped 6
    # A = +1, ratio 4: -min(4, 1.28) = -1.28 (dual clip only acts on A < 0)
    logp = torch.tensor([[math.log(2.0), math.log(4.0)], [math.log(4.0), 0.0]],
                        dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = clipped_policy_loss(logp, torch.zeros(2, 2, dtype=torch.float64), adv, mask,
                                      EPS_LOW, EPS_HIGH, dual_clip_c=3.0)
    assert torch.allclose(loss, torch.tensor([[4.0, 6.0], [-1.28, 0.0]], dtype=torch.float64))
    loss.sum().backward()
    # ratio-2 token keeps gradient -ratio*A = 4; the dual-clipped token gets exactly 0
    assert torch.allclose(logp.grad, torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    # 3 tokens: 1 dual-clipped, 1 high-clipped (ratio 4, A>0), 0 low-clipped
    assert stats["dual_clip_frac"].item() == pytest.approx(1 / 3)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 3)
    assert stats["clip_frac_low"].item() == 0.0


def test_aggregate_hand_values():
    # masked positions hold 100 to prove they are ignored
    per_token = torch.tensor([[1.0, 2.0, 100.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # token_mean: (1+2+4+5+6)/5 = 18/5 = 3.6
    assert aggregate_loss(per_token, mask, "token_mean", 5, 2, 4).item() == pytest.approx(3.6)
    # seq_mean_token_mean: ((1+2)/2 + (4+5+6)/3) / 2 = (1.5 + 5) / 2 = 3.25
    got = aggregate_loss(per_token, mask, "seq_mean_token_mean", 5, 2, 4)
    assert got.item() == pytest.approx(3.25)
    # seq_mean_token_sum_norm: 18 / (2 * 4) = 2.25
    got = aggregate_loss(per_token, mask, "seq_mean_token_sum_norm", 5, 2, 4)
    assert got.item() == pytest.approx(2.25)
    # global normalisers: the same micro-batch as part of a 10-token / 4-seq step -> 18/10 = 1.8
    assert aggregate_loss(per_token, mask, "token_mean", 10, 4, 4).item() == pytest.approx(1.8)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_micro_batch_gradient_invariance(mode):
    gen = torch.Generator().manual_seed(0)
    n, t = 8, 6
    logp0 = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 3
    old = logp0 + 0.3 * torch.randn(n, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    num_tokens, num_seqs, max_len = float(mask.sum()), float(n), t

    def step(logp, rows):
        per_token, _ = clipped_policy_loss(logp[rows], old[rows], adv[rows], mask[rows], 0.2, 0.28)
        return aggregate_loss(per_token, mask[rows], mode, num_tokens, num_seqs, max_len)

    full = logp0.clone().requires_grad_(True)
    full_loss = step(full, slice(None))
    full_loss.backward()

    micro = logp0.clone().requires_grad_(True)
    total = 0.0
    for i in range(0, n, 2):  # 4 micro-batches of 2 rows
        part = step(micro, slice(i, i + 2))
        part.backward()
        total += part.item()

    assert abs(total - full_loss.item()) < 1e-12
    assert torch.allclose(micro.grad, full.grad, atol=1e-12, rtol=0)
    assert full.grad.abs().sum() > 0  # the data exercise real, mostly unclipped gradients


def test_tis_weights_truncate_and_detach():
    trainer = torch.tensor([[0.0, math.log(2.0), math.log(10.0), 50.0]], requires_grad=True)
    rollout = torch.zeros(1, 4)
    # ratios 1, 2, 10, e^50 -> min(., 5) = 1, 2, 5, 5 (no overflow to inf)
    w = tis_weights(trainer, rollout, cap=5.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 5.0, 5.0]]))
    assert not w.requires_grad
    rollout = torch.tensor([[0.0, 0.0, 0.0, NAN]])
    w = tis_weights(trainer, rollout, 5.0, mask=torch.tensor([[1, 1, 1, 0]]))
    assert w.tolist() == [[1.0, pytest.approx(2.0), pytest.approx(5.0), 0.0]]


def test_invalid_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="choose one of token_mean, seq_mean_token_mean"):
        aggregate_loss(x, x.bool(), "sum", 1, 1, 1)
    with pytest.raises(ValueError, match="num_tokens must be"):
        aggregate_loss(x, x.bool(), "token_mean", 0, 1, 1)
    with pytest.raises(ValueError, match="advantages shape"):
        clipped_policy_loss(x, x, torch.zeros(3), x.bool(), 0.2, 0.2)
    with pytest.raises(ValueError, match="dual_clip_c must be > 1"):
        clipped_policy_loss(x, x, torch.zeros(2), x.bool(), 0.2, 0.2, dual_clip_c=0.5)
    with pytest.raises(ValueError, match="mask shape"):
        clipped_policy_loss(x, x, torch.zeros(2), torch.ones(2, 2), 0.2, 0.2)
