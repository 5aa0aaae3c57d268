-- TaskManager schema, version 1.
-- One file for SQLite and MySQL/MariaDB: the store substitutes {AUTOINC_PK},
-- {TABLE_OPTIONS} per dialect.  Statements are separated by semicolons, and no
-- semicolon may appear anywhere else (not even in a comment).  Times are float
-- epoch seconds (UTC).

CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL PRIMARY KEY
) {TABLE_OPTIONS};

CREATE TABLE users (
    name VARCHAR(100) NOT NULL PRIMARY KEY,
    enabled SMALLINT NOT NULL,
    roles TEXT NOT NULL
) {TABLE_OPTIONS};

CREATE TABLE hosts (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    active SMALLINT NOT NULL,
    retired SMALLINT NOT NULL
) {TABLE_OPTIONS};

CREATE TABLE settings (
    name VARCHAR(100) NOT NULL PRIMARY KEY,
    `value` TEXT NOT NULL
) {TABLE_OPTIONS};

CREATE TABLE environments (
    id {AUTOINC_PK},
    sha256 CHAR(64) NOT NULL UNIQUE,
    data TEXT NOT NULL
) {TABLE_OPTIONS};

CREATE TABLE jobs (
    id {AUTOINC_PK},
    uuid VARCHAR(36) NOT NULL UNIQUE,
    user_name VARCHAR(100) NOT NULL,
    command TEXT NOT NULL,
    shell VARCHAR(255) NOT NULL,
    cwd TEXT NOT NULL,
    umask INTEGER NOT NULL,
    env_id BIGINT NULL,
    slots INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    group_name VARCHAR(255) NOT NULL,
    info_text TEXT NOT NULL,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    logfile TEXT NOT NULL,
    excluded_hosts TEXT NOT NULL,
    estimated_time DOUBLE NULL,
    estimated_memory DOUBLE NULL,
    state VARCHAR(16) NOT NULL,
    attempt INTEGER NOT NULL,
    host VARCHAR(255) NULL,
    pid INTEGER NULL,
    exit_code INTEGER NULL,
    `signal` INTEGER NULL,
    reason TEXT NOT NULL,
    suspended SMALLINT NOT NULL,
    submitted_at DOUBLE NOT NULL,
    state_since DOUBLE NOT NULL,
    started_at DOUBLE NULL,
    ended_at DOUBLE NULL
) {TABLE_OPTIONS};

CREATE INDEX jobs_state ON jobs (state);

CREATE INDEX jobs_user_state ON jobs (user_name, state);

CREATE INDEX jobs_group ON jobs (group_name);

CREATE TABLE job_history (
    id {AUTOINC_PK},
    job_id BIGINT NOT NULL,
    attempt INTEGER NOT NULL,
    state VARCHAR(16) NOT NULL,
    at DOUBLE NOT NULL,
    host VARCHAR(255) NULL,
    reason TEXT NOT NULL
) {TABLE_OPTIONS};

CREATE INDEX job_history_job ON job_history (job_id, id)
