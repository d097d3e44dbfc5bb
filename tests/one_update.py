"""Run by tests/test_distributed.py under `accelerate launch`: build the trainer, apply ONE
optimizer update to a fixed global rollout batch (each process takes its own groups), and save
the resulting weights from the main process.

    accelerate launch --config_file CFG tests/one_update.py OUT.pt key=value ...

With algorithm.advantage=gae the fixed numbers are the rows' scores, and the critic is updated
too (its weights saved beside the policy's). The batch does not come from sampling, so a 1-process and a 2-process run see exactly the same
global batch and their weights can be compared."""

from __future__ import annotations

import dataclasses
import sys

import torch

from grpo_trainer.config import load_config
from grpo_trainer.record import RolloutRecord
from grpo_trainer.rollout import RolloutBatch
from grpo_trainer.step_stats import StepStats
from grpo_trainer.trainer import GRPOTrainer
from grpo_trainer.update import record_logprobs

PROMPTS, G = 4, 2
# With a rollout correction on, the "engine" reports the trainer's log-probs shifted per global row
# (rho = e^-shift): sequence-level MIS drops rows 0, 3 and 6, whose |shift| > log 2.
SHIFTS = [0.9, 0.05, -0.3, -1.0, 0.1, 0.0, 1.2, -0.2]


def fixed_batch(trainer: GRPOTrainer) -> tuple[RolloutBatch, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    prompts = [trainer.prompts.ids[i] for i in range(PROMPTS)]
    lengths = torch.randint(3, 9, (PROMPTS * G,), generator=gen).tolist()
    completions = [torch.randint(100, 5000, (n,), generator=gen).tolist() for n in lengths]
    advantages = torch.randn(PROMPTS * G, generator=gen)  # (P*G,) none is 0, so no row is skipped
    return RolloutBatch(prompts, completions, [[0.0] * n for n in lengths], [False] * len(lengths)), advantages


def main() -> None:
    out, overrides = sys.argv[1], sys.argv[2:]
    trainer = GRPOTrainer(load_config(None, overrides))
    acc = trainer.acc
    batch, advantages = fixed_batch(trainer)
    local = PROMPTS // acc.num_processes
    lo, hi = acc.process_index * local, (acc.process_index + 1) * local
    mine = RolloutBatch(batch.prompt_ids[lo:hi], batch.completion_ids[lo * G:hi * G],
                        batch.logprobs[lo * G:hi * G], batch.truncated[lo * G:hi * G])
    record = RolloutRecord.from_engine(mine, list(range(lo, hi)), trainer.tokenizer)
    if trainer.cfg.algorithm.rollout_correction.level is not None:
        logp = record_logprobs(trainer.model, record, acc.device, trainer.cfg.rollout.temperature, 8)
        shift = torch.tensor(SHIFTS[lo * G:hi * G])[:, None]
        record = dataclasses.replace(record, logprobs=torch.where(record.valid, logp + shift, 0.0))
    if trainer.critic is None:
        metrics = trainer.updater.update(record.with_advantages(advantages[lo * G:hi * G]), trainer.beta)
    else:  # PPO: the fixed numbers are the scores; GAE (whitened over both processes) makes the advantages
        stats = StepStats()
        record = dataclasses.replace(record, rewards=advantages[lo * G:hi * G].clone())
        record, values, returns = trainer._gae(record, stats, False, 1.0)
        trainer.updater.run(record, trainer.beta, stats)
        trainer.critic.update(record, values, returns, stats)
        reduced = stats.reduce(acc)
        metrics = {**trainer.updater.metrics(reduced), **trainer.critic.metrics(reduced)}
    state = acc.get_state_dict(trainer.model)
    critic = None if trainer.critic is None else acc.get_state_dict(trainer.critic.model)
    if acc.is_main_process:
        torch.save({"weights": {k: v.detach().cpu().clone() for k, v in state.items()}, "metrics": metrics,
                    "critic": None if critic is None else {k: v.detach().cpu().clone() for k, v in critic.items()}},
                   out)
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
