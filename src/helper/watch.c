/* watch.c: placeholder until the mode is written. */
#include "helper.h"

#include <stdio.h>

int
helper_watch_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "pgjob-helper: mode 'watch' is not built into this version\n");
    return HELPER_USAGE_EXIT;
}
