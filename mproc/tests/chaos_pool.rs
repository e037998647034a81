//! Chaos on the pool's quick-call path: many threads on one pool mixing `get`, tiny
//! `get_timeout`s, cancels, results dropped unread, callbacks that use the pool, large and
//! panicking tasks, futures, workers killed at random, and the pool stopped under waiters.
//! Every value is checked against its own input; every wait is bounded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mproc::{AsyncResult, Error, ErrorKind, Pool, StartMethod};

use crate::common::{PATIENCE, pool};

const LARGE: usize = 300 * 1024;

/// What every task below answers for `x`: a function of `x` alone, and the worker's pid.
fn expect(x: u64) -> u64 {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5555
}

fn quick(x: u64) -> (u64, u32) {
    (expect(x), std::process::id())
}

/// About `us` microseconds of spinning (around a worker's linger).
fn spin(x: u64, us: u64) -> (u64, u32) {
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    (expect(x), std::process::id())
}

fn nap(x: u64, ms: u64) -> (u64, u32) {
    std::thread::sleep(Duration::from_millis(ms));
    (expect(x), std::process::id())
}

/// A value past the size that travels in memory files, each byte a function of `x`.
fn large(x: u64) -> (Vec<u8>, u32) {
    (bytes_of(x, LARGE), std::process::id())
}

fn bytes_of(x: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (x.wrapping_mul(131) as usize).wrapping_add(i * 7) as u8)
        .collect()
}

fn panics(x: u64) -> (u64, u32) {
    panic!("task {x} panics");
}

/// Panics half the time, after catching one of its own.
fn panics_after_catching(x: u64) -> (u64, u32) {
    let _ = std::panic::catch_unwind(|| panic!("caught inside {x}"));
    if x.is_multiple_of(2) {
        panic!("task {x} panics after catching");
    }
    (expect(x), std::process::id())
}

fn lost_or_cancelled(e: &Error) -> bool {
    matches!(e.kind(), ErrorKind::WorkerLost(_) | ErrorKind::Cancelled)
}

/// Checks a quick-family answer for `x`; records the worker's pid.
fn check(x: u64, got: Result<(u64, u32), Error>, pids: &Mutex<Vec<u32>>, allow_lost: bool) -> bool {
    match got {
        Ok((v, pid)) => {
            assert_eq!(v, expect(x), "call {x:#x} got another call's value");
            pids.lock().unwrap().push(pid);
            true
        }
        Err(e) => {
            assert!(allow_lost && lost_or_cancelled(&e), "call {x:#x}: {e}");
            false
        }
    }
}

/// Four threads on one pool of two, each mixing every way to use a call; with `kill`, a fifth
/// SIGKILLs a worker every few ms. Each call gives its own value or (cancelled, or its worker
/// killed) a clear error, and each callback runs exactly once.
fn mixed_load(m: StartMethod, kill: bool) {
    let p = pool(m, 2);
    let pids = Mutex::new(Vec::<u32>::new());
    let callbacks: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let registered = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let kills = AtomicUsize::new(0);
    let run_for = Duration::from_millis(1500);
    let began = Instant::now();
    std::thread::scope(|s| {
        if kill {
            s.spawn(|| {
                let mut seed = 0x2545_f491_4f6c_dd1du64;
                let mut killed = std::collections::HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(9));
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let victim = {
                        let mut pids = pids.lock().unwrap();
                        pids.retain(|p| !killed.contains(p));
                        pids.get(seed as usize % pids.len().max(1)).copied()
                    };
                    if let Some(v) = victim {
                        // SAFETY: kill(2) has no memory-safety preconditions.
                        unsafe { libc::kill(v as i32, libc::SIGKILL) };
                        killed.insert(v);
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (p, pids, callbacks, registered) = (&p, &pids, &callbacks, &registered);
                s.spawn(move || {
                    let mut i = 0u64;
                    let mut kept: Vec<(u64, AsyncResult<(u64, u32)>)> = Vec::new();
                    while began.elapsed() < run_for {
                        let x = (t << 40) | i;
                        i += 1;
                        match i % 15 {
                            0..=2 => {
                                let r = p.apply_async(quick, (x,)).unwrap();
                                check(x, r.get_timeout(PATIENCE), pids, kill);
                            }
                            3 => {
                                // A tiny timeout, then the real wait.
                                let r = p.apply_async(spin, (x, 20)).unwrap();
                                match r.get_timeout(Duration::from_micros(1)) {
                                    Ok(v) => {
                                        check(x, Ok(v), pids, kill);
                                    }
                                    Err(e) if e.kind() == &ErrorKind::Timeout => {
                                        check(x, r.get_timeout(PATIENCE), pids, kill);
                                    }
                                    Err(e) => assert!(kill && lost_or_cancelled(&e), "{e}"),
                                }
                            }
                            4 => {
                                // Dropped unread.
                                drop(p.apply_async(quick, (x,)).unwrap());
                            }
                            5 => {
                                let r = p.apply_async(nap, (x, 1)).unwrap();
                                let cancelled = r.cancel();
                                let got = r.get_timeout(PATIENCE);
                                if cancelled {
                                    assert_eq!(
                                        got.unwrap_err().kind(),
                                        &ErrorKind::Cancelled,
                                        "a cancelled call"
                                    );
                                } else {
                                    check(x, got, pids, kill);
                                }
                            }
                            6 => {
                                let r = p.apply_async(quick, (x,)).unwrap();
                                registered.fetch_add(1, Ordering::Relaxed);
                                let cbs = Arc::clone(callbacks);
                                r.on_complete(move |o| {
                                    *cbs.lock().unwrap().entry(x).or_default() += 1;
                                    if let Ok((v, _)) = o {
                                        assert_eq!(v, expect(x), "a callback's value");
                                    }
                                });
                                kept.push((x, r));
                            }
                            7 => {
                                let r = p.apply_async(large, (x,)).unwrap();
                                match r.get_timeout(PATIENCE) {
                                    Ok((v, pid)) => {
                                        assert!(v == bytes_of(x, LARGE), "large {x:#x}");
                                        pids.lock().unwrap().push(pid);
                                    }
                                    Err(e) => assert!(kill && lost_or_cancelled(&e), "{e}"),
                                }
                            }
                            8 => {
                                let r = p.apply_async(panics, (x,)).unwrap();
                                let e = r.get_timeout(PATIENCE).unwrap_err();
                                match e.kind() {
                                    ErrorKind::Panicked(rep) => {
                                        assert_eq!(rep.message, format!("task {x} panics"))
                                    }
                                    _ => assert!(kill && lost_or_cancelled(&e), "{e}"),
                                }
                            }
                            9 => {
                                let r = p.apply_async(panics_after_catching, (x,)).unwrap();
                                match r.get_timeout(PATIENCE) {
                                    Err(e) if matches!(e.kind(), ErrorKind::Panicked(_)) => {
                                        let ErrorKind::Panicked(rep) = e.kind() else {
                                            unreachable!()
                                        };
                                        assert_eq!(x % 2, 0);
                                        assert_eq!(
                                            rep.message,
                                            format!("task {x} panics after catching")
                                        );
                                        assert!(rep.location.is_some(), "{rep:?}");
                                    }
                                    got => {
                                        if check(x, got, pids, kill) {
                                            assert_eq!(x % 2, 1);
                                        }
                                    }
                                }
                            }
                            10 => {
                                // A few at once, waited on in reverse.
                                let rs: Vec<_> = (0..5)
                                    .map(|k| {
                                        let y = x ^ (k << 32);
                                        (y, p.apply_async(spin, (y, k * 3)).unwrap())
                                    })
                                    .collect();
                                for (y, r) in rs.into_iter().rev() {
                                    check(y, r.get_timeout(PATIENCE), pids, kill);
                                }
                            }
                            11 => {
                                let r = p.apply_async(quick, (x,)).unwrap();
                                let got = futures::executor::block_on(r);
                                check(x, got, pids, kill);
                            }
                            12 | 13 => {
                                // `apply`, whose caller may read a lane itself (no job made):
                                // quick, spinning, large and panicking in turn.
                                match i / 15 % 4 {
                                    0 => {
                                        check(x, p.apply(quick, (x,)), pids, kill);
                                    }
                                    1 => {
                                        check(x, p.apply(spin, (x, 30)), pids, kill);
                                    }
                                    2 => match p.apply(large, (x,)) {
                                        Ok((v, pid)) => {
                                            assert!(v == bytes_of(x, LARGE), "large {x:#x}");
                                            pids.lock().unwrap().push(pid);
                                        }
                                        Err(e) => assert!(kill && lost_or_cancelled(&e), "{e}"),
                                    },
                                    _ => {
                                        let e = p.apply(panics, (x,)).unwrap_err();
                                        match e.kind() {
                                            ErrorKind::Panicked(rep) => {
                                                assert_eq!(rep.message, format!("task {x} panics"))
                                            }
                                            _ => assert!(kill && lost_or_cancelled(&e), "{e}"),
                                        }
                                    }
                                };
                            }
                            _ => {
                                let r = p.apply_async(quick, (x,)).unwrap();
                                r.wait_timeout(PATIENCE).unwrap();
                                assert!(r.ready());
                                check(x, r.get(), pids, kill);
                            }
                        }
                    }
                    for (x, r) in kept {
                        check(x, r.get_timeout(PATIENCE), pids, kill);
                    }
                    i
                })
            })
            .collect();
        let calls: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        eprintln!("calls={calls} kills={}", kills.load(Ordering::Relaxed));
    });
    // A callback may run a moment after `get` returns (on the thread that completed it).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ran = callbacks.lock().unwrap().len();
        if ran == registered.load(Ordering::Relaxed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{ran} callbacks of {registered:?} ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let twice: Vec<_> = callbacks
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n != 1)
        .map(|(x, n)| (*x, *n))
        .collect();
    assert!(twice.is_empty(), "callbacks run more than once: {twice:?}");
    // And the pool still works.
    for x in 0..20 {
        assert_eq!(p.apply(quick, (x,)).unwrap().0, expect(x));
    }
    assert!(kills.load(Ordering::Relaxed) > 0 || !kill);
}

fn mixed_load_quiet(m: StartMethod) {
    mixed_load(m, false);
}

fn mixed_load_with_kills(m: StartMethod) {
    mixed_load(m, true);
}

/// A callback that itself waits on the same pool (`apply`, `map`, `imap`, a kept result's
/// `get`): where it runs on the pool's own thread, nothing could answer while it waits, so
/// the wait says so at once (`InvalidArgument`) instead of hanging the pool for good; where
/// a waiter runs it, it gets its value. Either way the pool goes on.
fn a_callback_that_waits_on_its_pool(m: StartMethod) {
    let p = Arc::new(pool(m, 2));
    let (tx, rx) = std::sync::mpsc::channel();
    let own_thread = |e: &Error| {
        matches!(e.kind(), ErrorKind::InvalidArgument(_))
            && e.to_string().contains("pool's own thread")
    };
    for x in 0..20u64 {
        let inner = Arc::clone(&p);
        let tx = tx.clone();
        let kept = p.apply_async(nap, (x, 50)).unwrap();
        let r = p.apply_async(quick, (x,)).unwrap();
        r.on_complete(move |o| {
            assert_eq!(o.unwrap().0, expect(x));
            let apply = inner.apply(quick, (x + 1000,)).map(|v| v.0);
            let map = inner.map(quick, [x, x + 1]).map(|v| v[1].0);
            let imap = inner
                .imap(quick, [x + 2])
                .unwrap()
                .next()
                .unwrap()
                .map(|v| v.0);
            let kept = kept.get().map(|v| v.0);
            let _ = tx.send((apply, map, imap, kept));
        });
        // On odd rounds a waiter may pick the answer up (and run the callback itself).
        if x % 2 == 1 {
            assert_eq!(r.get_timeout(PATIENCE).unwrap().0, expect(x));
        }
        let (apply, map, imap, kept) = rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("call {x}: a callback waiting on its pool hung"));
        for (got, want) in [
            (apply, expect(x + 1000)),
            (map, expect(x + 1)),
            (imap, expect(x + 2)),
            (kept, expect(x)),
        ] {
            match got {
                Ok(v) => assert_eq!(v, want),
                Err(e) => assert!(own_thread(&e), "{e}"),
            }
        }
    }
    // The pool still works.
    assert_eq!(p.apply(quick, (5,)).unwrap().0, expect(5));
}

/// A callback that submits more work on the same pool (without waiting): a chain of 200.
fn callbacks_chaining_calls(m: StartMethod) {
    let p = Arc::new(pool(m, 2));
    let (tx, rx) = std::sync::mpsc::channel();
    fn step(p: Arc<Pool>, x: u64, left: u32, tx: std::sync::mpsc::Sender<u64>) {
        let r = p.apply_async(quick, (x,)).unwrap();
        let q = Arc::clone(&p);
        r.on_complete(move |o| {
            let v = o.unwrap().0;
            assert_eq!(v, expect(x));
            if left == 0 {
                let _ = tx.send(x);
            } else {
                step(q, x + 1, left - 1, tx);
            }
        });
    }
    for chain in 0..4u64 {
        step(Arc::clone(&p), chain << 32, 200, tx.clone());
    }
    let mut ends: Vec<u64> = (0..4)
        .map(|_| {
            rx.recv_timeout(PATIENCE)
                .expect("a chain of callbacks stalled")
        })
        .collect();
    ends.sort();
    assert_eq!(ends, (0..4u64).map(|c| (c << 32) + 200).collect::<Vec<_>>());
}

/// `terminate` while threads wait in `get` (quick and slow calls): every wait ends within a
/// bound, each with its value or `Terminated`.
fn terminate_under_waiters(m: StartMethod) {
    for round in 0..5u64 {
        let p = pool(m, 2);
        let done = AtomicU64::new(0);
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let (p, done) = (&p, &done);
                s.spawn(move || {
                    for i in 0.. {
                        let x = (t << 32) | i;
                        let r = match if i % 3 == 0 {
                            p.apply_async(nap, (x, 30))
                        } else {
                            p.apply_async(quick, (x,))
                        } {
                            Ok(r) => r,
                            Err(e) => {
                                assert_eq!(e.kind(), &ErrorKind::PoolClosed, "{e}");
                                break;
                            }
                        };
                        let t0 = Instant::now();
                        match r.get_timeout(PATIENCE) {
                            Ok((v, _)) => assert_eq!(v, expect(x)),
                            Err(e) => {
                                assert_eq!(e.kind(), &ErrorKind::Terminated, "{e}");
                            }
                        }
                        assert!(t0.elapsed() < PATIENCE, "a get outlived the pool");
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // And `apply` back to back, whose caller may be reading a lane itself (no job
            // made) when the pool is terminated: its value, `Terminated`, then `PoolClosed`.
            let (p, done) = (&p, &done);
            s.spawn(move || {
                for i in 0.. {
                    let x = (3 << 32) | i;
                    match p.apply(quick, (x,)) {
                        Ok((v, _)) => assert_eq!(v, expect(x)),
                        Err(e) if e.kind() == &ErrorKind::Terminated => {}
                        Err(e) => {
                            assert_eq!(e.kind(), &ErrorKind::PoolClosed, "{e}");
                            break;
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
            std::thread::sleep(Duration::from_millis(20 + round * 17));
            p.terminate();
        });
        assert!(done.load(Ordering::Relaxed) > 0);
    }
}

/// Results kept past their pool: each says its value or `Terminated`, as a value, a wait, or a
/// future; a callback registered after still runs at once.
fn results_outlive_their_pool(m: StartMethod) {
    let p = pool(m, 2);
    let quick_ones: Vec<_> = (0..50u64)
        .map(|x| (x, p.apply_async(quick, (x,)).unwrap()))
        .collect();
    let slow = p.apply_async(nap, (7, 5_000)).unwrap();
    let big = p.apply_async(large, (3,)).unwrap();
    let big_value = big.get_timeout(PATIENCE).unwrap().0;
    drop(p);
    for (x, r) in &quick_ones {
        match r.get_timeout(PATIENCE) {
            Ok((v, _)) => assert_eq!(v, expect(*x)),
            Err(e) => assert_eq!(e.kind(), &ErrorKind::Terminated, "{e}"),
        }
    }
    assert_eq!(
        slow.get_timeout(PATIENCE).unwrap_err().kind(),
        &ErrorKind::Terminated
    );
    assert!(slow.ready());
    assert!(!slow.successful().unwrap());
    assert!(slow.wait_timeout(PATIENCE).is_ok());
    assert!(!slow.cancel());
    let (tx, rx) = std::sync::mpsc::channel();
    slow.on_complete(move |o| tx.send(o.map_err(|e| e.kind().clone())).unwrap());
    assert_eq!(rx.try_recv().unwrap(), Err(ErrorKind::Terminated));
    // The large value, read again after its pool (and its workers) are gone.
    assert!(big.get().unwrap().0 == big_value && big_value == bytes_of(3, LARGE));
    let f = futures::executor::block_on(slow);
    assert_eq!(f.unwrap_err().kind(), &ErrorKind::Terminated);
}

/// Futures: many calls awaited on a multi-threaded tokio runtime, some raced against a tiny
/// timeout (the future dropped mid-wait) and then awaited again through a fresh call.
fn futures_on_a_runtime(m: StartMethod) {
    let p = Arc::new(pool(m, 2));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_time()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let p = Arc::clone(&p);
            tasks.push(tokio::spawn(async move {
                let mut ok = 0u64;
                for i in 0..150u64 {
                    let x = (t << 32) | i;
                    let r = if i % 5 == 0 {
                        p.apply_async(spin, (x, 50)).unwrap()
                    } else {
                        p.apply_async(quick, (x,)).unwrap()
                    };
                    if i % 7 == 0 {
                        // Dropped if not ready in a microsecond.
                        let _ = tokio::time::timeout(Duration::from_micros(1), r).await;
                        continue;
                    }
                    let (v, _) = tokio::time::timeout(PATIENCE, r)
                        .await
                        .expect("a future was never woken")
                        .unwrap();
                    assert_eq!(v, expect(x));
                    ok += 1;
                }
                ok
            }));
        }
        let mut all = 0;
        for t in tasks {
            all += t.await.unwrap();
        }
        all
    });
    assert!(got > 0);
    drop(rt);
}

/// A large value and a tiny one from the same worker, kept unread while the worker answers
/// many more large ones: each reads as its own.
fn large_values_kept_while_the_worker_goes_on(m: StartMethod) {
    let p = pool(m, 1);
    let kept: Vec<_> = (0..6u64)
        .map(|x| (x, p.apply_async(large, (x,)).unwrap()))
        .collect();
    let mut more = Vec::new();
    for x in 100..160u64 {
        more.push((x, p.apply_async(large, (x,)).unwrap()));
        more.push((x + 1000, p.apply_async(large, (x + 1000,)).unwrap()));
        if x % 4 == 0 {
            let (y, r) = more.remove(0);
            assert!(
                r.get_timeout(PATIENCE).unwrap().0 == bytes_of(y, LARGE),
                "large {y}"
            );
        }
    }
    for (x, r) in kept.iter().chain(&more) {
        assert!(
            r.get_timeout(PATIENCE).unwrap().0 == bytes_of(*x, LARGE),
            "large {x}"
        );
    }
    // Read again, all of them.
    for (x, r) in kept.iter().chain(&more) {
        assert!(r.get().unwrap().0 == bytes_of(*x, LARGE), "large {x} again");
    }
}

/// `close` + `join` from one thread while others are inside `get` of calls already made and
/// map/imap run on others: every submitted call is delivered; later submissions are refused.
fn close_and_join_under_waiters(m: StartMethod) {
    for _ in 0..3 {
        let p = pool(m, 2);
        let made: Vec<_> = (0..60u64)
            .map(|x| {
                let r = if x % 10 == 0 {
                    p.apply_async(nap, (x, 5)).unwrap()
                } else {
                    p.apply_async(quick, (x,)).unwrap()
                };
                (x, r)
            })
            .collect();
        let made_imap = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for part in made.chunks(20) {
                s.spawn(move || {
                    for (x, r) in part {
                        assert_eq!(r.get_timeout(PATIENCE).unwrap().0, expect(*x));
                    }
                });
            }
            let (p, made_imap) = (&p, &made_imap);
            s.spawn(move || {
                let imap = p.imap(quick, 0..40u64).unwrap();
                made_imap.wait();
                for (x, v) in imap.enumerate() {
                    assert_eq!(v.unwrap().0, expect(x as u64));
                }
            });
            s.spawn(|| {
                let _ = p.map(quick, 0..30u64);
            });
            made_imap.wait();
            p.close();
            assert_eq!(
                p.apply_async(quick, (1,)).unwrap_err().kind(),
                &ErrorKind::PoolClosed
            );
            p.join().unwrap();
        });
    }
}

/// Cancels among quick calls queued on workers: a cancelled call gives `Cancelled` (or its
/// value, if it finished first); a call nobody cancelled, and no worker was killed for, gives
/// its value, never another's error.
fn cancels_hit_only_their_own_calls(m: StartMethod) {
    let p = pool(m, 2);
    let mut innocent_failures = Vec::new();
    let mut cancelled_running = 0;
    for round in 0..40u64 {
        let calls: Vec<_> = (0..40u64)
            .map(|i| {
                let x = (round << 32) | i;
                (x, p.apply_async(spin, (x, 5 + i % 3 * 20)).unwrap())
            })
            .collect();
        let mut cancelled = std::collections::HashSet::new();
        for (k, (x, r)) in calls.iter().enumerate() {
            if (k as u64 + round).is_multiple_of(5) && r.cancel() {
                cancelled.insert(*x);
            }
            if k % 8 == 0 {
                std::thread::sleep(Duration::from_micros(30));
            }
        }
        for (x, r) in &calls {
            match r.get_timeout(PATIENCE) {
                Ok((v, _)) => {
                    assert!(!cancelled.contains(x), "a cancelled call gave a value");
                    assert_eq!(v, expect(*x));
                }
                Err(e) if cancelled.contains(x) => {
                    assert_eq!(e.kind(), &ErrorKind::Cancelled, "{e}");
                    cancelled_running += 1;
                }
                Err(e) => innocent_failures.push((*x, e.to_string())),
            }
        }
    }
    assert!(
        innocent_failures.is_empty(),
        "{} calls nobody cancelled failed ({} cancelled), first: {:?}",
        innocent_failures.len(),
        cancelled_running,
        innocent_failures.first()
    );
}

/// A cancel aimed at a call its worker has just taken, with quick calls queued behind it in
/// the same lane: the worker is killed for the cancelled call; the calls behind it must not
/// pay for it.
fn a_cancel_of_a_running_call_spares_the_calls_behind_it(m: StartMethod) {
    let p = pool(m, 1);
    let (mut innocent, mut killed_for) = (Vec::new(), 0);
    let mut seed = 0x9e37_79b9u64;
    for round in 0..2000u64 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let x = round << 32;
        let first = p.apply_async(spin, (x, seed % 4)).unwrap();
        let behind: Vec<_> = (1..4u64)
            .map(|k| (x | k, p.apply_async(quick, (x | k,)).unwrap()))
            .collect();
        let until = Instant::now() + Duration::from_nanos((seed >> 8) % 20_000);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        let cancelled = first.cancel();
        match first.get_timeout(PATIENCE) {
            Ok((v, _)) => assert!(!cancelled && v == expect(x)),
            Err(e) => {
                assert!(cancelled, "{e}");
                assert_eq!(e.kind(), &ErrorKind::Cancelled);
                killed_for += 1;
            }
        }
        for (y, r) in &behind {
            match r.get_timeout(PATIENCE) {
                Ok((v, _)) => assert_eq!(v, expect(*y)),
                Err(e) => innocent.push((*y, e.to_string())),
            }
        }
    }
    assert!(
        innocent.is_empty(),
        "{} calls behind a cancelled one failed ({killed_for} cancelled): {:?}",
        innocent.len(),
        &innocent[..innocent.len().min(3)]
    );
}

/// `join` after `close` returns once the last call's answer is read, whoever reads it: here
/// its waiter (`get` reads the lanes itself while the pool's thread sleeps), after the pool's
/// thread took the `Close` with the call still running. The waiter let go without waking the
/// pool's thread, which never looked again to see the closed pool idle: `join` waited for
/// ever.
fn join_returns_when_a_waiter_reads_a_closed_pools_last_answer(m: StartMethod) {
    for round in 0..100u64 {
        let p = Arc::new(pool(m, 1));
        let r = p.apply_async(spin, (round, 1_000)).unwrap();
        p.close();
        // The pool's thread takes the `Close` meanwhile; the waiter then reads the answer.
        std::thread::sleep(Duration::from_micros(200 + round % 4 * 200));
        assert_eq!(r.get_timeout(PATIENCE).unwrap().0, expect(round));
        let joiner = Arc::clone(&p);
        let joining = std::thread::spawn(move || joiner.join());
        let deadline = Instant::now() + PATIENCE;
        while !joining.is_finished() {
            assert!(
                Instant::now() < deadline,
                "round {round}: join did not return"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        joining.join().unwrap().unwrap();
    }
}

/// Workers retired every few tasks (`max_tasks_per_child`) while threads call back to back,
/// large values among small ones, callbacks counting: every value right, no call failing.
fn retiring_workers_under_threads(m: StartMethod) {
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .max_tasks_per_child(3)
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let registered = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (p, ran, registered) = (&p, &ran, &registered);
            s.spawn(move || {
                for i in 0..120u64 {
                    let x = (t << 32) | i;
                    match i % 4 {
                        0 => {
                            let r = p.apply_async(large, (x,)).unwrap();
                            assert!(r.get_timeout(PATIENCE).unwrap().0 == bytes_of(x, LARGE));
                        }
                        1 => {
                            let r = p.apply_async(quick, (x,)).unwrap();
                            registered.fetch_add(1, Ordering::Relaxed);
                            let ran = Arc::clone(ran);
                            r.on_complete(move |o| {
                                assert_eq!(o.unwrap().0, expect(x));
                                ran.fetch_add(1, Ordering::Relaxed);
                            });
                            assert_eq!(r.get_timeout(PATIENCE).unwrap().0, expect(x));
                        }
                        2 => {
                            let r = p.apply_async(spin, (x, i % 3 * 40)).unwrap();
                            assert_eq!(r.get_timeout(PATIENCE).unwrap().0, expect(x));
                        }
                        _ => {
                            // `apply`: its caller may read the lane itself (no job made).
                            assert_eq!(p.apply(spin, (x, i % 3 * 40)).unwrap().0, expect(x));
                        }
                    }
                }
            });
        }
    });
    crate::common::wait_until("every callback ran", || {
        ran.load(Ordering::Relaxed) == registered.load(Ordering::Relaxed)
    });
}

/// A pool with an initializer (its workers `Starting` until `Ready`): calls from threads
/// before and while the workers start get their values.
fn calls_while_initializing_workers_start(m: StartMethod) {
    for _ in 0..5 {
        let p = Pool::builder()
            .processes(2)
            .start_method(m)
            .initializer(init_nap, (3,))
            .build()
            .unwrap();
        std::thread::scope(|s| {
            for t in 0..3u64 {
                let p = &p;
                s.spawn(move || {
                    let rs: Vec<_> = (0..30u64)
                        .map(|i| {
                            (
                                (t << 32) | i,
                                p.apply_async(quick, ((t << 32) | i,)).unwrap(),
                            )
                        })
                        .collect();
                    for (x, r) in rs {
                        assert_eq!(r.get_timeout(PATIENCE).unwrap().0, expect(x));
                    }
                });
            }
        });
    }
}

fn init_nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Tasks that end about when their `task_timeout` does, queued on one worker: each gives its
/// value or `TaskTimedOut`; the calls behind a late one are not lost with its worker
/// (`WorkerLost`). (The same race as a cancel's kill, not seen here in ~3 000 timeouts; the
/// fake link's `a_timeout_takes_back_the_chunks_behind_the_late_one_before_the_kill` makes it.)
fn a_timeout_spares_the_calls_behind_the_late_one(m: StartMethod) {
    let p = Pool::builder()
        .processes(1)
        .start_method(m)
        .task_timeout(Duration::from_millis(4))
        .build()
        .unwrap();
    let (mut lost, mut timed_out) = (Vec::new(), 0);
    for round in 0..150u64 {
        let x = round << 32;
        let late = p.apply_async(spin, (x, 3_600 + round % 8 * 100)).unwrap();
        let behind: Vec<_> = (1..4u64)
            .map(|k| (x | k, p.apply_async(quick, (x | k,)).unwrap()))
            .collect();
        match late.get_timeout(PATIENCE) {
            Ok((v, _)) => assert_eq!(v, expect(x)),
            Err(e) => {
                assert_eq!(e.kind(), &ErrorKind::TaskTimedOut, "{e}");
                timed_out += 1;
            }
        }
        for (y, r) in &behind {
            match r.get_timeout(PATIENCE) {
                Ok((v, _)) => assert_eq!(v, expect(*y)),
                // Late itself (a busy machine can keep a quick task past 4 ms): its own limit.
                Err(e) if e.kind() == &ErrorKind::TaskTimedOut => {}
                Err(e) => lost.push((*y, e.to_string())),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} calls behind a late one failed ({timed_out} timed out): {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
}

/// A callback that reads the pool's statistics (a progress line, say), whoever runs it: the
/// pool's own thread (nobody waits on the call) or a waiter.
fn a_callback_reads_its_pools_stats(m: StartMethod) {
    let p = Arc::new(pool(m, 2));
    let (tx, rx) = std::sync::mpsc::channel();
    for x in 0..10u64 {
        let inner = Arc::clone(&p);
        let tx = tx.clone();
        let r = p.apply_async(quick, (x,)).unwrap();
        r.on_complete(move |_| {
            let _ = tx.send(inner.stats().tasks());
        });
        if x % 2 == 1 {
            r.get_timeout(PATIENCE).unwrap();
        }
        rx.recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("call {x}: a callback reading the stats hung"));
    }
    assert!(p.stats().tasks() >= 10);
}

/// Chains of callbacks that each submit the next call, while workers are SIGKILLed and the
/// pool is terminated at a random moment: every chain ends (a value, `WorkerLost`, then
/// `Terminated` or `PoolClosed`), none hangs, none sees another call's value.
fn callback_chains_through_kills_and_terminate(m: StartMethod) {
    fn step(p: Arc<Pool>, x: u64, tx: std::sync::mpsc::Sender<(u64, ErrorKind)>) {
        let r = match p.apply_async(quick, (x,)) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send((x, e.kind().clone()));
                return;
            }
        };
        let q = Arc::clone(&p);
        r.on_complete(move |o| match o {
            Ok((v, pid)) => {
                assert_eq!(v, expect(x), "a chain got another call's value");
                if x % 16 == 5 {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                step(q, x + 1, tx);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WorkerLost(_)) => step(q, x + 1, tx),
            Err(e) => {
                let _ = tx.send((x, e.kind().clone()));
            }
        });
    }
    for round in 0..4u64 {
        let p = Arc::new(pool(m, 2));
        let (tx, rx) = std::sync::mpsc::channel();
        for chain in 0..4u64 {
            step(Arc::clone(&p), chain << 32, tx.clone());
        }
        drop(tx);
        std::thread::sleep(Duration::from_millis(30 + round * 20));
        p.terminate();
        for _ in 0..4 {
            let (_, why) = rx.recv_timeout(PATIENCE).expect("a chain never ended");
            assert!(
                matches!(why, ErrorKind::Terminated | ErrorKind::PoolClosed),
                "{why:?}"
            );
        }
    }
}

per_start_method!(
    mixed_load_quiet,
    mixed_load_with_kills,
    a_callback_that_waits_on_its_pool,
    callbacks_chaining_calls,
    terminate_under_waiters,
    results_outlive_their_pool,
    futures_on_a_runtime,
    large_values_kept_while_the_worker_goes_on,
    close_and_join_under_waiters,
    join_returns_when_a_waiter_reads_a_closed_pools_last_answer,
    cancels_hit_only_their_own_calls,
    a_cancel_of_a_running_call_spares_the_calls_behind_it,
    retiring_workers_under_threads,
    calls_while_initializing_workers_start,
    a_timeout_spares_the_calls_behind_the_late_one,
    a_callback_reads_its_pools_stats,
    callback_chains_through_kills_and_terminate,
);
