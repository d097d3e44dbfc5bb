"""GSPO, GSPO-token, CISPO (algo/objectives.py) and the rollout correction with its mismatch sums
(algo/correction.py): hand-computed values on 2 sequences x 3 tokens, the last token of row 2
masked (NaN there, which must not leak), both advantage signs, clipped and unclipped."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_trainer import algo
from grpo_trainer.config import ConfigError, RolloutCorrectionConfig, load_config, save_config

NAN = float("nan")
E = math.exp
MASK = torch.tensor([[True, True, True], [True, True, False]])
LOGP = [[-1.0, -2.0, -0.5], [-1.5, -0.25, NAN]]
# log(pi / pi_old): row means 0.2 and -0.2, so s = e^0.2 = 1.2214028 and e^-0.2 = 0.8187308
LOG_RATIO = [[0.1, 0.2, 0.3], [-0.3, -0.1, NAN]]


def inputs(adv=(1.0, -2.0), log_ratio=LOG_RATIO):
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    old = logp.detach() - torch.tensor(log_ratio, dtype=torch.float64)
    advantages = torch.tensor(adv, dtype=torch.float64).unsqueeze(1).expand(2, 3)  # per token, as in a record
    return logp, old, advantages


def flat(rows) -> list:
    return [v for row in rows for v in row]


def values(per_token) -> list:
    return flat(per_token.detach().tolist())


def approx(rows, **kw):
    """pytest.approx of a nested (N, T) list."""
    return pytest.approx(flat(rows), **kw)


# --- GSPO -----------------------------------------------------------------------------------

def test_gspo_clipped_at_the_papers_ranges():
    logp, old, adv = inputs()
    per_token, stats = algo.gspo_policy_loss(logp, old, adv, MASK)  # defaults 3e-4 / 4e-4
    # row 1: A = 1, s = 1.2214 > 1.0004: min(1.2214, 1.0004) = 1.0004, clipped high
    # row 2: A = -2, s = 0.8187 < 0.9997: min(-1.6375, -1.9994) = -1.9994, clipped low
    assert values(per_token) == approx([[-1.0004] * 3, [1.9994, 1.9994, 0.0]], abs=1e-12)
    assert stats["clip_frac_high"].item() == pytest.approx(3 / 5)
    assert stats["clip_frac_low"].item() == pytest.approx(2 / 5)
    algo.aggregate_loss(per_token, MASK, "seq_mean_token_mean", 5, 2, 3).backward()
    assert logp.grad.abs().max().item() == 0.0  # both sequences clipped: no gradient, no NaN


def test_gspo_unclipped_value_and_gradient():
    logp, old, adv = inputs()
    per_token, stats = algo.gspo_policy_loss(logp, old, adv, MASK, eps_low=0.3, eps_high=0.3)
    s1, s2 = E(0.2), E(-0.2)
    assert values(per_token) == approx([[-s1] * 3, [2 * s2, 2 * s2, 0.0]], abs=1e-12)
    assert stats["clip_frac_high"].item() == 0 and stats["clip_frac_low"].item() == 0
    # seq_mean_token_mean = (l_1 + l_2) / 2 (eq. 5); d s_i / d logp_t = s_i / |y_i|
    algo.aggregate_loss(per_token, MASK, "seq_mean_token_mean", 5, 2, 3).backward()
    want = [[-1 * s1 / 3 / 2] * 3, [2 * s2 / 2 / 2] * 2 + [0.0]]
    assert flat(logp.grad.tolist()) == approx(want, abs=1e-12)


def test_gspo_bound_inactive_for_the_other_sign():
    # A = -1 with s above 1 + eps, A = +2 with s below 1 - eps: min() keeps the unclipped term.
    logp, old, adv = inputs(adv=(-1.0, 2.0))
    per_token, stats = algo.gspo_policy_loss(logp, old, adv, MASK)
    assert values(per_token) == approx([[E(0.2)] * 3, [-2 * E(-0.2)] * 2 + [0.0]], abs=1e-12)
    assert stats["clip_frac_high"].item() == 0 and stats["clip_frac_low"].item() == 0


def test_gspo_ratio_is_the_geometric_mean_of_token_ratios():
    gen = torch.Generator().manual_seed(0)
    log_ratio = 0.3 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 0]]).bool()
    logp = -torch.rand(4, 6, generator=gen, dtype=torch.float64)
    # A = -1 and a range nothing leaves: the loss of every token is s_i itself.
    per_token, _ = algo.gspo_policy_loss(logp, logp - log_ratio, -torch.ones(4), mask, eps_low=0.99, eps_high=1e6)
    for i in range(4):
        ratios = torch.exp(log_ratio[i][mask[i]])
        geometric = torch.prod(ratios).item() ** (1 / len(ratios))
        assert per_token[i][mask[i]].tolist() == pytest.approx([geometric] * len(ratios), rel=1e-12)


@pytest.mark.parametrize("mode", list(algo.AGGREGATIONS))
@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.3, 0.3)], ids=["clipped", "unclipped"])
def test_gspo_token_equals_gspo_with_one_advantage_per_sequence(mode, eps):
    grads, losses = [], []
    for fn in (algo.gspo_policy_loss, algo.gspo_token_policy_loss):
        logp, old, adv = inputs()
        per_token, stats = fn(logp, old, adv, MASK, *eps)
        loss = algo.aggregate_loss(per_token, MASK, mode, 5, 2, 3)
        loss.backward()
        losses.append((values(per_token), stats["clip_frac_low"].item(), stats["clip_frac_high"].item()))
        grads.append(flat(logp.grad.tolist()))
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-12) and losses[0][1:] == losses[1][1:]
    assert grads[0] == pytest.approx(grads[1], abs=1e-12)


def test_gspo_token_takes_per_token_advantages():
    logp, old, _ = inputs()
    adv = torch.tensor([[1.0, -1.0, 2.0], [0.5, -0.5, NAN]], dtype=torch.float64)
    per_token, stats = algo.gspo_token_policy_loss(logp, old, adv, MASK)
    s1, s2 = E(0.2), E(-0.2)
    # row 1 (s above 1 + eps): A > 0 clipped to 1.0004 A, A < 0 keeps s A; row 2 (s below 1 - eps):
    # A > 0 keeps s A, A < 0 clipped to 0.9997 A
    want = [[-1.0004, s1, -2 * 1.0004], [-0.5 * s2, 0.5 * 0.9997, 0.0]]
    assert values(per_token) == approx(want, abs=1e-12)
    assert stats["clip_frac_high"].item() == pytest.approx(2 / 5)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 5)


# --- CISPO ----------------------------------------------------------------------------------

def test_cispo_upper_clip_only_by_default():
    logp, old, adv = inputs()
    per_token, stats = algo.cispo_policy_loss(logp, old, adv, MASK)  # eps_high 0.28, no lower bound
    # -w A log p with w = min(r, 1.28): row 1 (A = 1) r = 1.1052, 1.2214, 1.3499 -> 1.28;
    # row 2 (A = -2) r = 0.7408, 0.9048, so -w (-2) log p = 2 w log p
    want = [[E(0.1) * 1.0, E(0.2) * 2.0, 1.28 * 0.5], [2 * E(-0.3) * -1.5, 2 * E(-0.1) * -0.25, 0.0]]
    assert values(per_token) == approx(want, abs=1e-12)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 5) and stats["clip_frac_low"].item() == 0
    # The other sign: every value negates, the clip fractions do not depend on A.
    logp, old, adv = inputs(adv=(-1.0, 2.0))
    flipped, stats_f = algo.cispo_policy_loss(logp, old, adv, MASK)
    assert values(flipped) == approx([[-v for v in row] for row in want], abs=1e-12)
    assert stats_f["clip_frac_high"].item() == pytest.approx(1 / 5)


def test_cispo_lower_clip_and_unclipped():
    logp, old, adv = inputs()
    per_token, stats = algo.cispo_policy_loss(logp, old, adv, MASK, eps_high=0.28, eps_low=0.2)
    assert values(per_token)[3:] == pytest.approx([2 * 0.8 * -1.5, 2 * E(-0.1) * -0.25, 0.0], abs=1e-12)
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 5)
    per_token, stats = algo.cispo_policy_loss(logp, old, adv, MASK, eps_high=1.0)
    assert values(per_token)[:3] == pytest.approx([E(0.1) * 1.0, E(0.2) * 2.0, E(0.3) * 0.5], abs=1e-12)
    assert stats["clip_frac_high"].item() == 0


def test_cispo_gradient_is_the_detached_clipped_weight_times_a_times_grad_log_pi():
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64, requires_grad=True)  # logits
    tokens = torch.tensor([[0, 3, 1], [4, 2, 2]])

    def log_pi():
        return torch.log_softmax(theta, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    old = log_pi().detach() - torch.tensor([[0.1, 0.5, -0.4], [0.6, -0.2, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.5, -0.7], dtype=torch.float64)
    per_token, _ = algo.cispo_policy_loss(log_pi(), old, adv, MASK, eps_high=0.28, eps_low=0.2)
    (got,) = torch.autograd.grad(algo.aggregate_loss(per_token, MASK, "token_mean", 5, 2, 3), theta)
    # Independently: sum over loss tokens of -w A grad log pi / 5, w = clip(r, 0.8, 1.28) as a number.
    want = torch.zeros_like(theta)
    for i in range(2):
        for t in range(3):
            if MASK[i, t]:
                w = min(max(math.exp(log_pi()[i, t].item() - old[i, t].item()), 0.8), 1.28)
                (g,) = torch.autograd.grad(log_pi()[i, t], theta)
                want -= w * adv[i].item() * g / 5
    assert torch.allclose(got, want, atol=1e-14, rtol=0) and want.abs().sum() > 0


# --- rollout correction ---------------------------------------------------------------------

# log rho = log pi_trainer - log pi_engine: row 1 0.1, 0.9, -0.8 (rho 1.105, 2.460, 0.449);
# row 2 0.9, 0.7 (rho 2.460, 2.014). Geometric means: e^(0.2/3) = 1.0689, e^0.8 = 2.2255.
LOG_RHO = [[0.1, 0.9, -0.8], [0.9, 0.7, NAN]]


def correction(level, mode, lower=0.5, upper=2.0):
    trainer = torch.tensor(LOGP, dtype=torch.float64)
    engine = trainer - torch.tensor(LOG_RHO, dtype=torch.float64)
    w, changed = algo.correction_weights(trainer, engine.float(), MASK, level, mode, lower, upper)
    return w.tolist(), changed.tolist()


G1, G2 = E(0.2 / 3), E(0.8)
F, T = False, True


@pytest.mark.parametrize("level, mode, lower, weights, changed", [
    ("token", "truncate", 0.5, [[E(0.1), 2.0, E(-0.8)], [2.0, 2.0, 0.0]], [[F, T, F], [T, T, F]]),
    ("token", "mask", 0.5, [[E(0.1), 0.0, 0.0], [0.0, 0.0, 0.0]], [[F, T, T], [T, T, F]]),
    ("token", "mask", 0.4, [[E(0.1), 0.0, E(-0.8)], [0.0, 0.0, 0.0]], [[F, T, F], [T, T, F]]),
    ("sequence", "truncate", 0.5, [[G1] * 3, [2.0, 2.0, 0.0]], [[F, F, F], [T, T, F]]),
    ("sequence", "mask", 0.5, [[G1] * 3, [0.0, 0.0, 0.0]], [[F, F, F], [T, T, F]]),
])
def test_correction_weights(level, mode, lower, weights, changed):
    got_w, got_changed = correction(level, mode, lower)
    assert flat(got_w) == approx(weights, abs=1e-6)  # the engine's log-probs are fp32
    assert got_changed == changed


def test_sequence_mask_keeps_a_sequence_inside_the_band_with_its_geometric_weight():
    w, changed = correction("sequence", "mask", upper=2.5)  # 2.2255 is now inside
    assert flat(w) == approx([[G1] * 3, [G2, G2, 0.0]], abs=1e-6) and not any(map(any, changed))


def test_token_truncate_is_tis_weights_to_the_bit():
    gen = torch.Generator().manual_seed(2)
    trainer, engine = -torch.rand(4, 7, generator=gen) * 3, -torch.rand(4, 7, generator=gen) * 3
    mask = torch.rand(4, 7, generator=gen) > 0.3
    w, _ = algo.correction_weights(trainer, engine, mask, "token", "truncate", 0.5, 2.0)
    assert torch.equal(w, algo.tis_weights(trainer, engine, 2.0, mask))


def test_mismatch_stats_by_hand():
    trainer = torch.tensor(LOGP, dtype=torch.float64)
    engine = (trainer - torch.tensor(LOG_RHO, dtype=torch.float64)).nan_to_num(0.0)
    got = {k: v.item() for k, v in algo.mismatch_stats(engine, trainer, MASK, 0.5, 2.0).items()}
    xs = [0.1, 0.9, -0.8, 0.9, 0.7]
    assert got["k3"] == pytest.approx(sum(E(x) - x - 1 for x in xs), abs=1e-12)
    assert got["abs_diff"] == pytest.approx(3.4) and got["max_abs_diff"] == pytest.approx(0.9)
    assert (got["tokens"], got["tokens_out"], got["seqs"], got["seqs_out"]) == (5, 4, 2, 1)
    got = {k: v.item() for k, v in algo.mismatch_stats(engine, trainer, MASK, 0.4, 2.3).items()}
    assert (got["tokens_out"], got["seqs_out"]) == (2, 0)  # 0.449, 2.014 and 2.2255 are now inside, 2.460 not


def test_bad_arguments_are_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="choose level from token, sequence and mode from truncate, mask"):
        algo.correction_weights(x, x, MASK, "row", "mask", 0.5, 2.0)
    with pytest.raises(ValueError, match="need 0 <= lower <= 1 <= upper"):
        algo.correction_weights(x, x, MASK, "token", "mask", 0.5, 0.9)
    with pytest.raises(ValueError, match="need 0 <= eps_low < 1"):
        algo.gspo_policy_loss(x, x, torch.zeros(2), MASK, eps_low=1.0)
    with pytest.raises(ValueError, match="CISPO eps_low must be in"):
        algo.cispo_policy_loss(x, x, torch.zeros(2), MASK, eps_low=-0.1)


# --- config ---------------------------------------------------------------------------------

def test_the_losses_take_their_own_config_keys():
    cfg = load_config(None, ["algorithm.policy_loss=gspo"]).algorithm
    assert algo.POLICY_LOSSES["gspo"].bind(vars(cfg)) == {"eps_low": 3e-4, "eps_high": 4e-4}
    assert algo.POLICY_LOSSES["gspo_token"].bind(vars(cfg)) == {"eps_low": 3e-4, "eps_high": 4e-4}
    assert algo.POLICY_LOSSES["cispo"].bind(vars(cfg)) == {"eps_low": None, "eps_high": 0.28}


def test_tis_cap_is_the_token_truncate_preset(tmp_path):
    cfg = load_config(None, ["algorithm.tis_cap=3", f"trainer.output_dir={tmp_path}"])
    assert cfg.algorithm.rollout_correction == RolloutCorrectionConfig("token", "truncate", 0.5, 3.0)
    assert cfg.algorithm.tis_cap is None
    new = load_config(None, ["algorithm.rollout_correction={level: token, upper: 3}", f"trainer.output_dir={tmp_path}"])
    assert new == cfg  # so a run saved with the old key resumes with the new one, and back
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["algorithm.tis_cap=2", "algorithm.rollout_correction.level=sequence"])
    assert str(exc.value) == ("algorithm.tis_cap=2 is the old spelling of algorithm.rollout_correction={level: token, "
                              "mode: truncate, upper: 2}: set only rollout_correction")


@pytest.mark.parametrize("override, message", [
    ("algorithm.rollout_correction.level=sequences", "algorithm.rollout_correction.level='sequences' is not allowed: "
                                                     "expected one of 'token', 'sequence' or null (did you mean "
                                                     "'sequence'?)"),
    ("algorithm.rollout_correction.upper=0.5", "algorithm.rollout_correction.upper=0.5 is out of range: expected a "
                                               "float >= 1"),
    ("algorithm.rollout_correction.lower=1.5", "algorithm.rollout_correction.lower=1.5 is out of range: expected a "
                                               "float in [0, 1]"),
    ("algorithm.gspo_eps_low=1", "algorithm.gspo_eps_low=1.0 is out of range: expected a float in [0, 1)"),
    ("algorithm.cispo_eps_low=-1", "algorithm.cispo_eps_low=-1.0 is out of range: expected null or a float in [0, 1)"),
])
def test_bad_values_get_one_line(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert str(exc.value) == message
