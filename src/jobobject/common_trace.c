/* common_trace.c: C-side trace lines on stderr when PGJOB_DEBUG=1 (the same variable that
 * turns on debug logging in the Python layer), so a user can see every syscall pgjob makes. */
#include "jobobject.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int pgjob_trace_enabled = 0;

void
pgjob_trace_init(void)
{
    const char *value = getenv("PGJOB_DEBUG");
    pgjob_trace_enabled = value != NULL && value[0] != '\0' && strcmp(value, "0") != 0;
}

void
pgjob_trace(const char *fmt, ...)
{
    va_list ap;
    char line[512];

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    /* One fprintf per line keeps lines whole when several threads trace at once. */
    fprintf(stderr, "pgjob[c]: %s\n", line);
    fflush(stderr);
}
