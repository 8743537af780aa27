/* init.c: `pgjob-helper init`, PID 1 of a job's PID namespace. Started by the owner's
 * _jobobject.start_init (src/jobobject/linux_job.c): clone(CLONE_NEWPID [|CLONE_NEWUSER] |
 * CLONE_VM | CLONE_VFORK) on a small stack of the owner's, then execve of this program, so it
 * holds no copy of the owner's memory. When it exits, for whatever reason, the kernel SIGKILLs
 * every process in the namespace.
 *
 *   pgjob-helper init ON_OWNER_EXIT ON_EOF ARM_PDEATHSIG REPORT
 *
 * with the control socket (to the owner) on fd 3 and the owner's pidfd on fd 4, every other
 * descriptor closed, and every signal blocked (the owner blocked them around the clone; the
 * mask survives exec). ON_OWNER_EXIT and ON_EOF are PGJOB_INIT_KILL or PGJOB_INIT_DRAIN (ON_EOF
 * also PGJOB_INIT_IGNORE); the numbers and command bytes are jobobject.h's, repeated in helper.h.
 *
 * It makes raw system calls only (common_sys.h), so that on x86_64 it needs nothing of libc,
 * not even its startup (common_entry.c).
 *
 * Protocol on the control socket (as the forked init it replaces had, but for the report):
 *   init -> owner  struct helper_init_report once set up (step 0) or failed (step, errno;
 *                  the init then exits). With REPORT 0 only a failure is reported: the owner
 *                  does not wait, and sees an exit on the init's pidfd. REPORT 1 is for an init
 *                  in a new user namespace: the owner writes its id maps only once the init
 *                  runs, because only then is it dumpable (until exec has set that, the new
 *                  mm carries the owner's flag, and a non-dumpable task's /proc files are
 *                  root's: the owner that setuid()'d from root would get EACCES);
 *   owner -> init  'TERMINATE': kill(-1, SIGKILL) inside the namespace, answered with the same
 *                  byte; 'DETACH': drain, answered with the same byte once PR_SET_PDEATHSIG is
 *                  off (until then the owner's death would still take the namespace down);
 *                  EOF (the owner exec'd, died or closed the job): ON_EOF.
 * The init decides to go when the owner process has exited (its pidfd turns readable only when
 * the whole process has) or closed its end: ON_OWNER_EXIT / ON_EOF say whether to exit now
 * (kill_on_close) or to drain: stay until nobody is left in the namespace (kill(-1, 0) fails
 * with ESRCH, checked every DRAIN_CHECK_MS: members are children of the owner, so their exits
 * don't wake us). Members are the owner's children; only orphans are reparented here, and
 * SIGCHLD = SIG_IGN makes the kernel reap them. */
#include "helper.h"
#include "common_sys.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <time.h>

/* Checked this often while draining, for whether anyone is left in the namespace. */
static const struct timespec drain_check = {0, 100 * 1000 * 1000};

static void
write_all(int fd, const void *buf, unsigned long len)
{
    const char *p = buf;
    while (len > 0) {
        long n = h_write(fd, p, len);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return; /* the owner is gone: nobody to tell */
        p += n;
        len -= (unsigned long)n;
    }
}

static int
usage(void)
{
    static const char text[] = "pgjob-helper: usage: pgjob-helper init ON_OWNER_EXIT ON_EOF "
                               "ARM_PDEATHSIG REPORT (a helper process of the pgjob library)\n";
    write_all(2, text, sizeof(text) - 1);
    return HELPER_USAGE_EXIT;
}

static void
close_fds_from(int low)
{
    if (h_close_range(low, ~0u) == 0)
        return;
    /* Kernels before 5.9: one by one, up to the descriptor limit. */
    unsigned long limits[2] = {4096, 4096};
    long last = 4096;
    if (h_prlimit_nofile(limits) == 0 && limits[0] < (1ul << 20))
        last = (long)limits[0];
    for (long fd = low; fd < last; fd++)
        h_close(fd);
}

static int
owner_gone(int owner_pidfd)
{
    static const struct timespec now = {0, 0};
    struct pollfd fd;
    fd.fd = owner_pidfd;
    fd.events = POLLIN;
    fd.revents = 0;
    return h_ppoll(&fd, 1, &now) > 0;
}

int
helper_init_main(int argc, char **argv)
{
    struct helper_init_report report;
    struct helper_kernel_sigaction sa;
    struct pollfd fds[2];
    long on_owner_exit, on_eof, arm_pdeathsig, report_always, ret = 0;
    const int control_fd = HELPER_INIT_CONTROL_FD, owner_pidfd = HELPER_INIT_OWNER_PIDFD;
    int draining = 0;

    if (argc != 5 || helper_parse_long(argv[1], &on_owner_exit) < 0
            || helper_parse_long(argv[2], &on_eof) < 0
            || helper_parse_long(argv[3], &arm_pdeathsig) < 0
            || helper_parse_long(argv[4], &report_always) < 0)
        return usage();

    /* Whatever started us: no signal may end us but SIGKILL, and we hold nothing but our two
     * descriptors (a pipe of the owner's must see EOF when the owner closes it). */
    h_sigprocmask_all();
    close_fds_from(HELPER_INIT_OWNER_PIDFD + 1);

    report.step = 0;
    report.err = 0;
    /* Out of the owner's session and process group: a terminal's Ctrl-C or hangup is for the
     * programs (which still get it), not for the job. */
    if ((ret = h_setsid()) < 0) {
        report.step = HELPER_INIT_STEP_SETSID;
        goto report;
    }
    sa.handler = SIG_IGN;
    sa.flags = 0;
    sa.restorer = 0;
    sa.mask = 0;
    if ((ret = h_sigaction(SIGCHLD, &sa)) < 0) {
        report.step = HELPER_INIT_STEP_SIGCHLD;
        goto report;
    }
    /* Second line of defence for a *stopped* init, which can't poll the owner's pidfd: the
     * kernel's SIGKILL reaches it anyway (forced: it comes from an ancestor namespace). The
     * signal follows the parent *thread* (golang/go#27505): Python starts the init from the
     * main thread or one that lives as long as the process. An owner that died before this
     * line is caught below by its pidfd, which is readable then. */
    if (arm_pdeathsig && (ret = h_prctl(PR_SET_PDEATHSIG, SIGKILL)) < 0) {
        report.step = HELPER_INIT_STEP_PDEATHSIG;
        goto report;
    }
    h_chdir("/"); /* only to release the owner's cwd; staying is harmless */
report:
    if (report.step != 0)
        report.err = (int)-ret;
    if (report.step != 0 || report_always)
        write_all(control_fd, &report, sizeof(report));
    if (report.step != 0)
        return HELPER_INIT_FAILED_EXIT;

    fds[0].fd = owner_pidfd;
    fds[1].fd = control_fd;
    fds[0].events = fds[1].events = POLLIN;
    fds[0].revents = fds[1].revents = 0;
    if (owner_gone(owner_pidfd)) {
        fds[0].fd = -1;
        if (on_owner_exit == HELPER_INIT_KILL)
            return HELPER_INIT_OWNER_GONE_EXIT;
        draining = 1;
    }
    for (;;) {
        long action;
        int detach_asked = 0;
        if (draining && h_kill(-1, 0) == -ESRCH)
            return 0; /* the namespace is empty and nobody will spawn into it again */
        ret = h_ppoll(fds, 2, draining ? &drain_check : NULL);
        if (ret == -EINTR)
            continue;
        if (ret < 0)
            return HELPER_INIT_FAILED_EXIT;
        action = HELPER_INIT_IGNORE;
        if (fds[0].fd >= 0 && fds[0].revents != 0) {
            fds[0].fd = -1;
            action = on_owner_exit;
        }
        if (fds[1].fd >= 0 && fds[1].revents != 0) {
            char command;
            long got = h_read(fds[1].fd, &command, 1);
            if (got == -EINTR || got == -EAGAIN) {
                /* nothing to read after all: poll again */
            } else if (got <= 0) {
                /* The owner's end is closed: exec, death, or a closed job. After DETACH it is
                 * the detach itself (the owner closes its end next), so it ends nothing: the
                 * members outlive the job, as asked. */
                h_close(fds[1].fd);
                fds[1].fd = -1;
                if (!draining && on_eof > action)
                    action = on_eof;
            } else if (command == HELPER_INIT_TERMINATE) {
                /* Every process of the namespace but us. One call is enough even against
                 * a forking member: the kernel restarts a fork that a fatal signal hits.
                 * Only as PID 1: anywhere else kill(-1) would reach every process this
                 * uid may signal outside the namespace. */
                if (h_getpid() == 1)
                    h_kill(-1, SIGKILL);
                write_all(fds[1].fd, &command, 1);
            } else if (command == HELPER_INIT_DETACH) {
                if (action < HELPER_INIT_DRAIN)
                    action = HELPER_INIT_DRAIN;
                detach_asked = 1;
            }
        }
        if (action == HELPER_INIT_KILL)
            return HELPER_INIT_OWNER_GONE_EXIT; /* the kernel now kills the namespace */
        if (action == HELPER_INIT_DRAIN && !draining) {
            /* From now on the members outlive the owner: so must we. */
            h_prctl(PR_SET_PDEATHSIG, 0);
            fds[0].fd = -1;
            draining = 1;
        }
        if (detach_asked) {
            /* Draining now, whatever the owner does next: say so. */
            char answer = HELPER_INIT_DETACH;
            write_all(fds[1].fd, &answer, 1);
        }
    }
}
