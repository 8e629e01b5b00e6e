-- The replica driving a task (SUBMITTED or WORKING) and until when its lease holds. The owner
-- renews the leases of all its tasks in one statement every few seconds; a task whose lease ran
-- out lost its replica (killed, partitioned) and is claimed and failed by another. Both are
-- NULL in every other state (waiting for the client, or terminal).
ALTER TABLE a2a_tasks ADD COLUMN owner TEXT;
ALTER TABLE a2a_tasks ADD COLUMN lease_until TIMESTAMPTZ;
-- Only driven tasks have a lease, so the index stays as small as the set of running tasks.
CREATE INDEX a2a_tasks_leases ON a2a_tasks (lease_until) WHERE lease_until IS NOT NULL;
