"""PPO with a learned critic: token rewards, generalised advantage estimation, the value loss.

The critic-free estimators (advantages.py) score a completion once and broadcast that score over
its tokens. PPO as used for RLHF (InstructGPT, arXiv 2203.02155; verl's and OpenRLHF's default)
instead treats every generated token as an action with its own reward and a learned state value
V_t, the critic's estimate of the return from the state before token t:

- token rewards: the verifier's score on the last trained token of each completion, optionally
  minus beta * KL_t to the reference on every token (``token_rewards``);
- GAE (Schulman et al., arXiv 1506.02438, eqs. 11-16): delta_t = r_t + gamma V_{t+1} - V_t and
  A_t = sum_l (gamma lambda)^l delta_{t+l}, computed by the reverse recursion
  A_t = delta_t + gamma lambda A_{t+1}; returns R_t = A_t + V_t are the critic's targets
  (``gae_advantages``);
- the PPO clipped value loss (``clipped_value_loss``), as in OpenAI baselines' ppo2:
  0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).

Masked positions (padding, and tokens a tool wrote) are skipped by the recursion, not treated as
states: they "contribute nothing and stop nothing". The state after a masked stretch is the next
trained token's, and after the last trained token the episode ends (V = 0).

All tensors are (N, T), row-major over completions, T the padded completion width.
"""

from __future__ import annotations

import torch

from .registry import register_advantage


def _check(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    if t.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)}, got {tuple(t.shape)}")


def last_token_index(
    mask: torch.Tensor,  # (N, T) bool
) -> torch.Tensor:  # (N,) long: index of each row's last True, -1 for a row with none
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask, pos, torch.full_like(pos, -1)).max(dim=1).values


def token_rewards(
    scores: torch.Tensor,  # (N,) the verifier's score of each completion (plus any shaping)
    mask: torch.Tensor,  # (N, T) bool: trained tokens
    kl: torch.Tensor | None = None,  # (N, T) per-token KL estimate to the reference, or None
    beta: float = 0.0,
) -> torch.Tensor:  # (N, T) float32, 0 off the mask
    """r_t: the score on each row's last trained token, minus beta * kl_t on every trained token
    (InstructGPT's per-token KL penalty, arXiv 2203.02155 eq. 2). A row with no trained token
    gets no reward at all."""
    N, T = mask.shape
    if scores.shape != (N,):
        raise ValueError(f"scores: expected shape ({N},), got {tuple(scores.shape)}")
    r = torch.zeros((N, T), dtype=torch.float32, device=mask.device)
    last = last_token_index(mask)
    rows = torch.nonzero(last >= 0).flatten()
    r[rows, last[rows]] = scores.to(torch.float32)[rows]
    if kl is not None and beta:
        _check("kl", kl, mask)
        r = r - beta * torch.where(mask, kl.to(torch.float32), torch.zeros((), dtype=torch.float32))
    return r


@register_advantage("gae", grouped=False, critic=True, options={"gamma": "gamma", "lam": "lam"})
def gae_advantages(
    rewards: torch.Tensor,  # (N, T) token rewards (token_rewards)
    values: torch.Tensor,  # (N, T) V_t, the critic's value of the state before token t
    mask: torch.Tensor,  # (N, T) bool: the states that count
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:  # advantages (N, T), returns (N, T); both 0 off the mask
    """Generalised advantage estimation (arXiv 1506.02438 eq. 16) by the reverse recursion over
    each row's masked positions. lam = 1 gives the Monte-Carlo return minus V; lam = 0 the TD(0)
    residual; gamma = lam = 1 with V = 0 the REINFORCE return-to-go."""
    _check("values", values, rewards)
    _check("mask", mask, rewards)
    if not 0 < gamma <= 1 or not 0 <= lam <= 1:
        raise ValueError(f"need 0 < gamma <= 1 and 0 <= lam <= 1, got gamma={gamma}, lam={lam}")
    r, v = rewards.to(torch.float32), values.to(torch.float32)
    N, T = r.shape
    adv = torch.zeros_like(r)
    next_value = torch.zeros(N, dtype=torch.float32, device=r.device)  # V after the last state: 0
    carry = torch.zeros(N, dtype=torch.float32, device=r.device)  # A_{t+1} of the next counted state
    for t in range(T - 1, -1, -1):
        m = mask[:, t]
        delta = r[:, t] + gamma * next_value - v[:, t]
        a_t = delta + gamma * lam * carry
        # A masked position neither gets a value nor changes what the state before it sees.
        carry = torch.where(m, a_t, carry)
        next_value = torch.where(m, v[:, t], next_value)
        adv[:, t] = torch.where(m, a_t, torch.zeros((), dtype=torch.float32))
    returns = torch.where(mask, adv + v, torch.zeros((), dtype=torch.float32))
    return adv, returns


def masked_moments(
    x: torch.Tensor,  # (N, T)
    mask: torch.Tensor,  # (N, T) bool
) -> torch.Tensor:  # (3,) float64: count, sum, sum of squares over the mask
    """Partial sums for a mean and variance over several processes (add them, then `whiten`)."""
    v = x[mask].to(torch.float64)
    return torch.stack([torch.tensor(float(v.numel()), dtype=torch.float64), v.sum(), (v * v).sum()])


def whiten(
    x: torch.Tensor,  # (N, T)
    mask: torch.Tensor,  # (N, T) bool
    moments: torch.Tensor,  # (3,) count, sum, sum of squares (masked_moments, summed over processes)
    eps: float = 1e-8,
) -> torch.Tensor:  # (N, T) (x - mean) / (std + eps) on the mask, 0 elsewhere
    """Advantage whitening over the global batch (PPO's normalisation; population std)."""
    n, s, sq = moments.tolist()
    if n <= 0:
        return torch.zeros_like(x)
    mean = s / n
    std = max(sq / n - mean * mean, 0.0) ** 0.5
    out = (x.to(torch.float64) - mean) / (std + eps)
    return torch.where(mask, out.to(torch.float32), torch.zeros((), dtype=torch.float32))


def clipped_value_loss(
    values: torch.Tensor,  # (N, T) V_phi(s_t), with gradient
    old_values: torch.Tensor,  # (N, T) the critic's values before this step's update
    returns: torch.Tensor,  # (N, T) GAE returns, the regression targets
    mask: torch.Tensor,  # (N, T) bool
    clip: float | None = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # per-token loss (N, T), stats
    """0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) per token (PPO's clipped value
    loss, as in OpenAI baselines ppo2); clip=None is the plain 0.5 (V - R)^2. stats["clip_frac"]:
    share of masked tokens where the clipped term is the larger (it then carries no gradient)."""
    for name, t in (("old_values", old_values), ("returns", returns), ("mask", mask)):
        _check(name, t, values)
    plain = (values - returns) ** 2
    if clip is None:
        per_token, clipped = 0.5 * plain, torch.zeros_like(mask)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        other = (v_clip - returns) ** 2
        per_token = 0.5 * torch.maximum(plain, other)
        clipped = (other > plain) & mask
    n = mask.sum().clamp(min=1)
    per_token = torch.where(mask, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    return per_token, {"clip_frac": clipped.sum() / n}


def explained_variance(
    moments: torch.Tensor,  # (5,): count, sum R, sum R^2, sum (R - V), sum (R - V)^2
) -> float:
    """1 - Var(R - V) / Var(R): 1 for a perfect critic, 0 for one that predicts the mean, < 0 for
    worse; NaN when the returns do not vary. From global sums (`value_moments`)."""
    n, s, sq, ds, dsq = moments.tolist()
    if n < 2:
        return float("nan")
    var_r = sq / n - (s / n) ** 2
    var_d = dsq / n - (ds / n) ** 2
    return float("nan") if var_r <= 1e-12 else 1.0 - var_d / var_r


def value_moments(
    values: torch.Tensor,  # (N, T)
    returns: torch.Tensor,  # (N, T)
    mask: torch.Tensor,  # (N, T) bool
) -> torch.Tensor:  # (5,) float64, summable over processes
    r, d = returns[mask].to(torch.float64), (returns - values)[mask].to(torch.float64)
    return torch.stack([torch.tensor(float(r.numel()), dtype=torch.float64), r.sum(), (r * r).sum(), d.sum(),
                        (d * d).sum()])
