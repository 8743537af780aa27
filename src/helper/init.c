/* init.c: placeholder until the mode is written. */
#include "helper.h"

#include <stdio.h>

int
helper_init_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "pgjob-helper: mode 'init' is not built into this version\n");
    return HELPER_USAGE_EXIT;
}
