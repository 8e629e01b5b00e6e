//! The `liquid` command: `up` runs all seven services in one process on embedded defaults,
//! `token` mints a development token, `migrate` applies every service's migrations.

mod embedded;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Liquid: an open agent platform.
#[derive(Debug, Parser)]
#[command(name = "liquid", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start all seven services in this process on embedded defaults (SQLite, in-process bus,
    /// in-memory cache, a generated dev signing key). Environment variables override any
    /// service's setting (`LIQUID_<SVC>__DATABASE__URL=postgres://...`).
    Up {
        /// Where SQLite files, the dev key and `up.json` live.
        #[arg(long, env = "LIQUID_DATA_DIR", default_value = ".liquid")]
        data_dir: PathBuf,
        /// A TOML file layered under the environment for every service.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Bind every service to a free port instead of its usual one (tests, several copies).
        #[arg(long)]
        ephemeral_ports: bool,
    },
    /// Mint a development token signed with the data directory's dev key.
    Token {
        /// Where the dev key lives (created by `liquid up`, or now if missing).
        #[arg(long, env = "LIQUID_DATA_DIR", default_value = ".liquid")]
        data_dir: PathBuf,
        /// Space- or comma-separated scopes, e.g. `read:prices write:chat` or `admin:*`.
        #[arg(long, default_value = "admin:*")]
        scopes: String,
        /// Lifetime: `90s`, `15m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Subject (user id).
        #[arg(long, default_value = "dev")]
        sub: String,
        /// Tenant; defaults to the subject.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Cowork's versioned prompts and agent directives.
    Directives {
        #[command(subcommand)]
        action: DirectivesAction,
    },
    /// Apply every service's migrations to its configured database and exit.
    Migrate {
        /// Data directory used for the embedded SQLite defaults.
        #[arg(long, env = "LIQUID_DATA_DIR", default_value = ".liquid")]
        data_dir: PathBuf,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// A TOML file layered under the environment for every service.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum DirectivesAction {
    /// Check every file against its manifest.json SHA-256 (the check cowork runs at start-up)
    /// and list every problem; exits 1 when there is one.
    Verify {
        /// A directives directory (cowork's `directives.dir`); without it, the directives built
        /// into this binary.
        dir: Option<PathBuf>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `liquid directives verify`: prints the report; `Ok(false)` when it found problems.
fn verify_directives(dir: Option<&std::path::Path>, json: bool) -> anyhow::Result<bool> {
    let report = match dir {
        Some(d) => liquid_cowork::directives::verify(d)?,
        None => liquid_cowork::directives::verify_builtin()?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(report.is_ok())
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => return Err(format!("unknown unit `{other}`; use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the lifetime must be longer than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

/// mimalloc rather than glibc's malloc: faster on the many small per-request allocations
/// (BENCHMARKS.md, A2A, "mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up {
            data_dir,
            config,
            ephemeral_ports,
        } => embedded::up(&data_dir, config.as_deref(), ephemeral_ports).await,
        Command::Token {
            data_dir,
            scopes,
            ttl,
            sub,
            tenant,
        } => embedded::token(&data_dir, &scopes, ttl, &sub, tenant.as_deref())
            .map(|t| println!("{t}")),
        Command::Migrate {
            data_dir,
            service,
            config,
        } => embedded::migrate(&data_dir, service.as_deref(), config.as_deref()).await,
        Command::Directives {
            action: DirectivesAction::Verify { dir, json },
        } => match verify_directives(dir.as_deref(), json) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_ttl("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("5y").unwrap_err().contains("unknown unit"));
        assert!(parse_ttl("abc").is_err());
    }
}
