// testdir.h: a unit test's repository root and scratch directory. top is
// PQ_TOP (else "."); testdir_make makes a fresh directory from a mkdtemp
// template, testdir_remove removes it with all it holds. Included by one
// test file each (statics).
#ifndef PQ_TESTDIR_H
#define PQ_TESTDIR_H

#include <stdio.h>
#include <stdlib.h>

static char top[2048];

// Sets top and makes the directory (tmpl is rewritten); 0, or -1 with the
// reason on stderr.
static int testdir_make(char *tmpl) {
    const char *t = getenv("PQ_TOP");
    snprintf(top, sizeof top, "%s", t ? t : ".");
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

static void testdir_remove(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

#endif
