"""Tools for multi-turn rollouts: the built-in `python` and `calculator`, user functions, and
the sandbox every tool call runs in (never in the trainer's process).

The sandbox, layer by layer (what enforces what, and where it stops):
- Process: each call runs in a fresh `python -I -S -u` child (no user site, no PYTHON* variables,
  no site-packages for the built-ins) in its own session and process group, with a clean
  environment (PATH and LANG only) and a private temporary directory as cwd, deleted after.
  It dies with the trainer (PR_SET_PDEATHSIG). Code in it cannot touch the trainer's memory.
- Kernel limits (rlimits, set by the child on itself before tool code runs): CPU time, address
  space, file size, open files, processes (RLIMIT_NPROC does not bind root), no core dumps.
- Parent-side limits: a wall-clock deadline and an output cap (at most 4 bytes per shown
  character read); either kills the whole process group (SIGKILL) and the model is told why.
- Landlock (Linux >= 5.13, unprivileged): reading only the Python standard library (and, for user
  tools, their import path), writing only the temporary directory; from ABI 4 no TCP, from ABI 6
  no signals to processes outside the sandbox (the trainer). Kernel-enforced.
- seccomp-bpf (x86_64, aarch64): no sockets, no new processes or programs (fork bombs fail at the
  first fork), no signals to any process, no ptrace, io_uring, namespaces, mounts or BPF.
  Kernel-enforced.
- A Python audit hook (guards.py): the same file, socket, process and signal rules at the
  Python level, so a refused action is a readable PermissionError for the model. A tripwire,
  not a boundary: on a kernel or architecture without Landlock or seccomp it is all that
  guards files, sockets and signals, and code that corrupts the interpreter can pass it.
`ToolSet.layers` says which kernel layers the probe child at construction got.
"""

from __future__ import annotations

import importlib

# Loaded on first use: a tool child imports this package too, and pays for every import here
# on every call (the trainer-side modules cost it ~60 ms).
_EXPORTS = {
    "SandboxLimits": "types", "ToolCall": "types", "ToolError": "types", "ToolResult": "types",
    "ToolSet": "toolset", "ToolSpec": "registry", "register_tool": "registry", "resolve_tool": "registry",
}
__all__ = sorted(_EXPORTS)

TYPE_CHECKING = False  # typing itself costs a child ~20 ms
if TYPE_CHECKING:
    from grpo_trainer.tools.registry import ToolSpec, register_tool, resolve_tool
    from grpo_trainer.tools.toolset import ToolSet
    from grpo_trainer.tools.types import SandboxLimits, ToolCall, ToolError, ToolResult


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"grpo_trainer.tools.{_EXPORTS[name]}"), name)
