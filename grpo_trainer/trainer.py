"""The GRPO loop, top to bottom:

    collect (rollout -> reward -> filter) -> (KL in reward) -> advantage -> update -> weight sync
    -> metrics (one collective) -> log -> checkpoint

With algorithm.advantage=gae (PPO with a learned critic) the advantage step is per token: the
critic values every state, GAE turns token rewards and those values into advantages and returns,
and after the policy update the critic regresses on the returns (critic.py).

The step's data is one rollout record (record.py) from collection to the loss; collection and
the dynamic-sampling loop live in collect.py, scoring in scoring.py (shared with evaluate).

Each process owns a rollout engine and a disjoint share of every step's prompts; a group (the G
samples of one prompt) never spans processes. Loss normalisers are global (summed over all
micro-batches and processes) so the update does not depend on how the batch is cut.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from transformers import get_scheduler

from grpo_trainer import algo, console, distributed, hardware, lora, stopping
from grpo_trainer.checkpoint import clear_run, load_checkpoint, resolve_resume, save_checkpoint
from grpo_trainer.config import Config, save_config
from grpo_trainer.data import DEFAULT_INSTRUCTION, PromptSampler, load_examples, render_prompts
from grpo_trainer.collect import collect, rollout_seed
from grpo_trainer.critic import Critic
from grpo_trainer.eval_settings import correctness_spec
from grpo_trainer.faults import NonFiniteGuard, kill_point, raise_if_engine_diverged, sync_sabotaged
from grpo_trainer.metrics import MetricsLogger, PhaseTimer
from grpo_trainer.models import load_causal_lm, load_tokenizer, resolve_model_path
from grpo_trainer.record import RolloutRecord
from grpo_trainer.reward_guard import RewardGuard
from grpo_trainer.rewards import build_reward_fn
from grpo_trainer.rollout import SamplingConfig, make_engine
from grpo_trainer.weights import iter_full_weights
from grpo_trainer.samples import sample_records, sample_rows
from grpo_trainer.scoring import PromptSet
from grpo_trainer.step_stats import StepStats, add_rollout_stats, finite_counts, rollout_metrics
from grpo_trainer.update import PolicyUpdater, record_logprobs

log = logging.getLogger(__name__)


class GRPOTrainer:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        t, r, a = cfg.trainer, cfg.rollout, cfg.algorithm
        hardware.keep_freed_memory()  # before the models: updates then reuse memory, not refault it
        self.acc = acc = distributed.make_accelerator(t.mixed_precision, t.micro_batch_size, t.max_grad_norm)
        if t.prompts_per_step % acc.num_processes:
            raise ValueError(f"trainer.prompts_per_step={t.prompts_per_step} must be divisible by the "
                             f"number of processes ({acc.num_processes})")
        self.local_prompts = t.prompts_per_step // acc.num_processes
        set_seed(t.seed)
        self.threads = t.torch_threads or torch.get_num_threads()
        self.run_dir = Path(t.output_dir)

        with console.phase(f"finding model {cfg.model.name_or_path} and its tokenizer"):
            with acc.main_process_first():  # one process converts/downloads, the others reuse it
                self.model_path = resolve_model_path(cfg.model.name_or_path)
            self.tokenizer = load_tokenizer(self.model_path, cfg.model.trust_remote_code)

        # Multi-turn tool use: the sandboxed tools (before the prompts: a chat template with tool
        # support renders their descriptions into the prompt for the tool_call format).
        self.tools, tool_specs = None, None
        if r.tools:
            from grpo_trainer.tools import SandboxLimits, ToolSet

            sb = r.sandbox
            self.tools = ToolSet(list(r.tools), limits=SandboxLimits(cpu_s=sb.cpu_s, wall_s=sb.wall_s,
                                                                     memory_mb=sb.memory_mb,
                                                                     output_chars=sb.output_chars),
                                 num_workers=sb.num_workers)
            tool_specs = self.tools.descriptions() if r.tool_format == "tool_call" else None

        # Data: every process renders all prompts; the sampler hands each its own share.
        with console.phase(f"loading data ({cfg.data.source})") as phase:
            examples = load_examples(cfg.data.source, cfg.data.split, cfg.data.num_examples, cfg.data.seed,
                                     cfg.data.difficulty, cfg.data.question_key, cfg.data.answer_key)
            instruction = cfg.data.instruction or DEFAULT_INSTRUCTION
            kept, texts, ids, dropped = render_prompts(examples, self.tokenizer, instruction, cfg.data.system_prompt,
                                                       cfg.data.max_prompt_length, tool_specs)
            phase.result = f"{len(kept)} prompts"
        self.prompts = PromptSet(kept, texts, ids)
        if dropped:
            log.warning("dropped %d prompts longer than data.max_prompt_length=%d", dropped, cfg.data.max_prompt_length)
        # Held-out problems, rendered once like the training prompts (evaluate() reuses them).
        self.eval_examples, self.eval_prompts = [], None
        if t.eval_every > 0:
            self.eval_examples = load_examples(cfg.data.eval_source or cfg.data.source, "test", t.eval_examples,
                                               cfg.data.seed, cfg.data.difficulty, cfg.data.question_key,
                                               cfg.data.answer_key)
            self.eval_prompts = PromptSet(*render_prompts(self.eval_examples, self.tokenizer, instruction,
                                                          cfg.data.system_prompt, cfg.data.max_prompt_length,
                                                          tool_specs)[:3])
        self.sampler = PromptSampler(len(self.prompts.examples), seed=cfg.data.seed, rank=acc.process_index,
                                     world_size=acc.num_processes, pass_rate_band=cfg.data.pass_rate_filter,
                                     cooldown=cfg.data.filter_cooldown)

        with console.phase(f"loading model {self.model_path} ({cfg.model.dtype})"):
            policy = load_causal_lm(self.model_path, cfg.model.dtype, cfg.model.trust_remote_code,
                                    cfg.model.attention_gib, cfg.model.onednn_linear)
        if cfg.model.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
        policy = lora.wrap(policy, cfg.model.lora, cfg.model.gradient_checkpointing)
        # No reference model at all when beta = 0: it would only cost memory and a forward pass.
        # With LoRA it is the policy with its adapters off; under ZeRO-3 it is sharded too.
        self.ref = None
        if a.beta > 0:
            with console.phase("loading the reference model"):
                self.ref = lora.AdapterDisabled(policy) if cfg.model.lora.enabled else distributed.prepare_reference(
                    acc, load_causal_lm(self.model_path, cfg.model.dtype, cfg.model.trust_remote_code,
                                        cfg.model.attention_gib, cfg.model.onednn_linear))
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
        max_prompt = max(len(p) for p in self.prompts.ids)
        with console.phase(f"starting {r.backend} engine ({r.dtype or cfg.model.dtype})") as phase:
            self.engine = make_engine(
                r.backend, model_path=self.model_path, policy=acc.unwrap_model(self.model),
                dtype=r.dtype or cfg.model.dtype,
                seed=r.seed, max_model_len=max_prompt + r.max_completion_length, kv_cache_gib=r.kv_cache_gib,
                gpu_memory_utilization=r.gpu_memory_utilization, enforce_eager=r.enforce_eager,
                eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id, sleep=r.sleep,
                tokenizer=self.tokenizer, kv_batch=(self.local_prompts, r.num_generations, r.max_completion_length))
            dtype = getattr(self.engine, "weight_dtype", None)  # vLLM's own: a CPU without bf16 falls back to fp32
            kv = getattr(self.engine, "kv_cache_gib", None)
            phase.result = ("ready" + (f" in {str(dtype).removeprefix('torch.')}" if dtype is not None else "")
                            + (f", KV cache {kv:.2f} GiB" if kv is not None else ""))
        if self.tools is not None:  # multi-turn: the engine's turns with tool calls between them
            from grpo_trainer.rollout.multiturn import MultiTurnEngine

            self.engine = MultiTurnEngine(self.engine, self.tools, self.tokenizer, r.tool_format, r.max_turns,
                                          r.max_tool_output_tokens)
        # trainer.torch_threads, for the trainer and the engine alike. Set once: engines change it only
        # while starting (vLLM's CPU worker lowers it; VLLMEngine restores the count and the function).
        torch.set_num_threads(self.threads)
        self.guard = NonFiniteGuard(t.max_bad_steps)
        self.reward_guard = RewardGuard(t.max_no_reward_steps)
        self.updater = PolicyUpdater(acc, self.model, self.optimizer, self.ref, self.tokenizer.pad_token_id, a,
                                     r.temperature, t.micro_batch_size, t.max_grad_norm, r.max_completion_length,
                                     guard=self.guard, micro_batch_tokens=t.micro_batch_tokens,
                                     share_prompt=not cfg.model.gradient_checkpointing)
        self.critic = None
        if algo.ADVANTAGES[a.advantage].critic:
            with console.phase("loading the critic"):
                self.critic = Critic(acc, cfg.critic, a, self.model_path, cfg.model, t.max_steps,
                                     share_prompt=not cfg.model.gradient_checkpointing)
        self._eval_reward_fn = None  # built on the first evaluation when the training rewards cannot serve
        self.logger = MetricsLogger(self.run_dir, acc.is_main_process, t.max_steps, t.report_to, cfg.to_dict())
        self.step = 0
        self.beta = a.beta  # adapted when algorithm.kl_target is set
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
        self.logger.begin(self.step)
        console.stamped(f"rolling out step {self.step + 1} …")
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
            if self.tools is not None:
                self.tools.close()
            if self._eval_reward_fn not in (None, self.reward_fn):
                self._eval_reward_fn.close()
        if acc.is_main_process:
            console.line(self.logger.summary())
        return self.logger.history

    def train_step(self) -> dict:
        cfg, a, acc, timer, stats = self.cfg, self.cfg.algorithm, self.acc, PhaseTimer(), StepStats()
        with timer("step"):
            got = collect(self.engine, self.reward_fn, self.sampler, self.prompts, acc=acc, tokenizer=self.tokenizer,
                          sampling=self.sampling, algorithm=a, num_prompts=self.local_prompts, stats=stats,
                          seed=lambda r: rollout_seed(cfg.rollout.seed, self.step, r, acc.process_index), timer=timer)
            self.engine.sleep()  # rollout.sleep: the update gets the engine's GPU memory; the push restores it
            curriculum = self._observe_pass_rates(got.generated) if cfg.data.pass_rate_filter is not None else {}
            record, t = got.record, cfg.trainer
            kl_reward = self.ref is not None and self.beta > 0 and a.kl_mode == "reward"
            if self.critic is not None:
                with timer("critic"):
                    record, values, returns = self._gae(record, stats, kl_reward, got.weight)
            else:
                if kl_reward:
                    record = self._kl_penalised(record, stats)
                record = record.with_advantages(self._advantages(record.rewards) * got.weight)
            logged = sample_rows(self.step, t.max_steps, t.log_samples_every, t.num_log_samples, record)
            self.updater.capture = set(logged) if acc.is_main_process else set()  # their per-token values
            seed, frozen = t.seed * 1_000_003 + self.step, self.step <= t.critic_warmup  # warmup: critic only
            with timer("train"):
                if frozen:
                    self.updater.skip(record, stats, seed=seed)
                else:
                    self.updater.run(record, self.beta, stats, seed=seed)
                    self.scheduler.step()
            if self.critic is not None:
                with timer("critic"):
                    self.critic.update(record, values, returns, stats)
                    self.critic.scheduler.step()
            with timer("sync"):
                if not frozen:
                    self.sync_weights()
        add_rollout_stats(stats, got.generated)
        reduced, labels = stats.reduce(acc), list(record.components)  # the step's one collective for metrics
        self.reward_guard.update(finite_counts(reduced, labels), self.step, acc.is_main_process)
        metrics = {**self.updater.metrics(reduced), **rollout_metrics(reduced, labels)}
        if self.critic is not None:
            metrics.update(self.critic.metrics(reduced))
        if "kl_reward/sum" in reduced:  # KL in the reward: its per-token value is the KL logged and controlled
            metrics["train/kl"] = reduced["kl_reward/sum"] / max(reduced["kl_reward/tokens"], 1.0)
        self._after_update(metrics["train/kl"])
        self._log_samples(record, sorted(self.updater.capture))
        metrics.update({k: reduced[k] for k in ("dynamic/gen_rounds", "dynamic/filtered_groups",
                                                 "dynamic/generated_groups", "dynamic/upweight")})
        metrics.update(curriculum)
        metrics.update({"train/lr": self.scheduler.get_last_lr()[0], "train/beta": self.beta,
                        **{f"time/{k}": v for k, v in timer.seconds.items()}})
        metrics["throughput/rollout_tokens_per_s"] = reduced["rollout/tokens"] / max(timer.seconds["rollout"], 1e-9)
        return metrics

    # ------------------------------------------------------------------ phases
    def _advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        # Over the whole step batch (all processes) so `scale=batch` sees every reward; each
        # process keeps its own slice. Processes may hold different numbers of groups.
        a, acc = self.cfg.algorithm, self.acc
        counts = acc.gather(torch.tensor([rewards.numel()], device=acc.device)).tolist()
        padded = acc.gather(acc.pad_across_processes(rewards.to(acc.device), pad_index=0.0)).view(len(counts), -1)
        all_rewards = torch.cat([padded[r, :c] for r, c in enumerate(counts)]).cpu()
        # The estimator's registry entry names the algorithm.* keys it takes (softmax_beta, ...).
        adv = algo.group_advantages(all_rewards, self.cfg.rollout.num_generations, a.advantage, a.scale,
                                    **algo.ADVANTAGES[a.advantage].bind(vars(a)))
        start = sum(counts[:acc.process_index])
        return adv[start:start + rewards.numel()]

    def _observe_pass_rates(self, generated: list[RolloutRecord]) -> dict:
        """data.pass_rate_filter: this step's pass rate of every prompt drawn on any rank (the share of
        its group judged correct, or with reward > 0 when no correctness verifier is configured)
        goes to every rank's sampler, in the same order, so their skip tables stay equal."""
        pairs = []
        for r in generated:
            passed = r.correct if self.reward_fn.judges_correctness else r.rewards > 0
            rates = passed.to(torch.float32).view(-1, r.group_size).mean(dim=1)
            pairs += zip(r.example_idx.tolist(), rates.tolist())
        every = gather_object(pairs)
        return self.sampler.observe(self.step, [i for i, _ in every], [rate for _, rate in every])

    def _reference_kl(self, record: RolloutRecord, stats: StepStats) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) log pi_old - log pi_ref of every sampled token (k1), 0 at padding, and (N,) its row sums. The
        per-token mean over the step is logged (and steers beta) as train/kl."""
        ref = record_logprobs(self.ref, record, self.acc.device, self.cfg.rollout.temperature,
                              self.cfg.trainer.micro_batch_size, self.cfg.trainer.micro_batch_tokens,
                              self.updater.share_prompt)
        diff = record.logprobs - ref  # (N, C)
        # Summed over each row's own policy tokens (not the padded width, not a tool's tokens, which
        # the policy did not sample): the same float32 sums as ever when there is no tool.
        policy = record.policy_tokens
        kl = torch.stack([diff[i, :n][policy[i, :n]].sum() for i, n in enumerate(record.completion_lens.tolist())])
        stats.add("kl_reward/sum", kl.sum().item())
        stats.add("kl_reward/tokens", float(policy.sum()))
        return diff, kl

    def _kl_penalised(self, record: RolloutRecord, stats: StepStats) -> RolloutRecord:
        """The reward less beta * sum_t (log pi_old - log pi_ref), the k1 KL of each completion."""
        return replace(record, rewards=record.rewards - self.beta * self._reference_kl(record, stats)[1])

    def _gae(self, record: RolloutRecord, stats: StepStats, kl_reward: bool, weight: float):
        """PPO's advantages: the critic's old values, token rewards (the score on the last trained
        token, less beta * KL on each with KL in the reward), GAE, whitened over all processes.
        Returns (record with advantages, old values (N, C), returns (N, C))."""
        a, acc, mask = self.cfg.algorithm, self.acc, record.loss_mask
        values = self.critic.values(record)
        kl = self._reference_kl(record, stats)[0] if kl_reward else None
        rewards = algo.token_rewards(record.rewards, mask, kl, self.beta)
        adv, returns = algo.gae_advantages(rewards, values, mask, a.gamma, a.lam)
        if a.whiten_advantages:
            moments = acc.reduce(algo.masked_moments(adv, mask).to(acc.device), "sum").cpu()
            adv = algo.whiten(adv, mask, moments)
        return replace(record, advantages=adv * weight), values, returns

    def _after_update(self, kl: float) -> None:
        a = self.cfg.algorithm
        if a.kl_target is not None and self.ref is not None and math.isfinite(kl):  # NaN: nothing trained
            self.beta = algo.adaptive_kl_beta(self.beta, kl, a.kl_target)
        if a.ref_reset_every and self.ref is not None and self.step % a.ref_reset_every == 0:
            # Iterative GRPO / ProRL: the reference catches up with the policy.
            self.ref.load_state_dict(self.acc.unwrap_model(self.model).state_dict())

    def evaluate(self) -> dict:
        """Greedy pass@1 (and avg@n with trainer.eval_samples = n) of the current policy on the
        held-out problems, written per problem to RUN_DIR/eval/step-N.json, with the rollout engine
        (it already holds the current weights), the prompts rendered at start-up and, when it holds
        the correctness verifier evaluate would choose, the training reward function itself: then
        eval/accuracy and eval/format are measured as reward/accuracy and reward/format are."""
        from grpo_trainer.evaluate import evaluate_model, save_eval

        cfg = self.cfg
        spec = correctness_spec(cfg.reward.functions)
        if self._eval_reward_fn is None:  # no correctness verifier in training: one of its own, built once
            self._eval_reward_fn = self.reward_fn if spec in cfg.reward.functions else build_reward_fn(
                [spec], timeout_s=cfg.reward.timeout_s, max_chars=cfg.reward.max_chars,
                num_workers=cfg.reward.num_workers)
        n = cfg.trainer.eval_samples
        runs = [(1, 0.0)] + ([(n, cfg.rollout.temperature)] if n else [])  # greedy pass@1, then avg@n
        results = [evaluate_model(self.model_path, self.eval_examples, self.tokenizer, k=1, num_samples=samples,
                                  temperature=temp, max_tokens=cfg.rollout.max_completion_length,
                                  verifier_specs=[spec], seed=cfg.rollout.seed, engine=self.engine,
                                  reward_fn=self._eval_reward_fn, prompts=self.eval_prompts, progress=False)
                   for samples, temp in runs]
        if self.acc.is_main_process:  # per problem, for paired tests between runs (scripts/ablation.py)
            save_eval(self.run_dir / "eval" / f"step-{self.step:06d}.json", self.step, results)
        out = {"eval/accuracy": results[0]["accuracy"], "eval/format": results[0].get("format", math.nan)}
        return out | ({"eval/avg_accuracy": results[1]["accuracy"]} if n else {})

    def sync_weights(self) -> None:
        """Push the policy's weights into this process's rollout engine."""
        if not sync_sabotaged():
            self.engine.load_weights(iter_full_weights(self.acc.unwrap_model(self.model)))

    # ------------------------------------------------------------------ bookkeeping
    def _log_samples(self, record: RolloutRecord, rows: list[int]) -> None:
        if rows:
            self.logger.log_samples(self.step, sample_records(record, rows, self.prompts, self.tokenizer,
                                                              self.updater.captured))

    def _should_save(self) -> bool:
        every = self.cfg.trainer.save_every
        return self.step == self.cfg.trainer.max_steps or (every > 0 and self.step % every == 0)

    def save(self) -> Path:
        state = {"step": self.step, "model_name_or_path": self.cfg.model.name_or_path, "beta": self.beta,
                 **{name: obj.state_dict() for name, obj in self.stateful.items()}}
        return save_checkpoint(self.acc, self.model, self.tokenizer, self.run_dir, self.step, state,
                               self.cfg.trainer.keep_last, critic=None if self.critic is None else self.critic.model)

    def _resume(self, path: Path) -> None:
        with console.phase(f"loading {path.name} and pushing its weights to the engine"):
            self._load(path)
        log.info("resumed from %s at step %d", path, self.step)

    def _load(self, path: Path) -> None:
        state = load_checkpoint(self.acc, path, self.model, None if self.critic is None else self.critic.model)
        self.step = int(state["step"])
        for name, obj in self.stateful.items():
            if name in state:
                obj.load_state_dict(state[name])
        self.beta = float(state.get("beta", self.cfg.algorithm.beta))
        self.sync_weights()  # the engine started from the base weights
