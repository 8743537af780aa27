/* linux_clone.c: the one way pgjob's C core creates a process that shares the caller's memory
 * until it execs (CLONE_VM|CLONE_VFORK on a stack of ours), with clone3 where the caller needs
 * what only clone3 has: a start in a given cgroup (CLONE_INTO_CGROUP, Linux 5.7). */
#include "jobobject.h"

#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#  define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef SYS_clone3
#  define SYS_clone3 435 /* the same number on every architecture (asm-generic) */
#endif

/* struct clone_args of clone3(2) up to .cgroup (CLONE_ARGS_SIZE_VER2), spelled out so
 * <linux/sched.h> need not fight <sched.h>. */
struct pgjob_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

#if defined(__x86_64__)
/* clone3 with a new stack: the child starts on that stack as the syscall returns, where no C
 * frame exists, so neither glibc's syscall() (its `ret` would pop garbage) nor a C caller can
 * take it. The child calls fn(arg) and exits with its result, as glibc's clone() does. The
 * kernel preserves every register but rax, rcx and r11 in the child: fn and arg ride in r12
 * and r13. The stack top is 16-byte aligned (page-aligned stacks), so the `call` leaves fn's
 * frame aligned as the ABI wants. */
static long
clone3_on_stack(struct pgjob_clone_args *args, int (*fn)(void *), void *arg)
{
    long ret;
    register void *fn_reg __asm__("r12") = (void *)fn;
    register void *arg_reg __asm__("r13") = arg;
    __asm__ __volatile__(
        "syscall\n\t"
        "testq %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xorl %%ebp, %%ebp\n\t"
        "movq %%r13, %%rdi\n\t"
        "callq *%%r12\n\t"
        "movl %%eax, %%edi\n\t"
        "movl %[sys_exit], %%eax\n\t"
        "syscall\n\t"
        "hlt\n\t"
        "1:\n\t"
        : "=a"(ret)
        : "0"((long)SYS_clone3), "D"(args), "S"(sizeof(*args)), "r"(fn_reg), "r"(arg_reg),
          [sys_exit] "i"(SYS_exit)
        : "rcx", "r11", "memory");
    return ret;
}
#  define PGJOB_CLONE3_ON_STACK 1
#endif

pid_t
pgjob_clone_vm(int (*fn)(void *), void *arg, char *stack, size_t stack_size, int flags,
               int *pidfd, int cgroup_fd)
{
    if (cgroup_fd < 0) {
        /* glibc's clone: every architecture, every kernel since 2.6 (CLONE_PIDFD: 5.2).
         * The stack grows down on every architecture Linux/Python supports except hppa. */
        return clone(fn, stack + stack_size, flags | (pidfd != NULL ? CLONE_PIDFD : 0), arg,
                     pidfd);
    }
    struct pgjob_clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = (uint64_t)(unsigned int)(flags & ~0xff) | CLONE_INTO_CGROUP
                 | (pidfd != NULL ? CLONE_PIDFD : 0);
    args.exit_signal = (uint64_t)(flags & 0xff);
    args.pidfd = (uint64_t)(uintptr_t)pidfd;
    args.cgroup = (uint64_t)cgroup_fd;
#ifdef PGJOB_CLONE3_ON_STACK
    args.stack = (uint64_t)(uintptr_t)stack;
    args.stack_size = (uint64_t)stack_size;
    long ret = clone3_on_stack(&args, fn, arg);
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return (pid_t)ret;
#else
    /* No trampoline for this architecture: the child gets a copy-on-write copy of our memory
     * (still CLONE_VFORK: we wait until it execs) and returns from clone3 like fork(), so fn
     * runs on its copy of our stack. Slower for a large caller, and fn's writes to memory are
     * its own: only callers that need nothing back from fn but errno-by-pipe may come here. */
    (void)stack;
    (void)stack_size;
    args.flags &= ~(uint64_t)CLONE_VM;
    long ret = syscall(SYS_clone3, &args, sizeof(args));
    if (ret == 0)
        _exit(fn(arg));
    return (pid_t)ret;
#endif
}
