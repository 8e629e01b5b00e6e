-- Events waiting to go on the bus: written in the same transaction as the change they describe
-- (a claim, a release), relayed by a background task of any replica and deleted once the bus
-- has stored them (published with the event id as de-duplication id, so a relay that crashes
-- after publishing and before deleting publishes a duplicate that the stream drops).
CREATE TABLE IF NOT EXISTS pool_outbox (
    event_id        TEXT   PRIMARY KEY,
    event           TEXT   NOT NULL,
    -- A relay leases rows until this time (Unix milliseconds) so replicas do not publish the
    -- same rows at once; a crashed relay's lease runs out.
    locked_until_ms INTEGER NOT NULL DEFAULT 0
);

-- Idempotency-Key of acquires: the insert decides which request claims; the claim id is set in
-- the claim's own transaction. A row without a claim id is a request still in progress.
CREATE TABLE IF NOT EXISTS pool_idempotency (
    tenant     TEXT   NOT NULL,
    key        TEXT   NOT NULL,
    claim_id   TEXT,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
);
