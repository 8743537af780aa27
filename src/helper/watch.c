/* watch.c: `pgjob-helper watch CGROUP HOME ON_EXIT ON_EOF`, the watcher of a "cgroup" job.
 * Nothing in the kernel kills a cgroup when a process dies: this small process, outside the
 * job's cgroup, in its own session, watches the owner and writes "1" to CGROUP/cgroup.kill
 * when the owner is gone, waits until the cgroup is empty, removes it (children first), exits.
 *
 *   fd 3     a pidfd of the owner: readable once the whole owner process has exited
 *   fd 4     the control socket; the owner's end closes when it exits or execs
 *   CGROUP   the job's cgroup directory
 *   HOME     a cgroup directory the watcher moves itself into first ("-": stay), so that a
 *            watcher started by an owner that is itself in the job ends up outside it
 *   ON_EXIT  what to do when the owner has exited: "kill" or "drain" (wait until empty)
 *   ON_EOF   the same when the control socket closes but the owner lives (it exec'd):
 *            "kill", "drain" or "ignore" (go on watching the pidfd only)
 *
 * Commands on the control socket (one byte each):
 *   'k'  kill now, wait until empty, remove, answer 'k', exit
 *   'd'  drain: never kill; wait until empty, remove, exit (kill_on_close=False, detach)
 *   'x'  exit at once (the owner has removed the cgroup itself)
 *   'p'  the owner is now a member itself: from now on ON_EOF is "ignore"
 * Once set up it answers 'R'. libc only; no strtol (glibc symbols <= 2.17). */
#include "helper.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define OWNER_FD 3
#define CONTROL_FD 4

enum action { ACT_KILL, ACT_DRAIN, ACT_IGNORE, ACT_BAD };

static enum action
parse_action(const char *s)
{
    if (strcmp(s, "kill") == 0)
        return ACT_KILL;
    if (strcmp(s, "drain") == 0)
        return ACT_DRAIN;
    if (strcmp(s, "ignore") == 0)
        return ACT_IGNORE;
    return ACT_BAD;
}

/* Close every descriptor but 0-2 and ours: the owner's files must not be held open here. */
static void
close_others(void)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, CONTROL_FD + 1, ~0U, 0) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 1 << 20)
        max = 1 << 20;
    for (long fd = CONTROL_FD + 1; fd < max; fd++)
        close((int)fd);
}

static int
path_join(char *out, size_t size, const char *dir, const char *name)
{
    int n = snprintf(out, size, "%s/%s", dir, name);
    return n > 0 && (size_t)n < size ? 0 : -1;
}

static int
write_file(const char *dir, const char *name, const char *value)
{
    char path[PATH_MAX];
    if (path_join(path, sizeof path, dir, name) < 0) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, value, strlen(value));
    int saved = errno;
    close(fd);
    errno = saved;
    return n < 0 ? -1 : 0;
}

static void
format_uint(char *out, size_t size, unsigned long value)
{
    char tmp[32];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value && n < sizeof tmp);
    size_t i = 0;
    while (n && i + 1 < size)
        out[i++] = tmp[--n];
    out[i] = '\0';
}

/* 1 if cgroup.events says populated 1, 0 if 0, -1 if it can't be read (the cgroup is gone). */
static int
read_populated(int events_fd)
{
    char buf[512];
    ssize_t n = pread(events_fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    const char *p = strstr(buf, "populated ");
    if (p == NULL)
        return -1;
    return p[10] == '0' ? 0 : 1;
}

/* Wait until the cgroup (and everything below it) holds no process. With `kill`, write
 * cgroup.kill first and again every second while something is left (a process moved in
 * meanwhile); the kernel kills forks that race with it. */
static void
wait_empty(const char *cgroup, int kill)
{
    char path[PATH_MAX];
    if (path_join(path, sizeof path, cgroup, "cgroup.events") < 0)
        return;
    int events_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (events_fd < 0)
        return; /* gone: nothing left to wait for */
    for (;;) {
        if (kill && write_file(cgroup, "cgroup.kill", "1") < 0 && errno == ENOENT)
            break;
        int populated = read_populated(events_fd);
        if (populated <= 0)
            break;
        /* cgroup.events signals POLLPRI on each change; poll again at least every second. */
        struct pollfd p = { .fd = events_fd, .events = POLLPRI };
        (void)poll(&p, 1, 1000);
        if (read_populated(events_fd) <= 0)
            break;
    }
    close(events_fd);
}

/* rmdir the cgroup and every cgroup below it, children first. */
static void
remove_tree(const char *dir, int depth)
{
    if (depth > 64)
        return;
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_type != DT_DIR || strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char sub[PATH_MAX];
            if (path_join(sub, sizeof sub, dir, e->d_name) == 0)
                remove_tree(sub, depth + 1);
        }
        closedir(d);
    }
    (void)rmdir(dir);
}

/* The last of 'k', 'd' or 'x' already waiting on the control socket, 0 if none: what an
 * owner that has just died said before it died (detach() writes 'd' and returns). */
static char
last_word(void)
{
    char last = 0, cmd;
    struct pollfd c = { .fd = CONTROL_FD, .events = POLLIN };
    while (poll(&c, 1, 0) > 0 && read(CONTROL_FD, &cmd, 1) == 1) {
        if (cmd == 'k' || cmd == 'd' || cmd == 'x')
            last = cmd;
    }
    return last;
}

static int
finish(const char *cgroup, int kill, int answer)
{
    wait_empty(cgroup, kill);
    remove_tree(cgroup, 0);
    if (answer) {
        char k = 'k';
        (void)write(CONTROL_FD, &k, 1);
    }
    return 0;
}

int
helper_watch_main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "pgjob-helper watch: usage: watch CGROUP HOME ON_EXIT ON_EOF "
                        "(fd 3: owner pidfd, fd 4: control socket)\n");
        return HELPER_USAGE_EXIT;
    }
    const char *cgroup = argv[1], *home = argv[2];
    enum action on_exit = parse_action(argv[3]), on_eof = parse_action(argv[4]);
    if (on_exit == ACT_BAD || on_exit == ACT_IGNORE || on_eof == ACT_BAD
        || fcntl(OWNER_FD, F_GETFD) < 0 || fcntl(CONTROL_FD, F_GETFD) < 0) {
        fprintf(stderr, "pgjob-helper watch: bad arguments or descriptors\n");
        return HELPER_USAGE_EXIT;
    }
    close_others();

    /* Its own session already (posix_spawn's setsid); a hangup, a terminal's signals or a
     * stray SIGTERM must not take it away. Only SIGKILL can, and the owner notices that. */
    static const int ignored[] = { SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGPIPE, SIGTSTP,
                                   SIGTTIN, SIGTTOU, SIGUSR1, SIGUSR2 };
    for (size_t i = 0; i < sizeof ignored / sizeof ignored[0]; i++)
        signal(ignored[i], SIG_IGN);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (strcmp(home, "-") != 0) {
        char pid[32];
        format_uint(pid, sizeof pid, (unsigned long)getpid());
        if (write_file(home, "cgroup.procs", pid) < 0) {
            char e = 'E';
            (void)write(CONTROL_FD, &e, 1);
            return 1;
        }
    }
    char ready = 'R';
    if (write(CONTROL_FD, &ready, 1) != 1) {
        /* The owner is gone before we were set up: act as on its exit. */
        return finish(cgroup, on_exit == ACT_KILL, 0);
    }

    int watch_control = 1;
    for (;;) {
        struct pollfd p[2] = { { .fd = OWNER_FD, .events = POLLIN },
                               { .fd = watch_control ? CONTROL_FD : -1, .events = POLLIN } };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return finish(cgroup, on_exit == ACT_KILL, 0);
        }
        if (p[0].revents) {
            /* The owner is gone, but a command it sent before it died still stands: the
             * pidfd and the socket turn readable together when it dies right after. */
            char said = watch_control ? last_word() : 0;
            if (said == 'd')
                return finish(cgroup, 0, 0);
            if (said == 'x')
                return 0;
            return finish(cgroup, said == 'k' || on_exit == ACT_KILL, 0);
        }
        if (!p[1].revents)
            continue;
        char cmd;
        ssize_t n = read(CONTROL_FD, &cmd, 1);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0) { /* the owner exec'd (or is exiting: the pidfd tells next) */
            if (on_eof == ACT_IGNORE) {
                watch_control = 0;
                continue;
            }
            /* An exiting owner closes its files before its pidfd turns readable: give the
             * pidfd a moment, so that the owner's death is what we act on. */
            struct pollfd o = { .fd = OWNER_FD, .events = POLLIN };
            if (poll(&o, 1, 100) > 0)
                return finish(cgroup, on_exit == ACT_KILL, 0);
            return finish(cgroup, on_eof == ACT_KILL, 0);
        }
        switch (cmd) {
        case 'k':
            return finish(cgroup, 1, 1);
        case 'd':
            return finish(cgroup, 0, 0);
        case 'x':
            return 0;
        case 'p':
            on_eof = ACT_IGNORE;
            break;
        default:
            break;
        }
    }
}
