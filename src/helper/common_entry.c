/* common_entry.c: pgjob-helper's entry point on x86_64 (setup.py links with -e helper_entry
 * there). `pgjob-helper init ...` goes straight to the init, which makes raw system calls
 * only (common_sys.h) and never needs libc's startup: that startup (cpu feature probing
 * with cpuid, which traps where the machine is virtual) is most of a Job's start otherwise.
 * Every other mode goes on to libc's _start with the stack and registers as the kernel (or
 * the dynamic loader, whose atexit handler is in rdx) left them. */
#include "helper.h"

#if defined(__x86_64__)
int helper_init_main(int argc, char **argv);

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
    "1:  jmp _start\n"
    ".size helper_entry, .-helper_entry\n");
#endif
