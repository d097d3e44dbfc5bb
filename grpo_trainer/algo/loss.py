"""Clipped surrogate policy loss, loss aggregation and truncated importance weights.

Per-token loss (PPO arXiv 1707.06347 eq. 7, with DAPO's decoupled clip range, arXiv
2503.14476 eq. 10 "Clip-Higher"):

    ratio = exp(logp - old_logp)
    loss  = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)

and, optionally, dual-clip PPO (Ye et al., arXiv 1912.09729 eq. 5) which for A < 0 bounds the
objective below by c * A, i.e. the loss above by -c * A.

Aggregation normalisers are *global* numbers supplied by the caller, so that a step cut into
micro-batches (and processes) yields the same gradient as the uncut batch: each micro-batch
returns its share, and the shares sum to the full-batch loss.
"""

from __future__ import annotations

import math

import torch

from .registry import register_policy_loss

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def _bool_mask(mask: torch.Tensor, like: torch.Tensor, name: str = "mask") -> torch.Tensor:
    if mask.shape != like.shape:
        raise ValueError(
            f"{name} shape {tuple(mask.shape)} must equal {tuple(like.shape)}; pass an (N, T) mask"
        )
    return mask if mask.dtype == torch.bool else mask != 0


# algorithm.policy_loss: ppo_clip; the clip ranges come from the config keys of the same names.
def policy_inputs(logp, old_logp, advantages, mask):
    """(mask bool (N, T), advantages (N, T), log-ratio (N, T)), zeros at masked positions so NaN
    or inf there (padding) cannot reach a value or a gradient."""
    if logp.dim() != 2 or old_logp.shape != logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and old_logp {tuple(old_logp.shape)} must both be (N, T)")
    m = _bool_mask(mask, logp)
    if advantages.dim() == 1 and advantages.shape[0] == logp.shape[0]:
        adv = advantages.unsqueeze(1).expand_as(logp)
    elif advantages.shape == logp.shape:
        adv = advantages
    else:
        raise ValueError(f"advantages shape {tuple(advantages.shape)} must be (N,) or (N, T) with "
                         f"(N, T) = {tuple(logp.shape)}")
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    adv = torch.where(m, adv.to(logp.dtype), zero)
    log_ratio = torch.where(m, logp - old_logp.to(logp.dtype), zero)
    return m, adv, log_ratio


def check_clip_range(eps_low: float, eps_high: float) -> None:
    if not (0.0 <= eps_low < 1.0) or not (0.0 <= eps_high < math.inf):
        raise ValueError(f"need 0 <= eps_low < 1 and 0 <= eps_high, got eps_low={eps_low}, eps_high={eps_high}")


@register_policy_loss("ppo_clip", options={"eps_low": "eps_low", "eps_high": "eps_high",
                                           "dual_clip_c": "dual_clip_c"})
def clipped_policy_loss(
    logp: torch.Tensor,  # (N, T) log pi_theta of the sampled tokens (requires grad)
    old_logp: torch.Tensor,  # (N, T) log pi_theta_old of the same tokens (no grad)
    advantages: torch.Tensor,  # (N,) per sequence, or (N, T) per token
    mask: torch.Tensor,  # (N, T) bool or 0/1 float; nonzero = completion token that counts
    eps_low: float,
    eps_high: float,
    dual_clip_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # (N, T) loss, stats
    """Per-token clipped surrogate loss of PPO (arXiv 1707.06347 eq. 7) as used by GRPO
    (DeepSeekMath arXiv 2402.03300 eq. 3), with DAPO's asymmetric clip (arXiv 2503.14476
    eq. 10) and optional dual clip (arXiv 1912.09729 eq. 5, requires c > 1).

    Masked positions are exactly 0 in value and gradient, even if logp/old_logp/advantages hold
    NaN or inf there: they are replaced before exp() rather than multiplied away afterwards
    (0 * inf = NaN in both the forward and the backward pass).

    The mask is a selector, not a weight: any nonzero value counts as 1.

    Stats (detached 0-dim tensors, fractions of the masked-in tokens, 0 when there are none):
      ``clip_frac_low``   ratio < 1 - eps_low and A < 0 (gradient clipped on the low side)
      ``clip_frac_high``  ratio > 1 + eps_high and A > 0 (gradient clipped on the high side)
      ``dual_clip_frac``  A < 0 and the dual-clip bound c * A is active
      ``clipped``         (N, T) bool: the tokens counted in clip_frac_low or clip_frac_high (the
                          sample log marks them)
    """
    check_clip_range(eps_low, eps_high)
    if dual_clip_c is not None and not (1.0 < dual_clip_c < math.inf):
        raise ValueError(f"dual_clip_c must be > 1 (or None to disable), got {dual_clip_c}")
    m, adv, log_ratio = policy_inputs(logp, old_logp, advantages, mask)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    ratio = torch.exp(log_ratio)

    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    objective = torch.minimum(unclipped, clipped)
    neg = adv < 0
    if dual_clip_c is not None:
        bound = dual_clip_c * adv
        dual_active = neg & (objective < bound)
        objective = torch.where(dual_active, bound, objective)
    else:
        dual_active = torch.zeros_like(m)
    per_token = torch.where(m, -objective, zero)

    with torch.no_grad():
        count = m.sum().clamp(min=1).to(logp.dtype)
        low = m & neg & (ratio < 1.0 - eps_low)
        high = m & (adv > 0) & (ratio > 1.0 + eps_high)
        stats = {
            "clip_frac_low": low.sum().to(logp.dtype) / count,
            "clip_frac_high": high.sum().to(logp.dtype) / count,
            "dual_clip_frac": (dual_active & m).sum().to(logp.dtype) / count,
            "clipped": low | high,
        }
    return per_token, stats


def _check_norm(name: str, value: float | torch.Tensor) -> None:
    # Tensors (e.g. all-reduced counts) are not checked: that would force a device sync.
    if not isinstance(value, torch.Tensor) and not (0 < value < math.inf):
        raise ValueError(
            f"{name} must be a finite number > 0, got {value!r}; skip the update when the whole "
            f"step batch has no loss tokens"
        )


def aggregate_loss(
    per_token: torch.Tensor,  # (N, T) per-token loss of this micro-batch
    mask: torch.Tensor,  # (N, T) bool or 0/1 float; nonzero = token counts
    mode: str,
    num_tokens: float | torch.Tensor,  # masked-in tokens in the WHOLE step batch, all processes
    num_seqs: float | torch.Tensor,  # sequences in the WHOLE step batch, all processes
    max_len: int,  # generation length limit (a constant, not the batch's longest)
) -> torch.Tensor:  # () scalar
    """Reduce a micro-batch's per-token loss to its share of the step loss.

    ``token_mean``               sum_{i,t} l_it / num_tokens            DAPO arXiv 2503.14476 eq. 12
    ``seq_mean_token_mean``      sum_i (sum_t l_it / |o_i|) / num_seqs  GRPO arXiv 2402.03300 eq. 3
    ``seq_mean_token_sum_norm``  sum_{i,t} l_it / (num_seqs * max_len)  Dr.GRPO arXiv 2503.20783

    The normalisers are global: the caller counts them over the whole optimizer step (every
    micro-batch on every process). Then summing the returned values over micro-batches gives
    exactly the full-batch loss, so the gradient does not depend on how the batch is cut.
    |o_i| is the row's own masked-in token count, so micro-batches must cut between rows, never
    inside one. A row with no tokens contributes 0 (it still counts in num_seqs if the caller
    counted it). Under DDP, which *averages* gradients over W processes, multiply the result by
    W to keep the sum semantics.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(
            f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    if per_token.dim() != 2:
        raise ValueError(f"per_token must be (N, T), got shape {tuple(per_token.shape)}")
    m = _bool_mask(mask, per_token)
    zero = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    loss = torch.where(m, per_token, zero)
    if mode == "token_mean":
        _check_norm("num_tokens", num_tokens)
        return loss.sum() / num_tokens
    _check_norm("num_seqs", num_seqs)
    if mode == "seq_mean_token_mean":
        lengths = m.sum(dim=1).clamp(min=1).to(loss.dtype)
        return (loss.sum(dim=1) / lengths).sum() / num_seqs
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int (the generation limit), got {max_len!r}")
    return loss.sum() / (num_seqs * max_len)


def tis_weights(
    trainer_logp: torch.Tensor,  # (N, T) log-probs under the trainer's policy
    rollout_logp: torch.Tensor,  # (N, T) log-probs reported by the rollout engine
    cap: float,
    mask: torch.Tensor | None = None,  # (N, T) bool/0-1; masked positions get weight 0
) -> torch.Tensor:  # (N, T), detached
    """Truncated importance-sampling weights min(pi_trainer / pi_rollout, cap), detached.

    Corrects the mismatch between the rollout engine's sampling distribution and the trainer's
    (F. Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training"; truncation as in IMPALA V-trace, arXiv 1802.01561 eq. 1). Computed as
    exp(min(log ratio, log cap)) so the weight never overflows. With ``mask``, masked positions
    are 0 so that NaN/inf there cannot leak through a multiplication.
    """
    if trainer_logp.shape != rollout_logp.shape:
        raise ValueError(
            f"trainer_logp {tuple(trainer_logp.shape)} and rollout_logp "
            f"{tuple(rollout_logp.shape)} must have the same (N, T) shape"
        )
    if not (0 < cap < math.inf):
        raise ValueError(f"TIS cap must be finite and > 0, got {cap!r}")
    with torch.no_grad():
        log_w = (trainer_logp - rollout_logp.to(trainer_logp.dtype)).clamp(max=math.log(cap))
        weights = torch.exp(log_w)
        if mask is not None:
            m = _bool_mask(mask, weights)
            weights = torch.where(m, weights, torch.zeros_like(weights))
    return weights
