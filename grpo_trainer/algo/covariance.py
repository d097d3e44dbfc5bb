"""Entropy-collapse controls from "The Entropy Mechanism of Reinforcement Learning for Reasoning
Language Models" (Cui et al., arXiv 2505.22617), config key ``algorithm.entropy_control``.

The paper shows (its entropy-dynamics theorems) that the change of policy entropy in a step is
driven by minus the covariance between a token's log-probability and its advantage:
confident tokens (high log pi) with high advantage lower the entropy most. Per loss token t of the
batch it computes the centred product

    cov_t = (log pi_t - mean(log pi)) * (A_t - mean(A))          (means over the batch's loss tokens)

and restrains the few tokens with the largest cov_t (its covariance-regularisation section):

- ``clip_cov`` (the L_Clip-Cov objective): of the tokens with ``low < cov_t < high``,
  ``max(1, int(ratio * n))`` chosen uniformly at random have their policy-gradient term detached
  (here: their per-token loss set to 0; they still count in the loss normaliser).
- ``kl_cov`` (the L_KL-Cov objective): the ``max(1, int(ratio * n))`` tokens with the largest
  cov_t get the penalty ``coef * |log pi_t - log pi_old_t|`` added to their per-token loss.

``n`` is the number of loss tokens in the batch. The functions below take the batch's loss tokens
as flat vectors (T,) so a caller can pass every process's tokens at once and select over the whole
step batch; ``cov_controlled_loss`` then applies a per-token selection to one micro-batch.
"""

from __future__ import annotations

import torch

ENTROPY_CONTROLS = ("none", "clip_cov", "kl_cov")


def logp_adv_covariance(
    logp: torch.Tensor,  # (T,) log pi of each loss token of the batch
    adv: torch.Tensor,  # (T,) its advantage
) -> torch.Tensor:  # (T,) float64
    """cov_t = (log pi_t - mean(log pi)) (A_t - mean(A)), arXiv 2505.22617's centred covariance term;
    its mean over t is the batch covariance. Computed in float64."""
    if logp.shape != adv.shape or logp.dim() != 1:
        raise ValueError(f"logp and adv must be 1-D of the same length, got {tuple(logp.shape)} and "
                         f"{tuple(adv.shape)}; pass the loss tokens flattened")
    lp, a = logp.double(), adv.double()
    if lp.numel() == 0:
        return lp
    return (lp - lp.mean()) * (a - a.mean())


def select_covariance_tokens(
    cov: torch.Tensor,  # (T,) cov_t of every loss token of the batch
    method: str,
    ratio: float,
    low: float = 1.0,
    high: float = 5.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:  # (T,) bool
    """The tokens Clip-Cov or KL-Cov (arXiv 2505.22617, L_Clip-Cov / L_KL-Cov) act on.

    Both take k = max(1, int(ratio * T)) tokens. ``clip_cov``: k drawn without replacement
    (``torch.randperm`` on ``generator``) from those with ``low < cov < high`` (all of them if
    fewer). ``kl_cov``: the k largest cov, ties broken by position (a stable sort), so the
    choice is reproducible. ``none`` selects nothing.
    """
    if method not in ENTROPY_CONTROLS:
        raise ValueError(f"unknown entropy control {method!r}; choose one of {', '.join(ENTROPY_CONTROLS)}")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    out = torch.zeros(cov.shape, dtype=torch.bool)
    if method == "none" or cov.numel() == 0:
        return out
    k = max(1, int(ratio * cov.numel()))
    if method == "clip_cov":
        if not low < high:
            raise ValueError(f"need low < high for clip_cov, got low={low!r} high={high!r}")
        candidates = ((cov > low) & (cov < high)).nonzero().flatten()
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:k]]
    else:
        chosen = torch.sort(cov, descending=True, stable=True).indices[:k]
    out[chosen] = True
    return out


def cov_controlled_loss(
    per_token: torch.Tensor,  # (M, C) the policy loss per token
    logp: torch.Tensor,  # (M, C) log pi (with gradient)
    old_logp: torch.Tensor,  # (M, C) log pi_old (no gradient)
    selected: torch.Tensor,  # (M, C) bool: tokens the control acts on
    method: str,
    kl_coef: float = 1.0,
) -> torch.Tensor:  # (M, C)
    """Clip-Cov (arXiv 2505.22617, L_Clip-Cov): a selected token's loss becomes a constant 0, so it
    gives no gradient. KL-Cov (L_KL-Cov): ``kl_coef * |log pi - log pi_old|`` is added to a selected
    token's loss. Unselected tokens keep the given loss. The paper writes both around the
    unclipped surrogate; here they wrap whichever ``policy_loss`` is configured, which is the same
    wherever no ratio is clipped (always on the first pass, when pi = pi_old). There
    |log pi - log pi_old| is 0 with a zero (sub)gradient: KL-Cov acts from the second mini-batch or
    pass on (``num_mini_batches`` or ``num_iterations`` > 1), as in the paper's off-policy updates.
    """
    if method == "clip_cov":
        return torch.where(selected, torch.zeros((), dtype=per_token.dtype, device=per_token.device), per_token)
    if method == "kl_cov":
        penalty = kl_coef * (logp - old_logp).abs()
        return per_token + torch.where(selected, penalty, torch.zeros((), dtype=penalty.dtype, device=penalty.device))
    if method == "none":
        return per_token
    raise ValueError(f"unknown entropy control {method!r}; choose one of {', '.join(ENTROPY_CONTROLS)}")
