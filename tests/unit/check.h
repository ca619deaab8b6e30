// check.h: the CHECK of the unit tests. CHECK(cond, fmt, ...) counts a check
// in n_checks and, when cond is false, prints "FAIL file:line: " and the
// printf-style message to stderr and counts it in n_fail. Included by one
// test file each (statics).
#ifndef PQ_CHECK_H
#define PQ_CHECK_H

#include <stdio.h>

static int n_fail, n_checks;

#define CHECK(cond, ...)                                          \
    do {                                                          \
        n_checks++;                                               \
        if (!(cond)) {                                            \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                         \
            fputc('\n', stderr);                                  \
            n_fail++;                                             \
        }                                                         \
    } while (0)

#endif
