"""Exec shim that makes a job the leader of its own session, then runs it through a shell.

Run as: python -I -S shim.py UMASK_OCTAL CWD SHELL COMMAND
Imports only os and sys so that it starts fast and cannot be affected by the job's environment.
"""

import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        sys.stderr.write("tm shim: usage: shim.py UMASK CWD SHELL COMMAND\n")
        return 125
    umask, cwd, shell, command = argv[1:5]
    # A new session makes pid == pgid, so the runner can signal the whole job tree with killpg.
    try:
        os.setsid()
    except OSError:
        pass  # already a group leader: nothing to do
    try:
        os.umask(int(umask, 8))
    except ValueError:
        sys.stderr.write(f"tm shim: invalid umask {umask!r}\n")
        return 125
    try:
        os.chdir(cwd)
    except OSError as e:
        sys.stderr.write(f"tm shim: cannot change to working directory {cwd}: {e.strerror}\n")
        return 126
    try:
        os.execvp(shell, [shell, "-c", command])
    except OSError as e:
        sys.stderr.write(f"tm shim: cannot execute shell {shell}: {e.strerror}\n")
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
