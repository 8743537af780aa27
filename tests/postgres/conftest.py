"""Fixtures for the PostgreSQL crash test: Debian's server binaries (skip only if PostgreSQL
is not installed), an unprivileged server user when running as root, and a fresh cluster per
test, every process of which is asserted gone at the end."""
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pg_cluster import Cluster, ensure_server_user, find_bindir  # noqa: E402


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
