/* Each job's shepherd, compiled: the C twin of tm/executor/shim.py (whose docstring is the
 * contract), run by the zygote's forked child (_shepherd.c). After the fork it makes system
 * calls only (no malloc, no stdio, no locks): its memory is the zygote's, copied, and the
 * scratch space of its walks of /proc is mmap'd. It starts the shell with vfork: the shell's
 * child runs on the shepherd's memory until its execve, and makes nothing but system calls. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "_shepherd.h"

#define FREEZE_BUDGET 1.0 /* seconds to wait for every descendant to show as stopped */
#define KILL_BUDGET 2.0   /* seconds to wait, after SIGKILL, for descendants to be gone */
#define POLL_S 0.02

/* -- small async-signal-safe helpers -------------------------------------------------------- */

void put(int fd, const char *text) {
    size_t n = strlen(text);
    while (n > 0) {
        ssize_t w = write(fd, text, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        text += w;
        n -= (size_t)w;
    }
}

static const char *error_text(int e) {
    switch (e) {
    case ENOENT: return "No such file or directory";
    case EACCES: return "Permission denied";
    case ENOTDIR: return "Not a directory";
    case ELOOP: return "Too many levels of symbolic links";
    case ENAMETOOLONG: return "File name too long";
    case ENOEXEC: return "Exec format error";
    case ETXTBSY: return "Text file busy";
    case E2BIG: return "Argument list too long";
    case ENOMEM: return "Cannot allocate memory";
    case EIO: return "Input/output error";
    case EPERM: return "Operation not permitted";
    case EISDIR: return "Is a directory";
    default: return "error";
    }
}

/* One line on the job's stderr (fd 2), as tm/executor/shim.py's _say. */
static void say2(const char *a, const char *b, int e) {
    put(2, "tm shim: ");
    put(2, a);
    put(2, b);
    if (e) {
        put(2, ": ");
        put(2, error_text(e));
    }
    put(2, "\n");
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void control_signals(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGUSR1);
    sigaddset(set, SIGUSR2);
    sigaddset(set, SIGCHLD);
}

static int is_kill_signal(int sig) { return sig == SIGTERM || sig == SIGINT || sig == SIGHUP; }

static void on_control(int sig) { (void)sig; }

/* -- the process table, from /proc ---------------------------------------------------------- */

struct proc {
    pid_t pid;
    pid_t ppid;
    char state;
    char mark; /* 0 unknown, 1 below the root, 2 not, 3 being resolved */
};

static struct proc *table;
static int *path_stack;
static size_t table_cap; /* entries */
static size_t table_len;

static int table_reserve(size_t want) {
    if (want <= table_cap)
        return 0;
    size_t cap = table_cap ? table_cap : 1024;
    while (cap < want)
        cap *= 2;
    void *t = mmap(NULL, cap * sizeof(struct proc), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *s = mmap(NULL, cap * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
    if (t == MAP_FAILED || s == MAP_FAILED) {
        if (t != MAP_FAILED)
            munmap(t, cap * sizeof(struct proc));
        if (s != MAP_FAILED)
            munmap(s, cap * sizeof(int));
        return -1;
    }
    if (table) {
        memcpy(t, table, table_len * sizeof(struct proc));
        munmap(table, table_cap * sizeof(struct proc));
        munmap(path_stack, table_cap * sizeof(int));
    }
    table = t;
    path_stack = s;
    table_cap = cap;
    return 0;
}

struct dirent64_raw {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Parse "(ppid, state)" from the text of /proc/PID/stat: after the *last* ')'. */
static int parse_stat(const char *data, ssize_t n, pid_t *ppid, char *state) {
    ssize_t end = -1;
    for (ssize_t i = n - 1; i >= 0; i--)
        if (data[i] == ')') {
            end = i;
            break;
        }
    if (end < 0 || end + 4 >= n)
        return -1;
    const char *p = data + end + 1;
    const char *stop = data + n;
    while (p < stop && *p == ' ')
        p++;
    if (p >= stop)
        return -1;
    *state = *p++;
    while (p < stop && *p == ' ')
        p++;
    long v = 0;
    int digits = 0;
    while (p < stop && *p >= '0' && *p <= '9') {
        v = v * 10 + (*p++ - '0');
        digits++;
    }
    if (!digits)
        return -1;
    *ppid = (pid_t)v;
    return 0;
}

/* Read every process of /proc into the table, in ascending pid order. */
static int read_table(void) {
    static char dents[32768];
    char statpath[64], data[1024];
    table_len = 0;
    int dir = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -1;
    for (;;) {
        long got = syscall(SYS_getdents64, dir, dents, sizeof dents);
        if (got <= 0)
            break;
        for (long off = 0; off < got;) {
            struct dirent64_raw *d = (struct dirent64_raw *)(dents + off);
            off += d->d_reclen;
            const char *name = d->d_name;
            if (name[0] < '1' || name[0] > '9')
                continue;
            long pid = 0;
            const char *c = name;
            for (; *c >= '0' && *c <= '9'; c++)
                pid = pid * 10 + (*c - '0');
            if (*c)
                continue;
            int len = 0;
            const char *prefix = "/proc/";
            while (*prefix)
                statpath[len++] = *prefix++;
            for (const char *q = name; *q && len < 50; q++)
                statpath[len++] = *q;
            memcpy(statpath + len, "/stat", 6);
            int fd = open(statpath, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                continue; /* gone since the listing */
            ssize_t n = read(fd, data, sizeof data);
            close(fd);
            pid_t ppid;
            char state;
            if (n <= 0 || parse_stat(data, n, &ppid, &state) < 0)
                continue;
            if (table_reserve(table_len + 1) < 0)
                break;
            /* /proc lists pids in ascending order; keep the table sorted if it ever does not. */
            size_t at = table_len;
            while (at > 0 && table[at - 1].pid > (pid_t)pid) {
                table[at] = table[at - 1];
                at--;
            }
            table[at].pid = (pid_t)pid;
            table[at].ppid = ppid;
            table[at].state = state;
            table[at].mark = 0;
            table_len++;
        }
    }
    close(dir);
    return 0;
}

static long find(pid_t pid) {
    size_t lo = 0, hi = table_len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (table[mid].pid < pid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < table_len && table[lo].pid == pid) ? (long)lo : -1;
}

/* Mark every entry whose parent chain leads to root (1) or not (2). */
static void mark_descendants(pid_t root) {
    for (size_t i = 0; i < table_len; i++) {
        if (table[i].mark)
            continue;
        size_t depth = 0;
        long cur = (long)i;
        char result;
        for (;;) {
            if (table[cur].pid == root) {
                result = 2; /* the root is not its own descendant */
                break;
            }
            table[cur].mark = 3;
            path_stack[depth++] = (int)cur;
            if (table[cur].ppid == root) {
                result = 1;
                break;
            }
            long p = find(table[cur].ppid);
            if (p < 0 || table[p].mark == 3) { /* not below root, or a torn read's cycle */
                result = 2;
                break;
            }
            if (table[p].mark) {
                result = table[p].mark;
                break;
            }
            cur = p;
        }
        while (depth > 0)
            table[path_stack[--depth]].mark = result;
    }
}

static int dead_state(char s) { return s == 'Z' || s == 'X' || s == 'x'; }
static int stopped_state(char s) { return s == 'T' || s == 't'; }

/* Walk /proc; return how many live descendants of root there are, and how many of those are
 * not stopped (if running is not NULL). The table keeps them marked 1. */
static size_t walk(pid_t root, size_t *running) {
    size_t live = 0, run = 0;
    if (read_table() < 0) {
        if (running)
            *running = 0;
        return 0;
    }
    mark_descendants(root);
    for (size_t i = 0; i < table_len; i++) {
        if (table[i].mark != 1)
            continue;
        if (dead_state(table[i].state)) {
            table[i].mark = 2;
            continue;
        }
        live++;
        if (!stopped_state(table[i].state))
            run++;
    }
    if (running)
        *running = run;
    return live;
}

static void send_marked(int sig, int only_running) {
    for (size_t i = 0; i < table_len; i++)
        if (table[i].mark == 1 && (!only_running || !stopped_state(table[i].state)))
            kill(table[i].pid, sig);
}

/* -- the shepherd (after the fork: system calls only) --------------------------------------- */

struct shepherd {
    pid_t me;
    pid_t child;
    double grace;
    int have_status;
    int status;
    sigset_t control;
};

static void reap(struct shepherd *s) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        if (pid == s->child) {
            s->status = status;
            s->have_status = 1;
        }
    }
}

/* Wait up to timeout s for a control signal (taken and dropped), reaping after it. */
static void wait_a_while(struct shepherd *s, double timeout) {
    if (timeout < 0)
        timeout = 0;
    struct timespec ts;
    ts.tv_sec = (time_t)timeout;
    ts.tv_nsec = (long)((timeout - (double)ts.tv_sec) * 1e9);
    sigtimedwait(&s->control, NULL, &ts);
    reap(s);
}

/* Stop every live descendant; SIGSTOP is asynchronous and a process may fork before it takes
 * effect, so walk again until a walk finds every one stopped (or the budget is spent). The
 * table is left marking the live descendants of the last walk. */
static void freeze(struct shepherd *s) {
    double deadline = now() + FREEZE_BUDGET;
    for (;;) {
        size_t running;
        walk(s->me, &running);
        if (running == 0 || now() >= deadline)
            return;
        send_marked(SIGSTOP, 1);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

static void kill_tree(struct shepherd *s) {
    freeze(s);
    send_marked(SIGTERM, 0);
    send_marked(SIGCONT, 0);
    double deadline = now() + s->grace;
    while (walk(s->me, NULL) > 0 && now() < deadline) {
        double left = deadline - now();
        wait_a_while(s, left < POLL_S ? left : POLL_S);
    }
    deadline = now() + KILL_BUDGET;
    for (;;) {
        if (walk(s->me, NULL) == 0 || now() >= deadline)
            break;
        send_marked(SIGKILL, 0);
        wait_a_while(s, 0.005);
    }
    reap(s);
}

static int has_children(struct shepherd *s) {
    reap(s);
    siginfo_t info;
    return waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) == 0;
}

static void die_by(int sig) {
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigaction(sig, &sa, NULL);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    sigprocmask(SIG_UNBLOCK, &one, NULL);
    kill(getpid(), sig);
    _exit(128 + sig); /* only for a signal whose default action does not terminate */
}


/* -- the job's files, opened by its shepherd ------------------------------------------------- */

/* Tell the zygote why the start failed: "K ERRNO PATH" on STATUS_FD (one write, at most
 * PIPE_BUF bytes, so the zygote reads it whole), then end; the zygote reports it, not the exit. */
static void refuse(char kind, int e, const char *path) {
    char msg[4096];
    size_t at = 0;
    msg[at++] = kind;
    msg[at++] = ' ';
    char digits[16];
    int n = 0;
    unsigned v = (unsigned)e;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && n < 15);
    while (n > 0)
        msg[at++] = digits[--n];
    msg[at++] = ' ';
    size_t len = strlen(path);
    if (len > sizeof msg - at)
        len = sizeof msg - at;
    memcpy(msg + at, path, len);
    at += len;
    ssize_t w;
    do
        w = write(STATUS_FD, msg, at);
    while (w < 0 && errno == EINTR);
    _exit(126);
}

/* mkdir -p as Python's os.makedirs(path, 0o700, exist_ok=True): the parents made with 0777
 * (less the umask), the directory itself with 0700; 0 or an errno. */
static int make_dirs(char *path, mode_t mode) {
    if (mkdir(path, mode) == 0)
        return 0;
    int e = errno;
    struct stat st;
    if (e == EEXIST)
        return stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : EEXIST;
    if (e != ENOENT)
        return e;
    char *slash = strrchr(path, '/');
    if (!slash || slash == path)
        return e;
    *slash = '\0';
    int parent = make_dirs(path, 0777);
    *slash = '/';
    if (parent != 0 && parent != EEXIST)
        return parent;
    if (mkdir(path, mode) == 0)
        return 0;
    e = errno;
    return e == EEXIST && stat(path, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : e;
}

static int open_output(const char *path, int mode, char kind) {
    int fd;
    do
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    while (fd < 0 && errno == EINTR);
    if (fd < 0)
        refuse(kind, errno, path);
    return fd;
}

/* Check the working directory and open the job's files, as tm/executor/request.py's
 * open_outputs did in the executor: they become 0, 1, 2. Any failure ends the shepherd with
 * its reason on STATUS_FD; success is "+R" there (R: whether the executor is to remove an
 * empty stderr file at the end: one made for the job, when a log file will read it first).
 * Returns whether the shepherd is to remove it itself at the end. */
__attribute__((noinline)) static int open_files(const struct job *job) {
    struct stat st;
    if (stat(job->cwd, &st) != 0)
        refuse('c', 0, job->cwd);
    if (!S_ISDIR(st.st_mode))
        refuse('C', 0, job->cwd);
    if (job->logdir[0]) {
        int e = make_dirs(job->logdir, 0700);
        if (e)
            refuse('d', e, job->logdir);
    }
    int mode = 0666 & ~job->umask;
    int out = open_output(job->out, mode, 'o');
    int err = out, created = 0;
    if (strcmp(job->err, job->out) != 0) {
        do
            err = open(job->err, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
        while (err < 0 && errno == EINTR);
        created = err >= 0;
        if (err < 0)
            err = open_output(job->err, mode, 'e');
    }
    if (job->log[0])
        close(open_output(job->log, mode, 'l')); /* now: an unwritable one fails the start */
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0)
        refuse('n', errno, "/dev/null");
    int files[3] = {null, out, err};
    for (int i = 0; i < 3; i++)
        dup2(files[i], i); /* dup2 clears close-on-exec on the copy */
    close(null);
    close(out);
    if (err != out)
        close(err);
    int executor_removes = created && job->log[0];
    put(STATUS_FD, executor_removes ? "+1" : "+0");
    close(STATUS_FD);
    return created && !job->log[0];
}

/* At the end: the stderr file made for the job, still empty, is removed (no empty ID.err). */
static void tidy(const struct job *job, int remove_err) {
    struct stat st;
    if (remove_err && lstat(job->err, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0)
        unlink(job->err);
}


static const char *env_path(char **envp) {
    for (char **e = envp; *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            return *e + 5;
    return "/bin:/usr/bin";
}

/* In the vfork'd child: reset what the shepherd changed, become the shell. Never returns. */
static void exec_shell(const struct job *job, pid_t shepherd, unsigned long ignored) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    static const int resets[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD};
    for (size_t i = 0; i < sizeof resets / sizeof resets[0]; i++) {
        int sig = resets[i];
        sa.sa_handler = (ignored >> (sig - 1) & 1) ? SIG_IGN : SIG_DFL;
        sigaction(sig, &sa, NULL);
    }
    /* Python ignores these at start-up: a job must see them with their default action. */
    sa.sa_handler = SIG_DFL;
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGXFSZ, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (getppid() != shepherd)
        _exit(128 + SIGKILL);
    char *argv[] = {job->shell, (char *)"-c", job->command, NULL};
    int err = ENOENT;
    if (strchr(job->shell, '/')) {
        execve(job->shell, argv, job->envp);
        err = errno;
    } else {
        /* execvpe's search, with the PATH of the job's environment. */
        char full[4096];
        const char *p = env_path(job->envp);
        size_t nlen = strlen(job->shell);
        int seen_eacces = 0;
        for (;;) {
            const char *colon = strchr(p, ':');
            size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
            if (dlen + nlen + 2 <= sizeof full) {
                size_t at = 0;
                if (dlen == 0)
                    full[at++] = '.';
                else {
                    memcpy(full, p, dlen);
                    at = dlen;
                }
                full[at++] = '/';
                memcpy(full + at, job->shell, nlen + 1);
                execve(full, argv, job->envp);
                if (errno == EACCES)
                    seen_eacces = 1;
                else if (errno != ENOENT && errno != ENOTDIR)
                    err = errno;
            }
            if (!colon)
                break;
            p = colon + 1;
        }
        if (seen_eacces && err == ENOENT)
            err = EACCES;
    }
    put(2, "tm shim: cannot execute shell ");
    put(2, job->shell);
    put(2, ": ");
    put(2, error_text(err));
    put(2, "\n");
    _exit(127);
}

/* In the zygote's forked child: be the job's shepherd. Never returns. */
void shepherd_main(const struct job *job, pid_t zygote, unsigned long ignored) {
    struct shepherd s;
    memset(&s, 0, sizeof s);
    control_signals(&s.control);
    s.grace = job->grace;
    /* The control signals came blocked across the fork; caught, so that none is discarded. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_control;
    static const int controls[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGCHLD};
    for (size_t i = 0; i < sizeof controls / sizeof controls[0]; i++)
        sigaction(controls[i], &sa, NULL);
    /* The status pipe becomes STATUS_FD; nothing else of the zygote stays open but 0, 1, 2 (its
     * own, until the job's files replace them). */
    if (job->status != STATUS_FD && dup3(job->status, STATUS_FD, O_CLOEXEC) < 0)
        _exit(125);
#ifdef SYS_close_range
    if (syscall(SYS_close_range, STATUS_FD + 1U, ~0U, 0U) != 0)
#endif
        for (int fd = STATUS_FD + 1; fd < 65536; fd++)
            close(fd);
    if (job->umask < 0 || job->umask > 0777) {
        say2("invalid umask", "", 0);
        _exit(125);
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
        say2("warning: cannot become a child subreaper; processes that leave the job's "
             "session may survive its end",
             "", 0);
    /* The zygote's death (the executor's) takes the job down; it may have died already. */
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    if (getppid() != zygote)
        _exit(0);
    setsid(); /* pid == pgid: the runner's last resort can use killpg */
    /* Under the zygote's umask, as the executor itself opened them before. */
    int remove_err = open_files(job);
    umask((mode_t)job->umask);
    if (chdir(job->cwd) != 0) {
        int e = errno;
        say2("cannot change to working directory ", job->cwd, e);
        _exit(126);
    }
    /* Killed before the shell even started: go the way the signal says, starting nothing. */
    sigset_t pending;
    sigpending(&pending);
    static const int kills[] = {SIGHUP, SIGINT, SIGTERM}; /* lowest first, as the shim */
    for (size_t i = 0; i < 3; i++)
        if (sigismember(&pending, kills[i])) {
            tidy(job, remove_err);
            die_by(kills[i]);
        }
    s.me = getpid();
    pid_t child = vfork();
    if (child == 0)
        exec_shell(job, s.me, ignored);
    if (child < 0) {
        say2("cannot start the shell", "", errno);
        _exit(127);
    }
    s.child = child;
    while (!s.have_status) {
        siginfo_t info;
        int sig = sigwaitinfo(&s.control, &info);
        reap(&s);
        if (sig < 0)
            continue;
        if (is_kill_signal(sig))
            kill_tree(&s);
        else if (sig == SIGUSR1)
            freeze(&s);
        else if (sig == SIGUSR2) {
            walk(s.me, NULL);
            send_marked(SIGCONT, 0);
        }
    }
    /* The shell has exited: the job is over. As a subreaper the shepherd has been given the
     * shell's orphans before the shell's exit was reported: no child left, nothing left below,
     * and no walk of /proc (the common case). */
    if (has_children(&s) && walk(s.me, NULL) > 0)
        kill_tree(&s);
    reap(&s);
    tidy(job, remove_err);
    if (WIFSIGNALED(s.status))
        die_by(WTERMSIG(s.status));
    _exit(WEXITSTATUS(s.status));
}

