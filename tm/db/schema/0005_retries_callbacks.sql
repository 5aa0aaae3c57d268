-- TaskManager schema, version 5: retries and on-end callbacks (issue 11, points 3 and 7).
-- retries: how many more attempts a job may have after a lost attempt, a failed start or an
-- exit code of retry_on_exit (NULL: the dispatcher's default, --lost-retries for lost jobs
-- and none otherwise). retry_on_exit: the exit codes that are retried, as written by hRunJob
-- ("3,5-7"; '' for none). on_end: the command the user's TMS runs when the job has ended
-- (tm/userserver/callbacks.py); on_end_done: 1 once it ran (or will never run), so that a TMS
-- that was away when the job ended runs it at its next start. Jobs stored before keep NULL,
-- '' and 0: no retries beyond the default, no callback.

ALTER TABLE jobs ADD COLUMN retries INTEGER NULL;

ALTER TABLE jobs ADD COLUMN retry_on_exit VARCHAR(255) NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN on_end TEXT NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN on_end_done SMALLINT NOT NULL DEFAULT 0
