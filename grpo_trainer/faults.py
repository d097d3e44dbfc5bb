"""Faults during training: skip an update whose loss or gradient is not finite, stop after too
many in a row, and a test hook that kills the process at a named point of the loop."""

from __future__ import annotations

import logging
import math
import os
import signal

import torch

log = logging.getLogger(__name__)

# `phase` or `phase@step`: the process SIGKILLs itself there (tests of crash safety only).
# Phases: step (after a step is logged, before its save), save_state, save_model, save_marker
# (inside a save, before the atomic rename), save_prune (after the rename, before pruning),
# prune_delete@K (pruning, after K files of a removed checkpoint were deleted; K=0: after its rename).
KILL_ENV = "GRPO_TRAINER_TEST_KILL_AT"


def kill_point(phase: str, step: int) -> None:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    want, _, at = spec.partition("@")
    if want == phase and (not at or int(at) == step):
        os.kill(os.getpid(), signal.SIGKILL)


class TrainingAborted(RuntimeError):
    """The run cannot continue; the message is one line saying why and what to change."""


class NonFiniteGuard:
    """Decides, per optimizer step, whether the update may touch the weights.

    A NaN/inf loss or gradient norm skips `optimizer.step()` (Adam's moments and step count stay
    as they were too); `max_bad_steps` consecutive training steps with a skipped update stop the
    run, because by then the cause (a reward scale, a learning rate) will not go away by itself.
    """

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.consecutive = 0
        self.total = 0
        self._bad_this_step = False

    def check(self, accelerator, loss: float, grad_norm) -> bool:
        """True: apply the update. Collective: every process gets the same verdict, or their
        weights would drift apart (the gradient norm is global, the loss is this process's)."""
        bad = not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm)))
        flag = torch.tensor(float(bad), device=accelerator.device)
        bad = accelerator.reduce(flag, "sum").item() > 0
        if bad:
            self._bad_this_step = True
        return not bad

    def end_step(self, step: int) -> dict:
        bad, self._bad_this_step = self._bad_this_step, False
        if bad:
            self.consecutive += 1
            self.total += 1
            log.warning("step %d: non-finite loss or gradient norm; update skipped, weights unchanged "
                        "(%d in a row, the run stops at trainer.max_bad_steps=%d)",
                        step, self.consecutive, self.max_bad_steps)
        else:
            self.consecutive = 0
        return {"train/skipped_update": float(bad)}

    def raise_if_exhausted(self, step: int) -> None:
        if self.consecutive >= self.max_bad_steps:
            raise TrainingAborted(
                f"stopped at step {step}: {self.consecutive} consecutive steps had a non-finite loss or "
                f"gradient norm (trainer.max_bad_steps={self.max_bad_steps}); the weights are those of step "
                f"{step - self.consecutive}: lower trainer.learning_rate or the reward scale, then resume=auto")

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive, self.total = int(state["consecutive"]), int(state["total"])
