/* common.c: what pgjob-helper's modes share: parsing their numeric arguments, closing
 * descriptors, writing whole buffers. Only old, unversioned-in-practice libc calls. */
#include "helper.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

int
helper_parse_long(const char *text, long *out)
{
    unsigned long value = 0, limit = (unsigned long)LONG_MAX;
    int negative = 0;

    if (text == NULL)
        return -1;
    if (*text == '-') {
        negative = 1;
        limit += 1; /* -LONG_MIN */
        text++;
    }
    if (*text == '\0')
        return -1;
    for (; *text != '\0'; text++) {
        unsigned int digit = (unsigned int)(*text - '0');
        if (digit > 9 || value > (limit - digit) / 10)
            return -1;
        value = value * 10 + digit;
    }
    *out = negative ? (long)(0 - value) : (long)value;
    return 0;
}

void
helper_close_fds_from(int low)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned int)low, ~0u, 0) == 0)
        return;
#endif
    /* Kernels before 5.9: one by one, up to the descriptor limit. */
    struct rlimit rl;
    long limit = 4096;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 1u << 20)
        limit = (long)rl.rlim_cur;
    for (long fd = low; fd < limit; fd++)
        close((int)fd);
}

void
helper_write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return; /* the reader is gone: nobody to tell */
        }
        p += n;
        len -= (size_t)n;
    }
}

int
helper_usage(const char *usage)
{
    static const char head[] = "pgjob-helper: usage: pgjob-helper ";
    helper_write_all(2, head, sizeof(head) - 1);
    helper_write_all(2, usage, strlen(usage));
    helper_write_all(2, "\n", 1);
    return HELPER_USAGE_EXIT;
}
