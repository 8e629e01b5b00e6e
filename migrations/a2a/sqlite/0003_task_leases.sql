-- The replica driving a task (SUBMITTED or WORKING) and until when its lease holds
-- (microseconds since the Unix epoch). The owner renews the leases of all its tasks in one
-- statement every few seconds; a task whose lease ran out lost its replica (the process was
-- killed) and is claimed and failed at the next start. Both are NULL in every other state.
ALTER TABLE a2a_tasks ADD COLUMN owner TEXT;
ALTER TABLE a2a_tasks ADD COLUMN lease_until INTEGER;
CREATE INDEX a2a_tasks_leases ON a2a_tasks (lease_until) WHERE lease_until IS NOT NULL;
