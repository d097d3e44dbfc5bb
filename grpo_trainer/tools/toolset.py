"""ToolSet: the tools a rollout may call, their schemas, and batched sandboxed execution."""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import threading

from grpo_trainer.tools.registry import ToolSpec, resolve_tool
from grpo_trainer.tools.sandbox import PKG_DIR, make_call, run_calls, stdlib_roots
from grpo_trainer.tools.types import SandboxLimits, ToolCall, ToolError, ToolResult

log = logging.getLogger(__name__)


class ToolSet:
    """The tools a rollout may call, by name: "python", "calculator", a name registered with
    @register_tool, or "module.path:function". Each call runs in a sandbox child."""

    def __init__(self, names: list[str], limits: SandboxLimits = SandboxLimits(), num_workers: int = 2):
        if isinstance(names, str) or not names:
            raise ToolError(f"tools must be a non-empty list of names such as ['python'], got {names!r}")
        if not isinstance(limits, SandboxLimits):
            raise ToolError(f"limits must be a SandboxLimits, got {type(limits).__name__}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ToolError(f"num_workers must be a whole number >= 1, got {num_workers!r}")
        self.specs: dict[str, ToolSpec] = {}
        for name in names:
            spec = resolve_tool(name)
            if spec.name in self.specs:
                raise ToolError(f"tool {spec.name!r} is listed twice (as {name!r}); list each tool once")
            self.specs[spec.name] = spec
        self.limits, self.num_workers = limits, num_workers
        self._roots = stdlib_roots() + [PKG_DIR]
        # User tools import from the trainer's path (their module and its dependencies).
        self._sys_path = list(dict.fromkeys(os.path.abspath(p or os.curdir) for p in sys.path))
        self._audit_hook = True  # tests turn it off to show the kernel layers hold alone
        self._lock = threading.Lock()
        self._closed = False
        self.layers = self._probe()
        missing = {name: what for name, what, key in (
            ("Landlock", "file access", "landlock_abi"), ("seccomp", "sockets, new processes and signals", "seccomp"))
            if not self.layers.get(key)}
        if missing:
            log.warning("tool sandbox: no %s on this machine (kernel %s, %s); %s guarded only by a Python audit "
                        "hook, which stops ordinary code but is not a security boundary", " or ".join(missing),
                        os.uname().release, os.uname().machine, " and ".join(missing.values()))

    def _call(self, spec: ToolSpec, arguments: str) -> dict:
        user = spec.kind == "user"
        roots = self._roots + (self._sys_path if user else [])
        return make_call(spec.kind, spec.target, arguments, roots, self._sys_path if user else [], self.limits,
                         self._audit_hook)

    def _probe(self) -> dict:
        call = make_call("probe", "", "", self._roots, [], self.limits)
        res = run_calls([call], self.limits, 1)[0]
        if res.status == "ok":
            try:
                return json.loads(res.text)
            except ValueError:
                pass
        raise ToolError(f"the tool sandbox failed to start a child: {res.text[:200]!r}; "
                        "check that `python -I -S` runs on this machine")

    def descriptions(self) -> list[dict]:
        """OpenAI-style function schemas, for tokenizer.apply_chat_template(tools=...)."""
        return [copy.deepcopy(spec.description) for spec in self.specs.values()]

    def run_many(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Run every call, at most num_workers at a time; results in call order. A failing,
        hanging or hostile call is a ToolResult with status error or timeout, never an exception."""
        if self._closed:
            raise ToolError("this ToolSet is closed; build a new one")
        results: list[ToolResult | None] = [None] * len(calls)
        todo, prepared = [], []
        for i, call in enumerate(calls):
            spec = self.specs.get(call.name)
            if spec is None:
                results[i] = ToolResult(f"[unknown tool {call.name[:80]!r}; the tools are: "
                                        f"{', '.join(self.specs)}]", "error")
            else:
                args = call.arguments
                if not isinstance(args, str):  # a parser that already decoded the JSON arguments
                    args = json.dumps(args) if isinstance(args, dict) else str(args)
                todo.append(i)
                prepared.append(self._call(spec, args))
        with self._lock:
            for i, res in zip(todo, run_calls(prepared, self.limits, self.num_workers)):
                results[i] = res
        return results  # type: ignore[return-value]

    def close(self) -> None:
        # Children live for one call and are gone when run_many returns: nothing to stop.
        self._closed = True

    def __enter__(self) -> "ToolSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
