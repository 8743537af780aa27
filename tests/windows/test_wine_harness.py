"""The Wine harness's one retry (scripts/winepy_support/site/sitecustomize.py): under
scripts/winepy both spawn paths are wrapped; Wine's winerror 1359 is retried once and
counted; a second 1359 in a row, or any other error, reaches the caller unchanged."""
import _winapi
import sys

import pytest

import pgjob
from pgjob import _jobobject

hook = sys.modules.get("sitecustomize")
pytestmark = pytest.mark.skipif(getattr(hook, "RETRIES", None) is None,
                                reason="runs under scripts/winepy, which installs the hook")


def fails_then_creates(*winerrors):
    """A CreateProcess stand-in: raises OSError with each winerror in turn, then succeeds."""
    calls = []

    def create(*args):
        calls.append(args)
        if len(calls) <= len(winerrors):
            raise OSError(22, "injected", None, winerrors[len(calls) - 1])
        return "created"
    return create, calls


@pytest.fixture
def counts(monkeypatch):
    """The hook's counters, reset for the test and restored after; and no line in winepy's
    retry log (its exit summary is for real faults only)."""
    monkeypatch.delenv("PGJOB_WINE_RETRY_LOG", raising=False)
    for side in hook.RETRIES:
        monkeypatch.setitem(hook.RETRIES, side, 0)
    return hook.RETRIES


def test_both_spawn_paths_are_wrapped():
    assert type(_winapi.CreateProcess.__wrapped__).__name__ == "builtin_function_or_method"
    assert _jobobject.CreateProcessInJob.__wrapped__.__name__ == "CreateProcessInJob"


def test_one_1359_is_retried_and_counted(counts):
    create, calls = fails_then_creates(1359)
    assert hook._retrying("pgjob", create)("cmd", 0) == "created"
    assert calls == [("cmd", 0), ("cmd", 0)]
    assert counts == {"plain": 0, "pgjob": 1}


def test_a_second_1359_is_raised(counts):
    create, calls = fails_then_creates(1359, 1359)
    with pytest.raises(OSError) as info:
        hook._retrying("plain", create)()
    assert info.value.winerror == 1359 and len(calls) == 2
    assert counts == {"plain": 1, "pgjob": 0}


@pytest.mark.parametrize("winerror", [2, 5, 87, 193])
def test_other_errors_are_never_retried(counts, winerror):
    create, calls = fails_then_creates(winerror)
    with pytest.raises(OSError) as info:
        hook._retrying("plain", create)()
    assert info.value.winerror == winerror and len(calls) == 1
    assert counts == {"plain": 0, "pgjob": 0}


def test_a_missing_program_still_fails_as_in_subprocess(tmp_path):
    missing = str(tmp_path / "no-such-program.exe")
    with pgjob.Job() as job, pytest.raises(FileNotFoundError):
        job.popen([missing])
