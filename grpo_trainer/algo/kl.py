"""KL penalty estimators, the adaptive KL coefficient, and the engine/trainer mismatch.

Estimators of KL(pi || pi_ref) from tokens sampled from pi (J. Schulman, "Approximating KL
Divergence", 2020), with r = pi_ref(o_t) / pi(o_t):

- ``k1`` = -log r                unbiased, high variance, can be negative
- ``k2`` = (log r)^2 / 2         biased, low variance, >= 0
- ``k3`` = r - log r - 1         unbiased, low variance, >= 0; DeepSeekMath arXiv 2402.03300 eq. 4
"""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")

# exp(20) ~ 4.9e8 is finite in fp32 and far beyond any log-ratio a healthy run produces; without
# the clamp a token the reference finds much likelier makes k3 (and its gradient) overflow.
K3_LOG_RATIO_CLAMP = 20.0


def kl_estimate(
    logp: torch.Tensor,  # (N, T) log pi of the sampled tokens
    ref_logp: torch.Tensor,  # (N, T) log pi_ref of the same tokens
    estimator: str,
) -> torch.Tensor:  # (N, T) per-token KL estimate
    """Per-token estimate of KL(pi || pi_ref) with samples from pi (Schulman 2020).

    k3 is the GRPO penalty of DeepSeekMath (arXiv 2402.03300 eq. 4):
    pi_ref/pi - log(pi_ref/pi) - 1. Its log-ratio log(pi_ref/pi) is clamped to
    [-20, 20] before exp(), so the value stays finite; outside that range the estimate is the
    one at the boundary and its gradient is 0. Positions to ignore must be masked by the caller.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}"
        )
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must match"
        )
    log_ratio = ref_logp.to(logp.dtype) - logp  # log(pi_ref / pi)
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    log_ratio = log_ratio.clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
    return torch.exp(log_ratio) - log_ratio - 1.0


def logprob_mismatch(
    sampler_logp: torch.Tensor,  # (N, T) log-probs the rollout engine reported for the tokens it sampled
    trainer_logp: torch.Tensor,  # (N, T) the trainer's log-probs of the same tokens
    mask: torch.Tensor,  # (N, T) bool: the tokens to compare
) -> tuple[torch.Tensor, torch.Tensor]:  # (N, T) k3 KL(engine || trainer), (N, T) |log-prob difference|
    """Per-token disagreement between the sampling engine and the trainer on the same tokens.

    The tokens were drawn from the engine, so k3 with r = pi_trainer / pi_engine (J. Schulman,
    "Approximating KL Divergence", 2020) is an unbiased, per-token non-negative estimate of
    KL(pi_engine || pi_trainer); the absolute log-prob difference is the worst single token.
    Both are exactly 0 at masked positions, whatever the inputs hold there (padding), and come
    out in fp64: a healthy fp32 engine disagrees by ~1e-5 nats, where exp(x) - x - 1 ~ 5e-11 is
    below what fp32 resolves around exp(x) ~ 1.
    """
    if sampler_logp.shape != trainer_logp.shape or mask.shape != trainer_logp.shape:
        raise ValueError(f"sampler_logp {tuple(sampler_logp.shape)}, trainer_logp {tuple(trainer_logp.shape)} "
                         f"and mask {tuple(mask.shape)} must all be the same (N, T)")
    m = mask.bool()
    zero = torch.zeros((), dtype=torch.float64, device=trainer_logp.device)
    engine = torch.where(m, sampler_logp.double(), zero)
    trainer = torch.where(m, trainer_logp.double(), zero)
    return kl_estimate(engine, trainer, "k3"), (trainer - engine).abs()


def adaptive_kl_beta(beta: float, kl: float, target: float) -> float:
    """Adaptive KL penalty coefficient, PPO arXiv 1707.06347 section 4.

    beta * 2 if kl > 1.5 * target, beta / 2 if kl < target / 1.5, otherwise unchanged
    (the boundaries themselves leave beta unchanged).
    """
    if not (0 < target < math.inf):
        raise ValueError(f"KL target must be finite and > 0, got {target!r}")
    if not (0 <= beta < math.inf):
        raise ValueError(f"KL beta must be finite and >= 0, got {beta!r}")
    if not math.isfinite(kl):
        raise ValueError(f"measured KL must be finite, got {kl!r}; check the reference log-probs")
    if kl > 1.5 * target:
        return beta * 2.0
    if kl < target / 1.5:
        return beta / 2.0
    return beta
