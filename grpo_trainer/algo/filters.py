"""DAPO sample filters and length shaping (arXiv 2503.14476).

- Dynamic sampling (section 3.2, eq. 11): groups whose rewards are all equal have zero
  advantage and no gradient; drop them (and resample), or keep the batch and upweight.
- Overlong filtering (section 3.4): mask the loss of truncated completions.
- Soft overlong punishment (section 3.4, eq. 13): a length-aware reward penalty.
"""

from __future__ import annotations

import math

import torch

from .advantages import as_groups

# Rewards within 1e-8 std of each other are treated as equal: float noise such as
# mean([0.1, 0.1, 0.1]) != 0.1 must not make a group look informative.
INFORMATIVE_STD_TOL = 1e-8


def informative_groups(
    rewards: torch.Tensor,  # (N,) group-major, N = B*G
    group_size: int,
) -> torch.Tensor:  # (B,) bool
    """True for groups whose values differ. Given per-sample correctness (0/1) this is DAPO's
    constraint (arXiv 2503.14476 eq. 11: 0 < |correct| < G); given rewards, a group with a signal.

    Uses the unbiased group std > 1e-8; a group of one is never informative.
    """
    g = as_groups(rewards, group_size)
    if g.shape[1] < 2:
        return torch.zeros(g.shape[0], dtype=torch.bool, device=g.device)
    return g.std(dim=1) > INFORMATIVE_STD_TOL


def overlong_loss_mask(
    truncated: torch.Tensor,  # (N,) bool, True = hit the length limit without EOS
) -> torch.Tensor:  # (N,) float32
    """Overlong filtering, DAPO arXiv 2503.14476 section 3.4: 0 for truncated samples, else 1.

    Multiply into (or AND with) the token mask so truncated completions give no loss.
    """
    if truncated.dim() != 1:
        raise ValueError(f"truncated must be (N,), got shape {tuple(truncated.shape)}")
    return (~truncated.bool()).to(torch.float32)


def soft_overlong_penalty(
    lengths: torch.Tensor,  # (N,) int64 completion lengths in tokens
    max_len: int,
    cache_len: int,
    factor: float = 1.0,
) -> torch.Tensor:  # (N,) float32 reward to add
    """Soft overlong punishment, DAPO arXiv 2503.14476 eq. 13 (times ``factor``):

        0                                         if L <= max_len - cache_len
        ((max_len - cache_len) - L) / cache_len   if max_len - cache_len < L <= max_len
        -1                                        if L > max_len
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be (N,), got shape {tuple(lengths.shape)}")
    for name, value in (("max_len", max_len), ("cache_len", cache_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if cache_len > max_len:
        raise ValueError(f"cache_len={cache_len} must be <= max_len={max_len}")
    if not math.isfinite(factor):
        raise ValueError(f"factor must be finite, got {factor!r}")
    length = lengths.to(torch.float64)
    start = max_len - cache_len
    ramp = (start - length) / cache_len
    penalty = torch.where(length <= start, torch.zeros_like(ramp), ramp)
    penalty = torch.where(length > max_len, torch.full_like(ramp, -1.0), penalty)
    return (penalty * factor).to(torch.float32)


def group_upweight(
    keep: torch.Tensor,  # (B,) bool, True = group kept
) -> float:
    """Loss multiplier 1 / (1 - dropped fraction) = B / kept, for keeping the batch size fixed
    by zero-weighting uninformative groups instead of resampling (DAPO arXiv 2503.14476 sec. 3.2
    resamples; this is the cheaper alternative that keeps the expected gradient scale).

    Returns 0.0 when every group is dropped: there is nothing to learn from, and the caller
    should skip the update.
    """
    if keep.dim() != 1 or keep.numel() == 0:
        raise ValueError(
            f"keep must be a non-empty (B,) bool tensor, got shape {tuple(keep.shape)}"
        )
    kept = int(keep.bool().sum())
    return 0.0 if kept == 0 else keep.numel() / kept
