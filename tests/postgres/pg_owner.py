"""The owner process of the PostgreSQL crash test: starts the postmaster (COMMAND after `--`)
either in a pgjob kill-on-close job (`--mode pgjob`, the library path a service wrapper
would use), with plain subprocess after pgjob.protect_children() (`--mode protect`, the
PostgreSQL patch's one call), or with plain subprocess alone (`--mode plain`, the control),
reports its pid on stdout as a JSON line, and waits until the test kills it.

Run as: python pg_owner.py --mode pgjob|protect|plain -- postgres -D ... -p ... -k ...
"""
import argparse
import json
import os
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("pgjob", "protect", "plain"), required=True)
    parser.add_argument("--log", required=True, help="file that receives the server's stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    with open(args.log, "ab") as log:
        if args.mode == "pgjob":
            import pgjob

            job = pgjob.Job(kill_on_close=True, on_unavailable="raise")
            server = job.popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            mechanism = job.mechanism
        elif args.mode == "protect":
            import pgjob

            # Raise rather than run unprotected: the test must not pass by accident.
            job = pgjob.protect_children(on_unavailable="raise")
            server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            mechanism = job.mechanism
        else:
            server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            mechanism = "none"
    print(json.dumps({"owner": os.getpid(), "server": server.pid, "mechanism": mechanism}),
          flush=True)
    sys.exit(server.wait())


if __name__ == "__main__":
    main()
