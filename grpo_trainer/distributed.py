"""What differs between one process, DDP and DeepSpeed, kept out of the training loop.

Gradient accumulation under DeepSpeed. accelerate's `backward` hands the loss to the DeepSpeed
engine, which (a) divides it by the config's `gradient_accumulation_steps` and (b) steps the
optimizer whenever accelerate's `sync_gradients` flag is set. The trainer cuts each step into a
number of micro-batches that changes from step to step (rows with zero advantage are skipped), so
no fixed accumulation count fits. Instead the DeepSpeed config says `gradient_accumulation_steps:
1` (the loss is never rescaled: the trainer's normalisers are already global) and `accumulate`
below sets `sync_gradients` to True only for the last micro-batch, which makes accelerate mark
that backward as the accumulation boundary and run `engine.step()` (clip, optimizer, zero-grad)
after it and after it only. The other DeepSpeed "auto" values are filled here from the recipe,
so micro-batch size and clipping are written once, in the recipe.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import weakref

import torch

from grpo_trainer.hardware import cpu_has_native_bf16

log = logging.getLogger(__name__)


def make_accelerator(mixed_precision: str, micro_batch_size: int, max_grad_norm: float):
    """The Accelerator for this launch, DeepSpeed config filled from the recipe.

    Without CUDA: `cpu=True` turns a torchrun-style launch into gloo DDP (MULTI_CPU). Not under
    DeepSpeed, which accelerate would then silently drop; there DeepSpeed's CPU accelerator keeps
    everything on the CPU itself, and the process group must be named gloo explicitly, or
    accelerate takes the run for a single process (num_processes=1 on every rank)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    on_cpu = not torch.cuda.is_available()
    if on_cpu and mixed_precision == "bf16" and not cpu_has_native_bf16():
        log.warning("trainer.mixed_precision=bf16: this CPU has no native bf16 (no AVX512-BF16 or AMX), where "
                    "bf16 matmuls run ~40x slower than fp32; training in fp32 instead (set "
                    "trainer.mixed_precision=no to silence this)")
        mixed_precision = "no"
    ds = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and ds else []
    acc = Accelerator(cpu=on_cpu and not ds, mixed_precision=mixed_precision, kwargs_handlers=handlers,
                      step_scheduler_with_optimizer=False)
    configure(acc, micro_batch_size, max_grad_norm)
    # A finalizer, not atexit: at exit finalizers run newest first, so a vLLM engine made after this
    # shuts down first (its own finalizer destroys its subgroups, then this group). An atexit
    # handler would run before every finalizer, and vLLM's would then fail on destroyed groups.
    weakref.finalize(sys.modules[__name__], _destroy_process_group)
    return acc


def _destroy_process_group() -> None:
    """Tear the launch's process group down while Python still runs: left to the destructors at
    interpreter exit, gloo's group once aborted a finished 2-process script ("terminate called
    without an active exception", SIGABRT, exit code -6; tests/reward_guard_ranks.py)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def deepspeed_plugin(acc):
    return getattr(acc.state, "deepspeed_plugin", None)


def zero_stage(acc) -> int:
    """0 without DeepSpeed."""
    plugin = deepspeed_plugin(acc)
    return int(plugin.zero_stage) if plugin is not None else 0


def configure(acc, micro_batch_size: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config from the recipe; call before `acc.prepare`. No-op without DeepSpeed."""
    plugin = deepspeed_plugin(acc)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_batch_size
    ds["gradient_accumulation_steps"] = 1  # the trainer marks the boundary itself (see above)
    ds["gradient_clipping"] = max_grad_norm
    if ds.get("train_batch_size") == "auto":
        ds["train_batch_size"] = micro_batch_size * acc.num_processes
    # Our optimizer is torch's AdamW, which ZeRO accepts only with this flag.
    ds.setdefault("zero_allow_untested_optimizer", True)
    acc.gradient_accumulation_steps = 1


def lockstep(acc) -> bool:
    """ZeRO-3 gathers each layer's weights with collectives inside forward and backward, so
    every process must run the same number of them: no rank may skip micro-batches."""
    return zero_stage(acc) == 3


@contextlib.contextmanager
def accumulate(acc, model, last: bool):
    """Context for one micro-batch's forward/backward: gradients are synchronised (DDP) or the
    optimizer stepped (DeepSpeed) only when `last`."""
    if deepspeed_plugin(acc) is not None:
        acc.gradient_state._set_sync_gradients(last)
        try:
            yield
        finally:
            acc.gradient_state._set_sync_gradients(True)
    elif last:
        yield
    else:
        with acc.no_sync(model):
            yield


def prepare_reference(acc, model: torch.nn.Module):
    """The frozen reference model, placed like the policy: under ZeRO-3 it is sharded across
    processes too (a DeepSpeed engine with no optimizer), elsewhere it is a full copy per process."""
    model.requires_grad_(False).eval()
    if zero_stage(acc) != 3:
        return model.to(acc.device)
    import deepspeed

    ds = copy.deepcopy(deepspeed_plugin(acc).deepspeed_config)
    for key in ("optimizer", "scheduler"):
        ds.pop(key, None)
    # Nothing to offload or step: only the parameter partitioning of stage 3 is wanted.
    ds["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
    engine, *_ = deepspeed.initialize(model=model, config=ds)
    engine.eval()
    return engine


def prepare_second(acc, model, optimizer, scheduler, max_grad_norm: float):
    """Prepare a second trained model (the PPO critic) beside the policy: (model, optimizer,
    scheduler, engine wrapper or None). Under DeepSpeed accelerate builds it a DeepSpeed engine of
    its own (saved and loaded with the policy's by save_state/load_state) but would also make it
    the engine `acc.backward` drives; the policy's stays that one, and the critic gets its own
    wrapper (`backward` below), with its own clipping norm."""
    plugin = deepspeed_plugin(acc)
    if plugin is None:
        return (*acc.prepare(model, optimizer, scheduler), None)
    from accelerate.utils.deepspeed import DeepSpeedEngineWrapper

    policy, ds = acc.deepspeed_engine_wrapped, plugin.deepspeed_config
    clip, ds["gradient_clipping"] = ds["gradient_clipping"], max_grad_norm
    try:
        engine, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    finally:
        ds["gradient_clipping"] = clip
        acc.deepspeed_engine_wrapped = policy
    return engine, optimizer, scheduler, DeepSpeedEngineWrapper(engine)


def backward(acc, loss: torch.Tensor, engine=None, last: bool = True) -> None:
    """`acc.backward`, or a second model's DeepSpeed engine (`prepare_second`): it steps when `last`."""
    if engine is None:
        acc.backward(loss)
    else:
        engine.backward(loss, sync_gradients=last)


def clip_and_step(acc, model, optimizer, max_grad_norm: float, engine=None) -> float:
    """After a mini-batch's backward passes: clip, step (unless the norm is not finite) and zero
    the gradients; returns the norm. A second model's DeepSpeed engine did all of it in its last
    backward."""
    if engine is not None:
        norm = engine.get_global_grad_norm()
        return math.nan if norm is None else float(norm)
    norm = float(acc.clip_grad_norm_(model.parameters(), max_grad_norm))
    if math.isfinite(norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm
