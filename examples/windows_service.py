"""A Windows service (pywin32) that runs a server program and guarantees that the program and
everything it starts die with the service process, however the service process ends:
a clean stop, a crash, or the Service Control Manager / Task Manager killing it.

    pip install pgjob pywin32
    python windows_service.py --startup auto install
    python windows_service.py start
    python windows_service.py stop
    python windows_service.py remove

The command to run comes from the PGJOB_SERVICE_COMMAND environment variable of the service
(a JSON list), defaulting to a harmless `python -m http.server` on 127.0.0.1:8765.
"""
import json
import os
import subprocess
import sys

import servicemanager
import win32event
import win32service
import win32serviceutil

import pgjob

DEFAULT_COMMAND = [sys.executable, "-m", "http.server", "8765", "--bind", "127.0.0.1"]
STOP_GRACE_SECONDS = 20


class PgjobService(win32serviceutil.ServiceFramework):
    _svc_name_ = "PgjobExample"
    _svc_display_name_ = "pgjob example service"
    _svc_description_ = "Runs a server whose process tree dies with the service (pgjob)."

    def __init__(self, args):
        super().__init__(args)
        self.stop_requested = win32event.CreateEvent(None, True, False, None)
        self.server = None

    def SvcStop(self):
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, waitHint=STOP_GRACE_SECONDS * 1000)
        win32event.SetEvent(self.stop_requested)

    def SvcDoRun(self):
        # First thing, before any child exists: this process joins a kill-on-close Job Object,
        # so every process it creates from now on (and their children) is a member, and the
        # kernel kills them all when this process exits by any means. A service host may have
        # put us in a job already; nested jobs (Windows 8+) make that work, and where the outer
        # job forbids it protect_children() logs why and returns a Job with mechanism "none".
        job = pgjob.protect_children()
        servicemanager.LogInfoMsg(f"{self._svc_name_}: orphan protection mechanism={job.mechanism}")
        command = json.loads(os.environ.get("PGJOB_SERVICE_COMMAND", "null")) or DEFAULT_COMMAND
        # No console for a service: the child can't get Ctrl events, so stopping it is a
        # terminate after the grace period (a real server would get a stop request over its
        # own channel first, e.g. `pg_ctl stop`).
        self.server = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                       creationflags=subprocess.CREATE_NO_WINDOW)
        servicemanager.LogInfoMsg(f"{self._svc_name_}: started pid {self.server.pid}: {command}")
        server_handle = int(self.server._handle)  # waitable together with the stop event
        which = win32event.WaitForMultipleObjects([self.stop_requested, server_handle], False,
                                                  win32event.INFINITE)
        if which == win32event.WAIT_OBJECT_0 + 1:
            servicemanager.LogErrorMsg(f"{self._svc_name_}: server exited with {self.server.wait()}")
        else:
            self.server.terminate()
            try:
                self.server.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                pass
        # Anything the server left behind (workers, helpers) is killed by the job when this
        # process exits; job.terminate() would do it now, but it would spare only us anyway.
        servicemanager.LogInfoMsg(f"{self._svc_name_}: stopped")


if __name__ == "__main__":
    if len(sys.argv) == 1:
        # Started by the Service Control Manager.
        servicemanager.Initialize()
        servicemanager.PrepareToHostSingle(PgjobService)
        servicemanager.StartServiceCtrlDispatcher()
    else:
        win32serviceutil.HandleCommandLine(PgjobService)
