/* main.c: pgjob-helper's entry point: dispatch on the mode (argv[1]). */
#include "helper.h"

#include <string.h>

int
main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "init") == 0)
        return helper_init_main(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "watch") == 0)
        return helper_watch_main(argc - 1, argv + 1);
    return helper_usage("init|watch ... (a helper process of the pgjob library, started by it)");
}
