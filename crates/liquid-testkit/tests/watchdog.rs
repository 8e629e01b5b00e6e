//! The hang watchdog, seen from outside: this test runs its own binary again as a test that
//! hangs, with the environment nextest gives a test process, and reads what it printed.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Duration;

/// Set in the child: be the hung test.
const HANG: &str = "LIQUID_TESTKIT_WATCHDOG_HANG";

#[test]
fn a_hung_test_is_aborted_with_every_threads_stack() {
    if std::env::var_os(HANG).is_some() {
        liquid_testkit::watchdog::arm();
        std::thread::sleep(Duration::from_secs(120));
        panic!("the watchdog did not stop this test within 120 s");
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_hung_test_is_aborted_with_every_threads_stack",
            "--nocapture",
        ])
        .env(HANG, "1")
        .env("NEXTEST_EXECUTION_MODE", "process-per-test")
        .env(liquid_testkit::watchdog::LIMIT_ENV, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(6),
        "the hung test ends by SIGABRT: {:?}\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains(
            "test a_hung_test_is_aborted_with_every_threads_stack still running after 1 s"
        ),
        "{stderr}"
    );
    let gdb = Command::new("gdb").arg("--version").output().is_ok();
    if stderr.contains("ptrace: Operation not permitted") {
        // Yama refuses the attach here; the watchdog says how to allow it.
        assert!(stderr.contains("kernel.yama.ptrace_scope"), "{stderr}");
    } else if gdb {
        // The stacks show where the test was waiting: its own function, with file and line.
        assert!(
            stderr.contains(
                "a_hung_test_is_aborted_with_every_threads_stack () at crates/liquid-testkit/tests/watchdog.rs:"
            ),
            "{stderr}"
        );
    } else {
        assert!(stderr.contains("cannot run gdb"), "{stderr}");
    }
}
