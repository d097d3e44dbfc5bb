"""stats: Wilson intervals and the exact paired (McNemar / sign) test, against hand values and
against independent computations (score-test inversion, brute-force enumeration)."""

from __future__ import annotations

import itertools
import math

import pytest

from grpo_trainer.stats import paired_test, sign_test_p, wilson_interval

Z = 1.959963984540054  # Phi^-1(0.975)


@pytest.mark.parametrize(
    "p_hat, n, lo, hi",
    [
        # z^2/n = 0.38415; center (0.5 + 0.19207) / 1.38415 = 0.5;
        # half = z sqrt(0.025 + 0.38415/40) / 1.38415 = 1.95996 * 0.18602 / 1.38415 = 0.26341
        (0.5, 10, 0.23659, 0.76341),
        # at 0/n the half-width equals the center: upper = 2 (z^2/2n) / (1 + z^2/n) = 0.38415 / 1.38415
        (0.0, 10, 0.0, 0.27753),
        (1.0, 10, 1 - 0.27753, 1.0),  # mirror image of 0/10
        # README's 0.020 on 200 GSM8K problems (4 right): z^2/n = 0.019208, center = 0.029604/1.019208
        # = 0.029046; half = 1.95996 sqrt(0.000098 + 0.00002401) / 1.019208 = 0.021242
        (0.02, 200, 0.00780, 0.05029),
    ],
)
def test_wilson_hand_values(p_hat, n, lo, hi):
    got = wilson_interval(p_hat, n)
    assert got == pytest.approx((lo, hi), abs=1e-5)


@pytest.mark.parametrize("p_hat, n", [(0.02, 200), (0.025, 1319), (0.3, 64), (0.9, 7)])
def test_wilson_ends_are_where_the_score_test_is_exactly_z(p_hat, n):
    # The interval inverts the score test: at each end p, (p_hat - p)^2 = z^2 p (1 - p) / n.
    for p in wilson_interval(p_hat, n):
        assert (p_hat - p) ** 2 == pytest.approx(Z * Z * p * (1 - p) / n, rel=1e-9)


def test_wilson_rejects_bad_input():
    for args, msg in [((0.5, 0), "n >= 1"), ((1.5, 10), "p_hat"), ((0.5, 10, 1.0), "confidence")]:
        with pytest.raises(ValueError, match=msg):
            wilson_interval(*args)


@pytest.mark.parametrize(
    "wins, losses, p",
    [
        (1, 5, 14 / 64),  # 2 (C(6,0) + C(6,1)) / 2^6 = 2 * 7 / 64
        (0, 6, 2 / 64),  # 2 C(6,0) / 2^6
        (9, 3, 598 / 4096),  # 2 (1 + 12 + 66 + 220) / 2^12
        (3, 3, 1.0),  # 2 * 42/64 > 1: capped
        (0, 0, 1.0),  # no discordant pair: no evidence either way
        (0, 1, 1.0),  # 2 * 1/2
    ],
)
def test_sign_test_hand_values(wins, losses, p):
    assert sign_test_p(wins, losses) == pytest.approx(p, rel=1e-12)


def test_sign_test_matches_enumeration_of_every_outcome():
    # Independent: enumerate all 2^n fair-coin sequences and count those at least as far from n/2.
    for n in range(1, 13):
        for wins in range(n + 1):
            far = abs(2 * wins - n)
            count = sum(abs(2 * sum(seq) - n) >= far for seq in itertools.product((0, 1), repeat=n))
            assert sign_test_p(wins, n - wins) == pytest.approx(count / 2**n, rel=1e-12)
    # Thousands of pairs: exact integers, no underflow to 0 or overflow.
    assert sign_test_p(0, 1000) == 2.0**-999  # 2 C(1000, 0) / 2^1000, exactly
    assert sign_test_p(700, 800) == pytest.approx(sign_test_p(800, 700))


def test_paired_test_counts_discordant_problems_only():
    first = [1, 0, 0, 1, 0, 0, 1, 0]
    second = [1, 1, 1, 0, 1, 0, 1, 1]
    # problems 1, 2, 4, 7: only second right (4); problem 3: only first (1); 0, 5, 6 agree.
    res = paired_test(first, second)
    assert (res["n"], res["gained"], res["lost"], res["test"]) == (8, 4, 1, "exact McNemar")
    assert res["first"] == 3 / 8 and res["second"] == 6 / 8
    assert res["p_value"] == pytest.approx(2 * (1 + 5) / 32)  # 2 (C(5,0) + C(5,1)) / 2^5 = 0.375
    # Several samples per problem: the sign test on per-problem accuracies (0.5 vs 0.25 is a loss).
    res = paired_test([0.5, 0.0, 1.0], [0.25, 0.5, 1.0])
    assert (res["gained"], res["lost"], res["test"], res["p_value"]) == (1, 1, "exact sign test", 1.0)
    with pytest.raises(ValueError, match="one score per problem"):
        paired_test([1, 0], [1])


def test_readme_example_is_noise():
    # 0.020 -> 0.025 on 200 problems: at best 5 vs 4 right, e.g. 3 gained and 2 lost:
    # p = 2 (C(5,0) + C(5,1) + C(5,2)) / 2^5 = 2 * 16 / 32 = 1.0; even 5 gained, 4 lost gives p = 1.
    first = [1] * 4 + [0] * 196
    second = [1, 1] + [0, 0] + [1, 1, 1] + [0] * 193
    res = paired_test(first, second)
    assert (res["first"], res["second"], res["gained"], res["lost"]) == (0.02, 0.025, 3, 2)
    assert res["p_value"] == 1.0
    assert math.isclose(sign_test_p(5, 4), 1.0)
