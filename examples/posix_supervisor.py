"""A small POSIX supervisor: runs one service command, restarts it when it crashes, and makes
sure that each run's whole process tree dies with it, and with the supervisor itself, however
the supervisor ends (SIGTERM from systemd, a crash, SIGKILL, OOM killer).

    python posix_supervisor.py --restarts 5 -- postgres -D /var/lib/pg/data -p 5432

One pgjob.Job per run: when a run's main process exits, whatever it left behind (a
backend still holding a lock, a daemonized helper) is killed before the next run starts, so
the restart never meets a leftover holding the port or the data directory. See
examples/pgjob-supervisor.service for a systemd unit around it.
"""
import argparse
import logging
import signal
import subprocess
import sys
import time
from typing import List, Optional

import pgjob

log = logging.getLogger("supervisor")


class Supervisor:
    def __init__(self, command: List[str], restarts: int, backoff: float) -> None:
        self.command = command
        self.restarts = restarts
        self.backoff = backoff
        self.stopping = False
        self.current: Optional[pgjob.Popen] = None

    def request_stop(self, signum: int, frame: object) -> None:
        """SIGTERM/SIGINT: pass the request to the service and stop restarting it."""
        self.stopping = True
        if self.current is not None and self.current.poll() is None:
            self.current.send_signal(signum)

    def run_once(self) -> int:
        with pgjob.Job(kill_on_close=True) as job:
            self.current = job.popen(self.command, stdin=subprocess.DEVNULL)
            log.info("started pid %d (mechanism=%s)", self.current.pid, job.mechanism)
            status = self.current.wait()
            leftovers = job.pids()
            if leftovers:
                log.warning("service exited with %d processes left: killing %s",
                            len(leftovers), leftovers)
        # Leaving the with-block closed the job: every leftover is dead now.
        return status

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        attempt = 0
        while True:
            status = self.run_once()
            log.info("service exited with status %d", status)
            if self.stopping or status == 0 or attempt >= self.restarts:
                return 128 - status if status < 0 else status
            attempt += 1
            delay = min(self.backoff * 2 ** (attempt - 1), 30.0)
            log.info("restart %d/%d in %.1f s", attempt, self.restarts, delay)
            deadline = time.monotonic() + delay
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            if self.stopping:
                return status


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--restarts", type=int, default=3, help="restarts after a crash (default 3)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first restart delay, doubled each time")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    return Supervisor(command, args.restarts, args.backoff).run()


if __name__ == "__main__":
    sys.exit(main())
