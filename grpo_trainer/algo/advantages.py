"""Advantage estimators (config key ``algorithm.advantage``).

Rewards are one scalar per completion, group-major: rows [g*G:(g+1)*G] are the G completions
of prompt g (N = B*G). Every estimator returns one advantage per completion; the loss
broadcasts it over that completion's tokens (outcome supervision, DeepSeekMath section 4.1.2).

Estimators (``estimator=``):

- ``grpo``     (r_i - mean_g) / (std_g + eps)            DeepSeekMath arXiv 2402.03300 sec. 4.1.2
- ``dr_grpo``  r_i - mean_g                               Dr.GRPO arXiv 2503.20783 eq. 3
- ``rloo``     r_i - mean_{j != i} r_j                    RLOO arXiv 2402.14740 eq. 6
- ``reinforce`` r_i, or r_i - mean_batch with baseline    REINFORCE (Williams 1992)
- ``softmax``  exp(beta r_i) / sum_j exp(beta r_j) - 1/G  (softmax-weighted group baseline)
- ``reinforce_pp``  (r_i - mean_batch) / std_batch         REINFORCE++ arXiv 2501.03262 (global normalisation)
- ``reinforce_pp_baseline``  c_i / std_batch(c), c_i = r_i - mean_g   REINFORCE++-baseline, same paper

Each is registered by name (``algo/registry.py``); ``group_advantages`` dispatches through that
table and config validation lists its names, so a new estimator is one decorated function.

``grpo``, ``dr_grpo`` and ``rloo`` are *mean-centred*: they compute a centred value c_i and
then apply ``scale`` to it. ``dr_grpo`` is ``grpo`` registered a second time with another
default scale ("none" instead of "group"). Scales:

- ``group``  c_i / (std_g + eps), std over the G rewards of the group.
- ``batch``  c_i / (std_batch + eps), std over all N rewards passed in (group-level mean,
  batch-level std). "Batch" is the tensor given: pass the whole step batch, gathered over
  processes, if the std should be global.
- ``none``   c_i.
- ``sqrt_g`` sqrt(G) * c_i. Dr.GRPO divides the group's centred sum sum_j (r_i - r_j) =
  G * (r_i - mean_g) by G; this divides it by sqrt(G) instead:
  (G * r_i - sum_j r_j) / sqrt(G) = sqrt(G) * (r_i - mean_g).

Std convention: the *unbiased* (Bessel, divide by n - 1) standard deviation, torch.std's
default and what the usual GRPO implementations use for DeepSeekMath's std(r). For
[1, 2, 3] it is 1 (population std would be 0.816).

Degenerate groups: a group of one has no defined unbiased std and no "other" samples, and a
group whose rewards are all equal carries no signal, so every estimator returns exactly 0 for
them (never NaN, even with eps = 0).
"""

from __future__ import annotations

import functools
import math

import torch

from .registry import ADVANTAGES, register_advantage

SCALES = ("group", "batch", "none", "sqrt_g")


def as_groups(
    rewards: torch.Tensor,  # (N,) with N = B*G, group-major
    group_size: int,
) -> torch.Tensor:  # (B, G), float32 or float64
    """Validate a group-major reward vector and view it as (B, G) floats."""
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}; flatten the batch"
        )
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    n = rewards.numel()
    if n % group_size:
        raise ValueError(
            f"N={n} rewards is not divisible by group_size={group_size}; pass whole groups "
            f"(N = B*G, group-major)"
        )
    dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.to(dtype)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("rewards contain NaN or inf; fix the reward function's output")
    return r.reshape(-1, group_size)


def _std(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Unbiased std; 0 (instead of NaN) where fewer than two values exist."""
    count = x.numel() if dim is None else x.shape[dim]
    if count < 2:
        return torch.zeros_like(x.sum() if dim is None else x.sum(dim=dim, keepdim=keepdim))
    if dim is None:
        return x.std()
    return x.std(dim=dim, keepdim=keepdim)


def _constant_groups(g: torch.Tensor) -> torch.Tensor:  # g: (B, G) -> (B, 1) bool
    return (g.amax(dim=1) == g.amin(dim=1)).unsqueeze(1)


def _scale(
    centred: torch.Tensor,  # (B, G)
    g: torch.Tensor,  # (B, G) rewards
    scale: str,
    eps: float,
) -> torch.Tensor:  # (N,)
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of {', '.join(SCALES)}")
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    if scale == "group":
        out = centred / (_std(g, dim=1, keepdim=True) + eps)
    elif scale == "batch":
        out = centred / (_std(g) + eps)
    elif scale == "sqrt_g":
        out = centred * math.sqrt(g.shape[1])
    else:
        out = centred
    # Forced after the division so that eps = 0 cannot turn 0/0 into NaN.
    out = torch.where(_constant_groups(g), torch.zeros_like(out), out)
    return out.reshape(-1)


@register_advantage("grpo", scale="group")
def grpo_advantages(
    rewards: torch.Tensor,  # (N,) group-major, N = B*G
    group_size: int,
    scale: str = "group",
    eps: float = 1e-6,
) -> torch.Tensor:  # (N,)
    """GRPO outcome advantage (r_i - mean(r)) / std(r), DeepSeekMath arXiv 2402.03300 sec. 4.1.2.

    std is the unbiased (n - 1) group std plus ``eps``; see the module docstring for ``scale``.
    With ``scale="none"`` this is Dr.GRPO's r_i - mean(r) (arXiv 2503.20783 eq. 3).
    """
    g = as_groups(rewards, group_size)
    return _scale(g - g.mean(dim=1, keepdim=True), g, scale, eps)


# Dr.GRPO (arXiv 2503.20783 eq. 3) is GRPO's centring without the std division: the same function
# under a second name whose default scale is "none".
register_advantage("dr_grpo", scale="none")(grpo_advantages)
dr_grpo_advantages = functools.partial(grpo_advantages, scale="none")


@register_advantage("rloo", scale="none")
def rloo_advantages(
    rewards: torch.Tensor,  # (N,) group-major, N = B*G
    group_size: int,
    scale: str = "none",
    eps: float = 1e-6,
) -> torch.Tensor:  # (N,)
    """REINFORCE leave-one-out advantage r_i - mean_{j != i} r_j, RLOO arXiv 2402.14740 eq. 6.

    Computed as (G r_i - sum_j r_j) / (G - 1); a group of one has no other sample and gets 0.
    """
    g = as_groups(rewards, group_size)
    size = g.shape[1]
    if size < 2:
        centred = torch.zeros_like(g)
    else:
        centred = (size * g - g.sum(dim=1, keepdim=True)) / (size - 1)
    return _scale(centred, g, scale, eps)


@register_advantage("reinforce", grouped=False, options={"reinforce_baseline": "baseline"})
def reinforce_advantages(
    rewards: torch.Tensor,  # (N,) group-major, N = B*G
    group_size: int = 1,
    baseline: bool = False,
) -> torch.Tensor:  # (N,)
    """REINFORCE (Williams 1992; the RLOO paper's arXiv 2402.14740 eq. 2) with the raw reward.

    With ``baseline`` the batch mean reward is subtracted (a constant baseline, unbiased).
    Groups play no role: ``group_size`` only checks that whole groups were passed.
    """
    g = as_groups(rewards, group_size).reshape(-1)
    if baseline and g.numel() > 0:
        if bool(g.amax() == g.amin()):
            return torch.zeros_like(g)
        return g - g.mean()
    return g


@register_advantage("softmax", options={"softmax_beta": "beta"})
def softmax_advantages(
    rewards: torch.Tensor,  # (N,) group-major, N = B*G
    group_size: int,
    beta: float = 1.0,
) -> torch.Tensor:  # (N,)
    """exp(beta r_i) / sum_j exp(beta r_j) - 1/G per group.

    A group-relative weighting in the spirit of GRPO (arXiv 2402.03300): the softmax weights
    sum to 1 so the advantages sum to 0 within a group, and larger ``beta`` concentrates the
    credit on the best samples. torch.softmax subtracts the max first, so large rewards cannot
    overflow.
    """
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"softmax_beta must be finite and > 0, got {beta!r}")
    g = as_groups(rewards, group_size)
    out = torch.softmax(beta * g, dim=1) - 1.0 / g.shape[1]
    return torch.where(_constant_groups(g), torch.zeros_like(out), out).reshape(-1)


def _batch_normalised(x: torch.Tensor, eps: float) -> torch.Tensor:  # x: (N,) -> (N,)
    """(x - mean(x)) / (std(x) + eps) over every value given; exactly 0 when they all agree."""
    if x.numel() == 0 or bool(x.amax() == x.amin()):
        return torch.zeros_like(x)
    return (x - x.mean()) / (_std(x) + eps)


@register_advantage("reinforce_pp", grouped=False)
def reinforce_pp_advantages(
    rewards: torch.Tensor,  # (N,) group-major, N = B*G: the whole step batch, all processes
    group_size: int = 1,
    eps: float = 1e-6,
) -> torch.Tensor:  # (N,)
    """REINFORCE++ (arXiv 2501.03262 v9, "Global Advantage Normalization"): the reward
    normalised over the global batch, (r_i - mean_batch) / (std_batch + eps); no critic, no
    per-prompt baseline.

    This is ``reinforce`` with ``reinforce_baseline`` (the batch-mean baseline) then divided by the
    batch std; no ``scale`` preset gives it (``scale=batch`` centres per group). "Batch" is the
    tensor given: the trainer passes every process's rewards, so the statistics are global. The
    paper's token-level KL-in-return is not reproduced: with ``kl_mode=reward`` the summed k1 KL
    is taken off each sequence's reward first (the return at its first token), then normalised.
    """
    return _batch_normalised(as_groups(rewards, group_size).reshape(-1), eps)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantages(
    rewards: torch.Tensor,  # (N,) group-major, N = B*G: the whole step batch, all processes
    group_size: int,
    eps: float = 1e-6,
) -> torch.Tensor:  # (N,)
    """REINFORCE++ w/ baseline (arXiv 2501.03262 v9, the k > 1 variant): the group's
    mean reward is subtracted, c_i = r_i - mean_g, then c is normalised over the global batch,
    (c_i - mean_batch(c)) / (std_batch(c) + eps); mean_batch(c) is 0 up to rounding.

    Unlike ``grpo`` with ``scale=batch``, which divides by the std of the raw rewards (between-
    group spread included), the std here is that of the group-centred values: only the spread
    within groups. A group whose rewards all agree gets exactly 0 (and still counts in the std).
    """
    g = as_groups(rewards, group_size)
    out = _batch_normalised((g - g.mean(dim=1, keepdim=True)).reshape(-1), eps).reshape(g.shape)
    return torch.where(_constant_groups(g), torch.zeros_like(out), out).reshape(-1)


def group_advantages(
    rewards: torch.Tensor,  # (N,) group-major, N = B*G
    group_size: int,
    estimator: str,
    scale: str | None = None,
    eps: float = 1e-6,
    **options,
) -> torch.Tensor:  # (N,)
    """Dispatch ``algorithm.advantage`` to the registered estimator; see the module docstring.

    ``scale=None`` means the estimator's own default (grpo: "group", dr_grpo and rloo: "none");
    ``scale`` and ``eps`` go only to mean-centred estimators. ``options`` are the estimator's
    own keywords, by its config key or its parameter name (``softmax_beta=`` or ``beta=``);
    one that does not apply is an error rather than silently ignored.
    """
    entry = ADVANTAGES.entry(estimator)
    if entry.critic:
        raise ValueError(f"estimator {estimator!r} is per-token over a learned critic: call its function "
                         f"(algo.ADVANTAGES[{estimator!r}].fn) with token rewards and values")
    kwargs = {entry.keyword(name): value for name, value in options.items()}
    if entry.scale is not None:
        kwargs.update(scale=entry.scale if scale is None else scale, eps=eps)
    elif scale is not None:
        scaled = ", ".join(name for name, e in ADVANTAGES.items() if e.scale is not None)
        raise ValueError(
            f"scale={scale!r} does not apply to estimator {estimator!r}; pass scale=None "
            f"(scale is for {scaled})"
        )
    return entry.fn(rewards, group_size, **kwargs)
