"""The one place that turns the trainer's (possibly sharded, possibly LoRA-wrapped) policy into
full HF-named tensors for the rollout engine. Under DeepSpeed ZeRO-3 each parameter is gathered
one at a time, so no rank ever holds more than one full parameter beyond its shard."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def _is_zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id") and hasattr(param, "ds_status")


def iter_full_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF checkpoint name, full tensor) for every parameter of the unwrapped policy.

    Must be consumed in the same order on every rank: a ZeRO-3 gather is a collective."""
    params = list(model.named_parameters())
    for name, param in params:
        if _is_zero3(param):
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters([param], modifier_rank=None)
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            yield name, param.detach()
