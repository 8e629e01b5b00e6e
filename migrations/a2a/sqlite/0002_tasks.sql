-- A2A tasks (one row per task, its current ProtoJSON snapshot), their event logs, the
-- messageId → task map that makes SendMessage idempotent, and push notification configs.
-- `tenant` is the caller's data tenant from the verified token; `agent` the hosted agent.
-- Times are microseconds since the Unix epoch (UTC), so ordering and cursors are exact.
CREATE TABLE a2a_tasks (
    tenant      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    agent       TEXT    NOT NULL,
    context_id  TEXT    NOT NULL,
    state       INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    task        TEXT    NOT NULL,
    status_at   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX a2a_tasks_by_status_time ON a2a_tasks (tenant, agent, status_at DESC, id DESC);
CREATE INDEX a2a_tasks_by_context ON a2a_tasks (tenant, context_id);
CREATE INDEX a2a_tasks_expiry ON a2a_tasks (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE a2a_task_events (
    tenant      TEXT    NOT NULL,
    task_id     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    event       TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, task_id, seq),
    FOREIGN KEY (tenant, task_id) REFERENCES a2a_tasks (tenant, id) ON DELETE CASCADE
);

CREATE TABLE a2a_task_messages (
    tenant      TEXT NOT NULL,
    agent       TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    PRIMARY KEY (tenant, agent, message_id),
    FOREIGN KEY (tenant, task_id) REFERENCES a2a_tasks (tenant, id) ON DELETE CASCADE
);

CREATE TABLE a2a_push_configs (
    tenant      TEXT    NOT NULL,
    task_id     TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    config      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, task_id, id),
    FOREIGN KEY (tenant, task_id) REFERENCES a2a_tasks (tenant, id) ON DELETE CASCADE
);
