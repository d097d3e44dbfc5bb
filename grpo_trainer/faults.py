"""Faults during training: skip an update whose loss or gradient is not finite, stop after too
many in a row, stop when the rollout engine no longer samples from the trained policy (the
weight-sync canary), and test hooks that kill the process at a named point of the loop or make
weight pushes do nothing."""

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


# Any non-empty value: every weight push into the rollout engine is skipped, the failure the
# weight-sync canary exists to catch (tests only).
SKIP_SYNC_ENV = "GRPO_TRAINER_TEST_SKIP_SYNC"


def sync_sabotaged() -> bool:
    return bool(os.environ.get(SKIP_SYNC_ENV))


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


def raise_if_engine_diverged(step: int, mismatch_kl: float, limit: float | None) -> None:
    """The weight-sync canary: stop when the engine's log-probs of the tokens it sampled differ from
    the trainer's by more than `limit` nats/token (k3 KL(engine || trainer), `mismatch/kl`).

    Called after the step is logged and before it is saved, so the checkpoints on disk stay those
    of healthy steps. NaN (no token was trained this step, so none was compared) never stops."""
    if limit is None or not mismatch_kl > limit:
        return
    raise TrainingAborted(
        f"stopped at step {step}: the rollout engine's log-probs differ from the trainer's by KL {mismatch_kl:.3g} "
        f"nats/token (trainer.max_mismatch_kl={limit:g}); likely the engine samples from stale weights (a weight "
        f"push that failed or did nothing) or computes in another dtype or with other kernels than the trainer "
        f"(or truncates its sampling with rollout.top_p/top_k, which the trainer does not): check the weight push, "
        f"rollout.dtype and rollout.top_p/top_k, or raise trainer.max_mismatch_kl; step {step} was not saved, "
        f"existing checkpoints are intact")
