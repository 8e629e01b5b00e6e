-- Staging sandboxes (issue 7, item 7): one row per sandbox, its manifests, per-session byte
-- budgets of the permission pipeline, and the append-only audit log. Ids are UUID text,
-- times RFC 3339 text. Every row carries the tenant that owns it; every query filters on it.
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id            TEXT PRIMARY KEY,
    tenant                TEXT    NOT NULL,
    session_id            TEXT    NOT NULL,
    state                 TEXT    NOT NULL,
    label                 TEXT    NOT NULL,
    source_path           TEXT    NOT NULL,
    work_path             TEXT    NOT NULL,
    file_count            INTEGER NOT NULL,
    total_bytes           INTEGER NOT NULL,
    copy_summary          TEXT    NOT NULL,
    container_id          TEXT,
    container_attached_at TEXT,
    a2a_task_id           TEXT,
    a2a_task_state        TEXT,
    a2a_updated_at        TEXT,
    live_instance         TEXT,
    idempotency_key       TEXT,
    created_at            TEXT    NOT NULL,
    updated_at            TEXT    NOT NULL,
    expires_at            TEXT    NOT NULL,
    applied_at            TEXT
);
CREATE INDEX IF NOT EXISTS sandboxes_tenant_state ON sandboxes (tenant, state, sandbox_id);
CREATE INDEX IF NOT EXISTS sandboxes_expiry ON sandboxes (state, expires_at);
CREATE UNIQUE INDEX IF NOT EXISTS sandboxes_idempotency
    ON sandboxes (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS sandbox_manifests (
    sandbox_id TEXT NOT NULL REFERENCES sandboxes (sandbox_id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, kind)
);

CREATE TABLE IF NOT EXISTS session_usage (
    tenant        TEXT    NOT NULL,
    session_id    TEXT    NOT NULL,
    charged_bytes INTEGER NOT NULL,
    PRIMARY KEY (tenant, session_id)
);

CREATE TABLE IF NOT EXISTS sandbox_audit (
    audit_id      TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    sandbox_id    TEXT,
    session_id    TEXT,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    path          TEXT,
    stage         TEXT,
    sha256_before TEXT,
    sha256_after  TEXT,
    detail        TEXT NOT NULL,
    at            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandbox_audit_tenant ON sandbox_audit (tenant, audit_id);
CREATE INDEX IF NOT EXISTS sandbox_audit_sandbox ON sandbox_audit (tenant, sandbox_id, audit_id);

CREATE TRIGGER IF NOT EXISTS sandbox_audit_no_update BEFORE UPDATE ON sandbox_audit
BEGIN
    SELECT RAISE(ABORT, 'sandbox_audit is append-only');
END;
CREATE TRIGGER IF NOT EXISTS sandbox_audit_no_delete BEFORE DELETE ON sandbox_audit
BEGIN
    SELECT RAISE(ABORT, 'sandbox_audit is append-only');
END;
