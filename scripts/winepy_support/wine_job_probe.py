"""Probe what Wine's Job Objects really do, with ctypes: scripts/winepy scripts/winepy_support/wine_job_probe.py

Kept so the facts pgjob's Windows backend relies on can be re-checked after a Wine upgrade.
Seen with Wine 8.0 (Debian 12), Python 3.11.9 and 3.13.11:
- CreateJobObjectW, SetInformationJobObject(ExtendedLimit, KILL_ON_JOB_CLOSE) succeed;
  QueryInformationJobObject(ExtendedLimit) succeeds but reads LimitFlags back as 0.
- AssignProcessToJobObject on a CREATE_SUSPENDED Popen child works (IsProcessInJob True);
  closing the last job handle kills it at once (exit code 0), grandchildren too; so does
  the owner dying (TerminateProcess, or SIGKILL of its Unix process).
- PROC_THREAD_ATTRIBUTE_JOB_LIST (0x2000D) is accepted and CreateProcessW puts the child in
  the job before it runs.
- Nested jobs (a 2nd AssignProcessToJobObject) succeed; completion ports get
  NEW_PROCESS(6), EXIT_PROCESS(7), ACTIVE_PROCESS_ZERO(4); TerminateJobObject sets the
  exit code; BREAKAWAY_OK / SILENT_BREAKAWAY_OK / CREATE_BREAKAWAY_FROM_JOB act as on
  Windows (breakaway without BREAKAWAY_OK: ERROR_ACCESS_DENIED).
- ActiveProcessLimit is accepted but not enforced.
"""
import ctypes
import subprocess
import sys
import time
from ctypes import wintypes as w

k32 = ctypes.WinDLL("kernel32", use_last_error=True)
ntdll = ctypes.WinDLL("ntdll")

HANDLE = w.HANDLE
k32.CreateJobObjectW.restype = HANDLE
k32.CreateJobObjectW.argtypes = [ctypes.c_void_p, w.LPCWSTR]
k32.SetInformationJobObject.argtypes = [HANDLE, ctypes.c_int, ctypes.c_void_p, w.DWORD]
k32.QueryInformationJobObject.argtypes = [HANDLE, ctypes.c_int, ctypes.c_void_p, w.DWORD, ctypes.c_void_p]
k32.AssignProcessToJobObject.argtypes = [HANDLE, HANDLE]
k32.IsProcessInJob.argtypes = [HANDLE, HANDLE, ctypes.POINTER(w.BOOL)]
k32.CloseHandle.argtypes = [HANDLE]
k32.WaitForSingleObject.argtypes = [HANDLE, w.DWORD]
k32.WaitForSingleObject.restype = w.DWORD
k32.GetExitCodeProcess.argtypes = [HANDLE, ctypes.POINTER(w.DWORD)]
k32.TerminateJobObject.argtypes = [HANDLE, ctypes.c_uint]
k32.OpenProcess.restype = HANDLE
k32.OpenProcess.argtypes = [w.DWORD, w.BOOL, w.DWORD]
k32.CreateIoCompletionPort.restype = HANDLE
k32.CreateIoCompletionPort.argtypes = [HANDLE, HANDLE, ctypes.c_size_t, w.DWORD]
k32.GetQueuedCompletionStatus.argtypes = [HANDLE, ctypes.POINTER(w.DWORD), ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_void_p), w.DWORD]
ntdll.NtResumeProcess.argtypes = [HANDLE]
ntdll.NtResumeProcess.restype = ctypes.c_long


class IO_COUNTERS(ctypes.Structure):
    _fields_ = [(n, ctypes.c_ulonglong) for n in ("r", "w", "o", "rb", "wb", "ob")]


class BASIC_LIMIT(ctypes.Structure):
    _fields_ = [("PerProcessUserTimeLimit", ctypes.c_longlong), ("PerJobUserTimeLimit", ctypes.c_longlong),
                ("LimitFlags", w.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", w.DWORD),
                ("Affinity", ctypes.c_size_t), ("PriorityClass", w.DWORD), ("SchedulingClass", w.DWORD)]


class EXT_LIMIT(ctypes.Structure):
    _fields_ = [("Basic", BASIC_LIMIT), ("Io", IO_COUNTERS), ("ProcessMemoryLimit", ctypes.c_size_t),
                ("JobMemoryLimit", ctypes.c_size_t), ("PeakProcessMemoryUsed", ctypes.c_size_t),
                ("PeakJobMemoryUsed", ctypes.c_size_t)]


class BASIC_ACCOUNTING(ctypes.Structure):
    _fields_ = [("TotalUserTime", ctypes.c_longlong), ("TotalKernelTime", ctypes.c_longlong),
                ("ThisPeriodTotalUserTime", ctypes.c_longlong), ("ThisPeriodTotalKernelTime", ctypes.c_longlong),
                ("TotalPageFaultCount", w.DWORD), ("TotalProcesses", w.DWORD),
                ("ActiveProcesses", w.DWORD), ("TotalTerminatedProcesses", w.DWORD)]


class ASSOC_PORT(ctypes.Structure):
    _fields_ = [("CompletionKey", ctypes.c_void_p), ("CompletionPort", HANDLE)]


KILL_ON_JOB_CLOSE = 0x2000
BREAKAWAY_OK = 0x800
CREATE_SUSPENDED = 0x4
CREATE_BREAKAWAY_FROM_JOB = 0x01000000
EXTENDED_STARTUPINFO_PRESENT = 0x80000
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def report(name, value):
    print(f"{name}: {value}", flush=True)


def new_job(flags=KILL_ON_JOB_CLOSE):
    job = k32.CreateJobObjectW(None, None)
    report("  CreateJobObjectW", f"handle={job} err={ctypes.get_last_error()}")
    info = EXT_LIMIT()
    info.Basic.LimitFlags = flags
    ok = k32.SetInformationJobObject(job, 9, ctypes.byref(info), ctypes.sizeof(info))
    report("  SetInformationJobObject(ExtendedLimit, flags=%#x)" % flags, f"ok={ok} err={ctypes.get_last_error()}")
    back = EXT_LIMIT()
    ok = k32.QueryInformationJobObject(job, 9, ctypes.byref(back), ctypes.sizeof(back), None)
    report("  QueryInformationJobObject(ExtendedLimit)", f"ok={ok} flags={back.Basic.LimitFlags:#x}")
    return job


def in_job(proc_handle, job):
    res = w.BOOL()
    ok = k32.IsProcessInJob(proc_handle, job, ctypes.byref(res))
    return f"ok={ok} in_job={bool(res.value)}"


def active(job):
    acc = BASIC_ACCOUNTING()
    ok = k32.QueryInformationJobObject(job, 1, ctypes.byref(acc), ctypes.sizeof(acc), None)
    return f"ok={ok} active={acc.ActiveProcesses} total={acc.TotalProcesses}"


def alive(handle, wait_ms=0):
    return k32.WaitForSingleObject(handle, wait_ms) == 0x102   # WAIT_TIMEOUT


def exit_code(handle):
    code = w.DWORD()
    k32.GetExitCodeProcess(handle, ctypes.byref(code))
    return hex(code.value)


print(sys.version)
print("== 1. Popen(CREATE_SUSPENDED) + AssignProcessToJobObject + CloseHandle(job)")
job = new_job()
p = subprocess.Popen(SLEEPER, creationflags=CREATE_SUSPENDED)
h = int(p._handle)
report("  in job before assign", in_job(h, job))
ok = k32.AssignProcessToJobObject(job, h)
report("  AssignProcessToJobObject", f"ok={ok} err={ctypes.get_last_error()}")
report("  IsProcessInJob(job)", in_job(h, job))
report("  IsProcessInJob(NULL = any job)", in_job(h, None))
report("  NtResumeProcess", hex(ntdll.NtResumeProcess(h) & 0xFFFFFFFF))
time.sleep(0.5)
report("  accounting", active(job))
report("  alive before close", alive(h))
t = time.time()
k32.CloseHandle(job)
died = not alive(h, 5000)
report("  child died after CloseHandle(job)", f"{died} after {time.time() - t:.2f}s, exit code {exit_code(h)}")
if not died:
    p.kill()

print("== 2. grandchild: child in job starts its own child; close job")
job = new_job()
code = ("import subprocess,sys,time; c=subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']);"
        "print(c.pid, flush=True); time.sleep(60)")
p = subprocess.Popen([sys.executable, "-c", code], creationflags=CREATE_SUSPENDED, stdout=subprocess.PIPE)
h = int(p._handle)
k32.AssignProcessToJobObject(job, h)
ntdll.NtResumeProcess(h)
gpid = int(p.stdout.readline())
gh = k32.OpenProcess(0x101000 | 0x0400, False, gpid)   # SYNCHRONIZE|QUERY_LIMITED|QUERY_INFORMATION
report("  grandchild in job", in_job(gh, job))
report("  accounting", active(job))
k32.CloseHandle(job)
report("  child died", not alive(h, 5000))
report("  grandchild died", f"{not alive(gh, 5000)} exit code {exit_code(gh)}")

print("== 3. owner process dies (TerminateProcess) while holding the only job handle")
owner = r"""
import ctypes, subprocess, sys, time
from ctypes import wintypes as w
k32 = ctypes.WinDLL('kernel32', use_last_error=True)
k32.CreateJobObjectW.restype = w.HANDLE
k32.AssignProcessToJobObject.argtypes = [w.HANDLE, w.HANDLE]
k32.SetInformationJobObject.argtypes = [w.HANDLE, ctypes.c_int, ctypes.c_void_p, w.DWORD]
job = k32.CreateJobObjectW(None, None)
info = (ctypes.c_byte * 144)()
ctypes.c_uint32.from_buffer(info, 16).value = 0x2000
assert k32.SetInformationJobObject(job, 9, info, 144)
c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
assert k32.AssignProcessToJobObject(job, int(c._handle))
print(c.pid, flush=True)
time.sleep(60)
"""
o = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE)
cpid = int(o.stdout.readline())
ch = k32.OpenProcess(0x101000 | 0x0400, False, cpid)
o.kill()
o.wait()
report("  owner killed; its job child died", f"{not alive(ch, 5000)} exit code {exit_code(ch)}")

print("== 4. PROC_THREAD_ATTRIBUTE_JOB_LIST (0x2000D) via CreateProcessW")
job = new_job()


class STARTUPINFOW(ctypes.Structure):
    _fields_ = [("cb", w.DWORD), ("lpReserved", w.LPWSTR), ("lpDesktop", w.LPWSTR), ("lpTitle", w.LPWSTR),
                ("dwX", w.DWORD), ("dwY", w.DWORD), ("dwXSize", w.DWORD), ("dwYSize", w.DWORD),
                ("dwXCountChars", w.DWORD), ("dwYCountChars", w.DWORD), ("dwFillAttribute", w.DWORD),
                ("dwFlags", w.DWORD), ("wShowWindow", w.WORD), ("cbReserved2", w.WORD),
                ("lpReserved2", ctypes.c_void_p), ("hStdInput", HANDLE), ("hStdOutput", HANDLE),
                ("hStdError", HANDLE)]


class STARTUPINFOEXW(ctypes.Structure):
    _fields_ = [("StartupInfo", STARTUPINFOW), ("lpAttributeList", ctypes.c_void_p)]


class PROCESS_INFORMATION(ctypes.Structure):
    _fields_ = [("hProcess", HANDLE), ("hThread", HANDLE), ("dwProcessId", w.DWORD), ("dwThreadId", w.DWORD)]


k32.InitializeProcThreadAttributeList.argtypes = [ctypes.c_void_p, w.DWORD, w.DWORD, ctypes.POINTER(ctypes.c_size_t)]
k32.UpdateProcThreadAttribute.argtypes = [ctypes.c_void_p, w.DWORD, ctypes.c_size_t, ctypes.c_void_p,
                                          ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
k32.CreateProcessW.argtypes = [w.LPCWSTR, w.LPWSTR, ctypes.c_void_p, ctypes.c_void_p, w.BOOL, w.DWORD,
                               ctypes.c_void_p, w.LPCWSTR, ctypes.c_void_p, ctypes.POINTER(PROCESS_INFORMATION)]
size = ctypes.c_size_t()
k32.InitializeProcThreadAttributeList(None, 1, 0, ctypes.byref(size))
buf = ctypes.create_string_buffer(size.value)
ok = k32.InitializeProcThreadAttributeList(buf, 1, 0, ctypes.byref(size))
report("  InitializeProcThreadAttributeList", f"ok={ok} size={size.value}")
jobs = (HANDLE * 1)(job)
ok = k32.UpdateProcThreadAttribute(buf, 0, 0x2000D, jobs, ctypes.sizeof(jobs), None, None)
report("  UpdateProcThreadAttribute(JOB_LIST)", f"ok={ok} err={0 if ok else ctypes.get_last_error()}")
si = STARTUPINFOEXW()
si.StartupInfo.cb = ctypes.sizeof(si)
si.lpAttributeList = ctypes.cast(buf, ctypes.c_void_p)
pi = PROCESS_INFORMATION()
cmd = ctypes.create_unicode_buffer(subprocess.list2cmdline(SLEEPER))
ok = k32.CreateProcessW(None, cmd, None, None, False, EXTENDED_STARTUPINFO_PRESENT, None, None,
                        ctypes.byref(si), ctypes.byref(pi))
report("  CreateProcessW(EXTENDED_STARTUPINFO_PRESENT)", f"ok={ok} err={ctypes.get_last_error()} pid={pi.dwProcessId}")
if ok:
    report("  IsProcessInJob(job)", in_job(pi.hProcess, job))
    report("  IsProcessInJob(NULL)", in_job(pi.hProcess, None))
    report("  accounting", active(job))
    k32.CloseHandle(job)
    died = not alive(pi.hProcess, 5000)
    report("  child died after CloseHandle(job)", died)
    if not died:
        k32.TerminateProcess(pi.hProcess, 1)

print("== 5. completion port messages, nested jobs, breakaway, TerminateJobObject")
job = new_job(KILL_ON_JOB_CLOSE | BREAKAWAY_OK)
port = k32.CreateIoCompletionPort(HANDLE(-1), None, 0, 1)
assoc = ASSOC_PORT(ctypes.c_void_p(0x1234), port)
ok = k32.SetInformationJobObject(job, 7, ctypes.byref(assoc), ctypes.sizeof(assoc))
report("  associate completion port", f"ok={ok} err={ctypes.get_last_error()}")
p = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], creationflags=CREATE_SUSPENDED)
h = int(p._handle)
k32.AssignProcessToJobObject(job, h)
job2 = new_job()
ok = k32.AssignProcessToJobObject(job2, h)
report("  nested: assign same process to a 2nd job", f"ok={ok} err={ctypes.get_last_error()} in_job2: {in_job(h, job2)}")
ntdll.NtResumeProcess(h)
p.wait()
msgs = []
while True:
    n, key, ov = w.DWORD(), ctypes.c_size_t(), ctypes.c_void_p()
    if not k32.GetQueuedCompletionStatus(port, ctypes.byref(n), ctypes.byref(key), ctypes.byref(ov), 1000):
        break
    msgs.append((n.value, hex(key.value), ov.value))
report("  port messages (msg, key, pid)", msgs)
b = subprocess.Popen(SLEEPER, creationflags=CREATE_SUSPENDED | CREATE_BREAKAWAY_FROM_JOB)
report("  breakaway child (parent not in job, sanity)", in_job(int(b._handle), None))
b.kill()
t = subprocess.Popen(SLEEPER, creationflags=CREATE_SUSPENDED)
th = int(t._handle)
k32.AssignProcessToJobObject(job, th)
ntdll.NtResumeProcess(th)
ok = k32.TerminateJobObject(job, 77)
report("  TerminateJobObject(77)", f"ok={ok} dead={not alive(th, 5000)} exit={exit_code(th)}")
print("== 6. is this python itself in a job?", in_job(HANDLE(-1), None))

print("== 7. breakaway rules (parent in a job)")
code = r"""
import subprocess, sys, ctypes
from ctypes import wintypes as w
k = ctypes.WinDLL('kernel32')
k.IsProcessInJob.argtypes = [w.HANDLE, w.HANDLE, ctypes.POINTER(w.BOOL)]
def injob(h):
    r = w.BOOL(); k.IsProcessInJob(w.HANDLE(h), None, ctypes.byref(r)); return bool(r.value)
for flags, name in ((0, 'plain'), (0x01000000, 'CREATE_BREAKAWAY_FROM_JOB')):
    try:
        b = subprocess.Popen([sys.executable, '-c', 'pass'], creationflags=flags)
        print(name, 'child in job:', injob(int(b._handle)), flush=True); b.wait()
    except OSError as e:
        print(name, 'CreateProcess failed:', e, flush=True)
"""
for limit, name in ((0, "no breakaway flags"), (BREAKAWAY_OK, "BREAKAWAY_OK"), (0x1000, "SILENT_BREAKAWAY_OK")):
    job = new_job(KILL_ON_JOB_CLOSE | limit)
    p = subprocess.Popen([sys.executable, "-c", code], creationflags=CREATE_SUSPENDED, stdout=subprocess.PIPE, text=True)
    k32.AssignProcessToJobObject(job, int(p._handle))
    ntdll.NtResumeProcess(int(p._handle))
    report(f"  [{name}]", p.communicate(timeout=30)[0].strip().replace("\n", " | "))
    k32.CloseHandle(job)

print("== 8. ActiveProcessLimit")
job = new_job(KILL_ON_JOB_CLOSE | 0x8)
info = EXT_LIMIT()
info.Basic.LimitFlags = KILL_ON_JOB_CLOSE | 0x8
info.Basic.ActiveProcessLimit = 1
report("  set ActiveProcessLimit=1", k32.SetInformationJobObject(job, 9, ctypes.byref(info), ctypes.sizeof(info)))
code = ("import subprocess,sys\ntry:\n subprocess.run([sys.executable,'-c','pass']); print('2nd process started: not enforced')"
        "\nexcept OSError as e: print('2nd process refused:', e)")
p = subprocess.Popen([sys.executable, "-c", code], creationflags=CREATE_SUSPENDED, stdout=subprocess.PIPE, text=True)
k32.AssignProcessToJobObject(job, int(p._handle))
ntdll.NtResumeProcess(int(p._handle))
report("  ", p.communicate(timeout=30)[0].strip())
k32.CloseHandle(job)
