//! `Pool::stats` under every start method: tasks per worker, busy and waiting time (a task
//! still running included), and restarts by reason (death, task timeout,
//! `max_tasks_per_child`, cancel), with failures by kind.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool, PoolStats, StartMethod};

use crate::common::PATIENCE;

fn builder(m: StartMethod, n: usize) -> mproc::PoolBuilder {
    Pool::builder().processes(n).start_method(m)
}

fn pid_of(_: u64) -> u32 {
    std::process::id()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn exit_now(code: i32) {
    std::process::exit(code);
}

fn boom(n: u64) -> u64 {
    if n % 10 == 3 {
        panic!("{n} ends in three");
    }
    n
}

/// Waits (bounded) until `cond` holds of the pool's statistics; returns them.
fn stats_until(pool: &Pool, what: &str, cond: impl Fn(&PoolStats) -> bool) -> PoolStats {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let s = pool.stats();
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{s}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tasks_per_worker_add_up(m: StartMethod) {
    let pool = builder(m, 2).build().unwrap();
    let pids: HashSet<u32> = pool
        .chunksize(10)
        .map(pid_of, 0..100)
        .unwrap()
        .into_iter()
        .collect();
    let s = pool.stats();
    assert_eq!(s.tasks(), 100, "{s}");
    assert_eq!(s.workers.len(), 2);
    assert_eq!(s.workers.iter().map(|w| w.slot).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(s.workers.iter().map(|w| w.chunks).sum::<u64>(), 10);
    let known: HashSet<u32> = s.workers.iter().filter_map(|w| w.pid).collect();
    assert!(pids.is_subset(&known), "{pids:?} ran, stats know {known:?}");
    assert!(
        s.workers.iter().all(|w| w.name.contains("PoolWorker-")),
        "{s}"
    );
    assert_eq!(s.restarts.total(), 0);
    assert!(s.errors.is_empty(), "{s}");
    let table = s.to_string();
    assert!(table.starts_with("slot"), "{table}");
    assert!(table.contains("tasks: 100"), "{table}");
    // A panic is counted by the time its task's answer is seen.
    for round in 1..=20 {
        assert!(pool.chunksize(1).map(boom, 0..10).is_err());
        assert_eq!(pool.stats().errors.get("Panicked"), Some(&round));
    }
}

fn busy_and_waiting_time(m: StartMethod) {
    let pool = builder(m, 1).build().unwrap();
    pool.apply(nap, (0,)).unwrap(); // ready
    let r = pool.apply_async(nap, (800,)).unwrap();
    // A task still running counts already.
    let s = stats_until(&pool, "busy while running", |s| {
        s.workers[0].busy >= Duration::from_millis(300)
    });
    assert!(!r.ready(), "{s}");
    r.get().unwrap();
    let busy = pool.stats().workers[0].busy;
    assert!(busy >= Duration::from_millis(750), "{busy:?}");
    // Idle now: waiting grows, busy does not.
    std::thread::sleep(Duration::from_millis(300));
    let w = &pool.stats().workers[0];
    assert!(w.busy < busy + Duration::from_millis(50), "{w:?}");
    assert!(w.waiting >= Duration::from_millis(250), "{w:?}");
    assert!(w.busy + w.idle <= w.age + Duration::from_millis(1), "{w:?}");
    assert!(
        w.startup + w.waiting <= w.idle + Duration::from_millis(1),
        "{w:?}"
    );
}

/// Quick calls count their busy time, and no idleness: back to back (the worker lingers
/// between them, and a run starts at the clock it read while lingering, just before it saw the
/// task) and spaced out (it sleeps between them), the worker's busy time grows by more than
/// nothing and by no more than the time the calls took, and spaced out by much less.
fn quick_calls_count_no_idleness(m: StartMethod) {
    let pool = builder(m, 1).build().unwrap();
    pool.apply(nap, (0,)).unwrap(); // ready
    // The worker's busy time over `calls` calls, the time they took, and how much of it this
    // thread slept between them.
    let busy_over = |gap: Duration, calls: usize| {
        let t = Instant::now();
        let before = pool.stats().workers[0].busy;
        let mut slept = Duration::ZERO;
        for _ in 0..calls {
            pool.apply(nap, (0,)).unwrap();
            if !gap.is_zero() {
                let s = Instant::now();
                std::thread::sleep(gap);
                slept += s.elapsed();
            }
        }
        let busy = pool.stats().workers[0].busy - before;
        (busy, t.elapsed(), slept)
    };
    let (busy, took, _) = busy_over(Duration::ZERO, 2000);
    assert!(
        busy > Duration::ZERO && busy <= took,
        "{busy:?} of {took:?}"
    );
    // Past the worker's linger (50 µs) between calls: it sleeps, and its idleness must not
    // count: most of the time this thread slept is not the worker's busy time. (Not a share
    // of the whole: on a loaded machine a run a worker is kept from its CPU in counts that
    // wait, and spaced calls read 30% busy with both CPUs kept busy.)
    let (busy, took, slept) = busy_over(Duration::from_micros(300), 200);
    assert!(
        busy > Duration::ZERO && busy + slept / 2 <= took,
        "{busy:?} of {took:?}, {slept:?} of it asleep"
    );
}

fn restarts_and_failures_by_reason(m: StartMethod) {
    let pool = builder(m, 1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    // A death.
    let e = pool.apply(exit_now, (3,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
    // A task past its timeout.
    let e = pool.apply(nap, (60_000,)).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::TaskTimedOut);
    // A cancel of a running task.
    let r = pool.apply_async(nap, (250,)).unwrap();
    stats_until(&pool, "running the task to cancel", |s| {
        s.workers
            .iter()
            .any(|w| w.busy > Duration::ZERO && w.tasks == 0)
    });
    assert!(r.cancel());
    // Panics in items, counted per item.
    let each: Vec<_> = pool.chunksize(5).imap(boom, 0..30).unwrap().collect();
    assert_eq!(each.iter().filter(|r| r.is_err()).count(), 3);
    let s = stats_until(&pool, "the cancel's restart", |s| s.restarts.cancelled == 1);
    assert_eq!(s.restarts.died, 1, "{s}");
    assert_eq!(s.restarts.timed_out, 1, "{s}");
    assert_eq!(s.restarts.total(), 3, "{s}");
    assert_eq!(s.workers.len(), 1);
    assert_eq!(s.workers[0].slot, 0, "the replacement takes the slot");
    assert_eq!(s.workers[0].restarts, s.restarts);
    assert_eq!(s.errors.get("WorkerLost"), Some(&1), "{s}");
    assert_eq!(s.errors.get("TaskTimedOut"), Some(&1), "{s}");
    assert_eq!(s.errors.get("Cancelled"), Some(&1), "{s}");
    assert_eq!(s.errors.get("Panicked"), Some(&3), "{s}");
    assert!(s.to_string().contains("1 died, 1 timed out"), "{s}");
    assert_eq!(
        s.tasks(),
        30,
        "the items of the imap (the others never finished)"
    );
}

fn retirements_after_max_tasks_per_child(m: StartMethod) {
    let pool = builder(m, 1).max_tasks_per_child(2).build().unwrap();
    let pids: HashSet<u32> = pool
        .chunksize(1)
        .map(pid_of, 0..6)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(pids.len(), 3);
    let s = stats_until(&pool, "three retirements", |s| s.restarts.retired == 3);
    assert_eq!(s.restarts.total(), 3, "{s}");
    assert_eq!(s.tasks_of_ended, 6, "{s}");
    assert_eq!(s.tasks(), 6, "{s}");
    assert!(s.errors.is_empty(), "{s}");
}

/// An argument whose decoding panics in the worker (a user's `Deserialize`).
#[derive(serde::Serialize)]
struct Decoy(u8);

impl<'de> serde::Deserialize<'de> for Decoy {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Decoy, D::Error> {
        panic!("no Decoy decodes")
    }
}

fn take_decoy(d: Decoy) -> u8 {
    d.0
}

/// A panic while a task's arguments are decoded fails its task once, and is counted once.
fn a_decoding_panic_counts_once(m: StartMethod) {
    let pool = builder(m, 1).build().unwrap();
    let e = pool.apply(take_decoy, (Decoy(1),)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Panicked(_)), "{e}");
    let s = pool.stats();
    assert_eq!(s.errors.get("Panicked"), Some(&1), "{s}");
    assert_eq!(s.restarts.total(), 0, "{s}");
}

per_start_method!(
    a_decoding_panic_counts_once,
    tasks_per_worker_add_up,
    busy_and_waiting_time,
    quick_calls_count_no_idleness,
    restarts_and_failures_by_reason,
    retirements_after_max_tasks_per_child,
);
