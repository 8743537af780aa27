/* linux_spawn.c: start a Popen child on Linux, set up in C between clone and exec (no preexec_fn).
 * Two shapes: the program in a new PID namespace under a small C init that forwards signals,
 * reaps orphans, reports the program's wait status and dies with the owner process; or the
 * program as a direct vfork-style child with PR_SET_PDEATHSIG (the weaker fallback). */
#include "jobobject.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Stack for the CLONE_VM|CLONE_VFORK child: it only sets up fds and calls execve. */
#define CHILD_STACK_SIZE (256 * 1024)

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

/* Everything the children need, prepared with the GIL held; they only read it. */
struct spawn_config {
    char *const *argv;
    char *const *exec_array;
    char *const *envp;          /* NULL: inherit environ */
    const char *cwd;
    const int *fds_to_keep;     /* sorted; includes errpipe_write */
    Py_ssize_t n_fds_to_keep;
    int close_fds;
    int p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, errpipe_read, errpipe_write;
    int restore_signals, start_new_session;
    pid_t process_group;        /* -1: leave alone */
    gid_t gid;                  /* (gid_t)-1: leave alone */
    const gid_t *extra_groups;
    Py_ssize_t n_extra_groups;  /* -1: leave alone */
    uid_t uid;                  /* (uid_t)-1: leave alone */
    int child_umask;            /* -1: leave alone */
    int chdir_marker;           /* report a chdir failure as "noexec:chdir" (Python 3.13+) */
    sigset_t old_mask;          /* the spawning thread's mask, restored in the program */
    /* direct (pdeathsig) mode */
    pid_t pdeathsig_parent;     /* > 0: arm PR_SET_PDEATHSIG and check getppid() against it */
    /* namespace (init) mode */
    int owner_pidfd;            /* -1: don't watch the owner */
    int status_write;           /* init writes the program's raw wait status here */
    int map_ids;                /* CLONE_NEWUSER: map the owner's uid/gid onto themselves */
    uid_t outer_uid;
    gid_t outer_gid;
};

/* ---- async-signal-safe helpers: everything below runs in a child of a threaded process ---- */

static void
write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* nothing more a dying child can do */
        }
        buf += n;
        len -= (size_t)n;
    }
}

/* The errpipe protocol of _posixsubprocess: "OSError:<hex errno>:" plus "noexec" when the
 * failure came before exec, so subprocess.Popen raises the same exception it always does. */
static void
report_errno(int errpipe_write, int err, int before_exec, int in_chdir)
{
    char hex[sizeof(int) * 2 + 1];
    char *cur = hex + sizeof(hex);
    unsigned int value = (unsigned int)err;

    if (errpipe_write < 0)
        return;
    write_all(errpipe_write, "OSError:", 8);
    do {
        *--cur = "0123456789abcdef"[value % 16];
        value /= 16;
    } while (value != 0 && cur != hex);
    write_all(errpipe_write, cur, (size_t)(hex + sizeof(hex) - cur));
    write_all(errpipe_write, ":", 1);
    if (before_exec)
        write_all(errpipe_write, "noexec", 6);
    if (in_chdir)
        write_all(errpipe_write, ":chdir", 6);
}

/* Handlers installed by Python (or anyone) must not run in a child that shares or copied
 * the parent's memory: set them back to SIG_DFL, keep SIG_IGN as exec would. */
static void
reset_signal_handlers(void)
{
    struct sigaction sa;
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, NULL, &sa) < 0)
            continue; /* a signal number glibc reserves for itself */
        if (sa.sa_handler == SIG_IGN || sa.sa_handler == SIG_DFL)
            continue;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = SIG_DFL;
        sigaction(sig, &sa, NULL);
    }
}

static void
close_range_or_loop(unsigned int first, unsigned int last)
{
    if (first > last)
        return;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, first, last, 0) == 0)
        return;
#endif
    /* Kernels before 5.9: close one by one, up to the descriptor limit. */
    struct rlimit rl;
    unsigned int limit = 4096;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 1u << 20)
        limit = (unsigned int)rl.rlim_cur;
    if (last >= limit)
        last = limit - 1;
    for (unsigned int fd = first; fd <= last && fd >= first; fd++)
        close((int)fd);
}

/* Close every descriptor >= `low` except the sorted, distinct `keep` ones. */
static void
close_fds_except(int low, const int *keep, Py_ssize_t n_keep)
{
    unsigned int next = (unsigned int)low;
    for (Py_ssize_t i = 0; i < n_keep; i++) {
        if (keep[i] < low)
            continue;
        if ((unsigned int)keep[i] > next)
            close_range_or_loop(next, (unsigned int)keep[i] - 1);
        if ((unsigned int)keep[i] + 1 > next)
            next = (unsigned int)keep[i] + 1;
    }
    close_range_or_loop(next, ~0u);
}

static int
set_inheritable(int fd, int inheritable)
{
    int flags = fcntl(fd, F_GETFD);
    if (flags < 0)
        return -1;
    int wanted = inheritable ? (flags & ~FD_CLOEXEC) : (flags | FD_CLOEXEC);
    return wanted == flags ? 0 : fcntl(fd, F_SETFD, wanted);
}

/* Everything _posixsubprocess's child_exec does, in the same order, then execve.
 * Never returns: on failure the errno goes down errpipe_write and the child exits 255. */
static void
program_exec(const struct spawn_config *c)
{
    int before_exec = 1, in_chdir = 0, saved_errno = 0;
    int p2cread = c->p2cread, c2pwrite = c->c2pwrite, errwrite = c->errwrite;

    /* pass_fds must survive exec: clear their close-on-exec flag. */
    for (Py_ssize_t i = 0; i < c->n_fds_to_keep; i++) {
        if (c->fds_to_keep[i] != c->errpipe_write && set_inheritable(c->fds_to_keep[i], 1) < 0)
            goto error;
    }
    if (c->p2cwrite != -1)
        close(c->p2cwrite);
    if (c->c2pread != -1)
        close(c->c2pread);
    if (c->errread != -1)
        close(c->errread);
    close(c->errpipe_read);

    /* A pipe end sitting on 0, 1 or 2 would be clobbered by the dup2s below (bpo-12607). */
    if (c2pwrite == 0) {
        if ((c2pwrite = dup(c2pwrite)) < 0 || set_inheritable(c2pwrite, 0) < 0)
            goto error;
    }
    while (errwrite == 0 || errwrite == 1) {
        if ((errwrite = dup(errwrite)) < 0 || set_inheritable(errwrite, 0) < 0)
            goto error;
    }
    /* dup2 clears close-on-exec, except when source and target are the same descriptor. */
    if (p2cread == 0) {
        if (set_inheritable(p2cread, 1) < 0)
            goto error;
    } else if (p2cread != -1 && dup2(p2cread, 0) < 0) {
        goto error;
    }
    if (c2pwrite == 1) {
        if (set_inheritable(c2pwrite, 1) < 0)
            goto error;
    } else if (c2pwrite != -1 && dup2(c2pwrite, 1) < 0) {
        goto error;
    }
    if (errwrite == 2) {
        if (set_inheritable(errwrite, 1) < 0)
            goto error;
    } else if (errwrite != -1 && dup2(errwrite, 2) < 0) {
        goto error;
    }

    if (c->cwd != NULL && chdir(c->cwd) < 0) {
        in_chdir = c->chdir_marker;
        goto error;
    }
    if (c->child_umask >= 0)
        umask((mode_t)c->child_umask);
    if (c->restore_signals) {
        signal(SIGPIPE, SIG_DFL);
        signal(SIGXFSZ, SIG_DFL);
    }
    reset_signal_handlers();
    if ((errno = pthread_sigmask(SIG_SETMASK, &c->old_mask, NULL)) != 0)
        goto error;
    if (c->start_new_session && setsid() < 0)
        goto error;
    if (c->process_group >= 0 && setpgid(0, c->process_group) < 0)
        goto error;
    if (c->n_extra_groups >= 0 && setgroups((size_t)c->n_extra_groups, c->extra_groups) < 0)
        goto error;
    if (c->gid != (gid_t)-1 && setregid(c->gid, c->gid) < 0)
        goto error;
    if (c->uid != (uid_t)-1 && setreuid(c->uid, c->uid) < 0)
        goto error;
    before_exec = 0;
    if (c->close_fds)
        close_fds_except(3, c->fds_to_keep, c->n_fds_to_keep);

    /* Same PATH walk as os._execvpe: report the first error that is not "not here". */
    for (Py_ssize_t i = 0; c->exec_array[i] != NULL; i++) {
        if (c->envp != NULL)
            execve(c->exec_array[i], c->argv, c->envp);
        else
            execv(c->exec_array[i], c->argv);
        if (errno != ENOENT && errno != ENOTDIR && saved_errno == 0)
            saved_errno = errno;
    }
    if (saved_errno != 0)
        errno = saved_errno;
error:
    report_errno(c->errpipe_write, errno, before_exec, in_chdir);
    _exit(255);
}

/* Entry of the CLONE_VM|CLONE_VFORK child, both as a direct child of the owner (pdeathsig
 * mode) and as the init's child (namespace mode). */
static int
program_main(void *arg)
{
    const struct spawn_config *c = arg;

    if (c->pdeathsig_parent > 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) {
            report_errno(c->errpipe_write, errno, 1, 0);
            _exit(255);
        }
        /* The owner may have died before the line above armed the signal. */
        if (getppid() != c->pdeathsig_parent)
            _exit(255);
    }
    program_exec(c);
    return 255; /* not reached */
}

static pid_t
clone_vfork(const struct spawn_config *c, int *pidfd)
{
    void *stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return -1;
    int flags = CLONE_VM | CLONE_VFORK | SIGCHLD | (pidfd != NULL ? CLONE_PIDFD : 0);
    /* The stack grows down on every architecture Linux/Python supports except hppa. */
    pid_t pid = clone(program_main, (char *)stack + CHILD_STACK_SIZE, flags, (void *)c, pidfd);
    int saved = errno;
    munmap(stack, CHILD_STACK_SIZE);
    errno = saved;
    return pid;
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

/* In a fresh user namespace, map our own uid and gid onto themselves, so the program sees
 * the owner's real ids. Allowed to an unprivileged process for exactly this one mapping. */
int
pgjob_map_own_ids(uid_t uid, gid_t gid)
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

/* The signals the init passes on to the program. Not the ones the kernel raises for the
 * init's own faults, not SIGCHLD (the init's own business), not SIGKILL/SIGSTOP. */
void
pgjob_forwarded_signals(sigset_t *set)
{
    sigfillset(set);
    sigdelset(set, SIGKILL);
    sigdelset(set, SIGSTOP);
    sigdelset(set, SIGCHLD);
    sigdelset(set, SIGSEGV);
    sigdelset(set, SIGBUS);
    sigdelset(set, SIGILL);
    sigdelset(set, SIGFPE);
    sigdelset(set, SIGTRAP);
    sigdelset(set, SIGSYS);
}

static int
exit_code_for(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return 255;
}

/* PID 1 of the job's namespace. When it exits, for whatever reason, the kernel SIGKILLs every
 * process left in the namespace. It exits when the program exits (after writing the program's
 * raw wait status to status_write, so Popen.returncode can be negative for a signal, which an
 * init can't reproduce by dying of that signal itself) and when the owner process is gone
 * (its pidfd turns readable only when the whole process has exited, not one thread). */
static void
namespace_init(struct spawn_config *c)
{
    sigset_t watched;
    int sfd, keep[3], n_keep = 0;
    pid_t program;

    /* Every signal is blocked (the owner blocked them around clone3): a blocked signal is
     * queued even for an init, so signalfd sees what the host sends us. */
    reset_signal_handlers();
    signal(SIGCHLD, SIG_DFL); /* SIG_IGN would auto-reap the program and lose its status */
    /* Second line of defence for a *stopped* init, which can't poll the owner's pidfd: the
     * kernel's SIGKILL reaches it anyway (forced: it comes from an ancestor namespace). Python
     * spawns from a thread that lives as long as the process, so this can't fire early; the
     * race with an owner that died before this line is covered by the pidfd, readable then. */
    if (c->owner_pidfd >= 0 && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        goto fail;
    if (c->map_ids && pgjob_map_own_ids(c->outer_uid, c->outer_gid) < 0)
        goto fail;
    pgjob_forwarded_signals(&watched);
    sigaddset(&watched, SIGCHLD);
    if ((sfd = signalfd(-1, &watched, SFD_CLOEXEC)) < 0)
        goto fail;

    c->pdeathsig_parent = 0;
    if ((program = clone_vfork(c, NULL)) < 0)
        goto fail;

    /* The program has exec'd (or reported its failure). Hold on to nothing of the owner's:
     * a copy of a pipe end here would keep Popen's pipes (and the errpipe) from seeing EOF. */
    keep[n_keep++] = sfd;
    if (c->owner_pidfd >= 0)
        keep[n_keep++] = c->owner_pidfd;
    keep[n_keep++] = c->status_write;
    for (int i = 1; i < n_keep; i++) /* insertion sort of three */
        for (int j = i; j > 0 && keep[j - 1] > keep[j]; j--) {
            int t = keep[j]; keep[j] = keep[j - 1]; keep[j - 1] = t;
        }
    close_fds_except(0, keep, n_keep);
    if (chdir("/") < 0) {
        /* only to release the owner's cwd; staying is harmless */
    }

    struct pollfd fds[2] = {{sfd, POLLIN, 0}, {c->owner_pidfd, POLLIN, 0}};
    nfds_t nfds = c->owner_pidfd >= 0 ? 2 : 1;
    for (;;) {
        if (poll(fds, nfds, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(PGJOB_INIT_FAILED_EXIT);
        }
        if (nfds == 2 && fds[1].revents != 0)
            _exit(PGJOB_INIT_OWNER_GONE_EXIT); /* the kernel now kills the namespace */
        if (!(fds[0].revents & POLLIN))
            continue;
        struct signalfd_siginfo infos[16];
        ssize_t got = read(sfd, infos, sizeof(infos));
        if (got < 0)
            continue;
        for (size_t i = 0; i < (size_t)got / sizeof(infos[0]); i++) {
            int sig = (int)infos[i].ssi_signo;
            if (sig == SIGCHLD) {
                int status;
                pid_t pid;
                /* Reap every child: the program and the orphans that were reparented to us. */
                while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                    if (pid == program) {
                        write_all(c->status_write, (const char *)&status, sizeof(status));
                        _exit(exit_code_for(status));
                    }
                }
            } else if (infos[i].ssi_code != SI_KERNEL) {
                /* Sent with kill() and friends (Popen.send_signal): pass it on. A terminal's
                 * SIGINT/SIGTSTP (SI_KERNEL) already reached the program through its process
                 * group; forwarding it would deliver it twice. */
                kill(program, sig);
            }
        }
    }
fail:
    report_errno(c->errpipe_write, errno, 1, 0);
    _exit(PGJOB_INIT_FAILED_EXIT);
}

pid_t
pgjob_clone3(uint64_t flags, int *pidfd)
{
    struct pgjob_clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = flags | (pidfd != NULL ? CLONE_PIDFD : 0);
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.exit_signal = SIGCHLD;
    /* No stack given: the child returns from this syscall on a copy of ours, like fork(). */
    return (pid_t)syscall(SYS_clone3, &args, sizeof(args));
}

int
pgjob_pidfd_open_self(void)
{
    return (int)syscall(SYS_pidfd_open, getpid(), 0);
}

/* ---- argument conversion (GIL held) ---- */

/* A NULL-terminated char* array pointing into the bytes objects of `seq` (kept in *keep). */
static char **
bytes_array(PyObject *seq, const char *what, PyObject **keep)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **array = PyMem_Calloc((size_t)n + 1, sizeof(char *));
    if (array == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s must contain bytes", what);
            goto fail;
        }
        if ((size_t)PyBytes_GET_SIZE(item) != strlen(PyBytes_AS_STRING(item))) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            goto fail;
        }
        array[i] = PyBytes_AS_STRING(item);
    }
    *keep = fast;
    return array;
fail:
    PyMem_Free(array);
    Py_DECREF(fast);
    return NULL;
}

static int
int_array(PyObject *seq, const char *what, int **out, Py_ssize_t *n_out)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    int *array = PyMem_Calloc((size_t)n + 1, sizeof(int));
    if (array == NULL) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(array);
            Py_DECREF(fast);
            return -1;
        }
        if (v < 0 || v > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "%s: bad value %ld", what, v);
            PyMem_Free(array);
            Py_DECREF(fast);
            return -1;
        }
        array[i] = (int)v;
    }
    Py_DECREF(fast);
    *out = array;
    *n_out = n;
    return 0;
}

/* spawn(argv, executables, env, cwd, close_fds, fds_to_keep,
 *       p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, errpipe_read, errpipe_write,
 *       restore_signals, start_new_session, process_group, gid, extra_groups, uid, umask,
 *       clone_flags, watch_owner, map_ids, chdir_marker)
 * -> (pid, pidfd, status_fd)
 *
 * clone_flags == 0: direct child (CLONE_VM|CLONE_VFORK), with PR_SET_PDEATHSIG if watch_owner;
 * status_fd is -1. Otherwise clone3(clone_flags) makes a namespace init that runs the program;
 * status_fd is the read end (non-blocking, close-on-exec) of the pipe the init writes the
 * program's raw wait status to just before it exits. */
PyObject *
linux_spawn(PyObject *self, PyObject *args)
{
    PyObject *argv_obj, *exec_obj, *env_obj, *cwd_obj, *keep_obj, *groups_obj;
    PyObject *argv_keep = NULL, *exec_keep = NULL, *env_keep = NULL;
    struct spawn_config c;
    unsigned long long clone_flags;
    long process_group, gid, uid;
    int watch_owner, map_ids, umask_value;
    int *keep = NULL, *groups_int = NULL;
    gid_t *groups = NULL;
    Py_ssize_t n_groups = -1;
    int status_pipe[2] = {-1, -1};
    int pidfd = -1, saved_errno = 0;
    pid_t pid = -1;
    PyObject *result = NULL;
    const char *failed = NULL;

    (void)self;
    memset(&c, 0, sizeof(c));
    if (!PyArg_ParseTuple(args, "OOOOpOiiiiiiiippllOliKppp:spawn",
                          &argv_obj, &exec_obj, &env_obj, &cwd_obj, &c.close_fds, &keep_obj,
                          &c.p2cread, &c.p2cwrite, &c.c2pread, &c.c2pwrite, &c.errread,
                          &c.errwrite, &c.errpipe_read, &c.errpipe_write, &c.restore_signals,
                          &c.start_new_session, &process_group, &gid, &groups_obj, &uid,
                          &umask_value, &clone_flags, &watch_owner, &map_ids,
                          &c.chdir_marker))
        return NULL;
    c.process_group = (pid_t)process_group;
    c.gid = (gid_t)gid;
    c.uid = (uid_t)uid;
    c.child_umask = umask_value;
    c.owner_pidfd = -1;
    c.status_write = -1;

    if ((c.argv = bytes_array(argv_obj, "argv", &argv_keep)) == NULL)
        goto done;
    if ((c.exec_array = bytes_array(exec_obj, "executables", &exec_keep)) == NULL)
        goto done;
    if (env_obj != Py_None && (c.envp = bytes_array(env_obj, "env", &env_keep)) == NULL)
        goto done;
    if (cwd_obj != Py_None) {
        if (!PyBytes_Check(cwd_obj)) {
            PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
            goto done;
        }
        c.cwd = PyBytes_AS_STRING(cwd_obj);
    }
    if (int_array(keep_obj, "fds_to_keep", &keep, &c.n_fds_to_keep) < 0)
        goto done;
    c.fds_to_keep = keep;
    if (groups_obj != Py_None) {
        if (int_array(groups_obj, "extra_groups", &groups_int, &n_groups) < 0)
            goto done;
        groups = PyMem_Calloc((size_t)n_groups + 1, sizeof(gid_t));
        if (groups == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (Py_ssize_t i = 0; i < n_groups; i++)
            groups[i] = (gid_t)groups_int[i];
    }
    c.extra_groups = groups;
    c.n_extra_groups = n_groups;
    c.map_ids = map_ids;
    c.outer_uid = geteuid();
    c.outer_gid = getegid();

    if (watch_owner) {
        if (clone_flags != 0) {
            if ((c.owner_pidfd = pgjob_pidfd_open_self()) < 0) {
                failed = "pidfd_open";
                saved_errno = errno;
                goto done;
            }
            PGJOB_TRACE("pidfd_open(%d) -> fd %d (the init watches the owner)", getpid(), c.owner_pidfd);
        } else {
            c.pdeathsig_parent = getpid();
        }
    }
    if (clone_flags != 0) {
        if (pipe2(status_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
            failed = "pipe2";
            saved_errno = errno;
            goto done;
        }
        c.status_write = status_pipe[1];
    }

    sigset_t all;
    sigfillset(&all);
    /* Block everything: no handler may run in the child before it resets them. */
    pthread_sigmask(SIG_BLOCK, &all, &c.old_mask);
    Py_BEGIN_ALLOW_THREADS
    if (clone_flags != 0) {
        pid = pgjob_clone3(clone_flags, &pidfd);
        if (pid == 0)
            namespace_init(&c); /* never returns */
        failed = "clone3";
    } else {
        pid = clone_vfork(&c, &pidfd);
        failed = "clone";
    }
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    pthread_sigmask(SIG_SETMASK, &c.old_mask, NULL);
    if (pid < 0)
        goto done;
    failed = NULL;
    PGJOB_TRACE("%s(flags=0x%llx) -> pid %d, pidfd %d", clone_flags ? "clone3" : "clone(CLONE_VM|CLONE_VFORK)",
                clone_flags, (int)pid, pidfd);
    result = Py_BuildValue("(iii)", (int)pid, pidfd, status_pipe[0]);
    if (result == NULL) {
        /* The child runs; don't leak its descriptors. */
        close(pidfd);
        close(status_pipe[0]);
    }
    status_pipe[0] = -1;

done:
    if (c.owner_pidfd >= 0)
        close(c.owner_pidfd);
    if (status_pipe[1] >= 0)
        close(status_pipe[1]);
    if (status_pipe[0] >= 0)
        close(status_pipe[0]);
    PyMem_Free((void *)c.argv);
    PyMem_Free((void *)c.exec_array);
    PyMem_Free((void *)c.envp);
    PyMem_Free(keep);
    PyMem_Free(groups_int);
    PyMem_Free(groups);
    Py_XDECREF(argv_keep);
    Py_XDECREF(exec_keep);
    Py_XDECREF(env_keep);
    if (failed != NULL && result == NULL && !PyErr_Occurred())
        return pgjob_oserror(failed, (unsigned long)saved_errno);
    return result;
}
