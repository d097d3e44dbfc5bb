"""Time-bounded worker processes for verifiers that may hang (sympy) or run user code.

Why not concurrent.futures or multiprocessing: a future cannot be cancelled once it runs,
and a hung worker can only be stopped by killing it, which breaks a ProcessPoolExecutor for
good; and multiprocessing's spawn/forkserver start methods re-import the parent's __main__ in
every worker (for the trainer: torch, transformers, vLLM, seconds and gigabytes per worker).
So each worker is a fresh interpreter started with subprocess (never fork: the trainer
process holds a vLLM engine, CUDA state and torch threads that a fork would copy
half-initialised) that imports only this package, and talks over its own socket pair:

- Two bounds per verification. Inside the worker a SIGALRM timer (it runs on the worker's
  main thread, where signals work) stops pure-Python loops at 0.8 * timeout_s and the worker
  lives on. Work the timer cannot interrupt (C code that masks signals, a library that
  re-arms SIGALRM for its own timeout) is caught by the parent: a worker silent for
  timeout_s after its current task began is killed (SIGKILL), that task scores 0, and a
  fresh worker is started while the remaining tasks go to the others.
- A worker imports the modules of the verifiers it will run before it reports ready: the
  parent's clock for a task starts when the task is sent, the worker's timer only once the
  task is unpickled, and unpickling a verifier from a module not yet imported imports it
  (a test module pulls in pytest: 0.2 s, the whole gap between the two bounds at 1 s).
- Tasks go out in chunks and results come back one per task, so the parent sees when each
  task starts (when the previous one finished) without paying a round trip per sample.
- RLIMIT_AS caps a worker's memory, so a hostile expression fails with MemoryError (score 0)
  instead of swapping the machine.
- Workers get the parent's sys.path (PYTHONPATH), so a verifier registered in any module the
  parent can import is found by module and name; on Linux they die with the parent.
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from typing import Callable, Sequence

from grpo_trainer.childproc import die_with_parent, lower_rlimit
from grpo_trainer.rewards.types import FAILED, RewardError, VerifyResult

log = logging.getLogger(__name__)

SOFT_FRACTION = 0.8  # of timeout_s, for the in-worker timer
START_TIMEOUT_S = 120.0  # a worker imports sympy before it is ready; slow on a loaded box
MAX_CHUNK = 64

Task = tuple[Callable[..., VerifyResult], str, str, dict]  # (verifier, completion, ground_truth, kwargs)


class _SoftTimeout(BaseException):
    """BaseException so that verifiers' `except Exception` (math-verify has several) cannot
    swallow it."""


def _on_alarm(signum, frame):
    raise _SoftTimeout()


def _run_one(fn, completion, ground_truth, kwargs, soft_s):
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, soft_s)
            result = fn(completion, ground_truth, **kwargs)
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _SoftTimeout:
        return "timeout", None
    except BaseException as e:  # noqa: BLE001 - a verifier failing on hostile input scores 0
        return "error", f"{type(e).__name__}: {str(e)[:200]}"
    if not isinstance(result, VerifyResult):
        return "bad_return", f"{getattr(fn, '__qualname__', fn)} returned {type(result).__name__}, not VerifyResult"
    if not isinstance(result.score, (int, float)) or not math.isfinite(result.score):
        return "bad_return", f"{getattr(fn, '__qualname__', fn)} returned score {result.score!r}; scores must be finite floats"
    return "ok", result


def worker_entry() -> None:
    """Entry point of a worker interpreter: argv = [fd, parent_pid, soft_s, memory_mb, *preload]."""
    from multiprocessing.connection import Connection

    fd, parent_pid, soft_s, memory_mb, *preload = sys.argv[1:]
    die_with_parent(int(parent_pid))
    _worker_main(Connection(int(fd)), float(soft_s), int(memory_mb), preload)


def _worker_main(conn, soft_s: float, memory_mb: int, preload: list[str]) -> None:
    # Ctrl-C, and the SIGTERM torch's elastic agent sends to a trainer's process group, reach the
    # workers too; the parent decides when they stop (a stopping trainer still finishes its step).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if memory_mb > 0:
        import resource

        lower_rlimit(resource.RLIMIT_AS, memory_mb * 2**20)
    # Import and warm math-verify (sympy, the LaTeX grammar) before reporting ready, so the
    # first real task does not spend its time budget on imports.
    from grpo_trainer.rewards.math_answer import equivalent

    equivalent("\\frac{1}{2}", "$0.5$")
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - unpickling the task fails the same way and says so
            pass
    signal.signal(signal.SIGALRM, _on_alarm)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for idx, fn, completion, ground_truth, kwargs in chunk:
            status, payload = _run_one(fn, completion, ground_truth, kwargs, soft_s)
            conn.send((idx, status, payload))


_BOOTSTRAP = "from grpo_trainer.rewards.pool import worker_entry; worker_entry()"


def _child_env() -> dict[str, str]:
    # The parent's import path, so grpo_trainer and modules holding user verifiers import.
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


class _Worker:
    def __init__(self, soft_s: float, memory_mb: int, preload: Sequence[str]):
        self.conn, child = multiprocessing.Pipe(duplex=True)
        fd = child.fileno()
        args = [sys.executable, "-c", _BOOTSTRAP, str(fd), str(os.getpid()), repr(soft_s), str(memory_mb), *preload]
        try:
            self.proc = subprocess.Popen(args, pass_fds=(fd,), stdin=subprocess.DEVNULL, env=_child_env())
        finally:
            child.close()
        self.started = time.monotonic()
        self.ready = False
        self.inflight: deque[int] = deque()
        self.since = 0.0  # when the current (first in-flight) task began, as seen here

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
    for w in workers:
        try:
            w.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        w.kill()
    workers.clear()


class VerifierPool:
    """`num_workers` worker interpreters running verifiers with a per-task wall-clock bound.
    `preload`: modules the workers import before they report ready (those of the verifiers)."""

    def __init__(
        self,
        num_workers: int = 2,
        timeout_s: float = 1.0,
        memory_mb: int = 4096,
        chunk_size: int | None = None,
        preload: Sequence[str] = (),
    ):
        if num_workers < 1:
            raise RewardError(f"num_workers must be >= 1, got {num_workers}; verifiers that may hang need worker processes")
        if not timeout_s > 0:
            raise RewardError(f"timeout_s must be > 0, got {timeout_s}; give a per-verification bound in seconds")
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        # __main__ is not the caller's script in a worker; its verifiers cannot be sent anyway.
        self.preload = [m for m in dict.fromkeys(preload) if m != "__main__"]
        self.chunk_size = chunk_size  # None: about 4 chunks per worker per run, at most MAX_CHUNK
        self.restarts = 0
        self._lock = threading.Lock()  # one run at a time: results are matched by task index
        self._workers = [self._spawn() for _ in range(num_workers)]
        # Workers die with the parent anyway (Linux); this reaps them when the pool is dropped
        # without close().
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    def _spawn(self) -> _Worker:
        return _Worker(SOFT_FRACTION * self.timeout_s, self.memory_mb, self.preload)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = self._spawn()
        self.restarts += 1

    def close(self) -> None:
        self._finalizer()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until every worker has started (for instance after one was replaced), so a
        following run() is timed on verification alone."""
        with self._lock:
            self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(w.ready for w in self._workers):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RewardError(f"verifier workers not ready after {timeout_s:.0f} s; check memory and process limits")
            by_conn = {w.conn: w for w in self._workers if not w.ready}
            for conn in multiprocessing.connection.wait(list(by_conn), timeout=left):
                w = by_conn[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    code = w.exitcode
                    self._replace(w)
                    raise RewardError(
                        f"a verifier worker exited (code {code}) while starting; "
                        "run `python -c 'import math_verify'` to check the install"
                    ) from None
                w.ready = msg[0] == "ready" or w.ready

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def run(self, tasks: list[Task]) -> tuple[list[VerifyResult], int, int]:
        """Run every task; returns (results in task order, number timed out, number failed).
        A task that times out, raises or takes its worker down scores FAILED (0.0)."""
        if self.closed:
            raise RewardError("the reward pool is closed; build a new reward computer")
        with self._lock:
            return self._run(tasks)

    def _run(self, tasks: list[Task]) -> tuple[list[VerifyResult], int, int]:
        n = len(tasks)
        results: list[VerifyResult | None] = [None] * n
        pending = deque(range(n))
        chunk = self.chunk_size or max(1, min(MAX_CHUNK, math.ceil(n / (4 * len(self._workers)))))
        state = {"done": 0, "timeouts": 0, "errors": 0, "bad": None}

        def finish(idx: int, status: str, payload) -> None:
            if status == "ok":
                results[idx] = payload
            else:
                results[idx] = FAILED
                if status == "timeout":
                    state["timeouts"] += 1
                elif status == "bad_return":
                    state["bad"] = state["bad"] or payload
                else:
                    state["errors"] += 1
                    if state["errors"] == 1:
                        log.warning("verifier failed, scored 0: %s", payload)
            state["done"] += 1

        def lost(w: _Worker, status: str) -> None:
            # The worker is gone mid-task: its current task fails, the rest are redone.
            finish(w.inflight.popleft(), status, "verifier worker died" if status == "error" else None)
            pending.extendleft(reversed(w.inflight))
            w.inflight.clear()
            self._replace(w)

        try:
            while state["done"] < n:
                now = time.monotonic()
                for w in list(self._workers):
                    if w.ready and not w.inflight and pending:
                        ids = [pending.popleft() for _ in range(min(chunk, len(pending)))]
                        w.inflight.extend(ids)
                        w.since = now
                        try:
                            w.conn.send([(i, *tasks[i]) for i in ids])
                        except (OSError, ValueError):
                            w.inflight.clear()
                            pending.extendleft(reversed(ids))
                            self._replace(w)
                deadlines = [w.since + self.timeout_s for w in self._workers if w.inflight]
                deadlines += [w.started + START_TIMEOUT_S for w in self._workers if not w.ready]
                wait_s = max(0.0, min(deadlines) - now) if deadlines else None
                by_conn = {w.conn: w for w in self._workers}
                for conn in multiprocessing.connection.wait(list(by_conn), timeout=wait_s):
                    w = by_conn[conn]
                    try:
                        while conn.poll():
                            msg = conn.recv()
                            if msg[0] == "ready":
                                w.ready = True
                                continue
                            idx, status, payload = msg
                            w.inflight.popleft()
                            w.since = time.monotonic()
                            finish(idx, status, payload)
                    except (EOFError, OSError):
                        if not w.ready:
                            code = w.exitcode
                            self._replace(w)
                            raise RewardError(
                                f"a verifier worker exited (code {code}) before it was ready; "
                                "run `python -c 'import math_verify'` to check the install"
                            ) from None
                        if w.inflight:
                            lost(w, "error")
                        else:
                            self._replace(w)
                now = time.monotonic()
                for w in list(self._workers):
                    # A result may have arrived since wait() returned: read it next round.
                    if w.inflight and now - w.since > self.timeout_s and not w.conn.poll():
                        lost(w, "timeout")
                    elif not w.ready and now - w.started > START_TIMEOUT_S:
                        self._replace(w)
                        raise RewardError(
                            f"a verifier worker did not start within {START_TIMEOUT_S:.0f} s; "
                            "check that the machine is not out of memory or processes"
                        )
        except BaseException:
            # Leftover in-flight results would be read by the next run as its own.
            for w in list(self._workers):
                if w.inflight:
                    w.inflight.clear()
                    self._replace(w)
            raise
        if state["bad"]:
            raise RewardError(f"verifier contract broken: {state['bad']}")
        return results, state["timeouts"], state["errors"]  # type: ignore[return-value]
