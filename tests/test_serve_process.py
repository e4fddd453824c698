"""Stopping a server leaves no process of its group alive (CI caught a worker seen as alive after stop:
killpg(pgid, 0) succeeds on zombies, and SIGKILL takes a moment to land). Real processes, no TorchServe."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from zoo import serve

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process groups from /proc")


def test_kill_group_returns_only_when_every_member_is_gone():
    # A leader with two grandchildren, like TorchServe's java with its python workers.
    script = "import subprocess, time; [subprocess.Popen(['sleep', '60']) for _ in range(2)]; time.sleep(60)"
    leader = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(serve.live_group_members(leader.pid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(serve.live_group_members(leader.pid)) == 3
        serve.kill_group(leader.pid)
        assert serve.live_group_members(leader.pid) == []
    finally:
        try:
            os.killpg(leader.pid, 9)
        except ProcessLookupError:
            pass
        leader.wait()


def test_a_zombie_is_not_a_live_member():
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    deadline = time.monotonic() + 10
    while serve.live_group_members(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        os.killpg(child.pid, 0)  # the unreaped child still answers signal 0 ...
        assert serve.live_group_members(child.pid) == []  # ... but it has exited
    finally:
        child.wait()
