/* helper.h: pgjob-helper, the small program pgjob execs for its helper processes on Linux
 * (never a copy-on-write fork of the interpreter). One executable, one mode per file:
 *   init.c   `pgjob-helper init ...`   PID 1 of a job's PID namespace
 *   watch.c  `pgjob-helper watch ...`  kills a job's cgroup when its owner dies
 *   common.c what the modes share (number parsing, fd closing, writes)
 * It needs nothing but libc, and only symbols old enough for the manylinux2014 floor
 * (GLIBC_2.17): the extension (src/jobobject/jobobject.h) includes this header for the
 * protocol's numbers, and the helper may be built against a newer glibc than it runs on. */
#ifndef PGJOB_HELPER_H
#define PGJOB_HELPER_H

#include <stddef.h>

int helper_init_main(int argc, char **argv);
int helper_watch_main(int argc, char **argv);

/* Exit status when the command line is wrong (a pgjob version mismatch, never a user error). */
#define HELPER_USAGE_EXIT 64

/* ---- the init's protocol (init.c; the owner's side is src/jobobject/linux_job.c) ---- */
/* Descriptors the init finds at start: the control socket and the owner's pidfd. */
#define HELPER_INIT_CONTROL_FD 3
#define HELPER_INIT_OWNER_PIDFD 4
/* What the init does when the owner exits or closes its end of the control socket. */
#define HELPER_INIT_IGNORE 0
#define HELPER_INIT_DRAIN 1   /* stay until the namespace is empty, then exit */
#define HELPER_INIT_KILL 2    /* exit now: the kernel kills the namespace */
/* Commands the owner writes to the control socket. */
#define HELPER_INIT_TERMINATE 't'
#define HELPER_INIT_DETACH 'd'
/* Exit codes, for whoever looks at the init with ps or a debugger. */
#define HELPER_INIT_FAILED_EXIT 125     /* could not set up (errno went to the owner) */
#define HELPER_INIT_OWNER_GONE_EXIT 137 /* the owner or the job is gone: the namespace dies */
/* The one message the init sends unasked, when its setup failed: the step, and errno. */
struct helper_init_report {
    int step;
    int err;
};
#define HELPER_INIT_STEP_SETSID 1
#define HELPER_INIT_STEP_SIGCHLD 2
#define HELPER_INIT_STEP_PDEATHSIG 3

/* ---- common.c ---- */
/* A decimal number (optional '-', digits only, no overflow) into *out: 0, else -1. Parsed by
 * hand: strtol is __isoc23_strtol@GLIBC_2.38 when built with C23-era headers. */
int helper_parse_long(const char *text, long *out);
/* Close every descriptor >= low (close_range, or one by one before Linux 5.9). */
void helper_close_fds_from(int low);
void helper_write_all(int fd, const void *buf, size_t len);
/* Print "pgjob-helper: usage: pgjob-helper <usage>" to stderr; returns HELPER_USAGE_EXIT. */
int helper_usage(const char *usage);

#endif
