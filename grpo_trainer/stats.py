"""How much an accuracy measured on N problems can be trusted: intervals and paired tests.

Pure functions on Python numbers (exact integers where it matters); `evaluate` uses them.
"""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist


def wilson_interval(p_hat: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion p_hat observed on n trials.

    E. B. Wilson, "Probable inference, the law of succession, and statistical inference", JASA
    22 (1927): the p for which the score statistic |p_hat - p| / sqrt(p (1 - p) / n) equals
    z = Phi^-1((1 + confidence) / 2). Unlike the normal (Wald) interval it stays inside [0, 1]
    and does not collapse to a point at 0/n or n/n, which matters for the small accuracies of
    small models. p_hat may be a mean of per-problem scores in [0, 1] (avg@n, pass@k) rather
    than a count over n: such a score X has Var X <= E[X] (1 - E[X]), so the binomial variance
    the interval assumes is an upper bound and the interval is, if anything, too wide.
    """
    if n < 1:
        raise ValueError(f"wilson_interval needs n >= 1 trials, got {n}")
    if not 0.0 <= p_hat <= 1.0:
        raise ValueError(f"wilson_interval needs 0 <= p_hat <= 1, got {p_hat}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)
    z2n = z * z / n
    center = (p_hat + z2n / 2.0) / (1.0 + z2n)
    half = z * math.sqrt(p_hat * (1.0 - p_hat) / n + z2n / (4.0 * n)) / (1.0 + z2n)
    # At 0/n (n/n) the lower (upper) end is 0 (1) exactly; rounding would leave ~1e-17.
    return (0.0 if p_hat == 0.0 else max(0.0, center - half)), (1.0 if p_hat == 1.0 else min(1.0, center + half))


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact p-value that `wins` and `losses` came from a fair coin.

    With wins/losses the discordant pairs of two classifiers on the same items (b: only the
    first right, c: only the second) this is McNemar's exact test (Q. McNemar, Psychometrika 12,
    1947; the exact form is the binomial test of b ~ Bin(b + c, 1/2)): p = min(1, 2 P(X <=
    min(b, c))). Ties carry no information about which is better and are left out. Exact
    integer arithmetic, so the p-value of thousands of pairs loses no precision.
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"sign_test_p needs counts >= 0, got wins={wins}, losses={losses}")
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def paired_test(first: list[float], second: list[float]) -> dict:
    """Does `second` score higher than `first` on the same problems (item i of each list)?

    Scores are per-problem accuracies in [0, 1]. With one greedy sample per problem they are 0/1
    and this is McNemar's exact test; with several samples it is the exact sign test on the
    per-problem differences, which reduces to McNemar's when every score is 0 or 1.
    Returns n (pairs), first/second (mean accuracies), gained (problems where second is higher),
    lost (where it is lower), p_value (two-sided) and test (its name).
    """
    if len(first) != len(second):
        raise ValueError(f"paired_test needs one score per problem from each side, got {len(first)} and {len(second)}")
    if not first:
        raise ValueError("paired_test needs at least one problem")
    gained = sum(b > a for a, b in zip(first, second))
    lost = sum(b < a for a, b in zip(first, second))
    binary = all(s in (0, 1) for s in (*first, *second))
    return {"n": len(first), "first": sum(first) / len(first), "second": sum(second) / len(second),
            "gained": gained, "lost": lost, "p_value": sign_test_p(gained, lost),
            "test": "exact McNemar" if binary else "exact sign test"}
