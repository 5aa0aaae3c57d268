/* Shared by the parts of the compiled zygote (_zygote.c: the zygote's loop; _zygote_main.c:
 * the standalone zygote; _shepherd.c: the Python module; _shepherd_job.c: each job's
 * shepherd, after the fork). */
#ifndef TM_SHEPHERD_H
#define TM_SHEPHERD_H

#include <signal.h>
#include <sys/types.h>

/* The descriptor on which a starting shepherd tells the zygote how opening the job's files went
 * (one write, then closed): "+R" (opened; R "1" when the executor is to remove the stderr file
 * at the end if empty, "0" otherwise), or "K ERRNO PATH" (K: what failed, see _shepherd.c). */
#define STATUS_FD 3

/* One job's request, as the zygote parsed it (pointers into its input buffer). */
struct job {
    long id;
    double grace;
    int umask;
    char *cwd;
    char *shell;
    char *command;
    char *out;    /* the stdout file */
    char *err;    /* the stderr file: the same path as out for one file */
    char *log;    /* the -l log file, checked at the start ("" if none) */
    char *logdir; /* created first if missing ("" if none) */
    char **envp;
    int status; /* the write end of the start's status pipe */
};

/* In the zygote's forked child: be the job's shepherd (tm/executor/shim.py's contract). */
void shepherd_main(const struct job *job, pid_t zygote, unsigned long ignored)
    __attribute__((noreturn));

/* TERM, INT, HUP, USR1, USR2 and CHLD: the shepherd's control signals. */
void control_signals(sigset_t *set);

/* The zygote's loop on sock until the executor closes it: 0; -1 with errno on an error; -2
 * when interrupted() (called when a signal interrupts the wait) says to stop. */
int zygote_serve(int sock, unsigned long ignored, int (*interrupted)(void));

/* Write all of text to fd, with system calls only. */
void put(int fd, const char *text);

#endif
