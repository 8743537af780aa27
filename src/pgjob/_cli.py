"""`pgjob run [options] -- COMMAND [ARGS...]`: run COMMAND in a kill-on-close job, so that
however this wrapper dies, COMMAND's whole process tree dies with it.

Exit status follows coreutils `timeout`/`env` and POSIX shells: COMMAND's own status, 128+N
when a signal N killed it, 124 on --timeout, 125 when pgjob itself failed, 126 when COMMAND
was found but could not be executed, 127 when it was not found.
"""
from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from ._base import MECHANISMS
from ._errors import JobError, UnsupportedError
from ._job import Job, Popen
from ._log import logger

EXIT_TIMEOUT = 124
EXIT_PGJOB_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

IS_WINDOWS = sys.platform == "win32"

# Signals a service manager or a terminal uses to ask for a stop (or a reload/dump), all of
# which COMMAND must see instead of the wrapper. Windows: Python maps CTRL_C_EVENT to SIGINT
# and CTRL_BREAK_EVENT to SIGBREAK; nothing else reaches a console process as a signal.
FORWARDED_SIGNALS: Tuple[str, ...]
if IS_WINDOWS:
    FORWARDED_SIGNALS = ("SIGINT", "SIGBREAK")
else:
    FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")

# Signals a terminal sends to its whole foreground process group (see _Forwarder.forward).
_TERMINAL_SIGNALS = ("SIGINT", "SIGQUIT")

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class UsageError(Exception):
    """A bad command line: reported with the usage line, exit status 125."""


class _ArgumentParser(argparse.ArgumentParser):
    # argparse exits with 2 on a usage error; a wrapper must not be confused with COMMAND
    # exiting 2, so usage errors are pgjob's own failure: 125, like coreutils `timeout`.
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_PGJOB_FAILED, f"{self.prog}: error: {message}\n")


def parse_size(text: str) -> int:
    """Bytes from '1048576', '512K', '256M', '2G', '1.5G', '64MiB' (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M or 2G)")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    if value < 1 or value >= 2**63:
        raise argparse.ArgumentTypeError(f"size out of range: {text!r}")
    return int(value)


def parse_duration(text: str) -> float:
    """Seconds from '10', '2.5', '30s', '5m', '1h', '1d' (the units coreutils `timeout` takes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30, 2.5s, 5m)")
    value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"duration out of range: {text!r}")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def parse_percent(text: str) -> float:
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0.01 <= value <= 100:  # also rejects NaN
        raise argparse.ArgumentTypeError(f"must be between 0.01 and 100 (percent of all CPUs): {text!r}")
    return value


def parse_signal(text: str) -> int:
    """A signal by number or name, with or without the SIG prefix: 15, TERM, SIGTERM."""
    if text.isdigit():
        return int(text)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    number = getattr(signal, name, None)
    if not isinstance(number, int) or name.startswith("SIG_"):
        raise argparse.ArgumentTypeError(f"unknown signal: {text!r}")
    return int(number)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _ArgumentParser(
        prog="pgjob",
        description="Run a command whose whole process tree dies with this wrapper, "
                    "enforced by the kernel (Windows Job Objects, Linux PID namespaces).",
    )
    parser.add_argument("--version", action="version", version=f"pgjob {__version__}")
    commands = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    commands.required = True
    run = commands.add_parser(
        "run", help="run COMMAND in a kill-on-close job",
        usage="pgjob run [options] -- COMMAND [ARGS...]",
        description="Run COMMAND in a kill-on-close job: if this wrapper dies by any means "
                    "(even SIGKILL or TerminateProcess), every process COMMAND started dies "
                    "too. SIGINT/SIGTERM (Windows: Ctrl-C/Ctrl-Break) are forwarded to "
                    "COMMAND; pgjob exits with COMMAND's exit status (128+N if signal N "
                    "killed it), 124 on --timeout, 125 if pgjob failed, 126 if COMMAND can't "
                    "be executed, 127 if it was not found.",
        epilog="Put -- before COMMAND so that its own options are not read as pgjob's.",
    )
    run.add_argument("--mechanism", choices=[m for m in MECHANISMS],
                     help="require this containment mechanism instead of the platform's best "
                          "(job_object on Windows; pid_namespace, else pdeathsig, on Linux)")
    run.add_argument("--on-unavailable", choices=("log", "raise"), default="log",
                     help="when the OS refuses protection: log a warning and run COMMAND "
                          "unprotected (default), or fail with exit status 125 (raise)")
    limits = run.add_argument_group("limits (Windows Job Objects; elsewhere only if the backend "
                                    "supports them, else exit status 125)")
    limits.add_argument("--memory-limit", type=parse_size, metavar="SIZE",
                        help="committed memory of the whole tree, e.g. 512M, 2G")
    limits.add_argument("--process-memory-limit", type=parse_size, metavar="SIZE",
                        help="committed memory of each process")
    limits.add_argument("--process-limit", type=parse_positive_int, metavar="N",
                        help="at most N processes alive in the tree at once")
    limits.add_argument("--cpu-rate", type=parse_percent, metavar="PERCENT",
                        help="hard cap on CPU use, in percent of all CPUs (0.01-100)")
    timing = run.add_argument_group("timeout (like coreutils timeout)")
    timing.add_argument("--timeout", type=parse_duration, metavar="DURATION",
                        help="after DURATION (seconds, or with suffix s/m/h/d) ask COMMAND to "
                             "stop with --signal and exit 124")
    timing.add_argument("--kill-after", type=parse_duration, metavar="DURATION",
                        help="if COMMAND still runs DURATION after the timeout signal, kill "
                             "the whole tree (SIGKILL / TerminateJobObject)")
    timing.add_argument("-s", "--signal", type=parse_signal, default=None, metavar="SIGNAL",
                        help="signal sent on timeout (default TERM; Windows: CTRL_BREAK_EVENT "
                             "to COMMAND's process group, or a kill if it has none)")
    run.add_argument("--process-group", choices=("shared", "new"), default=None,
                     help="shared: COMMAND stays in pgjob's process group, so the terminal "
                          "(console) delivers Ctrl-C to it directly and interactive programs "
                          "keep the terminal (default on POSIX). new: COMMAND leads a new "
                          "process group that terminal signals don't reach, so only pgjob's "
                          "forwarding does; on Windows pgjob then sends that group "
                          "CTRL_BREAK_EVENT (default on Windows)")
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="pgjob's own log lines on stderr: -v info, -vv debug")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="only pgjob's errors on stderr, not its warnings")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]",
                     help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = build_parser()
    argv = list(argv)
    # Everything after the first "--" is COMMAND, verbatim: split it off before argparse,
    # whose REMAINDER handling of "--" differs between Python versions.
    command: Optional[List[str]] = None
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    options = parser.parse_args(argv)
    if command is not None:
        if options.command:
            parser.error(f"unexpected arguments before --: {' '.join(options.command)}")
        options.command = command
    if options.subcommand == "run":
        if not options.command:
            parser.error("run: no COMMAND given (usage: pgjob run [options] -- COMMAND [ARGS...])")
        if options.kill_after is not None and options.timeout is None:
            parser.error("run: --kill-after needs --timeout")
        if options.signal is not None and options.timeout is None:
            parser.error("run: --signal needs --timeout")
        if options.process_group is None:
            options.process_group = "new" if IS_WINDOWS else "shared"
    return options


def configure_logging(verbose: int, quiet: bool) -> None:
    if quiet:
        level = logging.ERROR
    elif verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    else:
        level = logging.WARNING
    # PGJOB_DEBUG=1 already gave the logger a handler (pgjob._log): keep its lines, don't double them.
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("pgjob: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
    logger.propagate = False


def exit_status(returncode: int) -> int:
    """COMMAND's status as a shell reports it: 128+N for death by signal N (POSIX)."""
    if returncode < 0:
        return 128 - returncode
    return returncode


def _exit_code_for_os(status: int) -> int:
    # Windows exit codes are 32-bit unsigned (0xC0000005 for an access violation); the C
    # runtime's exit() takes an int, so pass codes >= 2**31 as their signed equivalent.
    if IS_WINDOWS and status >= 2**31:
        return status - 2**32
    return status


def _spawn_error_status(exc: OSError) -> int:
    """Map a failure to start COMMAND to 125/126/127, as coreutils `env`/`timeout` do."""
    if isinstance(exc, JobError):
        return EXIT_PGJOB_FAILED
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return EXIT_NOT_FOUND
    if getattr(exc, "errno", None) in (errno.ENOENT, errno.ENOTDIR):
        return EXIT_NOT_FOUND
    return EXIT_CANNOT_EXECUTE


class _Forwarder:
    """Receives the stop signals addressed to the wrapper and hands them to COMMAND.

    A Python signal handler only runs in the main thread between bytecodes, so the main
    loop waits for COMMAND in short slices; forwarding happens right in the handler.
    """

    def __init__(self, process_group: str) -> None:
        self.process_group = process_group
        self.popen: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        self.pending: List[int] = []
        self.received: List[int] = []
        self._previous: Dict[int, Any] = {}
        self._tty: Optional[int] = None

    def install(self) -> None:
        if sys.platform != "win32":
            try:
                self._tty = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError:
                self._tty = None  # no controlling terminal: every signal came from a process
        for name in FORWARDED_SIGNALS:
            number = getattr(signal, name, None)
            if number is None:
                continue
            try:
                self._previous[number] = signal.signal(number, self._handle)
            except (OSError, ValueError):
                pass  # not settable here (e.g. not in the main thread): leave the default

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            try:
                signal.signal(number, previous)
            except (OSError, ValueError, TypeError):
                pass
        self._previous.clear()
        if self._tty is not None:
            os.close(self._tty)
            self._tty = None

    def started(self, popen: subprocess.Popen) -> None:  # type: ignore[type-arg]
        self.popen = popen
        pending, self.pending = self.pending, []
        for number in pending:
            self.forward(number)

    def _handle(self, number: int, frame: Optional[FrameType]) -> None:
        self.received.append(number)
        if self.popen is None:
            self.pending.append(number)  # arrived before COMMAND started: deliver after
        else:
            self.forward(number)

    def _terminal_already_delivered(self, number: int) -> bool:
        """Did the terminal send this signal to COMMAND as well as to us?

        A terminal sends Ctrl-C (SIGINT) and Ctrl-\\ (SIGQUIT) to its whole foreground
        process group. When COMMAND shares our group and that group is in the foreground,
        COMMAND got its own copy; forwarding would deliver it twice (a Python child would
        see a second KeyboardInterrupt in its cleanup). The price: `kill -INT` aimed at
        pgjob itself while it is in a terminal's foreground is not forwarded; use SIGTERM.
        """
        if sys.platform == "win32" or self._tty is None or self.process_group != "shared":
            return False
        if signal.Signals(number).name not in _TERMINAL_SIGNALS:
            return False
        try:
            return bool(os.tcgetpgrp(self._tty) == os.getpgrp())
        except OSError:
            return False

    def forward(self, number: int) -> None:
        popen = self.popen
        if popen is None or popen.returncode is not None:
            return
        name = signal.Signals(number).name
        try:
            if sys.platform == "win32":
                if self.process_group == "shared":
                    # The console sent the event to every process attached to it, COMMAND
                    # included; pgjob only keeps waiting so it can report COMMAND's status.
                    logger.info("%s reached COMMAND through the shared console", name)
                    return
                os.kill(popen.pid, signal.CTRL_BREAK_EVENT)
                logger.info("%s: sent CTRL_BREAK_EVENT to COMMAND's process group", name)
            elif self._terminal_already_delivered(number):
                logger.info("%s came from the terminal, which sent it to COMMAND too", name)
            else:
                # To COMMAND only, as systemd's KillMode=mixed does: it stops its own children
                # its own way (a postmaster shuts its backends down in order), and whatever is
                # left when it exits dies with the job. popen.pid is COMMAND itself under
                # every mechanism (on Linux a member of the job's namespace, not its init).
                _wait_until_not_pending(popen.pid, number)
                os.kill(popen.pid, number)
                logger.info("forwarded %s to COMMAND (pid %d)", name, popen.pid)
        except ProcessLookupError:
            pass  # COMMAND exited since we last looked: nothing to stop
        except (OSError, SystemError) as exc:  # SystemError: see send_stop
            logger.warning("could not forward %s to COMMAND: %s", name, exc)

    def send_stop(self, number: Optional[int], job: Job) -> None:
        """The --timeout step: ask COMMAND to stop, or kill the tree where it can't be asked."""
        popen = self.popen
        if popen is None or popen.returncode is not None:
            return
        if sys.platform == "win32":
            if number is None and self.process_group == "new":
                try:
                    os.kill(popen.pid, signal.CTRL_BREAK_EVENT)
                    logger.info("timeout: sent CTRL_BREAK_EVENT to COMMAND's process group")
                    return
                # Without a console GenerateConsoleCtrlEvent fails; some CPython builds then
                # raise SystemError (an error set without a NULL return) instead of OSError.
                except (OSError, SystemError) as exc:
                    logger.info("timeout: CTRL_BREAK_EVENT failed (%s): terminating", exc)
            # A console-sharing COMMAND can't be sent a Ctrl event without sending it to
            # pgjob and its parent too: terminating the job is the only stop there is.
            _terminate(job, popen)
            return
        number = signal.SIGTERM if number is None else number
        try:
            os.kill(popen.pid, number)
            logger.info("timeout: sent %s to COMMAND", signal.Signals(number).name)
        except ProcessLookupError:
            pass  # exited just now


def _pending_signals(pid: int) -> int:
    """Bit mask of the signals pending for process `pid` (Linux /proc), 0 if unknown."""
    mask = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"SigPnd:", b"ShdPnd:")):
                    mask |= int(line.split()[1], 16)
    except (OSError, ValueError):
        return 0  # gone, or not Linux: nothing to wait for
    return mask


def _wait_until_not_pending(pid: int, number: int, timeout: float = 0.5) -> None:
    """Wait (briefly) until signal `number` is no longer pending at `pid`.

    A standard signal sent while the same signal is still pending is merged into it and lost,
    so a copy that COMMAND has not yet taken (from the terminal, or our previous forward) would
    swallow ours. Written for the earlier per-spawn init, which dropped terminal-generated
    signals; with the job-wide init in its own session this normally returns at once, and it
    stays as a cheap guard. Only Linux shows pending signals; elsewhere this returns at once.
    """
    if not sys.platform.startswith("linux"):
        return
    bit = 1 << (number - 1)
    deadline = time.monotonic() + timeout
    while _pending_signals(pid) & bit and time.monotonic() < deadline:
        time.sleep(0.001)


def _terminate(job: Job, popen: "subprocess.Popen[Any]") -> None:
    try:
        job.terminate(1)
        logger.info("terminated every process in the job")
    except JobError as exc:
        logger.warning("could not terminate the job (%s): killing COMMAND", exc)
    try:
        popen.kill()  # mechanism "none" can only reach the process it started
    except OSError:
        pass  # already gone: the job's terminate reached it


def _popen_kwargs(process_group: str) -> Dict[str, Any]:
    if process_group != "new":
        return {}
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    # process_group= appeared in 3.11; a new session also makes a new process group.
    return {"start_new_session": True}


def _create_job(options: argparse.Namespace) -> Job:
    limit_names = {
        "memory_limit": "--memory-limit", "process_memory_limit": "--process-memory-limit",
        "process_limit": "--process-limit", "cpu_rate": "--cpu-rate",
    }
    limits = {k: getattr(options, k) for k in limit_names if getattr(options, k) is not None}
    # A limit the platform can't enforce, or a mechanism asked for by name, is an error and
    # never a silent downgrade to "none": those runs raise instead of logging.
    required = bool(limits) or options.mechanism not in (None, "none")
    on_unavailable = "raise" if required else options.on_unavailable
    try:
        job = Job(kill_on_close=True, mechanism=options.mechanism, on_unavailable=on_unavailable,
                  **limits)
    except UnsupportedError as exc:
        if limits:
            asked = ", ".join(limit_names[k] for k in limits)
            raise UsageError(f"{asked} not supported here ({sys.platform}): {exc}") from exc
        raise
    if limits and job.mechanism == "none":
        job.close()
        asked = ", ".join(limit_names[k] for k in limits)
        raise UsageError(f"{asked} not supported here: no containment mechanism is available")
    if options.mechanism is not None and job.mechanism != options.mechanism:
        job.close()
        raise UsageError(f"mechanism {options.mechanism!r} is not available here "
                         f"(the platform gave {job.mechanism!r})")
    logger.info("job created: mechanism=%s", job.mechanism)
    return job


def run(options: argparse.Namespace) -> int:
    """Run COMMAND to completion inside a job; return pgjob's exit status."""
    command: List[str] = options.command
    try:
        job = _create_job(options)
    except UsageError as exc:
        print(f"pgjob: {exc}", file=sys.stderr)
        return EXIT_PGJOB_FAILED
    except (OSError, ValueError, TypeError) as exc:
        what = f"mechanism {options.mechanism!r}" if options.mechanism else "the job"
        print(f"pgjob: cannot create {what}: {exc}", file=sys.stderr)
        return EXIT_PGJOB_FAILED
    forwarder = _Forwarder(options.process_group)
    forwarder.install()
    try:
        with job:
            try:
                popen = Popen(command, job=job, **_popen_kwargs(options.process_group))
            except OSError as exc:
                status = _spawn_error_status(exc)
                reason = {EXIT_NOT_FOUND: "command not found",
                          EXIT_CANNOT_EXECUTE: "cannot execute"}.get(status, "cannot start it in the job")
                print(f"pgjob: {command[0]}: {reason}: {exc}", file=sys.stderr)
                return status
            logger.info("started %s as pid %d (%s)", command[0], popen.pid,
                        popen.spawn_path or job.mechanism)
            forwarder.started(popen)
            timed_out = _wait(popen, job, forwarder, options.timeout, options.kill_after,
                              options.signal)
            returncode = popen.returncode
            assert returncode is not None
            _report_leftovers(job)
        # Leaving the with-block closed the job: with kill_on_close every process COMMAND
        # left behind is dead now.
    finally:
        forwarder.uninstall()
    if timed_out:
        logger.info("COMMAND timed out (its status was %d)", returncode)
        return EXIT_TIMEOUT
    status = exit_status(returncode)
    logger.info("COMMAND exited with status %d", status)
    return status


def _wait(popen: "subprocess.Popen[Any]", job: Job, forwarder: _Forwarder,
          timeout: Optional[float], kill_after: Optional[float],
          stop_signal: Optional[int]) -> bool:
    """Wait for COMMAND, applying --timeout/--kill-after; True if it timed out."""
    start = time.monotonic()
    stop_at = None if timeout is None else start + timeout
    kill_at: Optional[float] = None
    timed_out = False
    # Slices keep the main thread returning to the interpreter, where signal handlers run
    # (a Windows wait is not interrupted by Ctrl-C) and where the deadlines are checked.
    slice_s = 0.1 if IS_WINDOWS else 0.25
    while True:
        now = time.monotonic()
        next_deadline = kill_at if timed_out else stop_at
        wait_s = slice_s if next_deadline is None else max(0.0, min(slice_s, next_deadline - now))
        try:
            popen.wait(wait_s)
            return timed_out
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if not timed_out and stop_at is not None and now >= stop_at:
            timed_out = True
            logger.warning("timeout after %.3g s: stopping COMMAND", timeout)
            forwarder.send_stop(stop_signal, job)
            if kill_after is not None:
                kill_at = now + kill_after
        elif timed_out and kill_at is not None and now >= kill_at:
            logger.warning("COMMAND still running %.3g s after the timeout: killing the job",
                           kill_after)
            _terminate(job, popen)
            kill_at = None


def _report_leftovers(job: Job) -> None:
    try:
        left = job.pids()
    except (OSError, NotImplementedError):
        return
    if left:
        logger.info("COMMAND exited; killing %d process(es) it left behind: %s",
                    len(left), " ".join(map(str, left)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    options = parse_args(argv)
    configure_logging(options.verbose, options.quiet)
    status = run(options)
    return _exit_code_for_os(status)


__all__ = ["main", "run", "parse_args", "build_parser", "exit_status", "parse_size",
           "parse_duration", "parse_signal", "EXIT_TIMEOUT", "EXIT_PGJOB_FAILED",
           "EXIT_CANNOT_EXECUTE", "EXIT_NOT_FOUND"]
