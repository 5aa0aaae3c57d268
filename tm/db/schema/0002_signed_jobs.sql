-- TaskManager schema, version 2: signed job specs (issue 10, point 1).
-- Each job keeps the signature its user's TMS made over what defines it, and when it was
-- made (tm/jobsign.py). Jobs stored before keep '' and 0: their executors refuse them.
-- The environments table keeps its columns: data now holds the environment sealed with the
-- user's key (at most about 64 000 characters, within a MySQL TEXT), sha256 the digest of
-- that sealed text.

ALTER TABLE jobs ADD COLUMN signature VARCHAR(100) NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN signed_at DOUBLE NOT NULL DEFAULT 0
