//! `Pool::apply` whose caller hands an idle worker the task and reads the answer from its lane
//! itself, holding the dispatcher's state meanwhile (`Shared::submit_waited`): the order of a
//! thread's own calls, the answers of other workers while such a caller holds the state, the
//! pool's books (`max_tasks_per_child`, statistics) against what each worker process itself
//! counted, and large answers that come on the socket. `apply` has no time limit of its own:
//! every scenario runs on threads of its own and fails past a bounded wait rather than hang.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool, StartMethod};

use crate::common::PATIENCE;

/// Tasks this worker process has run, counted by the tasks below (each process, forked or
/// spawned, starts its own count at 0: the test's own process never runs them).
static RAN: AtomicU64 = AtomicU64::new(0);

/// `x`, this task's place among the tasks its worker process ran (from 1), and the process.
fn tick(x: u64) -> (u64, u64, u32) {
    (
        x,
        RAN.fetch_add(1, Ordering::SeqCst) + 1,
        std::process::id(),
    )
}

/// As [`tick`], after about `us` microseconds of spinning (past the caller's own spin on
/// the lane when `us` is large enough: it then puts the call in the books and waits on it).
fn tick_after(x: u64, us: u64) -> (u64, u64, u32) {
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    tick(x)
}

/// As [`tick`], but panics (after counting itself, saying its place and process) when `x`
/// is a multiple of 5.
fn tick_or_panic(x: u64) -> (u64, u64, u32) {
    let (x, n, pid) = tick(x);
    assert!(x % 5 != 0, "task {x} panics as task {n} of {pid}.");
    (x, n, pid)
}

/// A value past the size that travels in a memory file, with its own place and process.
fn tick_large(x: u64) -> (Vec<u8>, u64, u32) {
    let (_, n, pid) = tick(x);
    (crate::common::pattern(x as u8, 300 * 1024), n, pid)
}

/// A pool of `n` workers, to share with threads of its own.
fn shared_pool(m: StartMethod, n: usize) -> Arc<Pool> {
    Arc::new(
        Pool::builder()
            .processes(n)
            .start_method(m)
            .build()
            .unwrap(),
    )
}

/// Runs `body(pool, t)` on `threads` threads of their own; fails if they have not all
/// finished within `within` (a call that never returns fails the test, not stalls it).
fn on_threads<F>(pool: &Arc<Pool>, threads: u64, within: Duration, body: F)
where
    F: Fn(&Pool, u64) + Send + Sync + 'static,
{
    let body = Arc::new(body);
    let (tx, rx) = mpsc::channel();
    for t in 0..threads {
        let (pool, body, tx) = (Arc::clone(pool), Arc::clone(&body), tx.clone());
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&pool, t)));
            let _ = tx.send((t, outcome.is_ok()));
        });
    }
    drop(tx);
    let deadline = Instant::now() + within;
    for _ in 0..threads {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, true)) => {}
            Ok((t, false)) => panic!("thread {t} failed (its panic is printed above)"),
            Err(_) => panic!("a thread's calls did not return within {within:?}"),
        }
    }
}

/// A thread's `apply` never overtakes a call the same thread submitted before it. One
/// worker, so the order it runs tasks in is the order they were handed to it; other threads
/// keep the dispatcher's state busy, so that a thread's `apply_async` often finds it taken
/// and leaves its call in the inbox, where the `apply` after it must not pass it (the
/// caller of `apply` checks that the dispatcher has taken every command posted before it).
fn an_apply_never_overtakes_its_threads_earlier_call(m: StartMethod) {
    let p = shared_pool(m, 1);
    on_threads(&p, 4, PATIENCE * 3, |p, t| {
        for i in 0..500u64 {
            let x = (t << 32) | i;
            let first = p.apply_async(tick, (x,)).unwrap();
            let (y, after, pid) = match i % 3 {
                0 => p.apply(tick, (x + 1,)).unwrap(),
                1 => p.apply(tick_after, (x + 1, 300)).unwrap(),
                // Its earlier call read by a waiter first, sometimes.
                _ => {
                    let second = p.apply(tick, (x + 1,)).unwrap();
                    assert_eq!(first.get_timeout(PATIENCE).unwrap().0, x);
                    second
                }
            };
            let (z, before, first_pid) = first.get_timeout(PATIENCE).unwrap();
            assert_eq!((z, y), (x, x + 1));
            assert_eq!(pid, first_pid, "one worker, never replaced");
            assert!(
                before < after,
                "thread {t}, call {i}: the apply ran as task {after} of its worker, before \
                 the apply_async its thread submitted first (task {before})"
            );
        }
    });
}

/// While callers read their answers from an idle worker's lane holding the state, back to
/// back, the answer of another worker (to a call whose waiter gave up helping and sleeps on
/// its job) still reaches its waiter: a worker that holds a chunk can always wake someone.
/// The lane readers never read that worker's lane themselves, and, their own answers
/// quick, never let go on their own: only the wake-up the worker owes brings the pool's
/// thread (whose wanting the state makes a reader let go and read every lane).
fn other_workers_answers_reach_their_waiters_past_lane_readers(m: StartMethod) {
    for workers in [2, 3] {
        let readers = workers - 1;
        let p = shared_pool(m, workers as usize);
        let stop = Arc::new(AtomicBool::new(false));
        let stop_readers = Arc::clone(&stop);
        on_threads(&p, readers + 1, PATIENCE * 2, move |p, t| {
            if t < readers {
                let mut i = 0u64;
                while !stop_readers.load(Ordering::Relaxed) {
                    let x = (t << 32) | i;
                    assert_eq!(p.apply(tick, (x,)).unwrap().0, x);
                    i += 1;
                }
                return;
            }
            // A lost wake-up is not a hang here: the pool's thread also wakes to look at
            // taking chunks back from a busy worker while another has room (the readers'),
            // and reads the lanes then. It shows as answers late by tens or hundreds of
            // milliseconds (a third of the calls, where the readers left words cleared),
            // against a few milliseconds each.
            let mut late = 0;
            for i in 0..30u64 {
                let x = (t << 32) | i;
                // Past the waiter's spin: it sleeps on its job before the answer comes.
                let r = p
                    .apply_async(tick_after, (x, 2_000 + i % 3 * 1_000))
                    .unwrap();
                let asked = Instant::now();
                let got = r.get_timeout(PATIENCE);
                if asked.elapsed() > Duration::from_millis(100) {
                    late += 1;
                }
                if got.is_err() {
                    stop_readers.store(true, Ordering::Relaxed);
                }
                assert_eq!(got.unwrap().0, x, "call {i}");
            }
            stop_readers.store(true, Ordering::Relaxed);
            assert!(
                late < 5,
                "{late} of 30 answers of 2 to 4 ms tasks took over 100 ms"
            );
        });
        stop.store(true, Ordering::Relaxed);
    }
}

/// The books after `apply`s read by their callers, calls that outlast the caller's spin and
/// go into the books, panics, and workers retired every few tasks, against what each worker
/// process counted itself: none runs more than `max_tasks_per_child` tasks, each that ran
/// that many was retired (counted once), and the statistics count every task, every panic,
/// and each live worker's tasks as that worker counted them.
fn the_books_match_what_each_worker_ran(m: StartMethod) {
    const MAX: u64 = 4;
    const CALLS: u64 = 3 * 60;
    let p = Arc::new(
        Pool::builder()
            .processes(2)
            .start_method(m)
            .max_tasks_per_child(MAX as usize)
            .build()
            .unwrap(),
    );
    // (process, its own count) of every task, and the panics.
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let panicked = Arc::new(AtomicU64::new(0));
    let (seen, panics) = (Arc::clone(&ran), Arc::clone(&panicked));
    on_threads(&p, 3, PATIENCE * 3, move |p, t| {
        for i in 0..CALLS / 3 {
            let x = (t << 32) | (i + 1);
            let got = match i % 6 {
                0 => p.apply_async(tick, (x,)).unwrap().get_timeout(PATIENCE),
                1 => p.apply(tick_after, (x, 400)),
                _ => p.apply(tick_or_panic, (x,)),
            };
            match got {
                Ok((y, n, pid)) => {
                    assert_eq!(y, x);
                    seen.lock().unwrap().push((pid, n));
                }
                Err(e) => {
                    assert!(matches!(e.kind(), ErrorKind::Panicked(_)), "call {x}: {e}");
                    let said = e.to_string();
                    let place = said
                        .split(" as task ")
                        .nth(1)
                        .and_then(|r| r.split('.').next())
                        .and_then(|r| r.split_once(" of "))
                        .and_then(|(n, pid)| Some((pid.parse().ok()?, n.parse().ok()?)));
                    let Some(place) = place else {
                        panic!("call {x}: no place in its panic: {said}")
                    };
                    seen.lock().unwrap().push(place);
                    panics.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    // Each process counted 1, 2, ... up to its last, no number twice, none past MAX.
    let mut by_pid: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for (pid, n) in ran.lock().unwrap().iter() {
        by_pid.entry(*pid).or_default().push(*n);
    }
    for (pid, ns) in &mut by_pid {
        ns.sort_unstable();
        let want: Vec<u64> = (1..=ns.len() as u64).collect();
        assert_eq!(*ns, want, "worker {pid}'s own count of its tasks");
        assert!(
            ns.len() as u64 <= MAX,
            "worker {pid} ran {} tasks, past {MAX}",
            ns.len()
        );
    }
    assert_eq!(by_pid.values().map(Vec::len).sum::<usize>() as u64, CALLS);
    let full = by_pid.values().filter(|ns| ns.len() as u64 == MAX).count() as u64;
    crate::common::wait_until("every worker that ran MAX tasks is counted retired", || {
        p.stats().restarts.retired >= full
    });
    let s = p.stats();
    assert_eq!(s.tasks(), CALLS, "{s}");
    assert_eq!(
        s.errors.get("Panicked").copied().unwrap_or(0),
        panicked.load(Ordering::Relaxed),
        "{s}"
    );
    assert_eq!(
        s.restarts.total(),
        s.restarts.retired,
        "only retirements: {s}"
    );
    // One retired short of MAX is one that was given a task taken back from it (a slow
    // task's followers, run elsewhere).
    assert!(s.restarts.retired <= full + s.taken_back, "{s}");
    for w in &s.workers {
        let Some(pid) = w.pid else { continue };
        let own = by_pid.get(&pid).map_or(0, |ns| ns.len() as u64);
        assert_eq!(
            w.tasks, own,
            "worker {pid}, by the books and by its own count: {s}"
        );
    }
}

/// Large answers (they come on the worker's socket, a placeholder in the lane) to `apply`s
/// read by their callers, among quick ones, from threads, on one worker and on two.
fn large_answers_to_calls_read_by_their_callers(m: StartMethod) {
    for n in [1, 2] {
        let p = shared_pool(m, n);
        on_threads(&p, 3, PATIENCE * 3, |p, t| {
            for i in 0..40u64 {
                let x = (t << 32) | i;
                if i % 2 == 0 {
                    let (bytes, _, _) = p.apply(tick_large, (x,)).unwrap();
                    assert!(
                        bytes == crate::common::pattern(x as u8, 300 * 1024),
                        "call {x}"
                    );
                } else {
                    assert_eq!(p.apply(tick, (x,)).unwrap().0, x);
                }
            }
        });
    }
}

/// `close` and `join` while threads call back to back, their callers reading the lanes:
/// each call gives its value or `PoolClosed` (none lost, none hanging), the pool's thread
/// ends only once every accepted call has its answer, and `join` returns.
fn close_and_join_under_lane_readers(m: StartMethod) {
    for round in 0..4u64 {
        let p = shared_pool(m, 2);
        let answered = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&answered);
        let closer = Arc::clone(&p);
        let closing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5 + round * 5));
            closer.close();
            closer.join()
        });
        on_threads(&p, 3, PATIENCE * 2, move |p, t| {
            for i in 0.. {
                let x = (t << 32) | i;
                let got = match i % 3 {
                    0 => p.apply(tick_after, (x, 300)),
                    _ => p.apply(tick, (x,)),
                };
                match got {
                    Ok((y, _, _)) => {
                        assert_eq!(y, x);
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::PoolClosed) => return,
                    Err(e) => panic!("call {x}: {e}"),
                }
            }
        });
        let deadline = Instant::now() + PATIENCE;
        while !closing.is_finished() {
            assert!(Instant::now() < deadline, "join did not return");
            std::thread::sleep(Duration::from_millis(2));
        }
        closing.join().unwrap().unwrap();
        assert!(answered.load(Ordering::Relaxed) > 0);
        assert_eq!(p.stats().tasks(), 0, "an ended pool reports nothing");
    }
}

/// A worker past `max_memory_per_child` after an `apply` whose caller read the answer from
/// its lane is told to stop then: it exits with nothing else happening in the pool, and is
/// replaced. (Its `Stop` was queued and left unsent: it went only at the pool's thread's
/// next turn, which nothing brought, the retired worker idle and alive meanwhile, its
/// memory held and its slot lost to the pool.)
fn a_worker_past_its_memory_cap_after_an_apply_read_by_its_caller_exits(m: StartMethod) {
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .max_memory_per_child(1)
        .build()
        .unwrap();
    for i in 0..6u64 {
        let (x, n, pid) = p.apply(tick, (i,)).unwrap();
        assert_eq!(
            (x, n),
            (i, 1),
            "each worker runs one task (every one is past 1 byte)"
        );
        crate::common::wait_until(&format!("call {i}: worker {pid} has exited"), || {
            crate::common::has_ended(pid)
        });
    }
    // Six at least: a worker that skipped a call taken back from it (a call placed while it
    // started, run by the other) is past the cap after that answer too.
    crate::common::wait_until("six retirements counted", || {
        p.stats().restarts.over_memory >= 6
    });
    let s = p.stats();
    assert_eq!(s.restarts.total(), s.restarts.over_memory, "{s:?}");
}

per_start_method!(
    an_apply_never_overtakes_its_threads_earlier_call,
    other_workers_answers_reach_their_waiters_past_lane_readers,
    the_books_match_what_each_worker_ran,
    large_answers_to_calls_read_by_their_callers,
    close_and_join_under_lane_readers,
    a_worker_past_its_memory_cap_after_an_apply_read_by_its_caller_exits,
);
