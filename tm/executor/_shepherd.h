/* Shared by the two halves of the compiled zygote (_shepherd.c: the zygote's loop and the
 * Python module; _shepherd_job.c: each job's shepherd, after the fork). */
#ifndef TM_SHEPHERD_H
#define TM_SHEPHERD_H

#include <signal.h>
#include <sys/types.h>

#define FDS_PER_JOB 3

/* One job's request, as the zygote parsed it (pointers into its input buffer). */
struct job {
    long id;
    double grace;
    int umask;
    char *cwd;
    char *shell;
    char *command;
    char **envp;
    int files[FDS_PER_JOB];
};

/* In the zygote's forked child: be the job's shepherd (tm/executor/shim.py's contract). */
void shepherd_main(const struct job *job, pid_t zygote, unsigned long ignored)
    __attribute__((noreturn));

/* TERM, INT, HUP, USR1, USR2 and CHLD: the shepherd's control signals. */
void control_signals(sigset_t *set);

/* Write all of text to fd, with system calls only. */
void put(int fd, const char *text);

#endif
