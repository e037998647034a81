//! The worker bootstrap, proven inside this test harness itself.

use std::process::Command;

use mproc::{Process, StartMethod, current_process};

use crate::common::PATIENCE;

#[test]
fn a_malformed_worker_marker_exits_with_a_message_instead_of_running_main() {
    for bad in ["garbage", "mproc1:worker:x:4", "mproc1:worker:900:901"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .arg("--list")
            .env("MPROC_WORKER", bad)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(121), "{bad}: {stderr}");
        assert!(
            stderr.contains("MPROC_WORKER") && stderr.contains("malformed"),
            "{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "main ran: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

const HARNESS_DRIVER: &str = "MPROC_TEST_HARNESS_DRIVER";

fn announce() {
    println!("TARGET RAN in {}", current_process().name());
}

#[test]
fn workers_start_before_main_and_never_run_the_harness() {
    if std::env::var_os(HARNESS_DRIVER).is_some() {
        for m in StartMethod::ALL {
            let mut p = Process::new(announce, ()).start_method(m);
            p.start().unwrap();
            p.join_timeout(PATIENCE).unwrap();
        }
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "bootstrap::workers_start_before_main_and_never_run_the_harness",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HARNESS_DRIVER, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness's main ran once (in the driver), the target three times (once per method).
    assert_eq!(stdout.matches("running 1 test").count(), 1, "{stdout}");
    assert_eq!(
        stdout.matches("TARGET RAN in Process-").count(),
        3,
        "{stdout}"
    );
}
