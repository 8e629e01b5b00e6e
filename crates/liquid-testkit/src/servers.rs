//! Private Redis and PostgreSQL servers owned by one test, listening on an address the test
//! chooses — typically the gateway address of a Docker network the test created, so that
//! service containers on that network reach them the way pods reach managed backends.
//!
//! The shared servers `make dev-up` starts listen on loopback only and are shared by every
//! test; these are for tests that need a backend reachable from containers or one they may stop.
//! Each server runs from the Debian binaries `make deps` installs, keeps its data in a temporary
//! directory and is killed (and its directory removed) when dropped. Nothing here is shared.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// PostgreSQL's Debian installation.
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The role the tests connect as, with its password.
const PG_USER: &str = "liquid";
const PG_PASSWORD: &str = "liquid";

fn free_port(host: IpAddr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))
        .with_context(|| format!("cannot bind {host}:0"))?
        .local_addr()?
        .port())
}

async fn wait_for_port(
    child: &mut Child,
    addr: SocketAddr,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "{what} exited with {status} before listening on {addr}; log {}:\n{}",
                log.display(),
                tail(log)
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "{what} did not listen on {addr} within {READY_TIMEOUT:?}; log {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

fn log_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// A `redis-server` of one test, without persistence.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port of `host` and waits until it accepts connections.
    pub async fn start_on(host: IpAddr) -> anyhow::Result<RedisServer> {
        let dir = tempfile::Builder::new().prefix("liquid-redis-").tempdir()?;
        let port = free_port(host)?;
        let log = dir.path().join("redis.log");
        let mut child = Command::new("redis-server")
            .args(["--bind", &host.to_string(), "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file(&log)?))
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start redis-server; run `make deps`")?;
        let addr = SocketAddr::new(host, port);
        wait_for_port(&mut child, addr, "redis-server", &log).await?;
        Ok(RedisServer {
            child,
            addr,
            _dir: dir,
        })
    }

    /// `redis://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A PostgreSQL 15 cluster of one test: `initdb` into a temporary directory, then `postgres`
/// on a free port of the chosen address with password authentication for role `liquid`.
///
/// PostgreSQL refuses to run as root, so when the test runs as root the cluster belongs to the
/// `postgres` system user and both programs run with its uid and gid (INFRA.md). The server is
/// the direct child, so dropping the fixture stops it with a fast shutdown (SIGINT).
#[derive(Debug)]
pub struct PostgresServer {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The uid and gid of the `postgres` system user (Debian's package creates it).
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
        .context("no `postgres` user in /etc/passwd; run `make deps` (postgresql)")
}

/// `PG_BIN/program`, as the `postgres` user when running as root.
fn pg_command(program: &str, owner: Option<(u32, u32)>) -> Command {
    let mut command = Command::new(PathBuf::from(PG_BIN).join(program));
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}

impl PostgresServer {
    /// Creates and starts a cluster listening on a free port of `host`; returns once it
    /// accepts connections.
    pub async fn start_on(host: IpAddr) -> anyhow::Result<PostgresServer> {
        let dir = tempfile::Builder::new().prefix("liquid-pg-").tempdir()?;
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, PG_PASSWORD)?;
        let log = dir.path().join("postgres.log");
        log_file(&log)?;
        let owner = if is_root() {
            let (uid, gid) = postgres_user()?;
            for path in [dir.path(), pwfile.as_path(), log.as_path()] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("cannot chown {}", path.display()))?;
            }
            Some((uid, gid))
        } else {
            None
        };
        let init = pg_command("initdb", owner)
            .arg("-D")
            .arg(&data)
            .args(["-U", PG_USER, "--auth=scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .args(["--no-sync", "-E", "UTF8", "--locale=C"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file(&log)?))
            .stderr(Stdio::from(log_file(&log)?))
            .status()
            .await
            .context("cannot run initdb; run `make deps` (postgresql)")?;
        anyhow::ensure!(
            init.success(),
            "initdb failed; log {}:\n{}",
            log.display(),
            tail(&log)
        );
        // initdb's pg_hba.conf trusts only local connections; containers come from the
        // Docker network, so allow password logins from anywhere this server listens.
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba)?;
        rules.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
        std::fs::write(&hba, rules)?;
        let port = free_port(host)?;
        let mut child = pg_command("postgres", owner)
            .arg("-D")
            .arg(&data)
            .args(["-h", &host.to_string(), "-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args(["-c", "fsync=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file(&log)?))
            .stderr(Stdio::from(log_file(&log)?))
            .kill_on_drop(true)
            .spawn()
            .context("cannot start postgres")?;
        let addr = SocketAddr::new(host, port);
        wait_for_port(&mut child, addr, "postgres", &log).await?;
        let server = PostgresServer { child, addr, dir };
        // Listening is not yet accepting logins; wait for a real query to succeed.
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            match server.execute("postgres", "SELECT 1").await {
                Ok(()) => return Ok(server),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e.context(format!("postgres on {addr} never accepted a login")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `postgres://liquid:liquid@<host>:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{PG_USER}:{PG_PASSWORD}@{}/{database}",
            self.addr
        )
    }

    /// Creates a database.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database name {name:?} must be [A-Za-z0-9_]"
        );
        self.execute("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await
    }

    /// Runs one statement in `database`.
    pub async fn execute(&self, database: &str, sql: &str) -> anyhow::Result<()> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url(database))
            .await
            .with_context(|| format!("cannot connect to postgres on {}", self.addr))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }

    /// The server's log, for diagnosing a failing test.
    pub fn log(&self) -> String {
        tail(&self.dir.path().join("postgres.log"))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT) releases the shared memory a SIGKILL would leak; wait for it
        // briefly so the data directory is not removed under a running server.
        let Some(pid) = self.child.id() else {
            return;
        };
        let stopped = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if stopped {
            for _ in 0..100 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.start_kill();
    }
}
