/* jobobject.h: the one internal header of pgjob's C core.
 * Declares the syscall wrappers each src/jobobject/<os>_<family>.c file defines, and the
 * shared error/trace helpers; src/_jobobject.c turns them into the module's method table. */
#ifndef PGJOB_JOBOBJECT_H
#define PGJOB_JOBOBJECT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* PyMem_Calloc is outside the 3.9 limited API (setup.py builds against it, for one abi3
 * wheel): `n` zeroed items of `size` bytes, or NULL with MemoryError set. */
static inline void *
pgjob_zeroed_array(Py_ssize_t n, size_t size)
{
    void *p = NULL;
    if (n >= 0 && size != 0 && (size_t)n <= (size_t)PY_SSIZE_T_MAX / size)
        p = PyMem_Malloc((size_t)n * size);
    if (p == NULL)
        return PyErr_NoMemory();
    memset(p, 0, (size_t)n * size);
    return p;
}

#ifdef MS_WINDOWS
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <windows.h>
#endif

/* ---- common_errors.c: the only way C reports failure (always OSError) ---- */

/* What a failure means, where the C code knows it (psutil's way: at the source). The OSError
 * carries it as ._pgjob_meaning, a pgjob._errors class (or None), and Job._use raises that
 * class from it (pgjob._errors.classify). */
enum pgjob_meaning {
    PGJOB_UNMARKED = 0,      /* the caller knows no more than the code: classify decides */
    PGJOB_NOT_A_JOB_ERROR,   /* about the program, not the job (a missing executable): the
                              * OSError stays what subprocess would raise */
    PGJOB_JOB_ERROR,         /* a job step failed: JobError, or the finer class its code
                              * names everywhere (pgjob._errors.by_code) */
    PGJOB_ALREADY_IN_JOB,
    PGJOB_PROCESS_EXITED,
    PGJOB_UNSUPPORTED,
    PGJOB_LIMIT_EXCEEDED,
};

/* Set OSError for a failed syscall: message "<syscall> failed: <system text>", the name in
 * .syscall, the meaning in ._pgjob_meaning (unless PGJOB_UNMARKED).
 * On Windows `code` is a winerror (kept as .winerror, mapped to .errno by OSError);
 * elsewhere it is an errno. Returns NULL so callers can `return pgjob_oserror(...)`. */
PyObject *pgjob_oserror_as(enum pgjob_meaning meaning, const char *syscall, unsigned long code);
/* The same, naming the file the call was about in .filename (OSError's third argument). */
PyObject *pgjob_oserror_file(enum pgjob_meaning meaning, const char *syscall, unsigned long code,
                             const char *filename);
#define pgjob_oserror(syscall, code) pgjob_oserror_as(PGJOB_UNMARKED, (syscall), (code))
#ifdef MS_WINDOWS
#  define pgjob_last_error_as(meaning, syscall) pgjob_oserror_as((meaning), (syscall), GetLastError())
#else
#  include <errno.h>
#  define pgjob_last_error_as(meaning, syscall) \
      pgjob_oserror_as((meaning), (syscall), (unsigned long)errno)
#endif
#define pgjob_last_error(syscall) pgjob_last_error_as(PGJOB_UNMARKED, (syscall))

/* ---- common_trace.c: C-side tracing, switched on by PGJOB_DEBUG=1 ---- */
extern int pgjob_trace_enabled;
void pgjob_trace_init(void);
void pgjob_trace(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
#define PGJOB_TRACE(...) do { if (pgjob_trace_enabled) pgjob_trace(__VA_ARGS__); } while (0)

/* Handles cross into Python as plain ints, like _winapi does. */
#ifdef MS_WINDOWS
#  define PGJOB_HANDLE_FMT "K"   /* unsigned long long, wide enough for HANDLE on win64 and win32 */
#  define PGJOB_H(v) ((HANDLE)(uintptr_t)(v))
#  define PGJOB_FROM_H(h) PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)(h))

/* ---- win_job.c: Job Object lifecycle, limits, membership, accounting ---- */
PyObject *win_CreateJobObject(PyObject *self, PyObject *args);
PyObject *win_CloseHandle(PyObject *self, PyObject *args);
PyObject *win_SetJobExtendedLimits(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *win_QueryJobExtendedLimits(PyObject *self, PyObject *args);
PyObject *win_SetJobCpuRate(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *win_AssignProcessToJobObject(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *win_IsProcessInJob(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *win_TerminateJobObject(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *win_QueryJobProcessIdList(PyObject *self, PyObject *args);
PyObject *win_QueryJobAccounting(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *win_GetProcessHandleCount(PyObject *self, PyObject *args);
PyObject *win_GetProcessCommandLine(PyObject *self, PyObject *args);
PyObject *win_WineVersion(PyObject *self, PyObject *args);

/* ---- win_port.c: completion-port notifications ---- */
PyObject *win_CreateIoCompletionPort(PyObject *self, PyObject *args);
PyObject *win_AssociateJobCompletionPort(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *win_GetQueuedCompletionStatus(PyObject *self, PyObject *args, PyObject *kwargs);

/* ---- win_spawn.c: CreateProcessW of a child that is a job member from its first instruction ---- */
PyObject *win_CreateProcessInJob(PyObject *self, PyObject *args, PyObject *kwargs);
PyObject *win_JobListSupported(PyObject *self, PyObject *args);
PyObject *win_ResumeThread(PyObject *self, PyObject *args);
#endif /* MS_WINDOWS */

#ifdef __linux__
/* ---- linux_*.c: a job's PID namespace, its init, and spawning into it ---- */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>

/* The pthread calls at their oldest glibc versions, not the ones glibc 2.32/2.34 gave them
 * when it moved libpthread into libc: built here (Debian 12, glibc 2.36), the abi3 wheel's
 * extension then needs nothing newer than GLIBC_2.28 (fcntl64) and auditwheel tags it
 * manylinux_2_28. glibc 2.34 and later keep these versions in libc.so.6; older ones have
 * them in libpthread.so.0, which setup.py links explicitly for that reason. */
#if defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
#  if defined(__x86_64__)
#    define PGJOB_GLIBC_BASE "GLIBC_2.2.5"
#  else
#    define PGJOB_GLIBC_BASE "GLIBC_2.17"
#  endif
__asm__(".symver pthread_once,pthread_once@" PGJOB_GLIBC_BASE);
__asm__(".symver pthread_key_create,pthread_key_create@" PGJOB_GLIBC_BASE);
__asm__(".symver pthread_getspecific,pthread_getspecific@" PGJOB_GLIBC_BASE);
__asm__(".symver pthread_setspecific,pthread_setspecific@" PGJOB_GLIBC_BASE);
__asm__(".symver pthread_sigmask,pthread_sigmask@" PGJOB_GLIBC_BASE);
#endif

/* The init is pgjob-helper's `init` mode: its protocol's numbers are in src/helper/helper.h. */
#include "helper.h"
#define PGJOB_INIT_FAILED_EXIT HELPER_INIT_FAILED_EXIT
#define PGJOB_INIT_OWNER_GONE_EXIT HELPER_INIT_OWNER_GONE_EXIT
#define PGJOB_INIT_IGNORE HELPER_INIT_IGNORE
#define PGJOB_INIT_DRAIN HELPER_INIT_DRAIN
#define PGJOB_INIT_KILL HELPER_INIT_KILL
#define PGJOB_INIT_TERMINATE HELPER_INIT_TERMINATE
#define PGJOB_INIT_DETACH HELPER_INIT_DETACH

/* linux_spawn.c: Popen children (inside a job's PID namespace, or a direct pdeathsig child) */
PyObject *linux_spawn(PyObject *self, PyObject *args, PyObject *kwargs);
/* shared with linux_job.c; async-signal-safe */
void pgjob_close_fds_except(int low, const int *keep, Py_ssize_t n_keep);
/* Every descriptor pgjob keeps lives above 2 and is close-on-exec: `fd` moved there if it
 * is on 0-2 (closed on failure, -1 with errno) */
int pgjob_fd_above_stdio(int fd);
/* The calling thread's two child stacks, PGJOB_CHILD_STACK_SIZE each, kept for its next
 * spawns (NULL with errno set): one thread's vfork-class children never overlap. */
#define PGJOB_CHILD_STACK_SIZE (256 * 1024)
char *pgjob_thread_stacks(void);

/* linux_clone.c: a CLONE_VM child running fn(arg) on [stack, stack + stack_size), created in
 * the cgroup of cgroup_fd (clone3 CLONE_INTO_CGROUP) if it is >= 0; `flags` as for clone(2)
 * (exit signal in the low byte), CLONE_PIDFD added when pidfd is not NULL */
pid_t pgjob_clone_vm(int (*fn)(void *), void *arg, char *stack, size_t stack_size, int flags,
                     int *pidfd, int cgroup_fd);

/* linux_job.c: a job's namespace init */
PyObject *linux_start_init(PyObject *self, PyObject *args, PyObject *kwargs);
#endif /* __linux__ */

#endif /* PGJOB_JOBOBJECT_H */
