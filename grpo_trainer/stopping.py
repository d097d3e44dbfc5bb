"""SIGINT and SIGTERM stop a run where no work is lost, in one line, never with a traceback.

- While the run starts (config, model and data loading: nothing trained yet) a signal stops the
  process at once.
- In the training loop the first signal only sets a flag. At the end of the step, after it is
  logged, the processes agree (one tiny collective per step, so all of them stop at the same
  step), the step is checkpointed unless it just was, and train.py prints `stopped at step N;
  resume with resume=auto` and exits 128 + the signal number (130 SIGINT, 143 SIGTERM).
- A second signal while stopping exits at once, as users expect of a second Ctrl-C: the step in
  progress is lost, complete checkpoints are not (a save is a temporary directory renamed into
  place).

Reaching the trainer through its launcher. torch's elastic agent (multi-process `accelerate
launch`, torchrun) passes SIGINT/SIGTERM/SIGHUP on to its workers and SIGKILLs them after
TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default 30). accelerate's one-process launcher passes
nothing on (below 1.16, which pyproject.toml pins: 1.16's SIGKILLs its child 5 s after a
signal): it dies of SIGTERM (or of KeyboardInterrupt on SIGINT) and its child trained on,
unseen. So a trainer whose parent is a launcher asks the kernel for SIGTERM when that parent dies
(PR_SET_PDEATHSIG). The kernel sends it once; after a Ctrl-C, which reaches launcher and trainer
alike, it is no second request and is not counted as one. A trainer started any other way (a
shell, nohup, a test) does not follow its parent: a closed shell must not stop a nohup'd run.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from grpo_trainer import console
from grpo_trainer.runlock import is_main_rank

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1
# argv[0]'s name or the `-m` module of the processes that start trainers and wait for them.
LAUNCHERS = {"accelerate", "torchrun", "deepspeed", "accelerate.commands.launch", "torch.distributed.run",
             "torch.distributed.launch", "deepspeed.launcher.launch", "deepspeed.launcher.runner"}

_signum = 0  # the first stop signal received, 0 for none
_deferring = False  # in the loop: a first signal waits for the end of the step
_launcher = 0  # pid of the parent whose death sends SIGTERM; 0 when not following one


class RunStopped(Exception):
    """The run stopped on a signal after checkpointing `step`."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum
        super().__init__(f"stopped at step {step}; resume with resume=auto")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _say(text: str) -> None:
    if is_main_rank():  # the terminal, also while a run's fds 1 and 2 are its log file
        console.write_from_signal_handler(text)


def _handle(signum: int, frame) -> None:
    global _signum, _launcher
    name = signal.Signals(signum).name
    if _launcher and signum == signal.SIGTERM and os.getppid() != _launcher:
        _launcher = 0
        if _signum:
            return  # the launcher died of the signal being handled (a Ctrl-C reaches both)
        name = "SIGTERM (its launcher exited)"
    if _deferring and not _signum:
        _signum = signum
        _say(f"{name} received: stopping at the end of this step, after its checkpoint (to stop at once, "
             f"send it again: kill -{signal.Signals(signum).name[3:]} {os.getpid()})")
        return
    _say(f"stopped by {name} before a step completed; complete checkpoints are intact: resume with resume=auto")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a stream interrupted mid-write; exiting matters more
            pass
    os._exit(128 + signum)


def _launcher_parent() -> int:
    """The parent's pid if it is a launcher (see LAUNCHERS), else 0."""
    parent = os.getppid()
    try:
        argv = Path(f"/proc/{parent}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return 0
    names = {os.path.basename(a) for a in argv[:2]}
    names |= {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"}
    return parent if names & LAUNCHERS else 0


def _set_parent_death_signal(signum: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@contextmanager
def handled():
    """Handle SIGINT/SIGTERM as described above while the block runs (main thread only), and
    follow a launcher parent; the previous handlers are restored afterwards (tests call main())."""
    global _signum, _deferring, _launcher
    _signum, _deferring, _launcher = 0, False, 0
    if threading.current_thread() is not threading.main_thread():  # Python allows handlers only there
        yield
        return
    previous = {s: signal.signal(s, _handle) for s in STOP_SIGNALS}
    following = False
    try:
        if sys.platform.startswith("linux"):
            parent = _launcher_parent()
            if parent and _set_parent_death_signal(signal.SIGTERM):
                following = True
                _launcher = parent
                if os.getppid() != parent:  # it died before the request took effect
                    _handle(signal.SIGTERM, None)
        yield
    finally:
        if following:
            _set_parent_death_signal(0)
        for s, h in previous.items():
            signal.signal(s, h)
        _signum, _deferring, _launcher = 0, False, 0


def defer() -> None:
    """From now on (the training loop) a first signal stops the run at the end of the step."""
    global _deferring
    _deferring = True


def agreed(accelerator) -> int:
    """Collective, once per step: the stop signal any process received (0: none), the same on all."""
    import torch

    mine = torch.tensor([float(_signum)], device=accelerator.device)
    return int(accelerator.gather(mine).max().item())
