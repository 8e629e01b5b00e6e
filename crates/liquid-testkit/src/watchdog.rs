//! A hung test explains itself before the runner kills it.
//!
//! Under cargo-nextest each test runs in a process of its own, so the process's age is the
//! test's. [`arm`] (called by the fixtures' constructors, and by anything else that wants it)
//! starts one thread per process; when the test is still running the watchdog's limit after it
//! was armed (`LIQUID_TEST_WATCHDOG_SECS`, 230 s by default, under the CI profile's 300 s kill;
//! a test meant to run longer sets it, or 0 to turn it off), it prints
//! every thread's stack (through gdb, when installed) and aborts. The stacks tell a test
//! waiting on a future (tokio's workers parked in `epoll_wait`) from one whose runtime is
//! blocked (a worker inside a lock or a blocking call); the test's own log, when it installed
//! [`logs`], shows what the services did up to then. The runner reports the abort as a failed
//! test with all of it in its output.
//!
//! Under plain `cargo test` one process runs many tests, so the watchdog stays off there.
//! Neither is a timing assertion: the limit is far above any test's normal duration and only
//! turns a hang into a diagnosis.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The environment variable setting the watchdog's limit in seconds (0 turns it off).
pub const LIMIT_ENV: &str = "LIQUID_TEST_WATCHDOG_SECS";
const DEFAULT_LIMIT: Duration = Duration::from_secs(230);
/// How long gdb may take to attach and print (it reads the test binary's debug information).
const DUMP_DEADLINE: Duration = Duration::from_secs(45);

/// True when this process runs a single test (cargo-nextest's default execution mode).
pub fn one_test_per_process() -> bool {
    std::env::var("NEXTEST_EXECUTION_MODE").as_deref() == Ok("process-per-test")
}

/// Starts the watchdog once per process, when this process runs one test.
pub fn arm() {
    static ARMED: Once = Once::new();
    ARMED.call_once(|| {
        if !one_test_per_process() {
            return;
        }
        let limit = match std::env::var(LIMIT_ENV) {
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(0) => return,
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => {
                    eprintln!("{LIMIT_ENV}={v:?} is not a number of seconds; using the default");
                    DEFAULT_LIMIT
                }
            },
            Err(_) => DEFAULT_LIMIT,
        };
        let started = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("liquid-test-watchdog".into())
            .spawn(move || {
                std::thread::sleep(limit.saturating_sub(started.elapsed()));
                report_and_abort(limit);
            });
        if let Err(e) = spawned {
            eprintln!("liquid-testkit: cannot start the test watchdog: {e}");
        }
    });
}

fn report_and_abort(limit: Duration) -> ! {
    let test = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    eprintln!(
        "\n=== liquid-testkit watchdog: test {} still running after {} s; thread stacks follow, \
         then the process aborts ===",
        test.as_deref().unwrap_or("(unknown)"),
        limit.as_secs()
    );
    print_thread_stacks();
    eprintln!("=== liquid-testkit watchdog: aborting the hung test ===");
    let _ = std::io::stderr().flush();
    std::process::abort()
}

/// Every thread's backtrace of this process, printed by gdb to this process's stderr.
fn print_thread_stacks() {
    let pid = std::process::id().to_string();
    // gdb prints the stacks on its stdout: send them where the test's log goes.
    let stdout = match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::inherit(),
    };
    let child = Command::new("gdb")
        .args([
            "--batch",
            "--nx",
            "-iex",
            "set debuginfod enabled off",
            "-p",
            &pid,
        ])
        .args(["-ex", "set pagination off", "-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("no thread stacks: cannot run gdb ({e}); install it to get them");
            return;
        }
    };
    let deadline = Instant::now() + DUMP_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                if !status.success() || ptrace_restricted() {
                    eprintln!(
                        "(no stacks above? gdb attaches to its own parent here, which Yama's \
                         kernel.yama.ptrace_scope ≥ 1 refuses to a process without \
                         CAP_SYS_PTRACE; set it to 0 to get them)"
                    );
                }
                return;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                eprintln!(
                    "gdb did not finish within {} s; stopping it",
                    DUMP_DEADLINE.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
        }
    }
}

/// Whether Yama restricts ptrace to descendants (or further), which refuses gdb's attach to
/// its parent unless the process has CAP_SYS_PTRACE.
fn ptrace_restricted() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|v| v.trim().parse::<u8>().ok())
        .is_some_and(|scope| scope >= 1)
}

/// Installs a log subscriber writing the services' events (`RUST_LOG`, `info` by default) to
/// stderr, when this process runs one test: the runner keeps that output and shows it only for a
/// test that fails. Does nothing when a subscriber is already installed: a test that sets up
/// its own telemetry (`liquid_kit::telemetry::init`) must do so before anything calls this, or
/// its spans stay in this subscriber and are not exported.
pub fn logs() {
    if !one_test_per_process() {
        return;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
