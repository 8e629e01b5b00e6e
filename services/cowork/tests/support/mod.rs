//! Shared fixtures of cowork's service tests: a workspace of the test's own, staging sandboxes
//! on a real database (SQLite file or a fresh Postgres database), and tokens.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use liquid_cowork::CoworkSettings;
use liquid_cowork::sandbox::{Caller, StagingSandboxes};
use liquid_cowork::store::SandboxStore;
use liquid_store::Database;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A temporary tree: `ws/<tenant>/...` sources and `sandboxes/`.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
}

impl Dirs {
    pub fn new() -> Dirs {
        Dirs {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn base(&self) -> PathBuf {
        std::fs::canonicalize(self.tmp.path()).unwrap()
    }

    /// A source workspace of `tenant` named `name` with `files`.
    pub fn workspace(&self, tenant: &str, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.base().join("ws").join(tenant).join(name);
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub fn settings(&self) -> CoworkSettings {
        let mut s = CoworkSettings::default();
        s.sandbox.root = self.base().join("sandboxes").display().to_string();
        s.sandbox.workspace_roots = vec![self.base().join("ws/{tenant}").display().to_string()];
        s
    }
}

/// An empty SQLite database file in `dir`, migrated.
pub async fn sqlite(dir: &Path) -> Database {
    let url = format!(
        "sqlite://{}/cowork-{}.db",
        dir.display(),
        Uuid::now_v7().simple()
    );
    let db = Database::connect(&url).await.unwrap();
    db.migrate(&liquid_cowork::MIGRATIONS).await.unwrap();
    db
}

pub async fn sandboxes(
    db: &Database,
    settings: &CoworkSettings,
) -> (StagingSandboxes, Arc<dyn SandboxStore>) {
    let store = liquid_cowork::store::for_database(db);
    let (s, run) = StagingSandboxes::open(
        store.clone(),
        settings,
        Uuid::now_v7(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    tokio::spawn(run);
    (s, store)
}

pub fn caller(tenant: &str) -> Caller {
    Caller {
        tenant: tenant.into(),
        actor: format!("{tenant}-user"),
    }
}

/// A sandbox of `source` for `caller`.
pub async fn sandbox_of(
    sb: &StagingSandboxes,
    caller: &Caller,
    source: &Path,
) -> liquid_cowork::sandbox::SandboxView {
    sb.create(
        caller,
        liquid_cowork::sandbox::CreateSandbox {
            source: source.display().to_string(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}
