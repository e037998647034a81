//! Shared helpers: the per-start-method macro, bounded waits, and process inspection.

use std::path::Path;
use std::process::{Command, Stdio};
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

/// Runs `round(0)`, `round(1)`, ... on a thread of its own (the traffic), while children of
/// start method `m` are started one after another, each running `count` (how many of
/// something it holds) and joined: at least `children` of them, and until `rounds` rounds
/// have run meanwhile, within [`PATIENCE`]. Then stops the traffic (dropping `round` on its
/// thread) and returns each child's number and count where the count was not 0, and how many
/// rounds ran.
pub(crate) fn children_beside<F>(
    m: mproc::StartMethod,
    count: F,
    children: usize,
    rounds: u64,
    mut round: impl FnMut(u64) + Send + 'static,
) -> (Vec<(usize, usize)>, u64)
where
    F: mproc::Target<(), Output = usize> + Copy,
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let traffic = {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                round(n);
                n += 1;
                done.store(n, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + PATIENCE;
    let mut held = Vec::new();
    for i in 0.. {
        let ran = done.load(Ordering::Relaxed);
        if i >= children && ran >= rounds {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ran} rounds beside {i} children"
        );
        let n = start(m, count, ()).join_timeout(PATIENCE).unwrap();
        if n != 0 {
            held.push((i, n));
        }
    }
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
    (held, done.load(Ordering::Relaxed))
}

/// Set in a run of this binary made by [`alone`]: the one test it runs is alone in it.
const ALONE: &str = "MPROC_TEST_ALONE";

/// For a test that needs its process to itself (it counts the process's descriptors, or
/// changes process-wide settings): `true` when it already has it, so the caller runs its
/// body; otherwise runs the calling test alone in a fresh run of this test binary, waits
/// for it (bounded), panics if it failed, and returns `false`.
///
/// nextest runs every test in a process of its own; plain `cargo test` runs them as
/// threads of one process, where another test's descriptors come and go meanwhile.
pub(crate) fn alone() -> bool {
    if std::env::var_os(ALONE).is_some()
        || std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test")
    {
        return true;
    }
    // libtest names each test's thread after the test.
    let name = std::thread::current()
        .name()
        .expect("alone() is called from a test's own thread")
        .to_owned();
    let mut run = Command::new(std::env::current_exe().expect("this test binary"))
        .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run this test binary again");
    let stdout = run.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let deadline = Instant::now() + PATIENCE * 6;
    let status = loop {
        if let Some(status) = run.try_wait().expect("wait for the test's own run") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = run.kill();
            let _ = run.wait();
            panic!("{name}, run alone, took longer than {:?}", PATIENCE * 6);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Its children die with it (they watch its liveness pipe), and with them the last writers
    // of its output.
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{name}, run alone: its children outlived it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = reader.join().expect("the reader thread");
    assert!(
        status.success(),
        "{name}, run alone, failed ({status}):\n{out}"
    );
    assert!(
        out.contains("1 passed"),
        "{name}, run alone, did not run exactly that test:\n{out}"
    );
    false
}

/// Waits (bounded) for a program this test started to end; kills it and fails past `within`.
pub(crate) fn wait_for(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let until = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("the driver did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

/// What this process holds open: the kinds of its descriptors other than sockets (what
/// `/proc/self/fd` names them, sorted), and how many sockets (a fork server's client keeps
/// the sockets of the spares it makes ahead, new ones as spares are used).
pub(crate) fn held() -> (Vec<String>, usize) {
    let mut kinds: Vec<String> = open_fds()
        .into_iter()
        .map(|(_, target)| target.split(":[").next().unwrap_or("").to_owned())
        .collect();
    kinds.sort();
    let sockets = kinds.iter().filter(|k| k.as_str() == "socket").count();
    kinds.retain(|k| k != "socket");
    (kinds, sockets)
}

/// A pool of `n` workers started with `m` (panics if it cannot be built).
pub(crate) fn pool(m: mproc::StartMethod, n: usize) -> mproc::Pool {
    mproc::Pool::builder()
        .processes(n)
        .start_method(m)
        .build()
        .unwrap()
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

/// Runs `once` from two threads side by side, `rounds` times each (a fork race: each start
/// takes locks that the other thread's `Fork` child must not inherit held). Returns `2 × rounds`.
pub(crate) fn from_two_threads(rounds: u32, once: impl Fn() + Sync) -> u32 {
    std::thread::scope(|s| {
        s.spawn(|| (0..rounds).for_each(|_| once()));
        (0..rounds).for_each(|_| once());
    });
    2 * rounds
}

/// Joins `p` (a race run in a process of its own, so a deadlock is a process to kill, not a
/// hung test) within `within`; kills it and fails the test if it hangs or fails.
pub(crate) fn join_race<R>(p: &mut mproc::Process<R>, within: Duration) -> R
where
    R: serde::de::DeserializeOwned,
{
    match p.join_timeout(within) {
        Ok(r) => r,
        Err(e) => {
            let _ = p.kill();
            let _ = p.join_timeout(PATIENCE);
            panic!("a fork child hung (or the race failed): {e}");
        }
    }
}
