"""The server's process group, read from /proc: which members still live, and killing them all.

TorchServe's Java frontend starts in a session of its own, and its Python workers live in its
process group: stopping a server means no member of that group may outlive it.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _proc_stat(entry: Path) -> tuple[str, int] | None:
    """(state, process group) from /proc/PID/stat; None when it is gone (or there is no /proc)."""
    try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # the name may hold ") "
        return fields[0], int(fields[2])  # fields after the name: state, ppid, pgrp, ...
    except (OSError, IndexError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """The process has not exited (a zombie has); reaps it when it is our own child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = _proc_stat(Path(f"/proc/{pid}"))
    return stat is None or stat[0] != "Z"  # a zombie has exited; no /proc (macOS): signal 0 decides


def live_group_members(pgid: int) -> list[int]:
    """Pids of process group pgid that have not exited. A zombie has exited: only its pid entry is
    left until its parent reaps it (orphaned workers wait on PID 1, which some containers never
    run), so killpg(pgid, 0), which still succeeds on zombies, cannot answer this."""
    proc = Path("/proc")
    if not proc.is_dir():  # macOS: no /proc; signal 0 is the best test there is
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.glob("[0-9]*"):
        stat = _proc_stat(entry)
        if stat is not None and stat[0] != "Z" and stat[1] == pgid:
            members.append(int(entry.name))
    return members


def kill_group(pid: int, timeout_s: float = 15.0) -> None:
    """SIGKILL every member of the group pid leads, and wait until each has really exited
    (SIGKILL is delivered asynchronously)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.waitpid(pid, os.WNOHANG)  # reap the server when it is our own child
        except ChildProcessError:
            pass
        if not live_group_members(pid) or time.monotonic() > deadline:
            return
        time.sleep(0.1)
