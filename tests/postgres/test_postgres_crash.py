"""The scenario pgjob exists for, against a real PostgreSQL server: a wrapper starts the
postmaster, a session holds LOCK TABLE inside a transaction, the wrapper is SIGKILLed.

With pgjob (the library's Job.popen, protect_children() then plain subprocess, and `pgjob
run`), every process of the cluster must be gone within 5 s and, once reaped, a plain
`pg_ctl start` on the same data directory and port must succeed and answer SELECT 1. The control (plain subprocess) must show the opposite: the postmaster
orphaned, still holding the port and the lock, and the restart refused.
"""
import json
import os
import select
import signal
import subprocess
import time

import pytest

from pg_cluster import (GONE_WITHIN, PYTHON, cgroup2_mount, cgroup_of, cluster,  # noqa: F401
                        delegated_cgroup, pg_bindir, pg_template, pgjob_env, port_taken,
                        python_for_server_user)
from proc_helpers import scaled, wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
OWNER = os.path.join(HERE, "pg_owner.py")
LOCKED_RELATION = "crash_target"


def start_wrapper(cluster, how, cgroup=None):
    """Start the postmaster under a wrapper; return the wrapper's Popen once the server is ready.

    library/cli/plain: the wrapper runs as root (the test's user) and drops to the server
    user only for the postmaster (setpriv execs in place). library-unprivileged: the whole
    wrapper runs as the server user, as a `User=postgres` service would; pgjob then needs an
    unprivileged user namespace for its PID namespace.
    """
    wrapper_log = open(os.path.join(cluster.root, "wrapper.log"), "ab")
    if how == "protect-unprivileged":
        # The whole wrapper as the server user, started inside a cgroup delegated to it (its
        # pid is written to cgroup.procs before it execs Python), as systemd starts a
        # `User=postgres` + `Delegate=yes` service.
        python, reason = python_for_server_user(cluster)
        if python is None:
            pytest.skip(reason)
        owner = [python, OWNER, "--mode", "protect", "--log", cluster.logfile, "--",
                 *cluster.postgres_command(switch_user=False)]
        command = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup,
                   *cluster.as_server_user(owner)]
        stdout = subprocess.PIPE
    elif how == "protect":
        command = [PYTHON, OWNER, "--mode", "protect", "--log", cluster.logfile, "--",
                   *cluster.postgres_command()]
        stdout = subprocess.PIPE
    elif how == "library-unprivileged":
        if not cluster.as_root:
            pytest.skip("the suite runs as the server user already: 'library' is this case")
        python, mechanism = python_for_server_user(cluster)
        if python is None:
            pytest.skip(mechanism)
        if mechanism != "pid_namespace":
            pytest.skip(f"pgjob as {cluster.user} gets mechanism {mechanism!r} here: "
                        "unprivileged user namespaces are refused")
        command = cluster.as_server_user([
            python, OWNER, "--mode", "pgjob", "--log", cluster.logfile, "--",
            *cluster.postgres_command(switch_user=False)])
        stdout = subprocess.PIPE
    elif how == "cli":
        command = [PYTHON, "-m", "pgjob", "run", "-v", "--on-unavailable", "raise", "--",
                   *cluster.postgres_command()]
        stdout = subprocess.DEVNULL
    else:
        command = [PYTHON, OWNER, "--mode", "pgjob" if how == "library" else "plain",
                   "--log", cluster.logfile, "--", *cluster.postgres_command()]
        stdout = subprocess.PIPE
    with wrapper_log:
        # A new session: no terminal signal from the test run reaches the wrapper by accident.
        wrapper = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout,
                                   stderr=wrapper_log, env=pgjob_env(), cwd=cluster.root,
                                   start_new_session=True)
    cluster.wait_ready(owner=wrapper)
    return wrapper


class LockingSession:
    """A psql session that holds ACCESS EXCLUSIVE on a table inside an open transaction."""

    def __init__(self, cluster):
        self.popen = subprocess.Popen(cluster.psql_command(), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      cwd=cluster.root)
        self.popen.stdin.write(f"BEGIN;\nLOCK TABLE {LOCKED_RELATION} IN ACCESS EXCLUSIVE MODE;\n"
                               f"SELECT 'locked by ' || pg_backend_pid();\n".encode())
        self.popen.stdin.flush()
        line = self._read_line(timeout=30)
        assert line.startswith("locked by "), f"psql said {line!r}"

    def _read_line(self, timeout):
        """One line of psql's output, waiting at most `timeout` s (select, not a sleep)."""
        fd = self.popen.stdout.fileno()
        buffer = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"psql printed nothing within {timeout} s: {buffer!r}"
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                assert chunk, f"psql exited ({self.popen.poll()}) before the lock: {buffer!r}"
                buffer += chunk
        return buffer.decode().strip()

    def close(self):
        # The server side may be gone; psql ends when its input does.
        try:
            self.popen.stdin.close()
        except OSError:
            pass
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
        self.popen.stdout.close()
        assert self.popen.poll() is not None


def root_of(pids):
    """The postmaster: the one process of the cluster whose parent is not in it."""
    def parent(pid):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            return None  # exited since the cluster was listed (a short-lived backend)
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    parents = {pid: parent(pid) for pid in pids}
    roots = [pid for pid, ppid in parents.items() if ppid is not None and ppid not in pids]
    assert len(roots) == 1, f"expected one postmaster among {pids}, found {roots}"
    return roots[0]


def lock_holders(cluster):
    code, out, err = cluster.query(
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
        f"WHERE c.relname = '{LOCKED_RELATION}' AND l.mode = 'AccessExclusiveLock' AND l.granted")
    assert code == 0, err
    return int(out)


def prepare_crash(cluster, how, cgroup=None):
    """Server up under the wrapper, table created, lock held: return (wrapper, session, pids)."""
    wrapper = start_wrapper(cluster, how, cgroup)
    code, _, err = cluster.query(f"CREATE TABLE {LOCKED_RELATION} (id int)")
    assert code == 0, err
    session = LockingSession(cluster)
    assert lock_holders(cluster) == 1
    pids = cluster.pids()
    # postmaster, checkpointer, background writer, walwriter, autovacuum launcher,
    # logical replication launcher, and the backend serving the locking session.
    assert len(pids) >= 6, f"expected the whole cluster, found {pids}"
    return wrapper, session, pids


@pytest.mark.parametrize("how", ["library", "cli", "library-unprivileged", "protect",
                                 "protect-unprivileged"])
def test_sigkill_of_wrapper_takes_the_cluster_down_and_restart_succeeds(cluster, request, how):
    cgroup = request.getfixturevalue("delegated_cgroup") if how == "protect-unprivileged" else None
    if how == "protect" and not cluster.as_root:
        pytest.skip("as an ordinary user the wrapper needs a delegated cgroup: "
                    "see protect-unprivileged")
    wrapper, session, pids = prepare_crash(cluster, how, cgroup)
    try:
        if how.startswith(("library", "protect")):
            # The server answered, so the owner has already printed its report line.
            report = json.loads(wrapper.stdout.readline())
            mechanism = report["mechanism"]
            assert mechanism != "none"
            print(f"\n[{how}] mechanism={mechanism}", end="")
        if how.startswith("protect"):
            # protect_children() on Linux: the wrapper moved itself into a job cgroup, and
            # the whole cluster (postmaster and every backend) was started inside it.
            assert mechanism == "cgroup"
            job_cgroup = cgroup_of(wrapper.pid)
            assert job_cgroup not in (None, cgroup_of()), job_cgroup
            if cgroup is not None:
                delegated = "/" + os.path.relpath(cgroup, cgroup2_mount())
                assert job_cgroup.startswith(delegated + "/"), (job_cgroup, delegated)
            where = {pid: cgroup_of(pid) for pid in pids}
            assert all(cg == job_cgroup for cg in where.values() if cg is not None), where
        os.kill(wrapper.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        assert wrapper.wait(10) == -signal.SIGKILL

        gone = wait_until(lambda: not cluster.pids(), scaled(GONE_WITHIN))
        teardown = time.monotonic() - killed_at
        assert gone, (f"cluster processes still running {GONE_WITHIN} s after the wrapper died: "
                      f"{cluster.pids()} (were {pids})")
        print(f"\n[{how}] {len(pids)} cluster processes gone {teardown:.3f} s after SIGKILL "
              f"of the wrapper")
        assert not port_taken(cluster.port)
        # Dead is not reaped: a killed postmaster is a zombie until its new parent (the
        # nearest child subreaper, else PID 1) reaps it, and PostgreSQL's lock-file check
        # takes a zombie's pid for a running postmaster. In a PID namespace pgjob's init
        # reaps at once; after a cgroup kill that is the supervisor's job (systemd does it at
        # once; this container's PID 1 takes up to ~2 s), so wait for it as a restart would.
        reaped = wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids),
                            scaled(15))
        print(f"[{how}] reaped {time.monotonic() - killed_at:.3f} s after SIGKILL")
        assert reaped, [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    finally:
        session.close()
        if wrapper.stdout:
            wrapper.stdout.close()

    restart = cluster.pg_ctl_start()
    assert restart.returncode == 0, f"pg_ctl start failed:\n{restart.stdout}\n{restart.stderr}\n" \
                                    f"{cluster.log_tail()}"
    try:
        assert cluster.query("SELECT 1") == (0, "1", "")
        # The lock died with its backend: the table is there and free.
        code, _, err = cluster.query(f"BEGIN; LOCK TABLE {LOCKED_RELATION} IN ACCESS EXCLUSIVE MODE NOWAIT; COMMIT")
        assert code == 0, err
        print(f"[{how}] plain pg_ctl start on the same data directory and port: OK, SELECT 1 = 1")
    finally:
        stop = cluster.pg_ctl("-m", "fast", "-w", "stop")
        assert stop.returncode == 0, stop.stderr
    assert wait_until(lambda: not cluster.pids(), GONE_WITHIN)


def test_control_plain_subprocess_leaves_an_orphaned_postmaster_and_restart_fails(cluster):
    wrapper, session, pids = prepare_crash(cluster, "plain")
    try:
        postmaster = root_of(pids)
        os.kill(wrapper.pid, signal.SIGKILL)
        assert wrapper.wait(10) == -signal.SIGKILL
        # Give it the same 5 s the guarantee allows: the cluster must still be there.
        wait_until(lambda: not cluster.pids(), GONE_WITHIN)
        orphans = cluster.pids()
        assert postmaster in orphans, f"the control's postmaster died: {orphans}"
        # (Short-lived backends, e.g. an autovacuum worker, may come and go meanwhile.)
        assert len(orphans) >= 6, f"the control cluster lost processes: {pids} -> {orphans}"
        assert port_taken(cluster.port), "the orphaned postmaster should still hold the port"
        assert lock_holders(cluster) == 1, "the orphan's backend should still hold the lock"

        restart = cluster.pg_ctl_start()
        assert restart.returncode != 0, "pg_ctl start succeeded next to an orphaned postmaster"
        reason = [line for line in cluster.log_tail().splitlines() if "FATAL" in line][-1:]
        print(f"\n[control] orphaned postmaster {postmaster} and {len(orphans) - 1} children "
              f"survived; pg_ctl start refused (exit {restart.returncode}): {reason}")
    finally:
        session.close()
        if wrapper.stdout:
            wrapper.stdout.close()
        assert not cluster.kill_everything(), "could not clean up the orphaned cluster"
    assert not port_taken(cluster.port)
