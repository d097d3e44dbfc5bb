"""What crosses between the rollout loop and the tool sandbox: calls in, bounded results out."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal


class ToolError(ValueError):
    """Bad tool configuration (an unknown tool name, a bad limit): one line naming the fix.
    Never raised for a tool call that fails: that is a ToolResult with status error/timeout."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the raw text the model wrote: code, an expression, or a JSON object


@dataclass(frozen=True)
class ToolResult:
    text: str  # what the model is shown, already bounded by SandboxLimits.output_chars (+ a note)
    status: Literal["ok", "error", "timeout"]
    elapsed_s: float = 0.0  # wall time from the child's start to its end, as seen by the parent


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: float = 2.0  # CPU seconds (RLIMIT_CPU, rounded up to whole seconds)
    wall_s: float = 5.0  # from start to kill, start-up (~40 ms) included
    memory_mb: int = 512  # address space (RLIMIT_AS)
    output_chars: int = 2000  # shown to the model; a child writing over 4x this many bytes is stopped
    max_processes: int = 16  # RLIMIT_NPROC (see child.py: it binds non-root users only)
    file_mb: int = 16  # largest file the tool may write (RLIMIT_FSIZE)
    max_open_files: int = 64  # RLIMIT_NOFILE

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ToolError(f"SandboxLimits.{f.name} must be a positive number, got {v!r}; "
                                f"the default is {f.default}")
            if f.type == "int" and not isinstance(v, int):
                raise ToolError(f"SandboxLimits.{f.name} must be a whole number, got {v!r}")
        if self.memory_mb < 64:
            raise ToolError(f"SandboxLimits.memory_mb={self.memory_mb} is too small for a Python "
                            "interpreter; give at least 64")
