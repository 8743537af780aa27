/* common_entry.c: pgjob-helper's entry point on x86_64 (setup.py links with -e helper_entry
 * there, and a dynamic link also with -nostartfiles and HELPER_LINKED_DYNAMICALLY).
 * - `pgjob-helper init ...` goes straight to the init, which makes raw system calls only
 *   (common_sys.h) and never needs libc's startup: that startup (cpu feature probing with
 *   cpuid, which traps where the machine is virtual) is most of a Job's start otherwise.
 * - Every other mode starts libc: a static program through crt1's _start; a dynamic one
 *   calls __libc_start_main itself, as crt1 would, so that it can name its oldest version
 *   (GLIBC_2.2.5): crt1 of glibc 2.34 and newer references __libc_start_main@GLIBC_2.34,
 *   which would make a helper built on a new glibc (the sid chroot) refuse to load on an
 *   older one. (A static libc needs crt1's _start: its startup refers to it.) */
#include "helper.h"

#if defined(__x86_64__)
#  ifdef HELPER_LINKED_DYNAMICALLY
__asm__(".symver __libc_start_main,__libc_start_main@GLIBC_2.2.5");
#  endif

int main(int argc, char **argv);
int helper_init_main(int argc, char **argv);
int __libc_start_main(int (*main_fn)(int, char **, char **), int argc, char **argv,
                      void (*init)(void), void (*fini)(void), void (*rtld_fini)(void),
                      void *stack_end);

__asm__(
    ".text\n"
    ".globl helper_entry\n"
    ".type helper_entry,@function\n"
    "helper_entry:\n"
    "    movq (%rsp), %rdi\n"          /* argc */
    "    cmpq $2, %rdi\n"
    "    jl 1f\n"
    "    movq 16(%rsp), %rsi\n"        /* argv[1] */
    "    cmpl $0x74696e69, (%rsi)\n"   /* "init" */
    "    jne 1f\n"
    "    cmpb $0, 4(%rsi)\n"
    "    jne 1f\n"
    "    leaq 16(%rsp), %rsi\n"        /* argv + 1: the mode's own argv, as main passes it */
    "    decq %rdi\n"
    "    xorl %ebp, %ebp\n"
    "    andq $-16, %rsp\n"
    "    call helper_init_main\n"
    "    movl %eax, %edi\n"
    "    movl $231, %eax\n"            /* exit_group */
    "    syscall\n"
    "    hlt\n"
#  ifdef HELPER_LINKED_DYNAMICALLY
    /* glibc's sysdeps/x86_64/start.S: rdx is the dynamic loader's atexit function, argc and
     * argv are on the stack. */
    "1:  xorl %ebp, %ebp\n"
    "    movq %rdx, %r9\n"             /* rtld_fini */
    "    popq %rsi\n"                  /* argc */
    "    movq %rsp, %rdx\n"            /* argv */
    "    andq $-16, %rsp\n"
    "    pushq %rax\n"
    "    pushq %rsp\n"                 /* stack_end */
    "    xorl %r8d, %r8d\n"            /* fini */
    "    xorl %ecx, %ecx\n"            /* init */
    "    leaq main(%rip), %rdi\n"
    "    call __libc_start_main@PLT\n"
    "    hlt\n"
#  else
    "1:  jmp _start\n"                /* untouched: rsp, and rdx (0 from the kernel) */
#  endif
    ".size helper_entry, .-helper_entry\n");
#endif
