"""Fixtures for the CLI suite: a reaper that finds every process a test started (by pid and,
on Linux, by a per-test token in the command line) and asserts all are gone at the end."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cli_procs import Reaper  # noqa: E402


@pytest.fixture
def reaper():
    reaper = Reaper()
    try:
        yield reaper
    finally:
        reaper.finish()
