-- Every start of a replica of this service, so operators (and the restart tests) can see that
-- the service's database persists across restarts and which versions ran.
CREATE TABLE IF NOT EXISTS service_instances (
    instance_id TEXT PRIMARY KEY,
    version     TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    started_at  TEXT NOT NULL
);
