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

from grpo_trainer import algo, distributed, lora, stopping
from grpo_trainer.checkpoint import clear_run, load_checkpoint, resolve_resume, save_checkpoint
from grpo_trainer.config import Config, save_config
from grpo_trainer.data import DEFAULT_INSTRUCTION, PromptSampler, load_examples, render_prompts
from grpo_trainer.faults import NonFiniteGuard, kill_point, raise_if_engine_diverged, sync_sabotaged
from grpo_trainer.metrics import MetricsLogger, PhaseTimer
from grpo_trainer.models import load_causal_lm, load_tokenizer, resolve_model_path
from grpo_trainer.reward_guard import RewardGuard
from grpo_trainer.rewards import build_reward_fn
from grpo_trainer.rollout import RolloutBatch, SamplingConfig, concat_batches, make_engine, select_groups
from grpo_trainer.weights import iter_full_weights
from grpo_trainer.update import PolicyUpdater, StepBatch, row_logprobs

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
        self.eval_examples = []
        if t.eval_every > 0:
            self.eval_examples = load_examples(cfg.data.eval_source or cfg.data.source, "test", t.eval_examples,
                                               cfg.data.seed, cfg.data.difficulty, cfg.data.question_key,
                                               cfg.data.answer_key)
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
        if a.ref_reset_every and (cfg.model.lora.enabled or distributed.zero_stage(acc) == 3):
            raise ValueError("algorithm.ref_reset_every needs a full reference copy: it does not combine with "
                             "model.lora.enabled or ZeRO-3; set algorithm.ref_reset_every=0")
        # Fused: one kernel, no full-size temporaries (foreach's cost 0.5 GB at 135M params). DeepSpeed
        # steps its own flattened partitions, so it gets the plain one.
        optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=t.learning_rate,
                                      weight_decay=t.weight_decay, betas=(t.adam_beta1, t.adam_beta2),
                                      fused=distributed.deepspeed_plugin(acc) is None)
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
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id, sleep=r.sleep)
        torch.set_num_threads(self.threads)  # engines lower it for serving
        self.guard = NonFiniteGuard(t.max_bad_steps)
        self.reward_guard = RewardGuard(t.max_no_reward_steps)
        self.updater = PolicyUpdater(acc, self.model, self.optimizer, self.ref, self.tokenizer.pad_token_id, a,
                                     r.temperature, t.micro_batch_size, t.max_grad_norm, r.max_completion_length,
                                     guard=self.guard, micro_batch_tokens=t.micro_batch_tokens,
                                     share_prompt=not cfg.model.gradient_checkpointing)
        self.step = 0
        self.beta = a.beta  # adapted when algorithm.kl_target is set
        self._reward_kl = None
        # Everything besides model/optimizer/scheduler/RNG (accelerate's) that the next step depends
        # on: each has state_dict()/load_state_dict() and is saved in trainer_state.json.
        self.stateful = {"sampler": self.sampler, "guard": self.guard, "reward_guard": self.reward_guard}

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[dict]:
        cfg, acc = self.cfg, self.acc
        resume_from = resolve_resume(cfg.resume, self.run_dir)
        if resume_from is not None:
            self._resume(resume_from)
        elif acc.is_main_process:
            if cfg.trainer.overwrite:
                clear_run(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
        if self.step >= cfg.trainer.max_steps:
            log.info("run in %s already finished at step %d; nothing to do", self.run_dir, self.step)
            return []
        self.logger = MetricsLogger(self.run_dir, acc.is_main_process, self.step, cfg.trainer.max_steps)
        stopping.defer()  # a SIGINT/SIGTERM from here on stops the run at the end of a step
        try:
            while self.step < cfg.trainer.max_steps:
                self.step += 1
                metrics = self.train_step()
                if self.eval_examples and (self.step % cfg.trainer.eval_every == 0
                                           or self.step == cfg.trainer.max_steps):
                    metrics.update(self.evaluate())
                metrics.update(self.guard.end_step(self.step))
                self.logger.log(self.step, metrics)
                self.guard.raise_if_exhausted(self.step)
                self.reward_guard.raise_if_exhausted(self.step)
                raise_if_engine_diverged(self.step, metrics["mismatch/kl"], cfg.trainer.max_mismatch_kl)
                kill_point("step", self.step)
                stop = stopping.agreed(acc) if self.step < cfg.trainer.max_steps else 0
                if self._should_save() or stop:
                    self.save()
                if stop:
                    raise stopping.RunStopped(self.step, stop)
        finally:
            self.logger.close()
            self.reward_fn.close()
        if acc.is_main_process:
            print(self.logger.summary(), flush=True)
        return self.logger.history

    def train_step(self) -> dict:
        cfg, acc, timer = self.cfg, self.acc, PhaseTimer()
        with timer("step"):
            idx, batch, rewards, samples, dyn = self._collect(timer)  # rollout -> reward -> filter
            self.engine.sleep()  # rollout.sleep: the update gets the engine's GPU memory; the push restores it
            if self.ref is not None and self.beta > 0 and cfg.algorithm.kl_mode == "reward":
                rewards = rewards - self.beta * self._sequence_kl(batch)
            advantages = self._advantages(rewards) * dyn.pop("weight")
            step_batch = StepBatch(
                prompt_ids=batch.row_prompts(), completion_ids=batch.completion_ids, rollout_logprobs=batch.logprobs, advantages=advantages,
                in_loss=~torch.tensor(batch.truncated) if cfg.algorithm.overlong_filter
                else torch.ones(len(batch.truncated), dtype=torch.bool))
            with timer("train"):
                metrics = self.updater.run(step_batch, self.beta)
                self.scheduler.step()
            self._after_update(metrics)
            with timer("sync"):
                self.sync_weights()
        self._log_samples(idx, batch, rewards)
        metrics.update(self._reward_metrics(samples))
        self.reward_guard.observe(self.acc, {k[len("reward/"):]: v for k, v in samples.items()
                                             if k.startswith("reward/")}, self.step)
        metrics.update(dyn)
        metrics["train/lr"] = self.scheduler.get_last_lr()[0]
        metrics["train/beta"] = self.beta
        metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
        n_tokens = acc.reduce(torch.tensor(float(samples["num_tokens"]), device=acc.device), "sum").item()
        metrics["throughput/rollout_tokens_per_s"] = n_tokens / max(timer.seconds["rollout"], 1e-9)
        return metrics

    # ------------------------------------------------------------------ phases
    def _rollout_seed(self, round_: int) -> int:
        # A function of (seed, step, round, rank) only: a resumed run draws the same completions.
        return (self.cfg.rollout.seed * 1_000_003 + self.step * 7919 + round_ * 104_729
                + self.acc.process_index) % (2**31)

    def _collect(self, timer: PhaseTimer):
        """Sample and score groups; with DAPO dynamic sampling, drop groups whose rewards all agree
        and sample fresh prompts until every process holds `local_prompts` groups or
        `max_gen_rounds` is reached (then train on what there is)."""
        a, G = self.cfg.algorithm, self.cfg.rollout.num_generations
        kept_idx, kept_batches, kept_rewards, all_samples = [], [], [], []
        rounds = dropped = 0
        while True:
            rounds += 1
            idx = self.sampler.next_batch(self.local_prompts)
            with timer("rollout"):
                batch = self.engine.generate([self.prompt_ids[i] for i in idx], self.sampling,
                                             self._rollout_seed(rounds - 1))
            with timer("reward"):
                rewards, samples = self._score(idx, batch)
            all_samples.append(samples)
            informative = algo.informative_groups(rewards, G)
            keep = informative.nonzero().flatten().tolist() if a.dynamic_sampling == "refill" else list(range(len(idx)))
            dropped += int((~informative).sum())
            kept_idx += [idx[g] for g in keep]
            kept_batches.append(select_groups(batch, keep))
            kept_rewards.append(rewards.view(-1, G)[keep].flatten())
            have = self.acc.gather(torch.tensor([len(kept_idx)], device=self.acc.device)).min().item()
            if a.dynamic_sampling != "refill" or have >= self.local_prompts or rounds >= a.max_gen_rounds:
                break
        if not kept_idx:  # nothing informative anywhere: keep one group so every process takes part
            kept_idx, kept_batches, kept_rewards = idx[:1], [select_groups(batch, [0])], [rewards[:G]]
        n = min(len(kept_idx), self.local_prompts)
        batch = select_groups(concat_batches(kept_batches), list(range(n)))
        rewards = torch.cat(kept_rewards)[:n * G]
        weight = 1.0
        if a.dynamic_sampling == "upweight":
            weight = algo.group_upweight(self.acc.gather(algo.informative_groups(rewards, G).to(self.acc.device)))
        total_groups = self.acc.reduce(torch.tensor([float(dropped), float(rounds * self.local_prompts)],
                                                    device=self.acc.device), "sum").tolist()
        dyn = {"weight": weight, "dynamic/gen_rounds": float(rounds), "dynamic/filtered_groups": total_groups[0],
               "dynamic/generated_groups": total_groups[1], "dynamic/upweight": weight}
        merged = {k: [x for s in all_samples for x in s[k]] for k in all_samples[0] if k != "num_tokens"}
        merged["num_tokens"] = sum(s["num_tokens"] for s in all_samples)
        return kept_idx[:n], batch, rewards, merged, dyn

    def _score(self, idx: list[int], batch: RolloutBatch):
        cfg, G = self.cfg, self.cfg.rollout.num_generations
        texts = self.tokenizer.batch_decode(batch.completion_ids, skip_special_tokens=True)
        rows = [self.examples[i] for i in idx for _ in range(G)]
        columns = {k: [row[k] for row in rows] for k in rows[0] if k not in ("question", "answer", "gold")}
        out = self.reward_fn(prompts=[self.prompt_texts[i] for i in idx for _ in range(G)], completions=texts,
                             completion_ids=batch.completion_ids, answers=[row["answer"] for row in rows],
                             **columns)
        rewards = torch.tensor(out.rewards, dtype=torch.float32)  # (B*G,)
        lengths = torch.tensor([len(c) for c in batch.completion_ids])
        if cfg.algorithm.overlong_penalty:
            rewards = rewards + algo.soft_overlong_penalty(
                lengths, cfg.rollout.max_completion_length, cfg.algorithm.overlong_cache_len,
                cfg.algorithm.overlong_penalty_factor)
        samples = {"texts": texts, "reward": rewards.tolist(), "correct": out.correct, "formatted": out.formatted,
                   "length": lengths.tolist(), "truncated": batch.truncated, "timeouts": [out.num_timeouts],
                   "num_tokens": batch.num_tokens}
        for label, scores in out.components.items():
            samples[f"reward/{label}"] = [math.nan if s is None else s for s in scores]
        return rewards, samples

    def _reward_metrics(self, s: dict) -> dict:
        """Over every sample generated this step (all dynamic-sampling rounds, all processes)."""
        f = lambda key: torch.tensor(s[key], dtype=torch.float32)  # noqa: E731
        metrics = {"reward/mean": self._global_nanmean(f("reward")), "reward/accuracy": self._global_nanmean(f("correct")),
                   "reward/format": self._global_nanmean(f("formatted")),
                   "completion/len_mean": self._global_nanmean(f("length")),
                   "completion/truncated": self._global_nanmean(f("truncated")),
                   "reward/timeouts": self.acc.reduce(f("timeouts").sum().to(self.acc.device), "sum").item()}
        for key in s:
            if key.startswith("reward/"):
                metrics[key] = self._global_nanmean(f(key))
        r = f("reward").to(self.acc.device)
        s1, s2, n = self.acc.reduce(torch.stack([r.sum(), (r * r).sum(), torch.tensor(float(r.numel()))]), "sum")
        metrics["reward/std"] = (max((s2 - s1 * s1 / n).item(), 0.0) / max(n.item() - 1, 1)) ** 0.5
        metrics["completion/len_max"] = self.acc.gather(f("length").max().view(1).to(self.acc.device)).max().item()
        rounds_groups = f("reward").view(-1, self.cfg.rollout.num_generations)
        zero_var = (~algo.informative_groups(rounds_groups.flatten(), self.cfg.rollout.num_generations)).float()
        metrics["groups/zero_variance_frac"] = self._global_nanmean(zero_var)
        return metrics

    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        # Over the whole step batch (all processes) so `scale=batch` sees every reward; each
        # process keeps its own slice. Processes may hold different numbers of groups.
        a, acc = self.cfg.algorithm, self.acc
        counts = acc.gather(torch.tensor([rewards.numel()], device=acc.device)).tolist()
        padded = acc.gather(acc.pad_across_processes(rewards.to(acc.device), pad_index=0.0)).view(len(counts), -1)
        all_rewards = torch.cat([padded[r, :c] for r, c in enumerate(counts)]).cpu()
        kwargs = {"softmax_beta": a.softmax_beta} if a.advantage == "softmax" else {}
        if a.advantage == "reinforce":
            kwargs["baseline"] = a.reinforce_baseline
        adv = algo.group_advantages(all_rewards, self.cfg.rollout.num_generations, a.advantage, a.scale, **kwargs)
        start = sum(counts[:acc.process_index])
        return adv[start:start + rewards.numel()]

    def _sequence_kl(self, batch: RolloutBatch) -> torch.Tensor:
        """sum_t (log pi_old - log pi_ref) per completion: the k1 KL taken off the reward."""
        ref = row_logprobs(self.ref, batch.row_prompts(), batch.completion_ids, self.tokenizer.pad_token_id, self.acc.device,
                           self.cfg.rollout.temperature, self.cfg.trainer.micro_batch_size,
                           self.cfg.trainer.micro_batch_tokens, self.updater.share_prompt)
        kl = torch.stack([(torch.tensor(lp) - r).sum() for lp, r in zip(batch.logprobs, ref)])
        total, tokens = self.acc.reduce(torch.tensor([kl.sum().item(), float(batch.num_tokens)],
                                                     device=self.acc.device), "sum").tolist()
        self._reward_kl = total / max(tokens, 1.0)  # per token, for the log and the beta controller
        return kl

    def _after_update(self, metrics: dict) -> None:
        a = self.cfg.algorithm
        if a.kl_mode == "reward" and self._reward_kl is not None:
            metrics["train/kl"] = self._reward_kl
        if a.kl_target is not None and self.ref is not None:
            self.beta = algo.adaptive_kl_beta(self.beta, metrics["train/kl"], a.kl_target)
        if a.ref_reset_every and self.ref is not None and self.step % a.ref_reset_every == 0:
            # Iterative GRPO / ProRL: the reference catches up with the policy.
            self.ref.load_state_dict(self.acc.unwrap_model(self.model).state_dict())

    def evaluate(self) -> dict:
        """Greedy pass@1 of the current policy on the held-out problems, with the rollout engine
        (it already holds the current weights) and the training verifiers' correctness."""
        from grpo_trainer.evaluate import evaluate_model

        cfg = self.cfg
        res = evaluate_model(self.model_path, self.eval_examples, self.tokenizer, k=1, temperature=0.0,
                             max_tokens=cfg.rollout.max_completion_length,
                             instruction=cfg.data.instruction or DEFAULT_INSTRUCTION,
                             system_prompt=cfg.data.system_prompt, max_prompt_length=cfg.data.max_prompt_length,
                             verifier_specs=self._eval_specs(), seed=cfg.rollout.seed, engine=self.engine,
                             progress=False)
        torch.set_num_threads(self.threads)
        return {"eval/accuracy": res["accuracy"], "eval/format": res.get("format", math.nan)}

    def _eval_specs(self) -> list[dict]:
        """The recipe's correctness verifier, chosen as `python -m grpo_trainer.evaluate` chooses it."""
        from grpo_trainer.eval_settings import correctness_spec

        return [correctness_spec(self.cfg.reward.functions)]


    def sync_weights(self) -> None:
        """Push the policy's weights into this process's rollout engine."""
        if not sync_sabotaged():
            self.engine.load_weights(iter_full_weights(self.acc.unwrap_model(self.model)))
        torch.set_num_threads(self.threads)

    # ------------------------------------------------------------------ bookkeeping
    def _global_nanmean(self, x: torch.Tensor) -> float:
        x = x.to(self.acc.device, torch.float32)
        valid = ~torch.isnan(x)
        s = self.acc.reduce(torch.stack([x[valid].sum(), valid.sum().float()]), "sum")
        return (s[0] / s[1]).item() if s[1] > 0 else math.nan

    def _log_samples(self, idx: list[int], batch: RolloutBatch, rewards: torch.Tensor) -> None:
        t, G = self.cfg.trainer, self.cfg.rollout.num_generations
        if not self.acc.is_main_process or t.log_samples_every <= 0 or self.step % t.log_samples_every:
            return
        rows = range(min(t.num_log_samples, len(batch.completion_ids)))
        texts = self.tokenizer.batch_decode([batch.completion_ids[i] for i in rows], skip_special_tokens=True)
        self.logger.log_samples(self.step, [
            {"question": self.examples[idx[i // G]]["question"], "gold": self.examples[idx[i // G]]["gold"],
             "completion": texts[i], "reward": rewards[i].item(), "truncated": batch.truncated[i]} for i in rows])

    def _should_save(self) -> bool:
        every = self.cfg.trainer.save_every
        return self.step == self.cfg.trainer.max_steps or (every > 0 and self.step % every == 0)

    def save(self) -> Path:
        state = {"step": self.step, "model_name_or_path": self.cfg.model.name_or_path, "beta": self.beta,
                 **{name: obj.state_dict() for name, obj in self.stateful.items()}}
        return save_checkpoint(self.acc, self.model, self.tokenizer, self.run_dir, self.step, state,
                               self.cfg.trainer.keep_last)

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(self.acc, path)
        self.step = int(state["step"])
        for name, obj in self.stateful.items():
            if name in state:
                obj.load_state_dict(state[name])
        self.beta = float(state.get("beta", self.cfg.algorithm.beta))
        self.sync_weights()  # the engine started from the base weights
        log.info("resumed from %s at step %d", path, self.step)
