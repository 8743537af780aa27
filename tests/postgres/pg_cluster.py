"""A throwaway PostgreSQL cluster for the crash test, and its pytest fixtures: find Debian's
binaries, initdb as an unprivileged user, start/stop/query it, and find every process that
belongs to it.

A cluster's processes are recognised by their working directory: the postmaster chdir()s to
its data directory and every backend and auxiliary process inherits that, whatever pid
namespace it lives in and whatever its command line says ("postgres: checkpointer").
"""
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

from proc_helpers import wait_until

#: PostgreSQL refuses to run as root: when the tests run as root, the server runs as this user.
SERVER_USER = os.environ.get("PGJOB_PG_USER", "pgjobtest")
GONE_WITHIN = 5.0
READY_WITHIN = 60.0


def find_bindir():
    """Directory holding postgres, initdb, pg_ctl (Debian keeps them out of PATH), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0,
                        reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True,
                                             text=True, check=True).stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            pass
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(os.path.dirname(on_path))
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, tool), os.X_OK)
               for tool in ("postgres", "initdb", "pg_ctl", "pg_isready", "psql")):
            return bindir
    # psql may live in /usr/bin only (Debian's postgresql-client): accept that split too.
    for bindir in candidates:
        if all(os.access(os.path.join(bindir, t), os.X_OK) for t in ("postgres", "initdb", "pg_ctl")):
            return bindir
    return None


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_taken(port):
    """Does anything accept connections on 127.0.0.1:port?"""
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def processes_in(directory):
    """Pids of live processes whose working directory is `directory` (zombies have none)."""
    directory = os.path.realpath(directory)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/cwd") == directory:
                found.append(int(entry))
        except OSError:
            continue  # exited while we listed /proc, or a zombie
    return sorted(found)


class Cluster:
    """One data directory, its socket directory and port, and the commands that drive it."""

    def __init__(self, bindir, root):
        self.bindir = bindir
        self.root = root
        self.datadir = os.path.join(root, "data")
        self.sockdir = os.path.join(root, "sock")
        self.logfile = os.path.join(root, "server.log")
        # pg_ctl runs as the server user and must create its own log (server.log is the root
        # wrapper's).
        self.pg_ctl_log = os.path.join(root, "pg_ctl.log")
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.user = SERVER_USER if self.as_root else pwd.getpwuid(os.geteuid()).pw_name

    def tool(self, name):
        path = os.path.join(self.bindir, name)
        return path if os.access(path, os.X_OK) else (shutil.which(name) or path)

    def as_server_user(self, command):
        """Prefix that runs `command` as the server user: setpriv execs in place (no extra
        process, no PAM session), so the wrapper's child *is* the postmaster."""
        if not self.as_root:
            return list(command)
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups",
                "--", *command]

    def server_options(self):
        return ["-p", str(self.port), "-k", self.sockdir, "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off", "-c", "shared_buffers=16MB", "-c", "max_connections=20"]

    def postgres_command(self, switch_user=True):
        """The postmaster, run in the foreground (as the server user, if `switch_user`)."""
        command = [self.tool("postgres"), "-D", self.datadir, *self.server_options()]
        return self.as_server_user(command) if switch_user else command

    def run_as_server_user(self, command, **kwargs):
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("cwd", self.root)
        return subprocess.run(self.as_server_user(command), stdin=subprocess.DEVNULL, **kwargs)

    def initdb(self):
        for path in (self.root, self.sockdir):
            os.makedirs(path, exist_ok=True)
        if self.as_root:
            record = pwd.getpwnam(self.user)
            for path in (self.root, self.sockdir):
                os.chown(path, record.pw_uid, record.pw_gid)
        result = self.run_as_server_user([self.tool("initdb"), "-D", self.datadir, "--auth=trust",
                                          "--no-sync", "-U", self.user, "-E", "UTF8", "--locale=C"])
        assert result.returncode == 0, f"initdb failed:\n{result.stdout}\n{result.stderr}"

    def pg_ctl(self, *args):
        return self.run_as_server_user([self.tool("pg_ctl"), "-D", self.datadir, *args])

    def pg_ctl_start(self):
        return self.pg_ctl("-l", self.pg_ctl_log, "-w", "-t", "60",
                           "-o", " ".join(self.server_options()), "start")

    def psql_command(self, *extra):
        return [self.tool("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", self.sockdir, "-p", str(self.port), "-U", self.user, "-d", "postgres", *extra]

    def query(self, sql, timeout=60):
        """Run `sql` in a new session; return (returncode, stdout, stderr)."""
        result = subprocess.run(self.psql_command("-c", sql), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=timeout, cwd=self.root)
        return result.returncode, result.stdout.strip(), result.stderr.strip()

    def accepting(self):
        result = subprocess.run([self.tool("pg_isready"), "-h", self.sockdir, "-p", str(self.port),
                                 "-U", self.user, "-d", "postgres", "-t", "1"], capture_output=True, stdin=subprocess.DEVNULL)
        return result.returncode == 0

    def wait_ready(self, owner=None, timeout=READY_WITHIN):
        def ready():
            if owner is not None and owner.poll() is not None:
                raise AssertionError(f"the wrapper exited ({owner.returncode}) before the server "
                                     f"was ready; log:\n{self.log_tail()}")
            return self.accepting()
        assert wait_until(ready, timeout), f"server not ready in {timeout} s:\n{self.log_tail()}"

    def pids(self):
        return processes_in(self.datadir)

    def log_tail(self, lines=30):
        text = ""
        for path in (self.logfile, os.path.join(self.root, "wrapper.log"), self.pg_ctl_log):
            try:
                with open(path, errors="replace") as f:
                    text += f"--- {path}\n" + "".join(f.readlines()[-lines:])
            except OSError:
                pass
        return text

    def kill_everything(self):
        """Last-resort cleanup: SIGKILL every process of the cluster; return the survivors."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.pids(), 10)
        return self.pids()


def ensure_server_user():
    """As root, make sure the unprivileged server user exists (CI's setup creates it too)."""
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        SERVER_USER], check=True, capture_output=True)


def pgjob_env():
    import pgjob

    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


PYTHON = sys.executable


def python_for_server_user(cluster):
    """An interpreter the unprivileged server user can run that imports this pgjob, and the
    mechanism pgjob gets there; (None, reason) if there is none (e.g. a Python under /root)."""
    if not cluster.as_root:
        return sys.executable, None
    import pgjob

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        probe = cluster.run_as_server_user(
            ["env", f"PYTHONPATH={package_root}", python, "-c",
             "import pgjob; job = pgjob.Job(); print(job.mechanism); job.close()"], timeout=60)
        if probe.returncode == 0:
            return python, probe.stdout.strip()
    return None, (f"no Python that {cluster.user} can run imports pgjob from {package_root} "
                  f"(last try: {probe.stderr.strip()[-200:]})")


# -- cgroup v2 delegation (as systemd's Delegate=yes gives a `User=postgres` service) -------


def cgroup2_mount():
    """The unified hierarchy's mount point, from /proc/self/mountinfo (never assumed)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def cgroup_of(pid="self"):
    """`pid`'s cgroup v2 path (the "0::" line of /proc/PID/cgroup); None if it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].rstrip("\n")
    except OSError:
        return None
    return None


def _remove_cgroup_tree(top):
    """Kill what is left below `top` (cgroup.kill) and remove the directories bottom up."""
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        try:
            with open(os.path.join(dirpath, "cgroup.kill"), "w") as f:
                f.write("1")
        except OSError:
            pass  # no cgroup.kill (before 5.14), or already gone

        def removed(path=dirpath):
            try:
                os.rmdir(path)
            except FileNotFoundError:
                return True
            except OSError:
                return False  # EBUSY until the last process is gone and reaped
            return True
        wait_until(removed, 10)


@pytest.fixture
def delegated_cgroup():
    """A cgroup in the unified hierarchy delegated to the server user (directory and its
    cgroup.procs, cgroup.subtree_control, cgroup.threads chowned): the wrapper starts in it.
    As an ordinary user, a child of our own cgroup if that one was delegated to us."""
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 hierarchy is mounted")
    # An ordinary user's delegated cgroup: the harness's (scripts/vm names it), else our own.
    named = os.environ.get("PGJOB_VM_DELEGATED_CGROUP") if os.geteuid() else None
    parent = os.path.join(mount, (named or cgroup_of()).lstrip("/"))
    if os.geteuid() == 0:
        record = pwd.getpwnam(SERVER_USER)
        uid, gid = record.pw_uid, record.pw_gid
    else:
        uid, gid = os.geteuid(), os.getegid()
        if os.stat(parent).st_uid != uid or not os.access(os.path.join(parent, "cgroup.procs"),
                                                          os.W_OK):
            pytest.skip(f"cgroup {cgroup_of()} is not delegated to uid {uid}")
    if not os.access(parent, os.W_OK):
        pytest.skip(f"cgroup2 at {mount} is read-only here")
    path = os.path.join(parent, f"pgjob-pg-{os.getpid()}-{free_port()}")
    os.mkdir(path)
    try:
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(path, name), uid, gid)
        yield path
    finally:
        _remove_cgroup_tree(path)


# -- fixtures (imported by the test module; no conftest.py here: a second top-level `conftest`
# module would shadow tests/linux' own when several suites are collected in one run) --------


@pytest.fixture(scope="session")
def pg_bindir():
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql; "
                    "see scripts/postgres_crash_test_setup.sh)")
    ensure_server_user()
    return bindir


@pytest.fixture(scope="session")
def pg_template(pg_bindir):
    """One initdb per session; each test copies it (initdb takes seconds, a copy doesn't)."""
    root = tempfile.mkdtemp(prefix="pgjob-pg-template-", dir="/tmp")
    os.chmod(root, 0o755)  # the server user must reach its data directory below
    template = Cluster(pg_bindir, root)
    template.initdb()
    yield template
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(pg_template):
    root = tempfile.mkdtemp(prefix="pgjob-pg-", dir="/tmp")
    os.chmod(root, 0o755)
    os.rmdir(root)
    # cp -a keeps the owner (the server user) and the 0700 mode PostgreSQL insists on.
    subprocess.run(["cp", "-a", pg_template.root, root], check=True)
    cluster = Cluster(pg_template.bindir, root)
    try:
        yield cluster
    finally:
        if cluster.pids():
            cluster.pg_ctl("-m", "immediate", "-w", "stop")
        survivors = cluster.kill_everything()
        shutil.rmtree(root, ignore_errors=True)
        assert not survivors, f"cluster processes survived the cleanup: {survivors}"
