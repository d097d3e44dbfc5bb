"""A step's metrics across processes in one collective.

Each phase adds this process's partial sums (and maxima) under fixed names; `reduce` gathers all
of them at once (one all-gather of a float64 vector) and sums or maxes each over the processes.
Every process must add the same names, whatever its data: the vector's layout is the sorted
names. The reward and length metrics then divide the global sums as float32, as they were
computed before they shared a collective, so a run's logged numbers did not change.
"""

from __future__ import annotations

import math

import torch

from grpo_trainer import algo
from grpo_trainer.record import RolloutRecord


class StepStats:
    def __init__(self):
        self._sum: dict[str, float] = {}
        self._max: dict[str, float] = {}

    def add(self, key: str, value: float) -> None:
        self._sum[key] = self._sum.get(key, 0.0) + float(value)

    def peak(self, key: str, value: float) -> None:
        self._max[key] = max(self._max.get(key, -math.inf), float(value))

    def add_nanmean(self, key: str, x: torch.Tensor) -> None:
        """Parts of the mean of the non-NaN values of x over all processes (see `nanmean`)."""
        x = x.to(torch.float32)
        valid = ~torch.isnan(x)
        self.add(key + "#sum", x[valid].sum().item())
        self.add(key + "#n", valid.sum().item())

    def reduce(self, acc) -> dict[str, float]:
        """Collective: the global value of every name."""
        keys = sorted(self._sum) + sorted(self._max)
        local = [self._sum[k] for k in sorted(self._sum)] + [self._max[k] for k in sorted(self._max)]
        every = acc.gather(torch.tensor([local], dtype=torch.float64, device=acc.device)).cpu()  # (processes, K)
        n_sum = len(self._sum)
        return {k: (every[:, j].sum() if j < n_sum else every[:, j].max()).item() for j, k in enumerate(keys)}


def nanmean(reduced: dict[str, float], key: str) -> float:
    total, count = reduced[key + "#sum"], reduced[key + "#n"]
    if count <= 0:
        return math.nan
    return (torch.tensor(total, dtype=torch.float32) / torch.tensor(count, dtype=torch.float32)).item()


def add_rollout_stats(stats: StepStats, generated: list[RolloutRecord]) -> None:
    """Over every sample generated this step (all dynamic-sampling rounds)."""
    cat = lambda name: torch.cat([getattr(r, name) for r in generated])  # noqa: E731
    rewards, lengths = cat("rewards"), cat("completion_lens").to(torch.float32)
    stats.add_nanmean("reward/mean", rewards)
    stats.add_nanmean("reward/accuracy", cat("correct").to(torch.float32))
    stats.add_nanmean("reward/format", cat("formatted").to(torch.float32))
    stats.add_nanmean("completion/len_mean", lengths)
    stats.add_nanmean("completion/truncated", cat("truncated").to(torch.float32))
    for label in generated[0].components:
        stats.add_nanmean(f"reward/{label}", torch.cat([r.components[label] for r in generated]))
    stats.add("reward/timeouts", torch.tensor([float(r.num_timeouts) for r in generated]).sum().item())
    stats.add("reward/std#s1", rewards.sum().item())
    stats.add("reward/std#s2", (rewards * rewards).sum().item())
    stats.add("reward/std#n", float(rewards.numel()))
    stats.peak("completion/len_max", lengths.max().item() if lengths.numel() else -math.inf)
    zero_var = (~algo.informative_groups(rewards, generated[0].group_size)).to(torch.float32)
    stats.add_nanmean("groups/zero_variance_frac", zero_var)
    stats.add("rollout/tokens", float(sum(r.num_tokens for r in generated)))
    if generated[0].tool_counts is not None:  # multi-turn tool use (the same on every process)
        counts = cat("tool_counts").to(torch.float32)  # (N, 4) turns, calls, errors, timeouts
        used = counts[:, 1] > 0
        stats.add_nanmean("tools/turns", counts[:, 0])
        stats.add_nanmean("tools/calls_per_sample", counts[:, 1])
        stats.add_nanmean("tools/used_frac", used.to(torch.float32))
        stats.add("tools/errors", counts[:, 2].sum().item())
        stats.add("tools/timeouts", counts[:, 3].sum().item())
        stats.add("tools/result_tokens", float(sum(int(r.tool_mask.sum()) for r in generated)))
        stats.add_nanmean("reward/used_tool", rewards[used])
        stats.add_nanmean("reward/no_tool", rewards[~used])
    for label in generated[0].components:  # for the reward guard: samples each reward gave a finite score
        stats.add(f"guard/{label}#finite", sum(int(torch.isfinite(r.components[label]).sum()) for r in generated))
        stats.add(f"guard/{label}#n", float(sum(r.num_rows for r in generated)))


def finite_counts(reduced: dict[str, float], labels: list[str]) -> dict[str, tuple[float, float]]:
    """Per reward label: (samples with a finite score, samples), over all processes (RewardGuard.update)."""
    return {k: (reduced[f"guard/{k}#finite"], reduced[f"guard/{k}#n"]) for k in labels}


def rollout_metrics(reduced: dict[str, float], labels: list[str]) -> dict[str, float]:
    metrics = {key: nanmean(reduced, key) for key in ("reward/mean", "reward/accuracy", "reward/format",
                                                      "completion/len_mean", "completion/truncated")}
    metrics["reward/timeouts"] = reduced["reward/timeouts"]
    for label in labels:
        metrics[f"reward/{label}"] = nanmean(reduced, f"reward/{label}")
    # Sums as float32, as the variance was computed before (n - 1: Bessel).
    s1, s2, n = torch.tensor([reduced["reward/std#s1"], reduced["reward/std#s2"], reduced["reward/std#n"]],
                             dtype=torch.float32)
    metrics["reward/std"] = (max((s2 - s1 * s1 / n).item(), 0.0) / max(n.item() - 1, 1)) ** 0.5
    metrics["completion/len_max"] = reduced["completion/len_max"]
    metrics["groups/zero_variance_frac"] = nanmean(reduced, "groups/zero_variance_frac")
    if "tools/turns#n" in reduced:
        for key in ("tools/turns", "tools/calls_per_sample", "tools/used_frac", "reward/used_tool", "reward/no_tool"):
            metrics[key] = nanmean(reduced, key)
        for key in ("tools/errors", "tools/timeouts", "tools/result_tokens"):
            metrics[key] = reduced[key]
    return metrics
