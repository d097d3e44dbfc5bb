"""Helpers for the child interpreters that run untrusted or unbounded work (reward verifiers in
rewards/pool.py, tool calls in tools/sandbox.py). Standard library only: the children import
this before anything else."""

from __future__ import annotations

import os
import sys

# signal.SIGKILL on Linux, the only platform where it is used; `import signal` (enum) would cost
# every tool child ~20 ms.
_SIGKILL = 9


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux), so no child outlives a killed trainer."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, _SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def lower_rlimit(kind: int, value: int) -> None:
    """Set both limits of `kind` to `value` unless they are already lower (raising a hard limit
    needs privileges; lowering never does)."""
    import resource

    soft, hard = resource.getrlimit(kind)
    inf = resource.RLIM_INFINITY
    new_hard = value if hard == inf or hard > value else hard
    new_soft = min(value, new_hard) if soft == inf or soft > value else soft
    resource.setrlimit(kind, (new_soft, new_hard))
