-- Staging sandboxes (issue 7, item 7): one row per sandbox, its manifests, per-session byte
-- budgets of the permission pipeline, and the append-only audit log. Every row carries the
-- tenant that owns it; every query filters on it.
CREATE TABLE IF NOT EXISTS sandboxes (
    sandbox_id            UUID PRIMARY KEY,
    tenant                TEXT        NOT NULL,
    session_id            UUID        NOT NULL,
    state                 TEXT        NOT NULL,
    label                 TEXT        NOT NULL,
    source_path           TEXT        NOT NULL,
    work_path             TEXT        NOT NULL,
    file_count            BIGINT      NOT NULL,
    total_bytes           BIGINT      NOT NULL,
    copy_summary          TEXT        NOT NULL,
    container_id          TEXT,
    container_attached_at TIMESTAMPTZ,
    a2a_task_id           TEXT,
    a2a_task_state        TEXT,
    a2a_updated_at        TIMESTAMPTZ,
    live_instance         UUID,
    idempotency_key       TEXT,
    created_at            TIMESTAMPTZ NOT NULL,
    updated_at            TIMESTAMPTZ NOT NULL,
    expires_at            TIMESTAMPTZ NOT NULL,
    applied_at            TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS sandboxes_tenant_state ON sandboxes (tenant, state, sandbox_id);
CREATE INDEX IF NOT EXISTS sandboxes_expiry ON sandboxes (state, expires_at);
CREATE UNIQUE INDEX IF NOT EXISTS sandboxes_idempotency
    ON sandboxes (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- `baseline` (the SHA-256 manifest at creation) and `applied` (what apply wrote, for rollback).
CREATE TABLE IF NOT EXISTS sandbox_manifests (
    sandbox_id UUID NOT NULL REFERENCES sandboxes (sandbox_id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    body       TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, kind)
);

-- Bytes each session has committed through the permission pipeline.
CREATE TABLE IF NOT EXISTS session_usage (
    tenant        TEXT   NOT NULL,
    session_id    UUID   NOT NULL,
    charged_bytes BIGINT NOT NULL,
    PRIMARY KEY (tenant, session_id)
);

-- Who did what, when, with which hashes. Append-only: updates and deletes are refused.
CREATE TABLE IF NOT EXISTS sandbox_audit (
    audit_id      UUID PRIMARY KEY,
    tenant        TEXT        NOT NULL,
    sandbox_id    UUID,
    session_id    UUID,
    actor         TEXT        NOT NULL,
    action        TEXT        NOT NULL,
    outcome       TEXT        NOT NULL,
    path          TEXT,
    stage         TEXT,
    sha256_before TEXT,
    sha256_after  TEXT,
    detail        TEXT        NOT NULL,
    at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS sandbox_audit_tenant ON sandbox_audit (tenant, audit_id);
CREATE INDEX IF NOT EXISTS sandbox_audit_sandbox ON sandbox_audit (tenant, sandbox_id, audit_id);

CREATE OR REPLACE FUNCTION sandbox_audit_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'sandbox_audit is append-only';
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS sandbox_audit_append_only ON sandbox_audit;
CREATE TRIGGER sandbox_audit_append_only
    BEFORE UPDATE OR DELETE ON sandbox_audit
    FOR EACH ROW EXECUTE FUNCTION sandbox_audit_is_append_only();
