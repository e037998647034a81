//! Locks, semaphores, events, conditions, barriers and shared values across processes, under
//! every start method: exclusion, owner death, wake-ups, timeouts, handles passed as arguments.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mproc::{
    Array, Barrier, BoundedSemaphore, Condition, ErrorKind, Event, Lock, LockGuard, Pool, Process,
    Queue, RLock, RLockGuard, Semaphore, StartMethod, Value,
};
use serde::{Deserialize, Serialize, Serializer};

use crate::common::{PATIENCE, start};

/// Adds 1 to the counter `n` times, each a read, a pause and a write under the lock: any lost
/// exclusion loses an update.
fn bump(counter: Value<u64>, n: u64) {
    for _ in 0..n {
        let mut g = counter.lock().unwrap();
        let v = *g;
        std::hint::black_box(&v);
        std::thread::yield_now();
        *g = v + 1;
    }
}

/// The same through a separate `Lock` guarding an `Array`.
fn bump_array(lock: Lock, cells: Array<u32>, n: u32) {
    for _ in 0..n {
        let _g = lock.acquire().unwrap();
        let mut a = cells.lock().unwrap();
        for x in a.iter_mut() {
            let v = *x;
            std::thread::yield_now();
            *x = v + 1;
        }
    }
}

fn locks_exclude_across_processes(m: StartMethod) {
    let counter = Value::new(0u64).unwrap();
    let mut kids: Vec<_> = (0..4)
        .map(|_| start(m, bump, (counter.clone(), 200)))
        .collect();
    bump(counter.clone(), 200);
    for p in &mut kids {
        p.join_timeout(PATIENCE).unwrap();
    }
    assert_eq!(counter.get().unwrap(), 1000, "every increment kept");

    let lock = Lock::new().unwrap();
    let cells = Array::<u32>::new(3).unwrap();
    let mut kids: Vec<_> = (0..3)
        .map(|_| start(m, bump_array, (lock.clone(), cells.clone(), 100)))
        .collect();
    for p in &mut kids {
        p.join_timeout(PATIENCE).unwrap();
    }
    assert_eq!(cells.to_vec().unwrap(), [300, 300, 300]);
}

/// Takes the lock (of each kind) and dies holding it.
fn die_holding(lock: Lock, rlock: RLock, value: Value<u32>) {
    let _g = lock.acquire().unwrap();
    let _rg = rlock.acquire().unwrap();
    let mut v = value.lock().unwrap();
    *v = 7;
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(60));
}

fn a_lock_whose_owner_died_is_handed_on_and_says_so(m: StartMethod) {
    let lock = Lock::new().unwrap();
    let rlock = RLock::new().unwrap();
    let value = Value::new(0u32).unwrap();
    let mut p = start(m, die_holding, (lock.clone(), rlock.clone(), value.clone()));
    assert!(matches!(
        p.join_timeout(PATIENCE).unwrap_err().kind(),
        ErrorKind::WorkerLost(_)
    ));
    let g = lock.acquire_timeout(PATIENCE).unwrap();
    assert!(g.owner_died(), "the Lock's guard says its owner died");
    drop(g);
    let g = lock.acquire_timeout(PATIENCE).unwrap();
    assert!(!g.owner_died(), "only the first acquirer is told");
    drop(g);
    let g = rlock.acquire_timeout(PATIENCE).unwrap();
    assert!(g.owner_died(), "the RLock's guard says its owner died");
    g.release().unwrap();
    assert!(
        !rlock.acquire().unwrap().owner_died(),
        "only the first acquirer is told"
    );
    let v = value.lock().unwrap();
    assert!(v.owner_died());
    assert_eq!(*v, 7, "the value is what the dead owner left");
}

fn take_permit(s: Semaphore, b: BoundedSemaphore) -> bool {
    s.acquire().unwrap();
    b.acquire().unwrap();
    b.release().unwrap();
    true
}

/// Releases a bounded semaphore that is at its bound: whether that is refused.
fn over_release(b: BoundedSemaphore) -> bool {
    b.release().is_err()
}

fn semaphores_count_across_processes(m: StartMethod) {
    let s = Semaphore::new(0).unwrap();
    let b = BoundedSemaphore::new(1).unwrap();
    let mut kids: Vec<_> = (0..3)
        .map(|_| start(m, take_permit, (s.clone(), b.clone())))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    for p in &kids {
        assert!(p.is_alive(), "waiting for a permit");
    }
    for _ in 0..3 {
        s.release().unwrap();
    }
    for p in &mut kids {
        assert!(p.join_timeout(PATIENCE).unwrap());
    }
    assert_eq!(s.value(), 0);
    assert_eq!(b.value(), 1);
    // Checked when no other process holds a permit: with the three above running at once, one
    // child's second release could find the permit taken by another and rightly succeed.
    let mut p = start(m, over_release, (b.clone(),));
    assert!(p.join_timeout(PATIENCE).unwrap(), "over-release refused");
    assert_eq!(b.value(), 1);
}

fn wait_then_set(go: Event, done: Event) {
    go.wait_timeout(Duration::from_secs(20)).unwrap();
    done.set();
}

fn events_wake_other_processes(m: StartMethod) {
    let go = Event::new().unwrap();
    let done = Event::new().unwrap();
    let mut p = start(m, wait_then_set, (go.clone(), done.clone()));
    assert_eq!(
        done.wait_timeout(Duration::from_millis(30))
            .unwrap_err()
            .kind(),
        &ErrorKind::Timeout
    );
    go.set();
    done.wait_timeout(PATIENCE).unwrap();
    done.wait().unwrap();
    p.join_timeout(PATIENCE).unwrap();
    done.clear();
    assert!(!done.is_set());
}

/// Waits under the condition until the shared value is 1, then sets it to 2 and notifies.
fn wait_for_one(cond: Condition, value: Value<u32>) {
    let lock = cond.lock().clone();
    let mut g = lock.acquire().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while value.get().unwrap() != 1 {
        assert!(Instant::now() < deadline, "never notified");
        g = cond.wait_timeout(g, Duration::from_millis(200)).unwrap().0;
    }
    value.set(2).unwrap();
    cond.notify_all();
    drop(g);
}

fn conditions_notify_across_processes(m: StartMethod) {
    let lock = Lock::new().unwrap();
    let cond = Condition::new(&lock).unwrap();
    let value = Value::new(0u32).unwrap();
    let mut p = start(m, wait_for_one, (cond.clone(), value.clone()));
    std::thread::sleep(Duration::from_millis(30));
    {
        let _g = lock.acquire().unwrap();
        value.set(1).unwrap();
        cond.notify(1);
    }
    let mut g = lock.acquire().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while value.get().unwrap() != 2 {
        assert!(Instant::now() < deadline);
        g = cond.wait_timeout(g, Duration::from_millis(200)).unwrap().0;
    }
    drop(g);
    p.join_timeout(PATIENCE).unwrap();
}

fn pass_barrier(b: Barrier) -> Vec<usize> {
    (0..3)
        .map(|_| b.wait_timeout(Duration::from_secs(20)).unwrap())
        .collect()
}

fn barriers_release_every_party_together(m: StartMethod) {
    let b = Barrier::new(3).unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|_| start(m, pass_barrier, (b.clone(),)))
        .collect();
    let mine = pass_barrier(b.clone());
    let mut theirs: Vec<Vec<usize>> = kids
        .iter_mut()
        .map(|p| p.join_timeout(PATIENCE).unwrap())
        .collect();
    theirs.push(mine);
    for pass in 0..3 {
        let mut indices: Vec<usize> = theirs.iter().map(|v| v[pass]).collect();
        indices.sort();
        assert_eq!(indices, [0, 1, 2], "distinct indices in pass {pass}");
    }
    // A party that waits alone breaks the barrier for everyone, as Python's does.
    let lonely = Barrier::new(2).unwrap();
    let mut p = start(m, pass_barrier, (lonely.clone(),));
    std::thread::sleep(Duration::from_millis(30));
    lonely.abort();
    assert!(
        p.join_timeout(PATIENCE).is_err(),
        "the waiter saw the abort"
    );
    assert_eq!(lonely.wait().unwrap_err().kind(), &ErrorKind::BrokenBarrier);
}

fn hold_for(lock: Lock, rlock: RLock, ms: u64, held: Event) {
    let _g = lock.acquire().unwrap();
    let _outer = rlock.acquire().unwrap();
    let _inner = rlock.acquire().unwrap();
    held.set();
    std::thread::sleep(Duration::from_millis(ms));
}

/// Every `_timeout` call waits about as long as asked: not less, and not much more.
fn timeouts_are_accurate(m: StartMethod) {
    let lock = Lock::new().unwrap();
    let r = RLock::new().unwrap();
    let held = Event::new().unwrap();
    let mut p = start(m, hold_for, (lock.clone(), r.clone(), 2_000, held.clone()));
    held.wait_timeout(PATIENCE).unwrap();
    let want = Duration::from_millis(100);
    let check = |what: &str, took: Duration| {
        assert!(took >= want, "{what} returned early: {took:?}");
        assert!(
            took < want + Duration::from_millis(150),
            "{what} overslept: {took:?}"
        );
    };
    let t = Instant::now();
    assert_eq!(
        lock.acquire_timeout(want).unwrap_err().kind(),
        &ErrorKind::Timeout
    );
    check("Lock::acquire_timeout", t.elapsed());
    let s = Semaphore::new(0).unwrap();
    let t = Instant::now();
    let timed_out = |e: mproc::Error| assert_eq!(e.kind(), &ErrorKind::Timeout);
    timed_out(s.acquire_timeout(want).unwrap_err());
    check("Semaphore::acquire_timeout", t.elapsed());
    let bs = BoundedSemaphore::new(1).unwrap();
    bs.acquire().unwrap();
    let t = Instant::now();
    timed_out(bs.acquire_timeout(want).unwrap_err());
    check("BoundedSemaphore::acquire_timeout", t.elapsed());
    let e = Event::new().unwrap();
    let t = Instant::now();
    timed_out(e.wait_timeout(want).unwrap_err());
    check("Event::wait_timeout", t.elapsed());
    let t = Instant::now();
    timed_out(r.acquire_timeout(want).map(drop).unwrap_err());
    check("RLock::acquire_timeout", t.elapsed());
    let c_lock = Lock::new().unwrap();
    let cond = Condition::new(&c_lock).unwrap();
    let t = Instant::now();
    let (_g, result) = cond.wait_timeout(c_lock.acquire().unwrap(), want).unwrap();
    assert!(result.timed_out());
    check("Condition::wait_timeout", t.elapsed());
    let b = Barrier::new(2).unwrap();
    let t = Instant::now();
    timed_out(b.wait_timeout(want).unwrap_err());
    check("Barrier::wait_timeout", t.elapsed());
    assert_eq!(
        b.wait().unwrap_err().kind(),
        &ErrorKind::BrokenBarrier,
        "the party that gave up broke the barrier"
    );
    p.kill().unwrap();
    let _ = p.join_timeout(PATIENCE);
}

fn give_up_at(b: Barrier, ms: u64) -> Option<ErrorKind> {
    b.wait_timeout(Duration::from_millis(ms))
        .err()
        .map(|e| e.kind().clone())
}

/// A party whose wait runs out of time answers `Timeout` and breaks the barrier: the other
/// parties, in other processes, answer `BrokenBarrier` at once instead of waiting on.
fn a_party_that_gives_up_breaks_the_barrier_for_the_others(m: StartMethod) {
    let b = Barrier::new(3).unwrap();
    let mut p = start(m, give_up_at, (b.clone(), 50));
    let t = Instant::now();
    let e = b.wait_timeout(PATIENCE).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::BrokenBarrier, "{e}");
    assert!(
        t.elapsed() < PATIENCE / 2,
        "woken by the break: {:?}",
        t.elapsed()
    );
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), Some(ErrorKind::Timeout));
}

/// A timed call that succeeds gives what the untimed call gives: a guard, a permit, the
/// barrier's index; and `Condition::wait_timeout` says it was notified.
#[test]
fn timed_calls_answer_what_untimed_ones_do() {
    let lock = Lock::new().unwrap();
    let g: LockGuard<'_> = lock.acquire_timeout(PATIENCE).unwrap();
    drop(g);

    let r = RLock::new().unwrap();
    let outer: RLockGuard<'_> = r.acquire_timeout(PATIENCE).unwrap();
    let inner = r.acquire_timeout(Duration::ZERO).unwrap();
    assert!(!inner.owner_died());
    drop(inner);
    let other = r.clone();
    let e = std::thread::spawn(move || {
        other
            .acquire_timeout(Duration::from_millis(10))
            .map(drop)
            .unwrap_err()
    })
    .join()
    .unwrap();
    assert_eq!(
        e.kind(),
        &ErrorKind::Timeout,
        "one level of two is still held"
    );
    outer.release().unwrap();
    let other = r.clone();
    std::thread::spawn(move || other.acquire_timeout(PATIENCE).map(drop))
        .join()
        .unwrap()
        .expect("free once every guard is gone");

    let s = Semaphore::new(1).unwrap();
    let () = s.acquire_timeout(PATIENCE).unwrap();
    assert_eq!(s.value(), 0);
    let e = Event::new().unwrap();
    e.set();
    let () = e.wait_timeout(PATIENCE).unwrap();
    let b = Barrier::new(1).unwrap();
    assert_eq!(b.wait_timeout(PATIENCE).unwrap(), 0);

    let c_lock = Lock::new().unwrap();
    let cond = Condition::new(&c_lock).unwrap();
    let g = c_lock.acquire().unwrap();
    let notifier = {
        let (cond, c_lock) = (cond.clone(), c_lock.clone());
        // Takes the lock only once the wait below has let it go: the notify comes after.
        std::thread::spawn(move || {
            let _g = c_lock.acquire().unwrap();
            cond.notify_all();
        })
    };
    let (g, result) = cond.wait_timeout(g, PATIENCE).unwrap();
    assert!(!result.timed_out(), "notified");
    drop(g);
    notifier.join().unwrap();
}

/// Records in the shared value that the initializer ran, under the shared lock.
fn init_with_handles(lock: Lock, started: Value<u32>) {
    let _g = lock.acquire().unwrap();
    *started.lock().unwrap() += 1;
}

fn handles_reach_pool_initializers(m: StartMethod) {
    let lock = Lock::new().unwrap();
    let started = Value::new(0u32).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .initializer(init_with_handles, (lock.clone(), started.clone()))
        .build()
        .unwrap();
    assert_eq!(pool.map(|x: u32| x + 1, [1, 2]).unwrap(), [2, 3]);
    let deadline = Instant::now() + PATIENCE;
    while started.get().unwrap() != 2 {
        assert!(Instant::now() < deadline, "both initializers ran");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Handles travel in pool tasks too, alone and in chunks, and several per chunk.
fn handles_reach_pool_tasks(m: StartMethod) {
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let counter = Value::new(0u64).unwrap();
    let results: Vec<_> = (0..20)
        .map(|_| pool.apply_async(bump, (counter.clone(), 10)).unwrap())
        .collect();
    for r in &results {
        r.get_timeout(PATIENCE).unwrap();
    }
    assert_eq!(counter.get().unwrap(), 200);
    let other = Value::new(0u64).unwrap();
    let work = (0..20).map(|i| {
        let target = if i % 2 == 0 { &counter } else { &other };
        (target.clone(), 10)
    });
    pool.chunksize(5).starmap(bump, work).unwrap();
    assert_eq!(counter.get().unwrap(), 300);
    assert_eq!(other.get().unwrap(), 100);
    let seen: Vec<u64> = pool
        .imap(|v: Value<u64>| v.get().unwrap(), vec![other.clone(); 30])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(seen, vec![100; 30]);
}

/// A call carrying a handle to a worker that holds nothing takes the queue's way, on the
/// socket with its descriptors, not the quick way into the lane (`Dispatcher::place_call`),
/// which carries none.
fn a_call_with_a_handle_to_an_idle_worker_keeps_it(m: StartMethod) {
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    let counter = Value::new(0u64).unwrap();
    pool.apply(bump, (counter.clone(), 1)).unwrap();
    for round in 2..=5 {
        // The worker has said `Ready` and holds nothing.
        std::thread::sleep(Duration::from_millis(50));
        let r = pool.apply_async(bump, (counter.clone(), 1)).unwrap();
        r.get_timeout(PATIENCE).unwrap();
        assert_eq!(counter.get().unwrap(), round);
    }
}

// ----------------------------------------------------------------------------------------
// A lock's memory outlives every hold this process may still have on it

/// The ways safe code can let go of a lock's last handle while this process may still hold the
/// lock (its pthread mutex then sits on the holding thread's robust list).
const UNMAP_SEQUENCES: [&str; 10] = [
    "an RLock dropped while held (its guards forgotten)",
    "an RLock held by one thread (its guard forgotten), dropped by another",
    "a forgotten LockGuard, its Lock dropped",
    "a forgotten LockGuard, its Lock dropped by another thread",
    "a forgotten ValueGuard, its Value dropped",
    "a forgotten ArrayGuard, its Array dropped",
    "a forgotten guard from Condition::wait_timeout, the Lock and Condition dropped",
    "a queue's last handle dropped by the putting thread, another handle dropped mid-put",
    "an RLock held through two mappings of it, one dropped while held",
    "many of each, one after the other",
];

/// Lets go of a lock's last handle as `UNMAP_SEQUENCES[sequence]` says.
fn let_go_while_held(sequence: usize) {
    match sequence {
        0 => {
            let r = RLock::new().unwrap();
            std::mem::forget(r.acquire().unwrap());
            std::mem::forget(r.acquire().unwrap());
            drop(r);
        }
        1 => {
            let r = RLock::new().unwrap();
            std::mem::forget(r.acquire().unwrap());
            std::thread::spawn(move || drop(r)).join().unwrap();
        }
        2 => {
            let l = Lock::new().unwrap();
            std::mem::forget(l.acquire().unwrap());
            drop(l);
        }
        3 => {
            let l = Lock::new().unwrap();
            std::mem::forget(l.acquire().unwrap());
            std::thread::spawn(move || drop(l)).join().unwrap();
        }
        4 => {
            let v = Value::new(5u64).unwrap();
            std::mem::forget(v.lock().unwrap());
            drop(v);
        }
        5 => {
            let a = Array::<u32>::new(100).unwrap();
            std::mem::forget(a.lock().unwrap());
            drop(a);
        }
        6 => {
            let lock = Lock::new().unwrap();
            let cond = Condition::new(&lock).unwrap();
            let (g, _) = cond
                .wait_timeout(lock.acquire().unwrap(), Duration::from_millis(1))
                .unwrap();
            std::mem::forget(g);
            drop(lock);
            drop(cond);
        }
        7 => queue_dropped_mid_put(),
        8 => {
            // A handle sent through a pipe arrives as a second mapping of the same lock. Taken
            // through the second, again through the first, released once through the second:
            // the lock is still held, linked into this thread's list by the second's address.
            let first = RLock::new().unwrap();
            let (tx, rx) = mproc::pipe::<RLock>().unwrap();
            tx.send(&first).unwrap();
            let second = rx.recv_timeout(PATIENCE).unwrap();
            let other = Lock::new().unwrap();
            let through_second = second.acquire().unwrap();
            let through_first = first.acquire().unwrap();
            through_second.release().unwrap();
            drop(second);
            drop(other.acquire().unwrap());
            through_first.release().unwrap();
            let again = first.clone();
            let free = std::thread::spawn(move || again.acquire_timeout(Duration::ZERO).is_ok());
            assert!(free.join().unwrap(), "free again");
        }
        _ => {
            for _ in 0..20 {
                (0..UNMAP_SEQUENCES.len() - 1).for_each(let_go_while_held);
            }
        }
    }
}

/// Whether the putting thread of `queue_dropped_mid_put` is inside its put.
static IN_PUT: AtomicBool = AtomicBool::new(false);
/// Whether it may go on.
static GO_ON: AtomicBool = AtomicBool::new(false);

/// A value whose second encoding (the one into the queue, under its producers' lock) waits
/// for `GO_ON`.
#[derive(Deserialize)]
struct WaitsInPut(u32);

impl Serialize for WaitsInPut {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        static ENCODINGS: AtomicU32 = AtomicU32::new(0);
        if ENCODINGS.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            IN_PUT.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + PATIENCE;
            while !GO_ON.load(Ordering::SeqCst) {
                assert!(Instant::now() < deadline, "never let go on");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.0.serialize(s)
    }
}

/// One thread puts (holding the queue's producers' lock while it encodes) while another drops
/// its handle; the putter then drops the last one.
fn queue_dropped_mid_put() {
    IN_PUT.store(false, Ordering::SeqCst);
    GO_ON.store(false, Ordering::SeqCst);
    let q = Queue::<WaitsInPut>::new().unwrap();
    let putter = q.clone();
    let t = std::thread::spawn(move || {
        putter.put(WaitsInPut(1)).unwrap();
        assert_eq!(putter.len(), 1);
        drop(putter);
    });
    let deadline = Instant::now() + PATIENCE;
    while !IN_PUT.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the put never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(q);
    GO_ON.store(true, Ordering::SeqCst);
    t.join().unwrap();
}

/// In a thread of its own: takes `dies_holding`, runs `sequence`, then takes locks made after
/// it many times (likely mapped where the sequence's lock was: before the fix, this quietly
/// tangled the thread's robust list) and `made_before` (mapped before the sequence, so never
/// there: before the fix, taking it wrote through the freed address and crashed). The thread
/// exits holding `dies_holding`, which the kernel must then find through its robust list,
/// past whatever the sequence left there, and hand on as its owner's death.
fn drop_while_held(sequence: usize) -> bool {
    let made_before = Lock::new().unwrap();
    let dies_holding = Lock::new().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::mem::forget(dies_holding.acquire().unwrap());
            let_go_while_held(sequence);
            for _ in 0..200 {
                let l = Lock::new().unwrap();
                drop(l.acquire().unwrap());
                let v = Value::new(0u32).unwrap();
                *v.lock().unwrap() += 1;
                let r = RLock::new().unwrap();
                drop(r.acquire().unwrap());
            }
            drop(made_before.acquire().unwrap());
        });
    });
    // Shorter than the parent's wait for this process, so that a lock never handed on is
    // reported as such.
    let g = dies_holding.acquire_timeout(PATIENCE / 4).unwrap();
    assert!(
        g.owner_died(),
        "the lock held by the exited thread is handed on"
    );
    drop(made_before.acquire().unwrap());
    true
}

/// Dropping the last handle of a lock while this process may still hold it (an `RLock` never
/// released, a guard forgotten) must not unmap the mutex: it is still on the holding thread's
/// robust list, which the next lock of any other mutex writes through. Each sequence runs in a
/// child of its own, because before the fix they crashed the process or corrupted its list.
fn handles_dropped_while_held_leave_later_locks_working(m: StartMethod) {
    for (sequence, what) in UNMAP_SEQUENCES.iter().enumerate() {
        let mut p = start(m, drop_while_held, (sequence,));
        let outcome = p.join_timeout(PATIENCE);
        if outcome.is_err() {
            let _ = p.kill();
        }
        assert!(
            matches!(outcome, Ok(true)),
            "{what}: {outcome:?} (exit code {:?})",
            p.exitcode()
        );
    }
}

per_start_method!(
    handles_dropped_while_held_leave_later_locks_working,
    handles_reach_pool_tasks,
    a_call_with_a_handle_to_an_idle_worker_keeps_it,
    locks_exclude_across_processes,
    a_lock_whose_owner_died_is_handed_on_and_says_so,
    semaphores_count_across_processes,
    events_wake_other_processes,
    conditions_notify_across_processes,
    barriers_release_every_party_together,
    a_party_that_gives_up_breaks_the_barrier_for_the_others,
    timeouts_are_accurate,
    handles_reach_pool_initializers,
);

/// A handle returned from a target comes back to the parent as the same object. (One outside
/// arguments and returned values, in a queue item, is refused with a sentence:
/// `queues::handles_cannot_ride_inside_queue_items`.)
#[test]
fn a_handle_returned_from_a_target_is_the_same_object() {
    fn give_back(l: Lock) -> Lock {
        l
    }
    let lock = Lock::new().unwrap();
    let mut p = Process::new(give_back, (lock.clone(),));
    p.start().unwrap();
    let back = p.join_timeout(PATIENCE).unwrap();
    let held = lock.acquire().unwrap();
    assert!(
        back.try_acquire().unwrap().is_none(),
        "the lock came back: held through the original"
    );
    drop(held);
    assert!(back.try_acquire().unwrap().is_some());
}
