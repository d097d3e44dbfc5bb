"""The console of a training run: the project's own lines (start-up phases, step lines, warnings
and errors) on the terminal; everything else (third-party logging, Python warnings, and what
libraries write straight to file descriptors 1 and 2: vLLM's engine dump, Triton and NUMA lines,
progress bars of weight loading) in `RUN_DIR/logs/third_party.rank{R}.log`.
`--verbose` or GRPO_TRAINER_VERBOSE=1 leaves all of it on the console.

Quiet mode points fds 1 and 2 at the log file for the whole run: logging configuration cannot
reach C++ output or a library's print(). The project writes its lines to duplicates of the
original descriptors (`out()`, `err()`, `err_fd()`). Leaving `quiet()`, normally or by an
exception, puts the descriptors back before the caller prints anything, so an error line or a
crash's traceback reaches the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Iterator

VERBOSE_ENV = "GRPO_TRAINER_VERBOSE"
PROJECT = "grpo_trainer"

_out: IO[str] | None = None  # the terminal's stdout/stderr while quiet() holds fds 1 and 2
_err: IO[str] | None = None
_pending = False  # a phase line was started and waits for its end


def out() -> IO[str]:
    return _out or sys.stdout


def err() -> IO[str]:
    return _err or sys.stderr


def write_from_signal_handler(text: str) -> None:
    """One line on the terminal's stderr with os.write: a handler may interrupt a print, and a
    buffered stream is not reentrant. An open phase line is ended first."""
    if _pending:
        os.write(_out.fileno() if _out is not None else 1, b"\n")
    os.write(_err.fileno() if _err is not None else 2, (text + "\n").encode())


def verbose_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false", "no")


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _end_pending() -> None:
    global _pending
    if _pending:
        out().write("\n")
        _pending = False


def line(text: str, stream: IO[str] | None = None) -> None:
    """One whole project line on the console."""
    _end_pending()
    s = stream or out()
    s.write(text + "\n")
    s.flush()


def stamped(text: str) -> None:
    if _main_rank():
        line(f"{time.strftime('%H:%M:%S')} {text}")


class _Phase:
    result = ""  # set inside the block: what was loaded ("1,000 prompts", "ready")


@contextlib.contextmanager
def phase(what: str) -> Iterator[_Phase]:
    """`10:00:01 starting vLLM engine … ready (25.3 s)`: the start is shown at once, so a slow
    phase is not silence, and its end on the same line unless another line came in between."""
    global _pending
    p = _Phase()
    if not _main_rank():
        yield p
        return
    _end_pending()
    s = out()
    s.write(f"{time.strftime('%H:%M:%S')} {what} … ")
    s.flush()
    _pending, start, ok = True, time.perf_counter(), False
    try:
        yield p
        ok = True
    finally:
        took = f"({time.perf_counter() - start:.1f} s)"
        end = " ".join(filter(None, [p.result if ok else "failed", took]))
        if not _pending:  # interrupted by another line: repeat what ended
            s.write(f"{time.strftime('%H:%M:%S')} {what}: ")
        s.write(end + "\n")
        s.flush()
        _pending = False
        logging.getLogger(__name__).info("%s: %s", what, end, extra={"on_console": True})


class _ConsoleHandler(logging.Handler):
    """The project's records (quiet), or every record (verbose), on the console's stderr."""

    def __init__(self, verbose: bool):
        super().__init__(logging.INFO)
        self.verbose = verbose
        self.full = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "on_console", False):
            return
        ours = record.name.startswith(PROJECT) or record.name == "__main__"
        if not (ours or self.verbose):
            return
        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            if not ours:
                text = self.full.format(record)
            elif record.levelno >= logging.WARNING:
                text = f"{stamp} {record.levelname.lower()}: {record.getMessage()}"
            else:
                text = f"{stamp} {record.getMessage()}"
            line(text, err())
        except Exception:  # noqa: BLE001 - logging must never take the run down
            self.handleError(record)


def log_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "logs" / f"third_party.rank{int(os.environ.get('RANK', '0'))}.log"


@contextlib.contextmanager
def quiet(run_dir: str | Path, verbose: bool) -> Iterator[Path]:
    """Configure logging for a run in `run_dir` and, unless verbose, move fds 1 and 2 to its log
    file until the block ends. Every record is also written to that file, in both modes."""
    global _out, _err
    path = log_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handlers = [file_handler, _ConsoleHandler(verbose)]
    for h in handlers:
        root.addHandler(h)
    old_level = root.level
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)  # py.warnings: to the file, and to the console only when verbose
    if verbose:
        for noisy in ("httpx", "datasets", "accelerate.utils.other"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    else:
        from grpo_trainer.rollout.vllm_env import route_logs_to_python_logging

        route_logs_to_python_logging()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        saved = os.dup(1), os.dup(2)
        _out = open(saved[0], "w", buffering=1, encoding="utf-8", closefd=True)
        _err = open(saved[1], "w", buffering=1, encoding="utf-8", closefd=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        yield path
    finally:
        _end_pending()
        if not verbose:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - a library's broken stream must not hide our error
                    pass
            os.dup2(_out.fileno(), 1)
            os.dup2(_err.fileno(), 2)
            _out.close()
            _err.close()
            _out = _err = None
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)
        logging.captureWarnings(False)
