"""This machine, as launchers, tests and benchmarks need it: free loopback ports, CPU
pinning for child processes, and the Linux /proc readers (process trees, CPU time, memory,
descriptors, threads). Standard library only."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """Processes started inside inherit ``cpus``. Only the calling thread's affinity changes
    (a child inherits it at fork) and it is restored after; no preexec_fn, which is unsafe
    once a process has threads, as any process that has used gRPC has."""
    if not cpus:
        yield
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the command name (which may itself hold spaces or ')')."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _processes() -> dict[int, list[str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out[int(entry)] = _stat_fields(entry)
            except OSError:  # exited meanwhile
                continue
    return out


def _tree(procs: dict[int, list[str]], root: int) -> list[int]:
    parents = {pid: int(f[1]) for pid, f in procs.items()}
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(c for c, parent in parents.items() if parent == pid)
    return found


def descendants(root: int) -> list[int]:
    """``root`` and every living process below it."""
    return _tree(_processes(), root)


def group_members(pgid: int) -> list[int]:
    """Living processes (zombies excluded) of process group ``pgid``."""
    return [pid for pid, f in _processes().items() if int(f[2]) == pgid and f[0] != "Z"]


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and all its living descendants."""
    procs = _processes()
    tick = os.sysconf("SC_CLK_TCK")
    return sum(
        (int(procs[pid][11]) + int(procs[pid][12])) / tick
        for pid in _tree(procs, root)
        if pid in procs
    )


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024.0


def return_large_allocations(threshold: int = 128 * 1024) -> bool:
    """Make glibc serve allocations above ``threshold`` bytes with mmap, so freeing them
    gives the memory back to the system. Its default threshold grows after large frees, and
    the big image buffers a decode makes then stay in per-thread arenas: with several decode
    threads, memory freed by one decode is not reused by the next and the process keeps
    the sum of their peaks. False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
