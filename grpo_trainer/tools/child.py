"""Entry point of a tool child: a fresh `python -I -S -u` interpreter that runs ONE tool call in
its private temporary directory (its cwd) and exits. Standard library only, plus the user tool's
own module.

Order matters: everything trusted happens first (reading the call, importing the tool's module,
which is the user's own configured code), then the limits and guards go on, irrevocably, and
only then do the model-written arguments reach any code. Protocol with the parent (sandbox.py):
the call is a marshal file `.call` in the cwd (marshal, not json: json imports re, ~15 ms a call); the tool's output goes to stdout; on failure one
line goes to stderr and the exit status is non-zero.
"""

from __future__ import annotations

import os
import sys

CALL_FILE = ".call"


def _set_limits(lim: dict) -> None:
    import resource

    from grpo_trainer.childproc import lower_rlimit

    lower_rlimit(resource.RLIMIT_CORE, 0)
    lower_rlimit(resource.RLIMIT_FSIZE, lim["file_mb"] * 2**20)
    lower_rlimit(resource.RLIMIT_NOFILE, lim["max_open_files"])
    # Counts every task of this user (root is exempt): with seccomp on, no process can be
    # started anyway and this caps threads; without it, it is the fork-bomb bound for non-root.
    lower_rlimit(resource.RLIMIT_NPROC, lim["max_processes"])
    # Soft limit: SIGXCPU (terminates); one second later the hard limit's SIGKILL, for code
    # that ignores SIGXCPU.
    cpu = max(1, int(-(-lim["cpu_s"] // 1)))
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard == resource.RLIM_INFINITY or hard > cpu + 1:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    lower_rlimit(resource.RLIMIT_AS, lim["memory_mb"] * 2**20)


def _resolve(call: dict):
    if call["tool"] == "user":
        import importlib

        sys.path[:0] = call["sys_path"]
        module_name, _, qualname = call["target"].partition(":")
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        return obj
    from grpo_trainer.tools.builtin import TOOLS

    return TOOLS[call["tool"]]


def _user_call(fn, arguments: str) -> str:
    text = arguments.strip()
    if text.startswith("{"):
        import json

        try:
            kwargs = json.loads(text)
        except ValueError:
            kwargs = None
        if isinstance(kwargs, dict):
            result = fn(**kwargs)
        else:
            result = fn(arguments)
    else:
        result = fn(arguments)
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        from grpo_trainer.tools.builtin import format_number

        return format_number(result)
    if not isinstance(result, str):
        raise TypeError(f"the tool returned {type(result).__name__}, not str; return a string")
    return result


def _error_line(exc: BaseException, memory_mb: int) -> str:
    # One short line for the model: the exception, and the line of the tool code it came from.
    if isinstance(exc, MemoryError):
        return f"MemoryError: out of memory (the tool's limit is {memory_mb} MB)"
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<tool>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if isinstance(exc, SyntaxError) and exc.filename == "<tool>":
        line = exc.lineno
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    where = f"line {line}: " if line else ""
    return f"{where}{type(exc).__name__}{': ' + msg if msg else ''}"[:300]


def main() -> None:
    import marshal

    with open(CALL_FILE, "rb") as f:
        call = marshal.load(f)
    os.unlink(CALL_FILE)
    from grpo_trainer.childproc import die_with_parent

    die_with_parent(call["parent_pid"])
    sys.stdout.reconfigure(errors="backslashreplace")
    sys.stderr.reconfigure(errors="backslashreplace")
    limits = call["limits"]
    try:
        fn = None if call["tool"] == "probe" else _resolve(call)
    except BaseException as e:  # noqa: BLE001 - the user's module failed to import here
        print(f"the tool could not be loaded: {_error_line(e, limits['memory_mb'])}", file=sys.stderr)
        sys.exit(2)
    # Imported before the guards go on (later imports read the stdlib through them).
    from grpo_trainer.tools import builtin, guards, kernel  # noqa: F401

    cwd = os.getcwd()
    _set_limits(limits)
    layers = {"landlock_abi": kernel.apply_landlock(call["read_roots"], [cwd]), "seccomp": kernel.apply_seccomp()}
    if call["audit_hook"]:
        guards.install_audit_hook(call["read_roots"], cwd)
    if fn is None:
        import json

        print(json.dumps(layers))
        return
    try:
        if call["tool"] == "user":
            out = _user_call(fn, call["arguments"])
        else:
            out = fn(call["arguments"])
        sys.stdout.write(out)
    except SystemExit as e:
        if e.code not in (None, 0):
            print(f"exited with status {e.code}", file=sys.stderr)
            sys.exit(1)
    except BaseException as e:  # noqa: BLE001 - any failure of tool code goes back to the model
        print(_error_line(e, limits["memory_mb"]), file=sys.stderr)
        sys.exit(1)
