-- Deep-work sessions (issue 7, items 1-5): sessions, every plan version, steps, agents (the
-- durable priority queue: one row per attempt at a step), artifacts, each session's event log
-- and per-tenant queue pauses. Times are milliseconds since the epoch (UTC). Every row carries
-- the tenant that owns it; every query filters on it.
CREATE TABLE IF NOT EXISTS cowork_sessions (
    session_id      BLOB PRIMARY KEY,
    tenant          TEXT    NOT NULL,
    created_by      TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    title           TEXT    NOT NULL,
    request         TEXT    NOT NULL,
    workspace       TEXT    NOT NULL,
    sandbox_id      BLOB NOT NULL,
    strategy        TEXT    NOT NULL,
    plan_version    INTEGER NOT NULL,
    planner         TEXT    NOT NULL,
    error           TEXT,
    idempotency_key TEXT,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    finished_ms     INTEGER
);
CREATE INDEX IF NOT EXISTS cowork_sessions_tenant ON cowork_sessions (tenant, session_id);
CREATE INDEX IF NOT EXISTS cowork_sessions_state ON cowork_sessions (state, session_id);
CREATE UNIQUE INDEX IF NOT EXISTS cowork_sessions_idempotency
    ON cowork_sessions (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS cowork_plans (
    session_id BLOB NOT NULL REFERENCES cowork_sessions (session_id) ON DELETE CASCADE,
    version    INTEGER NOT NULL,
    source     TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    feedback   TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, version)
);

CREATE TABLE IF NOT EXISTS cowork_steps (
    step_id      BLOB PRIMARY KEY,
    session_id   BLOB NOT NULL REFERENCES cowork_sessions (session_id) ON DELETE CASCADE,
    tenant       TEXT    NOT NULL,
    plan_version INTEGER NOT NULL,
    plan_key     TEXT    NOT NULL,
    position     INTEGER NOT NULL,
    state        TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    error        TEXT,
    runner       TEXT,
    summary      TEXT,
    started_ms   INTEGER,
    finished_ms  INTEGER,
    updated_ms   INTEGER NOT NULL,
    UNIQUE (session_id, plan_version, plan_key)
);

CREATE TABLE IF NOT EXISTS cowork_agents (
    agent_id         BLOB PRIMARY KEY,
    tenant           TEXT    NOT NULL,
    session_id       BLOB NOT NULL REFERENCES cowork_sessions (session_id) ON DELETE CASCADE,
    step_id          BLOB NOT NULL REFERENCES cowork_steps (step_id) ON DELETE CASCADE,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    domain           TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    run_at_ms        INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_ms INTEGER,
    heartbeat_ms     INTEGER,
    claim_id         TEXT,
    runner           TEXT,
    error            TEXT,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    finished_ms      INTEGER
);
-- The claim order (priority DESC, run_at_ms, agent_id) over queued agents.
CREATE INDEX IF NOT EXISTS cowork_agents_queue
    ON cowork_agents (state, priority DESC, run_at_ms, agent_id);
CREATE INDEX IF NOT EXISTS cowork_agents_tenant ON cowork_agents (tenant, session_id, agent_id);
CREATE INDEX IF NOT EXISTS cowork_agents_lease ON cowork_agents (state, lease_expires_ms);

CREATE TABLE IF NOT EXISTS cowork_artifacts (
    artifact_id BLOB PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    session_id  BLOB NOT NULL REFERENCES cowork_sessions (session_id) ON DELETE CASCADE,
    step_id     BLOB NOT NULL,
    agent_id    BLOB NOT NULL,
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    media_type  TEXT    NOT NULL,
    encoding    TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    truncated   INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cowork_artifacts_session ON cowork_artifacts (tenant, session_id, artifact_id);

CREATE TABLE IF NOT EXISTS cowork_events (
    event_id   BLOB PRIMARY KEY,
    tenant     TEXT    NOT NULL,
    session_id BLOB NOT NULL,
    kind       TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    at_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cowork_events_session ON cowork_events (tenant, session_id, event_id);

CREATE TABLE IF NOT EXISTS cowork_queue_pauses (
    tenant    TEXT PRIMARY KEY,
    paused_ms INTEGER NOT NULL
);
