//! `Pool` and `AsyncResult`, under every start method: the API, crashes, timeouts, cancels,
//! and a stress test with workers killed at random.

use std::collections::HashSet;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool, StartMethod};

use crate::common::{PATIENCE, alone, has_ended, pool, sleep_ms, wait_until};

/// An argument that cannot be encoded: a pool that refuses new jobs says so before it tries.
#[derive(Debug)]
struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this argument cannot be encoded"))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Unencodable)
    }
}

fn take_unencodable(_: Unencodable) -> u8 {
    0
}

/// The error `apply_async(take_unencodable, ..)` gives.
fn refusal_of_unencodable(p: &Pool) -> ErrorKind {
    p.apply_async(take_unencodable, (Unencodable,))
        .unwrap_err()
        .kind()
        .clone()
}

fn square(n: u64) -> u64 {
    n * n
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn pid() -> u32 {
    std::process::id()
}

fn nap_then(ms: u64, v: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    v
}

fn the_whole_api(m: StartMethod) {
    let p = pool(m, 2);
    assert_eq!(p.processes(), 2);
    assert_eq!(p.apply(square, (12,)).unwrap(), 144);
    let r = p.apply_async(add, (2, 3)).unwrap();
    assert_eq!(r.get_timeout(PATIENCE).unwrap(), 5);
    assert!(r.ready());
    assert!(r.successful().unwrap());
    assert_eq!(r.get().unwrap(), 5, "get is repeatable");
    let expected: Vec<u64> = (0..100).map(|n| n * n).collect();
    assert_eq!(p.map(square, 0..100).unwrap(), expected);
    assert_eq!(
        p.map_async(square, 0..100)
            .unwrap()
            .get_timeout(PATIENCE)
            .unwrap(),
        expected
    );
    assert_eq!(p.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
    assert_eq!(
        p.starmap_async(add, [(5, 5)])
            .unwrap()
            .get_timeout(PATIENCE)
            .unwrap(),
        [10]
    );
    for size in [1, 3, 1000] {
        let c = p.chunksize(size);
        assert_eq!(c.map(square, 0..100).unwrap(), expected, "chunksize {size}");
        assert_eq!(c.starmap(add, [(1, 1)]).unwrap(), [2]);
        let v: Vec<u64> = c
            .imap(square, 0..100)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(v, expected);
        let mut u: Vec<u64> = c
            .imap_unordered(square, 0..100)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        u.sort();
        assert_eq!(u, expected);
    }
    assert!(matches!(
        p.chunksize(0).map(square, 0..3).unwrap_err().kind(),
        ErrorKind::InvalidArgument(_)
    ));
    assert_eq!(p.map(square, Vec::new()).unwrap(), Vec::<u64>::new());
    assert_eq!(p.imap(square, Vec::new()).unwrap().count(), 0);
    assert!(p.join().is_err(), "join before close is an error");
    assert!(
        matches!(refusal_of_unencodable(&p), ErrorKind::Codec(_)),
        "an open pool tries to encode"
    );
    p.close();
    assert_eq!(
        p.apply(square, (1,)).unwrap_err().kind(),
        &ErrorKind::PoolClosed
    );
    assert_eq!(
        p.map(square, 0..2).unwrap_err().kind(),
        &ErrorKind::PoolClosed
    );
    assert_eq!(refusal_of_unencodable(&p), ErrorKind::PoolClosed);
    p.join().unwrap();
    assert_eq!(refusal_of_unencodable(&p), ErrorKind::PoolClosed);
}

fn zero_processes_is_invalid(_m: StartMethod) {
    assert!(matches!(
        Pool::new(0).unwrap_err().kind(),
        ErrorKind::InvalidArgument(_)
    ));
    let e = Pool::builder()
        .processes(1)
        .max_tasks_per_child(0)
        .build()
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)));
}

fn join_waits_for_every_submitted_task(m: StartMethod) {
    let p = pool(m, 2);
    let rs: Vec<_> = (0..6)
        .map(|i| p.apply_async(nap_then, (50, i)).unwrap())
        .collect();
    p.close();
    p.join().unwrap();
    for (i, r) in rs.iter().enumerate() {
        assert!(r.ready());
        assert_eq!(r.get().unwrap(), i as u64);
    }
}

fn async_result_waits_and_timeouts(m: StartMethod) {
    let p = pool(m, 1);
    let r = p.apply_async(nap_then, (300, 7)).unwrap();
    assert_eq!(r.successful().unwrap_err().kind(), &ErrorKind::NotReady);
    assert!(!r.ready());
    let t = Instant::now();
    assert_eq!(
        r.wait_timeout(Duration::from_millis(20))
            .unwrap_err()
            .kind(),
        &ErrorKind::Timeout
    );
    assert!(
        t.elapsed() >= Duration::from_millis(20),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        r.get_timeout(Duration::from_millis(20)).unwrap_err().kind(),
        &ErrorKind::Timeout
    );
    // The task went on: the next wait gets it.
    assert_eq!(r.get_timeout(PATIENCE).unwrap(), 7);
    r.wait().unwrap();
    r.wait_timeout(Duration::ZERO).unwrap();
    assert!(r.ready());
}

fn boom(n: u64) -> u64 {
    if n % 7 == 3 {
        panic!("item {n} refuses");
    }
    n
}

fn panics_fail_only_their_item(m: StartMethod) {
    let p = pool(m, 2);
    let e = p.map(boom, 0..20).unwrap_err();
    let ErrorKind::Panicked(report) = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(
        report.message, "item 3 refuses",
        "the first failure by position"
    );
    assert!(report.process.contains("PoolWorker-"), "{report:?}");
    let items: Vec<_> = p.imap(boom, 0..20).unwrap().collect();
    for (n, item) in items.iter().enumerate() {
        assert_eq!(item.is_err(), n % 7 == 3, "item {n}: {item:?}");
    }
    let r = p.apply_async(boom, (3,)).unwrap();
    r.wait_timeout(PATIENCE).unwrap();
    assert!(!r.successful().unwrap());
    // The pool keeps working: a panic does not cost the worker.
    assert_eq!(p.apply(square, (3,)).unwrap(), 9);
}

/// Panics at 30 000 and at every 10 000 after it, each with its own message; 30 000 only after
/// 100 ms, so that later failures come first in time (the first by position must win).
fn boom_late(n: u64) -> u64 {
    if n == 30_000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    if n >= 30_000 && n.is_multiple_of(10_000) {
        panic!("item {n} refuses");
    }
    n * 2
}

/// A long map gives every value in order, and of several failures the first by position,
/// once the map has finished: every task ran, even those after a failure, as with a short map.
fn a_long_map_fails_first_by_position_once_every_item_ran(m: StartMethod) {
    let p = pool(m, 2);
    let squares = p.chunksize(1).map(square, 0..60_000u64).unwrap();
    assert_eq!(squares, (0..60_000u64).map(|n| n * n).collect::<Vec<_>>());
    for size in [1, 7] {
        let before = p.stats().tasks();
        let e = p.chunksize(size).map(boom_late, 0..60_000u64).unwrap_err();
        let ErrorKind::Panicked(report) = e.kind() else {
            panic!("{e:?}")
        };
        assert_eq!(
            report.message, "item 30000 refuses",
            "the first failure by position"
        );
        // Every item had run when the map returned, those after the failure too.
        assert_eq!(p.stats().tasks() - before, 60_000);
    }
    p.close();
    p.join().unwrap();
}

fn die(how: String) -> u64 {
    match how.as_str() {
        "abort" => std::process::abort(),
        "kill" => {
            let me = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &me])
                .status();
            std::thread::sleep(Duration::from_secs(30));
            0
        }
        "segv" => {
            // SAFETY: none; this deliberately writes through a null pointer to die by SIGSEGV.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
            0
        }
        "oom" => {
            let limit = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            // SAFETY: setrlimit reads a valid rlimit; it only lowers this process's limit.
            unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
            let v: Vec<u8> = vec![1; 4 << 30];
            v.len() as u64
        }
        _ => 1,
    }
}

fn a_dying_worker_fails_only_its_task(m: StartMethod) {
    let p = pool(m, 2);
    for (how, signal) in [
        ("abort", libc::SIGABRT),
        ("kill", libc::SIGKILL),
        ("segv", libc::SIGSEGV),
        ("oom", libc::SIGABRT),
    ] {
        let others: Vec<_> = (0..6)
            .map(|i| p.apply_async(nap_then, (20, i)).unwrap())
            .collect();
        let doomed = p.apply_async(die, (how.to_string(),)).unwrap();
        let e = doomed.get_timeout(PATIENCE).unwrap_err();
        let ErrorKind::WorkerLost(lost) = e.kind() else {
            panic!("{how}: {e:?}")
        };
        assert_eq!(lost.signal, Some(signal), "{how}: {e}");
        assert!(lost.process.contains("PoolWorker-"));
        for (i, r) in others.iter().enumerate() {
            assert_eq!(
                r.get_timeout(PATIENCE).unwrap(),
                i as u64,
                "{how}: a bystander failed"
            );
        }
    }
    // `apply` on an idle pool: its caller reads the worker's lane itself (no job made), and
    // a death there, quick (abort) or after the caller's spin (the kill), is told all the
    // same, and only to it.
    for (how, signal) in [("abort", libc::SIGABRT), ("kill", libc::SIGKILL)] {
        for _ in 0..3 {
            let e = p.apply(die, (how.to_string(),)).unwrap_err();
            let ErrorKind::WorkerLost(lost) = e.kind() else {
                panic!("apply, {how}: {e:?}")
            };
            assert_eq!(lost.signal, Some(signal), "apply, {how}: {e}");
            assert_eq!(p.apply(square, (5,)).unwrap(), 25, "after {how}");
        }
    }
    // Replacements keep the pool at full strength.
    let pids: HashSet<u32> = (0..40)
        .map(|_| p.apply_async(pid, ()).unwrap())
        .map(|r| r.get_timeout(PATIENCE).unwrap())
        .collect();
    assert!(!pids.is_empty() && pids.len() <= 2, "{pids:?}");
}

fn abort_on(n: u64) -> u64 {
    if n == 1234 {
        std::process::abort();
    }
    n
}

fn one_abort_in_2000_items_through_imap(m: StartMethod) {
    let p = pool(m, 2);
    let results: Vec<_> = p.imap(abort_on, 0..2000).unwrap().collect();
    assert_eq!(results.len(), 2000);
    for (n, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, n as u64),
            Err(e) => {
                assert_eq!(n, 1234, "{e}");
                assert!(
                    matches!(e.kind(), ErrorKind::WorkerLost(l) if l.signal == Some(libc::SIGABRT))
                );
            }
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
}

fn task_timeout_kills_within_milliseconds(m: StartMethod) {
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .task_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let ok = p.apply_async(nap_then, (10, 5)).unwrap();
    let began = Instant::now();
    let slow = p.apply_async(nap_then, (60_000, 0)).unwrap();
    let e = slow.get_timeout(PATIENCE).unwrap_err();
    let waited = began.elapsed();
    assert_eq!(e.kind(), &ErrorKind::TaskTimedOut);
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(ok.get_timeout(PATIENCE).unwrap(), 5);
    // A replacement took the killed worker's place.
    assert_eq!(p.map(square, 0..10).unwrap().len(), 10);
}

fn cancel_queued_and_running(m: StartMethod) {
    let p = pool(m, 1);
    let running = p.apply_async(nap_then, (60_000, 1)).unwrap();
    let queued: Vec<_> = (0..4)
        .map(|i| p.apply_async(nap_then, (10, i)).unwrap())
        .collect();
    assert!(queued[3].cancel());
    assert_eq!(queued[3].get().unwrap_err().kind(), &ErrorKind::Cancelled);
    // Give the long task time to start, so cancelling it takes the running path.
    std::thread::sleep(Duration::from_millis(200));
    assert!(running.cancel());
    assert_eq!(running.get().unwrap_err().kind(), &ErrorKind::Cancelled);
    for (i, r) in queued.iter().take(3).enumerate() {
        assert_eq!(
            r.get_timeout(PATIENCE).unwrap(),
            i as u64,
            "the others still run"
        );
    }
    assert!(!queued[0].cancel(), "a finished task cannot be cancelled");
    assert_eq!(queued[0].get().unwrap(), 0);
}

/// A value (with 2 KiB of ballast) that refuses to be encoded when it is 999.
#[derive(serde::Deserialize)]
struct Picky(u32, Vec<u8>);

impl Picky {
    fn new(n: u32) -> Picky {
        Picky(n, vec![0; 2048])
    }
}

impl serde::Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 999 {
            return Err(serde::ser::Error::custom("999 refuses to be encoded"));
        }
        (self.0, &self.1).serialize(s)
    }
}

fn picky(p: Picky) -> u32 {
    p.0
}

/// A map whose arguments fail to encode part-way (after earlier chunks, 2 MiB in all, were
/// already handed to workers) returns the codec error; the pool goes on and closes cleanly.
fn a_map_whose_later_items_cannot_be_encoded_fails_cleanly(m: StartMethod) {
    let p = pool(m, 2);
    for size in [1, 7, 100] {
        let e = p
            .chunksize(size)
            .map(picky, (0..1000).map(Picky::new))
            .unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Codec(_)), "{e}");
        assert!(e.to_string().contains("999 refuses"), "{e}");
    }
    assert_eq!(
        p.map(picky, (0..10).map(Picky::new)).unwrap(),
        (0..10).collect::<Vec<_>>()
    );
    p.close();
    p.join().unwrap();
}

/// A number that refuses to be encoded when it is 17 000: a failure after a whole batch of
/// one-item chunks (16 384) has been handed out, with none of its bytes flushing one sooner.
struct Fussy(u32);

impl serde::Serialize for Fussy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 17_000 {
            return Err(serde::ser::Error::custom("17000 refuses to be encoded"));
        }
        s.serialize_u32(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Fussy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fussy, D::Error> {
        u32::deserialize(d).map(Fussy)
    }
}

fn fussy(f: Fussy) -> u32 {
    f.0
}

/// A map of one-item chunks, more than a submission batch holds (16 384) twice over, comes
/// back whole and in order; one whose item fails to encode after a whole batch went out
/// returns the codec error, and the pool goes on.
fn a_map_of_more_chunks_than_a_batch_keeps_its_order(m: StartMethod) {
    let p = pool(m, 2);
    let squares = p.chunksize(1).map(square, 0..40_000u64).unwrap();
    assert_eq!(squares, (0..40_000u64).map(|n| n * n).collect::<Vec<_>>());
    let e = p
        .chunksize(1)
        .map(fussy, (0..20_000).map(Fussy))
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Codec(_)), "{e}");
    assert!(e.to_string().contains("17000 refuses"), "{e}");
    assert_eq!(
        p.chunksize(1).map(square, 0..5u64).unwrap(),
        [0, 1, 4, 9, 16]
    );
    p.close();
    p.join().unwrap();
}

/// A minute for `u64::MAX` (the tests terminate the pool long before), at once for any other
/// number.
fn slow_if_max(n: u64) -> u64 {
    if n == u64::MAX {
        std::thread::sleep(Duration::from_secs(60));
    }
    n
}

/// A `chunksize(1)` map of 3500 instant tasks but the one at `at`, which takes a minute.
fn slow_map(p: &Pool, at: u64) -> mproc::AsyncResult<Vec<u64>> {
    let input = (0..3500u64).map(|i| if i == at { u64::MAX } else { i });
    p.chunksize(1).map_async(slow_if_max, input).unwrap()
}

/// A worker holding many quick chunks wakes the dispatcher only once half of them are left
/// to start; the answers it published before starting a slow one are still read at once (the
/// dispatcher sleeps only briefly while a wake-up is put off), not when the slow one ends.
/// Where the slow one falls among what the worker holds varies, so four places are tried.
fn answers_before_a_slow_task_are_read_while_it_runs(m: StartMethod) {
    for at in [3000, 3111, 3222, 3333] {
        let p = pool(m, 1);
        let r = slow_map(&p, at);
        let began = Instant::now();
        while r.progress().done < at as usize {
            // Without the dispatcher's short sleep they would come with the slow one's answer.
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "{} of the {at} answers before the slow task read after {:?}",
                r.progress().done,
                began.elapsed()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!r.ready(), "the slow task is still running");
        p.terminate();
    }
}

/// The voluntary context switches of this process's pool threads so far (one pool: one
/// `mproc-pool` thread).
fn pool_thread_sleeps() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "mproc-pool" {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// While a slow task runs behind quick ones, the dispatcher sleeps until its answer: it does
/// not keep waking every 500 µs for answers a worker might be holding back (once the running
/// task has turned slow, none is).
fn the_dispatcher_rests_while_a_slow_task_runs(m: StartMethod) {
    // It counts the process's pool threads: another test's must not come and go meanwhile.
    if !alone() {
        return;
    }
    let p = pool(m, 1);
    let at = 3000;
    let r = slow_map(&p, at);
    let began = Instant::now();
    while r.progress().done < at as usize {
        assert!(
            began.elapsed() < PATIENCE,
            "answers before the slow task unread"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // Past the 1 ms that makes a running task slow, 300 ms of the slow one.
    std::thread::sleep(Duration::from_millis(20));
    let before = pool_thread_sleeps();
    std::thread::sleep(Duration::from_millis(300));
    let woke = pool_thread_sleeps().saturating_sub(before);
    assert!(!r.ready(), "the slow task is still running");
    // Every 500 µs would be some 600.
    assert!(woke < 60, "the dispatcher woke {woke} times in 300 ms");
    p.terminate();
}

/// `imap` yields one `Result` per input item, and says how many are left when the input's
/// length is known: through a whole stream, in order or not, with chunks of any size, and when
/// a chunk's items cannot be encoded (each of them gets the error). Of an input of unknown
/// length it promises nothing beyond what it holds.
fn imap_knows_how_many_results_are_left(m: StartMethod) {
    let p = pool(m, 2);
    for size in [1, 3, 10] {
        for ordered in [true, false] {
            let input: Vec<u64> = (0..10).collect();
            let mut it = match ordered {
                true => p.chunksize(size).imap(square, input).unwrap(),
                false => p.chunksize(size).imap_unordered(square, input).unwrap(),
            };
            for left in (1..=10).rev() {
                assert_eq!(it.size_hint(), (left, Some(left)), "size {size}");
                it.next().unwrap().unwrap();
            }
            assert_eq!(it.size_hint(), (0, Some(0)));
            assert!(it.next().is_none());
        }
    }
    // Items 998..1001 in chunks of 3: 999's chunk (999, 1000, 1001) fails as a whole.
    let it = p
        .chunksize(3)
        .imap(picky, (996..1005).map(Picky::new))
        .unwrap();
    assert_eq!(it.size_hint(), (9, Some(9)));
    let all: Vec<Result<u32, _>> = it.collect();
    assert_eq!(all.len(), 9);
    let failed: Vec<usize> = (0..9).filter(|&i| all[i].is_err()).collect();
    assert_eq!(failed, [3, 4, 5], "{all:?}");
    // Unknown length: no promise of an end.
    let it = p.imap(square, (0u64..).take_while(|&n| n < 5)).unwrap();
    assert_eq!(it.size_hint().1, None);
    assert_eq!(it.count(), 5);
}

/// Quick tasks submitted right behind a slow one are not held up by it: the worker that got
/// them behind the slow one gives back those it has not started, and another worker runs them.
fn quick_tasks_never_wait_behind_a_slow_one(m: StartMethod) {
    let p = pool(m, 2);
    // Warm up, so the pool has seen quick tasks and hands them out in deep windows.
    let warm: Vec<u64> = p.chunksize(1).map(square, 0..2000).unwrap();
    assert_eq!(warm.len(), 2000);
    let began = Instant::now();
    let slow = p.apply_async(nap_then, (3_000, 1)).unwrap();
    let quick: Vec<_> = (0..300)
        .map(|i| p.apply_async(square, (i,)).unwrap())
        .collect();
    for (i, r) in quick.iter().enumerate() {
        assert_eq!(r.get_timeout(PATIENCE).unwrap(), (i * i) as u64);
    }
    let took = began.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "the quick tasks took {took:?}: they waited for the slow one"
    );
    assert!(!slow.ready(), "the slow task is still running");
    // Deep windows put some quick ones behind the slow one: they were taken back.
    assert!(p.stats().taken_back > 0, "{}", p.stats());
    assert_eq!(slow.get_timeout(PATIENCE).unwrap(), 1);
}

/// Returns `n` bytes, but kills its own process once the memory file its answer goes in exists
/// (a large answer travels in one): in the middle of writing the answer.
fn die_while_answering(n: usize) -> serde_bytes::ByteBuf {
    let bytes = bytes_of(n);
    std::thread::spawn(move || {
        while message_files() == 0 {
            std::thread::yield_now();
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    });
    bytes
}

/// A worker killed in the middle of sending a large answer (while it writes the memory file
/// the answer goes in) is a lost worker (the signal says so), not a protocol error, and never
/// a garbled answer; the pool goes on.
fn a_worker_killed_mid_answer_is_lost_not_garbled(m: StartMethod) {
    let p = pool(m, 1);
    for _ in 0..3 {
        match p
            .apply_async(die_while_answering, (64 << 20,))
            .unwrap()
            .get_timeout(PATIENCE)
        {
            Err(e) => assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}"),
            // The kill came after the answer was sent (a starved killer thread): then the
            // answer is whole, never garbled.
            Ok(v) => assert!(
                v.len() == 64 << 20 && v.iter().all(|&b| b == 7),
                "a garbled answer of {} bytes",
                v.len()
            ),
        }
    }
    assert_eq!(p.apply(square, (4,)).unwrap(), 16);
}

fn nap_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn touch(path: String) -> u32 {
    std::fs::write(path, b"ran").unwrap();
    std::process::id()
}

/// A task already handed to a worker (waiting behind the one it runs) is cancelled without
/// running and without costing the worker.
fn cancelling_a_task_a_worker_holds_skips_it(m: StartMethod) {
    let p = pool(m, 1);
    let marker = std::env::temp_dir().join(format!(
        "mproc-cancel-{}-{m}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_file(&marker);
    let first = p.apply_async(nap_then_pid, (300,)).unwrap();
    let held = p
        .apply_async(touch, (marker.to_string_lossy().into_owned(),))
        .unwrap();
    let after = p.apply_async(pid, ()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(held.cancel());
    assert_eq!(
        held.get_timeout(PATIENCE).unwrap_err().kind(),
        &ErrorKind::Cancelled
    );
    let a = first.get_timeout(PATIENCE).unwrap();
    let c = after.get_timeout(PATIENCE).unwrap();
    assert_eq!(a, c, "the worker was not replaced");
    assert!(!marker.exists(), "the cancelled task never ran");
}

fn terminate_and_drop_neither_hang_nor_orphan(m: StartMethod) {
    let p = pool(m, 2);
    let pids: Vec<u32> = (0..2)
        .map(|_| p.apply_async(pid, ()).unwrap())
        .map(|r| r.get_timeout(PATIENCE).unwrap())
        .collect();
    let pending: Vec<_> = (0..4)
        .map(|_| p.apply_async(nap_then, (60_000, 0)).unwrap())
        .collect();
    let began = Instant::now();
    drop(p);
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "drop took {:?}",
        began.elapsed()
    );
    for r in &pending {
        assert_eq!(
            r.get_timeout(PATIENCE).unwrap_err().kind(),
            &ErrorKind::Terminated
        );
    }
    for pid in pids {
        wait_until("the pool's workers are gone", || has_ended(pid));
    }
}

fn futures_under_two_executors(m: StartMethod) {
    let p = pool(m, 2);
    let r = p.apply_async(square, (9,)).unwrap();
    assert_eq!(futures::executor::block_on(r).unwrap(), 81);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (a, b) = (
        p.apply_async(nap_then, (50, 1)).unwrap(),
        p.map_async(square, 0..4).unwrap(),
    );
    let (a, b) = rt.block_on(async {
        tokio::time::timeout(PATIENCE, async { (a.await, b.await) })
            .await
            .expect("bounded")
    });
    assert_eq!((a.unwrap(), b.unwrap()), (1, vec![0, 1, 4, 9]));
}

fn callbacks_see_values_and_errors(m: StartMethod) {
    let p = pool(m, 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx2 = tx.clone();
    p.apply_async(square, (5,))
        .unwrap()
        .on_complete(move |r| tx.send(r.map_err(|e| e.to_string())).unwrap());
    p.apply_async(boom, (3,))
        .unwrap()
        .on_complete(move |r| tx2.send(r.map_err(|e| e.to_string())).unwrap());
    let mut got: Vec<_> = (0..2).map(|_| rx.recv_timeout(PATIENCE).unwrap()).collect();
    got.sort();
    assert_eq!(got[0], Ok(25));
    assert!(got[1].as_ref().unwrap_err().contains("item 3 refuses"));
}

static SETTING: Mutex<Option<String>> = Mutex::new(None);

fn remember(s: String) {
    *SETTING.lock().unwrap() = Some(s);
}

fn recall() -> Option<String> {
    SETTING.lock().unwrap().clone()
}

fn broken_init() {
    panic!("cannot connect");
}

/// A callback runs whoever completes its job: the dispatcher, or the caller waiting in `get`
/// (which reads the workers' answers itself and keeps the callbacks of the jobs it completes
/// until it has let go of the pool). Many quick rounds, so the caller completes some; a
/// callback dropped unrun drops its sender, which fails the round at once.
fn a_callback_runs_whoever_completes_its_job(m: StartMethod) {
    let p = pool(m, 1);
    assert_eq!(p.apply(square, (1,)).unwrap(), 1); // ready
    for i in 0..300u64 {
        let (tx, rx) = std::sync::mpsc::channel();
        let r = p.apply_async(square, (i,)).unwrap();
        r.on_complete(move |v| tx.send(v.map_err(|e| e.to_string())).unwrap());
        assert_eq!(r.get().unwrap(), i * i);
        assert_eq!(rx.recv_timeout(PATIENCE), Ok(Ok(i * i)), "round {i}");
    }
}

/// A large value of `n` bytes (a task's answer).
fn bytes_of(n: usize) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(vec![7u8; n])
}

/// How many memory files for messages this process holds open.
fn message_files() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:mproc-message"))
        })
        .count()
}

/// A worker's large answers go into a memory file of its own, which it keeps for the next
/// one (lent to its tasks for its whole life), not into a buffer sent on its socket.
fn a_workers_large_answers_go_into_a_file_it_keeps(m: StartMethod) {
    let p = pool(m, 1);
    let before = p.apply(message_files, ()).unwrap();
    for _ in 0..3 {
        let got = p.apply(bytes_of, (400_000,)).unwrap();
        assert!(got.len() == 400_000 && got.iter().all(|&b| b == 7));
    }
    // Kept (one, or a few if an answer was still being read when the next one was made);
    // a small answer, as this count, goes as bytes.
    let after = p.apply(message_files, ()).unwrap();
    assert!(after > before && after <= before + 3, "{before} -> {after}");
}

fn initializer_runs_first_and_failures_surface(m: StartMethod) {
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .initializer(remember, ("ready".to_string(),))
        .build()
        .unwrap();
    assert_eq!(
        p.map(|_: u8| recall(), 0..8).unwrap(),
        vec![Some("ready".to_string()); 8]
    );

    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .initializer(broken_init, ())
        .build()
        .unwrap();
    let e = p
        .apply_async(square, (2,))
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap_err();
    let ErrorKind::InitializerFailed(cause) = e.kind() else {
        panic!("{e:?}")
    };
    assert!(
        matches!(cause.kind(), ErrorKind::Panicked(r) if r.message == "cannot connect"),
        "{e}"
    );
    // No respawn loop: later submissions fail at once with the same cause.
    wait_until("the pool knows it is broken", || {
        p.apply_async(square, (1,)).is_err()
    });
    assert!(matches!(
        p.map(square, 0..3).unwrap_err().kind(),
        ErrorKind::InitializerFailed(_)
    ));
    assert!(matches!(
        refusal_of_unencodable(&p),
        ErrorKind::InitializerFailed(_)
    ));
}

fn max_tasks_per_child_replaces_workers(m: StartMethod) {
    let p = Pool::builder()
        .processes(1)
        .start_method(m)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..6).map(|_| p.apply(pid, ()).unwrap()).collect();
    let distinct: HashSet<_> = pids.iter().collect();
    assert_eq!(distinct.len(), 3, "{pids:?}");
}

fn imap_pulls_lazily_with_bounded_work_in_flight(m: StartMethod) {
    let p = pool(m, 2);
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut it = p.imap(square, endless).unwrap();
    for n in 0..50u64 {
        assert_eq!(it.next().unwrap().unwrap(), n * n);
    }
    let ahead = pulled.load(Ordering::Relaxed) - 50;
    assert!(ahead <= 2 * 4, "{ahead} items pulled ahead of the consumer");
    drop(it);
    // Dropping the stream cancelled what it had in flight; the pool is still fine.
    assert_eq!(p.apply(square, (4,)).unwrap(), 16);
}

/// About 20 µs of work, so the workers are busy (not waiting for the consumer) when the killer
/// strikes: 100,000 of them keep two workers busy for about a second.
fn busy_echo(n: u64) -> (u64, u32) {
    let until = Instant::now() + Duration::from_micros(20);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    (n, std::process::id())
}

/// Its argument and the worker's pid, at once.
fn quick_echo(n: u64) -> (u64, u32) {
    (n, std::process::id())
}

/// Calls back to back from four threads at once, workers killed at random meanwhile: the
/// waiting threads take turns reading the lanes, and the pool's thread takes the state from
/// them when a worker dies or wakes it. Each call gives its own value or `WorkerLost`, none
/// hangs, and a kill loses at most the one call its worker was running.
fn back_to_back_calls_from_threads_with_workers_killed_at_random(m: StartMethod) {
    let p = pool(m, 2);
    let (pids, stop, killer) = random_killer(Duration::from_millis(20));
    let began = Instant::now();
    let (values, lost) = std::thread::scope(|s| {
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (p, pids) = (&p, &pids);
                s.spawn(move || {
                    let (mut values, mut lost) = (0u64, 0u64);
                    let mut i = 0;
                    while i < 500 || began.elapsed() < Duration::from_millis(400) {
                        let x = (t << 32) | i;
                        i += 1;
                        // Half by `apply`, whose caller may read a lane itself (no job
                        // made), half by a result's `get`.
                        let got = match i % 2 {
                            0 => p.apply(quick_echo, (x,)),
                            _ => p
                                .apply_async(quick_echo, (x,))
                                .unwrap()
                                .get_timeout(PATIENCE),
                        };
                        match got {
                            Ok((v, worker)) => {
                                assert_eq!(v, x, "another call's value");
                                values += 1;
                                pids.lock().unwrap().insert(worker);
                            }
                            Err(e) => {
                                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
                                lost += 1;
                            }
                        }
                    }
                    (values, lost)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap() as u64;
    eprintln!("BACK TO BACK values={values} lost={lost} kills={kills}");
    assert!(kills > 0 && values > 0, "{kills} kills, {values} values");
    assert!(lost <= kills, "{lost} calls lost for {kills} kills");
}

/// Calls nobody waits for: their answers are read by the pool's thread, which a worker wakes
/// (after its grace for a reader coming back) as no caller reads the lanes; and again while
/// another thread calls `apply` back to back, saying now and then that it reads them.
fn answers_nobody_waits_for_are_read(m: StartMethod) {
    let p = pool(m, 1);
    let ready_soon = |r: &mproc::AsyncResult<u64>| {
        let deadline = Instant::now() + PATIENCE;
        while !r.ready() {
            assert!(
                Instant::now() < deadline,
                "an answer nobody waited for was left unread"
            );
            std::thread::yield_now();
        }
    };
    for x in 0..100u64 {
        let r = p.apply_async(square, (x,)).unwrap();
        ready_soon(&r);
        assert_eq!(r.get().unwrap(), x * x);
    }
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(p.apply(square, (3,)).unwrap(), 9);
            }
        });
        for x in 0..300u64 {
            let r = p.apply_async(square, (x,)).unwrap();
            ready_soon(&r);
            assert_eq!(r.get().unwrap(), x * x);
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// Worker pids to kill (the test adds each one it learns of), a switch to stop, and a thread
/// that SIGKILLs one of them, picked at random, every `every`; it returns how many it killed.
/// A pid it killed is never killed again (a late answer may name it after its death, and
/// the number may since belong to another process).
type Killer = (
    Arc<Mutex<HashSet<u32>>>,
    Arc<AtomicBool>,
    std::thread::JoinHandle<usize>,
);

fn random_killer(every: Duration) -> Killer {
    let pids = Arc::new(Mutex::new(HashSet::<u32>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (pids, stop) = (Arc::clone(&pids), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut killed = HashSet::new();
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(every);
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let candidates: Vec<u32> = pids
                    .lock()
                    .unwrap()
                    .iter()
                    .copied()
                    .filter(|pid| !killed.contains(pid))
                    .collect();
                if let Some(&victim) = candidates.get(seed as usize % candidates.len().max(1)) {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
                    pids.lock().unwrap().remove(&victim);
                    killed.insert(victim);
                }
            }
            killed.len()
        })
    };
    (pids, stop, killer)
}

/// The bytes of large task `i`: a pattern of its own, so that a task run with another's bytes
/// (or a mix of two) is caught.
fn pattern(i: u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|j| (i.wrapping_mul(31) as usize + j * 7) as u8)
        .collect()
}

/// Whether `data` is large task `i`'s own pattern, after a nap of up to a millisecond; and the
/// worker's pid.
fn is_own_pattern((i, data): (u64, Vec<u8>)) -> (bool, u32) {
    std::thread::sleep(Duration::from_micros(i % 1000));
    (data == pattern(i, data.len()), std::process::id())
}

/// Large tasks (arguments in the caller's memory files, sent again after a worker's death, let
/// go when failed) with workers SIGKILLed at random every few milliseconds: every task either
/// ran on its own bytes or failed `WorkerLost`; none ran on another's.
fn large_tasks_with_workers_killed_at_random(m: StartMethod) {
    let p = pool(m, 2);
    let n = 300_000;
    let tasks = 600u64;
    let (pids, stop, killer) = random_killer(Duration::from_millis(7));
    let began = Instant::now();
    let (mut ran, mut lost) = (0u64, 0u64);
    let items = (0..tasks).map(|i| (i, pattern(i, n)));
    for r in p
        .chunksize(1)
        .imap_unordered(is_own_pattern, items)
        .unwrap()
    {
        match r {
            Ok((own, worker)) => {
                assert!(own, "a task ran on bytes not its own");
                ran += 1;
                pids.lock().unwrap().insert(worker);
            }
            Err(e) => {
                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
                lost += 1;
            }
        }
        assert!(began.elapsed() < Duration::from_secs(120), "ran too long");
    }
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    assert_eq!(ran + lost, tasks, "every task is accounted for");
    assert!(
        kills > 0 && lost > 0,
        "the test must kill workers ({kills} kills)"
    );
    assert!(lost <= kills as u64, "{lost} lost for {kills} kills");
}

fn stress_100k_tasks_with_workers_killed_at_random(m: StartMethod) {
    let p = pool(m, 2);
    let (pids, stop, killer) = random_killer(Duration::from_millis(25));
    let began = Instant::now();
    let (mut values, mut lost) = (0usize, 0usize);
    for r in p
        .chunksize(50)
        .imap_unordered(busy_echo, 0..100_000)
        .unwrap()
    {
        match r {
            Ok((_, worker)) => {
                values += 1;
                pids.lock().unwrap().insert(worker);
            }
            Err(e) => {
                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
                lost += 1;
            }
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "stress test ran too long"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    eprintln!(
        "STRESS values={values} lost={lost} kills={kills} took={:?}",
        began.elapsed()
    );
    assert_eq!(values + lost, 100_000, "every task is accounted for");
    // A kill fails at most the one chunk (of 50) its worker was running.
    assert!(lost <= kills * 50, "{lost} lost for {kills} kills");
    assert!(
        kills > 0 && lost > 0,
        "the test must actually kill workers ({kills} kills)"
    );
}

fn callback_panics() {
    panic!("a careless callback");
}

/// Waits (bounded) until `gate` is set: holds the pool's only worker until the test is ready.
fn held_until(gate: mproc::Event) -> bool {
    gate.wait_timeout(PATIENCE).is_ok()
}

fn a_panicking_callback_does_not_take_the_pool_down(m: StartMethod) {
    let p = pool(m, 1);
    // The task is answered after its callback is attached (one already answered would run
    // its callback on this thread at once, whose panic would be this test's).
    let gate = mproc::Event::new().unwrap();
    let held = p.apply_async(held_until, (gate.clone(),)).unwrap();
    p.apply_async(square, (2,))
        .unwrap()
        .on_complete(|_| callback_panics());
    gate.set();
    assert!(held.get_timeout(PATIENCE).unwrap());
    let r = p.apply_async(square, (3,)).unwrap();
    assert_eq!(r.get_timeout(PATIENCE).unwrap(), 9);
    p.close();
    p.join().unwrap();
}

fn terminate_from_a_callback_does_not_deadlock(m: StartMethod) {
    let p = Arc::new(pool(m, 1));
    let inner = Arc::clone(&p);
    let (tx, rx) = std::sync::mpsc::channel();
    p.apply_async(square, (2,)).unwrap().on_complete(move |_| {
        inner.terminate();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(PATIENCE)
        .expect("the callback ran to its end");
    p.terminate();
    assert_eq!(
        p.apply(square, (1,)).unwrap_err().kind(),
        &ErrorKind::PoolClosed
    );
    assert_eq!(refusal_of_unencodable(&p), ErrorKind::PoolClosed);
}

/// A thread waiting in `get` may pick the answer up itself (the dispatcher asleep): callbacks
/// it completes run after it has let go of the pool's state, so one that terminates the
/// pool (which waits for the dispatcher) cannot deadlock it.
fn a_callback_may_stop_the_pool_whoever_completes_its_job(m: StartMethod) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..30 {
            let p = Arc::new(pool(m, 1));
            // A first answer, so the worker is ready and the next one comes back quickly.
            assert_eq!(p.apply(square, (1,)).unwrap(), 1);
            let inner = Arc::clone(&p);
            let r = p.apply_async(square, (2,)).unwrap();
            r.on_complete(move |v| {
                assert_eq!(v.unwrap(), 4);
                inner.terminate();
            });
            assert_eq!(r.get().unwrap(), 4);
            p.terminate();
            tx.send(()).unwrap();
        }
    });
    for round in 0..30 {
        rx.recv_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("round {round} did not finish: {e}"));
    }
}

fn an_imap_made_before_close_is_served_to_the_end(m: StartMethod) {
    let p = pool(m, 2);
    let it = p.imap(square, 0..100).unwrap();
    p.close();
    let v: Vec<u64> = it.map(Result::unwrap).collect();
    assert_eq!(v, (0..100).map(|n| n * n).collect::<Vec<_>>());
    p.join().unwrap();
}

/// An `imap` whose last chunks are submitted while a closed pool's dispatcher is deciding
/// whether it is done (idle, no stream open) must still be served: its input runs out (the
/// stream closes) just after the dispatcher took its commands, with the last chunk still in
/// them. Many short rounds, so the moment comes up.
fn an_imap_ending_as_a_closed_pool_looks_idle_is_served(m: StartMethod) {
    for round in 0..200u64 {
        let p = pool(m, 2);
        let it = p.imap(square, round..round + 20).unwrap();
        p.close();
        let v: Vec<u64> = it.map(Result::unwrap).collect();
        assert_eq!(v, (round..round + 20).map(|n| n * n).collect::<Vec<_>>());
        p.join().unwrap();
    }
}

fn task_timeout_is_per_task_even_in_chunks(m: StartMethod) {
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .task_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    // 16 tasks of 100 ms in chunks of 4: each chunk runs 400 ms, each task well within 500 ms.
    let v = p
        .chunksize(4)
        .starmap(nap_then, (0..16).map(|i| (100, i)))
        .unwrap();
    assert_eq!(v, (0..16).collect::<Vec<u64>>());
}

fn rotation_never_exceeds_the_pool_size(m: StartMethod) {
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let began = Instant::now();
    let v = p.starmap(nap_then, (0..8).map(|i| (150, i))).unwrap();
    assert_eq!(v.len(), 8);
    // 8 tasks of 150 ms on 2 processes take at least 4 rounds.
    assert!(
        began.elapsed() >= Duration::from_millis(550),
        "ran more than 2 at once: {:?}",
        began.elapsed()
    );
}

/// Echoes `data` back (of any size) with the worker's pid.
fn echo_bytes(data: Vec<u8>) -> (Vec<u8>, u32) {
    (data, std::process::id())
}

/// The length of `data`, after setting `e` and reading `b`: a large payload and handles in one
/// task.
fn large_with_handles(data: Vec<u8>, e: mproc::Event, b: mproc::Buffer<u64>) -> (usize, u64) {
    e.set();
    (data.len(), b.iter().sum())
}

/// A task whose payload travels in a memory file also carries its handles' descriptors (the
/// file's comes after them): each reaches its place, task after task.
fn a_large_task_keeps_its_handles(m: StartMethod) {
    let p = pool(m, 1);
    for round in 0..4u64 {
        let e = mproc::Event::new().unwrap();
        let b = mproc::Buffer::from_slice(&[round, 1, 2]).unwrap();
        let n = 300_000 + round as usize * 1_000_000;
        let got = p
            .apply(large_with_handles, (vec![3u8; n], e.clone(), b))
            .unwrap();
        assert_eq!(got, (n, round + 3));
        assert!(e.is_set());
    }
}

/// `n` bytes, for an answer much larger than its task.
fn grow(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

/// `n` numbers from `from` on: a large answer whose every element says which call made it.
fn numbers(n: usize, from: f64) -> Vec<f64> {
    (0..n).map(|i| from + i as f64).collect()
}

/// A large answer is read where it arrived (the worker's memory file) whenever `get` is
/// called, however often: the worker writes its next large answers elsewhere until this one
/// is dropped, and then reuses the file.
fn a_large_answer_kept_unread_is_not_overwritten(m: StartMethod) {
    let p = pool(m, 1);
    let n = 1 << 17; // 1 MiB of f64
    let kept = p.apply_async(numbers, (n, 0.5)).unwrap();
    kept.wait_timeout(PATIENCE).unwrap();
    for round in 1..6 {
        let from = round as f64 * 1e6;
        let got = p.apply(numbers, (n, from)).unwrap();
        assert!(got == numbers(n, from), "answer {round}");
        assert!(
            kept.get().unwrap() == numbers(n, 0.5),
            "kept, after answer {round}"
        );
    }
    drop(kept);
    // Its file is free again: answers keep coming back whole.
    for round in 6..10 {
        let from = round as f64 * 1e6;
        assert!(p.apply(numbers, (n, from)).unwrap() == numbers(n, from));
    }
}

/// The sum of `data`'s bytes, after a nap of `ms`; `die` aborts the worker instead.
fn sum_or_die(data: Vec<u8>, ms: u64, die: bool) -> u64 {
    if die {
        std::process::abort();
    }
    std::thread::sleep(Duration::from_millis(ms));
    data.iter().map(|&b| u64::from(b)).sum()
}

/// The inode numbers of this process's memory files for large tasks' arguments (named
/// `mproc-task`), sorted.
fn task_files() -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut found: Vec<u64> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let target = std::fs::read_link(&path).ok()?;
            target
                .to_string_lossy()
                .contains("memfd:mproc-task")
                .then(|| std::fs::metadata(&path).ok().map(|m| m.ino()))?
        })
        .collect();
    found.sort_unstable();
    found
}

/// A large task from a child (a fork child's parent holds large tasks' memory files): its
/// sum, and how many such files the child's pool keeps afterwards, of its own.
fn large_task_in_a_child(m: StartMethod) -> (u64, usize) {
    let p = pool(m, 1);
    let sum = p.apply(sum_or_die, (vec![9; 300_000], 0, false)).unwrap();
    (sum, task_files().len())
}

/// Large tasks' arguments are encoded straight into memory files of the caller's (at most
/// sixteen at once; past that, into buffers the dispatcher copies into files of its own). Forty
/// in flight, one of which kills its worker: the tasks behind it in that worker's order go out
/// again from the same files, and every answer is the sum of its own arguments. Files are
/// reused call after call, a fork child taken while some are held makes its own, and once the
/// pool is gone the caller holds no more descriptors than before.
fn large_tasks_in_files_survive_a_lost_worker(m: StartMethod) {
    if !alone() {
        return;
    }
    // Sockets counted apart: a fork server's client holds the sockets of the spares it makes
    // ahead, from two to five socket pairs of them as they are lent, used and made (see
    // `forkserver::Kit`).
    let fds = || {
        let (mut sockets, mut others) = (0, 0);
        for e in std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(Result::ok)
        {
            match std::fs::read_link(e.path()) {
                Ok(t) if t.to_string_lossy().starts_with("socket:") => sockets += 1,
                Ok(_) => others += 1,
                Err(_) => {}
            }
        }
        (others, sockets)
    };
    drop(pool(m, 1)); // the fork server, if any, started
    let before = fds();
    let n = 300_000;
    {
        let p = pool(m, 2);
        let results: Vec<_> = (0..40u8)
            .map(|i| p.apply_async(sum_or_die, (vec![i; n], 1, i == 5)).unwrap())
            .collect();
        for (i, r) in results.iter().enumerate() {
            let got = r.get_timeout(PATIENCE);
            if i == 5 {
                let e = got.unwrap_err();
                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
            } else {
                assert_eq!(got.unwrap(), (i * n) as u64, "task {i}");
            }
        }
        let mut kept = Vec::new();
        for round in 0..5u8 {
            let got = p.apply(sum_or_die, (vec![round; n], 0, false)).unwrap();
            assert_eq!(got, u64::from(round) * n as u64, "round {round}");
            let now = task_files();
            assert!(!now.is_empty() && now.len() <= 2, "{now:?}");
            if round > 0 {
                assert_eq!(now, kept, "the same files, reused, after call {round}");
            }
            kept = now;
        }
        let held = p.apply_async(sum_or_die, (vec![7; n], 300, false)).unwrap();
        let mut child = mproc::Process::new(large_task_in_a_child, (m,)).start_method(m);
        child.start().unwrap();
        let (sum, files) = child.join_timeout(PATIENCE).unwrap();
        assert_eq!(sum, 9 * n as u64);
        assert!(files >= 1, "the child's pool kept no file of its own");
        assert_eq!(held.get_timeout(PATIENCE).unwrap(), 7 * n as u64);
    }
    wait_until("the pool's descriptors are closed", || {
        let (others, sockets) = fds();
        others <= before.0 && sockets <= before.1 + 6
    });
}

/// Large tasks (arguments in the caller's memory files) taken back from a worker busy with a
/// slow one, and some cancelled, while more large tasks reuse the files freed: every answer
/// is the sum of its own arguments.
fn large_tasks_taken_back_or_cancelled_keep_their_arguments(m: StartMethod) {
    let n = 300_000;
    let p = pool(m, 2);
    for round in 0..4u8 {
        let slow = p.apply_async(sum_or_die, (vec![1; n], 300, false)).unwrap();
        let value = |i: u8| i.wrapping_add(round * 20);
        let quick: Vec<_> = (0..12u8)
            .map(|i| {
                p.apply_async(sum_or_die, (vec![value(i); n], 5, false))
                    .unwrap()
            })
            .collect();
        for r in quick.iter().skip(3).step_by(4) {
            r.cancel();
        }
        for k in 0..10u8 {
            let v = 100 + k + round;
            let got = p.apply(sum_or_die, (vec![v; n], 0, false)).unwrap();
            assert_eq!(got, u64::from(v) * n as u64, "round {round} call {k}");
        }
        for (i, r) in quick.iter().enumerate() {
            match r.get_timeout(PATIENCE) {
                Ok(got) => assert_eq!(got, u64::from(value(i as u8)) * n as u64, "{round}/{i}"),
                Err(e) => assert!(
                    i % 4 == 3 && matches!(e.kind(), ErrorKind::Cancelled),
                    "{round}/{i}: {e}"
                ),
            }
        }
        assert_eq!(slow.get_timeout(PATIENCE).unwrap(), n as u64);
    }
    assert!(
        p.stats().taken_back > 0,
        "nothing was taken back: {}",
        p.stats()
    );
}

/// Tasks and answers on both sides of the lane's frame limit, interleaved: they come back in
/// order, intact, from the same worker (nothing is mistaken for a protocol error). Among them,
/// every few bytes across the band where a frame is sized before it is encoded (its bytes
/// within `FRAME_WORDS` of the 32 KiB limit) and where it stops fitting.
fn large_and_small_frames_keep_their_order(m: StartMethod) {
    let p = pool(m, 1);
    let mut sizes = vec![
        10, 200_000, 5, 1_000_000, 0, 40_000, 32_700, 32_800, 8, 3_000_000, 1, 262_136, 262_144,
    ];
    sizes.extend((32_640..32_776).step_by(4));
    let echoes: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| p.apply_async(echo_bytes, (vec![i as u8; n],)).unwrap())
        .collect();
    let grown: Vec<_> = sizes
        .iter()
        .map(|&n| p.apply_async(grow, (n,)).unwrap())
        .collect();
    let mut pids = HashSet::new();
    for (i, (r, &n)) in echoes.iter().zip(&sizes).enumerate() {
        let (data, worker) = r.get_timeout(PATIENCE).unwrap();
        assert_eq!(data, vec![i as u8; n], "echo {i} of {n} bytes");
        pids.insert(worker);
    }
    for (r, &n) in grown.iter().zip(&sizes) {
        assert_eq!(r.get_timeout(PATIENCE).unwrap(), grow(n));
    }
    // The same again through one map with chunks of mixed sizes.
    let items: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![7; n]).collect();
    for (got, want) in p
        .chunksize(2)
        .map(echo_bytes, items.clone())
        .unwrap()
        .iter()
        .zip(&items)
    {
        assert_eq!(&got.0, want);
        pids.insert(got.1);
    }
    assert_eq!(pids.len(), 1, "one worker served everything: {pids:?}");
}

/// Where this process (a pool worker) maps its lane.
fn lane_start() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| l.contains("mproc-lane"))
        .expect("a pool worker maps its lane");
    usize::from_str_radix(line.split('-').next().unwrap(), 16).unwrap()
}

/// Overwrites `offset` (a header word) of this worker's lane; then writes `marker` (if any)
/// and naps.
fn scribble_on_lane(offset: usize, marker: String, nap_ms: u64) -> u32 {
    let start = lane_start();
    // SAFETY: the lane's header is mapped read-write at `start`; this deliberately corrupts it.
    unsafe { std::ptr::write_volatile((start + offset) as *mut u64, 1 << 40) };
    nap_after(marker, nap_ms)
}

/// Writes a frame word longer than any frame at the start of each of the first 1024 lines of
/// this worker's ring of answers, as the lane writes a frame's word (the stamp of its position,
/// `(position / 8) | 1`, then the length), where its next answer goes; then writes `marker`
/// and naps.
fn scribble_on_answers(marker: String, nap_ms: u64) -> u32 {
    // The lane's header and its ring toward the worker come first.
    let ring = lane_start() + 16384 + 256 * 1024;
    for pos in (0..64 * 1024u64).step_by(64) {
        let word = (((pos >> 3) | 1) << 32) | 0xffff_0000;
        // SAFETY: the lane's ring of answers is mapped read-write past its header and the
        // ring toward the worker; this deliberately corrupts it.
        unsafe { std::ptr::write_volatile((ring + pos as usize) as *mut u64, word) };
    }
    nap_after(marker, nap_ms)
}

/// Writes `marker` (if any), naps, and says which process did.
fn nap_after(marker: String, nap_ms: u64) -> u32 {
    if !marker.is_empty() {
        std::fs::write(marker, b"done").unwrap();
    }
    std::thread::sleep(Duration::from_millis(nap_ms));
    std::process::id()
}

/// A worker that corrupts the shared memory it talks through is killed and replaced; the task
/// it ran fails (or, if the damage only shows later, the next task goes elsewhere); nothing
/// hangs and the pool goes on.
fn a_worker_that_corrupts_its_lane_is_replaced(m: StartMethod) {
    // The position the worker reads from (the dispatcher's view of free space).
    let p = pool(m, 1);
    let first = p
        .apply_async(scribble_on_lane, (0, String::new(), 0))
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap();
    let next = p
        .apply_async(pid, ())
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap();
    assert_ne!(first, next, "the corrupt worker was replaced");
    assert_eq!(p.apply(square, (9,)).unwrap(), 81);
    // The same through `apply`, whose caller reads the lane itself (no job made): the damage
    // is seen at the next push, and that call goes to the replacement.
    let first = p.apply(scribble_on_lane, (0, String::new(), 0)).unwrap();
    let next = p.apply(pid, ()).unwrap();
    assert_ne!(first, next, "the corrupt worker was replaced (apply)");
    // Where the worker writes its next answer, damaged while it naps: the dispatcher sees it
    // when another worker's answer wakes it.
    let p = pool(m, 2);
    let marker = std::env::temp_dir().join(format!(
        "mproc-scribble-{}-{m}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_file(&marker);
    let bad = p
        .apply_async(
            scribble_on_answers,
            (marker.to_string_lossy().into_owned(), 60_000),
        )
        .unwrap();
    // The dispatcher may see the damage before the marker is written (reading the lanes as
    // it starts the second worker, say): the worker is killed then, and the task has failed.
    wait_until("the worker has damaged its lane", || {
        marker.exists() || bad.ready()
    });
    let _ = std::fs::remove_file(&marker);
    assert_eq!(p.apply(square, (3,)).unwrap(), 9);
    let e = bad.get_timeout(PATIENCE).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Protocol(_)), "{e}");
    let all: Vec<u64> = p.map(square, 0..100).unwrap();
    assert_eq!(all.len(), 100);
    // Where its answers go, damaged while its caller reads the lane itself (`apply`, an idle
    // worker): each call gives its own value or `Protocol`, a damage is seen, and the pool
    // goes on with a replacement. A reader sees the damage only if it looks at a damaged line
    // before the worker's next answer covers it: the damaging call naps 5 ms after it (the
    // caller spins on its answer's line for the first 200 µs), and rounds go on until a damage
    // was seen (under load the two may not run together in a round: three rounds saw none in
    // 25 runs of 30 with both CPUs kept busy).
    let p = pool(m, 1);
    let mut seen = 0;
    for round in 0..40u64 {
        if seen > 0 && round >= 3 {
            break;
        }
        let calls = std::iter::once(None).chain((0..5).map(Some));
        for call in calls {
            let got = match call {
                None => p
                    .apply(scribble_on_answers, (String::new(), 5))
                    .map(|_| None),
                Some(i) => p.apply(square, (round * 10 + i,)).map(Some),
            };
            match got {
                Ok(Some(v)) => assert_eq!(Some(v), call.map(|i| (round * 10 + i).pow(2))),
                Ok(None) => {}
                Err(e) => {
                    assert!(matches!(e.kind(), ErrorKind::Protocol(_)), "{e}");
                    seen += 1;
                }
            }
        }
    }
    assert!(seen > 0, "no damage seen");
    assert_eq!(p.apply(square, (12,)).unwrap(), 144);
}

/// A pool without an initializer hands its first tasks to workers still starting (they wait
/// in their lanes). A worker killed at that moment loses at most the one task it had taken;
/// the others it held never started and run elsewhere: each task gives its value or, for at
/// most one, `WorkerLost`, and nothing hangs.
fn a_worker_killed_as_it_starts_loses_at_most_its_running_task(m: StartMethod) {
    for round in 0..10 {
        let p = pool(m, 2);
        let results: Vec<_> = (0..6u64)
            .map(|i| p.apply_async(square, (i,)).unwrap())
            .collect();
        let doomed = p
            .stats()
            .workers
            .iter()
            .find(|w| w.slot == 0)
            .and_then(|w| w.pid)
            .unwrap();
        // SAFETY: kill(2) of a worker of this test's own pool.
        assert_eq!(unsafe { libc::kill(doomed as i32, libc::SIGKILL) }, 0);
        let mut lost = 0;
        for (i, r) in (0u64..).zip(results) {
            match r.get_timeout(PATIENCE) {
                Ok(v) => assert_eq!(v, i * i),
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::WorkerLost(_)),
                        "round {round}: {e}"
                    );
                    lost += 1;
                }
            }
        }
        assert!(
            lost <= 1,
            "round {round}: {lost} tasks lost with one worker"
        );
        assert_eq!(p.apply(square, (7,)).unwrap(), 49);
    }
}

/// A call to a worker that holds nothing goes straight into its lane, before its job is made
/// (`Dispatcher::place_call`): it keeps what a queued chunk has. The first call with a time
/// limit a pool sees is timed (the pool's thread is told to watch it), and calls back to back,
/// each answered before the next, come back in their order.
fn a_call_to_an_idle_worker_keeps_its_time_limit(m: StartMethod) {
    let pool = pool(m, 1);
    // The worker has started, its `Ready` has been read, and it holds nothing: the calls
    // below take the quick way.
    assert_eq!(pool.apply(square, (3,)).unwrap(), 9);
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let e = pool
        .timeout(Duration::from_millis(200))
        .apply_async(sleep_ms, (60_000,))
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::TaskTimedOut);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    for i in 0..2_000 {
        assert_eq!(pool.apply(square, (i,)).unwrap(), i * i);
    }
}

/// A waiter that lets go leaves the sleep words of workers that hold nothing as they are; the
/// word of such a worker is set when it is next handed a chunk by a thread that does not read
/// the lanes. So a call or a map no one waits for, made right after a `get` that read the
/// lanes itself, still has its answers read: the worker wakes the pool's thread, which runs
/// the callback.
fn an_answer_no_one_waits_for_after_a_get_still_arrives(m: StartMethod) {
    let pool = pool(m, 2);
    for i in 0..200 {
        assert_eq!(pool.apply(square, (i,)).unwrap(), i * i);
        let (tx, rx) = std::sync::mpsc::channel();
        pool.apply_async(square, (i + 1,))
            .unwrap()
            .on_complete(move |r| {
                let _ = tx.send(r);
            });
        let got = rx
            .recv_timeout(PATIENCE)
            .expect("the answer was never read");
        assert_eq!(got.unwrap(), (i + 1) * (i + 1));
        // A map, whose chunks go through the queue, the same way.
        assert_eq!(pool.apply(square, (i,)).unwrap(), i * i);
        let (tx, rx) = std::sync::mpsc::channel();
        pool.chunksize(1)
            .map_async(square, [i, i + 1])
            .unwrap()
            .on_complete(move |r| {
                let _ = tx.send(r);
            });
        let got = rx
            .recv_timeout(PATIENCE)
            .expect("the map's answers were never read");
        assert_eq!(got.unwrap(), [i * i, (i + 1) * (i + 1)]);
    }
}

/// A call its caller put straight into an idle worker's lane (`Dispatcher::place_call`) is
/// timed even while no one waits for it: the caller itself wakes the pool's thread to watch
/// its limit. `ready` only looks (it reads no lane and wakes no one), so a call whose limit
/// no one watched would stay unfinished until someone waited for it.
fn a_placed_call_is_timed_with_no_one_waiting(m: StartMethod) {
    let pool = pool(m, 1);
    assert_eq!(pool.apply(square, (3,)).unwrap(), 9);
    // Time for the pool's thread to read the worker's `Ready`: the call below takes the quick
    // way.
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let r = pool
        .timeout(Duration::from_millis(200))
        .apply_async(sleep_ms, (60_000,))
        .unwrap();
    while !r.ready() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the call's limit went unwatched"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(r.get().unwrap_err().kind(), &ErrorKind::TaskTimedOut);
}

/// Calls nobody waits for in `get` (a callback's, or polled with `ready()`, some cancelled)
/// mixed with `apply` back to back and small maps from other threads, workers killed at
/// random meanwhile: the waiting threads read the lanes and let go of them all the time,
/// leaving idle workers' sleep words as they were, yet every call nobody waits for is
/// answered (its value, `WorkerLost`, or `Cancelled`), none left unread.
fn calls_nobody_waits_for_among_waiters_kills_and_cancels_are_all_answered(m: StartMethod) {
    let p = pool(m, 3);
    let (pids, stop, killer) = random_killer(Duration::from_millis(30));
    let began = Instant::now();
    let run_for = Duration::from_millis(1200);
    let lost_or_cancelled =
        |e: &mproc::Error| matches!(e.kind(), ErrorKind::WorkerLost(_) | ErrorKind::Cancelled);
    let unwaited = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // Waiters: `apply` back to back, a small map now and then.
        for t in 0..2u64 {
            let (p, pids) = (&p, &pids);
            s.spawn(move || {
                let mut i = 0u64;
                while began.elapsed() < run_for {
                    let x = (t << 32) | i;
                    i += 1;
                    match p.apply(quick_echo, (x,)) {
                        Ok((v, worker)) => {
                            assert_eq!(v, x, "another call's value");
                            pids.lock().unwrap().insert(worker);
                        }
                        Err(e) => assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}"),
                    }
                    if i.is_multiple_of(16) {
                        match p.map(square, 0..4u64) {
                            Ok(v) => assert_eq!(v, [0, 1, 4, 9]),
                            Err(e) => {
                                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
                            }
                        }
                    }
                }
            });
        }
        // Calls answered through a callback only, one at a time: the answer must come
        // while this thread waits on its channel, not on the result.
        let (p, pids, unwaited) = (&p, &pids, &unwaited);
        s.spawn(move || {
            let mut i = 0u64;
            while began.elapsed() < run_for {
                let x = (2 << 32) | i;
                i += 1;
                let (tx, rx) = std::sync::mpsc::channel();
                let r = p.apply_async(quick_echo, (x,)).unwrap();
                r.on_complete(move |o| {
                    let _ = tx.send(o);
                });
                let cancelled = i.is_multiple_of(11) && r.cancel();
                let got = rx
                    .recv_timeout(PATIENCE)
                    .expect("a call nobody waited for was left unread");
                match got {
                    Ok((v, worker)) => {
                        assert!(!cancelled, "a cancelled call's callback saw a value");
                        assert_eq!(v, x, "another call's value");
                        pids.lock().unwrap().insert(worker);
                    }
                    Err(e) => assert!(lost_or_cancelled(&e), "{e}"),
                }
                unwaited.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Calls polled with `ready()`, a few at a time, some cancelled.
        s.spawn(move || {
            let mut i = 0u64;
            while began.elapsed() < run_for {
                let calls: Vec<_> = (0..3)
                    .map(|k| {
                        let x = (3 << 32) | (i + k);
                        (x, p.apply_async(quick_echo, (x,)).unwrap())
                    })
                    .collect();
                i += 3;
                if i.is_multiple_of(7) {
                    calls[1].1.cancel();
                }
                let deadline = Instant::now() + PATIENCE;
                for (x, r) in &calls {
                    while !r.ready() {
                        assert!(
                            Instant::now() < deadline,
                            "a call nobody waited for was left unread"
                        );
                        std::thread::yield_now();
                    }
                    match r.get() {
                        Ok((v, worker)) => {
                            assert_eq!(v, *x, "another call's value");
                            pids.lock().unwrap().insert(worker);
                        }
                        Err(e) => assert!(lost_or_cancelled(&e), "{e}"),
                    }
                    unwaited.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    });
    stop.store(true, Ordering::Relaxed);
    let kills = killer.join().unwrap();
    assert!(kills > 0, "the test must kill workers");
    assert!(unwaited.load(Ordering::Relaxed) > 0);
    // Quiet at last: a call to a worker left idle by the waiters is still answered.
    for x in 0..50u64 {
        let (tx, rx) = std::sync::mpsc::channel();
        p.apply_async(square, (x,)).unwrap().on_complete(move |o| {
            let _ = tx.send(o);
        });
        let got = rx
            .recv_timeout(PATIENCE)
            .expect("the answer was never read");
        assert_eq!(got.unwrap(), x * x);
    }
}

/// `pool.timeout(d)`: a limit per task for one call or one map, in place of the pool's
/// `task_timeout`, with the same kill-and-replace and `TaskTimedOut`; other calls keep theirs.
fn per_call_timeouts(m: StartMethod) {
    let pool = pool(m, 2);
    let limit = Duration::from_millis(300);
    let t = Instant::now();
    let e = pool.timeout(limit).apply(sleep_ms, (60_000,)).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::TaskTimedOut);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // A call without the limit, beside one with it, runs to its end.
    let long = pool.apply_async(sleep_ms, (700,)).unwrap();
    let timed = pool
        .timeout(limit)
        .apply_async(sleep_ms, (60_000,))
        .unwrap();
    assert_eq!(
        timed.get_timeout(PATIENCE).unwrap_err().kind(),
        &ErrorKind::TaskTimedOut
    );
    assert_eq!(long.get_timeout(PATIENCE).unwrap(), 700);
    // Per item, as task_timeout: a chunk of two quick items has twice the time.
    assert_eq!(
        pool.chunksize(2)
            .timeout(limit)
            .map(sleep_ms, [200, 200])
            .unwrap(),
        [200, 200]
    );
    let e = pool
        .timeout(limit)
        .chunksize(2)
        .map(sleep_ms, [100, 100, 100, 60_000])
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::TaskTimedOut);
    let each: Vec<_> = pool
        .timeout(limit)
        .imap(sleep_ms, [10, 60_000, 10])
        .unwrap()
        .collect();
    assert_eq!(each[0], Ok(10));
    assert_eq!(
        each[1].as_ref().unwrap_err().kind(),
        &ErrorKind::TaskTimedOut
    );
    assert_eq!(each[2], Ok(10));
    // A longer limit than the pool's own lets a task the pool would stop finish.
    let strict = Pool::builder()
        .processes(1)
        .start_method(m)
        .task_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    assert_eq!(
        strict.apply(sleep_ms, (500,)).unwrap_err().kind(),
        &ErrorKind::TaskTimedOut
    );
    assert_eq!(
        strict
            .timeout(Duration::from_secs(5))
            .apply(sleep_ms, (500,))
            .unwrap(),
        500
    );
}

/// The CPU `pid`'s main thread last ran on (`/proc/<pid>/stat`, field 39).
fn last_cpu(pid: u32) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the name's closing parenthesis, field 3 on: the CPU is field 39.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(36)?
        .parse()
        .ok()
}

/// The set of `cpu` alone.
fn only(cpu: usize) -> rustix::thread::CpuSet {
    let mut one = rustix::thread::CpuSet::new();
    one.set(cpu);
    one
}

/// This thread's CPUs and the first of them, where there are two or more (a worker has
/// somewhere to move to); `None`, said on stderr, where there is one.
fn two_cpus_or_more() -> Option<(rustix::thread::CpuSet, usize)> {
    use rustix::thread::{CpuSet, sched_getaffinity};
    let mine = sched_getaffinity(None).unwrap();
    let cpu = (0..CpuSet::MAX_CPU).find(|&c| mine.is_set(c));
    let cpu = cpu.expect("this thread may run somewhere");
    if mine.count() < 2 {
        eprintln!("one CPU only: a worker has nowhere to move to");
        return None;
    }
    Some((mine, cpu))
}

/// A worker that finds itself on its caller's CPU moves to another it may run on: the two
/// would otherwise take turns at one CPU, a yield each way per call (about 9 µs a call on
/// the development VM, against 0.6 on CPUs of their own), and the kernel leaves two threads
/// that yield to each other where they are. Here the caller is held on one CPU and the
/// worker put there with it (its own CPUs widened again after, as a kernel's placement
/// leaves it); it must move off within the test's patience, and its CPUs stay its own.
fn a_worker_on_its_callers_cpu_moves_off_it(m: StartMethod) {
    use rustix::process::Pid;
    use rustix::thread::{sched_getaffinity, sched_setaffinity};
    let Some((mine, cpu)) = two_cpus_or_more() else {
        return;
    };
    let p = pool(m, 1);
    let worker = p.apply(pid, ()).unwrap();
    let its_pid = Pid::from_raw(worker as i32).unwrap();
    // What it inherited: this process's CPUs (read here, not from the worker, which may be
    // in the middle of a move, its set narrowed for the moment).
    let its_own = mine;
    let one = only(cpu);
    sched_setaffinity(None, &one).unwrap();
    // A worker moving itself just then (it may have shared this thread's CPU before) puts
    // its own CPUs back after this narrowed them: narrowed again until it holds.
    let pinned = (0..100).any(|_| {
        sched_setaffinity(Some(its_pid), &one).unwrap();
        for i in 0..100 {
            assert_eq!(p.apply(square, (i,)).unwrap(), i * i);
        }
        sched_getaffinity(Some(its_pid)).unwrap().count() == 1
    });
    assert!(pinned, "the worker could not be held on one CPU");
    assert_eq!(
        last_cpu(worker),
        Some(cpu),
        "the worker was put on the caller's CPU"
    );
    sched_setaffinity(Some(its_pid), &its_own).unwrap();
    // Within 5,000 calls back to back: a worker moves at its first look at its CPU once it
    // runs out of work for a moment (some 64 looks, a few microseconds). Left there, the two
    // took turns for seconds here: the kernel parts them when the worker sleeps and is woken
    // (it then takes an idle CPU), which a caller that never pauses does not let happen.
    for i in 0..5000 {
        assert_eq!(p.apply(square, (i,)).unwrap(), i * i);
    }
    let moved = last_cpu(worker).is_some_and(|c| c != cpu);
    sched_setaffinity(None, &mine).unwrap();
    assert!(moved, "the worker stayed on its caller's CPU");
    assert_eq!(p.apply(pid, ()).unwrap(), worker, "the same worker");
    // Read again while a move of its own may have it narrowed for a moment.
    crate::common::wait_until("the worker's CPUs are its own again", || {
        sched_getaffinity(Some(its_pid)).unwrap() == its_own
    });
}

/// Pins the calling process's thread to `cpu` (a worker's initializer).
fn pin_to(cpu: usize) {
    rustix::thread::sched_setaffinity(None, &only(cpu)).unwrap();
}

/// A worker whose initializer pinned it keeps its CPU: sharing it with its caller, it never
/// moves (only a worker free to run on every online CPU does), and its set stays the one it
/// chose.
fn a_worker_pinned_by_its_initializer_stays_pinned(m: StartMethod) {
    use rustix::thread::{sched_getaffinity, sched_setaffinity};
    let Some((mine, cpu)) = two_cpus_or_more() else {
        return;
    };
    let p = Pool::builder()
        .processes(1)
        .start_method(m)
        .initializer(pin_to, (cpu,))
        .build()
        .unwrap();
    sched_setaffinity(None, &only(cpu)).unwrap();
    let worker = p.apply(pid, ()).unwrap();
    for i in 0..5000 {
        assert_eq!(p.apply(square, (i,)).unwrap(), i * i);
    }
    sched_setaffinity(None, &mine).unwrap();
    let its = sched_getaffinity(Some(rustix::process::Pid::from_raw(worker as i32).unwrap()));
    let its = its.unwrap();
    assert!(
        its.count() == 1 && its.is_set(cpu),
        "the worker's own CPU set was changed"
    );
    assert_eq!(last_cpu(worker), Some(cpu));
}

fn inner_sum(inner: StartMethod, n: u64) -> Result<u64, String> {
    let pool = pool(inner, 2);
    let squares = pool.map(square_u64, 0..n).map_err(|e| e.to_string())?;
    let mut p = mproc::Process::new(square_u64, (n,)).start_method(inner);
    p.start().map_err(|e| e.to_string())?;
    let last = p.join_timeout(PATIENCE).map_err(|e| e.to_string())?;
    Ok(squares.iter().sum::<u64>() + last)
}

fn square_u64(x: u64) -> u64 {
    x * x
}

/// Writes this process's pid as a file named `tag-<pid>` in `dir`, then sleeps.
fn note_pid_and_sleep(dir: String, tag: String, ms: u64) -> u64 {
    std::fs::write(format!("{dir}/{tag}-{}", std::process::id()), b"").unwrap();
    sleep_ms(ms)
}

/// A task that runs a pool of its own (two workers, each running a long task) and waits.
fn a_pool_inside(inner: StartMethod, dir: String) -> u64 {
    let pool = pool(inner, 2);
    let long: Vec<_> = (0..2)
        .map(|_| {
            let args = (dir.clone(), "inner".to_owned(), 60_000);
            pool.apply_async(note_pid_and_sleep, args).unwrap()
        })
        .collect();
    note_pid_and_sleep(dir, "outer".into(), 0);
    long[0].get().unwrap_or(0)
}

/// Pools nest, as Python's cannot (its workers are daemonic and may not have children): a
/// pool task runs a pool and a process of its own under each start method. And a worker
/// SIGKILLed while its own pool runs takes that pool's workers with it: its task fails with
/// `WorkerLost`, and no worker of the inner pool is left running.
fn pools_nest_and_die_with_their_worker(m: StartMethod) {
    let outer = pool(m, 2);
    let methods = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ];
    for inner in methods {
        let got = outer.apply_async(inner_sum, (inner, 10)).unwrap();
        assert_eq!(
            got.get_timeout(PATIENCE),
            Ok(Ok(285 + 100)),
            "{m} in {inner}"
        );
    }
    for inner in methods {
        let dir =
            std::env::temp_dir().join(format!("mproc-nest-{}-{m}-{inner}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.to_str().unwrap().to_owned();
        let r = outer.apply_async(a_pool_inside, (inner, d)).unwrap();
        let pids = |tag: &str| -> Vec<u32> {
            std::fs::read_dir(&dir)
                .unwrap()
                .filter_map(|e| {
                    let name = e.ok()?.file_name().into_string().ok()?;
                    name.strip_prefix(&format!("{tag}-"))?.parse().ok()
                })
                .collect()
        };
        wait_until("the inner pool's two tasks and the outer task run", || {
            pids("inner").len() == 2 && pids("outer").len() == 1
        });
        let outer_pid = pids("outer")[0];
        // SAFETY: kill(2) on a pid this test saw its own worker write.
        assert_eq!(unsafe { libc::kill(outer_pid as i32, libc::SIGKILL) }, 0);
        let e = r.get_timeout(PATIENCE).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WorkerLost(_)),
            "{m} in {inner}: {e}"
        );
        for pid in pids("inner") {
            wait_until("the inner pool's worker ends with its parent", || {
                has_ended(pid)
            });
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let r = outer.apply_async(square_u64, (3,)).unwrap();
    assert_eq!(r.get_timeout(PATIENCE), Ok(9));
}

per_start_method!(
    pools_nest_and_die_with_their_worker,
    a_worker_pinned_by_its_initializer_stays_pinned,
    a_worker_on_its_callers_cpu_moves_off_it,
    a_worker_killed_as_it_starts_loses_at_most_its_running_task,
    per_call_timeouts,
    a_call_to_an_idle_worker_keeps_its_time_limit,
    an_answer_no_one_waits_for_after_a_get_still_arrives,
    calls_nobody_waits_for_among_waiters_kills_and_cancels_are_all_answered,
    a_placed_call_is_timed_with_no_one_waiting,
    imap_knows_how_many_results_are_left,
    a_worker_killed_mid_answer_is_lost_not_garbled,
    quick_tasks_never_wait_behind_a_slow_one,
    a_map_whose_later_items_cannot_be_encoded_fails_cleanly,
    a_map_of_more_chunks_than_a_batch_keeps_its_order,
    answers_before_a_slow_task_are_read_while_it_runs,
    the_dispatcher_rests_while_a_slow_task_runs,
    a_long_map_fails_first_by_position_once_every_item_ran,
    cancelling_a_task_a_worker_holds_skips_it,
    a_callback_may_stop_the_pool_whoever_completes_its_job,
    large_and_small_frames_keep_their_order,
    a_large_task_keeps_its_handles,
    a_large_answer_kept_unread_is_not_overwritten,
    large_tasks_in_files_survive_a_lost_worker,
    large_tasks_taken_back_or_cancelled_keep_their_arguments,
    a_worker_flooding_descriptors_is_dropped,
    a_worker_that_corrupts_its_lane_is_replaced,
    a_panicking_callback_does_not_take_the_pool_down,
    terminate_from_a_callback_does_not_deadlock,
    an_imap_made_before_close_is_served_to_the_end,
    an_imap_ending_as_a_closed_pool_looks_idle_is_served,
    task_timeout_is_per_task_even_in_chunks,
    rotation_never_exceeds_the_pool_size,
    the_whole_api,
    zero_processes_is_invalid,
    join_waits_for_every_submitted_task,
    async_result_waits_and_timeouts,
    panics_fail_only_their_item,
    a_dying_worker_fails_only_its_task,
    one_abort_in_2000_items_through_imap,
    task_timeout_kills_within_milliseconds,
    cancel_queued_and_running,
    terminate_and_drop_neither_hang_nor_orphan,
    futures_under_two_executors,
    callbacks_see_values_and_errors,
    a_callback_runs_whoever_completes_its_job,
    a_workers_large_answers_go_into_a_file_it_keeps,
    initializer_runs_first_and_failures_surface,
    max_tasks_per_child_replaces_workers,
    imap_pulls_lazily_with_bounded_work_in_flight,
    stress_100k_tasks_with_workers_killed_at_random,
    large_tasks_with_workers_killed_at_random,
    back_to_back_calls_from_threads_with_workers_killed_at_random,
    answers_nobody_waits_for_are_read,
    a_calls_job_is_reused_only_once_nothing_holds_it,
    a_quick_answer_is_read_while_a_slow_task_behind_it_runs,
    a_call_left_to_the_pools_thread_right_after_a_get_is_read,
);

/// A call's job is made into the next call's on its thread once its result is dropped
/// (`AsyncResult`'s drop), but only if nothing else holds it: a result dropped while its task
/// runs (the pool still holds its job, to give it the answer), or one whose callback holds
/// it, leaves its job alone, and each later call gets its own value, the late answer
/// included nowhere else.
fn a_calls_job_is_reused_only_once_nothing_holds_it(m: StartMethod) {
    let p = pool(m, 2);
    // Dropped while it runs: its answer comes later, into its own job.
    drop(p.apply_async(nap_then, (150, 1)).unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..200u64 {
        let r = p.apply_async(nap_then, (0, 10 + i)).unwrap();
        if i % 50 == 0 {
            // A callback keeps the job until it has run.
            let seen = Arc::clone(&seen);
            r.on_complete(move |v| seen.lock().unwrap().push(v.unwrap()));
        }
        assert_eq!(r.get_timeout(PATIENCE).unwrap(), 10 + i);
        drop(r);
        // Its job is this thread's next one: still its own answer, the call after.
        let again = p.apply_async(square, (i,)).unwrap();
        assert_eq!(again.get_timeout(PATIENCE).unwrap(), i * i);
    }
    // The dropped call's answer has come meanwhile (or comes now), and changed nothing.
    sleep_ms(200);
    for i in 0..50u64 {
        assert_eq!(p.apply(square, (i,)).unwrap(), i * i);
    }
    wait_until("every callback ran", || seen.lock().unwrap().len() == 4);
    assert_eq!(*seen.lock().unwrap(), [10, 60, 110, 160]);
}

/// A worker that answers a quick task with a slow one behind it in its lane wakes the
/// sleeping pool's thread for the answer before it starts the slow task: nobody here reads
/// the lanes but that thread (`ready` only looks), and the answer is seen long before the slow
/// task ends.
fn a_quick_answer_is_read_while_a_slow_task_behind_it_runs(m: StartMethod) {
    let p = pool(m, 1);
    assert_eq!(p.apply(square, (2,)).unwrap(), 4); // started, and idle again
    for round in 0..3u64 {
        let quick = p.apply_async(nap_then, (0, round)).unwrap();
        let slow = p.apply_async(nap_then, (3_000, 100 + round)).unwrap();
        let began = Instant::now();
        wait_until("the quick answer is read", || quick.ready());
        assert!(
            began.elapsed() < Duration::from_millis(1_500),
            "read only after {:?}",
            began.elapsed()
        );
        assert!(!slow.ready());
        assert_eq!(quick.get_timeout(PATIENCE).unwrap(), round);
        assert_eq!(slow.get_timeout(PATIENCE).unwrap(), 100 + round);
    }
}

/// A call nobody waits for, placed on the worker that has just answered a call this thread
/// read itself (`get`): the worker may still be watching its reader's word for that answer
/// (`WAKE_GRACE`) as the new call sets the word again, or may be lingering, or asleep. Only
/// the pool's thread reads the new call's answer (`ready` only looks), so a wake-up lost
/// between the call's word, its frame, the worker's late look and its sleep leaves it unread.
fn a_call_left_to_the_pools_thread_right_after_a_get_is_read(m: StartMethod) {
    let p = pool(m, 1);
    assert_eq!(p.apply(square, (1,)).unwrap(), 1);
    for i in 0..400u64 {
        assert_eq!(p.apply(square, (i,)).unwrap(), i * i);
        // None, around the worker's grace (2 µs), or past its linger (50 µs: asleep).
        let pause = match i % 8 {
            0..=4 => Duration::from_nanos(i % 5 * 800),
            5 | 6 => Duration::from_micros(20),
            _ => Duration::from_micros(300),
        };
        let until = Instant::now() + pause;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        let r = p.apply_async(square, (i + 1,)).unwrap();
        let deadline = Instant::now() + PATIENCE;
        while !r.ready() {
            assert!(
                Instant::now() < deadline,
                "call {i}: an answer left to the pool's thread was never read"
            );
            std::thread::yield_now();
        }
        assert_eq!(r.get().unwrap(), (i + 1) * (i + 1));
    }
}

/// A pool and a pending result the parent keeps in globals, which a fork child inherits.
static FORKED_POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
static FORKED_PENDING: std::sync::OnceLock<mproc::AsyncResult<u64>> = std::sync::OnceLock::new();
/// A large answer, arrived in the parent (in a memory file's mapping a fork child lacks).
static FORKED_LARGE: std::sync::OnceLock<mproc::AsyncResult<Vec<f64>>> = std::sync::OnceLock::new();

/// What a fork child sees when it uses its parent's pool: clear errors, at once.
fn use_the_parents_pool() -> Vec<String> {
    let p = FORKED_POOL.get().expect("inherited through fork");
    let pending = FORKED_PENDING.get().expect("inherited through fork");
    let began = Instant::now();
    let kind = |r: Result<u64, mproc::Error>| match r {
        Ok(v) => format!("value {v}"),
        Err(e) => format!("{:?}", e.kind()),
    };
    let mut seen = vec![
        kind(p.apply(square, (3,))),
        kind(p.apply_async(square, (3,)).map(|_| 0)),
        kind(pending.get()),
        kind(p.imap(square, 0..3).map(|_| 0)),
        // Nothing here will finish it: it is done at once for `wait`, and `get` says why.
        format!(
            "{:?}",
            mproc::wait(
                std::slice::from_ref(pending),
                mproc::Return::AllCompleted,
                None
            )
        ),
        format!("stats of {} workers", p.stats().workers.len()),
        kind(
            FORKED_LARGE
                .get()
                .expect("inherited")
                .get()
                .map(|v| v.len() as u64),
        ),
    ];
    p.close();
    p.terminate();
    seen.push(format!("{}", began.elapsed() < Duration::from_secs(5)));
    seen
}

/// A fork child that inherited a pool can neither reach nor damage its parent's workers: every
/// call fails at once with `InvalidArgument`, and the parent's pool carries on.
#[test]
fn a_pool_used_in_a_fork_child_is_refused() {
    let p = FORKED_POOL.get_or_init(|| pool(StartMethod::Forkserver, 1));
    assert_eq!(p.apply(square, (2,)).unwrap(), 4);
    let large = FORKED_LARGE.get_or_init(|| p.apply_async(numbers, (1 << 17, 2.0)).unwrap());
    large.wait_timeout(PATIENCE).unwrap();
    let _ = FORKED_PENDING.set(p.apply_async(nap_then, (2_000, 7)).unwrap());
    for _ in 0..3 {
        let mut child =
            mproc::Process::new(use_the_parents_pool, ()).start_method(StartMethod::Fork);
        child.start().unwrap();
        let seen = child.join_timeout(PATIENCE).unwrap();
        assert_eq!(seen.len(), 8, "{seen:?}");
        for s in &seen[..4] {
            assert!(s.starts_with("InvalidArgument"), "{seen:?}");
        }
        assert_eq!(seen[4], "([0], [])", "{seen:?}");
        assert_eq!(seen[5], "stats of 0 workers", "{seen:?}");
        // The large answer is not in the child's memory: a clear error, not a crash.
        assert!(seen[6].starts_with("InvalidArgument"), "{seen:?}");
        assert_eq!(seen[7], "true", "{seen:?}");
    }
    assert!(FORKED_LARGE.get().unwrap().get().unwrap() == numbers(1 << 17, 2.0));
    assert_eq!(
        FORKED_PENDING.get().unwrap().get_timeout(PATIENCE).unwrap(),
        7
    );
    assert_eq!(p.apply(square, (5,)).unwrap(), 25);
}

/// A large answer the parent got, which a fork child takes from a global.
static FORKED_TAKEN: Mutex<Option<mproc::AsyncResult<Vec<f64>>>> = Mutex::new(None);

/// What a fork child sees of its parent's large answer; it then drops it.
fn drop_the_parents_answer() -> String {
    let r = FORKED_TAKEN
        .lock()
        .unwrap()
        .take()
        .expect("inherited through fork");
    let said = match r.successful() {
        Ok(ok) => format!("successful: {ok}"),
        Err(e) => format!("{:?}", e.kind()),
    };
    drop(r);
    said
}

/// A fork child that inherited its parent's large answer (in shared memory it does not
/// have) gets a clear error for it, not a false `successful() == false`; dropping it touches
/// nothing, and the parent still reads it.
#[test]
fn a_fork_child_may_drop_its_parents_large_answer() {
    let p = pool(StartMethod::Forkserver, 1);
    let r = p.apply_async(numbers, (1 << 17, 3.0)).unwrap();
    r.wait_timeout(PATIENCE).unwrap();
    *FORKED_TAKEN.lock().unwrap() = Some(r);
    let mut child =
        mproc::Process::new(drop_the_parents_answer, ()).start_method(StartMethod::Fork);
    child.start().unwrap();
    let said = child.join_timeout(PATIENCE).unwrap();
    assert!(said.starts_with("InvalidArgument"), "{said}");
    let r = FORKED_TAKEN.lock().unwrap().take().unwrap();
    assert!(r.successful().unwrap());
    assert!(r.get().unwrap() == numbers(1 << 17, 3.0));
}

/// A task that turns on its own worker: it finds the worker's sockets and sends, on each, `n`
/// well-formed `Wake` frames, each with 30 descriptors attached that no message accounts for.
fn flood_with_descriptors(n: usize) -> u32 {
    let sockets: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let fd = e.file_name().to_string_lossy().parse::<i32>().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_string_lossy()
                .starts_with("socket:")
                .then_some(fd)
        })
        .collect();
    let spare = std::fs::File::open("/proc/self/exe").unwrap();
    let fds = [std::os::fd::AsRawFd::as_raw_fd(&spare); 30];
    // A frame: its length, then `FromWorker::Wake` (variant 3, no data).
    let frame: [u8; 8] = [4, 0, 0, 0, 3, 0, 0, 0];
    for &sock in &sockets {
        for _ in 0..n {
            let mut iov = libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            };
            // SAFETY: CMSG_SPACE only computes a size.
            let space = unsafe { libc::CMSG_SPACE(std::mem::size_of_val(&fds) as u32) } as usize;
            let mut control = vec![0u8; space];
            // SAFETY: an all-zero msghdr is valid; its pointers are set below to live buffers.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: `msg` has room for one SCM_RIGHTS header with the 30 descriptors, which
            // are copied in; the socket is this process's own.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(&fds) as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(cmsg).cast::<i32>(),
                    fds.len(),
                );
                libc::sendmsg(sock, &msg, libc::MSG_DONTWAIT);
            }
        }
    }
    sockets.len() as u32
}

/// A worker that floods its socket with descriptors no message accounts for is dropped
/// before this process's descriptor table fills; the pool goes on with a new worker.
fn a_worker_flooding_descriptors_is_dropped(m: StartMethod) {
    let p = pool(m, 1);
    assert_eq!(p.apply(square, (3,)).unwrap(), 9);
    let before = crate::common::open_fds().len();
    let r = p
        .apply_async(flood_with_descriptors, (200,))
        .unwrap()
        .get_timeout(PATIENCE);
    // Its answer may have come before its worker was dropped; either way, the next task runs,
    // and the descriptors it sent do not stay. They may still be coming in when the next
    // answer is read (the next task may even run on the flooding worker, read from its lane
    // while the dispatcher thread still reads its socket): the ones read are closed once more
    // than a message may carry wait unclaimed, and the rest with the worker.
    let _ = r;
    assert_eq!(p.apply(square, (4,)).unwrap(), 16);
    crate::common::wait_until("the flooding worker's descriptors are closed", || {
        crate::common::open_fds().len() < before + 64
    });
}
