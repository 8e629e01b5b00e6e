//! The task store on SQLite. JSON is stored as text and times as microseconds since the epoch, so
//! both backends share the ProtoJSON encoding code.
//!
//! Write transactions start with `BEGIN IMMEDIATE`: a deferred transaction that reads and then
//! writes cannot upgrade its lock while another connection writes and fails at once with
//! SQLITE_BUSY instead of waiting for the busy timeout.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use liquid_a2a::pb;
use liquid_store::StoreError;
use sqlx::{Row, SqlitePool};

use super::batch::{BatchWriter, NewTask, TaskUpdate, Write, Written, appended, created};
use super::{
    Abandoned, Appended, Created, Lease, StoredTask, TaskPage, TaskQuery, TaskStore, from_json,
    is_driven, to_json,
};
use crate::domain::cursor::Cursor;

/// The task store on a SQLite pool with the a2a migrations applied.
#[derive(Debug, Clone)]
pub struct SqliteTaskStore {
    pool: SqlitePool,
    lease: Option<Lease>,
}

impl SqliteTaskStore {
    /// Wraps a pool.
    pub fn new(pool: SqlitePool) -> Self {
        SqliteTaskStore { pool, lease: None }
    }

    /// Records `lease`'s owner on the tasks this store's writes leave driven.
    pub fn with_lease(mut self, lease: Option<Lease>) -> Self {
        self.lease = lease;
        self
    }
}

/// The lease expiry `length` from now, in microseconds.
fn lease_end(length: std::time::Duration) -> i64 {
    micros(Utc::now() + chrono::Duration::from_std(length).unwrap_or(chrono::Duration::MAX))
}

/// The owner and lease expiry a write in `state` records.
fn lease_of(lease: Option<&Lease>, state: i32) -> (Option<&str>, Option<i64>) {
    match lease {
        Some(l) if is_driven(state) => (Some(l.owner.as_str()), Some(lease_end(l.length))),
        _ => (None, None),
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

async fn message_task(
    conn: &mut sqlx::SqliteConnection,
    new: &NewTask,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT task_id FROM a2a_task_messages WHERE tenant = ?1 AND agent = ?2 AND message_id = ?3",
    )
    .bind(&new.tenant)
    .bind(&new.agent)
    .bind(&new.message_id)
    .fetch_optional(conn)
    .await?)
}

/// One write is one command to the connection's worker thread (the statements of a query
/// string run there one after another with the same numbered parameters): a round trip to that
/// thread per statement was most of a write's cost. The events go in as one JSON array of
/// strings, `json_each` turns them into rows.
async fn create_in(
    conn: &mut sqlx::SqliteConnection,
    new: &NewTask,
    lease: Option<&Lease>,
) -> Result<Created, StoreError> {
    let (owner, until) = lease_of(lease, new.state);
    // A create whose message id is already recorded (a retry, or a concurrent create with the
    // same id) loses at the last insert and takes its task back out (its events go with it,
    // ON DELETE CASCADE).
    // sqlx binds the numbered parameters of every statement of the string from one list, but
    // an unused number inside a statement's range takes the next unnamed argument, and past the
    // end of the list binding stops: the numbering keeps those gaps few (the store suite runs
    // this on SQLite).
    let changed = sqlx::query(
        "INSERT INTO a2a_tasks (tenant, id, agent, context_id, state, seq, task, status_at, created_at, owner, lease_until) \
         VALUES (?1, ?2, ?5, ?7, ?8, ?11, ?9, ?10, ?3, ?12, ?13); \
         INSERT INTO a2a_task_events (tenant, task_id, seq, event, created_at) \
         SELECT ?1, ?2, key + 1, value, ?3 FROM json_each(?4); \
         INSERT INTO a2a_task_messages (tenant, agent, message_id, task_id) VALUES (?1, ?5, ?6, ?2) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&new.tenant)
    .bind(&new.id)
    .bind(micros(new.now))
    .bind(to_json(&new.events)?)
    .bind(&new.agent)
    .bind(&new.message_id)
    .bind(&new.context_id)
    .bind(new.state)
    .bind(&new.task)
    .bind(micros(new.status_at))
    .bind(new.seq())
    .bind(owner)
    .bind(until)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let events = u64::try_from(new.events.len()).unwrap_or(u64::MAX);
    if changed <= 1 + events {
        sqlx::query("DELETE FROM a2a_tasks WHERE tenant = ?1 AND id = ?2")
            .bind(&new.tenant)
            .bind(&new.id)
            .execute(&mut *conn)
            .await?;
        let id = message_task(&mut *conn, new).await?;
        return Ok(id.map(Created::Existing).unwrap_or(Created::New));
    }
    Ok(Created::New)
}

async fn append_in(
    conn: &mut sqlx::SqliteConnection,
    update: &TaskUpdate,
    lease: Option<&Lease>,
) -> Result<Appended, StoreError> {
    let next = update.next_seq();
    let (owner, until) = lease_of(lease, update.state);
    // The events are inserted only when the update found the task at `expected_seq`
    // (`changes()` is the update's count while the insert runs). Parameters as in `create_in`.
    let changed = sqlx::query(
        "UPDATE a2a_tasks SET seq = ?4, state = ?5, task = ?6, status_at = ?7, expires_at = ?8, \
         owner = ?11, lease_until = ?12 \
         WHERE tenant = ?1 AND id = ?2 AND seq = ?3; \
         INSERT INTO a2a_task_events (tenant, task_id, seq, event, created_at) \
         SELECT ?1, ?2, ?3 + 1 + key, value, ?9 FROM json_each(?10) WHERE changes() = 1",
    )
    .bind(&update.tenant)
    .bind(&update.id)
    .bind(update.expected_seq)
    .bind(next)
    .bind(update.state)
    .bind(&update.task)
    .bind(micros(update.status_at))
    .bind(update.expires_at.map(micros))
    .bind(micros(update.now))
    .bind(to_json(&update.events)?)
    .bind(owner)
    .bind(until)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        return Ok(Appended::Conflict);
    }
    Ok(Appended::At(next))
}

#[async_trait]
impl BatchWriter for SqliteTaskStore {
    async fn write_batch(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            results.push(match write {
                Write::Create(new) => {
                    Written::Created(create_in(&mut tx, new, self.lease.as_ref()).await?)
                }
                Write::Append(update) => {
                    Written::Appended(append_in(&mut tx, update, self.lease.as_ref()).await?)
                }
            });
        }
        tx.commit().await?;
        Ok(results)
    }
}

#[async_trait]
impl TaskStore for SqliteTaskStore {
    async fn create_with_events(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
        task: &pb::Task,
        events: &[pb::StreamResponse],
    ) -> Result<Created, StoreError> {
        created(
            self.write_batch(&[Write::create(tenant, agent, message_id, task, events)?])
                .await?,
        )
    }

    async fn record_message(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
        task_id: &str,
    ) -> Result<Created, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO a2a_task_messages (tenant, agent, message_id, task_id) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(agent)
        .bind(message_id)
        .bind(task_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Created::New);
        }
        let existing = self.task_for_message(tenant, agent, message_id).await?;
        Ok(Created::Existing(existing.unwrap_or_default()))
    }

    async fn task_for_message(
        &self,
        tenant: &str,
        agent: &str,
        message_id: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT task_id FROM a2a_task_messages WHERE tenant = ?1 AND agent = ?2 AND message_id = ?3",
        )
        .bind(tenant)
        .bind(agent)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn load(&self, tenant: &str, id: &str) -> Result<Option<StoredTask>, StoreError> {
        let row =
            sqlx::query("SELECT agent, seq, task FROM a2a_tasks WHERE tenant = ?1 AND id = ?2")
                .bind(tenant)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(StoredTask {
                agent: r.try_get("agent")?,
                seq: r.try_get("seq")?,
                task: from_json(&r.try_get::<String, _>("task")?)?,
            })
        })
        .transpose()
    }

    async fn append_events(
        &self,
        tenant: &str,
        id: &str,
        expected_seq: i64,
        task: &pb::Task,
        events: &[pb::StreamResponse],
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Appended, StoreError> {
        appended(
            self.write_batch(&[Write::append(
                tenant,
                id,
                expected_seq,
                task,
                events,
                expires_at,
            )?])
            .await?,
        )
    }

    async fn events_after(
        &self,
        tenant: &str,
        id: &str,
        seq: i64,
    ) -> Result<Vec<(i64, pb::StreamResponse)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, event FROM a2a_task_events \
             WHERE tenant = ?1 AND task_id = ?2 AND seq > ?3 ORDER BY seq",
        )
        .bind(tenant)
        .bind(id)
        .bind(seq)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get("seq")?,
                    from_json(&r.try_get::<String, _>("event")?)?,
                ))
            })
            .collect()
    }

    async fn list(&self, tenant: &str, q: &TaskQuery) -> Result<TaskPage, StoreError> {
        let state = q.state;
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM a2a_tasks WHERE tenant = ?1 AND agent = ?2 \
             AND (?3 = '' OR context_id = ?3) AND (?4 = 0 OR state = ?4) \
             AND (?5 IS NULL OR status_at >= ?5)",
        )
        .bind(tenant)
        .bind(&q.agent)
        .bind(&q.context_id)
        .bind(state)
        .bind(q.status_after.map(micros))
        .fetch_one(&self.pool)
        .await?;
        let (after_time, after_id) = match &q.after {
            Some(c) => (Some(c.status_at_us), c.id.clone()),
            None => (None, String::new()),
        };
        let rows = sqlx::query(
            "SELECT task, status_at, id FROM a2a_tasks WHERE tenant = ?1 AND agent = ?2 \
             AND (?3 = '' OR context_id = ?3) AND (?4 = 0 OR state = ?4) \
             AND (?5 IS NULL OR status_at >= ?5) \
             AND (?6 IS NULL OR (status_at, id) < (?6, ?7)) \
             ORDER BY status_at DESC, id DESC LIMIT ?8",
        )
        .bind(tenant)
        .bind(&q.agent)
        .bind(&q.context_id)
        .bind(state)
        .bind(q.status_after.map(micros))
        .bind(after_time)
        .bind(after_id)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        let tasks = rows
            .into_iter()
            .map(|r| {
                let at: i64 = r.try_get("status_at")?;
                Ok((
                    from_json(&r.try_get::<String, _>("task")?)?,
                    Cursor {
                        status_at_us: at,
                        id: r.try_get("id")?,
                    },
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(TaskPage { tasks, total })
    }

    async fn count_by_state(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM a2a_tasks GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(state, n)| (i32::try_from(state).unwrap_or_default(), n))
            .collect())
    }

    async fn evict_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM a2a_tasks WHERE expires_at IS NOT NULL AND expires_at <= ?1")
                .bind(micros(now))
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }

    async fn renew_leases(&self, ids: &[String]) -> Result<u64, StoreError> {
        let Some(lease) = &self.lease else {
            return Ok(0);
        };
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(sqlx::query(
            "UPDATE a2a_tasks SET lease_until = ?2 \
             WHERE owner = ?1 AND lease_until IS NOT NULL AND id IN (SELECT value FROM json_each(?3))",
        )
        .bind(&lease.owner)
        .bind(lease_end(lease.length))
        .bind(to_json(&ids)?)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn claim_expired(&self, limit: u32) -> Result<Vec<Abandoned>, StoreError> {
        let Some(lease) = &self.lease else {
            return Ok(Vec::new());
        };
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "SELECT tenant, id, agent, seq, task, coalesce(owner, '') AS owner FROM a2a_tasks \
             WHERE lease_until IS NOT NULL AND lease_until < ?1 AND state IN (?3, ?4) \
             ORDER BY lease_until LIMIT ?2",
        )
        .bind(micros(Utc::now()))
        .bind(i64::from(limit))
        .bind(pb::TaskState::Submitted as i32)
        .bind(pb::TaskState::Working as i32)
        .fetch_all(&mut *tx)
        .await?;
        let until = lease_end(lease.length);
        let mut claimed = Vec::with_capacity(rows.len());
        for r in rows {
            let tenant: String = r.try_get("tenant")?;
            let id: String = r.try_get("id")?;
            sqlx::query(
                "UPDATE a2a_tasks SET owner = ?3, lease_until = ?4 WHERE tenant = ?1 AND id = ?2",
            )
            .bind(&tenant)
            .bind(&id)
            .bind(&lease.owner)
            .bind(until)
            .execute(&mut *tx)
            .await?;
            claimed.push(Abandoned {
                tenant,
                stored: StoredTask {
                    agent: r.try_get("agent")?,
                    seq: r.try_get("seq")?,
                    task: from_json(&r.try_get::<String, _>("task")?)?,
                },
                previous_owner: r.try_get("owner")?,
            });
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn put_push_config(
        &self,
        tenant: &str,
        config: &pb::TaskPushNotificationConfig,
        cap: u32,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM a2a_push_configs WHERE tenant = ?1 AND task_id = ?2 AND id <> ?3",
        )
        .bind(tenant)
        .bind(&config.task_id)
        .bind(&config.id)
        .fetch_one(&mut *tx)
        .await?;
        if others >= i64::from(cap) {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO a2a_push_configs (tenant, task_id, id, config, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (tenant, task_id, id) DO UPDATE SET config = EXCLUDED.config",
        )
        .bind(tenant)
        .bind(&config.task_id)
        .bind(&config.id)
        .bind(to_json(config)?)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_push_config(
        &self,
        tenant: &str,
        task_id: &str,
        id: &str,
    ) -> Result<Option<pb::TaskPushNotificationConfig>, StoreError> {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT config FROM a2a_push_configs WHERE tenant = ?1 AND task_id = ?2 AND id = ?3",
        )
        .bind(tenant)
        .bind(task_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        text.map(|t| from_json(&t)).transpose()
    }

    async fn list_push_configs(
        &self,
        tenant: &str,
        task_id: &str,
    ) -> Result<Vec<pb::TaskPushNotificationConfig>, StoreError> {
        let texts: Vec<String> = sqlx::query_scalar(
            "SELECT config FROM a2a_push_configs WHERE tenant = ?1 AND task_id = ?2 ORDER BY created_at, id",
        )
        .bind(tenant)
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        texts.iter().map(|t| from_json(t)).collect()
    }

    async fn tasks_with_push_configs(
        &self,
        tasks: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        // The pairs go in as one JSON array, `[[tenant, task_id], ...]`.
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT tenant, task_id FROM a2a_push_configs \
             WHERE (tenant, task_id) IN \
             (SELECT value ->> 0, value ->> 1 FROM json_each(?1))",
        )
        .bind(to_json(&tasks)?)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn list_push_configs_page(
        &self,
        tenant: &str,
        task_id: &str,
        after: Option<&Cursor>,
        limit: u32,
    ) -> Result<Vec<(pb::TaskPushNotificationConfig, Cursor)>, StoreError> {
        let (after_time, after_id) = match after {
            Some(c) => (Some(c.status_at_us), c.id.clone()),
            None => (None, String::new()),
        };
        let rows = sqlx::query(
            "SELECT config, created_at, id FROM a2a_push_configs \
             WHERE tenant = ?1 AND task_id = ?2 \
             AND (?3 IS NULL OR created_at > ?3 OR (created_at = ?3 AND id > ?4)) \
             ORDER BY created_at, id LIMIT ?5",
        )
        .bind(tenant)
        .bind(task_id)
        .bind(after_time)
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    from_json(&r.try_get::<String, _>("config")?)?,
                    Cursor {
                        status_at_us: r.try_get("created_at")?,
                        id: r.try_get("id")?,
                    },
                ))
            })
            .collect()
    }

    async fn delete_push_config(
        &self,
        tenant: &str,
        task_id: &str,
        id: &str,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM a2a_push_configs WHERE tenant = ?1 AND task_id = ?2 AND id = ?3",
        )
        .bind(tenant)
        .bind(task_id)
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }
}
