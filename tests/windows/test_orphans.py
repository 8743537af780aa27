"""The PostgreSQL patch's crash test and its variants: when the owner dies, every member dies."""
import os
import socket
import tempfile

import _winapi
import pytest

from conftest import actor_command, alive, free_port, wait_gone

CREATE_SUSPENDED = 0x4


def start_owner(reaper, *owner_args):
    owner = reaper.start(actor_command("owner", *owner_args))
    ready = owner.read_json()
    reaper.track(*ready["members"])
    return owner, ready


def die(owner, how):
    if how == "self":
        owner.send("die")  # TerminateProcess on itself
    else:
        owner.popen.kill()  # TerminateProcess from outside, like taskkill /F
    owner.popen.wait(30)


@pytest.mark.parametrize("how", ["self", "outside"])
def test_owner_crash_kills_tree_and_restart_succeeds(reaper, how, tmp_path):
    port = free_port()
    lock_file = str(tmp_path / "held.lock")
    owner, ready = start_owner(reaper, "--mode", "job", "--child", "holder",
                               "--port", port, "--file", lock_file)
    child, grandchild = ready["members"]
    assert ready["mechanism"] == "job_object"
    assert alive(child) and alive(grandchild)
    # While the tree lives, the resources really are taken (else "restart succeeds" proves nothing).
    with pytest.raises(OSError):
        socket.create_server(("127.0.0.1", port))
    with pytest.raises(OSError):
        _winapi.CreateFile(lock_file, _winapi.GENERIC_WRITE, 0, 0, _winapi.OPEN_EXISTING, 0, 0)

    die(owner, how)

    assert wait_gone([child, grandchild]) == []
    # "Restart succeeds": a new owner can take the port and the exclusive file.
    socket.create_server(("127.0.0.1", port)).close()
    handle = _winapi.CreateFile(lock_file, _winapi.GENERIC_WRITE, 0, 0, _winapi.OPEN_EXISTING, 0, 0)
    _winapi.CloseHandle(handle)


def test_protect_children_plain_subprocess_tree_dies_with_owner(reaper):
    owner, ready = start_owner(reaper, "--mode", "protect", "--child", "tree")
    assert ready["mechanism"] == "job_object"
    assert ready["in_job"] == [True, True]
    die(owner, "outside")
    assert wait_gone(ready["members"]) == []


@pytest.mark.parametrize("how", ["self", "outside"])
def test_protect_children_in_an_asyncio_program_everything_dies_with_owner(reaper, how):
    """protect_children() called from a running Proactor loop, then asyncio.to_thread and
    both create_subprocess_exec calls: no survivor when the owner is killed."""
    owner, ready = start_owner(reaper, "--mode", "asyncio")
    assert ready["mechanism"] == "job_object"
    assert len(ready["members"]) == 3 and ready["in_job"] == [True, True, True]
    assert all(alive(m) for m in ready["members"])
    die(owner, how)
    assert wait_gone(ready["members"]) == []


def test_suspended_child_never_resumed_dies_with_owner(reaper):
    owner, ready = start_owner(reaper, "--mode", "job", "--child", "sleeper",
                               "--creationflags", hex(CREATE_SUSPENDED))
    (child,) = ready["members"]
    assert alive(child)
    die(owner, "outside")
    assert wait_gone([child]) == []


def test_control_without_kill_on_close_the_child_outlives_its_owner(reaper):
    """The control case: the same scenario without KILL_ON_JOB_CLOSE leaves orphans,
    so the tests above would fail if the job did nothing."""
    owner, ready = start_owner(reaper, "--mode", "job", "--child", "tree", "--no-kill-on-close")
    die(owner, "outside")
    assert wait_gone(ready["members"], timeout=2.0) == ready["members"]
    assert all(alive(pid) for pid in ready["members"])
    # reaper kills them


def test_leaving_with_block_kills_live_members(reaper):
    import pgjob
    with pgjob.Job() as job:
        actor = reaper.start(actor_command("tree"), spawn=job.popen)
        ready = actor.read_json()
        reaper.track(ready["grandchild"])
        members = [ready["pid"], ready["grandchild"]]
        assert sorted(job.pids()) == sorted(members)
    assert wait_gone(members) == []
    assert actor.popen.wait(5) == 1  # the exit code close() terminates with


def test_leaving_with_block_after_members_exited_is_quiet(caplog):
    import logging
    import subprocess
    import sys
    import pgjob
    caplog.set_level(logging.DEBUG, logger="pgjob")
    with pgjob.Job() as job:
        p = job.popen([sys.executable, "-c", "pass"])
        assert p.wait(60) == 0
        assert job.wait(10) is True
    assert job.closed
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
