"""Threads: 8 threads spawning into one job at once lose no member; spawn, assign and the
query calls racing close() end in a member or JobClosedError, never a crash, a deadlock or
a process left running."""
import faulthandler
import random
import subprocess
import threading

import pytest

import pgjob
from stress_support import (LINUX, STRESS, WINDOWS, report, sized, sleeper, spawn_member,
                            wine_1359_counts)

pytestmark = STRESS

# Under Wine the members sleep 30 s, not 1000: Wine 8 creates the socket a new process uses
# to reach wineserver without close-on-exec, so a process spawned by another thread at that
# moment inherits it. If the job's close kills the first one during its start-up, its
# CreateProcess waits until that sibling exits (seen once in the full-size run: a spawner
# stuck inside Wine's CreateProcessW behind a 1000 s sleeper). 30 s ends such a wait inside
# JOIN_WITHIN; the survivor check still runs well before a 30 s member would exit by itself.
SLEEPER = sleeper(30 if WINDOWS else 1000)
THREADS = 8
JOIN_WITHIN = 120  # seconds: past this, a thread is deadlocked
MECHANISMS = [None] if WINDOWS else ["pid_namespace", "pdeathsig"]


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(JOIN_WITHIN * 3, exit=True)  # a deadlock fails loudly
    yield
    faulthandler.cancel_dump_traceback_later()


def run_threads(targets):
    errors = []

    def guarded(fn):
        try:
            fn()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn,)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_WITHIN)
    assert not any(t.is_alive() for t in threads), "deadlock: a thread did not finish"
    if errors:
        raise errors[0]


def all_gone(popens, timeout=10):
    """Reap every process; return the ones still running after `timeout` (then killed)."""
    left = []
    for p in popens:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            left.append(p.pid)
            p.kill()
            p.wait()
    return left


def kwargs_for(mechanism):
    return {} if mechanism is None else {"mechanism": mechanism}


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_eight_threads_spawning_into_one_job_lose_no_member(mechanism):
    rounds, per_thread = sized(3, 20), sized(3, 5)
    if WINDOWS:
        rounds = sized(2, 10)
    spawned = survivors = 0
    for _ in range(rounds):
        popens, lock = [], threading.Lock()
        barrier = threading.Barrier(THREADS)
        job = pgjob.Job(**kwargs_for(mechanism))
        try:
            def spawner():
                barrier.wait()
                for _ in range(per_thread):
                    p = spawn_member(job.popen, SLEEPER)
                    with lock:
                        popens.append(p)

            run_threads([spawner] * THREADS)
            assert len(popens) == THREADS * per_thread
            members = set(job.pids())
            lost = [p.pid for p in popens if p.pid not in members]
            assert not lost, f"members missing from pids(): {lost}"
            assert all(job.contains(p) for p in popens)
        finally:
            job.close()
        left = all_gone(popens)
        spawned += len(popens)
        survivors += len(left)
        assert not left
    report(f"threads spawn {mechanism or 'job_object'}", rounds=rounds, threads=THREADS,
           spawned=spawned, lost=0, survivors=survivors, **wine_1359_counts())


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_spawn_and_queries_racing_close(mechanism):
    rounds = sized(10, 100) if LINUX else sized(4, 30)
    outcomes = {"spawned": 0, "refused_closed": 0, "queries": 0, "queries_closed": 0}
    survivors = 0
    for _ in range(rounds):
        job = pgjob.Job(**kwargs_for(mechanism))
        popens, lock = [], threading.Lock()
        start = threading.Barrier(THREADS)  # 3 spawners, 4 queriers, 1 closer

        def spawner():
            start.wait()
            while True:
                try:
                    p = spawn_member(job.popen, SLEEPER)
                except pgjob.JobClosedError:
                    with lock:
                        outcomes["refused_closed"] += 1
                    return
                with lock:
                    popens.append(p)
                    outcomes["spawned"] += 1

        def querier():
            start.wait()
            while True:
                try:
                    random.choice([job.pids, job.stats, lambda: job.wait(0),
                                   lambda: job.contains(1), lambda: list(job.events(0))])()
                except pgjob.JobClosedError:
                    with lock:
                        outcomes["queries_closed"] += 1
                    return
                with lock:
                    outcomes["queries"] += 1

        def closer():
            start.wait()
            threading.Event().wait(random.uniform(0.0, 0.05 if LINUX else 0.5))
            job.close()

        run_threads([spawner] * 3 + [querier] * 4 + [closer])
        assert job.closed
        left = all_gone(popens)
        survivors += len(left)
        assert not left, f"spawned members outlived close(): {left}"
    report(f"threads race-close {mechanism or 'job_object'}", rounds=rounds,
           survivors=survivors, **outcomes, **wine_1359_counts())


def test_assign_racing_close():
    """Windows: assign() of running processes while another thread closes the job: each
    process either became a member (and dies with the close) or the call raised
    JobClosedError (and the process is ours to kill). Linux has no assign() of a running
    process: it must say so (UnsupportedError) or JobClosedError, racing or not."""
    rounds = sized(5, 50) if LINUX else sized(3, 20)
    assigned = refused = survivors = 0
    for _ in range(rounds):
        targets = [spawn_member(subprocess.Popen, SLEEPER) for _ in range(6)]
        job = pgjob.Job()
        results, lock = {}, threading.Lock()
        start = threading.Barrier(4)

        def assigner(chunk):
            start.wait()
            for p in chunk:
                try:
                    job.assign(p)
                    outcome = "member"
                except pgjob.JobClosedError:
                    outcome = "closed"
                except pgjob.UnsupportedError:
                    assert LINUX
                    outcome = "unsupported"
                with lock:
                    results[p.pid] = outcome

        def closer():
            start.wait()
            threading.Event().wait(random.uniform(0.0, 0.01))
            job.close()

        run_threads([lambda: assigner(targets[0::3]), lambda: assigner(targets[1::3]),
                     lambda: assigner(targets[2::3]), closer])
        members = [p for p in targets if results[p.pid] == "member"]
        others = [p for p in targets if results[p.pid] != "member"]
        # Members were killed by close(); the rest are still ours.
        left = all_gone(members)
        for p in others:
            p.kill()
        left += all_gone(others)
        assigned += len(members)
        refused += len(others)
        survivors += len([pid for pid in left if pid in {m.pid for m in members}])
        assert survivors == 0
    report("threads assign-race-close " + ("linux" if LINUX else "windows"), rounds=rounds,
           assigned=assigned, refused_or_unsupported=refused, member_survivors=survivors,
           **wine_1359_counts())
