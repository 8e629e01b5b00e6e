-- Replicas of the pool and their leases: a replica renews its row every heartbeat; containers
-- labelled with a replica whose lease is stale are orphans and get swept.
CREATE TABLE IF NOT EXISTS pool_replicas (
    replica_id   TEXT PRIMARY KEY,
    hostname     TEXT NOT NULL,
    process      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);

-- Claims: which tenant holds which container, so any replica can serve exec and archive calls
-- for it and a crashed replica's claims can be closed.
CREATE TABLE IF NOT EXISTS pool_claims (
    claim_id     TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    template     TEXT NOT NULL,
    container_id TEXT NOT NULL,
    host         TEXT NOT NULL,
    runtime      TEXT NOT NULL,
    replica_id   TEXT NOT NULL,
    served       TEXT NOT NULL,
    workdir      TEXT NOT NULL,
    env          TEXT NOT NULL,
    secrets      TEXT NOT NULL,
    acquired_at  TEXT NOT NULL,
    released_at  TEXT
);
CREATE INDEX IF NOT EXISTS pool_claims_open ON pool_claims (replica_id) WHERE released_at IS NULL;

-- Templates changed through the admin API; they override the configured ones by name.
CREATE TABLE IF NOT EXISTS pool_templates (
    name       TEXT PRIMARY KEY,
    config     TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
