"""Fixtures for the Windows suite: spawn actor processes, read their readiness lines with a
deadline, and make sure every process a test started is gone when it ends."""
import os
import subprocess
import sys
import time

import _winapi
import pytest

from pgjob import _jobobject
from proc_helpers import LineReader

ACTOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "actor.py")
SYNCHRONIZE = 0x00100000
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
PROCESS_TERMINATE = 0x0001
#: The guarantee the tests assert: members are gone this soon after the owner dies.
GONE_WITHIN = 5.0
#: Generous: a Windows python under Wine starts in ~0.1-2 s, more on a loaded machine.
READY_WITHIN = 60.0

WINE_VERSION = _jobobject.WineVersion()


def actor_command(role, *args):
    return [sys.executable, ACTOR, role, *map(str, args)]


def _open(pid, access):
    try:
        return _winapi.OpenProcess(access, False, pid)
    except OSError:
        return None  # no such process (any more)


def alive(pid):
    handle = _open(pid, SYNCHRONIZE)
    if handle is None:
        return False
    try:
        return _winapi.WaitForSingleObject(handle, 0) == _winapi.WAIT_TIMEOUT
    finally:
        _winapi.CloseHandle(handle)


def wait_gone(pids, timeout=GONE_WITHIN):
    """Wait until every pid has exited; return the survivors (empty on success)."""
    deadline = time.monotonic() + timeout
    survivors = []
    for pid in pids:
        handle = _open(pid, SYNCHRONIZE)
        if handle is None:
            continue
        try:
            remaining = max(0, deadline - time.monotonic())
            if _winapi.WaitForSingleObject(handle, int(remaining * 1000)) == _winapi.WAIT_TIMEOUT:
                survivors.append(pid)
        finally:
            _winapi.CloseHandle(handle)
    return survivors


def kill(pid):
    handle = _open(pid, PROCESS_TERMINATE | SYNCHRONIZE)
    if handle is None:
        return
    try:
        _winapi.TerminateProcess(handle, 9)
    except OSError:
        pass  # exited between OpenProcess and TerminateProcess
    finally:
        _winapi.CloseHandle(handle)


class Actor(LineReader):
    """A running actor.py process with a deadline-bounded line reader on its stdout."""

    def __init__(self, popen):
        super().__init__(popen, READY_WITHIN, what="actor")

    def send(self, text):
        self.popen.stdin.write(text + "\n")
        self.popen.stdin.flush()


class Reaper:
    """Remembers every pid a test started; kills leftovers and asserts they are gone."""

    def __init__(self):
        self.pids = set()
        self.popens = []

    def track(self, *pids):
        self.pids.update(p for p in pids if p)

    def start(self, command, spawn=subprocess.Popen, **kwargs):
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("text", True)
        popen = spawn(command, **kwargs)
        self.popens.append(popen)
        self.track(popen.pid)
        return Actor(popen)

    def finish(self):
        for pid in self.pids:
            kill(pid)
        survivors = wait_gone(self.pids, timeout=10)
        for popen in self.popens:
            for stream in (popen.stdin, popen.stdout, popen.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                survivors.append(popen.pid)
        assert not survivors, f"test processes still running after cleanup: {survivors}"


@pytest.fixture
def reaper():
    r = Reaper()
    try:
        yield r
    finally:
        r.finish()


# `job`: pgjob's pytest plugin's fixture (a kill-on-close Job whose members must be gone
# after the test), which tests/conftest.py loads.


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
