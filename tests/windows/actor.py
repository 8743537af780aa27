"""A small program the Windows tests run as child, grandchild and owner processes.

Each role prints one JSON line on stdout once it is ready (the tests' readiness handshake),
then does its part. Run as: python actor.py ROLE [options]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)


def report(**fields):
    print(json.dumps(fields), flush=True)


def child_command(role, *extra):
    return [sys.executable, HERE, role, *extra]


def hold_forever():
    # Block until killed; stdin may be a pipe the test never writes to, or closed.
    while True:
        time.sleep(3600)


def role_sleeper(args):
    report(role="sleeper", pid=os.getpid())
    hold_forever()


def role_crasher(args):
    import ctypes
    report(role="crasher", pid=os.getpid())
    kernel32 = ctypes.windll.kernel32
    kernel32.SetErrorMode(0x0003)  # no crash dialog
    kernel32.CreateThread.restype = ctypes.c_void_p
    kernel32.CreateThread.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p]
    # A genuine, unhandled access violation (exit code 0xC0000005): a thread that starts at
    # address 0x10. Faulting inside a ctypes call would not do: ctypes catches it.
    thread = kernel32.CreateThread(None, 0, ctypes.c_void_p(0x10), None, 0, None)
    kernel32.WaitForSingleObject(ctypes.c_void_p(thread), 0xFFFFFFFF)


def role_holder(args):
    """Child that holds a listening port and spawns a grandchild holding a file exclusively."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", args.port))
    listener.listen()
    grandchild = subprocess.Popen(child_command("file_holder", "--file", args.file),
                                  stdout=subprocess.PIPE, text=True)
    line = json.loads(grandchild.stdout.readline())
    report(role="holder", pid=os.getpid(), grandchild=line["pid"])
    hold_forever()


def role_file_holder(args):
    import _winapi
    # Share mode 0: nobody else can open the file while we live (the "lock" a new owner needs).
    handle = _winapi.CreateFile(args.file, _winapi.GENERIC_READ | _winapi.GENERIC_WRITE, 0, 0,
                                4, 0, 0)  # OPEN_ALWAYS
    report(role="file_holder", pid=os.getpid(), handle=handle)
    hold_forever()


def role_tree(args):
    """Child that starts one grandchild (plain subprocess) and reports both pids."""
    grandchild = subprocess.Popen(child_command("sleeper"), stdout=subprocess.PIPE, text=True)
    line = json.loads(grandchild.stdout.readline())
    report(role="tree", pid=os.getpid(), grandchild=line["pid"])
    hold_forever()


def role_owner(args):
    """Owner: builds a job its own way, reports every member's pid, then dies as told."""
    import pgjob  # importable through the PYTHONPATH the test process passes down

    flags = int(args.creationflags, 0)
    members = []
    job = None
    if args.mode == "asyncio":
        return owner_asyncio(args)
    if args.mode == "job":
        job = pgjob.Job(kill_on_close=not args.no_kill_on_close)
        spawn = job.popen
    elif args.mode == "protect":
        job = pgjob.protect_children(breakaway=args.breakaway)
        spawn = subprocess.Popen
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    if args.child == "holder":
        cmd = child_command("holder", "--port", str(args.port), "--file", args.file)
    else:
        cmd = child_command(args.child)
    child = spawn(cmd, stdout=subprocess.PIPE, text=True, creationflags=flags)
    if flags & 0x4:  # CREATE_SUSPENDED: it can't report anything; we report for it.
        members.append(child.pid)
    else:
        line = json.loads(child.stdout.readline())
        members.append(line["pid"])
        if "grandchild" in line:
            members.append(line["grandchild"])
    report(role="owner", pid=os.getpid(), members=members, mechanism=job.mechanism,
           in_job=[pgjob.in_job(p) for p in members])
    command = sys.stdin.readline().strip()
    if command == "die":
        import _winapi
        # The crash: no atexit, no finally, no Python shutdown; the kernel closes our handles.
        _winapi.TerminateProcess(_winapi.GetCurrentProcess(), 3)
    hold_forever()


def owner_asyncio(args):
    """An asyncio program (the Proactor loop) that calls protect_children() while its loop
    runs, then uses asyncio.to_thread, asyncio.create_subprocess_exec (the tree: a child and
    its grandchild) and the Job's create_subprocess_exec (a sleeper), and dies as told."""
    import asyncio

    import pgjob

    async def body():
        assert await asyncio.to_thread(sum, [1, 2]) == 3
        job = pgjob.protect_children()
        assert await asyncio.to_thread(sum, [3, 4]) == 7
        members = []
        for create, role in ((asyncio.create_subprocess_exec, "tree"),
                             (job.create_subprocess_exec, "sleeper")):
            proc = await create(*child_command(role), stdout=asyncio.subprocess.PIPE)
            line = json.loads(await proc.stdout.readline())
            members += [line["pid"]] + ([line["grandchild"]] if "grandchild" in line else [])
        report(role="owner", pid=os.getpid(), members=members, mechanism=job.mechanism,
               in_job=[pgjob.in_job(p) for p in members])
        command = (await asyncio.to_thread(sys.stdin.readline)).strip()
        if command == "die":
            import _winapi
            _winapi.TerminateProcess(_winapi.GetCurrentProcess(), 3)
        await asyncio.sleep(3600)

    asyncio.run(body())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("role")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--file", default="")
    parser.add_argument("--mode", default="job")
    parser.add_argument("--child", default="tree")
    parser.add_argument("--creationflags", default="0")
    parser.add_argument("--no-kill-on-close", action="store_true")
    parser.add_argument("--breakaway", action="store_true")
    args = parser.parse_args()
    globals()["role_" + args.role](args)


if __name__ == "__main__":
    main()
