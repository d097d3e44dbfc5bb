"""Policy losses beyond PPO's token-level clip: GSPO, GSPO-token and CISPO.

Each has the signature of every registered policy loss, ``(logp, old_logp, advantages, mask,
**options) -> (per_token (N, T), stats)``, so the update's passes, mini-batches, micro-batches,
processes and ``loss_agg`` apply unchanged. Rows are never cut across micro-batches, so a
sequence-level quantity computed inside one call is the whole sequence's.

GSPO is a sequence-level objective: every loss token of sequence i carries the same value l_i
(its clipped sequence term), so ``loss_agg`` decides how sequences are weighted:
``seq_mean_token_mean`` gives sum_i l_i / num_seqs, the paper's 1/G sum_i (eq. 5);
``token_mean`` weights sequence i by |y_i| / num_tokens; ``seq_mean_token_sum_norm`` by
|y_i| / (num_seqs * L_max).

Stats (detached 0-dim tensors, fractions of the masked-in tokens, 0 when there are none) have the
keys of ``clipped_policy_loss``: ``clip_frac_low`` / ``clip_frac_high``, whose meaning each
docstring gives, and ``clipped``, the (N, T) bool mask of the tokens they count.
"""

from __future__ import annotations

import math

import torch

from .loss import check_clip_range, policy_inputs
from .registry import register_policy_loss


def sequence_mean(
    values: torch.Tensor,  # (N, T), 0 at masked positions
    mask: torch.Tensor,  # (N, T) bool
) -> torch.Tensor:  # (N,)
    """Each row's mean over its masked-in positions; 0 for a row with none."""
    return values.sum(dim=1) / mask.sum(dim=1).clamp(min=1).to(values.dtype)


def _fractions(m: torch.Tensor, low: torch.Tensor, high: torch.Tensor, dtype) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        count = m.sum().clamp(min=1).to(dtype)
        return {"clip_frac_low": (low & m).sum().to(dtype) / count,
                "clip_frac_high": (high & m).sum().to(dtype) / count, "clipped": (low | high) & m}


# algorithm.policy_loss: gspo, with its own (far smaller) clip range.
@register_policy_loss("gspo", options={"gspo_eps_low": "eps_low", "gspo_eps_high": "eps_high"})
def gspo_policy_loss(
    logp: torch.Tensor,  # (N, T) log pi_theta of the sampled tokens (requires grad)
    old_logp: torch.Tensor,  # (N, T) log pi_theta_old of the same tokens (no grad)
    advantages: torch.Tensor,  # (N,) per sequence, or (N, T) per token (its mean over the row is used)
    mask: torch.Tensor,  # (N, T) bool or 0/1 float; nonzero = completion token that counts
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # (N, T) loss, stats
    """Group Sequence Policy Optimization (GSPO, arXiv 2507.18071 eq. 5 and 7).

        s_i = (pi(y_i) / pi_old(y_i)) ^ (1 / |y_i|) = exp(mean_t log(pi / pi_old))      (eq. 7)
        l_i = -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)                    (eq. 5)

    A_i is the sequence's advantage: the mean of ``advantages`` over its loss tokens (the value
    itself when, as for every group estimator, it is broadcast along the row). The paper's ranges
    are 3e-4 / 4e-4. Every loss token of row i holds l_i (see the module docstring for how
    ``loss_agg`` then weights the sequences); masked positions are exactly 0.

    Stats: ``clip_frac_low`` / ``clip_frac_high`` = fraction of loss tokens that belong to a
    sequence clipped on that side with its gradient cut (A_i < 0 and s_i < 1 - eps_low, or
    A_i > 0 and s_i > 1 + eps_high): the paper's "fraction of clipped tokens" (its Figure 2).
    """
    check_clip_range(eps_low, eps_high)
    m, adv, log_ratio = policy_inputs(logp, old_logp, advantages, mask)
    s = torch.exp(sequence_mean(log_ratio, m))  # (N,)
    a = sequence_mean(adv, m)  # (N,)
    objective = torch.minimum(s * a, torch.clamp(s, 1.0 - eps_low, 1.0 + eps_high) * a)  # (N,)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    per_token = torch.where(m, -objective.unsqueeze(1).expand_as(logp), zero)
    low = ((a < 0) & (s < 1.0 - eps_low)).unsqueeze(1).expand_as(m)
    high = ((a > 0) & (s > 1.0 + eps_high)).unsqueeze(1).expand_as(m)
    return per_token, _fractions(m, low, high, logp.dtype)


@register_policy_loss("gspo_token", options={"gspo_eps_low": "eps_low", "gspo_eps_high": "eps_high"})
def gspo_token_policy_loss(
    logp: torch.Tensor,  # (N, T) log pi_theta of the sampled tokens (requires grad)
    old_logp: torch.Tensor,  # (N, T) log pi_theta_old of the same tokens (no grad)
    advantages: torch.Tensor,  # (N,) per sequence, or (N, T) per token
    mask: torch.Tensor,  # (N, T) bool or 0/1 float; nonzero = completion token that counts
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # (N, T) loss, stats
    """GSPO-token (arXiv 2507.18071 eq. 13 and 14): token-level terms whose ratio has the value of
    the sequence's s_i and the gradient of the token's own log-probability,

        s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)]                                        (eq. 14)
        l_it = -min(s_it A_it, clip(s_it, 1 - eps_low, 1 + eps_high) A_it)               (eq. 13)

    so per-token advantages A_it are allowed. With one advantage per sequence its value and its
    gradient equal ``gspo``'s under every ``loss_agg``.

    Stats: ``clip_frac_low`` / ``clip_frac_high`` = fraction of loss tokens clipped with their
    gradient cut (A_it < 0 and s_i < 1 - eps_low, or A_it > 0 and s_i > 1 + eps_high).
    """
    check_clip_range(eps_low, eps_high)
    m, adv, log_ratio = policy_inputs(logp, old_logp, advantages, mask)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    live = torch.where(m, logp, zero)
    # + (x - sg(x)): exactly 0 in value, so s_it's value is s_i's to the bit.
    log_s = sequence_mean(log_ratio, m).detach().unsqueeze(1) + (live - live.detach())
    s = torch.exp(log_s)  # (N, T)
    objective = torch.minimum(s * adv, torch.clamp(s, 1.0 - eps_low, 1.0 + eps_high) * adv)
    per_token = torch.where(m, -objective, zero)
    s = s.detach()
    return per_token, _fractions(m, (adv < 0) & (s < 1.0 - eps_low), (adv > 0) & (s > 1.0 + eps_high), logp.dtype)


# MiniMax-M1 gives no number for eps_high; 0.28 is this repo's clip-higher value (see README).
@register_policy_loss("cispo", options={"cispo_eps_low": "eps_low", "cispo_eps_high": "eps_high"})
def cispo_policy_loss(
    logp: torch.Tensor,  # (N, T) log pi_theta of the sampled tokens (requires grad)
    old_logp: torch.Tensor,  # (N, T) log pi_theta_old of the same tokens (no grad)
    advantages: torch.Tensor,  # (N,) per sequence, or (N, T) per token
    mask: torch.Tensor,  # (N, T) bool or 0/1 float; nonzero = completion token that counts
    eps_high: float = 0.28,
    eps_low: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # (N, T) loss, stats
    """Clipped IS-weight Policy Optimization (CISPO, MiniMax-M1 arXiv 2506.13585 eq. 4 and 5):

        w_it = sg(clip(r_it, 1 - eps_low, 1 + eps_high)),  r_it = pi / pi_old            (eq. 5)
        l_it = -w_it A_it log pi(y_it)                                                   (eq. 4)

    The weight is detached, so a token whose ratio left the range still gives the gradient
    w A grad log pi (PPO's clip would give 0). ``eps_low=None`` applies no lower bound, as the
    paper does ("setting eps_low to a large value"). The loss *value* is a log-likelihood
    surrogate, not PPO's ratio objective: only its gradient is meaningful.

    Stats: ``clip_frac_high`` / ``clip_frac_low`` = fraction of loss tokens whose weight was
    clipped (r > 1 + eps_high, r < 1 - eps_low), whatever the advantage's sign: they still give
    gradient, scaled down (up) to the bound.
    """
    if eps_low is not None and not (0.0 <= eps_low < 1.0):
        raise ValueError(f"CISPO eps_low must be in [0, 1) or None (no lower bound), got {eps_low}")
    if not (0.0 <= eps_high < math.inf):
        raise ValueError(f"CISPO eps_high must be finite and >= 0, got {eps_high}")
    m, adv, log_ratio = policy_inputs(logp, old_logp, advantages, mask)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    with torch.no_grad():
        ratio = torch.exp(log_ratio)
        low_bound = None if eps_low is None else 1.0 - eps_low
        weight = torch.clamp(ratio, low_bound, 1.0 + eps_high)
        low = ratio < low_bound if low_bound is not None else torch.zeros_like(m)
        high = ratio > 1.0 + eps_high
    per_token = torch.where(m, -weight * adv * torch.where(m, logp, zero), zero)
    return per_token, _fractions(m, low, high, logp.dtype)
