"""The COMMAND the CLI tests run under `pgjob run`: each role prints one JSON line once it is
ready (the readiness handshake), then does its part. Every process carries `--token T` in
its command line so a test can find all of them from outside, even inside a PID namespace
(where the pids they see for themselves are not the host's).

Run as: python cli_actor.py ROLE --token T [options]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def report(**fields):
    # One unbuffered write, not print(): a signal handler reports too, and a signal that
    # arrives while print() still holds sys.stdout's lock (the test read the line before
    # flush returned) raised "reentrant call inside BufferedWriter" (seen on 3.10, loaded).
    line = (json.dumps(fields) + "\n").encode()
    while line:
        line = line[os.write(1, line):]


def hold_forever():
    while True:
        time.sleep(3600)


def command(role, token, *extra):
    return [sys.executable, HERE, role, "--token", token, *extra]


def role_sleeper(args):
    report(role="sleeper", pid=os.getpid(), sid=os.getsid(0) if hasattr(os, "getsid") else None)
    hold_forever()


def role_daemonize(args):
    """Start a sleeper in a new session and exit at once: the classic daemon, reparented away
    from its parent, in a session no signal to the parent's group reaches."""
    kwargs = {"start_new_session": True} if os.name == "posix" else {
        "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    subprocess.Popen(command("sleeper", args.token), **kwargs)  # stdout inherited: our caller reads it


def role_tree(args):
    """COMMAND with a grandchild and a daemon: reports once both are up, then waits."""
    grandchild = subprocess.Popen(command("sleeper", args.token), stdout=subprocess.PIPE, text=True)
    grand = json.loads(grandchild.stdout.readline())
    intermediate = subprocess.Popen(command("daemonize", args.token), stdout=subprocess.PIPE, text=True)
    daemon = json.loads(intermediate.stdout.readline())
    intermediate.wait()
    report(role="tree", pid=os.getpid(), grandchild=grand["pid"], daemon=daemon["pid"],
           daemon_sid=daemon["sid"])
    if args.exit_after_ready is not None:
        sys.exit(args.exit_after_ready)
    hold_forever()


def role_signals(args):
    """Reports each signal it receives on stdout and exits with 100+N on SIGTERM/SIGINT/SIGBREAK."""
    def on_signal(number, frame):
        report(role="signals", got=signal.Signals(number).name)
        sys.exit(100 + number)

    for name in ("SIGTERM", "SIGINT", "SIGBREAK", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), on_signal)
    report(role="signals", pid=os.getpid())
    hold_forever()


def role_count_sigint(args):
    """Counts SIGINTs: reports the count 0.5 s after the first one (a duplicate, e.g. from a
    terminal plus a forwarding wrapper, arrives within microseconds) and exits with it."""
    received = []
    signal.signal(signal.SIGINT, lambda number, frame: received.append(time.monotonic()))
    report(role="count_sigint", pid=os.getpid())
    while not received:
        signal.pause() if hasattr(signal, "pause") else time.sleep(0.05)
    # The counting window itself is the measurement, not a wait for readiness.
    window_end = received[0] + 0.5
    while time.monotonic() < window_end:
        time.sleep(max(0.0, window_end - time.monotonic()))
    report(role="count_sigint", count=len(received))
    sys.exit(len(received))


def role_stubborn(args):
    """Ignores SIGTERM/SIGINT: only a kill stops it."""
    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    report(role="stubborn", pid=os.getpid())
    hold_forever()


def role_exit(args):
    sys.exit(args.code)


def role_selfkill(args):
    os.kill(os.getpid(), args.code)
    hold_forever()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("role")
    parser.add_argument("--token", default="-")
    parser.add_argument("--code", type=int, default=0)
    parser.add_argument("--exit-after-ready", type=int, default=None)
    args = parser.parse_args()
    globals()["role_" + args.role](args)


if __name__ == "__main__":
    main()
