"""A Python process that mangles its own 0-2 around pgjob calls (what a daemon or a careless
caller does) and reports, through the descriptor named by argv[1], what it found: which
descriptors pgjob took, whether spawning still works, whether the restored stdio survived.
Used by test_spawn_regressions.py; argv: report_fd mechanism scenario closed_fds."""
import fcntl
import json
import os
import sys
import traceback

import pgjob


def open_fds():
    """{fd: (target, close_on_exec)} of every descriptor open now."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            cloexec = bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
        except OSError:
            continue  # the descriptor listdir itself used, closed by now
        found[fd] = (target, cloexec)
    return found


def restore_stdio(closed):
    null = os.open("/dev/null", os.O_RDWR)
    for fd in closed:
        if fd != null:
            os.dup2(null, fd)
    if null not in closed:
        os.close(null)


def main():
    report_fd, mechanism, scenario = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    closed = [int(fd) for fd in sys.argv[4].split(",")]
    report = {"pids": []}
    inherited = set(open_fds())
    for fd in closed:
        os.close(fd)
    job = pgjob.Job(mechanism=mechanism, on_unavailable="raise")
    try:
        if scenario == "spawn_then_restore":
            # (a) spawn while stdio is closed, restore it, spawn again.
            first = job.popen(["sleep", "60"])
            report["pids"].append(first.pid)
            report["taken_while_closed"] = sorted(set(closed) & set(open_fds()))
            restore_stdio(closed)
            second = job.popen(["true"])
            report["pids"].append(second.pid)
            report["second_returncode"] = second.wait(10)
            # The job looks at its members' pidfds here: a restored stdio descriptor taken
            # for one would be seen as an exited member and closed.
            report["job_waits_for_first"] = not job.wait(0)
            report["first_is_member"] = job.contains(first.pid)
        else:  # "restore_after_job": (b) the Job is made while stdio is closed
            report["taken_while_closed"] = sorted(set(closed) & set(open_fds()))
            restore_stdio(closed)
            try:
                p = job.popen(["true"])
            except OSError as exc:
                report["spawn_error"] = f"{type(exc).__name__}: {exc}"
            else:
                report["pids"].append(p.pid)
                report["second_returncode"] = p.wait(10)
        now = open_fds()
        report["stdio_after"] = {fd: now.get(fd, (None, None))[0] for fd in closed}
        # Everything opened since the start that is not the restored stdio is pgjob's.
        report["held"] = {fd: now[fd] for fd in sorted(set(now) - inherited - set(closed))}
    finally:
        job.close()
        if "first" in locals():
            first.wait(10)
    return report


if __name__ == "__main__":
    fd = int(sys.argv[1])
    try:
        result = main()
    except BaseException:
        result = {"error": traceback.format_exc()}
    os.write(fd, json.dumps(result).encode())
