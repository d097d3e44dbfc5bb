"""One run per output directory: an exclusive lock on `<output_dir>/.grpo_trainer.lock`.

Two trainers writing one directory interleave metrics rows and save and prune each other's
checkpoints, so a second run (fresh, resume=auto or overwrite) is refused before it loads or
deletes anything, with one line naming the holder's PID.

A POSIX record lock (fcntl.lockf), not a lock file's existence: the kernel drops it when the
holder dies, even by SIGKILL, so a crashed run never blocks the next one; and unlike flock it is
not shared with forked children, so an orphaned helper process cannot keep it; it is also the
kind NFS implements (Linux emulates flock there with it). Only the main process (global RANK 0)
takes it: that is the process that writes the directory.

A POSIX lock is released when its process closes *any* descriptor of the file, so this module
keeps the only one, and a process holds at most one lock.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from grpo_trainer.config import ConfigError

LOCK_NAME = ".grpo_trainer.lock"

_fd: int | None = None
_path: Path | None = None


class RunLocked(ConfigError):
    """Another live process holds the output directory."""


def is_main_rank() -> bool:
    # Read from the launcher's environment: the lock is taken before any accelerator exists.
    return os.environ.get("RANK", "0") == "0"


def _holder(fd: int) -> tuple[str, str]:
    """(who, how to stop it) from the line the holder wrote right after taking the lock."""
    for _ in range(3):  # a holder that has just locked may not have written yet
        fields = os.pread(fd, 200, 0).decode(errors="replace").split()
        if len(fields) >= 3 and fields[0].isdigit():
            pid, host, since = fields[:3]
            where = "" if host == socket.gethostname() else f" on host {host}"
            return f"PID {pid}{where}, started {since}", f"`kill -INT {pid}`{' there' if where else ''}"
        time.sleep(0.1)
    return "a process that has not written its PID yet", "`kill -INT` to its PID"


def acquire(output_dir: str | Path, create: bool = True) -> None:
    """Lock `output_dir` for this process until release() or exit.

    create=False only checks a directory and lock file that already exist (before the input checks,
    which must not write anything): a live holder is then the first thing the user hears about.
    Raises RunLocked (one line) if another process holds it; ConfigError if the lock file cannot be
    made."""
    global _fd, _path
    if not is_main_rank():
        return
    path = Path(output_dir) / LOCK_NAME
    if _fd is not None:
        if _path == path.absolute():
            return
        raise RuntimeError(f"this process already holds the run lock of {_path.parent}")
    if not create and not path.is_file():
        return
    try:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)
    except OSError as exc:
        if not create:
            return  # the input checks report an unusable directory, in their words
        raise ConfigError(f"cannot create the run lock {path} ({exc.strerror}): make trainer.output_dir "
                          "writable or pass another one") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        who, stop = _holder(fd)
        os.close(fd)
        raise RunLocked(f"trainer.output_dir={str(output_dir)!r} is in use by another run ({who}): wait for "
                        f"it to finish, stop it with {stop} (it checkpoints its current step, then exits), or "
                        "pass another trainer.output_dir") from None
    line = f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode()
    os.pwrite(fd, line, 0)
    os.ftruncate(fd, len(line))
    _fd, _path = fd, path.absolute()


def release() -> None:
    """Drop the lock (the file stays: deleting it would race with a process about to lock it)."""
    global _fd, _path
    if _fd is not None:
        os.close(_fd)
        _fd = _path = None
