//! Memory caps on pool workers, under every start method: `max_memory_per_child` replaces a
//! worker that leaks after the task that took it past the cap (the task's result kept), and
//! `memory_limit_per_child` kills one that grows past the limit while its task runs (the task
//! fails with `MemoryExceeded`, not a generic `WorkerLost`).

use std::sync::Mutex;
use std::time::Duration;

use mproc::{ErrorKind, Pool, StartMethod};

const MIB: u64 = 1 << 20;

/// This process's own resident memory, in bytes (as the pool measures it: `RssAnon`).
fn resident(_: u8) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    kib("RssAnon:") * 1024
}

/// What a fresh worker of method `m` uses, measured in a pool of its own.
fn fresh_worker(m: StartMethod) -> u64 {
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    pool.apply(resident, (0,)).unwrap()
}

/// Keeps `mib` more MiB, written (so resident), for the life of the worker; returns its pid
/// and how many MiB it keeps now.
fn leak(mib: u64) -> (u32, u64) {
    static KEPT: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap();
    kept.push(vec![1u8; (mib * MIB) as usize]);
    (std::process::id(), kept.len() as u64 * mib)
}

fn a_leaking_worker_is_replaced_after_its_task(m: StartMethod) {
    let cap = fresh_worker(m) + 64 * MIB;
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .max_memory_per_child(cap)
        .build()
        .unwrap();
    // Three calls: a fourth would take the replacement past the cap too, and its retirement
    // may be counted before the statistics below are read (seen under load).
    let runs: Vec<(u32, u64)> = (0..3).map(|_| pool.apply(leak, (40,)).unwrap()).collect();
    // 40 MiB kept: under the cap; 80: over, so its worker leaves after that task.
    assert_eq!(runs[0].0, runs[1].0, "{runs:?}");
    assert_eq!((runs[0].1, runs[1].1), (40, 80), "{runs:?}");
    assert_ne!(
        runs[2].0, runs[1].0,
        "replaced after the task past the cap: {runs:?}"
    );
    assert_eq!(runs[2].1, 40, "a fresh worker: {runs:?}");
    // The retirement is counted once the old worker has gone, which its replacement does not
    // wait for (seen under load: the third call answered, the count still 0).
    crate::common::wait_until("the retirement is counted", || {
        pool.stats().restarts.over_memory > 0
    });
    let s = pool.stats();
    assert_eq!(s.restarts.over_memory, 1, "{s}");
    assert_eq!(s.restarts.retired, 0, "{s}");
    assert!(s.errors.is_empty(), "every result kept: {s}");
}

fn pid(_: u8) -> u32 {
    std::process::id()
}

/// Quick tasks, waited for one at a time: the waiting thread, not the dispatcher, often reads
/// the answer (`Shared::help`), and the cap is checked on that path too.
fn a_worker_past_the_cap_is_replaced_whoever_reads_its_answer(m: StartMethod) {
    // 32 KiB: less than any worker uses (a fresh one, about 150 KiB of its own).
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .max_memory_per_child(32 << 10)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..12).map(|_| pool.apply(pid, (0,)).unwrap()).collect();
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), pids.len(), "one worker per task: {pids:?}");
    crate::common::wait_until("every worker retired over memory", || {
        pool.stats().restarts.over_memory == 12
    });
    let s = pool.stats();
    assert_eq!(s.restarts.retired + s.restarts.died, 0, "{s}");
}

/// Reads every byte of `table` (so all its pages are mapped in this worker); returns the pid
/// and the sum.
fn read_table(table: mproc::Buffer<u8>) -> (u32, u64) {
    (
        std::process::id(),
        table.iter().map(|&b| u64::from(b)).sum(),
    )
}

/// `mib` MiB of ones, an answer large enough to travel in a memory file.
fn ones(mib: usize) -> Vec<u8> {
    vec![1; mib << 20]
}

/// The caps count what a worker holds itself, not the shared memory it maps: a 64 MiB
/// `Buffer` every task reads, and large answers its caller keeps unread (their memory files
/// stay mapped in the worker), retire no worker under a cap 48 MiB above a fresh one.
fn shared_memory_a_worker_maps_is_not_counted(m: StartMethod) {
    let cap = fresh_worker(m) + 48 * MIB;
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .max_memory_per_child(cap)
        .memory_limit_per_child(cap)
        .build()
        .unwrap();
    let table = mproc::Buffer::from_slice(&vec![1u8; 64 << 20]).unwrap();
    let kept: Vec<_> = (0..4)
        .map(|_| pool.apply_async(ones, (4,)).unwrap())
        .collect();
    let mut pids = Vec::new();
    for _ in 0..3 {
        let (pid, sum) = pool.apply(read_table, (table.clone(),)).unwrap();
        assert_eq!(sum, 64 << 20);
        pids.push(pid);
    }
    for r in &kept {
        assert_eq!(r.get().unwrap().len(), 4 << 20);
    }
    pids.push(pool.apply(read_table, (table.clone(),)).unwrap().0);
    assert!(
        pids.iter().all(|&p| p == pids[0]),
        "one worker throughout: {pids:?}"
    );
    let s = pool.stats();
    assert_eq!(s.restarts.over_memory, 0, "{s}");
}

/// Allocates 1 MiB a millisecond, written, up to `mib`.
fn hog(mib: usize) -> usize {
    let mut kept = Vec::new();
    for _ in 0..mib {
        kept.push(vec![1u8; MIB as usize]);
        std::thread::sleep(Duration::from_millis(1));
    }
    kept.len()
}

fn a_task_past_the_hard_limit_fails_with_its_own_error(m: StartMethod) {
    let limit = fresh_worker(m) + 100 * MIB;
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .memory_limit_per_child(limit)
        .build()
        .unwrap();
    assert_eq!(pool.apply(hog, (20,)).unwrap(), 20, "under the limit: runs");
    let e = pool.apply(hog, (4096,)).unwrap_err();
    let ErrorKind::MemoryExceeded { limit: l, resident } = *e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(l, limit);
    assert!(resident > limit && resident < limit + 1024 * MIB, "{e}");
    assert!(e.to_string().contains("memory_limit_per_child"), "{e}");
    assert_eq!(pool.apply(hog, (1,)).unwrap(), 1, "a new worker serves");
    let s = pool.stats();
    assert_eq!(s.restarts.over_memory, 1, "{s}");
    assert_eq!(s.errors.get("MemoryExceeded"), Some(&1), "{s}");
}

fn limits_of_zero_are_refused(m: StartMethod) {
    for b in [
        Pool::builder().start_method(m).max_memory_per_child(0),
        Pool::builder().start_method(m).memory_limit_per_child(0),
    ] {
        let e = b.build().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
    }
}

per_start_method!(
    a_leaking_worker_is_replaced_after_its_task,
    a_task_past_the_hard_limit_fails_with_its_own_error,
    a_worker_past_the_cap_is_replaced_whoever_reads_its_answer,
    shared_memory_a_worker_maps_is_not_counted,
    limits_of_zero_are_refused,
);
