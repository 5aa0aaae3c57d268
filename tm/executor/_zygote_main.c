/* The executor's zygote as a small executable of its own: run as ``_zygote EXECUTOR_PID``
 * with fd 3 a connected Unix stream socket to the executor (tm/executor/launcher.py starts it
 * where it is built, else ``python zygote.py``; tm/executor/zygote.py describes the protocol).
 *
 * Why not the interpreter: each job's shepherd is a fork of the zygote, and a fork copies the
 * page tables of the process forked and tears them down at the shepherd's exit. A Python
 * zygote is some 12 MB resident; this one a few hundred KB, and a job's fork and exit cost
 * several times less CPU. The loop (_zygote.c) and the shepherd (_shepherd_job.c) are the
 * same code as in the Python module. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "_shepherd.h"

#define CONTROL_FD 3

static volatile sig_atomic_t stop;

static void on_interrupt(int sig) {
    (void)sig;
    stop = 1;
}

static int interrupted(void) { return stop; }

int main(int argc, char **argv) {
    char *end = NULL;
    long executor = argc == 2 ? strtol(argv[1], &end, 10) : 0;
    if (argc != 2 || !end || *end || executor <= 0) {
        put(2, "tm shim: usage: _zygote EXECUTOR_PID (with fd 3 the executor's socket)\n");
        return 125;
    }
    /* The control signals ignored now, a job's shell gets ignored too (as the Python zygote
     * reads them with signal.getsignal before it changes any). */
    sigset_t control;
    control_signals(&control);
    unsigned long ignored = 0;
    for (int sig = 1; sig < 32; sig++) {
        struct sigaction old;
        if (sigismember(&control, sig) && sigaction(sig, NULL, &old) == 0 &&
            old.sa_handler == SIG_IGN)
            ignored |= 1UL << (sig - 1);
    }
    /* As the interpreter: a write to a closed socket is an error (the executor is gone), and
     * ^C ends the loop quietly (the shepherds take SIGTERM from their parent's death). */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGXFSZ, &sa, NULL);
    if (!(ignored >> (SIGINT - 1) & 1)) {
        sa.sa_handler = on_interrupt; /* no SA_RESTART: poll returns EINTR */
        sigaction(SIGINT, &sa, NULL);
    }
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != (pid_t)executor)
        return 0; /* the executor is gone already */
    int flags = fcntl(CONTROL_FD, F_GETFD);
    if (flags < 0 || fcntl(CONTROL_FD, F_SETFD, flags | FD_CLOEXEC) < 0) {
        put(2, "tm shim: the zygote has no socket on fd 3\n");
        return 125;
    }
    if (zygote_serve(CONTROL_FD, ignored, interrupted) == -1 && errno != EPIPE) {
        put(2, "tm shim: the zygote's loop failed\n");
        return 1;
    }
    return 0;
}
