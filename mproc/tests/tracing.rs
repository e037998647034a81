//! The `tracing` feature: what a process's life and a pool's tasks and workers tell a
//! subscriber, and the events children emit themselves, under every start method. The subscriber here records every event (a global
//! one: the dispatcher's thread emits too), so the test has its process to itself.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mproc::{ErrorKind, Pool, Process, StartMethod};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber, span};

use crate::common::{PATIENCE, alone};

/// One event: its target, level, and its fields as `name=value` text.
#[derive(Clone, Debug)]
struct Seen {
    target: String,
    level: Level,
    text: String,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(Seen {
            target: event.metadata().target().to_owned(),
            level: *event.metadata().level(),
            text: fields.0,
        });
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

fn recorder() -> &'static Recorder {
    static R: OnceLock<Recorder> = OnceLock::new();
    R.get_or_init(|| {
        let r = Recorder::default();
        tracing::subscriber::set_global_default(r.clone()).expect("the only subscriber");
        r
    })
}

/// The events seen since the last call.
fn take() -> Vec<Seen> {
    std::mem::take(&mut *recorder().0.lock().unwrap())
}

/// Takes events (bounded wait) until `enough` holds of all taken so far; returns them.
fn until_seen(what: &str, enough: impl Fn(&[Seen]) -> bool) -> Vec<Seen> {
    let deadline = std::time::Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    loop {
        seen.extend(take());
        if enough(&seen) {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {what}:\n{seen:#?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The one event of `level` on `target` whose text has every piece of `has`.
fn find<'a>(seen: &'a [Seen], level: Level, target: &str, has: &[&str]) -> &'a Seen {
    seen.iter()
        .find(|s| s.level == level && s.target == target && has.iter().all(|h| s.text.contains(h)))
        .unwrap_or_else(|| panic!("no {level} event on {target} with {has:?} among:\n{seen:#?}"))
}

fn double(n: u32) -> u32 {
    n * 2
}

fn boom(n: u32) -> u32 {
    panic!("boom {n}")
}

fn exit_now(code: i32) {
    std::process::exit(code)
}

fn chatty(n: u32) -> u32 {
    tracing::info!(target: "user_code", answer = n, "hello from {}", mproc::current_process().name());
    tracing::debug!(target: "user_code", "a detail");
    n
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn processes_tasks_and_workers_tell_the_subscriber() {
    if !alone() {
        return;
    }
    recorder();
    for m in StartMethod::ALL {
        take();
        // A process that returns, and one that panics.
        let mut p = Process::new(double, (21,))
            .start_method(m)
            .with_name("doubler");
        p.start().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), 42);
        let pid = format!("pid={}", p.pid().unwrap());
        let mut q = Process::new(boom, (7,)).start_method(m).with_name("boomer");
        q.start().unwrap();
        assert!(q.join_timeout(PATIENCE).is_err());
        let seen = take();
        let process = "mproc::process";
        find(
            &seen,
            Level::INFO,
            process,
            &["process started", "doubler", &pid],
        );
        find(
            &seen,
            Level::INFO,
            process,
            &["process returned", "doubler", &pid],
        );
        find(
            &seen,
            Level::WARN,
            process,
            &["process panicked", "boomer", "boom 7"],
        );

        // Events a child emits itself reach this subscriber, with its name and pid.
        let mut c = Process::new(chatty, (42,))
            .start_method(m)
            .with_name("chatter");
        c.start().unwrap();
        assert_eq!(c.join_timeout(PATIENCE).unwrap(), 42);
        let pid = format!("pid={}", c.pid().unwrap());
        let seen = until_seen("the child's events", |seen| {
            seen.iter().filter(|s| s.target == "mproc::child").count() >= 2
        });
        let child = "mproc::child";
        find(
            &seen,
            Level::INFO,
            child,
            &[
                "hello from chatter",
                "answer=42",
                "child=\"chatter\"",
                &pid,
                "from=\"user_code\"",
            ],
        );
        find(
            &seen,
            Level::DEBUG,
            child,
            &["a detail", "child=\"chatter\""],
        );

        // A pool: a task that finishes, one that panics, one that kills its worker, one past
        // its timeout, one cancelled while it runs. The timeout is the late call's own: a
        // panic's report takes a few hundred milliseconds to make under RUST_BACKTRACE=1 (the
        // test binary's symbols read), which a pool-wide one of 400 ms would cut short.
        let pool = Pool::builder()
            .processes(1)
            .start_method(m)
            .build()
            .unwrap();
        assert_eq!(pool.apply(double, (1,)).unwrap(), 2);
        assert!(pool.apply(boom, (3,)).is_err());
        let e = pool.apply(exit_now, (3,)).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
        assert_eq!(
            pool.timeout(Duration::from_millis(400))
                .apply(nap, (60_000,))
                .unwrap_err()
                .kind(),
            &ErrorKind::TaskTimedOut
        );
        let r = pool.apply_async(nap, (300,)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(r.cancel());
        assert_eq!(pool.apply(double, (2,)).unwrap(), 4, "still serving");
        assert_eq!(pool.apply(chatty, (5,)).unwrap(), 5);
        let from_worker = until_seen("a pool worker's event", |seen| {
            seen.iter()
                .any(|s| s.target == "mproc::child" && s.text.contains("answer=5"))
        });
        drop(pool);
        let mut seen = take();
        seen.extend(from_worker);
        find(
            &seen,
            Level::INFO,
            "mproc::child",
            &["hello from", "PoolWorker-", "answer=5"],
        );
        let pool = "mproc::pool";
        find(
            &seen,
            Level::INFO,
            pool,
            &["worker started", "PoolWorker-", "pid="],
        );
        find(&seen, Level::DEBUG, pool, &["tasks submitted", "items=1"]);
        find(&seen, Level::TRACE, pool, &["task handed to a worker"]);
        find(&seen, Level::DEBUG, pool, &["task finished", "pid="]);
        find(&seen, Level::WARN, pool, &["task panicked"]);
        find(&seen, Level::ERROR, pool, &["worker died"]);
        find(
            &seen,
            Level::ERROR,
            pool,
            &["task lost with its worker", "exited with code 3"],
        );
        find(&seen, Level::INFO, pool, &["replacement worker started"]);
        find(&seen, Level::WARN, pool, &["task past its task_timeout"]);
        find(&seen, Level::INFO, pool, &["running task cancelled"]);
    }
}

fn quiet() {}

/// Starts a child of its own: with a subscriber wanting events, that takes the record of the
/// log relay (in a `Fork` child, the one it inherited).
fn starts_one() -> bool {
    let mut p = Process::new(quiet, ()).start_method(StartMethod::Fork);
    p.start().unwrap();
    p.join_timeout(PATIENCE).is_ok()
}

/// Two threads start `Fork` children side by side while a subscriber wants events, and each
/// child starts one of its own: a fork that copied the log relay's record locked by the other
/// thread would leave a child that never gets its own child started. Returns how many ended.
fn relayed_while_forking(rounds: u32) -> u32 {
    recorder();
    crate::common::from_two_threads(rounds, || {
        let mut p = Process::new(starts_one, ()).start_method(StartMethod::Fork);
        p.start().unwrap();
        assert!(p.join_timeout(PATIENCE).unwrap());
    })
}

#[test]
fn a_fork_child_never_inherits_the_log_relay_locked() {
    let mut p = Process::new(relayed_while_forking, (200,)).start_method(StartMethod::Spawn);
    p.start().unwrap();
    let ended = crate::common::join_race(&mut p, Duration::from_secs(30));
    assert_eq!(ended, 400);
}

/// The pipes among this process's descriptors (their `/proc/self/fd` link targets).
fn pipes_here() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.starts_with("pipe:"))
        .collect()
}

/// In a child whose events go to its parent: writes a frame header announcing far more than
/// any event makes to every pipe it may write to that its parent had none of before the start
/// (its log pipe's; not a standard stream, nor a jobserver's the test runner lent), then up to
/// 256 MiB after it, 64 KiB at a time, until a write fails. Returns the pipes it found and
/// the bytes it got written.
fn floods_the_relay(parents: Vec<String>) -> (u32, u64) {
    use std::io::Write as _;
    let mut pipes = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let write_only = rustix::fs::fcntl_getfl(borrow(fd))
            .is_ok_and(|f| f.contains(rustix::fs::OFlags::WRONLY));
        if fd > 2 && target.starts_with("pipe:") && write_only && !parents.contains(&target) {
            pipes.push(fd);
        }
    }
    let mut written = 0u64;
    let chunk = vec![0x5a_u8; 64 * 1024];
    for &fd in &pipes {
        let mut pipe = std::fs::File::from(rustix::io::fcntl_dupfd_cloexec(borrow(fd), 3).unwrap());
        if pipe.write_all(&0xffff_fff0_u32.to_le_bytes()).is_err() {
            continue;
        }
        while written < 256 << 20 && pipe.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
    }
    (pipes.len() as u32, written)
}

/// A descriptor number of this process's, borrowed for one call.
fn borrow(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: `fd` was just listed open in /proc/self/fd, and nothing here closes it while
    // the borrow is used (one `fcntl` call).
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

#[test]
fn a_child_flooding_its_log_pipe_is_cut_off_and_others_still_relay() {
    if !alone() {
        return;
    }
    recorder();
    for m in StartMethod::ALL {
        let mut p = Process::new(floods_the_relay, (pipes_here(),)).start_method(m);
        p.start().unwrap();
        let (pipes, written) = p.join_timeout(PATIENCE).unwrap();
        // Its log pipe alone (a frame announcing ~4 GiB): the relay stops reading it at once,
        // instead of keeping every byte that comes after it.
        assert_eq!(pipes, 1, "{m:?}: the child's log pipe, and no other");
        assert!(
            written < 16 << 20,
            "{m:?}: the relay took {written} bytes of garbage"
        );
        // The relay still serves other children.
        take();
        let mut q = Process::new(chatty, (5,))
            .start_method(m)
            .with_name("after-the-flood");
        q.start().unwrap();
        assert_eq!(q.join_timeout(PATIENCE).unwrap(), 5);
        until_seen("the next child's event", |s| {
            s.iter().any(|e| {
                e.target == "mproc::child" && e.text.contains("hello from after-the-flood")
            })
        });
    }
}

/// A `Fork` grandchild's own thread emits an event: through the subscriber the grandchild
/// inherited, its parent's forwarder.
fn logs_from_a_thread() -> bool {
    std::thread::spawn(|| tracing::info!(target: "user_code", "from a grandchild's thread"))
        .join()
        .is_ok()
}

/// In a child whose events go to its parent: one thread emits events without pause while
/// this one starts `rounds` `Fork` children, each emitting an event from a thread of its own.
/// A fork that copied the forwarder's pipe locked by the other thread would leave a child
/// that never ends. Returns how many ended.
fn forwards_while_forking(rounds: u32) -> u32 {
    /// Stops the chatter however this thread leaves the scope (a hung fork child panics).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(target: "user_code", "chatter beside the forks");
            }
        });
        let _stop = Stop(&stop);
        let mut ended = 0;
        for _ in 0..rounds {
            let mut p = Process::new(logs_from_a_thread, ()).start_method(StartMethod::Fork);
            p.start().unwrap();
            if crate::common::join_race(&mut p, PATIENCE) {
                ended += 1;
            }
        }
        ended
    })
}

/// Under `Spawn` and `Forkserver`, whose children forward their events as their global
/// subscriber. (A `Fork` child's other threads emit through the copy of its parent's
/// subscriber it inherited, whose locks are the user's: here the test's recorder, which a
/// `Fork` grandchild may inherit held as it may any lock of the user's.)
#[test]
fn a_fork_child_never_inherits_the_log_forwarder_locked() {
    if !alone() {
        return;
    }
    recorder();
    for m in [StartMethod::Spawn, StartMethod::Forkserver] {
        let mut p = Process::new(forwards_while_forking, (100,)).start_method(m);
        p.start().unwrap();
        let ended = crate::common::join_race(&mut p, Duration::from_secs(60));
        assert_eq!(ended, 100, "{m:?}");
    }
}
