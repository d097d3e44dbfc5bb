"""The step's covariance statistic and the tokens `algorithm.entropy_control` acts on (the maths is
algo/covariance.py, arXiv 2505.22617).

Scope: the whole step batch, every process, chosen once before the update. The paper takes the
covariance over "the batch"; taking it per micro-batch would make the update depend on how rows are
cut (1 vs 4 micro-batches, 1 vs 2 processes), so the loss tokens' log-probs and advantages of all
processes are gathered (one collective, only when a control is on), the covariance and the
selection are computed identically on every process, and each keeps its own rows' part. The
same tokens stay selected through every pass and mini-batch of the step.

log pi here is the engine's sampling log-prob (the rollout record's): it is pi_old, known for
every token before any forward, and the weight-sync canary keeps it within ~1e-11 (fp32 engine)
to ~0.005 nats (bf16 engine) of the trainer's value; using it costs no extra forward pass.
Clip-Cov's random draw is seeded from (trainer.seed, step): resumed runs draw the same tokens.

`train/logp_adv_cov` (the mean of cov_t, i.e. the batch covariance, per loss token) is logged
always, from four sums in the step's one metrics collective; `train/cov_controlled_frac` is the
fraction of loss tokens the control acted on.
"""

from __future__ import annotations

import torch

from grpo_trainer import algo
from grpo_trainer.record import RolloutRecord
from grpo_trainer.step_stats import StepStats


def select_tokens(acc, record: RolloutRecord, algorithm, seed: int, stats: StepStats) -> torch.Tensor | None:
    """(N, C) bool on this process's rows: the tokens the control acts on; None when it is off.
    Adds the covariance sums to `stats` either way."""
    mask = record.loss_mask
    logp, adv = record.logprobs[mask].double(), record.advantages[mask].double()  # (T,) row-major
    stats.add("cov/logp_adv", (logp * adv).sum().item())
    stats.add("cov/logp", logp.sum().item())
    stats.add("cov/adv", adv.sum().item())
    stats.add("cov/tokens", float(logp.numel()))
    a = algorithm
    if a.entropy_control == "none":
        stats.add("cov/controlled", 0.0)
        return None
    # Every process's tokens in rank order: the single-process order of the same global batch.
    counts = acc.gather(torch.tensor([logp.numel()], device=acc.device)).tolist()
    local = torch.stack([logp, adv], dim=1).to(acc.device)  # (T, 2)
    padded = acc.gather(acc.pad_across_processes(local, dim=0, pad_index=0.0)).view(len(counts), -1, 2).cpu()
    every = torch.cat([padded[r, :c] for r, c in enumerate(counts)])  # (T_all, 2)
    cov = algo.logp_adv_covariance(every[:, 0], every[:, 1])
    if a.entropy_control == "clip_cov":
        chosen = algo.select_covariance_tokens(cov, "clip_cov", a.clip_cov_ratio, a.clip_cov_low, a.clip_cov_high,
                                               generator=torch.Generator().manual_seed(seed))
    else:
        chosen = algo.select_covariance_tokens(cov, "kl_cov", a.kl_cov_ratio)
    start = sum(counts[:acc.process_index])
    out = torch.zeros_like(mask)
    out[mask] = chosen[start:start + logp.numel()]
    stats.add("cov/controlled", float(out.sum()))
    return out


def metrics(tot: dict[str, float]) -> dict[str, float]:
    """train/logp_adv_cov = E[log pi * A] - E[log pi] E[A] over the step's loss tokens (the mean of
    cov_t), and the fraction of them the control acted on."""
    n = max(tot["cov/tokens"], 1.0)
    cov = tot["cov/logp_adv"] / n - (tot["cov/logp"] / n) * (tot["cov/adv"] / n)
    return {"train/logp_adv_cov": cov, "train/cov_controlled_frac": tot["cov/controlled"] / n}
