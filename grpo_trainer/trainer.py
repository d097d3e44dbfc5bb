"""The GRPO loop, top to bottom:

    rollout -> reward -> advantage -> micro-batched update -> weight sync -> log -> checkpoint

Each process owns a rollout engine and a disjoint share of every step's prompts; a group (the G
samples of one prompt) never spans processes. Loss normalisers are global (summed over all
micro-batches and processes) so the update does not depend on how the batch is cut.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import get_scheduler

from grpo_trainer import algo, distributed, lora
from grpo_trainer.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from grpo_trainer.config import Config, save_config
from grpo_trainer.data import DEFAULT_INSTRUCTION, PromptSampler, load_examples, render_prompts
from grpo_trainer.forward import completion_logprobs, pack, plan_micro_batches
from grpo_trainer.metrics import MetricsLogger, PhaseTimer
from grpo_trainer.models import load_causal_lm, load_tokenizer, resolve_model_path
from grpo_trainer.rewards import build_reward_fn
from grpo_trainer.rollout import RolloutBatch, SamplingConfig, make_engine
from grpo_trainer.rollout.weights import iter_full_weights

log = logging.getLogger(__name__)


class GRPOTrainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        t, r, a = cfg.trainer, cfg.rollout, cfg.algorithm
        self.acc = acc = distributed.make_accelerator(t.mixed_precision, t.micro_batch_size, t.max_grad_norm)
        if t.prompts_per_step % acc.num_processes:
            raise ValueError(f"trainer.prompts_per_step={t.prompts_per_step} must be divisible by the "
                             f"number of processes ({acc.num_processes})")
        self.local_prompts = t.prompts_per_step // acc.num_processes
        set_seed(t.seed)
        self.threads = t.torch_threads or torch.get_num_threads()
        self.run_dir = Path(t.output_dir)

        with acc.main_process_first():  # one process converts/downloads, the others reuse it
            self.model_path = resolve_model_path(cfg.model.name_or_path)
        self.tokenizer = load_tokenizer(self.model_path, cfg.model.trust_remote_code)

        # Data: every process renders all prompts; the sampler hands each its own share.
        examples = load_examples(cfg.data.source, cfg.data.split, cfg.data.num_examples, cfg.data.seed,
                                 cfg.data.difficulty, cfg.data.question_key, cfg.data.answer_key)
        self.examples, self.prompt_texts, self.prompt_ids, dropped = render_prompts(
            examples, self.tokenizer, cfg.data.instruction or DEFAULT_INSTRUCTION, cfg.data.system_prompt,
            cfg.data.max_prompt_length)
        if dropped:
            log.warning("dropped %d prompts longer than data.max_prompt_length=%d", dropped, cfg.data.max_prompt_length)
        self.sampler = PromptSampler(len(self.examples), seed=cfg.data.seed, rank=acc.process_index,
                                     world_size=acc.num_processes)

        policy = load_causal_lm(self.model_path, cfg.model.dtype, cfg.model.trust_remote_code)
        if cfg.model.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        policy = lora.wrap(policy, cfg.model.lora, cfg.model.gradient_checkpointing)
        # No reference model at all when beta = 0: it would only cost memory and a forward pass.
        # With LoRA it is the policy with its adapters off; under ZeRO-3 it is sharded too.
        self.ref = None
        if a.beta > 0:
            self.ref = lora.AdapterDisabled(policy) if cfg.model.lora.enabled else distributed.prepare_reference(
                acc, load_causal_lm(self.model_path, cfg.model.dtype, cfg.model.trust_remote_code))
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=t.learning_rate,
                                      weight_decay=t.weight_decay,
                                      betas=(t.adam_beta1, t.adam_beta2))
        scheduler = get_scheduler(t.lr_scheduler, optimizer, num_warmup_steps=t.warmup_steps,
                                  num_training_steps=t.max_steps)
        self.model, self.optimizer, self.scheduler = acc.prepare(policy, optimizer, scheduler)

        self.reward_fn = build_reward_fn(cfg.reward.functions, timeout_s=cfg.reward.timeout_s,
                                         max_chars=cfg.reward.max_chars, num_workers=cfg.reward.num_workers,
                                         format_gated=cfg.reward.format_gated)
        self.sampling = SamplingConfig(r.num_generations, r.max_completion_length, r.temperature, r.top_p, r.top_k)
        max_prompt = max(len(p) for p in self.prompt_ids)
        self.engine = make_engine(
            r.backend, model_path=self.model_path, policy=acc.unwrap_model(self.model),
            dtype=r.dtype or cfg.model.dtype,
            seed=r.seed, max_model_len=max_prompt + r.max_completion_length, kv_cache_gib=r.kv_cache_gib,
            gpu_memory_utilization=r.gpu_memory_utilization, enforce_eager=r.enforce_eager,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
        torch.set_num_threads(self.threads)  # engines lower it for serving
        self.step = 0

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[dict]:
        cfg, acc = self.cfg, self.acc
        resume_from = resolve_resume(cfg.resume, self.run_dir)
        if resume_from is not None:
            self._resume(resume_from)
        elif acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        if self.step >= cfg.trainer.max_steps:
            log.info("run in %s already finished at step %d; nothing to do", self.run_dir, self.step)
            return []
        self.logger = MetricsLogger(self.run_dir, acc.is_main_process, self.step, cfg.trainer.max_steps)
        try:
            while self.step < cfg.trainer.max_steps:
                self.step += 1
                metrics = self.train_step()
                self.logger.log(self.step, metrics)
                if self._should_save():
                    self.save()
        finally:
            self.logger.close()
            self.reward_fn.close()
        if acc.is_main_process:
            print(self.logger.summary(), flush=True)
        return self.logger.history

    def train_step(self) -> dict:
        cfg, acc, timer = self.cfg, self.acc, PhaseTimer()
        with timer("step"):
            idx = self.sampler.next_batch(self.local_prompts)
            with timer("rollout"):
                batch = self.engine.generate([self.prompt_ids[i] for i in idx], self.sampling, self._rollout_seed())
            with timer("reward"):
                rewards, rmetrics, texts = self._score(idx, batch)
            advantages = self._advantages(rewards)
            with timer("train"):
                tmetrics = self._update(batch, advantages)
            with timer("sync"):
                self.sync_weights()
        self._log_samples(idx, batch, texts, rewards)
        n_tokens = acc.reduce(torch.tensor(float(batch.num_tokens)), "sum").item()
        metrics = {**rmetrics, **tmetrics, "train/lr": self.scheduler.get_last_lr()[0]}
        metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
        metrics["throughput/rollout_tokens_per_s"] = n_tokens / max(timer.seconds["rollout"], 1e-9)
        return metrics

    # ------------------------------------------------------------------ phases
    def _rollout_seed(self) -> int:
        # A function of (seed, step, rank) only: a resumed run draws the same completions.
        return (self.cfg.rollout.seed * 1_000_003 + self.step * 7919 + self.acc.process_index) % (2**31)

    def _score(self, idx: list[int], batch: RolloutBatch):
        G = self.cfg.rollout.num_generations
        texts = self.tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
        rows = [self.examples[i] for i in idx for _ in range(G)]
        columns = {k: [row[k] for row in rows] for k in rows[0] if k not in ("question", "answer", "gold")}
        out = self.reward_fn(prompts=[self.prompt_texts[i] for i in idx for _ in range(G)], completions=texts,
                             completion_ids=batch.completion_ids, answers=[row["answer"] for row in rows],
                             **columns)
        rewards = torch.tensor(out.rewards, dtype=torch.float32)  # (B*G,)
        lengths = torch.tensor([len(c) for c in batch.completion_ids], dtype=torch.float32)
        local = {
            "reward/mean": rewards, "reward/accuracy": torch.tensor(out.correct, dtype=torch.float32),
            "reward/format": torch.tensor(out.formatted, dtype=torch.float32),
            "completion/len_mean": lengths,
            "completion/truncated": torch.tensor(batch.truncated, dtype=torch.float32),
        }
        for label, scores in out.components.items():
            local[f"reward/{label}"] = torch.tensor([math.nan if s is None else s for s in scores])
        metrics = {k: self._global_nanmean(v) for k, v in local.items()}
        all_rewards = self.acc.gather(rewards)
        metrics["reward/std"] = all_rewards.std().item() if all_rewards.numel() > 1 else 0.0
        metrics["completion/len_max"] = self.acc.gather(lengths).max().item()
        informative = algo.informative_groups(all_rewards, G)
        metrics["groups/zero_variance_frac"] = 1.0 - informative.float().mean().item()
        metrics["reward/timeouts"] = float(out.num_timeouts)
        return rewards, metrics, texts

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        # Computed over the whole step batch (all processes) so `scale=batch` sees every reward;
        # each process keeps its own contiguous slice (its groups).
        a = self.cfg.algorithm
        all_rewards = self.acc.gather(rewards)
        adv = algo.group_advantages(all_rewards, self.cfg.rollout.num_generations, a.advantage, a.scale)
        n = rewards.numel()
        return adv[self.acc.process_index * n:(self.acc.process_index + 1) * n]

    def _update(self, batch: RolloutBatch, advantages: torch.Tensor) -> dict:
        cfg, acc, a = self.cfg, self.acc, self.cfg.algorithm
        G = self.cfg.rollout.num_generations
        prompts = [batch.prompt_ids[i // G] for i in range(len(batch.completion_ids))]
        # A row whose advantage is 0 adds exactly nothing to the gradient when no KL or entropy
        # term is on, so it is left out of the forward/backward (it still counts in the
        # normalisers below). With most groups all-wrong early in training, this is most rows.
        needs_all = self.ref is not None or a.entropy_coef != 0 or distributed.lockstep(acc)
        active = [i for i in range(len(prompts)) if needs_all or advantages[i] != 0] or [0]
        plan = plan_micro_batches([len(prompts[i]) + len(batch.completion_ids[i]) for i in active],
                                  cfg.trainer.micro_batch_size)
        mbs = [pack([active[j] for j in rows], [prompts[active[j]] for j in rows],
                    [batch.completion_ids[active[j]] for j in rows], self.tokenizer.pad_token_id).to(acc.device)
               for rows in plan]
        # Global normalisers: the same loss whatever the micro-batch or process split.
        num_tokens = acc.reduce(torch.tensor(float(batch.num_tokens), device=acc.device), "sum").item()
        num_seqs = acc.reduce(torch.tensor(float(len(batch.completion_ids)), device=acc.device), "sum").item()
        adv = advantages.to(acc.device)

        old_logps, ref_logps = [None] * len(mbs), [None] * len(mbs)
        with torch.no_grad():
            for k, mb in enumerate(mbs):
                if a.num_iterations > 1:  # several updates per batch: the ratio needs pi_old fixed
                    old_logps[k] = completion_logprobs(self.model, mb, cfg.rollout.temperature)[0]
                if self.ref is not None:
                    ref_logps[k] = completion_logprobs(self.ref, mb, cfg.rollout.temperature)[0]

        sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_low": 0.0, "clip_high": 0.0}
        self.model.train()
        for _ in range(a.num_iterations):
            for k, mb in enumerate(mbs):
                # Gradients are all-reduced (DDP) or the optimizer stepped (DeepSpeed) only on the last.
                with distributed.accumulate(acc, self.model, last=k == len(mbs) - 1):
                    logp, entropy = completion_logprobs(self.model, mb, cfg.rollout.temperature, with_entropy=True)
                    old = logp.detach() if old_logps[k] is None else old_logps[k]
                    per_token, stats = algo.clipped_policy_loss(
                        logp, old, adv[mb.rows], mb.completion_mask, a.eps_low, a.eps_high, a.dual_clip_c)
                    kl = None
                    if ref_logps[k] is not None:
                        kl = algo.kl_estimate(logp, ref_logps[k], a.kl_estimator)
                        per_token = per_token + a.beta * kl
                    if a.entropy_coef:
                        per_token = per_token - a.entropy_coef * entropy
                    loss = algo.aggregate_loss(per_token, mb.completion_mask, a.loss_agg, num_tokens, num_seqs,
                                               cfg.rollout.max_completion_length)
                    # Gradients are averaged over processes; the loss is already a global sum.
                    acc.backward(loss * acc.num_processes)
                m = mb.completion_mask
                n_tok = m.sum().item()
                sums["loss"] += loss.item()
                sums["entropy"] += entropy[m].sum().item()
                sums["kl"] += kl[m].sum().item() if kl is not None else 0.0
                sums["clip_low"] += stats["clip_frac_low"].item() * n_tok
                sums["clip_high"] += stats["clip_frac_high"].item() * n_tok
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.trainer.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

        passes = a.num_iterations
        local_tokens = float(sum(mb.completion_mask.sum().item() for mb in mbs)) * passes
        totals = acc.reduce(torch.tensor([sums["entropy"], sums["kl"], sums["clip_low"], sums["clip_high"],
                                          local_tokens], device=acc.device), "sum").tolist()
        denom = max(totals[4], 1.0)
        return {"train/loss": acc.reduce(torch.tensor(sums["loss"] / passes, device=acc.device), "sum").item(),
                "train/entropy": totals[0] / denom, "train/kl": totals[1] / denom,
                "train/clip_frac_low": totals[2] / denom, "train/clip_frac_high": totals[3] / denom,
                "train/grad_norm": float(grad_norm),
                "train/active_rows": acc.reduce(torch.tensor(float(len(active)), device=acc.device), "sum").item()}

    def sync_weights(self) -> None:
        """Push the policy's weights into this process's rollout engine."""
        self.engine.load_weights(iter_full_weights(self.acc.unwrap_model(self.model)))
        torch.set_num_threads(self.threads)

    # ------------------------------------------------------------------ bookkeeping
    def _global_nanmean(self, x: torch.Tensor) -> float:
        x = x.to(self.acc.device, torch.float32)
        valid = ~torch.isnan(x)
        s = self.acc.reduce(torch.stack([x[valid].sum(), valid.sum().float()]), "sum")
        return (s[0] / s[1]).item() if s[1] > 0 else math.nan

    def _log_samples(self, idx, batch, texts, rewards) -> None:
        t = self.cfg.trainer
        if not self.acc.is_main_process or t.log_samples_every <= 0 or self.step % t.log_samples_every:
            return
        G = self.cfg.rollout.num_generations
        rows = range(min(t.num_log_samples, len(texts)))
        self.logger.log_samples(self.step, [
            {"question": self.examples[idx[i // G]]["question"], "gold": self.examples[idx[i // G]]["gold"],
             "completion": texts[i], "reward": rewards[i].item(), "truncated": batch.truncated[i]}
            for i in rows])

    def _should_save(self) -> bool:
        every = self.cfg.trainer.save_every
        return self.step == self.cfg.trainer.max_steps or (every > 0 and self.step % every == 0)

    def save(self) -> Path:
        state = {"step": self.step, "sampler": self.sampler.state_dict(),
                 "model_name_or_path": self.cfg.model.name_or_path}
        return save_checkpoint(self.acc, self.model, self.tokenizer, self.run_dir, self.step, state,
                               self.cfg.trainer.keep_last)

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(self.acc, path)
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.sync_weights()  # the engine started from the base weights
        log.info("resumed from %s at step %d", path, self.step)
