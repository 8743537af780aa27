/* helper.h: pgjob-helper, the small program pgjob execs for its helper processes on Linux
 * (never a copy-on-write fork of the interpreter). One executable, one mode per file:
 *   init.c   `pgjob-helper init ...`   PID 1 of a job's PID namespace
 *   watch.c  `pgjob-helper watch ...`  kills a job's cgroup when its owner dies
 * It needs nothing but libc, and is built by setup.py next to the extension (pgjob/pgjob-helper). */
#ifndef PGJOB_HELPER_H
#define PGJOB_HELPER_H

int helper_init_main(int argc, char **argv);
int helper_watch_main(int argc, char **argv);

/* Exit status when the command line is wrong (a pgjob version mismatch, never a user error). */
#define HELPER_USAGE_EXIT 64

#endif
