"""The policy update of one training step: `num_iterations` passes over `num_mini_batches`
mini-batches, each an optimizer step made of micro-batched forward/backward passes.

Normalisers (token and sequence counts) are summed over the whole mini-batch on every process
before any backward, so the gradient does not depend on how rows are cut into micro-batches or
spread over processes (DDP averages gradients over processes, hence the `* num_processes`).

The rows are a rollout record's (record.py): its loss mask says which tokens count, its per-token
advantages weight them, its engine log-probs feed the mismatch metrics (the weight-sync canary) and
the rollout correction, both against pi_old: at one pass over one mini-batch that is the training
forward's own detached log-probs, so neither costs a forward. The update's
metrics are partial sums added to the step's StepStats (one collective for the whole step);
`metrics` turns their global values into the logged numbers.
"""

from __future__ import annotations

import functools
import math

import torch

from grpo_trainer import algo, distributed, entropy_control
from grpo_trainer.forward import MicroBatch, completion_logprobs, record_micro_batches, record_per_token
from grpo_trainer.record import RolloutRecord
from grpo_trainer.step_stats import StepStats


def record_logprobs(model, record: RolloutRecord, device, temperature: float, micro_batch_size: int,
                    max_tokens: int | None = None, share_prompt: bool = True) -> torch.Tensor:
    """(N, C) float32: every row's completion log-probs under `model`, without gradients (the
    reference for the KL-in-reward penalty); 0 at padding."""
    return record_per_token(record, lambda mb: completion_logprobs(model, mb, temperature, share_prompt=share_prompt)[0],
                            micro_batch_size, max_tokens, device)


def mini_batches(acc, record: RolloutRecord, num_mini_batches: int) -> list[tuple[list[int], int, float, float]]:
    """The step's mini-batches, shared by the policy and the critic: for each k, (the rows in the
    loss among k, k+M, k+2M, ..., the row a process with none of them computes at zero weight, and
    the loss tokens and rows of that mini-batch summed over all processes). All normalisers come
    from one collective, before any backward."""
    n, M = record.num_rows, num_mini_batches
    in_loss, loss_tokens = record.in_loss.tolist(), record.loss_mask.sum(dim=1).tolist()
    chunks = [[i for i in range(k, n, M) if in_loss[i]] for k in range(M)]
    local = [v for rows in chunks for v in (float(sum(loss_tokens[i] for i in rows)), float(len(rows)))]
    counts = acc.reduce(torch.tensor(local, dtype=torch.float64, device=acc.device), "sum").tolist()
    # Every process must take part in each gradient all-reduce: one with no rows here runs row k
    # (the slice's first; the last row if there are fewer rows than mini-batches) at zero weight.
    return [(rows, min(k, n - 1), counts[2 * k], counts[2 * k + 1]) for k, rows in enumerate(chunks)]


# The update's partial sums (update/<key> in the step's StepStats).
_SUMS = ("loss", "kl", "entropy", "clip_low", "clip_high", "tokens", "old_new_kl", "old_new_tokens", "tis")
# (metric, sum, divided by): logged as mismatch/<metric>; the rho band is algorithm.rollout_correction's.
_MISMATCH_MEANS = (("mean_abs_logp_diff", "abs_diff", "tokens"), ("token_out_frac", "tokens_out", "tokens"),
                   ("seq_out_frac", "seqs_out", "seqs"), ("corrected_frac", "corrected", "tokens"))


class PolicyUpdater:
    def __init__(self, acc, model, optimizer, ref, pad_id: int, algorithm, temperature: float,
                 micro_batch_size: int, max_grad_norm: float, max_completion_length: int, guard=None,
                 micro_batch_tokens: int | None = None, share_prompt: bool = True):
        self.acc, self.model, self.optimizer, self.ref, self.guard = acc, model, optimizer, ref, guard
        self.pad_id, self.a, self.temperature = pad_id, algorithm, temperature
        self.micro_batch_size, self.max_grad_norm, self.max_len = micro_batch_size, max_grad_norm, max_completion_length
        # False under gradient checkpointing (see forward.py): transformers drops the key/value cache
        # in checkpointed layers whenever the model is in training mode, gradients or not, and the
        # reference may be the same network (LoRA), so every forward here follows it.
        self.micro_batch_tokens, self.share_prompt = micro_batch_tokens, share_prompt
        # The registered policy loss (algorithm.policy_loss) with its algorithm.* options, looked up once.
        entry = algo.POLICY_LOSSES[algorithm.policy_loss]
        self.policy_loss = functools.partial(entry.fn, **entry.bind(vars(algorithm)))
        # Rows whose per-token values the sample log shows (samples.jsonl): set before `run`, read after.
        self.capture: set[int] = set()
        self.captured: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def need_old(self) -> bool:
        """Old log-probs must be frozen before the first update when there is more than one; with
        one, the training forward's detached log-probs are pi_old (the correction uses them too)."""
        a = self.a
        return a.num_iterations > 1 or a.num_mini_batches > 1

    def _logprobs(self, model, mb: MicroBatch) -> torch.Tensor:
        return completion_logprobs(model, mb, self.temperature, share_prompt=self.share_prompt)[0]

    def _sum(self, *values: float) -> list[float]:
        return self.acc.reduce(torch.tensor(values, dtype=torch.float64, device=self.acc.device), "sum").tolist()

    def update(self, record: RolloutRecord, beta: float, seed: int = 0) -> dict:
        """`run` and its metrics, reduced on their own (callers without a step's StepStats)."""
        stats = StepStats()
        self.run(record, beta, stats, seed)
        return self.metrics(stats.reduce(self.acc))

    def run(self, record: RolloutRecord, beta: float, stats: StepStats, seed: int = 0) -> None:
        """`seed`: the step's draw of algorithm.entropy_control=clip_cov (entropy_control.py)."""
        a, acc = self.a, self.acc
        if record.advantages is None:
            raise ValueError("the record has no advantages: set them (record.with_advantages) before the update")
        self.captured = {}
        kl_in_loss = self.kl_in_loss(beta)
        need_old = self.need_old
        control = entropy_control.select_tokens(acc, record, a, seed, stats)  # (N, C) bool or None
        trained = self.trained_rows(record, beta, control)
        minis = []
        for rows, stand_in, tokens, seqs in mini_batches(acc, record, a.num_mini_batches):
            train_rows = [i for i in rows if trained[i]]
            dummy = not train_rows  # nothing to train here: a zero-weighted micro-batch (see mini_batches)
            plan_rows = train_rows or [stand_in]
            mbs = [mb.to(acc.device) for mb in record_micro_batches(record, plan_rows, self.micro_batch_size,
                                                                    self.micro_batch_tokens)]
            dummies = [dummy] * len(mbs)
            if distributed.lockstep(acc):  # ZeRO-3: every process runs as many forwards as the busiest
                most = int(acc.gather(torch.tensor([len(mbs)], device=acc.device)).max())
                dummies += [True] * (most - len(mbs))
                mbs += [mbs[0]] * (most - len(mbs))
            minis.append({"mbs": mbs, "tokens": max(tokens, 1.0), "seqs": max(seqs, 1.0), "dummy": dummies})

        with torch.no_grad():
            for mini in minis:
                mini["old"] = [self._logprobs(self.model, mb) if need_old else None for mb in mini["mbs"]]
                mini["ref"] = [self._logprobs(self.ref, mb) if kl_in_loss else None for mb in mini["mbs"]]

        # Per token, on the device once; micro-batches take their rows' slices.
        rec = {"adv": record.advantages.to(acc.device), "engine": record.logprobs.to(acc.device),
               "control": None if control is None else control.to(acc.device)}
        sums = dict.fromkeys(_SUMS, 0.0)
        grad_norm, passes, stop = torch.tensor(0.0), 0, False
        canary: dict[str, float] = {}  # engine vs trainer on pass 1: algo.mismatch_stats' sums (and maximum)
        self.model.train()
        for _ in range(a.num_iterations):
            passes += 1
            for mini in minis:
                drift = self._step(mini, rec, beta, sums, canary if passes == 1 else None)
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                # A non-finite loss or gradient (on any process) leaves the weights untouched.
                # (Under DeepSpeed the engine has already stepped inside the last backward.)
                if self.guard is None or self.guard.check(acc, sums["loss"], grad_norm):
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if a.target_kl is not None and need_old:
                    kl_sum, tok = self._sum(*drift)
                    if kl_sum / max(tok, 1.0) > a.target_kl:  # the same decision on every process
                        stop = True
                        break
            if stop:
                break

        rows = sum(len(mb.rows) for m in minis for mb, d in zip(m["mbs"], m["dummy"]) if not d)
        self._add_stats(stats, sums, canary, rows, passes, float(grad_norm))

    def kl_in_loss(self, beta: float) -> bool:
        """Whether this step's loss has the KL term (and so needs the reference's log-probs)."""
        return self.ref is not None and beta > 0 and self.a.kl_mode == "loss"

    def trained_rows(self, record: RolloutRecord, beta: float, control: torch.Tensor | None = None) -> list[bool]:
        """Per row, whether the update runs its forward/backward (if it is in the loss). A row with
        advantage 0 contributes exactly nothing when no KL/entropy term is on: it is kept out of
        the forward/backward but still counted in the normalisers."""
        a = self.a
        if self.kl_in_loss(beta) or a.entropy_coef != 0 or not a.skip_zero_advantage or distributed.lockstep(self.acc):
            return [True] * record.num_rows
        trained = record.advantages != 0
        if a.entropy_control == "kl_cov" and self.need_old and control is not None:  # its penalty reaches zero-advantage rows
            trained = trained | control
        return trained.any(dim=1).tolist()

    def skip(self, record: RolloutRecord, stats: StepStats, seed: int = 0) -> None:
        """No update this step (trainer.critic_warmup): the same metric names as `run`, measuring
        nothing (their logged values are NaN)."""
        entropy_control.select_tokens(self.acc, record, self.a, seed, stats)
        self._add_stats(stats, dict.fromkeys(_SUMS, 0.0), {}, 0, 0, 0.0)

    @staticmethod
    def _add_stats(stats: StepStats, sums: dict, canary: dict, rows: int, passes: int, grad_norm: float) -> None:
        for key, value in sums.items():
            stats.add(f"update/{key}", value)
        for key in ("k3", "tokens", "abs_diff", "tokens_out", "seqs_out", "seqs", "corrected"):
            stats.add(f"update/canary_{key}", canary.get(key, 0.0))
        stats.peak("update/canary_max_diff", canary.get("max_abs_diff", 0.0))
        stats.add("update/rows_trained", float(rows))
        # The same on every process (a global norm, a common decision to stop).
        stats.peak("update/passes", float(passes))
        stats.peak("update/grad_norm", grad_norm)

    def metrics(self, tot: dict[str, float]) -> dict:
        """The logged train/* and mismatch/* metrics from the step's reduced StepStats. A value that
        was not measured (no token trained anywhere, no reference, one pass) is NaN (null in
        metrics.jsonl), never 0: 0 would read as "measured, and zero"."""
        a, need_old = self.a, self.need_old
        tok = tot["update/tokens"]
        trained = tok > 0
        per_token = lambda key: tot[key] / tok if trained else math.nan  # noqa: E731
        # No trained token anywhere (every advantage 0): nothing was compared, which is not "no mismatch".
        seen = tot["update/canary_tokens"] > 0
        passes = tot["update/passes"]
        return {"train/loss": tot["update/loss"] / passes if passes else math.nan, "train/entropy": per_token("update/entropy"),
                # With KL in the reward the trainer logs that one instead.
                "train/kl": per_token("update/kl") if self.ref is not None else math.nan,
                "train/clip_frac_low": per_token("update/clip_low"),
                "train/clip_frac_high": per_token("update/clip_high"),
                "train/kl_old_new": (tot["update/old_new_kl"] / tot["update/old_new_tokens"]
                                     if need_old and tot["update/old_new_tokens"] > 0 else math.nan),
                "train/tis_weight_mean": per_token("update/tis") if a.rollout_correction.level is not None else math.nan,
                "train/grad_norm": tot["update/grad_norm"] if passes else math.nan, "train/passes": tot["update/passes"],
                "mismatch/kl": tot["update/canary_k3"] / tot["update/canary_tokens"] if seen else math.nan,
                "mismatch/max_abs_logp_diff": tot["update/canary_max_diff"] if seen else math.nan,
                "mismatch/tokens": tot["update/canary_tokens"], "train/rows_trained": tot["update/rows_trained"],
                **{f"mismatch/{name}": tot[f"update/canary_{key}"] / max(tot[f"update/canary_{per}"], 1.0)
                   if seen else math.nan for name, key, per in _MISMATCH_MEANS},
                **entropy_control.metrics(tot)}

    def _step(self, mini: dict, rec: dict, beta: float, sums: dict, canary: dict | None) -> tuple[float, float]:
        """Forward/backward over one mini-batch's micro-batches; returns (sum old-new, tokens)."""
        acc, mbs = self.acc, mini["mbs"]
        drift = [0.0, 0.0]
        for k, mb in enumerate(mbs):
            # Gradients are all-reduced (DDP) or the optimizer stepped (DeepSpeed) only on the last.
            with distributed.accumulate(acc, self.model, last=k == len(mbs) - 1):
                loss, mask, stats = self._micro_loss(mb, mini["old"][k], mini["ref"][k], rec, beta, mini,
                                                     None if mini["dummy"][k] else canary)
                acc.backward(loss * (0.0 if mini["dummy"][k] else acc.num_processes))
            if mini["dummy"][k]:
                continue
            n_tok = mask.sum().item()
            sums["loss"] += loss.item()
            sums["tokens"] += n_tok
            for key in ("kl", "entropy", "tis"):
                sums[key] += stats[key]
            sums["clip_low"] += stats["clip_frac_low"] * n_tok
            sums["clip_high"] += stats["clip_frac_high"] * n_tok
            drift[0] += stats["old_new"]
            drift[1] += n_tok
        sums["old_new_kl"] += drift[0]
        sums["old_new_tokens"] += drift[1]
        return drift[0], drift[1]

    def _micro_loss(self, mb: MicroBatch, old, ref, rec: dict, beta: float, mini: dict, canary: dict | None):
        a = self.a
        mask = mb.loss_mask
        C = mask.shape[1]
        rows = torch.tensor(mb.rows, device=mask.device)
        logp, entropy = completion_logprobs(self.model, mb, self.temperature, with_entropy=True,
                                            share_prompt=self.share_prompt, entropy_grad=a.entropy_coef != 0)
        old = logp.detach() if old is None else old
        rollout = rec["engine"][rows, :C]  # (M, C) the engine's log-probs, 0 at padding
        rc = a.rollout_correction
        if rc.level is not None:
            w, corrected = algo.correction_weights(old, rollout, mask, rc.level, rc.mode, rc.lower, rc.upper)
        if canary is not None:
            # The weight-sync canary and mismatch metrics, from log-probs this update computes anyway: on
            # pass 1 `old` is the policy last pushed to the engine (the frozen pass, or this forward's own
            # detached values before the first optimizer step), so it must match what the engine sampled.
            mon = algo.mismatch_stats(rollout, old, mask, rc.lower, rc.upper)
            if rc.level is not None:
                mon["corrected"] = corrected.sum().double()
            for key, value in zip(mon, torch.stack(list(mon.values())).tolist()):
                seen = canary.get(key, 0.0)
                canary[key] = max(seen, value) if key == "max_abs_diff" else seen + value
        per_token, stats = self.policy_loss(logp, old, rec["adv"][rows, :C], mask)
        if rec["control"] is not None:  # algorithm.entropy_control on the step's chosen tokens
            per_token = algo.cov_controlled_loss(per_token, logp, old, rec["control"][rows, :C], a.entropy_control,
                                                 a.kl_cov_coef)
        if self.capture.intersection(mb.rows):
            # A registered loss that marks no tokens (stats without "clipped") shows none as clipped.
            self._capture(mb, old, entropy, stats.get("clipped", torch.zeros_like(mask)))
        tis_sum = 0.0
        if rc.level is not None:
            per_token = per_token * w
            tis_sum = w[mask].sum().item()
        kl_sum = 0.0
        if ref is not None:
            kl = algo.kl_estimate(logp, ref, a.kl_estimator)
            per_token = per_token + beta * kl
            kl_sum = kl.detach()[mask].sum().item()
        if a.entropy_coef:
            per_token = per_token - a.entropy_coef * entropy
        loss = algo.aggregate_loss(per_token, mask, a.loss_agg, mini["tokens"], mini["seqs"], self.max_len)
        stats = {"kl": kl_sum, "entropy": entropy[mask].sum().item(), "tis": tis_sum,
                 "clip_frac_low": stats["clip_frac_low"].item(), "clip_frac_high": stats["clip_frac_high"].item(),
                 # k3 estimate of KL(old || new) on the tokens just seen (>= 0, unlike k1): the
                 # target_kl signal.
                 "old_new": algo.kl_estimate(old, logp.detach(), "k3")[mask].sum().item()}
        return loss, mask, stats

    def _capture(self, mb: MicroBatch, old, entropy, clipped) -> None:
        """Per-token values of the rows in `self.capture`, from this forward (no extra one): the
        trainer's log-prob of each sampled token under the policy the engine sampled from (`old`),
        the entropy, and whether the policy loss's clip acted on it in any pass (the tokens its
        clip_frac_low/high count: the token ratio for ppo_clip, the sequence's for GSPO, the
        capped weight for CISPO)."""
        for j, row in enumerate(mb.rows):
            if row in self.capture:
                n = int(mb.completion_mask[j].sum())
                prev = self.captured.get(row, {}).get("clipped")
                clip = clipped[j, :n].cpu() if prev is None else prev | clipped[j, :n].cpu()
                self.captured[row] = {"trainer_logp": old[j, :n].float().cpu(),
                                      "entropy": entropy[j, :n].detach().float().cpu(), "clipped": clip}
