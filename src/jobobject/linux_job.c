/* linux_job.c: the life of a job's PID namespace: its init (PID 1, started once per Job, and
 * the reaper of protect_children()), which dies with the owner or on command, and the
 * unshare/setns wrappers protect_children() uses. */
#include "jobobject.h"

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* In drain mode the init checks this often whether anyone is left in its namespace: members
 * are children of the owner, not of the init, so their exits don't wake it. */
#define DRAIN_CHECK_MS 100

/* struct clone_args of clone3(2), spelled out so <linux/sched.h> need not fight <sched.h>. */
struct pgjob_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
};

static pid_t
clone3_pidfd(uint64_t flags, int *pidfd)
{
    struct pgjob_clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = flags | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.exit_signal = SIGCHLD;
    /* No stack given: the child returns from this syscall on a copy of ours, like fork(). */
    return (pid_t)syscall(SYS_clone3, &args, sizeof(args));
}

/* ---- async-signal-safe helpers: everything below until start_init runs in a fork of a
 * threaded process ---- */

static void
write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* the owner is gone: nobody to tell */
        }
        p += n;
        len -= (size_t)n;
    }
}

static int
write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t len = (ssize_t)strlen(text);
    ssize_t n = write(fd, text, (size_t)len);
    int saved = errno;
    close(fd);
    errno = saved;
    return n == len ? 0 : -1;
}

/* Format "<id> <id> 1\n" without snprintf (not async-signal-safe). */
static void
format_id_map(char *out, unsigned long id)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + id % 10);
        id /= 10;
    } while (id != 0);
    char *p = out;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = n - 1; i >= 0; i--)
            *p++ = digits[i];
        *p++ = ' ';
    }
    *p++ = '1';
    *p++ = '\n';
    *p = '\0';
}

/* In a fresh user namespace, map our own uid and gid onto themselves, so the job's programs
 * see the owner's real ids. Allowed to an unprivileged process for exactly this one mapping. */
static int
map_own_ids(uid_t uid, gid_t gid)
{
    char line[64];
    format_id_map(line, (unsigned long)uid);
    if (write_file("/proc/self/uid_map", line) < 0)
        return -1;
    if (write_file("/proc/self/setgroups", "deny") < 0 && errno != ENOENT)
        return -1;
    format_id_map(line, (unsigned long)gid);
    return write_file("/proc/self/gid_map", line);
}

static int
owner_gone(int owner_pidfd)
{
    struct pollfd fd = {owner_pidfd, POLLIN, 0};
    return poll(&fd, 1, 0) > 0;
}

struct init_config {
    int owner_pidfd;
    int control_fd;
    int map_ids;
    uid_t uid;
    gid_t gid;
    int arm_pdeathsig;
    int on_owner_exit;  /* PGJOB_INIT_KILL or PGJOB_INIT_DRAIN */
    int on_eof;         /* PGJOB_INIT_KILL, PGJOB_INIT_DRAIN or PGJOB_INIT_IGNORE */
};

/* What the init sends back once it is set up: the step that failed (0: none) and its errno. */
struct init_report {
    int step;
    int err;
};

static const char *const init_steps[] = {
    NULL, "write /proc/self/uid_map", "setsid", "sigaction(SIGCHLD)", "prctl(PR_SET_PDEATHSIG)",
};

/* PID 1 of a job's namespace. When it exits, for whatever reason, the kernel SIGKILLs every
 * process in the namespace. Members are children of the owner (they enter the namespace
 * through setns, see linux_spawn.c); only orphans are reparented here, and SIGCHLD=SIG_IGN
 * makes the kernel reap them. Every signal stays blocked (the owner blocked them around
 * clone3) and none is ever read: nothing but SIGKILL, which only the owner's namespace can
 * send an init, ends it from outside. It decides to go when
 *   - the owner process has exited (its pidfd turns readable only when the whole process
 *     has, not one thread) or closed its end of the control socket (exec, death):
 *     on_owner_exit / on_eof say whether to exit now (kill_on_close) or to drain;
 *   - "terminate": kill(-1, SIGKILL) reaches every process of the namespace but us, and the
 *     job stays usable; "detach": drain;
 *   - draining: nobody is left in the namespace (kill(-1, 0) fails with ESRCH). */
static void
init_main(const struct init_config *c)
{
    struct init_report report = {0, 0};
    struct sigaction sa;
    int keep[2];

    /* Hold none of the owner's descriptors: its pipes must see EOF when it closes them. */
    keep[0] = c->owner_pidfd < c->control_fd ? c->owner_pidfd : c->control_fd;
    keep[1] = c->owner_pidfd < c->control_fd ? c->control_fd : c->owner_pidfd;
    pgjob_close_fds_except(0, keep, 2);

    if (c->map_ids && map_own_ids(c->uid, c->gid) < 0) {
        report.step = 1;
        goto report;
    }
    /* Out of the owner's session and process group: a terminal's Ctrl-C or hangup is for the
     * programs (which still get it), not for the job. */
    if (setsid() < 0) {
        report.step = 2;
        goto report;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGCHLD, &sa, NULL) < 0) {
        report.step = 3;
        goto report;
    }
    /* Second line of defence for a *stopped* init, which can't poll the owner's pidfd: the
     * kernel's SIGKILL reaches it anyway (forced: it comes from an ancestor namespace). The
     * signal follows the parent *thread* (golang/go#27505): Python starts the init from the
     * main thread or one that lives as long as the process. An owner that died before this
     * line is caught below by its pidfd, which is readable then. */
    if (c->arm_pdeathsig && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
        report.step = 4;
        goto report;
    }
    if (chdir("/") < 0) {
        /* only to release the owner's cwd; staying is harmless */
    }
report:
    if (report.step != 0)
        report.err = errno;
    write_all(c->control_fd, &report, sizeof(report));
    if (report.step != 0)
        _exit(PGJOB_INIT_FAILED_EXIT);

    struct pollfd fds[2] = {{c->owner_pidfd, POLLIN, 0}, {c->control_fd, POLLIN, 0}};
    int draining = 0, action;
    if (owner_gone(c->owner_pidfd)) {
        fds[0].fd = -1;
        if (c->on_owner_exit == PGJOB_INIT_KILL)
            _exit(PGJOB_INIT_OWNER_GONE_EXIT);
        draining = 1;
    }
    for (;;) {
        if (draining && kill(-1, 0) < 0 && errno == ESRCH)
            _exit(0); /* the namespace is empty and nobody will spawn into it again */
        if (poll(fds, 2, draining ? DRAIN_CHECK_MS : -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(PGJOB_INIT_FAILED_EXIT);
        }
        action = PGJOB_INIT_IGNORE;
        if (fds[0].revents != 0) {
            fds[0].fd = -1;
            action = c->on_owner_exit;
        }
        if (fds[1].revents != 0) {
            char command;
            ssize_t got = read(fds[1].fd, &command, 1);
            if (got < 0 && (errno == EINTR || errno == EAGAIN)) {
                /* nothing to read after all: poll again */
            } else if (got <= 0) {
                /* The owner's end is closed: exec, death, or a closed job. */
                close(fds[1].fd);
                fds[1].fd = -1;
                if (c->on_eof > action)
                    action = c->on_eof;
            } else if (command == PGJOB_INIT_TERMINATE) {
                /* Every process of the namespace but us. One call is enough even against
                 * a forking member: the kernel restarts a fork that a fatal signal hits. */
                /* Only as PID 1: anywhere else kill(-1) would reach every process this
                 * uid may signal outside the namespace. */
                if (getpid() == 1)
                    kill(-1, SIGKILL);
                write_all(fds[1].fd, &command, 1);
            } else if (command == PGJOB_INIT_DETACH && action < PGJOB_INIT_DRAIN) {
                action = PGJOB_INIT_DRAIN;
            }
        }
        if (action == PGJOB_INIT_KILL)
            _exit(PGJOB_INIT_OWNER_GONE_EXIT); /* the kernel now kills the namespace */
        if (action == PGJOB_INIT_DRAIN && !draining) {
            /* From now on the members outlive the owner: so must we. */
            prctl(PR_SET_PDEATHSIG, 0);
            fds[0].fd = -1;
            draining = 1;
        }
    }
}

/* start_init(clone_flags, map_ids, on_owner_exit, on_eof, arm_pdeathsig) -> (pid, pidfd, control_fd)
 *
 * clone3(clone_flags) a copy of this process that becomes an init: PID 1 of a new PID
 * namespace (CLONE_NEWPID, plus CLONE_NEWUSER without CAP_SYS_ADMIN, then map_ids), or, with
 * clone_flags 0 right after unshare(CLONE_NEWPID), of the namespace this thread's children
 * now go to. Returns once the init is set up; control_fd (close-on-exec) is the owner's end
 * of a socket to it: write PGJOB_INIT_TERMINATE (answered with the same byte once the
 * members are killed) or PGJOB_INIT_DETACH; closing it is on_eof. */
PyObject *
linux_start_init(PyObject *self, PyObject *args)
{
    unsigned long long flags;
    struct init_config c;
    struct init_report report = {0, 0};
    int map_ids, arm_pdeathsig, sv[2], pidfd = -1, saved_errno = 0;
    ssize_t got = 0;
    sigset_t all, old;
    pid_t pid;

    (void)self;
    memset(&c, 0, sizeof(c));
    if (!PyArg_ParseTuple(args, "Kpiip:start_init", &flags, &map_ids, &c.on_owner_exit,
                          &c.on_eof, &arm_pdeathsig))
        return NULL;
    c.map_ids = map_ids;
    c.arm_pdeathsig = arm_pdeathsig;
    c.uid = geteuid();
    c.gid = getegid();
    /* Every descriptor here above 2 (pgjob_fd_above_stdio): the owner keeps sv[0] and the
     * init's pidfd; the init keeps the other two. */
    if ((c.owner_pidfd = pgjob_fd_above_stdio((int)syscall(SYS_pidfd_open, getpid(), 0))) < 0)
        return pgjob_last_error("pidfd_open");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        saved_errno = errno;
        close(c.owner_pidfd);
        return pgjob_oserror("socketpair", (unsigned long)saved_errno);
    }
    sv[0] = pgjob_fd_above_stdio(sv[0]);
    sv[1] = pgjob_fd_above_stdio(sv[1]);
    if (sv[0] < 0 || sv[1] < 0) {
        saved_errno = errno;
        if (sv[0] >= 0)
            close(sv[0]);
        if (sv[1] >= 0)
            close(sv[1]);
        close(c.owner_pidfd);
        return pgjob_oserror("fcntl(F_DUPFD_CLOEXEC)", (unsigned long)saved_errno);
    }
    c.control_fd = sv[1];

    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    Py_BEGIN_ALLOW_THREADS
    pid = clone3_pidfd(flags, &pidfd);
    if (pid == 0)
        init_main(&c); /* never returns */
    saved_errno = errno;
    if (pid > 0) {
        do {
            got = read(sv[0], &report, sizeof(report));
        } while (got < 0 && errno == EINTR);
        if (got != (ssize_t)sizeof(report))
            saved_errno = got < 0 ? errno : EPIPE;
    }
    Py_END_ALLOW_THREADS
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(sv[1]);
    close(c.owner_pidfd);
    if (pid < 0) {
        close(sv[0]);
        return pgjob_oserror("clone3", (unsigned long)saved_errno);
    }
    /* CLONE_PIDFD takes the lowest free descriptor. */
    if (got == (ssize_t)sizeof(report) && report.step == 0
            && (pidfd = pgjob_fd_above_stdio(pidfd)) < 0) {
        saved_errno = errno;
        kill(pid, SIGKILL); /* our unreaped child: the pid is still its own */
        Py_BEGIN_ALLOW_THREADS
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        Py_END_ALLOW_THREADS
        close(sv[0]);
        return pgjob_oserror("fcntl(F_DUPFD_CLOEXEC) of the init's pidfd",
                             (unsigned long)saved_errno);
    }
    if (got != (ssize_t)sizeof(report) || report.step != 0) {
        /* The init exits on its own after a failed step; reap it. */
        Py_BEGIN_ALLOW_THREADS
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        Py_END_ALLOW_THREADS
        close(pidfd);
        close(sv[0]);
        if (got != (ssize_t)sizeof(report))
            return pgjob_oserror("read(init handshake)", (unsigned long)saved_errno);
        return pgjob_oserror(init_steps[report.step], (unsigned long)report.err);
    }
    PGJOB_TRACE("clone3(flags=0x%llx) -> init pid %d, pidfd %d, control fd %d", flags, (int)pid,
                pidfd, sv[0]);
    return Py_BuildValue("(iii)", (int)pid, pidfd, sv[0]);
}

/* unshare(flags) -> None */
PyObject *
linux_unshare(PyObject *self, PyObject *args)
{
    int flags;

    (void)self;
    if (!PyArg_ParseTuple(args, "i:unshare", &flags))
        return NULL;
    if (unshare(flags) < 0)
        return pgjob_last_error("unshare");
    PGJOB_TRACE("unshare(0x%x) -> 0", flags);
    Py_RETURN_NONE;
}

/* setns(fd, nstype) -> None */
PyObject *
linux_setns(PyObject *self, PyObject *args)
{
    int fd, nstype;

    (void)self;
    if (!PyArg_ParseTuple(args, "ii:setns", &fd, &nstype))
        return NULL;
    if (setns(fd, nstype) < 0)
        return pgjob_last_error("setns");
    PGJOB_TRACE("setns(%d, 0x%x) -> 0", fd, nstype);
    Py_RETURN_NONE;
}
