"""What a process hosting a vLLM engine must do outside the engine itself: quiet its start-up logs,
and gather results across processes after an engine has torn the default process group down.

Kept here so that vLLM's environment variables and its process-group behaviour are known only to
`rollout/`. Imports neither vLLM nor torch at module level.
"""

from __future__ import annotations

import os
from typing import Any

# For `gather_objects` outside a live process group: one store per process, one key prefix per call.
_STORE = None
_NUM_GATHERS = 0


def quiet_startup_logs() -> None:
    """Keep the engine's INFO start-up lines (dozens per engine) out of a CLI's output.

    vLLM configures its logger from VLLM_LOGGING_LEVEL when it is first imported, so this must run
    before that; a level the user set is kept."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


def route_logs_to_python_logging() -> None:
    """Let vLLM's records reach the root logger (a training run's log file, grpo_trainer/console.py)
    instead of vLLM's own stdout handler, at INFO so that the file holds the engine's start-up.
    Like the level, vLLM reads this when it is first imported; a value the user set is kept."""
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


def gather_objects(obj: Any, rank: int, world: int) -> list[Any]:
    """Every process's `obj`, in rank order; `rank`/`world` are used when no group is live (from
    RANK/WORLD_SIZE, as accelerate launch and torchrun set them).

    Without a live process group a temporary gloo one is made and destroyed again: closing a
    vLLM engine tears down whatever default group exists (EngineCore.shutdown ->
    cleanup_dist_env_and_memory), so a group kept across engines would be dead by the next one.
    Each temporary group gets its own key prefix in one long-lived store: reusing the keys of an
    earlier group lets a fast rank read a slow rank's stale address and fail to connect.
    """
    global _STORE, _NUM_GATHERS
    import torch.distributed as dist

    if dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    if _STORE is None:
        _STORE = next(dist.rendezvous("env://", rank=rank, world_size=world))[0]
    _NUM_GATHERS += 1  # every process gathers once per call site visit, so the counts agree
    dist.init_process_group("gloo", store=dist.PrefixStore(f"grpo_eval/{_NUM_GATHERS}", _STORE),
                            rank=rank, world_size=world)
    try:
        out = [None] * world
        dist.all_gather_object(out, obj)
        return out
    finally:
        dist.destroy_process_group()
