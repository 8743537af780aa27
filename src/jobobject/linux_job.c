/* linux_job.c: the life of a job's PID namespace: starting its init (PID 1: pgjob-helper's
 * `init` mode, src/helper/init.c, exec'd so that it holds no copy of the owner's memory),
 * and nothing else: pgjob never unshares or setns()es a thread it does not give back
 * (linux_spawn.c enters a job's namespace for one clone and returns at once). */
#include "jobobject.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* What the init's CLONE_VM child reads (prepared by the owner) and writes back. */
struct init_exec {
    const char *path;
    char *const *argv;
    int control_fd;
    int owner_pidfd;
    int err;              /* execve's errno, or the failed dup's */
    const char *failed;   /* the call that failed, NULL if none */
    enum pgjob_meaning meaning; /* what that failure means */
};

/* The codes with which the kernel, a sysctl (user.max_*_namespaces), seccomp or missing
 * privileges refuse a namespace, or the calls that make one: the feature is unavailable
 * here (UnsupportedError), which is not a failure of the job. */
static enum pgjob_meaning
namespace_refusal(int err)
{
    switch (err) {
    case EPERM: case EACCES: case EINVAL: case ENOSPC: case EUSERS: case ENOSYS:
        return PGJOB_UNSUPPORTED;
    default:
        return PGJOB_UNMARKED;
    }
}

/* The init's child, until execve: a CLONE_VM|CLONE_VFORK child on one of the thread's stacks,
 * so only raw syscalls (the owner is threaded and shares this memory). It puts the control
 * socket and the owner's pidfd on the init's fixed numbers and closes everything else. */
static int
init_exec_main(void *arg)
{
    struct init_exec *x = arg;
    static char *const empty_env[] = {NULL};
    int control, owner;

    /* Up out of the way first: either may sit on 3 or 4 already. */
    if ((control = fcntl(x->control_fd, F_DUPFD_CLOEXEC, HELPER_INIT_OWNER_PIDFD + 1)) < 0
            || (owner = fcntl(x->owner_pidfd, F_DUPFD_CLOEXEC, HELPER_INIT_OWNER_PIDFD + 1)) < 0) {
        x->failed = "fcntl(F_DUPFD_CLOEXEC) in the init";
        goto fail;
    }
    /* dup2 clears close-on-exec on the new descriptor. */
    if (dup2(control, HELPER_INIT_CONTROL_FD) < 0 || dup2(owner, HELPER_INIT_OWNER_PIDFD) < 0) {
        x->failed = "dup2 in the init";
        goto fail;
    }
    pgjob_close_fds_except(HELPER_INIT_OWNER_PIDFD + 1, NULL, 0);
    close(0);
    close(1);
    close(2);
    execve(x->path, x->argv, empty_env);
    x->failed = "execve";
    /* The helper is there but can't run here (a noexec mount, a foreign architecture, a
     * seccomp filter): no namespace init to be had. */
    x->meaning = PGJOB_UNSUPPORTED;
fail:
    x->err = errno;
    _exit(127);
}

static void
reap(pid_t pid)
{
    while (waitpid(pid, NULL, __WALL) < 0 && errno == EINTR)
        ;
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

/* From the owner, after the init's exec: map our own ids (read before anything else) onto
 * themselves in its new user namespace, the one mapping an unprivileged process may write
 * (setgroups "deny" first, which an unprivileged gid_map requires). The owner does it, not
 * the init: after exec the init has no capabilities (its uid is unmapped), and the owner may
 * be non-dumpable (it setuid()'d from root), so that its own /proc files are root's. The
 * freshly exec'd init is dumpable, and its /proc files are ours. */
static const char *
map_ids_of(pid_t pid, uid_t uid, gid_t gid)
{
    static const char *const what[] = {"write /proc/<init>/setgroups",
                                       "write /proc/<init>/gid_map",
                                       "write /proc/<init>/uid_map"};
    char path[64], line[64];

    snprintf(path, sizeof(path), "/proc/%d/setgroups", (int)pid);
    if (write_file(path, "deny") < 0 && errno != ENOENT) /* ENOENT: before Linux 3.19 */
        return what[0];
    snprintf(path, sizeof(path), "/proc/%d/gid_map", (int)pid);
    snprintf(line, sizeof(line), "%lu %lu 1\n", (unsigned long)gid, (unsigned long)gid);
    if (write_file(path, line) < 0)
        return what[1];
    snprintf(path, sizeof(path), "/proc/%d/uid_map", (int)pid);
    snprintf(line, sizeof(line), "%lu %lu 1\n", (unsigned long)uid, (unsigned long)uid);
    if (write_file(path, line) < 0)
        return what[2];
    return NULL;
}

/* start_init(clone_flags, map_ids, on_owner_exit, on_eof, arm_pdeathsig, helper_path)
 *   -> (pid, pidfd, control_fd)
 *
 * clone(clone_flags | CLONE_VM | CLONE_VFORK) a child that execs `helper_path init ...`:
 * PID 1 of a new PID namespace (CLONE_NEWPID, plus CLONE_NEWUSER without CAP_SYS_ADMIN, and
 * then map_ids: we write its id maps). Returns once the
 * init runs pgjob-helper (exec'd, with its id maps written), without waiting for its setup;
 * control_fd (close-on-exec, above 2) is the owner's end
 * of a socket to it: write PGJOB_INIT_TERMINATE (answered with the same byte once the members
 * are killed) or PGJOB_INIT_DETACH; closing it is on_eof. The pidfd is above 2 too. */
PyObject *
linux_start_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"clone_flags", "map_ids", "on_owner_exit", "on_eof",
                             "arm_pdeathsig", "helper_path", NULL};
    unsigned long long flags;
    int map_ids, on_owner_exit, on_eof, arm_pdeathsig, sv[2], owner_pidfd, pidfd = -1;
    int saved_errno = 0;
    PyObject *path_obj;
    struct init_exec x;
    char on_owner_exit_text[16], on_eof_text[16], arm_text[4];
    char *argv[7];
    struct helper_init_report report = {0, 0};
    ssize_t got;
    const char *failed = NULL;
    enum pgjob_meaning meaning = PGJOB_UNMARKED;
    sigset_t all, old;
    pid_t pid;
    /* Ours, read before anything: in the new user namespace they are unmapped (overflow). */
    uid_t uid = geteuid();
    gid_t gid = getegid();

    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "KpiipO&:start_init", kwlist, &flags,
                                     &map_ids, &on_owner_exit, &on_eof, &arm_pdeathsig,
                                     PyUnicode_FSConverter, &path_obj))
        return NULL;
    snprintf(on_owner_exit_text, sizeof(on_owner_exit_text), "%d", on_owner_exit);
    snprintf(on_eof_text, sizeof(on_eof_text), "%d", on_eof);
    snprintf(arm_text, sizeof(arm_text), "%d", arm_pdeathsig ? 1 : 0);
    memset(&x, 0, sizeof(x));
    if ((x.path = PyBytes_AsString(path_obj)) == NULL) { /* (FSConverter made it bytes) */
        Py_DECREF(path_obj);
        return NULL;
    }
    argv[0] = (char *)x.path;
    argv[1] = "init";
    argv[2] = on_owner_exit_text;
    argv[3] = on_eof_text;
    argv[4] = arm_text;
    argv[5] = map_ids ? "1" : "0"; /* REPORT: see below */
    argv[6] = NULL;
    x.argv = argv;

    char *stacks = pgjob_thread_stacks();
    if (stacks == NULL) {
        saved_errno = errno;
        Py_DECREF(path_obj);
        return pgjob_oserror("mmap", (unsigned long)saved_errno);
    }
    /* Every descriptor here above 2 (pgjob_fd_above_stdio): the owner keeps sv[0] and the
     * init's pidfd; the init gets copies of the other two. */
    if ((owner_pidfd = pgjob_fd_above_stdio((int)syscall(SYS_pidfd_open, getpid(), 0))) < 0) {
        saved_errno = errno;
        Py_DECREF(path_obj);
        return pgjob_oserror_as(namespace_refusal(saved_errno), "pidfd_open",
                                (unsigned long)saved_errno);
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        saved_errno = errno;
        close(owner_pidfd);
        Py_DECREF(path_obj);
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
        close(owner_pidfd);
        Py_DECREF(path_obj);
        return pgjob_oserror("fcntl(F_DUPFD_CLOEXEC)", (unsigned long)saved_errno);
    }
    x.control_fd = sv[1];
    x.owner_pidfd = owner_pidfd;

    /* Every signal blocked: no handler of the owner's may run in the child that shares its
     * memory, and the init keeps the mask across exec (it never unblocks one). */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    Py_BEGIN_ALLOW_THREADS
    /* CLONE_VFORK: we go on once the child has exec'd (or failed to). */
    pid = pgjob_clone_vm(init_exec_main, &x, stacks, PGJOB_CHILD_STACK_SIZE,
                         (int)flags | CLONE_VM | CLONE_VFORK | SIGCHLD, &pidfd, -1);
    saved_errno = errno;
    if (pid < 0) {
        failed = "clone";
        meaning = namespace_refusal(saved_errno);
    } else if (x.failed != NULL) {
        failed = x.failed;
        saved_errno = x.err;
        meaning = x.meaning;

    } else if (map_ids) {
        /* Only once the init runs is it dumpable, its /proc files ours (init.c, REPORT). */
        do {
            got = read(sv[0], &report, sizeof(report));
        } while (got < 0 && errno == EINTR);
        if (got != (ssize_t)sizeof(report)) {
            saved_errno = got < 0 ? errno : EPIPE;
            failed = "read(init handshake)";
        } else if (report.step != 0) {
            saved_errno = report.err;
            failed = report.step == HELPER_INIT_STEP_SETSID ? "setsid (in the init)"
                     : report.step == HELPER_INIT_STEP_SIGCHLD ? "sigaction(SIGCHLD) (in the init)"
                     : "prctl(PR_SET_PDEATHSIG) (in the init)";
        } else if ((failed = map_ids_of(pid, uid, gid)) != NULL) {
            saved_errno = errno;
            meaning = namespace_refusal(saved_errno);
        }
    }
    /* Otherwise no handshake: the init's own setup (setsid, sigaction, prctl) can't fail in
     * a fresh process, so we don't wait for it; it goes on while the caller spawns its first
     * member. A failed step is written to the socket before the init exits, and an init that
     * exits shows on its pidfd: the next spawn finds the namespace gone (see _linux.py). */
    if (pid > 0 && failed != NULL) {
        /* An init whose exec or id maps failed must not stay: it is of no use. */
        kill(pid, SIGKILL); /* our unreaped child: the pid is still its own */
        reap(pid);
    }
    Py_END_ALLOW_THREADS
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(sv[1]);
    close(owner_pidfd);
    if (failed == NULL && (pidfd = pgjob_fd_above_stdio(pidfd)) < 0) {
        /* CLONE_PIDFD takes the lowest free descriptor, and moving it failed. */
        saved_errno = errno;
        failed = "fcntl(F_DUPFD_CLOEXEC) of the init's pidfd";
        kill(pid, SIGKILL);
        Py_BEGIN_ALLOW_THREADS
        reap(pid);
        Py_END_ALLOW_THREADS
    }
    if (failed != NULL) {
        if (pid > 0 && pidfd >= 0)
            close(pidfd);
        close(sv[0]);
        /* An execve's failure names the program it could not run (x.path is path_obj's). */
        pgjob_oserror_file(meaning, failed, (unsigned long)saved_errno,
                           failed == x.failed && meaning == PGJOB_UNSUPPORTED ? x.path : NULL);
        Py_DECREF(path_obj);
        return NULL;
    }
    Py_DECREF(path_obj);
    PGJOB_TRACE("clone(flags=0x%llx|CLONE_VM|CLONE_VFORK) + execve(pgjob-helper init) -> init "
                "pid %d, pidfd %d, control fd %d%s", flags, (int)pid, pidfd, sv[0],
                map_ids ? ", ids mapped" : "");
    return Py_BuildValue("(iii)", (int)pid, pidfd, sv[0]);
}
