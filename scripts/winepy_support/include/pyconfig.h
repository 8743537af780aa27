/* pyconfig.h for cross-compiling extension modules with MinGW-w64 (x86_64) against the
 * python.org Windows CPython 3.9 / 3.11 / 3.12 / 3.13 / 3.14 DLL (MSVC-built, release,
 * GIL-enabled).
 *
 * Why a hand-written one: the local CPython's include dir carries the Linux pyconfig.h
 * (LONG is 8 bytes there, etc.).  scripts/winepy copies the headers into its cache and
 * puts this file in place of that one.  Values mirror CPython's PC/pyconfig.h for
 * MS_WIN64; anything that changes struct layouts (Py_DEBUG, Py_TRACE_REFS,
 * Py_GIL_DISABLED) must stay undefined, because the DLL is a non-debug GIL build.
 */
#ifndef Py_CONFIG_H
#define Py_CONFIG_H

#if !defined(__MINGW32__) || !defined(_WIN64)
#  error "this pyconfig.h is only for x86_64-w64-mingw32-gcc"
#endif

#include <io.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>

/* Platform identity (PC/pyconfig.h: MS_WIN32 covers Win64 too). */
#define MS_WIN32
#define MS_WIN64
#define MS_WINDOWS
#define NT_THREADS
#define WITH_THREAD
#define PLATFORM "win32"
#define COMPILER "[gcc]"
#define Py_WINVER 0x0A00            /* _WIN32_WINNT_WIN10, as 3.13's PC/pyconfig.h */

/* The core lives in pythonXY.dll; PyAPI_FUNC/PyAPI_DATA become __declspec(dllimport). */
#define Py_ENABLE_SHARED 1
#define MS_COREDLL
#define HAVE_DECLSPEC_DLL

/* Py_ssize_t is 64-bit on Win64 (PC/pyconfig.h: typedef __int64 Py_ssize_t). */
typedef long long Py_ssize_t;
#if PY_VERSION_HEX >= 0x030B0000   /* (3.9's pyport.h defines it itself, the same value) */
#  define PY_SSIZE_T_MAX LLONG_MAX
#endif
#define HAVE_PY_SSIZE_T 1

#define PY_LONG_LONG long long
#define PY_LLONG_MIN LLONG_MIN
#define PY_LLONG_MAX LLONG_MAX
#define PY_ULLONG_MAX ULLONG_MAX
#define PY_UINT32_T uint32_t
#define PY_UINT64_T uint64_t
#define PY_INT32_T int32_t
#define PY_INT64_T int64_t
#define HAVE_UINTPTR_T 1
#define HAVE_INTPTR_T 1

/* LLP64: long is 32-bit, pointers 64-bit. */
#define SIZEOF_SHORT 2
#define SIZEOF_INT 4
#define SIZEOF_LONG 4
#define ALIGNOF_LONG 4
#define SIZEOF_LONG_LONG 8
#define SIZEOF_DOUBLE 8
#define SIZEOF_FLOAT 4
#define SIZEOF_VOID_P 8
#define SIZEOF_SIZE_T 8
#define ALIGNOF_SIZE_T 8
#define ALIGNOF_MAX_ALIGN_T 8
#define SIZEOF_TIME_T 8
#define SIZEOF_OFF_T 4
#define SIZEOF_FPOS_T 8
#define SIZEOF_HKEY 8
#define SIZEOF_WCHAR_T 2
#define SIZEOF__BOOL 1
#define SIZEOF_PID_T SIZEOF_INT
#define LONG_BIT 32
#define WORD_BIT 32
#define HAVE_LARGEFILE_SUPPORT
#define DOUBLE_IS_LITTLE_ENDIAN_IEEE754 1

/* Headers and functions the Windows CRT provides (subset of PC/pyconfig.h). */
#define HAVE_IO_H
#define HAVE_WCHAR_H 1
#define HAVE_ERRNO_H 1
#define HAVE_FCNTL_H 1
#define HAVE_PROCESS_H 1
#define HAVE_SIGNAL_H 1
#define HAVE_STDDEF_H 1
#define HAVE_SYS_STAT_H 1
#define HAVE_SYS_TYPES_H 1
#define HAVE_DIRECT_H 1
#define HAVE_CONIO_H 1
#define HAVE_CLOCK
#define HAVE_STRERROR
#define HAVE_STRFTIME
#define HAVE_MKTIME
#define HAVE_PUTENV
#define HAVE_GETPID
#define HAVE_DYNAMIC_LOADING
#define HAVE_DECL_TZNAME 1
#define HAVE_TZNAME
#define DONT_HAVE_SIG_ALARM
#define DONT_HAVE_SIG_PAUSE
#define RETSIGTYPE void
#define STDC_HEADERS 1
#define WITH_DOC_STRINGS 1
#define WITH_PYMALLOC 1

#endif /* !Py_CONFIG_H */
