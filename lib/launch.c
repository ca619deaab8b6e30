// launch.c: pq_launch_run (see launch.h): fork and exec of the workers, then
// one poll loop that feeds them standard input chunk by chunk, passes signals
// on and reaps them.
#include "launch.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

enum { CHUNK = 1 << 16 };

static int sig_fd[2] = {-1, -1}; // self-pipe: the signal handler writes each signal's number

static void on_signal(int sig) {
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    ssize_t k = write(sig_fd[1], &b, 1);
    (void)k;
    errno = saved;
}

// In the child: the worker's environment, descriptors and signals, then exec.
static void run_worker(const PqLaunch *l, int r, int in_fd, pid_t parent) {
    setpgid(0, 0);                   // its own group: a terminal's Ctrl-C goes to the parent only
    prctl(PR_SET_PDEATHSIG, SIGTERM); // the parent gone: checkpoint and stop
    if (getppid() != parent) _exit(1);
    signal(SIGINT, SIG_DFL), signal(SIGTERM, SIG_DFL), signal(SIGCHLD, SIG_DFL), signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (in_fd >= 0 && (dup2(in_fd, STDIN_FILENO) < 0 || close(in_fd))) _exit(127);
    if (r > 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul < 0 || dup2(nul, STDOUT_FILENO) < 0) _exit(127);
        close(nul);
    }
    char v[32];
    snprintf(v, sizeof v, "%d", r);
    setenv("RANK", v, 1), setenv("LOCAL_RANK", v, 1);
    snprintf(v, sizeof v, "%d", l->n);
    setenv("WORLD_SIZE", v, 1);
    snprintf(v, sizeof v, "%d", l->port);
    setenv("MASTER_PORT", v, 1);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    execv(l->exe, l->argv[r]);
    fprintf(stderr, "%s: rank %d: cannot run %s: %s\n", l->name, r, l->exe, strerror(errno));
    _exit(127);
}

int pq_launch_run(const PqLaunch *l, PqErr *e) {
    int n = l->n, rc = -1;
    pid_t *pid = pq_xcalloc((size_t)n, sizeof *pid), parent = getpid();
    int *wfd = pq_xmalloc((size_t)n * sizeof *wfd), *who = pq_xmalloc((size_t)(n + 2) * sizeof *who);
    size_t *off = pq_xcalloc((size_t)n, sizeof *off);
    struct pollfd *pf = pq_xmalloc((size_t)(n + 2) * sizeof *pf);
    char *buf = pq_xmalloc(CHUNK);
    for (int r = 0; r < n; r++) wfd[r] = -1;
    struct sigaction sa, old[4];
    const int sigs[3] = {SIGINT, SIGTERM, SIGCHLD};
    if (pipe2(sig_fd, O_CLOEXEC | O_NONBLOCK)) {
        pq_err(e, "pipe: %s", strerror(errno));
        goto out;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &sa, &old[i]);
    sa.sa_handler = SIG_IGN; // a worker that stopped reading is noticed by EPIPE
    sigaction(SIGPIPE, &sa, &old[3]);

    int started = 0;
    for (; started < n; started++) {
        int p[2] = {-1, -1};
        if (l->feed_stdin && pipe2(p, O_CLOEXEC)) {
            pq_err(e, "pipe: %s", strerror(errno));
            break;
        }
        pid_t k = fork();
        if (k < 0) {
            pq_err(e, "fork: %s", strerror(errno));
            if (p[0] >= 0) close(p[0]), close(p[1]);
            break;
        }
        if (k == 0) run_worker(l, started, p[0], parent);
        pid[started] = k;
        if (p[0] >= 0) {
            close(p[0]);
            wfd[started] = p[1];
            fcntl(p[1], F_SETFL, fcntl(p[1], F_GETFL) | O_NONBLOCK);
            fcntl(p[1], F_SETPIPE_SZ, 1 << 20); // more slack between the workers (best effort)
        }
    }
    int running = started, failed = -1, status = 0, fail_status = 0, in_open = l->feed_stdin && started == n;
    if (started < n) { // could not start them all: stop those that run
        for (int r = 0; r < started; r++) kill(pid[r], SIGKILL);
        failed = n;
    }
    size_t len = 0; // bytes of buf being delivered; each worker has taken off[r] of them
    while (running > 0) {
        int np = 0, in_at = -1;
        pf[np++] = (struct pollfd){sig_fd[0], POLLIN, 0};
        if (in_open && len == 0) in_at = np, pf[np++] = (struct pollfd){STDIN_FILENO, POLLIN, 0};
        for (int r = 0; r < n; r++)
            if (wfd[r] >= 0 && off[r] < len) who[np] = r, pf[np++] = (struct pollfd){wfd[r], POLLOUT, 0};
        if (poll(pf, (nfds_t)np, -1) < 0 && errno != EINTR) {
            pq_err(e, "poll: %s", strerror(errno));
            for (int r = 0; r < n; r++)
                if (pid[r] > 0) kill(pid[r], SIGKILL);
            failed = n;
            in_open = 0;
        }
        // signals: SIGINT/SIGTERM passed on; SIGCHLD just wakes the reaping below
        unsigned char sb[64];
        ssize_t ns;
        while ((ns = read(sig_fd[0], sb, sizeof sb)) > 0)
            for (ssize_t i = 0; i < ns; i++)
                if (sb[i] == SIGINT || sb[i] == SIGTERM)
                    for (int r = 0; r < n; r++)
                        if (pid[r] > 0) kill(pid[r], sb[i]);
        // exits: of those reaped together, a worker killed by a signal is
        // more likely the cause than one that saw its sum fail
        int cause = -1, cause_ws = 0;
        for (int r = 0; r < n; r++) {
            int ws;
            if (pid[r] <= 0 || waitpid(pid[r], &ws, WNOHANG) != pid[r]) continue;
            pid[r] = 0, running--;
            if (wfd[r] >= 0) close(wfd[r]), wfd[r] = -1;
            int s = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
            if (WIFEXITED(ws) && (s == 0 || s == 1 || s == 130)) {
                if (s > status) status = s;
            } else if (failed < 0 && (cause < 0 || (WIFSIGNALED(ws) && !WIFSIGNALED(cause_ws)))) {
                cause = r, cause_ws = ws;
            }
        }
        if (cause >= 0) { // the first failure: the others would wait for it in a sum forever
            failed = cause, fail_status = WIFEXITED(cause_ws) ? WEXITSTATUS(cause_ws) : 128 + WTERMSIG(cause_ws);
            if (WIFEXITED(cause_ws))
                fprintf(stderr, "%s: rank %d exited with status %d; stopping the other ranks\n", l->name, cause,
                        fail_status);
            else
                fprintf(stderr, "%s: rank %d was killed by signal %d (%s); stopping the other ranks\n", l->name,
                        cause, WTERMSIG(cause_ws), strsignal(WTERMSIG(cause_ws)));
            for (int q = 0; q < n; q++)
                if (pid[q] > 0) kill(pid[q], SIGKILL);
            in_open = 0;
            for (int q = 0; q < n; q++)
                if (wfd[q] >= 0) close(wfd[q]), wfd[q] = -1;
        }
        // input: a chunk is read once every worker has taken the one before
        if (in_at >= 0 && pf[in_at].revents && in_open) {
            ssize_t k = read(STDIN_FILENO, buf, CHUNK);
            if (k > 0) {
                len = (size_t)k;
                memset(off, 0, (size_t)n * sizeof *off);
            } else if (k == 0 || (errno != EINTR && errno != EAGAIN)) {
                if (k < 0) fprintf(stderr, "%s: reading standard input: %s\n", l->name, strerror(errno));
                in_open = 0; // end of input: the workers see it too
                for (int r = 0; r < n; r++)
                    if (wfd[r] >= 0) close(wfd[r]), wfd[r] = -1;
            }
        }
        for (int i = 1; i < np; i++) {
            if (i == in_at || !pf[i].revents) continue;
            int r = who[i];
            if (wfd[r] < 0) continue;
            ssize_t k = write(wfd[r], buf + off[r], len - off[r]);
            if (k > 0) off[r] += (size_t)k;
            else if (k < 0 && errno != EINTR && errno != EAGAIN) close(wfd[r]), wfd[r] = -1; // it stopped reading
        }
        int open_left = 0, all_taken = 1;
        for (int r = 0; r < n; r++)
            if (wfd[r] >= 0) open_left = 1, all_taken &= off[r] == len;
        if (all_taken) len = 0;
        if (!open_left) in_open = 0; // nobody reads any more
    }
    rc = failed >= 0 && failed < n ? fail_status : failed == n ? -1 : status;
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &old[i], NULL);
    sigaction(SIGPIPE, &old[3], NULL);
out:
    for (int r = 0; r < n; r++)
        if (wfd[r] >= 0) close(wfd[r]);
    if (sig_fd[0] >= 0) close(sig_fd[0]), close(sig_fd[1]), sig_fd[0] = sig_fd[1] = -1;
    free(pid);
    free(wfd);
    free(who);
    free(off);
    free(pf);
    free(buf);
    return rc;
}
