//! A NATS server with JetStream of its own per test, on a free loopback port with a temporary
//! store directory, killed when dropped.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running `nats-server -js`.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let store = tempfile::tempdir()?;
        let port = free_port()?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start nats-server ({e}); run `make deps`"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not listen within 10s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(NatsServer {
            child,
            port,
            _store: store,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server now (to test what clients do without it).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
