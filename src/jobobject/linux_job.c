/* linux_job.c: namespace syscalls that are not a spawn: probing clone3 namespace flags,
 * unshare/setns for protect_children(), and the reaper init that makes the current
 * process's later children die with it. */
#include "jobobject.h"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* probe(clone_flags, map_ids) -> None
 * Create (and reap at once) a child with these namespace flags, mapping ids as a spawn would;
 * raises OSError with the errno of whichever step the kernel refused. */
PyObject *
linux_probe(PyObject *self, PyObject *args)
{
    unsigned long long flags;
    int map_ids, status = 0, saved_errno = 0;
    uid_t uid = geteuid();
    gid_t gid = getegid();
    sigset_t all, old;
    pid_t pid, waited;

    (void)self;
    if (!PyArg_ParseTuple(args, "Kp:probe", &flags, &map_ids))
        return NULL;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    Py_BEGIN_ALLOW_THREADS
    pid = pgjob_clone3(flags, NULL);
    if (pid == 0) {
        int err = 0;
        if (map_ids && pgjob_map_own_ids(uid, gid) < 0)
            err = errno;
        _exit(err & 0xff);
    }
    saved_errno = errno;
    if (pid > 0) {
        do {
            waited = waitpid(pid, &status, 0);
        } while (waited < 0 && errno == EINTR);
    }
    Py_END_ALLOW_THREADS
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0)
        return pgjob_oserror("clone3", (unsigned long)saved_errno);
    PGJOB_TRACE("probe clone3(flags=0x%llx) -> pid %d, status 0x%x", flags, (int)pid, status);
    if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
        return pgjob_oserror("write /proc/self/uid_map", (unsigned long)WEXITSTATUS(status));
    Py_RETURN_NONE;
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

/* The reaper: PID 1 of the namespace protect_children() made. It reaps the orphans that are
 * reparented to it and exits when the owner process is gone (the kernel then kills every
 * process in the namespace). Every signal stays blocked: nothing but SIGKILL ends it. */
static void
reaper_main(int owner_pidfd, int arm_pdeathsig)
{
    sigset_t chld;
    int sfd, keep[2];

    /* For a stopped reaper, which can't poll: see namespace_init() in linux_spawn.c. */
    if (arm_pdeathsig && prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        _exit(PGJOB_INIT_FAILED_EXIT);
    signal(SIGCHLD, SIG_DFL);
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sfd = signalfd(-1, &chld, SFD_CLOEXEC);
    if (sfd < 0)
        _exit(PGJOB_INIT_FAILED_EXIT);
    keep[0] = sfd < owner_pidfd ? sfd : owner_pidfd;
    keep[1] = sfd < owner_pidfd ? owner_pidfd : sfd;
    /* Hold none of the owner's descriptors: pipes must see EOF when the owner closes them. */
    if (syscall(SYS_close_range, 0, keep[0] - 1, 0) < 0
        || syscall(SYS_close_range, keep[0] + 1, keep[1] - 1, 0) < 0
        || syscall(SYS_close_range, keep[1] + 1, ~0u, 0) < 0) {
        /* close_range needs Linux 5.9; older kernels keep the copies (documented) */
    }
    if (chdir("/") < 0) {
        /* only to release the owner's cwd */
    }
    struct pollfd fds[2] = {{sfd, POLLIN, 0}, {owner_pidfd, POLLIN, 0}};
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(PGJOB_INIT_FAILED_EXIT);
        }
        if (fds[1].revents != 0)
            _exit(PGJOB_INIT_OWNER_GONE_EXIT);
        if (fds[0].revents & POLLIN) {
            struct signalfd_siginfo info[8];
            if (read(sfd, info, sizeof(info)) < 0) {
                /* EAGAIN after a coalesced SIGCHLD: just reap */
            }
            while (waitpid(-1, NULL, WNOHANG) > 0)
                ;
        }
    }
}

/* start_reaper(arm_pdeathsig) -> (pid, pidfd)
 * Fork the reaper. Called right after unshare(CLONE_NEWPID), so it is the first process of
 * the new namespace, its PID 1; it watches the owner through a pidfd, which turns readable
 * when the whole process has exited (PR_SET_PDEATHSIG would fire when the calling *thread*
 * exits). arm_pdeathsig adds PR_SET_PDEATHSIG(SIGKILL) for a stopped reaper; only safe
 * when the calling thread lives as long as the process. */
PyObject *
linux_start_reaper(PyObject *self, PyObject *args)
{
    int owner_pidfd, pidfd = -1, saved_errno, arm_pdeathsig;
    sigset_t all, old;
    pid_t pid;

    (void)self;
    if (!PyArg_ParseTuple(args, "p:start_reaper", &arm_pdeathsig))
        return NULL;
    if ((owner_pidfd = pgjob_pidfd_open_self()) < 0)
        return pgjob_last_error("pidfd_open");
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    Py_BEGIN_ALLOW_THREADS
    pid = pgjob_clone3(0, &pidfd);
    if (pid == 0)
        reaper_main(owner_pidfd, arm_pdeathsig); /* never returns */
    saved_errno = errno;
    Py_END_ALLOW_THREADS
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(owner_pidfd);
    if (pid < 0)
        return pgjob_oserror("clone3", (unsigned long)saved_errno);
    PGJOB_TRACE("clone3 -> reaper pid %d, pidfd %d", (int)pid, pidfd);
    return Py_BuildValue("(ii)", (int)pid, pidfd);
}
