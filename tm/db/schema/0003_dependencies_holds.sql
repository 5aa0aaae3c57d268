-- TaskManager schema, version 3: dependencies and holds (issue 11, points 1 and 5).
-- after_ok / after_any: the job ids a job waits for ("3,4,9"; after_ok: each must end
-- finished, after_any: each must end); after_group: a group of the same user whose jobs
-- submitted before this one must all end finished. hold: "" or who holds the waiting job,
-- "user:NAME" or "admin:NAME". Jobs stored before keep '' (no dependency, not held).

ALTER TABLE jobs ADD COLUMN after_ok TEXT NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN after_any TEXT NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN after_group VARCHAR(255) NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN hold VARCHAR(120) NOT NULL DEFAULT ''
