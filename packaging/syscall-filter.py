#!/usr/bin/python3
"""Runs a command under the seccomp filter a systemd unit file describes, without systemd.

    syscall-filter.py UNIT -- COMMAND [ARGS...]

It reads SystemCallFilter= (allow lists and ~deny lists, @groups expanded by
`systemd-analyze syscall-filter`), SystemCallErrorNumber=, SystemCallArchitectures=native,
RestrictAddressFamilies= and MemoryDenyWriteExecute= from UNIT and installs the same rules as one
classic BPF program (x86_64 only), then execs COMMAND. tests/package.rs runs the packaged
bootfarm under it, to measure that the unit's hardening leaves io_uring working where no systemd
runs as PID 1 (containers, CI). A syscall the filter refuses answers the configured errno, as
under systemd; COMMAND's own checks then show whether it still works.
"""
import ctypes
import errno
import os
import re
import struct
import subprocess
import sys

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
OFF_NR, OFF_ARCH, OFF_ARG0, OFF_ARG2 = 0, 4, 16, 32
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
FAMILIES = {"AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}


def syscall_numbers():
    path = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
    try:
        text = open(path).read()
    except OSError as e:
        sys.exit(f"syscall-filter: cannot read {path} ({e}): install linux-libc-dev")
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+) (\d+)", text)}


def expand(name, seen=None):
    """The syscall names of a @group (recursively) or the name itself."""
    if not name.startswith("@"):
        return {name}
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"syscall-filter: systemd-analyze syscall-filter {name} failed: {out.stderr.strip()}")
    names = set()
    for line in out.stdout.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            names |= expand(line, seen)
    return names


def unit_settings(path):
    settings = {}
    for line in open(path):
        line = line.strip()
        if "=" in line and not line.startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            settings.setdefault(k.strip(), []).append(v.strip())
    return settings


def build_filter(settings, numbers):
    allow, deny = None, set()
    for value in settings.get("SystemCallFilter", []):
        if value.startswith("~"):
            names = set().union(*(expand(n) for n in value[1:].split()))
            if allow is None:
                deny |= names
            else:
                allow -= names
        else:
            names = set().union(*(expand(n) for n in value.split()))
            allow = names if allow is None else allow | names
    err = settings.get("SystemCallErrorNumber", [None])[-1]
    refuse = RET_KILL_PROCESS if err is None else RET_ERRNO | getattr(errno, err)
    families = None
    for value in settings.get("RestrictAddressFamilies", []):
        families = {FAMILIES[f] for f in value.split()}
    mdwe = settings.get("MemoryDenyWriteExecute", ["no"])[-1] in ("yes", "true", "1")

    prog = [(LD_W_ABS, 0, 0, OFF_ARCH), (JEQ_K, 1, 0, AUDIT_ARCH_X86_64), (RET_K, 0, 0, RET_KILL_PROCESS)]
    prog += [(LD_W_ABS, 0, 0, OFF_NR), (JGE_K, 0, 1, X32_SYSCALL_BIT), (RET_K, 0, 0, refuse)]

    def allowed(name):
        return name in numbers and (allow is None or name in allow) and name not in deny

    # Argument checks first: each block starts by comparing nr and skips itself otherwise.
    def block(name, body):
        if name in numbers and allowed(name):
            prog.append((JEQ_K, 0, len(body), numbers[name]))
            prog.extend(body)

    if families is not None:
        fams = sorted(families)
        body = [(LD_W_ABS, 0, 0, OFF_ARG0)]
        for i, f in enumerate(fams):
            body.append((JEQ_K, len(fams) - i, 0, f))
        body += [(RET_K, 0, 0, RET_ERRNO | errno.EAFNOSUPPORT), (RET_K, 0, 0, RET_ALLOW)]
        # The JEQs above jump to the ALLOW at the end: from JEQ i, len(fams)-i steps lands on it.
        block("socket", body)
    if mdwe:
        both = PROT_WRITE | PROT_EXEC
        # mmap with write and exec at once: refused (A & both == both).
        block("mmap", [(LD_W_ABS, 0, 0, OFF_ARG2), (0x54, 0, 0, both), (JEQ_K, 0, 1, both),
                       (RET_K, 0, 0, RET_ERRNO | errno.EPERM), (RET_K, 0, 0, RET_ALLOW)])
        for name in ("mprotect", "pkey_mprotect"):
            block(name, [(LD_W_ABS, 0, 0, OFF_ARG2), (JSET_K, 0, 1, PROT_EXEC),
                         (RET_K, 0, 0, RET_ERRNO | errno.EPERM), (RET_K, 0, 0, RET_ALLOW)])
        block("shmat", [(LD_W_ABS, 0, 0, OFF_ARG2), (JSET_K, 0, 1, SHM_EXEC),
                        (RET_K, 0, 0, RET_ERRNO | errno.EPERM), (RET_K, 0, 0, RET_ALLOW)])
        prog.append((LD_W_ABS, 0, 0, OFF_NR))  # the blocks loaded an argument
    else:
        prog.append((LD_W_ABS, 0, 0, OFF_NR))
    if allow is None:
        # A deny list alone: those refused, everything else allowed.
        for name in sorted(deny & numbers.keys(), key=numbers.get):
            prog += [(JEQ_K, 0, 1, numbers[name]), (RET_K, 0, 0, refuse)]
        prog.append((RET_K, 0, 0, RET_ALLOW))
    else:
        for name, nr in sorted(numbers.items(), key=lambda x: x[1]):
            if allowed(name):
                prog += [(JEQ_K, 0, 1, nr), (RET_K, 0, 0, RET_ALLOW)]
        prog.append((RET_K, 0, 0, refuse))
    return prog, (f"{len(allow)} syscalls allowed" if allow is not None else f"{len(deny)} syscalls refused")


def install(prog):
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"syscall-filter: PR_SET_NO_NEW_PRIVS: {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit(f"syscall-filter: PR_SET_SECCOMP: {os.strerror(ctypes.get_errno())}")


def main():
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    if os.uname().machine != "x86_64":
        sys.exit("syscall-filter: x86_64 only")
    prog, n = build_filter(unit_settings(sys.argv[1]), syscall_numbers())
    if len(prog) > 4096:
        sys.exit(f"syscall-filter: {len(prog)} instructions, over the kernel's 4096")
    print(f"syscall-filter: {n}, {len(prog)} BPF instructions, from {sys.argv[1]}", file=sys.stderr)
    install(prog)
    os.execvp(sys.argv[3], sys.argv[3:])


if __name__ == "__main__":
    main()
