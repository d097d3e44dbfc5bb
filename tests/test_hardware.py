"""hardware.keep_freed_memory: glibc keeps freed memory for the next allocation."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# In a child process (the setting is process-wide): malloc, fill and free a block, then count the
# minor page faults of doing it again. glibc's default maps a 64 MB block afresh each time.
CHILD = """
import ctypes, json, resource, sys
from grpo_trainer.hardware import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def fill_and_free(n):
    p = libc.malloc(n)
    libc.memset(p, 1, n)
    libc.free(p)
size = int(sys.argv[2]) * 2**20
fill_and_free(size)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill_and_free(size)
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _refill_faults(mode: str, env: dict | None = None, mib: int = 64) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(mib)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_reused_not_faulted_in_again():
    pages = 64 * 2**20 // 4096
    default = _refill_faults("default")
    assert default["faults"] >= pages  # every page of the new mapping faulted in again
    kept = _refill_faults("keep")
    assert kept["applied"] and kept["faults"] < pages // 20
    off = _refill_faults("keep", {"GRPO_TRAINER_MALLOC_DEFAULT": "1"})  # the way out leaves glibc alone
    assert not off["applied"] and off["faults"] >= pages


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_more_than_2_gib_freed_at_once_is_kept_too():
    # An fp32 update of 32 rows frees more than 2 GiB at once: with the trim threshold at 2 GiB
    # (the largest positive value mallopt takes) glibc gave it back and every step faulted it in
    # again (0.56 M faults, README "Speed"); -1 turns trimming off.
    mib = 2560
    kept = _refill_faults("keep", mib=mib)
    assert kept["applied"] and kept["faults"] < mib * 256 // 20
