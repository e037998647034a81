//! Shared helpers: the per-start-method macro, bounded waits, and process inspection.

use std::path::Path;
use std::time::{Duration, Instant};

/// The longest any single wait in a test may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// Generates, for each scenario `fn name(method: StartMethod)`, one `#[test]` per start method:
/// `fork::name`, `spawn::name` and `forkserver::name`.
macro_rules! per_start_method {
    ($($scenario:ident),* $(,)?) => {
        mod fork {
            $( #[test] fn $scenario() { super::$scenario(mproc::StartMethod::Fork) } )*
        }
        mod spawn {
            $( #[test] fn $scenario() { super::$scenario(mproc::StartMethod::Spawn) } )*
        }
        mod forkserver {
            $( #[test] fn $scenario() { super::$scenario(mproc::StartMethod::Forkserver) } )*
        }
    };
}

/// Starts `f(args)` in a new process under start method `m` (panics if it cannot start).
pub(crate) fn start<R, F, A>(m: mproc::StartMethod, f: F, args: A) -> mproc::Process<R>
where
    F: mproc::Target<A, Output = R>,
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
    R: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let mut p = mproc::Process::new(f, args).start_method(m);
    p.start().unwrap();
    p
}

/// Polls `cond` every few milliseconds until it holds; panics after [`PATIENCE`].
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` is gone or a zombie (ended, whoever reaps it).
pub(crate) fn has_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            state.starts_with('Z') || state.starts_with('X')
        }
    }
}

/// Whether `pid` exists at all (running, sleeping or zombie).
pub(crate) fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// This process's open descriptors with what each refers to, from `/proc/self/fd`.
pub(crate) fn open_fds() -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let listing = format!("/proc/{}/fd", std::process::id());
    for entry in std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd") {
        let entry = entry.expect("fd entry");
        let Ok(n) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // The directory being read shows up too; leave it out.
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if target != listing {
                out.push((n, target));
            }
        }
    }
    out.sort();
    out
}

/// Sleeps for `ms` milliseconds: a target for processes that must stay alive a while.
pub(crate) fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// `len` bytes that vary with their offset and with `seed`: a payload whose every byte is
/// checked when it comes back.
pub(crate) fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes()[7] ^ seed)
        .collect()
}
