//! Test fixtures that give every test real, isolated backends: a fresh Postgres database, a
//! Redis key prefix, a NATS JetStream server of its own, an in-memory OTLP receiver and Docker
//! helpers that label and sweep what they create. Under cargo-nextest the fixtures also arm a
//! [`watchdog`] that turns a hung test into a failure with every thread's stack.
//!
//! Fixtures never share mutable state between tests and never wipe a shared server.

pub mod dashboard;
pub mod docker;
pub mod model_servers;
pub mod nats;
pub mod otlp;
pub mod postgres;
pub mod redis;
pub mod servers;
pub mod vault;
pub mod watchdog;

use std::path::PathBuf;

/// Path of a binary of this workspace built into the same target directory as the running
/// test (`cargo nextest run --workspace` builds them all). The error says how to build it.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("unexpected test binary location {}", exe.display()))?;
    let candidate = profile_dir.join(name);
    if candidate.is_file() {
        Ok(candidate)
    } else {
        anyhow::bail!(
            "{} is not built; run `cargo build -p {name}` (make test does this)",
            candidate.display()
        )
    }
}
