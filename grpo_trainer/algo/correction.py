"""Rollout-trainer mismatch: importance weights that correct for it, and the numbers that show it.

The engine samples with other kernels (often another dtype) than the trainer, so the tokens come
from pi_engine while the loss assumes pi_trainer. With rho = pi_trainer / pi_engine per token:

- level ``token``: each token's rho; level ``sequence``: the geometric mean of its tokens' rho,
  exp(mean_t log rho), one value for the whole row.
- mode ``truncate`` (TIS, F. Yao et al. 2025 "Your Efficient RL Framework Secretly Brings You
  Off-Policy RL Training"; truncation as IMPALA V-trace arXiv 1802.01561 eq. 1): w = min(rho, upper).
- mode ``mask`` (MIS, masked importance sampling, J. Liu et al. 2025 "When Speed Kills
  Stability"): w = rho inside [lower, upper], 0 outside (the token, or the whole sequence, drops out).

Weights are detached and exactly 0 at masked positions.
"""

from __future__ import annotations

import math

import torch

from .kl import logprob_mismatch
from .loss import _bool_mask, tis_weights
from .objectives import sequence_mean

CORRECTION_LEVELS = ("token", "sequence")
CORRECTION_MODES = ("truncate", "mask")


def _check_band(lower: float, upper: float) -> None:
    if not (0.0 <= lower <= 1.0 <= upper < math.inf):
        raise ValueError(f"need 0 <= lower <= 1 <= upper < inf, got lower={lower}, upper={upper}")


def _log(x: float) -> float:
    return -math.inf if x == 0 else math.log(x)


def correction_weights(
    trainer_logp: torch.Tensor,  # (N, T) log-probs under the trainer's (old) policy
    rollout_logp: torch.Tensor,  # (N, T) log-probs the rollout engine reported
    mask: torch.Tensor,  # (N, T) bool/0-1: the loss tokens
    level: str,
    mode: str,
    lower: float,
    upper: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # (N, T) weights (detached), (N, T) bool changed
    """Importance weights of the rollout correction (module docstring) and which loss tokens the
    correction changed: truncated (rho > upper) or masked out (rho outside [lower, upper]).

    ``token``/``truncate`` is ``tis_weights`` to the bit (min(rho, upper) via a clamped log)."""
    if level not in CORRECTION_LEVELS or mode not in CORRECTION_MODES:
        raise ValueError(f"rollout correction level {level!r} / mode {mode!r}: choose level from "
                         f"{', '.join(CORRECTION_LEVELS)} and mode from {', '.join(CORRECTION_MODES)}")
    if trainer_logp.shape != rollout_logp.shape:
        raise ValueError(f"trainer_logp {tuple(trainer_logp.shape)} and rollout_logp "
                         f"{tuple(rollout_logp.shape)} must have the same (N, T) shape")
    _check_band(lower, upper)
    m = _bool_mask(mask, trainer_logp)
    with torch.no_grad():
        zero = torch.zeros((), dtype=trainer_logp.dtype, device=trainer_logp.device)
        log_rho = torch.where(m, trainer_logp - rollout_logp.to(trainer_logp.dtype), zero)  # (N, T)
        if level == "sequence":
            log_rho = sequence_mean(log_rho, m).unsqueeze(1).expand_as(log_rho)
        if mode == "truncate":
            changed = log_rho > math.log(upper)
            weights = (tis_weights(trainer_logp, rollout_logp, upper, m) if level == "token"
                       else torch.exp(log_rho.clamp(max=math.log(upper))))
        else:
            changed = (log_rho < _log(lower)) | (log_rho > math.log(upper))
            weights = torch.where(changed, zero, torch.exp(log_rho))
        weights = torch.where(m, weights, zero)
    return weights, changed & m


def mismatch_stats(
    rollout_logp: torch.Tensor,  # (N, T) log-probs the rollout engine reported for its samples
    trainer_logp: torch.Tensor,  # (N, T) the trainer's (old) log-probs of the same tokens
    mask: torch.Tensor,  # (N, T) bool: the tokens to compare
    lower: float,
    upper: float,
) -> dict[str, torch.Tensor]:  # 0-dim fp64 sums (and one maximum) over the batch
    """Sums from which a step's mismatch metrics are built across micro-batches and processes.

    ``k3``         sum of k3 KL(engine || trainer) per token (``kl.logprob_mismatch``)
    ``tokens``     compared tokens
    ``abs_diff``   sum of |log pi_trainer - log pi_engine|;  ``max_abs_diff`` its maximum (0 if none)
    ``tokens_out`` tokens whose rho leaves [lower, upper]
    ``seqs_out``   rows whose geometric-mean rho leaves [lower, upper];  ``seqs`` rows with a token
    """
    _check_band(lower, upper)
    m = mask.bool()
    with torch.no_grad():
        k3, diff = logprob_mismatch(rollout_logp, trainer_logp, m)  # (N, T) fp64, 0 at masked
        zero = torch.zeros((), dtype=torch.float64, device=diff.device)
        log_rho = torch.where(m, trainer_logp.double() - rollout_logp.double(), zero)
        seq = sequence_mean(log_rho, m)  # (N,)
        lo, hi = _log(lower), math.log(upper)
        has = m.any(dim=1)
        return {"k3": k3.sum(), "tokens": m.sum().double(), "abs_diff": diff.sum(),
                "max_abs_diff": diff.max() if diff.numel() else zero,
                "tokens_out": (m & ((log_rho < lo) | (log_rho > hi))).sum().double(),
                "seqs_out": (has & ((seq < lo) | (seq > hi))).sum().double(), "seqs": has.sum().double()}
