-- TaskManager schema, version 4: time limits and resource use (issue 11, points 2 and 6).
-- time_limit: seconds a job may run on its host before its executor stops it (NULL: none;
-- part of the job's signature only when set, so jobs stored before still verify).
-- cpu_time, max_rss_kib, run_time: the last end's CPU seconds (user + system) and largest
-- resident set (KiB) of the job's whole tree, as its shepherd reaped it, and its run time on
-- its host. Jobs that ended before keep NULL: their use was not measured.

ALTER TABLE jobs ADD COLUMN time_limit DOUBLE NULL;

ALTER TABLE jobs ADD COLUMN cpu_time DOUBLE NULL;

ALTER TABLE jobs ADD COLUMN max_rss_kib BIGINT NULL;

ALTER TABLE jobs ADD COLUMN run_time DOUBLE NULL
