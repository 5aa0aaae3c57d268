/* The executor's zygote, compiled: tm/executor/zygote.py without an interpreter per job.
 *
 * serve(fd, ignored) runs the zygote's whole loop (tm/executor/zygote.py describes the protocol
 * on fd): it receives each job's request and its three files, forks the job's shepherd
 * (_shepherd_job.c, which never returns into Python), reports its pid ("S"), and at its end
 * its wait status and the rusage of its tree ("E").
 *
 * ``ignored``: a bit mask (bit sig-1) of the control signals that were ignored when the zygote
 * started; a job's shell gets them ignored too, as with a plain exec.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "_shepherd.h"

#define MAX_FDS_PER_READ 32
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
    int *fds;
    size_t fds_head, fds_len, fds_cap;
    struct running {
        pid_t pid;
        long id;
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
    char line[512];
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

static void close_files(int *files) {
    for (int i = 0; i < FDS_PER_JOB; i++)
        close(files[i]);
}

/* A request: NUL-terminated fields ID, GRACE, UMASK, CWD, SHELL, COMMAND, then K=V each. */
static void start_job(struct zygote *z, char *body, size_t size) {
    struct job job;
    memset(&job, 0, sizeof job);
    char *fields[6];
    size_t at = 0;
    int nfields = 0;
    if (size == 0 || body[size - 1] != '\0') {
        tell(z, "F 0 the executor's zygote received a malformed request");
        return;
    }
    while (nfields < 6 && at < size) {
        fields[nfields++] = body + at;
        at += strlen(body + at) + 1;
    }
    if (nfields < 6) {
        tell(z, "F 0 the executor's zygote received a malformed request");
        return;
    }
    job.id = strtol(fields[0], NULL, 10);
    job.grace = strtod(fields[1], NULL);
    job.umask = (int)strtol(fields[2], NULL, 10);
    job.cwd = fields[3];
    job.shell = fields[4];
    job.command = fields[5];
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
    if (z->fds_len < FDS_PER_JOB) {
        tell(z, "F %ld the executor's zygote did not receive the job's files", job.id);
        free(envp);
        return;
    }
    for (int i = 0; i < FDS_PER_JOB; i++) {
        job.files[i] = z->fds[z->fds_head++];
        z->fds_len--;
    }
    if (grow((void **)&z->jobs, &z->jobs_cap, z->jobs_len + 1, sizeof *z->jobs) < 0) {
        tell(z, "F %ld the executor's zygote is out of memory", job.id);
        close_files(job.files);
        free(envp);
        return;
    }
    sigset_t control, old;
    control_signals(&control);
    sigprocmask(SIG_BLOCK, &control, &old);
    pid_t pid = fork();
    if (pid == 0)
        shepherd_main(&job, z->me, z->ignored);
    int e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    close_files(job.files);
    free(envp);
    if (pid < 0) {
        tell(z, "F %ld cannot fork the job's shepherd: %s", job.id, strerror(e));
        return;
    }
    z->jobs[z->jobs_len].pid = pid;
    z->jobs[z->jobs_len].id = job.id;
    z->jobs_len++;
    tell(z, "S %ld %ld", job.id, (long)pid);
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
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        if (z->fds_head > 0) {
            memmove(z->fds, z->fds + z->fds_head, z->fds_len * sizeof(int));
            z->fds_head = 0;
        }
        if (grow((void **)&z->fds, &z->fds_cap, z->fds_len + count, sizeof(int)) < 0)
            return 0;
        memcpy(z->fds + z->fds_len, CMSG_DATA(c), count * sizeof(int));
        z->fds_len += count;
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
    if (z->fds_len == 0)
        z->fds_head = 0;
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
            tell(z, "E %ld %ld %d %ld.%06ld %ld.%06ld %ld", z->jobs[i].id, (long)pid, status,
                 (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec, (long)ru.ru_stime.tv_sec,
                 (long)ru.ru_stime.tv_usec, ru.ru_maxrss);
            z->jobs[i] = z->jobs[--z->jobs_len];
            break;
        }
    }
}

static PyObject *serve(PyObject *self, PyObject *args) {
    (void)self;
    int sock;
    unsigned long ignored;
    if (!PyArg_ParseTuple(args, "ik", &sock, &ignored))
        return NULL;
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
        sigprocmask(SIG_SETMASK, &old, NULL);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    struct pollfd polls[2] = {{sock, POLLIN, 0}, {z.sigfd, POLLIN, 0}};
    int running = 1;
    PyObject *result = Py_None;
    while (running && !z.broken) {
        int n = poll(polls, 2, -1);
        if (n < 0) {
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) { /* ^C: KeyboardInterrupt, as the Python loop */
                    result = NULL;
                    break;
                }
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            result = NULL;
            break;
        }
        if (polls[0].revents)
            running = receive(&z);
        reap_shepherds(&z);
        flush(&z);
    }
    close(z.sigfd);
    sigprocmask(SIG_SETMASK, &old, NULL);
    for (size_t i = 0; i < z.fds_len; i++)
        close(z.fds[z.fds_head + i]);
    free(z.in);
    free(z.fds);
    free(z.jobs);
    free(z.out);
    if (result)
        Py_INCREF(result);
    return result;
}

static PyMethodDef methods[] = {
    {"serve", serve, METH_VARARGS,
     "serve(fd, ignored_mask): the zygote's loop on fd, until its end."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_shepherd",
    "The executor's zygote and the jobs' shepherds, compiled (see tm/executor/zygote.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__shepherd(void) { return PyModule_Create(&module); }
