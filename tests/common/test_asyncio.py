"""pgjob's asyncio API on each OS's default event loop (Linux: the selector loop and asyncio's
child watching; Windows: the Proactor loop, here under Wine): job.create_subprocess_exec and
_shell, wait_async, events_async, `async with`, cancellation, and 1,000 concurrent spawns
without a leaked descriptor or handle. Assertions read what the OS has: membership by
job.contains() (IsProcessInJob on Windows, the pid namespace or cgroup on Linux), which spawn
path the child took, the process's own descriptor table or handle count."""
import asyncio
import os
import sys
import time

import pytest

import pgjob
from proc_helpers import scaled

WINDOWS = sys.platform == "win32"
PIPE = asyncio.subprocess.PIPE
PY = sys.executable
SLEEP = [PY, "-c", "import time; time.sleep(60)"]
# A member that starts a grandchild (1 s) and exits at once: the job is not empty until the
# grandchild is gone, and the job holds no pidfd or handle of its own for it.
LEAVES_A_GRANDCHILD = [PY, "-c", "import subprocess, sys; subprocess.Popen([sys.executable, "
                       "'-c', 'import time; time.sleep(1)'])"]
# The cheapest program for the 1,000-process test.
TRIVIAL = ([os.path.join(os.environ.get("SystemRoot", r"C:\windows"), "system32", "hostname.exe")]
           if WINDOWS else ["true"])


def run(coroutine):
    """asyncio.run on the OS's default loop (the Proactor on Windows since 3.8)."""
    return asyncio.run(coroutine)


def open_handles():
    """This process's descriptors (Linux) or its handle count (Windows)."""
    if WINDOWS:
        import ctypes
        from ctypes import wintypes
        count = wintypes.DWORD()
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        assert kernel32.GetProcessHandleCount(kernel32.GetCurrentProcess(), ctypes.byref(count))
        return count.value
    return len(os.listdir("/proc/self/fd"))


def spawn_path(process):
    """How pgjob started an asyncio Process's child (its Popen's spawn_path)."""
    return process._transport._proc.spawn_path


@pytest.fixture(params=["default"] + ([] if WINDOWS else ["pid_namespace", "cgroup", "pdeathsig"]))
def mechanism_job(request):
    """A kill-on-close Job of each mechanism this system offers (Linux: all three)."""
    options = {} if request.param == "default" else {"mechanism": request.param,
                                                      "on_unavailable": "raise"}
    try:
        job = pgjob.Job(**options)
    except pgjob.UnsupportedError as exc:
        pytest.skip(f"mechanism {request.param} is not available here: {exc}")
    with job:
        yield job


# -- create_subprocess_exec / _shell ----------------------------------------------------------


def test_exec_streams_and_membership(mechanism_job):
    job = mechanism_job

    async def main():
        proc = await job.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.readline().upper()); "
            "sys.stdout.flush(); sys.stderr.write('err'); sys.exit(sys.stdin.read() == 'end')",
            stdin=PIPE, stdout=PIPE, stderr=PIPE)
        assert isinstance(proc, asyncio.subprocess.Process)
        assert job.contains(proc.pid)  # blocked on its stdin: a member while it runs
        assert spawn_path(proc) not in (None, "plain")
        proc.stdin.write(b"hello\n")
        await proc.stdin.drain()
        assert await proc.stdout.readline() == b"HELLO\n"
        out, err = await proc.communicate(b"end")
        return proc.returncode, out, err

    assert run(main()) == (1, b"", b"err")


def test_shell_and_signals(job):
    async def main():
        proc = await job.create_subprocess_shell("echo shell-ok", stdout=PIPE)
        assert (await proc.communicate())[0].strip() == b"shell-ok"
        assert proc.returncode == 0
        codes = []
        for stop in ("terminate", "kill"):
            proc = await job.create_subprocess_exec(*SLEEP)
            assert job.contains(proc.pid)
            getattr(proc, stop)()
            codes.append(await asyncio.wait_for(proc.wait(), scaled(10)))
        return codes

    codes = run(main())
    if WINDOWS:
        assert codes == [1, 1]  # TerminateProcess(handle, 1) for both, as asyncio does
    else:
        import signal
        assert codes == [-signal.SIGTERM, -signal.SIGKILL]


def test_member_from_its_first_instruction(job):
    """The child reports, as its first Python statement, whether the OS has it in the job."""
    probe = ("import pgjob, sys; sys.stdout.write(str(pgjob.in_job()))" if WINDOWS else
             "import os; print(os.readlink('/proc/self/ns/pid'), open('/proc/self/cgroup').read())")

    async def main():
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        proc = await job.create_subprocess_exec(PY, "-c", probe, stdout=PIPE, env=env)
        return (await proc.communicate())[0].decode()

    seen = run(main())
    if WINDOWS:
        assert seen == "True"
    elif job.mechanism == "pid_namespace":
        assert seen.split()[0] != os.readlink("/proc/self/ns/pid")
    elif job.mechanism == "cgroup":
        assert seen.split(maxsplit=1)[1] != open("/proc/self/cgroup").read()


def test_stdlib_create_subprocess_exec_is_unchanged(job):
    """After pgjob's hook is installed, asyncio's own call starts an ordinary child."""
    async def main():
        mine = await job.create_subprocess_exec(PY, "-c", "pass")
        await mine.wait()
        theirs = await asyncio.create_subprocess_exec(*SLEEP)
        try:
            return job.contains(theirs.pid), type(theirs._transport._proc).__module__
        finally:
            theirs.kill()
            await theirs.wait()

    contained, module = run(main())
    assert not contained
    assert not module.startswith("pgjob")


def test_bad_program_and_closed_job_raise_and_leak_nothing():
    async def main():
        job = pgjob.Job()
        before = open_handles()
        with pytest.raises(FileNotFoundError):
            await job.create_subprocess_exec(os.path.join(os.getcwd(), "no-such-program"))
        with pytest.raises(TypeError):
            await job.create_subprocess_exec(PY, "-c", "pass", no_such_argument=1)
        # (Linux: the failed child was a member until the job notes its exit; waiting does.)
        assert await job.wait_async(timeout=scaled(10))
        assert open_handles() == before
        proc = await job.create_subprocess_exec(PY, "-c", "pass")  # the job still works
        assert await proc.wait() == 0
        job.close()
        with pytest.raises(pgjob.JobClosedError):
            await job.create_subprocess_exec(PY, "-c", "pass")
        with pytest.raises(pgjob.JobClosedError):
            await job.wait_async()
        with pytest.raises(pgjob.JobClosedError):
            job.events_async()
        with pytest.raises(TypeError):
            await pgjob.Job().wait_async(timeout="soon")

    run(main())


@pytest.mark.skipif(not WINDOWS, reason="the selector loop is Linux's default and supported")
def test_a_loop_without_pgjob_support_is_refused_before_anything_starts(job):
    async def main():
        with pytest.raises(pgjob.UnsupportedError, match="Proactor"):
            await job.create_subprocess_exec(*SLEEP)
        assert job.pids() == []

    loop = asyncio.SelectorEventLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


# -- wait_async ------------------------------------------------------------------------------


def test_wait_async_waits_for_what_members_left_behind(mechanism_job):
    job = mechanism_job

    async def main():
        proc = await job.create_subprocess_exec(*LEAVES_A_GRANDCHILD)
        await proc.wait()
        started = time.monotonic()
        assert await job.wait_async(timeout=scaled(20))
        return time.monotonic() - started

    waited = run(main())
    if job.mechanism != "pdeathsig":  # it loses sight of a reaped member's children
        assert waited >= 0.3, waited
    # Woken by the grandchild's exit, not by the timeout (after which the job is empty too).
    assert waited < scaled(10), waited
    assert job.pids() == []


def test_wait_async_timeout_and_many_waiters(job):
    async def main():
        proc = await job.create_subprocess_exec(*SLEEP)
        started = time.monotonic()
        results = await asyncio.gather(*(job.wait_async(timeout=0.3) for _ in range(20)))
        elapsed = time.monotonic() - started
        assert job.contains(proc.pid)
        proc.kill()
        done = await asyncio.gather(*(job.wait_async(timeout=scaled(10)) for _ in range(20)))
        return results, elapsed, done

    results, elapsed, done = run(main())
    assert results == [False] * 20 and done == [True] * 20
    assert 0.25 <= elapsed < scaled(5)


def test_cancelled_waits_leave_the_job_intact_and_leak_nothing(job):
    async def main():
        proc = await job.create_subprocess_exec(*SLEEP)
        async for event in job.events_async():  # its NEW_PROCESS: nothing else is coming
            assert event.kind is pgjob.EventKind.NEW_PROCESS
            break
        before = open_handles()
        for _ in range(5):
            task = asyncio.ensure_future(job.wait_async())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            events = job.events_async()
            task = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await events.aclose()
        await asyncio.sleep(0.3)  # Windows: a cancelled port read ends within 0.25 s
        leaked = open_handles() - before
        assert not job.closed and job.contains(proc.pid)
        proc.kill()
        assert await job.wait_async(timeout=scaled(10))
        return leaked

    assert run(main()) == 0


def test_wait_async_returns_false_when_the_job_is_closed_meanwhile():
    async def main():
        job = pgjob.Job()
        await job.create_subprocess_exec(*SLEEP)
        waiter = asyncio.ensure_future(job.wait_async())
        await asyncio.sleep(0.1)
        job.close()  # kill_on_close: the member dies, or the wait sees the close first
        return await asyncio.wait_for(waiter, scaled(10))

    assert run(main()) in (True, False)


# -- events_async ----------------------------------------------------------------------------


def test_events_async_yields_what_events_yields(mechanism_job):
    job = mechanism_job

    async def main():
        proc = await job.create_subprocess_exec(PY, "-c", "import time; time.sleep(0.2)")
        kinds = []
        async for event in job.events_async(timeout=scaled(10)):
            if event.pid in (None, proc.pid):
                kinds.append(event.kind)
            if event.kind is pgjob.EventKind.ACTIVE_PROCESS_ZERO:
                break
        await proc.wait()
        return proc.pid, kinds

    pid, kinds = run(main())
    assert kinds[0] is pgjob.EventKind.NEW_PROCESS
    assert pgjob.EventKind.EXIT_PROCESS in kinds or pgjob.EventKind.ABNORMAL_EXIT_PROCESS in kinds
    assert kinds[-1] is pgjob.EventKind.ACTIVE_PROCESS_ZERO


def test_events_async_timeout_and_close_end_the_iteration(job):
    async def main():
        started = time.monotonic()
        async for event in job.events_async(timeout=0.3):
            pass
        elapsed = time.monotonic() - started
        other = pgjob.Job()

        async def read_all():
            return [e async for e in other.events_async()]

        reader = asyncio.ensure_future(read_all())
        await asyncio.sleep(0.1)
        other.close()
        return elapsed, await asyncio.wait_for(reader, scaled(10))

    elapsed, events = run(main())
    assert 0.25 <= elapsed < scaled(5)
    assert events == []


# -- async with, and 1,000 at once -----------------------------------------------------------


def test_async_with_closes_and_kills_the_members():
    async def main():
        async with pgjob.Job() as job:
            proc = await job.create_subprocess_exec(*SLEEP)
            assert job.contains(proc.pid)
        assert job.closed
        return await asyncio.wait_for(proc.wait(), scaled(10))

    assert run(main()) != 0


def test_a_thousand_concurrent_spawns_leak_nothing(job, caplog):
    count = 1000

    async def main():
        before = open_handles()
        procs = await asyncio.gather(*(
            job.create_subprocess_exec(*TRIVIAL, stdout=asyncio.subprocess.DEVNULL)
            for _ in range(count)))
        codes = await asyncio.gather(*(p.wait() for p in procs))
        assert await job.wait_async(timeout=scaled(60))
        pids = {p.pid for p in procs}
        del procs
        import gc
        gc.collect()
        await asyncio.sleep(0.1)
        return codes, pids, open_handles() - before

    with caplog.at_level("DEBUG", logger="pgjob"):
        codes, pids, leaked = run(main())
    assert codes == [0] * count
    # pgjob's own record of each spawn: the pid, in the job, by which path.
    spawned = {}
    for record in caplog.records:
        if record.msg.startswith("spawned pid"):
            spawned[record.args[0]] = record.args[1]
    assert set(spawned) == pids
    assert "plain" not in spawned.values() and job.mechanism not in spawned.values()
    assert leaked == 0


def test_an_asyncio_whose_transport_pgjob_does_not_know_is_refused(monkeypatch, job):
    """A future CPython whose subprocess transport starts its child differently: pgjob says
    so rather than run a copy of code that is no longer asyncio's."""
    from pgjob import _asyncio

    def _start(self, args, shell, stdin, stdout, stderr, bufsize, **kwargs):
        raise AssertionError("never called: refused before")

    monkeypatch.setattr(_asyncio._transport_class(), "_start", _start)

    async def main():
        with pytest.raises(pgjob.UnsupportedError, match="_start of this Python"):
            await job.create_subprocess_exec(*SLEEP)

    run(main())
    assert job.pids() == []


def test_mechanism_none_starts_and_waits_without_a_kernel_object():
    """mechanism "none" (what a Job falls back to where nothing is available): the same
    calls work, with nothing to contain the tree; wait_async waits for the children it
    started (off the loop, in the default executor), and there are no events."""
    async def main():
        async with pgjob.Job(mechanism="none") as job:
            proc = await job.create_subprocess_exec(PY, "-c", "print('plain')", stdout=PIPE)
            assert spawn_path(proc) == "plain"
            out, _ = await proc.communicate()
            assert await job.wait_async(timeout=scaled(10))
            events = [e async for e in job.events_async(timeout=0.3)]
            return out.strip(), events

    assert run(main()) == (b"plain", [])
