//! The task store on PostgreSQL. JSON goes in and out as text (`$n::jsonb`, `col::text`), so
//! both backends share the ProtoJSON encoding code.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use liquid_a2a::pb;
use liquid_store::StoreError;
use sqlx::{PgPool, Row};

use super::batch::{BatchWriter, NewTask, TaskUpdate, Write, Written, appended, created};
use super::{
    Abandoned, Appended, Created, Lease, StoredTask, TaskPage, TaskQuery, TaskStore, from_json,
    is_driven, to_json,
};
use crate::domain::cursor::Cursor;

/// The task store on a Postgres pool with the a2a migrations applied.
#[derive(Debug, Clone)]
pub struct PostgresTaskStore {
    pool: PgPool,
    lease: Option<Lease>,
}

impl PostgresTaskStore {
    /// Wraps a pool.
    pub fn new(pool: PgPool) -> Self {
        PostgresTaskStore { pool, lease: None }
    }

    /// Records `lease`'s owner on the tasks this store's writes leave driven.
    pub fn with_lease(mut self, lease: Option<Lease>) -> Self {
        self.lease = lease;
        self
    }
}

/// The owner a write in `state` records, and the lease length in seconds: the expiry is the
/// database's `now()` plus that (NULL plus anything is NULL), so replicas' clocks need not
/// agree.
fn lease_of(lease: Option<&Lease>, state: i32) -> (Option<&str>, Option<f64>) {
    match lease {
        Some(l) if is_driven(state) => (Some(l.owner.as_str()), Some(l.length.as_secs_f64())),
        _ => (None, None),
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

async fn message_task(
    conn: &mut sqlx::PgConnection,
    new: &NewTask,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT task_id FROM a2a_task_messages WHERE tenant = $1 AND agent = $2 AND message_id = $3",
    )
    .bind(&new.tenant)
    .bind(&new.agent)
    .bind(&new.message_id)
    .fetch_optional(conn)
    .await?)
}

/// One write is one statement (data-modifying CTEs, the events as a text array), so one round
/// trip to the server instead of one per row.
async fn create_in(
    conn: &mut sqlx::PgConnection,
    new: &NewTask,
    lease: Option<&Lease>,
) -> Result<Created, StoreError> {
    let (owner, secs) = lease_of(lease, new.state);
    // A create whose message id is already recorded (a retry, or a concurrent create with the
    // same id) inserts no message row and takes its task back out (its events go with it,
    // ON DELETE CASCADE).
    let inserted = sqlx::query(
        "WITH task AS (\
             INSERT INTO a2a_tasks (tenant, id, agent, context_id, state, seq, task, status_at, created_at, owner, lease_until) \
             VALUES ($1, $2, $3, $4, $5, $9, $6::jsonb, $7, $8, $12, now() + make_interval(secs => $13::float8))), \
         events AS (\
             INSERT INTO a2a_task_events (tenant, task_id, seq, event, created_at) \
             SELECT $1, $2, n, e::jsonb, $8 FROM UNNEST($10::text[]) WITH ORDINALITY AS u (e, n)) \
         INSERT INTO a2a_task_messages (tenant, agent, message_id, task_id) VALUES ($1, $3, $11, $2) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&new.tenant)
    .bind(&new.id)
    .bind(&new.agent)
    .bind(&new.context_id)
    .bind(i16::try_from(new.state).unwrap_or_default())
    .bind(&new.task)
    .bind(new.status_at)
    .bind(new.now)
    .bind(new.seq())
    .bind(&new.events)
    .bind(&new.message_id)
    .bind(owner)
    .bind(secs)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        sqlx::query("DELETE FROM a2a_tasks WHERE tenant = $1 AND id = $2")
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
    conn: &mut sqlx::PgConnection,
    update: &TaskUpdate,
    lease: Option<&Lease>,
) -> Result<Appended, StoreError> {
    let next = update.next_seq();
    let (owner, secs) = lease_of(lease, update.state);
    // The events are inserted only when the update found the task at `expected_seq`.
    let updated: i64 = sqlx::query_scalar(
        "WITH updated AS (\
             UPDATE a2a_tasks SET seq = $4, state = $5, task = $6::jsonb, status_at = $7, expires_at = $8, \
             owner = $11, lease_until = now() + make_interval(secs => $12::float8) \
             WHERE tenant = $1 AND id = $2 AND seq = $3 RETURNING 1), \
         events AS (\
             INSERT INTO a2a_task_events (tenant, task_id, seq, event, created_at) \
             SELECT $1, $2, $3 + n, e::jsonb, $9 FROM UNNEST($10::text[]) WITH ORDINALITY AS u (e, n) \
             WHERE EXISTS (SELECT 1 FROM updated)) \
         SELECT count(*) FROM updated",
    )
    .bind(&update.tenant)
    .bind(&update.id)
    .bind(update.expected_seq)
    .bind(next)
    .bind(i16::try_from(update.state).unwrap_or_default())
    .bind(&update.task)
    .bind(update.status_at)
    .bind(update.expires_at)
    .bind(update.now)
    .bind(&update.events)
    .bind(owner)
    .bind(secs)
    .fetch_one(&mut *conn)
    .await?;
    if updated == 0 {
        return Ok(Appended::Conflict);
    }
    Ok(Appended::At(next))
}

#[async_trait]
impl BatchWriter for PostgresTaskStore {
    async fn write_batch(&self, writes: &[Write]) -> Result<Vec<Written>, StoreError> {
        let mut tx = self.pool.begin().await?;
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
impl TaskStore for PostgresTaskStore {
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
            "INSERT INTO a2a_task_messages (tenant, agent, message_id, task_id) VALUES ($1, $2, $3, $4) \
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
            "SELECT task_id FROM a2a_task_messages WHERE tenant = $1 AND agent = $2 AND message_id = $3",
        )
        .bind(tenant)
        .bind(agent)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn load(&self, tenant: &str, id: &str) -> Result<Option<StoredTask>, StoreError> {
        let row = sqlx::query(
            "SELECT agent, seq, task::text AS task FROM a2a_tasks WHERE tenant = $1 AND id = $2",
        )
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
            "SELECT seq, event::text AS event FROM a2a_task_events \
             WHERE tenant = $1 AND task_id = $2 AND seq > $3 ORDER BY seq",
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
        let state = i16::try_from(q.state).unwrap_or_default();
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM a2a_tasks WHERE tenant = $1 AND agent = $2 \
             AND ($3 = '' OR context_id = $3) AND ($4 = 0 OR state = $4) \
             AND ($5::timestamptz IS NULL OR status_at >= $5)",
        )
        .bind(tenant)
        .bind(&q.agent)
        .bind(&q.context_id)
        .bind(state)
        .bind(q.status_after)
        .fetch_one(&self.pool)
        .await?;
        let (after_time, after_id) = match &q.after {
            Some(c) => (
                DateTime::from_timestamp_micros(c.status_at_us),
                c.id.clone(),
            ),
            None => (None, String::new()),
        };
        let rows = sqlx::query(
            "SELECT task::text AS task, status_at, id FROM a2a_tasks WHERE tenant = $1 AND agent = $2 \
             AND ($3 = '' OR context_id = $3) AND ($4 = 0 OR state = $4) \
             AND ($5::timestamptz IS NULL OR status_at >= $5) \
             AND ($6::timestamptz IS NULL OR (status_at, id) < ($6, $7)) \
             ORDER BY status_at DESC, id DESC LIMIT $8",
        )
        .bind(tenant)
        .bind(&q.agent)
        .bind(&q.context_id)
        .bind(state)
        .bind(q.status_after)
        .bind(after_time)
        .bind(after_id)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await?;
        let tasks = rows
            .into_iter()
            .map(|r| {
                let at: DateTime<Utc> = r.try_get("status_at")?;
                Ok((
                    from_json(&r.try_get::<String, _>("task")?)?,
                    Cursor {
                        status_at_us: micros(at),
                        id: r.try_get("id")?,
                    },
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(TaskPage { tasks, total })
    }

    async fn count_by_state(&self) -> Result<Vec<(i32, i64)>, StoreError> {
        let rows: Vec<(i16, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM a2a_tasks GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(state, n)| (i32::from(state), n))
            .collect())
    }

    async fn evict_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM a2a_tasks WHERE expires_at IS NOT NULL AND expires_at <= $1")
                .bind(now)
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
            "UPDATE a2a_tasks SET lease_until = now() + make_interval(secs => $2::float8) \
             WHERE owner = $1 AND lease_until IS NOT NULL AND id = ANY($3)",
        )
        .bind(&lease.owner)
        .bind(lease.length.as_secs_f64())
        .bind(ids)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn claim_expired(&self, limit: u32) -> Result<Vec<Abandoned>, StoreError> {
        let Some(lease) = &self.lease else {
            return Ok(Vec::new());
        };
        // SKIP LOCKED: replicas sweeping at once each take different tasks, and a task a
        // writer is updating right now is left for the next sweep.
        let rows = sqlx::query(
            "WITH expired AS ( \
                 SELECT tenant, id, owner FROM a2a_tasks \
                 WHERE lease_until IS NOT NULL AND lease_until < now() AND state IN ($4, $5) \
                 ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE a2a_tasks t SET owner = $1, lease_until = now() + make_interval(secs => $2::float8) \
             FROM expired e WHERE t.tenant = e.tenant AND t.id = e.id \
             RETURNING t.tenant, t.agent, t.seq, t.task::text AS task, \
                 coalesce(e.owner, '') AS previous_owner",
        )
        .bind(&lease.owner)
        .bind(lease.length.as_secs_f64())
        .bind(i64::from(limit))
        .bind(pb::TaskState::Submitted as i16)
        .bind(pb::TaskState::Working as i16)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(Abandoned {
                    tenant: r.try_get("tenant")?,
                    stored: StoredTask {
                        agent: r.try_get("agent")?,
                        seq: r.try_get("seq")?,
                        task: from_json(&r.try_get::<String, _>("task")?)?,
                    },
                    previous_owner: r.try_get("previous_owner")?,
                })
            })
            .collect()
    }

    async fn put_push_config(
        &self,
        tenant: &str,
        config: &pb::TaskPushNotificationConfig,
        cap: u32,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Lock the task row so concurrent creates count each other.
        sqlx::query("SELECT 1 FROM a2a_tasks WHERE tenant = $1 AND id = $2 FOR UPDATE")
            .bind(tenant)
            .bind(&config.task_id)
            .execute(&mut *tx)
            .await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM a2a_push_configs WHERE tenant = $1 AND task_id = $2 AND id <> $3",
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
            "INSERT INTO a2a_push_configs (tenant, task_id, id, config, created_at) VALUES ($1, $2, $3, $4::jsonb, $5) \
             ON CONFLICT (tenant, task_id, id) DO UPDATE SET config = EXCLUDED.config",
        )
        .bind(tenant)
        .bind(&config.task_id)
        .bind(&config.id)
        .bind(to_json(config)?)
        .bind(Utc::now())
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
            "SELECT config::text FROM a2a_push_configs WHERE tenant = $1 AND task_id = $2 AND id = $3",
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
            "SELECT config::text FROM a2a_push_configs WHERE tenant = $1 AND task_id = $2 ORDER BY created_at, id",
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
        let (tenants, ids): (Vec<&str>, Vec<&str>) = tasks
            .iter()
            .map(|(tenant, id)| (tenant.as_str(), id.as_str()))
            .unzip();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT c.tenant, c.task_id FROM a2a_push_configs c \
             JOIN UNNEST($1::text[], $2::text[]) AS q (tenant, task_id) \
             ON c.tenant = q.tenant AND c.task_id = q.task_id",
        )
        .bind(tenants)
        .bind(ids)
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
            Some(c) => (
                DateTime::from_timestamp_micros(c.status_at_us),
                c.id.clone(),
            ),
            None => (None, String::new()),
        };
        let rows = sqlx::query(
            "SELECT config::text AS config, created_at, id FROM a2a_push_configs \
             WHERE tenant = $1 AND task_id = $2 \
             AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4)) \
             ORDER BY created_at, id LIMIT $5",
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
                let at: DateTime<Utc> = r.try_get("created_at")?;
                Ok((
                    from_json(&r.try_get::<String, _>("config")?)?,
                    Cursor {
                        status_at_us: micros(at),
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
            "DELETE FROM a2a_push_configs WHERE tenant = $1 AND task_id = $2 AND id = $3",
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
