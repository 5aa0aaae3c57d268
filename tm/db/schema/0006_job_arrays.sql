-- TaskManager schema, version 6: job arrays (issue 11, point 4; tm/core/arrays.py).
-- A job of an array keeps the array's id (a UUID made by hRunJob), its index in the array
-- (signed by the user's TMS, given to the job as TM_ARRAY_INDEX) and the array's cap: how
-- many of its jobs may be pending or running at once (NULL: no cap). Jobs stored before are
-- no array's: '' and NULL.

ALTER TABLE jobs ADD COLUMN array_id VARCHAR(36) NOT NULL DEFAULT '';

ALTER TABLE jobs ADD COLUMN array_index INTEGER NULL;

ALTER TABLE jobs ADD COLUMN array_cap INTEGER NULL
