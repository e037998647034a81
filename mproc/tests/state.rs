//! Worker state (`PoolBuilder::worker_state` and `with_state`) under every start method: each
//! worker builds it once and keeps it across its tasks, with `apply`, `apply_async`, `map`
//! and `imap`; a replaced worker builds its own; misuse fails clearly.

use std::collections::BTreeMap;

use mproc::{ErrorKind, Pool, StartMethod, with_state};

use crate::common::PATIENCE;

/// A worker's state: the pid that built it, and a count its tasks add to.
struct Tally {
    built_by: u32,
    count: u64,
}

fn open_tally(start: u64) -> Tally {
    Tally {
        built_by: std::process::id(),
        count: start,
    }
}

/// Adds `by`; says which worker ran it, whose state it was and what the count is now.
fn add(t: &mut Tally, by: u64) -> (u32, u32, u64) {
    t.count += by;
    (std::process::id(), t.built_by, t.count)
}

fn add_two(t: &mut Tally, a: u64, b: u64) -> u64 {
    t.count += a + b;
    t.count
}

fn boom_in(t: &mut Tally, _: u64) -> u64 {
    t.count += 1000;
    panic!("the task fails after changing its state")
}

fn pool(m: StartMethod, n: usize) -> mproc::PoolBuilder {
    Pool::builder()
        .processes(n)
        .start_method(m)
        .worker_state(open_tally, (100,))
}

/// Checks that each worker's counts go up by one from 101 with no gap and no repeat: its
/// state was built once and kept across all its tasks.
fn per_worker(runs: &[(u32, u32, u64)]) -> BTreeMap<u32, Vec<u64>> {
    let mut by_pid: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for &(pid, built_by, count) in runs {
        assert_eq!(pid, built_by, "a worker's state is its own");
        by_pid.entry(pid).or_default().push(count);
    }
    for counts in by_pid.values_mut() {
        counts.sort_unstable();
        let want: Vec<u64> = (101..101 + counts.len() as u64).collect();
        assert_eq!(
            *counts, want,
            "built once per worker, kept across its tasks"
        );
    }
    by_pid
}

fn built_once_per_worker_and_kept(m: StartMethod) {
    let pool = pool(m, 2).build().unwrap();
    let mut runs = pool.chunksize(1).map(with_state(add), vec![1; 40]).unwrap();
    runs.extend(
        pool.imap(with_state(add), vec![1; 10])
            .unwrap()
            .map(Result::unwrap),
    );
    let r = pool.apply_async(with_state(add), (1,)).unwrap();
    runs.push(r.get_timeout(PATIENCE).unwrap());
    runs.push(pool.apply(with_state(add), (1,)).unwrap());
    let by_pid = per_worker(&runs);
    assert!(by_pid.len() <= 2, "{by_pid:?}");
    assert_eq!(by_pid.values().map(Vec::len).sum::<usize>(), 52);
    // More arguments, through starmap.
    let sums = pool.starmap(with_state(add_two), [(1, 2), (3, 4)]).unwrap();
    assert!(sums.iter().all(|&s| s > 100), "{sums:?}");
}

fn a_replaced_worker_builds_its_own(m: StartMethod) {
    let pool = pool(m, 1).max_tasks_per_child(3).build().unwrap();
    let runs = pool.chunksize(1).map(with_state(add), vec![1; 9]).unwrap();
    let by_pid = per_worker(&runs);
    assert_eq!(by_pid.len(), 3, "three workers in turn: {by_pid:?}");
    assert!(by_pid.values().all(|c| *c == [101, 102, 103]), "{by_pid:?}");
    // A worker that died is replaced by one with a fresh state too.
    let pool = pool_after_a_death(m);
    let (_, _, count) = pool.apply(with_state(add), (1,)).unwrap();
    assert_eq!(count, 101);
}

fn exit_now(code: i32) {
    std::process::exit(code)
}

fn pool_after_a_death(m: StartMethod) -> Pool {
    let pool = pool(m, 1).build().unwrap();
    assert_eq!(pool.apply(with_state(add), (1,)).unwrap().2, 101);
    let e = pool.apply(exit_now, (3,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
    pool
}

/// A task that panics fails alone; the state it changed stays as it left it, for the next.
fn a_panicking_task_leaves_the_state_in_place(m: StartMethod) {
    let pool = pool(m, 1).build().unwrap();
    let e = pool.apply(with_state(boom_in), (0,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Panicked(_)), "{e}");
    assert_eq!(pool.apply(with_state(add), (1,)).unwrap().2, 1101);
}

fn wants_a_string(s: &mut Option<String>, _: u8) -> usize {
    s.as_ref().map_or(0, String::len)
}

fn misuse_fails_clearly(m: StartMethod) {
    // No state at all.
    let plain = Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    let e = plain.apply(with_state(add), (1,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Panicked(_)), "{e}");
    assert!(e.to_string().contains("worker_state"), "{e}");
    // A state of another type.
    let pool = pool(m, 1).build().unwrap();
    let e = pool.apply(with_state(wants_a_string), (1,)).unwrap_err();
    assert!(e.to_string().contains("Tally"), "{e}");
    assert_eq!(
        pool.apply(with_state(add), (1,)).unwrap().2,
        101,
        "still there"
    );
    // A state and an initializer.
    let e = pool_with_both(m).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
}

fn nothing() {}

fn pool_with_both(m: StartMethod) -> Result<Pool, mproc::Error> {
    pool(m, 1).initializer(nothing, ()).build()
}

fn fails_to_build() -> Tally {
    panic!("no model file")
}

fn a_state_that_cannot_be_built_breaks_the_pool(m: StartMethod) {
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .worker_state(fails_to_build, ())
        .build();
    let e = match pool {
        Err(e) => e,
        Ok(pool) => pool.apply(with_state(add), (1,)).unwrap_err(),
    };
    assert!(matches!(e.kind(), ErrorKind::InitializerFailed(_)), "{e}");
    assert!(e.to_string().contains("no model file"), "{e}");
}

per_start_method!(
    built_once_per_worker_and_kept,
    a_replaced_worker_builds_its_own,
    a_panicking_task_leaves_the_state_in_place,
    misuse_fails_clearly,
    a_state_that_cannot_be_built_breaks_the_pool,
);
