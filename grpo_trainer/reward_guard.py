"""Stops a run whose reward functions have nothing to say.

A TRL-style reward may return NaN, inf or None for a sample, meaning "no opinion"; the sample then
gets no reward from it. A function that does so for every sample (a bug, a missing dataset column,
a failing service) leaves the run training on zero signal without an error. So: a warning, once per
reward, the first time it gives no finite score in a whole step; and the run stops after
`max_no_reward_steps` consecutive steps in which no reward gave any sample a finite score.
"""

from __future__ import annotations

import logging
import math

import torch

from grpo_trainer.rewards import RewardError

log = logging.getLogger(__name__)


class RewardGuard:
    def __init__(self, max_no_reward_steps: int):
        self.max_steps = max_no_reward_steps
        self.consecutive = 0
        self._warned: set[str] = set()
        self._silent: list[str] = []  # rewards with no finite score in the last step

    def observe(self, accelerator, scores: dict[str, list[float]], step: int) -> None:
        """scores: per reward label, this process's scores of the step (NaN where it gave none).
        Collective: the counts are summed over all processes, so every process reaches the same
        verdict and they stop together."""
        labels = list(scores)
        counts = torch.tensor([[float(sum(math.isfinite(x) for x in v)), float(len(v))] for v in scores.values()],
                              dtype=torch.float64).reshape(len(labels), 2)  # (specs, [finite, samples])
        counts = accelerator.reduce(counts.to(accelerator.device), "sum").cpu()
        self.update({label: (finite, total) for label, (finite, total) in zip(labels, counts.tolist())}, step,
                    accelerator.is_main_process)

    def update(self, counts: dict[str, tuple[float, float]], step: int, is_main_process: bool = True) -> None:
        """counts: per reward label, (samples it gave a finite score, samples), over all processes
        (the trainer sums them in its one collective of step metrics)."""
        self._silent = [label for label, (finite, _) in counts.items() if finite == 0]
        for label, (finite, total) in counts.items():
            if finite == 0 and label not in self._warned:
                self._warned.add(label)
                if is_main_process:
                    log.warning("step %d: reward %r gave no finite score to any of the %d samples (NaN, inf and "
                                "None count as no opinion, so it adds nothing to the reward); check what it "
                                "returns", step, label, int(total))
        self.consecutive = self.consecutive + 1 if len(self._silent) == len(counts) else 0

    def raise_if_exhausted(self, step: int) -> None:
        if self.consecutive >= self.max_steps:
            # Bad input (a broken reward function), not a fault of training: exit code 2 like the rest.
            raise RewardError(
                f"stopped at step {step}: for {self.consecutive} consecutive steps no reward gave any sample a "
                f"finite score (trainer.max_no_reward_steps={self.max_steps}), so there was nothing to learn "
                f"from; fix {', '.join(repr(x) for x in self._silent)} (NaN, inf or None for every sample), "
                "then resume=auto")

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state["consecutive"])
