"""`mypy --strict` on a user's program (examples/typed_usage.py) passes against pgjob's
py.typed package and its extension stub, for each platform the stub distinguishes."""
import os
import sys

import pytest

import pgjob

api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install mypy)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "typed_usage.py")
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pgjob.__file__)))
INSTALLED = os.path.basename(PACKAGE_ROOT) in ("site-packages", "dist-packages")

# As for any installed py.typed package, the user sees their own errors, not pgjob's internals.
CONFIG = """\
[mypy]
strict = True
warn_unused_configs = True

[mypy-pgjob.*]
follow_imports = silent
"""


def run_mypy(tmp_path, monkeypatch, platform, *files):
    config = tmp_path / "mypy.ini"
    config.write_text(CONFIG)
    if not INSTALLED:
        # A source checkout (PYTHONPATH=src): point mypy at it. An installed package is found
        # in site-packages, where mypy refuses a MYPYPATH entry.
        monkeypatch.setenv("MYPYPATH", PACKAGE_ROOT)
    stdout, stderr, status = api.run([
        "--config-file", str(config), "--cache-dir", str(tmp_path / "cache"),
        "--platform", platform, "--python-version", f"{sys.version_info[0]}.{sys.version_info[1]}",
        *files])
    assert status == 0, stdout + stderr
    assert "Success: no issues found" in stdout


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_user_code_passes_mypy_strict(tmp_path, monkeypatch, platform):
    run_mypy(tmp_path, monkeypatch, platform, EXAMPLE)


@pytest.mark.skipif(INSTALLED, reason="checks pgjob's own source; mypy won't check files "
                    "inside site-packages")
@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_cli_passes_mypy_strict(tmp_path, monkeypatch, platform):
    here = os.path.dirname(os.path.abspath(pgjob.__file__))
    run_mypy(tmp_path, monkeypatch, platform, os.path.join(here, "_cli.py"),
             os.path.join(here, "__main__.py"))


@pytest.mark.skipif(INSTALLED, reason="checks pgjob's own source; mypy won't check files "
                    "inside site-packages")
@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_the_whole_package_passes_mypy_strict(tmp_path, monkeypatch, platform):
    """Internals included: each backend is checked for the platform it runs on (the others
    stop mypy at their top, as they are never imported there)."""
    run_mypy(tmp_path, monkeypatch, platform, "-p", "pgjob")


def test_stub_and_marker_ship_with_the_package():
    here = os.path.dirname(os.path.abspath(pgjob.__file__))
    assert os.path.isfile(os.path.join(here, "py.typed"))
    assert os.path.isfile(os.path.join(here, "_jobobject.pyi"))
