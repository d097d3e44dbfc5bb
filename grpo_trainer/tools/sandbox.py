"""The parent side of the tool sandbox: one fresh child interpreter per tool call, at most
`num_workers` at a time, each bounded in wall time and output size, then killed with its whole
process group and its temporary directory deleted.

Why a fresh interpreter per call rather than long-lived workers (as rewards/pool.py has): a call
must not see what an earlier call left behind (files, monkeypatched modules, threads, a
half-broken interpreter), and the kernel guards a child installs on itself are irrevocable, so
a child can serve one call only. Start-up is the price: `python -I -S` plus this package's
imports, about 40 ms of one core per call here, small against a generation turn. Why not
concurrent.futures or multiprocessing: the same as in rewards/pool.py (a running future cannot
be stopped; spawned workers re-import the trainer's __main__); here a selectors loop over the
children's pipes does the waiting, with no thread and no fork of the trainer (subprocess
spawns with vfork/exec, safe in a process holding CUDA and torch threads).
"""

from __future__ import annotations

import marshal
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import deque
from dataclasses import asdict

from grpo_trainer.tools.child import CALL_FILE
from grpo_trainer.tools.types import SandboxLimits, ToolError, ToolResult

PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../grpo_trainer
_BOOTSTRAP = ("import sys; sys.path[:0] = [{root!r}]; "
              "from grpo_trainer.tools.child import main; main()").format(root=os.path.dirname(PKG_DIR))
# The child's whole environment: nothing of the trainer's (tokens, proxies, CUDA settings).
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
STDERR_TAIL = 2048  # bytes of stderr kept: the child's error line comes last
KILL_GRACE_S = 1.0  # after a kill, how long pipes held by an escaped process may stay open


def stdlib_roots() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib")})


def _rmtree(path: str) -> None:
    def unlock(func, p, exc_info):  # a tool may have made its files or directories read-only
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=unlock)


class _Job:
    def __init__(self, idx: int, call: dict, limits: SandboxLimits, sel: selectors.BaseSelector):
        self.idx, self.limits, self.sel = idx, limits, sel
        self.tmp = tempfile.mkdtemp(prefix="grpo-tool-")
        with open(os.path.join(self.tmp, CALL_FILE), "wb") as f:
            marshal.dump(call, f)
        self.start = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-u", "-c", _BOOTSTRAP], cwd=self.tmp, env=CLEAN_ENV,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, close_fds=True)
        except BaseException:
            _rmtree(self.tmp)
            raise
        self.out, self.err, self.err_total = bytearray(), bytearray(), 0
        self.cap = 4 * limits.output_chars + 4  # bytes: at most 4 per character
        self.why: str | None = None  # "timeout" or "output" when the parent stopped it
        self.killed_at: float | None = None
        self.out_fd = self.proc.stdout.fileno()  # kept: fileno() raises once the pipe is closed
        self.open = {self.out_fd: self.proc.stdout, self.proc.stderr.fileno(): self.proc.stderr}
        for fd in self.open:
            sel.register(fd, selectors.EVENT_READ, self)

    @property
    def deadline(self) -> float:
        return self.start + self.limits.wall_s

    def read(self, fd: int) -> None:
        data = os.read(fd, 65536)
        if not data:
            self._close(fd)
        elif fd == self.out_fd:
            self.out += data[: self.cap + 1 - len(self.out)]
            if len(self.out) > self.cap:
                self.kill("output")
        else:
            self.err_total += len(data)
            self.err = (self.err + data)[-STDERR_TAIL:]
            if self.err_total > self.cap + STDERR_TAIL:
                self.kill("output")

    def _close(self, fd: int) -> None:
        self.sel.unregister(fd)
        self.open.pop(fd).close()

    def kill(self, why: str) -> None:
        self.why = self.why or why
        if self.killed_at is None:
            self.killed_at = time.monotonic()
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def poll(self, now: float) -> ToolResult | None:
        """The result once the child has exited and its pipes are drained, else None."""
        if now >= self.deadline:
            self.kill("timeout")
        if self.killed_at is not None and now - self.killed_at > KILL_GRACE_S:
            for fd in list(self.open):  # held open by something outside the group: stop reading
                self._close(fd)
        if self.open:
            return None
        try:  # exited? (left a zombie, so its process group id cannot be reused meanwhile)
            if os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return None
        except ChildProcessError:
            pass
        try:  # anything it left in its group goes with it
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - self.start
        _rmtree(self.tmp)
        return self._result(self.proc.returncode, usage.ru_utime + usage.ru_stime, elapsed)

    def _result(self, code: int, cpu_used: float, elapsed: float) -> ToolResult:
        n, lim = self.limits.output_chars, self.limits
        out = self.out.decode("utf-8", "replace")
        clipped = out if len(out) <= n else out[:n] + f"\n[output truncated to {n} characters]"
        err_lines = [ln for ln in self.err.decode("utf-8", "replace").splitlines() if ln.strip()]
        sep = "\n" if out and not out.endswith("\n") else ""

        def result(text: str, status: str) -> ToolResult:
            return ToolResult(text, status, elapsed)  # type: ignore[arg-type]

        if self.why == "output":
            return result(out[:n] + f"{sep}[output cut: the tool printed more than {n} characters and was stopped]",
                          "error")
        if self.why == "timeout":
            return result(f"{clipped}{sep}[timeout: the tool ran longer than {lim.wall_s:g} s and was stopped]",
                          "timeout")
        cpu_limit = max(1, -(-lim.cpu_s // 1))
        if code == -signal.SIGXCPU or (code == -signal.SIGKILL and cpu_used >= cpu_limit):
            return result(f"{clipped}{sep}[timeout: the tool used its {lim.cpu_s:g} s of CPU time and was stopped]",
                          "timeout")
        if code < 0:
            return result(f"{clipped}{sep}[the tool was killed by {signal.Signals(-code).name}]", "error")
        if code != 0:
            line = err_lines[-1][:300] if err_lines else f"[the tool failed with exit status {code}]"
            return result(f"{clipped}{sep}{line}", "error")
        return result(clipped, "ok")

    def abandon(self) -> None:
        self.kill("timeout")
        for fd in list(self.open):
            self._close(fd)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        _rmtree(self.tmp)


def run_calls(calls: list[dict], limits: SandboxLimits, num_workers: int) -> list[ToolResult]:
    """Run each prepared call (see child.py) in its own child, `num_workers` at a time; results
    in call order. Tool failures become results; only a failure to start a child raises."""
    results: list[ToolResult | None] = [None] * len(calls)
    pending, active = deque(range(len(calls))), []
    with selectors.DefaultSelector() as sel:
        try:
            while pending or active:
                while pending and len(active) < num_workers:
                    i = pending.popleft()
                    try:
                        active.append(_Job(i, calls[i], limits, sel))
                    except OSError as e:
                        raise ToolError(f"cannot start a tool process ({e}); check free memory, "
                                        "process limits and the temporary directory") from None
                now = time.monotonic()
                # Children whose pipes are closed are polled for exit every 10 ms.
                wait = min(0.01 if not j.open else (j.killed_at + KILL_GRACE_S if j.killed_at else j.deadline) - now
                           for j in active)
                for key, _ in sel.select(max(0.0, min(wait, 0.25))):
                    key.data.read(key.fd)
                now = time.monotonic()
                for job in list(active):
                    res = job.poll(now)
                    if res is not None:
                        results[job.idx] = res
                        active.remove(job)
        finally:
            for job in active:  # an interrupt (Ctrl-C) or a start failure: nothing left running
                job.abandon()
    return results  # type: ignore[return-value]


def make_call(kind: str, target: str, arguments: str, read_roots: list[str], sys_path: list[str],
              limits: SandboxLimits, audit_hook: bool = True) -> dict:
    """What child.py reads. audit_hook=False leaves the Python-level guard off, for tests that
    show the kernel layers hold on their own."""
    return {"parent_pid": os.getpid(), "tool": kind, "target": target, "arguments": arguments,
            "read_roots": read_roots, "sys_path": sys_path, "limits": asdict(limits), "audit_hook": audit_hook}
