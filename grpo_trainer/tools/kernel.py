"""Kernel-enforced guards for a tool child, installed by the child on itself before it runs tool
code: Landlock (file access and signals) and a seccomp-bpf filter (sockets, new processes,
signals to other processes, namespace and tracing calls). Both need no privileges (only
no_new_privs, set here) and are called through ctypes, so no extra package is needed. Both are
irrevocable for the process and everything it could start.

Each function returns what it achieved (0 / False when the kernel or architecture lacks it) and
never raises for a missing feature: the caller reports which layers are in effect, and the
Python-level audit hook (guards.py) stays on regardless. Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# Landlock syscalls have one number on every architecture (added after the tables were unified).
_LL_CREATE, _LL_ADD_RULE, _LL_RESTRICT = 444, 445, 446
_LL_VERSION = 1
_LL_RULE_PATH_BENEATH = 1
# Filesystem rights by bit (ABI 1 has bits 0-12; REFER is ABI 2, TRUNCATE 3, IOCTL_DEV 5).
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
_FS_FILE_ONLY = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14) | (1 << 15)  # valid on a file
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


def _no_new_privs() -> bool:
    return _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0


def landlock_abi() -> int:
    abi = _libc.syscall(_LL_CREATE, None, 0, _LL_VERSION)
    return abi if abi > 0 else 0


def apply_landlock(read_paths: list[str], write_paths: list[str]) -> int:
    """Allow reading (and listing) only `read_paths` and everything only in `write_paths`;
    from ABI 4 no TCP bind/connect, from ABI 6 no signals to processes outside this domain (the
    trainer) and no abstract unix sockets. Returns the ABI enforced, 0 when unavailable."""
    abi = landlock_abi()
    if abi == 0:
        return 0
    fs = (1 << 13) - 1
    fs |= (1 << 13) if abi >= 2 else 0  # REFER
    fs |= (1 << 14) if abi >= 3 else 0  # TRUNCATE
    fs |= (1 << 15) if abi >= 5 else 0  # IOCTL_DEV
    fields = [fs]
    if abi >= 4:
        fields.append(0b11)  # NET_BIND_TCP | NET_CONNECT_TCP, with no rule allowing any port
    if abi >= 6:
        fields.append(0b11)  # SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    attr = ctypes.create_string_buffer(struct.pack(f"={len(fields)}Q", *fields))
    ruleset = _libc.syscall(_LL_CREATE, attr, len(attr.raw), 0)
    if ruleset < 0:
        return 0
    try:
        for paths, access in ((read_paths, FS_READ), (write_paths, fs)):
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except OSError:
                    continue  # a sys.path entry that does not exist
                try:
                    allowed = access & fs if os.path.isdir(path) else access & fs & _FS_FILE_ONLY
                    rule = ctypes.create_string_buffer(struct.pack("=Qi", allowed, fd))
                    if _libc.syscall(_LL_ADD_RULE, ruleset, _LL_RULE_PATH_BENEATH, rule, 0) < 0:
                        raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
                finally:
                    os.close(fd)
        if not _no_new_privs() or _libc.syscall(_LL_RESTRICT, ruleset, 0) < 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


# --- seccomp ---------------------------------------------------------------------------------

# Denied with EPERM: sockets, process creation and program execution, signals (the child has no
# business signalling anything: the parent does all killing), tracing and other processes'
# memory, io_uring (its operations bypass seccomp), namespaces and mounts, BPF, keyrings, and
# prctl (which would clear the die-with-parent signal and leave a sleeping orphan).
_DENY = (
    "socket socketpair connect bind listen accept accept4 fork vfork execve execveat kill tkill "
    "tgkill rt_sigqueueinfo rt_tgsigqueueinfo pidfd_send_signal pidfd_open ptrace process_vm_readv "
    "process_vm_writev io_uring_setup io_uring_enter io_uring_register bpf perf_event_open "
    "userfaultfd keyctl add_key request_key unshare setns mount pivot_root chroot open_tree "
    "move_mount fsopen fsmount mount_setattr prctl"
).split()
# From asm/unistd_64.h and asm-generic/unistd.h (aarch64 has no fork/vfork).
_X86_64 = dict(socket=41, socketpair=53, connect=42, bind=49, listen=50, accept=43, accept4=288, fork=57,
               vfork=58, execve=59, execveat=322, kill=62, tkill=200, tgkill=234, rt_sigqueueinfo=129,
               rt_tgsigqueueinfo=297, pidfd_send_signal=424, pidfd_open=434, ptrace=101,
               process_vm_readv=310, process_vm_writev=311, io_uring_setup=425, io_uring_enter=426,
               io_uring_register=427, bpf=321, perf_event_open=298, userfaultfd=323, keyctl=250,
               add_key=248, request_key=249, unshare=272, setns=308, mount=165, pivot_root=155,
               chroot=161, prctl=157, open_tree=428, move_mount=429, fsopen=430, fsmount=432, mount_setattr=442,
               clone=56, clone3=435)
_AARCH64 = dict(socket=198, socketpair=199, connect=203, bind=200, listen=201, accept=202, accept4=242,
                execve=221, execveat=281, kill=129, tkill=130, tgkill=131, rt_sigqueueinfo=138,
                rt_tgsigqueueinfo=240, pidfd_send_signal=424, pidfd_open=434, ptrace=117,
                process_vm_readv=270, process_vm_writev=271, io_uring_setup=425, io_uring_enter=426,
                io_uring_register=427, bpf=280, perf_event_open=241, userfaultfd=282, keyctl=219,
                add_key=217, request_key=218, unshare=97, setns=268, mount=40, pivot_root=41, chroot=51, prctl=167,
                open_tree=428, move_mount=429, fsopen=430, fsmount=432, mount_setattr=442, clone=220,
                clone3=435)
_ARCHES = {"x86_64": (0xC000003E, _X86_64), "aarch64": (0xC00000B7, _AARCH64)}

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000


def _program(audit_arch: int, numbers: dict[str, int], x32: bool) -> list[tuple[int, int, int, int]]:
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to relative offsets.
    ins: list[tuple[int, str | None, str | None, int]] = [
        (_LD_W_ABS, None, None, 4),  # seccomp_data.arch
        (_JEQ, None, "kill", audit_arch),  # another ABI (i386 on x86_64): kill
        (_LD_W_ABS, None, None, 0),  # seccomp_data.nr
    ]
    if x32:
        ins.append((_JGE, "eperm", None, _X32_BIT))
    ins += [(_JEQ, "eperm", None, numbers[name]) for name in _DENY if name in numbers]
    ins += [
        (_JEQ, "enosys", None, numbers["clone3"]),  # flags sit behind a pointer: libc falls back to clone
        (_JEQ, "clone", None, numbers["clone"]),
        (_RET, None, None, _RET_ALLOW),
    ]
    labels = {"clone": len(ins)}
    ins += [(_LD_W_ABS, None, None, 16), (_JSET, "allow", "eperm", _CLONE_THREAD)]  # args[0] low word
    for name, k in (("allow", _RET_ALLOW), ("eperm", _RET_ERRNO | errno.EPERM),
                    ("enosys", _RET_ERRNO | errno.ENOSYS), ("kill", _RET_KILL_PROCESS)):
        labels[name] = len(ins)
        ins.append((_RET, None, None, k))
    out = []
    for i, (code, jt, jf, k) in enumerate(ins):
        off = [labels[j] - i - 1 if j else 0 for j in (jt, jf)]
        assert all(0 <= o < 256 for o in off)
        out.append((code, off[0], off[1], k))
    return out


def apply_seccomp() -> bool:
    """Install the filter (threads stay allowed: clone with CLONE_THREAD). False when this
    architecture has no table here or the kernel refuses."""
    arch = _ARCHES.get(os.uname().machine)
    if arch is None:
        return False
    prog = _program(arch[0], arch[1], x32=os.uname().machine == "x86_64")
    filt = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *ins) for ins in prog))

    class _FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _FProg(len(prog), ctypes.addressof(filt))
    if not _no_new_privs():
        return False
    return _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0
