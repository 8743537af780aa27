/* linux_spawn.c: start a Popen child on Linux, set up in C between clone and exec (no preexec_fn).
 * Two shapes, both vfork-class and both a direct child of the owner: the program inside a job's
 * PID namespace (entered by the calling thread, or without CAP_SYS_ADMIN by a short-lived
 * CLONE_VM helper process), or the program with PR_SET_PDEATHSIG (the weaker fallback). */
#include "jobobject.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef P_PIDFD
#  define P_PIDFD 3 /* waitid(2) on a pidfd, Linux 5.4 */
#endif

/* 32-bit ABIs keep 16-bit ids in the plain calls and have *32 variants; 64-bit ones don't. */
#ifdef SYS_setreuid32
#  define PGJOB_SYS_SETGROUPS SYS_setgroups32
#  define PGJOB_SYS_SETREGID SYS_setregid32
#  define PGJOB_SYS_SETREUID SYS_setreuid32
#else
#  define PGJOB_SYS_SETGROUPS SYS_setgroups
#  define PGJOB_SYS_SETREGID SYS_setregid
#  define PGJOB_SYS_SETREUID SYS_setreuid
#endif

/* Stack of each CLONE_VM|CLONE_VFORK child: it only sets up fds and calls execve. */
#define CHILD_STACK_SIZE PGJOB_CHILD_STACK_SIZE

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
    long long data_limit;       /* >= 0: lower RLIMIT_DATA (soft and hard) to it; -1: leave alone */
    int chdir_marker;           /* report a chdir failure as "noexec:chdir" (Python 3.13+) */
    sigset_t old_mask;          /* the spawning thread's mask, restored in the program */
    /* direct (pdeathsig) mode */
    pid_t pdeathsig_parent;     /* > 0: arm PR_SET_PDEATHSIG and check getppid() against it */
    /* namespace mode: the job's namespaces, entered by the helper (enter_and_spawn) */
    int pidns_fd;               /* -1: direct mode */
    int userns_fd;              /* -1: no user namespace to enter */
    int cgroup_fd;              /* >= 0: the program starts in this cgroup (CLONE_INTO_CGROUP) */
    char *program_stack;        /* base of the program's stack (the helper has its own) */
    /* written by the helper, read by the owner once the helper has exited */
    pid_t program_pid;          /* as the helper sees it: see helper_elsewhere */
    int program_pidfd;
    int helper_elsewhere;       /* the helper was not in our PID namespace */
    int helper_errno;
    const char *helper_failed;  /* the syscall that failed, NULL if none */
    const char *helper_step;    /* what the helper was doing, for a helper killed meanwhile */
    char failed_text[128];      /* the owner's message when the helper died of a signal */
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
void
pgjob_close_fds_except(int low, const int *keep, Py_ssize_t n_keep)
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

/* `fd` moved above 2 if it landed on 0, 1 or 2 (the caller had closed one: clone's pidfd,
 * open and socketpair take the lowest free number), and close-on-exec either way; -1 with
 * errno set, and `fd` closed, if the move fails. A descriptor of ours on 0-2 is replaced the
 * moment the caller restores its stdio with dup2, and we would use the caller's file. */
int
pgjob_fd_above_stdio(int fd)
{
    int moved, saved;
    if (fd < 0 || fd > 2)
        return fd;
    moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    saved = errno;
    close(fd);
    errno = saved;
    return moved;
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
    /* process_memory_limit: lowered, never raised, before the ids change (an unprivileged
     * process may always lower its own limits), so the program starts with it and every
     * process it creates inherits it. */
    if (c->data_limit >= 0) {
        struct rlimit data;
        if (getrlimit(RLIMIT_DATA, &data) < 0)
            goto error;
        if (data.rlim_max == RLIM_INFINITY || data.rlim_max > (rlim_t)c->data_limit)
            data.rlim_max = (rlim_t)c->data_limit;
        if (data.rlim_cur == RLIM_INFINITY || data.rlim_cur > data.rlim_max)
            data.rlim_cur = data.rlim_max;
        if (setrlimit(RLIMIT_DATA, &data) < 0)
            goto error;
    }
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
    /* Raw syscalls, not glibc's setgroups/setregid/setreuid: those broadcast the change to
     * every thread listed in the (shared, CLONE_VM) memory, i.e. the owner's threads, and can
     * hang or misfire from a vfork-style child. That is why CPython never vforks when ids are
     * given. The kernel call changes the calling task only, and this child has one thread. */
    if (c->n_extra_groups >= 0 &&
        syscall(PGJOB_SYS_SETGROUPS, (long)c->n_extra_groups, c->extra_groups) < 0)
        goto id_error;
    if (c->gid != (gid_t)-1 && syscall(PGJOB_SYS_SETREGID, (long)c->gid, (long)c->gid) < 0)
        goto id_error;
    if (c->uid != (uid_t)-1 && syscall(PGJOB_SYS_SETREUID, (long)c->uid, (long)c->uid) < 0)
        goto id_error;
    before_exec = 0;
    if (c->close_fds)
        pgjob_close_fds_except(3, c->fds_to_keep, c->n_fds_to_keep);

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
    goto error;
id_error:
    /* In the job's user namespace only the owner's own ids are mapped, and the kernel
     * refuses any other with EINVAL. Outside it, where subprocess.Popen runs, the same call
     * from an owner without CAP_SETUID/CAP_SETGID is EPERM: give what subprocess gives. */
    if (errno == EINVAL && c->userns_fd >= 0)
        errno = EPERM;
error:
    report_errno(c->errpipe_write, errno, before_exec, in_chdir);
    _exit(255);
}

/* Entry of the program's CLONE_VM|CLONE_VFORK child, in both modes. */
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

/* Stacks for the children, one region per spawning thread, kept for its next spawns:
 * mapping them afresh each time costs page faults, and unmapping them, once a child has run
 * on another CPU, a TLB shootdown; together a measurable part of a vfork-class spawn. The
 * region is unmapped when its thread exits. Two stacks: the namespace helper and the program. */
#define STACKS_SIZE (2 * CHILD_STACK_SIZE)

static pthread_key_t stacks_key;
static pthread_once_t stacks_once = PTHREAD_ONCE_INIT;
static int stacks_key_ok;

static void
unmap_stacks(void *stacks)
{
    munmap(stacks, STACKS_SIZE);
}

static void
create_stacks_key(void)
{
    stacks_key_ok = pthread_key_create(&stacks_key, unmap_stacks) == 0;
}

/* This thread's stacks (2 * PGJOB_CHILD_STACK_SIZE), or NULL with errno set. */
char *
pgjob_thread_stacks(void)
{
    char *stacks;

    pthread_once(&stacks_once, create_stacks_key);
    if (!stacks_key_ok) {
        errno = EAGAIN;
        return NULL;
    }
    stacks = pthread_getspecific(stacks_key);
    if (stacks != NULL)
        return stacks;
    stacks = mmap(NULL, STACKS_SIZE, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stacks == MAP_FAILED)
        return NULL;
    if ((errno = pthread_setspecific(stacks_key, stacks)) != 0) {
        munmap(stacks, STACKS_SIZE);
        return NULL;
    }
    return stacks;
}

static pid_t
clone_vfork(const struct spawn_config *c, int *pidfd, const char **failed)
{
    char *stacks = pgjob_thread_stacks();
    if (stacks == NULL) {
        *failed = "mmap";
        return -1;
    }
    *failed = c->cgroup_fd >= 0 ? "clone3(CLONE_VM|CLONE_VFORK|CLONE_INTO_CGROUP)"
                                : "clone(CLONE_VM|CLONE_VFORK)";
    return pgjob_clone_vm(program_main, (void *)c, stacks, CHILD_STACK_SIZE,
                          CLONE_VM | CLONE_VFORK | SIGCHLD, pidfd, c->cgroup_fd);
}

/* The helper: a CLONE_VM|CLONE_VFORK|CLONE_FILES child of the owner that exists only to enter
 * the job's namespaces and clone the program from there.
 *
 * Why a helper and not a throwaway thread: setns(CLONE_NEWPID) needs CAP_SYS_ADMIN both in
 * the namespace's user namespace and in the caller's own one, which an unprivileged owner
 * lacks; it gets it by entering the job's user namespace first, and the kernel lets only a
 * single-threaded process do that (EINVAL otherwise). The helper is such a process, sharing
 * the owner's memory and descriptor table, so it costs no copy of either.
 *
 * CLONE_PARENT makes the program a child of the owner, not of the helper: Popen waits for it
 * and signals it directly, and its pidfd lands in the shared descriptor table. It also gives
 * the program the helper's exit signal, which must therefore be SIGCHLD (Popen's waitpid does
 * not see children with another one). Results go back through the shared memory of `c`: the
 * owner's thread is suspended (CLONE_VFORK) until the helper has exited. */
static int
enter_and_spawn(void *arg)
{
    struct spawn_config *c = arg;

    c->helper_step = "setns(CLONE_NEWUSER)";
    if (c->userns_fd >= 0 && setns(c->userns_fd, CLONE_NEWUSER) < 0) {
        c->helper_failed = "setns(CLONE_NEWUSER)";
        goto fail;
    }
    /* Changes only where this helper's children are created; the helper itself stays. */
    c->helper_step = "setns(CLONE_NEWPID)";
    if (setns(c->pidns_fd, CLONE_NEWPID) < 0) {
        c->helper_failed = "setns(CLONE_NEWPID)";
        goto fail;
    }
    /* Until this clone returns (the program has exec'd or exited), program_pidfd is already
     * set in our shared memory and program_pid is not. */
    c->helper_step = "clone(CLONE_PARENT), waiting for the program to exec";
    c->program_pid = pgjob_clone_vm(program_main, (void *)c, c->program_stack,
                                    CHILD_STACK_SIZE, CLONE_VM | CLONE_VFORK | CLONE_PARENT,
                                    &c->program_pidfd, c->cgroup_fd);
    if (c->program_pid < 0) {
        /* ENOMEM here: the namespace's init is gone (the job was killed) */
        c->helper_failed = "clone(CLONE_PARENT)";
        goto fail;
    }
    /* Our parent is invisible from here (pid 0) when this thread of the owner creates its
     * children in another namespace (after protect_children()'s unshare): then so was the
     * helper, and program_pid is a pid of that namespace, not the owner's. */
    c->helper_elsewhere = getppid() == 0;
    _exit(0);
fail:
    c->helper_errno = errno;
    _exit(1);
}

/* Where this thread's children go back to after a spawn in a job's namespace: its own
 * pid_for_children, opened at its first such spawn and kept (close-on-exec, above 2) until
 * the thread exits. Opening /proc/thread-self/ns/pid_for_children is a path walk through
 * procfs, a third of what entering a namespace adds to a spawn. A program may have closed
 * the descriptor since (a daemon closing every fd), and its number may now be another
 * file's: each use checks, with fstat, that it still is that namespace, and opens it again
 * if not (it never closes a number it no longer owns). A thread that changes its own
 * pid_for_children between two spawns (unshare or setns with CLONE_NEWPID, which also
 * stops it from starting threads) gets back the one it had at its first. A child of fork()
 * closes every copy (pthread_atfork). */
struct back_ns {
    int fd;
    dev_t dev;
    ino_t ino;
    struct back_ns *prev, *next; /* every thread's, for a fork's child to let go of */
};

static pthread_key_t back_key;
static pthread_once_t back_once = PTHREAD_ONCE_INIT;
static int back_key_ok;
static pthread_mutex_t back_lock = PTHREAD_MUTEX_INITIALIZER;
static struct back_ns *back_all;

static int raw_fstat(int fd, struct stat *st);

/* Is b's descriptor still the namespace it opened (the program may have closed the number
 * since and opened a file of its own on it)? */
static int
back_fd_is_ours(const struct back_ns *b)
{
    struct stat st;
    return b->fd >= 0 && raw_fstat(b->fd, &st) == 0 && st.st_dev == b->dev
           && st.st_ino == b->ino;
}

/* Close b's descriptor if it still is ours, and forget it either way. */
static void
drop_back_fd(struct back_ns *b)
{
    if (back_fd_is_ours(b))
        close(b->fd);
    b->fd = -1;
}

/* At the thread's exit. */
static void
close_back_ns(void *arg)
{
    struct back_ns *b = arg;
    pthread_mutex_lock(&back_lock);
    if (b->prev != NULL)
        b->prev->next = b->next;
    else
        back_all = b->next;
    if (b->next != NULL)
        b->next->prev = b->prev;
    pthread_mutex_unlock(&back_lock);
    drop_back_fd(b);
    free(b);
}

/* A child of fork() holds nothing of pgjob's (tests/linux/test_spawn_regressions.py): it
 * closes every thread's copy, the threads that did not come with it included. */
static void
back_before_fork(void)
{
    pthread_mutex_lock(&back_lock);
}

static void
back_after_fork_in_parent(void)
{
    pthread_mutex_unlock(&back_lock);
}

static void
back_after_fork_in_child(void)
{
    for (struct back_ns *b = back_all; b != NULL; b = b->next)
        drop_back_fd(b);
    pthread_mutex_unlock(&back_lock);
}

static void
create_back_key(void)
{
    back_key_ok = pthread_key_create(&back_key, close_back_ns) == 0
                  && pthread_atfork(back_before_fork, back_after_fork_in_parent,
                                    back_after_fork_in_child) == 0;
}

/* fstat without glibc's fstat, which is fstat@GLIBC_2.33 when built against 2.33 or later
 * (the extension stays manylinux_2_28, jobobject.h). On x86_64 and aarch64 the kernel's
 * struct stat is glibc's; only st_dev and st_ino are read. */
static int
raw_fstat(int fd, struct stat *st)
{
#ifdef SYS_fstat
    return (int)syscall(SYS_fstat, fd, st);
#else
    return (int)syscall(SYS_newfstatat, fd, "", st, AT_EMPTY_PATH);
#endif
}

/* The thread's cached descriptor (or -1 with errno set, and *failed). */
static int
thread_back_ns(const char **failed)
{
    struct back_ns *b;
    struct stat st;

    pthread_once(&back_once, create_back_key);
    if (!back_key_ok) {
        *failed = "pthread_key_create";
        errno = EAGAIN;
        return -1;
    }
    b = pthread_getspecific(back_key);
    if (b == NULL) {
        if ((b = malloc(sizeof(*b))) == NULL) {
            *failed = "malloc";
            errno = ENOMEM;
            return -1;
        }
        b->fd = -1;
        if ((errno = pthread_setspecific(back_key, b)) != 0) {
            free(b);
            *failed = "pthread_setspecific";
            return -1;
        }
        pthread_mutex_lock(&back_lock);
        b->prev = NULL;
        b->next = back_all;
        if (back_all != NULL)
            back_all->prev = b;
        back_all = b;
        pthread_mutex_unlock(&back_lock);
    }
    if (back_fd_is_ours(b))
        return b->fd;
    /* Under the lock, so that a fork() by another thread meanwhile finds the descriptor
     * either not yet open or recorded, and its child closes it. */
    pthread_mutex_lock(&back_lock);
    b->fd = -1; /* closed behind our back, or the number is someone else's now: let it be */
    /* Above 2: the program's dup2 onto 0-2 happen in its own copy of the table, but it must
     * not inherit this descriptor as its stdin/stdout/stderr either. */
    int fd = pgjob_fd_above_stdio(open("/proc/thread-self/ns/pid_for_children",
                                       O_RDONLY | O_CLOEXEC));
    if (fd < 0) {
        int saved = errno;
        pthread_mutex_unlock(&back_lock);
        *failed = "open /proc/thread-self/ns/pid_for_children";
        errno = saved;
        return -1;
    }
    if (raw_fstat(fd, &st) < 0) {
        int saved = errno;
        close(fd);
        pthread_mutex_unlock(&back_lock);
        *failed = "fstat /proc/thread-self/ns/pid_for_children";
        errno = saved;
        return -1;
    }
    b->fd = fd;
    b->dev = st.st_dev;
    b->ino = st.st_ino;
    pthread_mutex_unlock(&back_lock);
    return fd;
}

/* With CAP_SYS_ADMIN in our own user namespace (root, or after protect_children()'s
 * unshare), no helper is needed: this thread points its children at the job's namespace,
 * clones the program as a direct child, and points them back where they were, which the
 * kernel always allows. Nothing else runs on this thread meanwhile (the GIL is released,
 * every signal blocked), so no other child can land in the job's namespace by mistake. */
static pid_t
spawn_in_namespace_here(struct spawn_config *c, int *pidfd, const char **failed)
{
    pid_t pid;
    int saved, back = thread_back_ns(failed);

    if (back < 0)
        return -1;
    if (setns(c->pidns_fd, CLONE_NEWPID) < 0) {
        *failed = "setns(CLONE_NEWPID)";
        return -1;
    }
    pid = clone_vfork(c, pidfd, failed);
    saved = errno;
    if (setns(back, CLONE_NEWPID) < 0) {
        /* Not expected: it is where we were. But this thread's later children must not go
         * to the job unasked: undo the spawn and say so. */
        saved = errno;
        *failed = "setns(CLONE_NEWPID) back";
        if (pid > 0) {
            kill(pid, SIGKILL);
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
            close(*pidfd);
        }
        pid = -1;
    }
    errno = saved;
    return pid;
}

/* The pid a pidfd refers to, in the PID namespace of /proc (the owner's), from its fdinfo. */
static pid_t
pidfd_pid(int pidfd)
{
    char path[64], buf[1024];
    const char *line;
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    if ((line = strstr(buf, "\nPid:")) == NULL) {
        errno = ENOSYS; /* kernels before 5.4 don't show it */
        return -1;
    }
    return (pid_t)strtol(line + 5, NULL, 10);
}

/* A program we started and can't hand over (its pid unknown, or the spawn failed after it
 * was cloned): kill it and reap it through its pidfd, so nothing runs on untracked and no
 * zombie is left. It is our child (CLONE_PARENT), so the reap is ours to do. */
static void
kill_and_reap(int pidfd)
{
    siginfo_t info;
    syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) < 0 && errno == EINTR)
        ;
    close(pidfd);
}

/* Run the helper and reap it; the program's pid (or -1 with errno and *failed set). */
static pid_t
spawn_in_namespace(struct spawn_config *c, int *pidfd, const char **failed)
{
    int status = 0, saved;
    char *stacks = pgjob_thread_stacks();
    if (stacks == NULL) {
        *failed = "mmap";
        return -1;
    }
    c->program_stack = stacks + CHILD_STACK_SIZE;
    c->program_pid = -1;
    c->program_pidfd = -1;
    c->helper_errno = 0;
    c->helper_failed = NULL;
    c->helper_step = "start";
    pid_t helper = pgjob_clone_vm(enter_and_spawn, (void *)c, stacks, CHILD_STACK_SIZE,
                                  CLONE_VM | CLONE_VFORK | CLONE_FILES | SIGCHLD, NULL, -1);
    if (helper < 0) {
        *failed = "clone(CLONE_VM|CLONE_VFORK|CLONE_FILES)";
        return -1;
    }
    /* The helper has exited (or is about to: CLONE_VFORK releases us in its exit path);
     * it is our child, and nobody else knows its pid. ECHILD: someone's waitpid(-1) reaped
     * it first, which is harmless (but then its status is unknown: status stays 0). */
    while (waitpid(helper, &status, __WALL) < 0 && errno == EINTR)
        ;
    if (c->helper_failed != NULL) {
        *failed = c->helper_failed;
        errno = c->helper_errno;
        return -1;
    }
    if (c->program_pid < 0) {
        /* The helper died (SIGKILL is all that reaches it: every other signal is blocked)
         * before it told us the program's pid. A program it had cloned already runs, or is
         * about to: it is no member anyone knows of, so it must not live on. */
        if (c->program_pidfd >= 0)
            kill_and_reap(c->program_pidfd);
        c->program_pidfd = -1;
        if (WIFSIGNALED(status))
            snprintf(c->failed_text, sizeof(c->failed_text),
                     "namespace helper (killed by signal %d during %s)", WTERMSIG(status),
                     c->helper_step);
        else
            snprintf(c->failed_text, sizeof(c->failed_text),
                     "namespace helper (exit status 0x%x during %s)", (unsigned)status,
                     c->helper_step);
        *failed = c->failed_text;
        errno = EINTR;
        return -1;
    }
    *pidfd = c->program_pidfd;
    /* A helper killed after its clone returned may not have said where it was: then the
     * pidfd tells the host pid, as it does for a helper in another namespace. */
    if (c->helper_elsewhere || WIFSIGNALED(status)) {
        pid_t pid = pidfd_pid(c->program_pidfd);
        if (pid < 0) {
            saved = errno;
            *failed = "read /proc/self/fdinfo";
            kill_and_reap(c->program_pidfd);
            *pidfd = -1;
            errno = saved;
            return -1;
        }
        return pid;
    }
    return c->program_pid;
}

/* ---- argument conversion (GIL held) ---- */

/* A NULL-terminated char* array pointing into bytes objects of our own, kept in *keep: each
 * item of `seq` as _posixsubprocess converts it (PyUnicode_FSConverter: bytes as they are,
 * str and os.PathLike encoded with the filesystem encoding). A snapshot tuple first, not
 * PySequence_Fast: that returns a list as itself, and the children read these strings with
 * the GIL released, while another thread (or an item's __fspath__) could replace the list's
 * items and free the bytes they point into. */
static char **
bytes_array(PyObject *seq, const char *what, PyObject **keep)
{
    if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list or tuple", what);
        return NULL;
    }
    PyObject *snapshot = PySequence_Tuple(seq);
    if (snapshot == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_Size(snapshot);
    PyObject *owned = n < 0 ? NULL : PyTuple_New(n);
    char **array = owned == NULL ? NULL : pgjob_zeroed_array(n + 1, sizeof(char *));
    if (array == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        /* The limited API's checked calls, where the macros could not fail: on our own
         * exact tuples and bytes objects they don't either, but a NULL is handled anyway. */
        PyObject *item = PyTuple_GetItem(snapshot, i), *converted = NULL;
        if (item == NULL)
            goto fail;
        if (PyBytes_CheckExact(item)) {
            Py_INCREF(item);
            converted = item;
        } else if (!PyUnicode_FSConverter(item, &converted)) {
            goto fail;
        }
        if (PyTuple_SetItem(owned, i, converted) < 0) /* (steals `converted` even then) */
            goto fail;
        char *bytes = PyBytes_AsString(converted);
        Py_ssize_t size = PyBytes_Size(converted);
        if (bytes == NULL || size < 0)
            goto fail;
        if ((size_t)size != strlen(bytes)) {
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            goto fail;
        }
        array[i] = bytes;
    }
    Py_DECREF(snapshot);
    *keep = owned;
    return array;
fail:
    PyMem_Free(array);
    Py_XDECREF(owned);
    Py_DECREF(snapshot);
    return NULL;
}

/* fds_to_keep as _posixsubprocess checks it: a tuple of non-negative ints, sorted and
 * unique (pgjob_close_fds_except relies on the order), else ValueError. */
static int
fds_to_keep_array(PyObject *seq, int **out, Py_ssize_t *n_out)
{
    if (!PyTuple_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "fds_to_keep must be a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_Size(seq);
    int *array = n < 0 ? NULL : pgjob_zeroed_array(n + 1, sizeof(int));
    if (array == NULL)
        return -1;
    long prev = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GetItem(seq, i);
        if (item == NULL) {
            PyMem_Free(array);
            return -1;
        }
        long v = PyLong_Check(item) ? PyLong_AsLong(item) : -1;
        if (v == -1 && PyErr_Occurred())
            PyErr_Clear(); /* too large for a long: a bad value like the others */
        if (v < 0 || v > INT32_MAX || v <= prev) {
            PyErr_SetString(PyExc_ValueError, "bad value(s) in fds_to_keep");
            PyMem_Free(array);
            return -1;
        }
        array[i] = (int)v;
        prev = v;
    }
    *out = array;
    *n_out = n;
    return 0;
}

/* A uid or gid from Python: -1 means "leave alone"; 0..2**32-1 as CPython's fork_exec takes
 * them; anything else is an OverflowError, never a silent truncation (2**40 would be uid 0). */
static int
id_from_long_long(long long value, const char *what, unsigned int *out)
{
    if (value == -1) {
        *out = (unsigned int)-1;
        return 0;
    }
    if (value < 0 || value > (long long)UINT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "%s is %s than %s", what,
                     value < 0 ? "less" : "greater", value < 0 ? "minimum" : "maximum");
        return -1;
    }
    *out = (unsigned int)value;
    return 0;
}

/* A uid or gid argument: None or -1 (leave it), else 0 .. 2**32-1. */
static int
id_argument(PyObject *value, const char *what, unsigned int *out)
{
    long long v;
    if (value == Py_None) {
        *out = (unsigned int)-1;
        return 0;
    }
    v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    return id_from_long_long(v, what, out);
}

/* extra_groups as gid_t, with subprocess's ValueError for a value no gid_t can hold. */
static gid_t *
gid_array(PyObject *seq, Py_ssize_t *n_out)
{
    PyObject *fast = PySequence_Tuple(seq); /* our own copy, as in bytes_array */
    if (fast == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_Size(fast);
    gid_t *array = n < 0 ? NULL : pgjob_zeroed_array(n + 1, sizeof(gid_t));
    if (array == NULL) {
        Py_DECREF(fast);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GetItem(fast, i);
        if (item == NULL)
            goto fail;
        long long v = PyLong_AsLongLong(item);
        if (v == -1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                v = -2; /* reported as invalid below */
            } else {
                goto fail;
            }
        }
        if (v < 0 || v > (long long)UINT32_MAX) {
            PyErr_SetString(PyExc_ValueError, "invalid group id");
            goto fail;
        }
        array[i] = (gid_t)v;
    }
    Py_DECREF(fast);
    *n_out = n;
    return array;
fail:
    PyMem_Free(array);
    Py_DECREF(fast);
    return NULL;
}

/* spawn(argv, executables, env, cwd, close_fds, fds_to_keep,
 *       p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite, errpipe_read, errpipe_write,
 *       restore_signals, start_new_session, process_group, gid, extra_groups, uid, umask,
 *       pidns_fd, userns_fd, pdeathsig, chdir_marker, cgroup_fd=-1, data_limit=-1)
 * -> (pid, pidfd)
 *
 * pidns_fd >= 0: the program starts inside that PID namespace (entering userns_fd first if
 * it is >= 0), as a child of the calling process. pidns_fd == -1: a direct CLONE_VM|CLONE_VFORK
 * child, with PR_SET_PDEATHSIG(SIGKILL) if pdeathsig. Either way `pid` is the program's own
 * host pid and `pidfd` refers to it. cgroup_fd >= 0 (a directory fd of a cgroup v2): the
 * program is created in that cgroup by clone3(CLONE_INTO_CGROUP), never runs elsewhere.
 * data_limit >= 0: RLIMIT_DATA of the program, soft and hard, lowered to it (never raised). */
PyObject *
linux_spawn(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {
        "argv", "executables", "env", "cwd", "close_fds", "fds_to_keep", "p2cread", "p2cwrite",
        "c2pread", "c2pwrite", "errread", "errwrite", "errpipe_read", "errpipe_write",
        "restore_signals", "start_new_session", "process_group", "gid", "extra_groups", "uid",
        "umask", "pidns_fd", "userns_fd", "pdeathsig", "chdir_marker", "cgroup_fd", "data_limit",
        NULL};
    PyObject *argv_obj, *exec_obj, *env_obj, *cwd_obj, *keep_obj, *groups_obj;
    PyObject *argv_keep = NULL, *exec_keep = NULL, *env_keep = NULL, *cwd_keep = NULL;
    PyObject *gid_obj, *uid_obj;
    struct spawn_config c;
    long process_group;
    unsigned int id;
    int pdeathsig, umask_value;
    int *keep = NULL;
    gid_t *groups = NULL;
    Py_ssize_t n_groups = -1;
    int pidfd = -1, saved_errno = 0;
    pid_t pid = -1;
    PyObject *result = NULL;
    const char *failed = NULL;

    (void)self;
    memset(&c, 0, sizeof(c));
    c.cgroup_fd = -1;
    c.data_limit = -1;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOOpOiiiiiiiipplOOOiiipp|iL:spawn", kwlist, &argv_obj, &exec_obj,
            &env_obj, &cwd_obj, &c.close_fds, &keep_obj, &c.p2cread, &c.p2cwrite, &c.c2pread,
            &c.c2pwrite, &c.errread, &c.errwrite, &c.errpipe_read, &c.errpipe_write,
            &c.restore_signals, &c.start_new_session, &process_group, &gid_obj, &groups_obj,
            &uid_obj, &umask_value, &c.pidns_fd, &c.userns_fd, &pdeathsig, &c.chdir_marker,
            &c.cgroup_fd, &c.data_limit))
        return NULL;
    if (c.data_limit < -1) {
        PyErr_SetString(PyExc_ValueError, "data_limit must be -1 (none) or a byte count");
        return NULL;
    }
    c.process_group = (pid_t)process_group;
    if (id_argument(gid_obj, "gid", &id) < 0)
        return NULL;
    c.gid = (gid_t)id;
    if (id_argument(uid_obj, "uid", &id) < 0)
        return NULL;
    c.uid = (uid_t)id;
    c.child_umask = umask_value;

    if ((c.argv = bytes_array(argv_obj, "argv", &argv_keep)) == NULL)
        goto done;
    if ((c.exec_array = bytes_array(exec_obj, "executables", &exec_keep)) == NULL)
        goto done;
    if (env_obj != Py_None && (c.envp = bytes_array(env_obj, "env", &env_keep)) == NULL)
        goto done;
    if (cwd_obj != Py_None) {
        /* str, bytes or os.PathLike, as _posixsubprocess takes it (it rejects a null byte) */
        if (!PyUnicode_FSConverter(cwd_obj, &cwd_keep))
            goto done;
        if ((c.cwd = PyBytes_AsString(cwd_keep)) == NULL)
            goto done;
    }
    if (fds_to_keep_array(keep_obj, &keep, &c.n_fds_to_keep) < 0)
        goto done;
    c.fds_to_keep = keep;
    if (groups_obj != Py_None && (groups = gid_array(groups_obj, &n_groups)) == NULL)
        goto done;
    c.extra_groups = groups;
    c.n_extra_groups = n_groups;
    if (pdeathsig && c.pidns_fd < 0)
        c.pdeathsig_parent = getpid();

    sigset_t all;
    sigfillset(&all);
    /* Block everything: no handler may run in a child before it resets them. */
    pthread_sigmask(SIG_BLOCK, &all, &c.old_mask);
    Py_BEGIN_ALLOW_THREADS
    if (c.pidns_fd >= 0 && c.userns_fd < 0) {
        pid = spawn_in_namespace_here(&c, &pidfd, &failed);
    } else if (c.pidns_fd >= 0) {
        pid = spawn_in_namespace(&c, &pidfd, &failed);
    } else {
        pid = clone_vfork(&c, &pidfd, &failed);
    }
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    pthread_sigmask(SIG_SETMASK, &c.old_mask, NULL);
    if (pid < 0)
        goto done;
    failed = NULL;
    /* CLONE_PIDFD takes the lowest free descriptor. */
    if ((pidfd = pgjob_fd_above_stdio(pidfd)) < 0) {
        saved_errno = errno;
        /* The program runs but we lost its pidfd: reap it by pid, it is our child. */
        kill(pid, SIGKILL);
        Py_BEGIN_ALLOW_THREADS
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        Py_END_ALLOW_THREADS
        failed = "fcntl(F_DUPFD_CLOEXEC) of the program's pidfd";
        goto done;
    }
    PGJOB_TRACE("%s%s -> pid %d, pidfd %d", c.cgroup_fd >= 0 ? "into cgroup fd: " : "",
                c.pidns_fd < 0 ? "clone(CLONE_VM|CLONE_VFORK)"
                : c.userns_fd < 0 ? "setns(pid namespace) + clone(CLONE_VM|CLONE_VFORK) + setns(back)"
                : "helper: setns(user, pid namespace) + clone(CLONE_VM|CLONE_VFORK|CLONE_PARENT)",
                (int)pid, pidfd);
    result = Py_BuildValue("(ii)", (int)pid, pidfd);
    if (result == NULL) {
        /* The program runs and nobody would track it: don't leave it. */
        Py_BEGIN_ALLOW_THREADS
        kill_and_reap(pidfd);
        Py_END_ALLOW_THREADS
    }

done:
    PyMem_Free((void *)c.argv);
    PyMem_Free((void *)c.exec_array);
    PyMem_Free((void *)c.envp);
    PyMem_Free(keep);
    PyMem_Free(groups);
    Py_XDECREF(argv_keep);
    Py_XDECREF(exec_keep);
    Py_XDECREF(env_keep);
    Py_XDECREF(cwd_keep);
    if (failed != NULL && result == NULL && !PyErr_Occurred()) {
        /* Only these codes are the job's; any other is the program's to report, as
         * subprocess would (ENOMEM from a namespace whose init is gone: see _linux.py). */
        enum pgjob_meaning meaning = saved_errno == EAGAIN ? PGJOB_LIMIT_EXCEEDED
            : saved_errno == ENOSYS || saved_errno == EOPNOTSUPP ? PGJOB_UNSUPPORTED
            : PGJOB_NOT_A_JOB_ERROR;
        return pgjob_oserror_as(meaning, failed, (unsigned long)saved_errno);
    }
    return result;
}
