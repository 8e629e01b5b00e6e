-- The shared durable job queue (liquid_store::job_queue). Tracked in its own migrations table
-- (_liquid_store_job_queue_migrations) so its versions never collide with a service's own.
-- Ids are hyphenated UUID text; times are RFC 3339 UTC text with milliseconds
-- (YYYY-MM-DDTHH:MM:SS.mmmZ), a fixed width so text order is time order.
CREATE TABLE IF NOT EXISTS liquid_jobs (
    id               TEXT    PRIMARY KEY,
    queue            TEXT    NOT NULL,
    tenant           TEXT    NOT NULL,
    payload          TEXT    NOT NULL CHECK (json_valid(payload)),
    priority         INTEGER NOT NULL DEFAULT 0,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     INTEGER NOT NULL CHECK (max_attempts > 0),
    run_at           TEXT    NOT NULL,
    dedupe_key       TEXT,
    -- The worker holding (or that last held) the lease.
    lease_owner      TEXT,
    -- Set only while running; a running job whose lease has passed may be claimed again.
    lease_expires_at TEXT,
    last_error       TEXT,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL,
    finished_at      TEXT
) STRICT;

-- Enqueuing the same dedupe key twice in a queue for a tenant returns the first job.
CREATE UNIQUE INDEX IF NOT EXISTS liquid_jobs_dedupe
    ON liquid_jobs (queue, tenant, dedupe_key) WHERE dedupe_key IS NOT NULL;
-- Claim order: highest priority, then earliest run_at, then oldest id.
CREATE INDEX IF NOT EXISTS liquid_jobs_ready
    ON liquid_jobs (queue, priority DESC, run_at, id) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS liquid_jobs_leases
    ON liquid_jobs (queue, lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS liquid_jobs_finished
    ON liquid_jobs (queue, finished_at) WHERE state IN ('completed', 'dead');
