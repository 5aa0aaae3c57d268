/* The executor's zygote loop, without Python: tm/executor/zygote.py describes the protocol.
 *
 * zygote_serve(fd, ignored, interrupted) receives each job's request on fd, forks the job's
 * shepherd (_shepherd_job.c, which never returns), which opens the job's files and says how it
 * went on a pipe of its own; the zygote then reports its pid ("S") or why the job cannot start
 * ("R"), and at its end its wait status and the rusage of its tree ("E").
 *
 * Run by the standalone zygote (_zygote_main.c, the executor's: a fork of a small C process
 * copies little) and by the Python module's serve() (_shepherd.c: the same loop in an
 * interpreter, where the executable is not built).
 *
 * ``ignored``: a bit mask (bit sig-1) of the control signals that were ignored when the zygote
 * started; a job's shell gets them ignored too, as with a plain exec.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "_shepherd.h"

#define MAX_FDS_PER_READ 32
#define NFIELDS 10
#define MAX_REQUEST (64u * 1024u * 1024u)
#define READ_CHUNK (64 * 1024)

/* -- the zygote ------------------------------------------------------------------------------ */

struct zygote {
    int sock;
    int sigfd;
    pid_t me;
    unsigned long ignored;
    char *in;
    size_t in_len, in_cap;
    struct running {
        pid_t pid;
        long id;
        int status; /* the read end of its status pipe, until the start is settled; else -1 */
        int refused; /* its start failed (said with "R"/"F"): its end is not reported */
    } *jobs;
    size_t jobs_len, jobs_cap;
    char *out;
    size_t out_len, out_cap;
    int broken;
};

static int grow(void **buf, size_t *cap, size_t want, size_t item) {
    if (want <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < want)
        cap2 *= 2;
    void *p = realloc(*buf, cap2 * item);
    if (!p)
        return -1;
    *buf = p;
    *cap = cap2;
    return 0;
}

static void tell(struct zygote *z, const char *fmt, ...) {
    char line[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    if (grow((void **)&z->out, &z->out_cap, z->out_len + (size_t)n + 1, 1) < 0)
        return;
    memcpy(z->out + z->out_len, line, (size_t)n);
    z->out_len += (size_t)n;
    z->out[z->out_len++] = '\n';
}

static void flush(struct zygote *z) {
    size_t done = 0;
    while (done < z->out_len && !z->broken) {
        ssize_t w = write(z->sock, z->out + done, z->out_len - done);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            z->broken = 1; /* the executor is gone */
            break;
        }
        done += (size_t)w;
    }
    z->out_len = 0;
}

/* A request: NUL-terminated fields ID, GRACE, UMASK, CWD, SHELL, COMMAND, STDOUT, STDERR,
 * LOGFILE, LOGDIR, then K=V each. */
static void start_job(struct zygote *z, char *body, size_t size) {
    struct job job;
    memset(&job, 0, sizeof job);
    char *fields[NFIELDS];
    size_t at = 0;
    int nfields = 0;
    if (size == 0 || body[size - 1] != '\0') {
        tell(z, "F 0 the executor's zygote received a malformed request");
        return;
    }
    while (nfields < NFIELDS && at < size) {
        fields[nfields++] = body + at;
        at += strlen(body + at) + 1;
    }
    if (nfields < NFIELDS) {
        tell(z, "F 0 the executor's zygote received a malformed request");
        return;
    }
    job.id = strtol(fields[0], NULL, 10);
    job.grace = strtod(fields[1], NULL);
    job.umask = (int)strtol(fields[2], NULL, 10);
    job.cwd = fields[3];
    job.shell = fields[4];
    job.command = fields[5];
    job.out = fields[6];
    job.err = fields[7];
    job.log = fields[8];
    job.logdir = fields[9];
    size_t nenv = 0;
    for (size_t i = at; i < size; i += strlen(body + i) + 1)
        nenv++;
    char **envp = malloc((nenv + 1) * sizeof(char *));
    if (!envp) {
        tell(z, "F %ld the executor's zygote is out of memory", job.id);
        return;
    }
    nenv = 0;
    for (size_t i = at; i < size; i += strlen(body + i) + 1)
        envp[nenv++] = body + i;
    envp[nenv] = NULL;
    job.envp = envp;
    int status[2];
    if (grow((void **)&z->jobs, &z->jobs_cap, z->jobs_len + 1, sizeof *z->jobs) < 0 ||
        pipe2(status, O_CLOEXEC | O_NONBLOCK) < 0) {
        tell(z, "F %ld the executor's zygote cannot prepare the start: %s", job.id,
             strerror(errno));
        free(envp);
        return;
    }
    job.status = status[1];
    sigset_t control, old;
    control_signals(&control);
    sigprocmask(SIG_BLOCK, &control, &old);
    pid_t pid = fork();
    if (pid == 0)
        shepherd_main(&job, z->me, z->ignored);
    int e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    close(status[1]);
    free(envp);
    if (pid < 0) {
        close(status[0]);
        tell(z, "F %ld cannot fork the job's shepherd: %s", job.id, strerror(e));
        return;
    }
    /* "S" once the shepherd has opened the job's files (settle). */
    z->jobs[z->jobs_len].pid = pid;
    z->jobs[z->jobs_len].id = job.id;
    z->jobs[z->jobs_len].status = status[0];
    z->jobs[z->jobs_len].refused = 0;
    z->jobs_len++;
}

/* The shepherd of job i has said how opening its files went (or ended without a word). */
static void settle(struct zygote *z, struct running *job) {
    char msg[4100];
    ssize_t n = read(job->status, msg, sizeof msg - 1);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    close(job->status);
    job->status = -1;
    if (n > 0 && msg[0] == '+') {
        tell(z, "S %ld %ld %c", job->id, (long)job->pid, n > 1 ? msg[1] : '0');
        return;
    }
    job->refused = 1;
    if (n < 3) {
        tell(z, "F %ld the job's shepherd ended before it opened the job's files", job->id);
        return;
    }
    msg[n] = '\0';
    char kind = msg[0];
    char *rest;
    int e = (int)strtol(msg + 2, &rest, 10);
    const char *path = *rest == ' ' ? rest + 1 : rest;
    const char *what = kind == 'o' ? "stdout" : kind == 'e' ? "stderr" : "log";
    if (kind == 'c')
        tell(z, "R %ld working directory %s does not exist", job->id, path);
    else if (kind == 'C')
        tell(z, "R %ld working directory %s is not a directory", job->id, path);
    else if (kind == 'd')
        tell(z, "R %ld cannot create log directory %s: %s", job->id, path, strerror(e));
    else if (kind == 'n')
        tell(z, "R %ld cannot open %s: %s", job->id, path, strerror(e));
    else
        tell(z, "R %ld cannot write %s file %s: %s", job->id, what, path, strerror(e));
}

/* Read what the executor sent; serve every complete request. 0 at its end. */
static int receive(struct zygote *z) {
    if (grow((void **)&z->in, &z->in_cap, z->in_len + READ_CHUNK, 1) < 0)
        return 0;
    char control[CMSG_SPACE(MAX_FDS_PER_READ * sizeof(int))];
    struct iovec iov = {z->in + z->in_len, READ_CHUNK};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(z->sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0)
        return errno == EINTR || errno == EAGAIN;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        /* The shepherds open the jobs' files: a descriptor sent anyway is not kept. */
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++)
            close(received[i]);
    }
    if (n == 0)
        return 0;
    z->in_len += (size_t)n;
    size_t at = 0;
    while (z->in_len - at >= 4) {
        unsigned char *h = (unsigned char *)z->in + at;
        uint32_t size = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        if (size > MAX_REQUEST) {
            put(2, "tm zygote: request too large: out of step, exiting\n");
            return 0;
        }
        if (z->in_len - at - 4 < size)
            break;
        start_job(z, z->in + at + 4, size);
        at += 4 + size;
    }
    memmove(z->in, z->in + at, z->in_len - at);
    z->in_len -= at;
    return 1;
}

static void reap_shepherds(struct zygote *z) {
    struct signalfd_siginfo info;
    while (read(z->sigfd, &info, sizeof info) == sizeof info)
        ;
    while (z->jobs_len > 0) {
        int status;
        struct rusage ru;
        pid_t pid = wait4(-1, &status, WNOHANG, &ru);
        if (pid <= 0)
            return;
        for (size_t i = 0; i < z->jobs_len; i++) {
            if (z->jobs[i].pid != pid)
                continue;
            if (z->jobs[i].status >= 0)
                settle(z, &z->jobs[i]); /* it has ended: its word is there, or none will come */
            if (!z->jobs[i].refused)
                tell(z, "E %ld %ld %d %ld.%06ld %ld.%06ld %ld", z->jobs[i].id, (long)pid,
                     status, (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
                     (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, ru.ru_maxrss);
            z->jobs[i] = z->jobs[--z->jobs_len];
            break;
        }
    }
}

int zygote_serve(int sock, unsigned long ignored, int (*interrupted)(void)) {
    struct zygote z;
    memset(&z, 0, sizeof z);
    z.sock = sock;
    z.me = getpid();
    z.ignored = ignored;
    sigset_t chld, old;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &old);
    z.sigfd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
    if (z.sigfd < 0) {
        int e = errno;
        sigprocmask(SIG_SETMASK, &old, NULL);
        errno = e;
        return -1;
    }
    struct pollfd *polls = NULL;
    size_t polls_cap = 0;
    int running = 1;
    int result = 0;
    while (running && !z.broken) {
        /* The socket, the signals, and the status pipe of each start not yet settled. */
        if (grow((void **)&polls, &polls_cap, z.jobs_len + 2, sizeof *polls) < 0) {
            errno = ENOMEM;
            result = -1;
            break;
        }
        nfds_t npolls = 2;
        polls[0] = (struct pollfd){sock, POLLIN, 0};
        polls[1] = (struct pollfd){z.sigfd, POLLIN, 0};
        for (size_t i = 0; i < z.jobs_len; i++)
            if (z.jobs[i].status >= 0)
                polls[npolls++] = (struct pollfd){z.jobs[i].status, POLLIN, 0};
        int n = poll(polls, npolls, -1);
        if (n < 0) {
            if (errno == EINTR) {
                if (interrupted && interrupted()) {
                    result = -2;
                    break;
                }
                continue;
            }
            result = -1;
            break;
        }
        for (nfds_t p = 2; p < npolls; p++) {
            if (!polls[p].revents)
                continue;
            for (size_t i = 0; i < z.jobs_len; i++)
                if (z.jobs[i].status == polls[p].fd) {
                    settle(&z, &z.jobs[i]);
                    break;
                }
        }
        if (polls[0].revents)
            running = receive(&z);
        reap_shepherds(&z);
        flush(&z);
    }
    int e = errno;
    free(polls);
    close(z.sigfd);
    sigprocmask(SIG_SETMASK, &old, NULL);
    for (size_t i = 0; i < z.jobs_len; i++)
        if (z.jobs[i].status >= 0)
            close(z.jobs[i].status);
    free(z.in);
    free(z.jobs);
    free(z.out);
    errno = e;
    return result;
}
