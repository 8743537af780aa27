/* common_sys.h: the system calls `pgjob-helper init` makes, each returning the result or
 * -errno. On x86_64 they are the raw instructions: the init then needs nothing of libc, not
 * even its startup, and common_entry.c starts it without running libc's (which costs
 * more than the rest of the init's exec on a machine where cpuid traps to a hypervisor).
 * Elsewhere they are libc's wrappers. Only what has no libc state may go here. */
#ifndef PGJOB_HELPER_COMMON_SYS_H
#define PGJOB_HELPER_COMMON_SYS_H

#include <signal.h>
#include <stddef.h>
#include <sys/syscall.h>

#if defined(__x86_64__)
#  define HELPER_RAW_SYSCALLS 1

static inline long
helper_raw_syscall(long n, long a, long b, long c, long d)
{
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ __volatile__("syscall"
                         : "=a"(ret)
                         : "0"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                         : "rcx", "r11", "memory");
    return ret;
}
#  define HSYS(n, a, b, c, d) helper_raw_syscall((n), (long)(a), (long)(b), (long)(c), (long)(d))
#else
#  include <errno.h>
#  include <unistd.h>
static inline long
helper_libc_syscall(long n, long a, long b, long c, long d)
{
    long ret = syscall(n, a, b, c, d);
    return ret < 0 ? -errno : ret;
}
#  define HSYS(n, a, b, c, d) helper_libc_syscall((n), (long)(a), (long)(b), (long)(c), (long)(d))
#endif

/* The kernel's struct sigaction (not libc's, whose mask is 128 bytes). */
struct helper_kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    unsigned long mask;
};

#define h_read(fd, buf, n) HSYS(SYS_read, (fd), (buf), (n), 0)
#define h_write(fd, buf, n) HSYS(SYS_write, (fd), (buf), (n), 0)
#define h_close(fd) HSYS(SYS_close, (fd), 0, 0, 0)
/* ppoll: arm64 and the newer ABIs have no poll. timeout NULL: forever. */
#define h_ppoll(fds, n, timeout) HSYS(SYS_ppoll, (fds), (n), (timeout), 0)
#define h_setsid() HSYS(SYS_setsid, 0, 0, 0, 0)
#define h_getpid() HSYS(SYS_getpid, 0, 0, 0, 0)
#define h_kill(pid, sig) HSYS(SYS_kill, (pid), (sig), 0, 0)
#define h_prctl(option, arg) HSYS(SYS_prctl, (option), (arg), 0, 0)
#define h_chdir(path) HSYS(SYS_chdir, (path), 0, 0, 0)
#define h_sigaction(sig, act) HSYS(SYS_rt_sigaction, (sig), (act), 0, sizeof(unsigned long))
#define h_sigprocmask_all() \
    HSYS(SYS_rt_sigprocmask, SIG_SETMASK, &helper_all_signals, 0, sizeof(unsigned long))
static const unsigned long helper_all_signals = ~0UL;
#ifndef SYS_close_range
#  define SYS_close_range 436 /* asm-generic and x86_64 alike */
#endif
#define h_close_range(first, last) HSYS(SYS_close_range, (first), (last), 0, 0)
#define h_prlimit_nofile(old) HSYS(SYS_prlimit64, 0, 7 /* RLIMIT_NOFILE */, 0, (old))

#endif
