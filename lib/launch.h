// launch.h: one host's data-parallel group of worker processes (pq-dpo
// --devices): the parent streams its standard input to every worker as it
// arrives, forwards SIGINT/SIGTERM, and stops them all when one fails.
#ifndef PQ_LAUNCH_H
#define PQ_LAUNCH_H

#include "util.h"

typedef struct PqLaunch {
    const char *name;  // for messages: "pq-dpo"
    const char *exe;   // the program each worker runs ("/proc/self/exe")
    int n;             // workers
    char ***argv;      // n NULL-terminated argument vectors
    int port;          // MASTER_PORT
    int feed_stdin;    // 1: stream standard input to every worker; 0: they inherit it
} PqLaunch;

// Runs the group until every worker has exited. Worker r gets RANK=r,
// WORLD_SIZE=n, LOCAL_RANK=r, MASTER_ADDR=127.0.0.1, MASTER_PORT=port, its
// own process group (so a terminal's Ctrl-C reaches it once, through the
// parent) and SIGTERM when the parent dies; worker 0's standard output is
// the parent's, the others' /dev/null; standard error is shared. Input goes
// to each worker as it arrives (never all buffered), and stops going to one
// that has exited. SIGINT and SIGTERM are passed on. A worker that fails
// (killed, or an exit status other than 0, 1 and 130) is named on stderr and
// the others are killed (they would wait for it in a sum forever).
// Returns the exit status for the parent: the failed worker's (128 + signal
// when killed), else the highest of the workers'; -1 with a message when the
// group cannot start.
int pq_launch_run(const PqLaunch *l, PqErr *e);

#endif
