//! `as_completed` and `wait` over a pool's results, under every start method: finishing
//! order, what is done already, timeouts, the `Return` conditions, and results of two pools
//! mixed. Plain `as_completed` (no timeout) runs on a helper thread, bounded from here. And
//! a result's progress (items done of all), with and without the `progress` feature's bar.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use mproc::{AsyncResult, ErrorKind, Pool, Return, StartMethod};

use crate::common::PATIENCE;

fn pool(m: StartMethod, n: usize) -> Pool {
    let pool = Pool::builder()
        .processes(n)
        .start_method(m)
        .build()
        .unwrap();
    // Every worker up, so that each task starts as soon as it is submitted.
    let pids: std::collections::HashSet<u32> = pool
        .map(held_pid, vec![150; n * 2])
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(pids.len(), n, "every worker took a task");
    pool
}

fn held_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn nap_then_fail(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    panic!("failed after {ms} ms")
}

fn naps(pool: &Pool, ms: &[u64]) -> Vec<AsyncResult<u64>> {
    ms.iter()
        .map(|&ms| pool.apply_async(nap, (ms,)).unwrap())
        .collect()
}

/// Plain `as_completed` on a helper thread: the indexes in the order it yields them, and
/// each value, or a test failure after PATIENCE.
fn order_of(results: Vec<AsyncResult<u64>>) -> Vec<(usize, u64)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let seen: Vec<(usize, u64)> = mproc::as_completed(&results)
            .map(|(i, r)| (i, r.get().unwrap()))
            .collect();
        let _ = tx.send(seen);
    });
    rx.recv_timeout(PATIENCE).expect("as_completed ended")
}

fn as_completed_yields_in_finishing_order(m: StartMethod) {
    let pool = pool(m, 4);
    let results = naps(&pool, &[600, 10, 400, 200]);
    let it = mproc::as_completed(&results);
    assert_eq!(it.len(), 4);
    drop(it);
    assert_eq!(order_of(results), [(1, 10), (3, 200), (2, 400), (0, 600)]);
    // Finished before the call: in their own order, at once.
    let results = naps(&pool, &[30, 10, 20]);
    for r in &results {
        r.wait().unwrap();
    }
    let t = Instant::now();
    assert_eq!(order_of(results), [(0, 30), (1, 10), (2, 20)]);
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(order_of(Vec::new()).is_empty());
}

fn as_completed_timeout_ends_with_one_timeout(m: StartMethod) {
    let pool = pool(m, 2);
    let results = naps(&pool, &[60_000, 10]);
    let t = Instant::now();
    let mut each = mproc::as_completed_timeout(&results, Duration::from_millis(500));
    let (i, r) = each.next().unwrap().unwrap();
    assert_eq!((i, r.get().unwrap()), (1, 10));
    let e = each.next().unwrap().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout);
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < PATIENCE, "{took:?}");
    assert!(each.next().is_none());
    assert!(each.next().is_none(), "fused");
    assert!(!results[0].ready(), "still running");
    // All in time: no error at all.
    let results = naps(&pool, &[10, 20]);
    let all: Vec<usize> = mproc::as_completed_timeout(&results, PATIENCE)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(all, [0, 1]);
    pool.terminate();
}

fn wait_returns_as_each_condition_says(m: StartMethod) {
    let pool = pool(m, 3);
    let long = 60_000;

    let results = naps(&pool, &[long, 10]);
    let (done, pending) = mproc::wait(&results, Return::FirstCompleted, Some(PATIENCE));
    assert_eq!((done, pending), (vec![1], vec![0]));

    // On timeout: what is done by then.
    let t = Instant::now();
    let (done, pending) = mproc::wait(
        &results,
        Return::AllCompleted,
        Some(Duration::from_millis(300)),
    );
    assert_eq!((done, pending), (vec![1], vec![0]));
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(results[0].cancel());
    // A cancelled result is done, and not an exception.
    let (done, pending) = mproc::wait(&results, Return::AllCompleted, Some(PATIENCE));
    assert_eq!((done, pending), (vec![0, 1], vec![]));

    // FIRST_EXCEPTION: the first failure ends the wait; cancels do not count.
    let results = vec![
        pool.apply_async(nap, (long,)).unwrap(),
        pool.apply_async(nap_then_fail, (100,)).unwrap(),
        pool.apply_async(nap, (long,)).unwrap(),
    ];
    assert!(results[2].cancel());
    let (done, pending) = mproc::wait(&results, Return::FirstException, Some(PATIENCE));
    assert_eq!((done, pending), (vec![1, 2], vec![0]));
    assert!(matches!(
        results[1].get().unwrap_err().kind(),
        ErrorKind::Panicked(_)
    ));
    assert!(results[0].cancel());

    // With no failure, FIRST_EXCEPTION waits for all.
    let results = naps(&pool, &[50, 10, 100]);
    let (done, pending) = mproc::wait(&results, Return::FirstException, Some(PATIENCE));
    assert_eq!((done, pending), (vec![0, 1, 2], vec![]));

    // Nothing to wait for.
    let none: Vec<AsyncResult<u64>> = Vec::new();
    assert_eq!(
        mproc::wait(&none, Return::FirstCompleted, None),
        (vec![], vec![])
    );
}

fn results_of_two_pools_mix(m: StartMethod) {
    let (a, b) = (pool(m, 1), pool(m, 1));
    let results = vec![
        a.apply_async(nap, (300,)).unwrap(),
        b.apply_async(nap, (10,)).unwrap(),
    ];
    assert_eq!(order_of(results), [(1, 10), (0, 300)]);
    // A map's result is done once all its items are.
    let maps = vec![
        a.map_async(nap, vec![10, 300]).unwrap(),
        b.map_async(nap, vec![20]).unwrap(),
    ];
    let (done, pending) = mproc::wait(&maps, Return::FirstCompleted, Some(PATIENCE));
    assert_eq!((done, pending), (vec![1], vec![0]));
    let (done, pending) = mproc::wait(&maps, Return::AllCompleted, Some(PATIENCE));
    assert_eq!((done, pending), (vec![0, 1], vec![]));
    assert_eq!(maps[0].get().unwrap(), [10, 300]);
}

fn results_of_a_terminated_pool_land(m: StartMethod) {
    let pool = pool(m, 1);
    let results = naps(&pool, &[60_000, 60_000]);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let order: Vec<usize> = mproc::as_completed(&results).map(|(i, _)| i).collect();
        let kinds: Vec<ErrorKind> = results
            .iter()
            .map(|r| r.get().unwrap_err().kind().clone())
            .collect();
        let _ = tx.send((order.len(), kinds));
    });
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    pool.terminate();
    let (n, kinds) = rx.recv_timeout(PATIENCE).expect("the watcher woke");
    assert_eq!(n, 2);
    assert!(
        kinds.iter().all(|k| k == &ErrorKind::Terminated),
        "{kinds:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
}

fn gated(go: String, n: u64) -> u64 {
    // Each task waits for its file, so the test says when it may finish.
    let path = std::path::Path::new(&go).join(n.to_string());
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    n
}

fn a_map_counts_its_items_as_chunks_finish(m: StartMethod) {
    let pool = pool(m, 2);
    let dir = std::env::temp_dir().join(format!("mproc-progress-{}-{m}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let go = dir.to_string_lossy().into_owned();
    let open = |n: u64| std::fs::write(dir.join(n.to_string()), b"").unwrap();
    // Chunks of 5: items 0..5, 5..10, 10..15, 15..20; a chunk ends with its last item.
    let r = pool
        .chunksize(5)
        .starmap_async(gated, (0..20).map(|n| (go.clone(), n)))
        .unwrap();
    assert_eq!(r.progress(), mproc::Progress { done: 0, total: 20 });
    for n in 0..10 {
        open(n);
    }
    let until = Instant::now() + PATIENCE;
    while r.progress().done < 10 {
        assert!(Instant::now() < until, "{}", r.progress());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.progress().to_string(), "10/20", "two chunks of five");
    assert!(!r.progress().is_finished());
    for n in 10..20 {
        open(n);
    }
    r.wait().unwrap();
    assert!(r.progress().is_finished());
    // A cancelled map: what did not run counts as done too (it has its outcome).
    let r = pool
        .chunksize(5)
        .starmap_async(gated, (100..120).map(|n| (go.clone(), n)))
        .unwrap();
    assert!(r.cancel());
    assert_eq!(
        r.progress(),
        mproc::Progress {
            done: 20,
            total: 20
        }
    );
    let one = pool.apply_async(nap, (1,)).unwrap();
    one.wait().unwrap();
    assert_eq!(one.progress().to_string(), "1/1");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "progress")]
fn square(n: u64) -> u64 {
    n * n
}

#[cfg(feature = "progress")]
mod bar {
    use super::*;

    /// With the `progress` feature, every form of the map family works the same with a bar
    /// (drawn only on a terminal: here stderr is not one, so this checks the values and that
    /// nothing waits on a bar).
    fn the_map_family_with_a_bar(m: StartMethod) {
        let pool = pool(m, 2);
        let squares: Vec<u64> = (0..200).map(|n| n * n).collect();
        let bar = pool.progress();
        assert_eq!(bar.map(square, 0..200).unwrap(), squares);
        assert_eq!(
            bar.map_async(square, 0..200).unwrap().get().unwrap(),
            squares
        );
        assert_eq!(
            bar.starmap(nap, (0..4).map(|_| (1,))).unwrap(),
            [1, 1, 1, 1]
        );
        let each: Vec<u64> = bar
            .imap(square, 0..200)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(each, squares);
        let mut any: Vec<u64> = pool
            .chunksize(7)
            .progress()
            .imap_unordered(square, 0..200)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        any.sort_unstable();
        assert_eq!(any, squares);
        // An endless input: a spinner, and only what is taken is computed.
        let first: Vec<u64> = bar
            .imap(square, 0..)
            .unwrap()
            .take(3)
            .map(Result::unwrap)
            .collect();
        assert_eq!(first, [0, 1, 4]);
    }

    per_start_method!(the_map_family_with_a_bar);

    /// The bar in a real terminal: `examples/progress.rs` (built with the tests) in a tmux
    /// session, its screen read with `capture-pane`: the bar ends full, with its count and
    /// rate. README's test command installs tmux when it is missing.
    #[test]
    fn a_bar_is_drawn_in_a_real_terminal() {
        use std::process::Command;
        let exe = std::env::current_exe().unwrap();
        let example = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples/progress");
        assert!(
            example.exists(),
            "{} is missing: a run of the whole suite builds the examples (scripts/test.sh); \
             alone, `cargo build -p mproc --example progress --features progress` first",
            example.display()
        );
        let session = format!("mproc-bar-{}", std::process::id());
        let tmux = |args: &[&str]| {
            Command::new("tmux")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("tmux (apt-get install tmux): {e}"))
        };
        let run = format!("{}; sleep 60", example.display());
        let started = tmux(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "120",
            "-y",
            "30",
            &run,
        ]);
        assert!(started.status.success(), "{started:?}");
        let deadline = Instant::now() + PATIENCE;
        let screen = loop {
            let shot = tmux(&["capture-pane", "-p", "-t", &session]);
            let screen = String::from_utf8_lossy(&shot.stdout).into_owned();
            if screen.contains("sum of squares") || Instant::now() > deadline {
                break screen;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        tmux(&["kill-session", "-t", &session]);
        let bar = screen
            .lines()
            .find(|l| l.contains("400/400"))
            .unwrap_or_else(|| panic!("no full bar on the screen:\n{screen}"));
        assert!(bar.contains("####") && bar.contains("/s]"), "{bar}");
    }
}

per_start_method!(
    a_map_counts_its_items_as_chunks_finish,
    results_of_a_terminated_pool_land,
    as_completed_yields_in_finishing_order,
    as_completed_timeout_ends_with_one_timeout,
    wait_returns_as_each_condition_says,
    results_of_two_pools_mix,
);

/// Repeated waits on a task that runs on do not pile up: each returns on time, and the
/// task's value is there at the end.
#[test]
fn many_short_waits_on_one_long_task() {
    let pool = pool(StartMethod::Forkserver, 1);
    let results = naps(&pool, &[400]);
    let t = Instant::now();
    let mut rounds = 0;
    loop {
        let (done, _) = mproc::wait(
            &results,
            Return::AllCompleted,
            Some(Duration::from_millis(1)),
        );
        rounds += 1;
        if !done.is_empty() {
            break;
        }
        assert!(t.elapsed() < PATIENCE);
    }
    assert!(rounds > 10, "{rounds}");
    assert_eq!(results[0].get().unwrap(), 400);
}
