-- A2A tasks (one row per task, its current ProtoJSON snapshot), their event logs, the
-- messageId → task map that makes SendMessage idempotent, and push notification configs.
-- `tenant` is the caller's data tenant from the verified token; `agent` the hosted agent.
CREATE TABLE a2a_tasks (
    tenant      TEXT        NOT NULL,
    id          TEXT        NOT NULL,
    agent       TEXT        NOT NULL,
    context_id  TEXT        NOT NULL,
    state       SMALLINT    NOT NULL,
    seq         BIGINT      NOT NULL,
    task        JSONB       NOT NULL,
    status_at   TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ,
    PRIMARY KEY (tenant, id)
);
-- ListTasks: newest status first, cursor on (status_at, id).
CREATE INDEX a2a_tasks_by_status_time ON a2a_tasks (tenant, agent, status_at DESC, id DESC);
CREATE INDEX a2a_tasks_by_context ON a2a_tasks (tenant, context_id);
CREATE INDEX a2a_tasks_expiry ON a2a_tasks (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE a2a_task_events (
    tenant      TEXT        NOT NULL,
    task_id     TEXT        NOT NULL,
    seq         BIGINT      NOT NULL,
    event       JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
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
    tenant      TEXT        NOT NULL,
    task_id     TEXT        NOT NULL,
    id          TEXT        NOT NULL,
    config      JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, task_id, id),
    FOREIGN KEY (tenant, task_id) REFERENCES a2a_tasks (tenant, id) ON DELETE CASCADE
);
