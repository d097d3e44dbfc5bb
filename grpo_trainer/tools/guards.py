"""The Python-level layer of the tool sandbox: an audit hook (PEP 578) installed in the tool
child before tool code runs. It refuses, with PermissionError, what ordinary Python code does to
reach outside: opening files outside the allowed roots, writing or deleting outside the
temporary directory, sockets, starting processes, signalling any process, ctypes, and the
introspection that would find and edit the hook's own state.

It is a tripwire, not a boundary: an audit hook runs inside the interpreter it guards, so
memory corruption or a C extension loaded before it can get past it. The kernel layers
(kernel.py: Landlock, seccomp; and the rlimits and the process group) are what hold when the
Python layer fails; this layer is what still stands on a kernel or architecture without them,
and it turns a refused action into a readable error for the model. Standard library only.
"""

from __future__ import annotations

import os
import sys

# Events refused outright (prefix match).
_DENY_PREFIXES = (
    "socket.", "ctypes.", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
    "os.startfile", "subprocess.", "os.kill", "os.killpg", "signal.pthread_kill", "pty.", "gc.get_",
    "sys.setprofile", "sys.settrace", "sys._current_frames", "os.putenv", "os.unsetenv", "os.setxattr",
    "os.removexattr", "resource.setrlimit", "resource.prlimit", "mmap.__new__", "os.chroot", "os.mount",
)
# Extension modules that give raw access to what the events above guard.
_DENY_IMPORTS = frozenset({"_ctypes", "ctypes", "_posixsubprocess", "_socket", "socket", "mmap", "_multiprocessing"})
# Events whose path arguments (first indices) must lie inside the temporary directory, and where
# their dir_fd arguments sit (a path relative to a held directory fd is refused outright).
_WRITE_PATHS = {
    "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.rename": ((0, 1), (2, 3)),
    "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)), "os.truncate": ((0,), ()),
    "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.mkdir": ((0,), (2,)), "os.utime": ((0,), (3,)),
    "shutil.rmtree": ((0,), ()), "shutil.move": ((0, 1), ()), "shutil.copyfile": ((1,), ()),
    "os.chflags": ((0,), ()),
}
# Events whose path arguments must lie inside a readable root.
_READ_PATHS = {"os.listdir": (0,), "os.scandir": (0,), "glob.glob": (0,), "os.chdir": (0,), "os.listxattr": (0,)}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def install_audit_hook(read_roots: list[str], write_root: str) -> None:
    """Refuse the events above from now on in this process (irrevocable: hooks cannot be
    removed). Reads are allowed under read_roots and write_root, writes only under write_root."""
    realpath, sep, fspath = os.path.realpath, os.sep, os.fspath
    write = (realpath(write_root),)
    read = tuple(realpath(r) for r in read_roots) + write

    def inside(path, roots) -> bool:
        if isinstance(path, int):  # an fd this process already holds
            return True
        try:
            p = realpath(fspath(path))
        except (TypeError, ValueError):
            return False
        if isinstance(p, bytes):
            p = os.fsdecode(p)
        return any(p == r or p.startswith(r + sep) for r in roots)

    def deny(what: str):
        raise PermissionError(f"sandbox: {what} is not allowed in a tool")

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS)
            if not inside(path, write if writes else read):
                deny(f"{'writing' if writes else 'reading'} {path!r} (outside the tool's directory)")
        elif event in _WRITE_PATHS:
            paths, dir_fds = _WRITE_PATHS[event]
            if any(i < len(args) and args[i] not in (None, -1, -100) for i in dir_fds):  # -1: none given
                deny(f"{event} with dir_fd")
            for i in paths:
                if i < len(args) and args[i] is not None and not inside(args[i], write):
                    deny(f"{event} on {args[i]!r} (outside the tool's directory)")
        elif event in _READ_PATHS:
            for i in _READ_PATHS[event]:
                if i < len(args) and args[i] is not None and not inside(args[i], read):
                    deny(f"{event} on {args[i]!r} (outside the tool's directory)")
        elif event == "import":
            if args[0] in _DENY_IMPORTS:
                deny(f"importing {args[0]}")
        elif event.startswith(_DENY_PREFIXES):
            deny(event)
        elif event == "object.__setattr__" and len(args) > 1 and args[1] in ("__code__", "__closure__"):
            deny(f"setting {args[1]}")

    sys.addaudithook(hook)
