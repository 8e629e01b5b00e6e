//! A fresh PostgreSQL database per test on the server `make dev-up` starts (or the one named by
//! `LIQUID_TEST_POSTGRES_URL`), dropped when the fixture is dropped.

use sqlx::{Connection, PgConnection};

/// Where the admin connection goes unless `LIQUID_TEST_POSTGRES_URL` says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "postgres://liquid:liquid@127.0.0.1:5432/postgres";

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

fn admin_url() -> String {
    std::env::var("LIQUID_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

impl TestDatabase {
    /// Creates `t_<uuid>` on the test server.
    pub async fn create() -> anyhow::Result<TestDatabase> {
        let admin_url = admin_url();
        let mut admin = PgConnection::connect(&admin_url).await.map_err(|e| {
            anyhow::anyhow!("cannot reach PostgreSQL at {admin_url}: {e}; run `make dev-up`")
        })?;
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        // The name is generated here (t_ + a UUID), never caller input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Ok(TestDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop must not block a runtime thread: do it on a thread of its own with a small runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}
