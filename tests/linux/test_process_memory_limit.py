"""process_memory_limit on Linux: each member's RLIMIT_DATA (soft and hard), set between clone
and exec, inherited by everything the member creates; assign() and protect_children() lower
it on the running process. Asserted on what the kernel holds (/proc/<pid>/limits) and on what
the program meets (an allocation over it fails with ENOMEM, one under it succeeds)."""
import json
import os
import resource
import subprocess
import sys
import textwrap

import pytest

import pgjob
from conftest import SRC
from proc_helpers import scaled

pytestmark = pytest.mark.linux

LIMIT = 256 << 20

# A member that reports its own limit, tries two allocations and reports its child's limit.
PROBE = textwrap.dedent("""
    import json, subprocess, sys
    def data_limit(pid="self"):
        with open(f"/proc/{pid}/limits") as f:
            line = next(l for l in f if l.startswith("Max data size"))
        soft, hard = line.split()[3:5]
        return [soft, hard]
    result = {"limit": data_limit()}
    for name, size in (("small", 32 << 20), ("large", int(sys.argv[1]))):
        try:
            block = bytearray(size)
            result[name] = "ok"
            del block
        except MemoryError:
            result[name] = "MemoryError"
    child = subprocess.run([sys.executable, "-c", "import sys; sys.stdout.write(open('/proc/self/limits').read())"],
                           capture_output=True, text=True, check=True)
    line = next(l for l in child.stdout.splitlines() if l.startswith("Max data size"))
    result["child_limit"] = line.split()[3:5]
    print(json.dumps(result))
""")


def _job_or_skip(mechanism, **options):
    try:
        return pgjob.Job(mechanism=mechanism, **options)
    except (pgjob.UnsupportedError, PermissionError) as exc:
        pytest.skip(f"mechanism {mechanism!r} is unavailable here: {exc}")


def _data_limit(pid):
    soft, hard = resource.prlimit(pid, resource.RLIMIT_DATA)
    return soft, hard


@pytest.mark.parametrize("mechanism", [None, "pid_namespace", "pdeathsig", "cgroup"])
def test_every_member_and_its_children_get_the_limit(mechanism):
    before = _data_limit(0)
    with _job_or_skip(mechanism, process_memory_limit=LIMIT) as job:
        if mechanism is None:
            # Not a job-wide limit: it needs no cgroup, so the default mechanism keeps it.
            assert job.mechanism in ("pid_namespace", "pdeathsig")
        out = job.popen([sys.executable, "-c", PROBE, str(2 * LIMIT)], stdout=subprocess.PIPE,
                        text=True).communicate(timeout=scaled(30))[0]
    report = json.loads(out)
    assert report["limit"] == [str(LIMIT), str(LIMIT)]
    assert report["child_limit"] == [str(LIMIT), str(LIMIT)]
    assert report["small"] == "ok" and report["large"] == "MemoryError"
    # The owner itself is not limited by a job it only starts processes in.
    assert _data_limit(0) == before


def test_the_kernel_holds_the_limit_of_a_running_member():
    with _job_or_skip(None, process_memory_limit=LIMIT) as job:
        p = job.popen(["sleep", "100"])
        try:
            assert _data_limit(p.pid) == (LIMIT, LIMIT)
        finally:
            p.kill()
            p.wait()


def test_a_lower_limit_already_in_place_is_kept():
    soft, hard = _data_limit(0)
    lower = 4 << 30
    resource.setrlimit(resource.RLIMIT_DATA, (lower, hard))  # soft only: we can raise it back
    try:
        with _job_or_skip(None, process_memory_limit=8 << 30) as job:
            p = job.popen(["sleep", "100"])
            try:
                # The soft limit stays the lower one; the hard one comes down to the job's.
                assert _data_limit(p.pid) == (lower, 8 << 30)
            finally:
                p.kill()
                p.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def test_no_limit_leaves_members_as_the_owner_is():
    with _job_or_skip(None) as job:
        p = job.popen(["sleep", "100"])
        try:
            assert _data_limit(p.pid) == _data_limit(0)
        finally:
            p.kill()
            p.wait()


def test_mechanism_none_refuses_it():
    with pytest.raises(pgjob.UnsupportedError):
        pgjob.Job(mechanism="none", process_memory_limit=LIMIT)


def test_assign_lowers_the_limit_of_the_running_process():
    job = _job_or_skip("cgroup", process_memory_limit=LIMIT)
    outsider = subprocess.Popen(["sleep", "100"])
    try:
        assert _data_limit(outsider.pid) == _data_limit(0)
        job.assign(outsider)
        assert job.contains(outsider.pid)
        assert _data_limit(outsider.pid) == (LIMIT, LIMIT)
    finally:
        job.close()
        outsider.kill()
        outsider.wait()


def test_assign_of_an_exited_process_is_process_exited_error():
    job = _job_or_skip("cgroup", process_memory_limit=LIMIT)
    try:
        p = subprocess.Popen(["true"])
        p.wait()
        with pytest.raises(pgjob.ProcessExitedError):
            job.assign(p.pid)
    finally:
        job.close()


def test_assign_refused_by_the_kernel_leaves_the_process_where_it_was(monkeypatch):
    # prlimit() of another user's process without CAP_SYS_RESOURCE is EPERM; as root the kernel
    # won't refuse it, so the refusal is injected with the real errno.
    job = _job_or_skip("cgroup", process_memory_limit=LIMIT)
    outsider = subprocess.Popen(["sleep", "100"])
    try:
        with open(f"/proc/{outsider.pid}/cgroup") as f:
            where = f.read()

        def refuse(pid, which, limits=None):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(resource, "prlimit", refuse)
        with pytest.raises(PermissionError):
            job.assign(outsider)
        monkeypatch.undo()
        with open(f"/proc/{outsider.pid}/cgroup") as f:
            assert f.read() == where
        assert not job.contains(outsider.pid)
        assert _data_limit(outsider.pid) == _data_limit(0)
    finally:
        job.close()
        outsider.kill()
        outsider.wait()


PROTECTED_OWNER = textwrap.dedent("""
    import json, subprocess, sys, threading
    sys.path.insert(0, sys.argv[1])
    import pgjob
    job = pgjob.protect_children(process_memory_limit=int(sys.argv[2]), on_unavailable="raise")
    def limit(text):
        line = next(l for l in text.splitlines() if l.startswith("Max data size"))
        return line.split()[3:5]
    own = limit(open("/proc/self/limits").read())
    child = limit(subprocess.run(["cat", "/proc/self/limits"], capture_output=True, text=True).stdout)
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    print(json.dumps({"mechanism": job.mechanism, "own": own, "child": child}))
""")


def test_protect_children_limits_this_process_and_all_it_starts():
    try:
        pgjob.Job(mechanism="cgroup").close()
    except (pgjob.UnsupportedError, PermissionError) as exc:
        pytest.skip(f"no writable cgroup v2 here: {exc}")
    result = subprocess.run([sys.executable, "-c", PROTECTED_OWNER, SRC, str(LIMIT)],
                            capture_output=True, text=True, timeout=scaled(60))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["mechanism"] == "cgroup"
    # As on Windows, where the process in the job has the per-process limit too.
    assert report["own"] == [str(LIMIT), str(LIMIT)]
    assert report["child"] == [str(LIMIT), str(LIMIT)]
