"""What this machine does fast: recipes ask for bf16 because it halves time and memory on CPUs
with bf16 instructions (and on GPUs); on a CPU without them it costs several times over, so the
trainer (distributed.make_accelerator) and the vLLM engine (rollout/vllm_engine.py) fall back to
fp32 there, each with one warning. And what the C allocator does with freed memory
(`keep_freed_memory`)."""

from __future__ import annotations

import ctypes
import os
import platform

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). Measured without it, on a
    2-core AVX2-only machine (2026-12-01): torch's bf16 GEMM 0.7 GFLOP/s against 28 in fp32 (40x
    slower), vLLM's CPU sampling 21 tokens/s in bf16 against 101 in fp32 (4.8x slower)."""
    if os.environ.get("GRPO_TRAINER_CPU_BF16") == "1":  # keep bf16 anyway (tests of bf16 rounding, measurements)
        return True
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(checks):  # a torch without these probes (or not x86): trust the recipe
        return True
    return any(check() for check in checks if check is not None)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc keep the memory this process frees for its next allocations instead of handing
    it back to the kernel. torch's CPU allocator does not cache: every tensor is a malloc, which
    glibc serves above its mmap threshold (32 MB at most) with a fresh mapping, unmapped on free,
    so each micro-batch's activations and logits were faulted in and zeroed by the kernel again.
    No mmap and no trimming end that. Trimming is off at a threshold of -1 (mallopt(3)); the
    2 GiB used before (the largest positive value) still let an fp32 update of 32 rows, which frees
    more than that at once, be handed back and faulted in again: 0.56 M faults in the step's
    update, 1.27x its bare forward+backward, against 0 faults and 1.04x with -1 (2026-12-02,
    2-core AMX machine, README "Speed"). The first measurement, with the equivalent GLIBC_TUNABLES
    (2-core AVX2, 16 rows): 0.5-1.4 M faults per update became 0, bare forward+backward 43.6 and
    47.0 s became 37.7 and 39.5 s, peak RSS 7.03 -> 7.11 GiB. tcmalloc and jemalloc do
    the same, as a dependency. GRPO_TRAINER_MALLOC_DEFAULT=1 leaves glibc as it is. True when applied."""
    if os.environ.get("GRPO_TRAINER_MALLOC_DEFAULT") == "1" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":  # musl and others have no mallopt
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
