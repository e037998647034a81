//! Locks, semaphores, events, conditions, barriers and shared values across processes, under
//! every start method: exclusion, owner death, wake-ups, timeouts, handles passed as arguments.

use std::time::{Duration, Instant};

use mproc::{
    Array, Barrier, BoundedSemaphore, Condition, ErrorKind, Event, Lock, Pool, Process, RLock,
    Semaphore, StartMethod, Value,
};

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
    rlock.acquire().unwrap();
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
    assert!(rlock.acquire_timeout(PATIENCE).unwrap());
    assert!(rlock.owner_died());
    rlock.release().unwrap();
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
    assert!(go.wait_timeout(Duration::from_secs(20)));
    done.set();
}

fn events_wake_other_processes(m: StartMethod) {
    let go = Event::new().unwrap();
    let done = Event::new().unwrap();
    let mut p = start(m, wait_then_set, (go.clone(), done.clone()));
    assert!(!done.wait_timeout(Duration::from_millis(30)));
    go.set();
    assert!(done.wait_timeout(PATIENCE));
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

fn hold_for(lock: Lock, ms: u64, held: Event) {
    let _g = lock.acquire().unwrap();
    held.set();
    std::thread::sleep(Duration::from_millis(ms));
}

/// Every `_timeout` call waits about as long as asked: not less, and not much more.
fn timeouts_are_accurate(m: StartMethod) {
    let lock = Lock::new().unwrap();
    let held = Event::new().unwrap();
    let mut p = start(m, hold_for, (lock.clone(), 2_000, held.clone()));
    assert!(held.wait_timeout(PATIENCE));
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
    assert!(!s.acquire_timeout(want).unwrap());
    check("Semaphore::acquire_timeout", t.elapsed());
    let e = Event::new().unwrap();
    let t = Instant::now();
    assert!(!e.wait_timeout(want));
    check("Event::wait_timeout", t.elapsed());
    let r = RLock::new().unwrap();
    let c_lock = Lock::new().unwrap();
    let cond = Condition::new(&c_lock).unwrap();
    let t = Instant::now();
    let (_g, woken) = cond.wait_timeout(c_lock.acquire().unwrap(), want).unwrap();
    assert!(!woken);
    check("Condition::wait_timeout", t.elapsed());
    let b = Barrier::new(2).unwrap();
    let t = Instant::now();
    assert!(b.wait_timeout(want).is_err());
    check("Barrier::wait_timeout", t.elapsed());
    assert!(
        r.acquire_timeout(want).unwrap(),
        "a free RLock is taken at once"
    );
    r.release().unwrap();
    p.kill().unwrap();
    let _ = p.join_timeout(PATIENCE);
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

per_start_method!(
    handles_reach_pool_tasks,
    locks_exclude_across_processes,
    a_lock_whose_owner_died_is_handed_on_and_says_so,
    semaphores_count_across_processes,
    events_wake_other_processes,
    conditions_notify_across_processes,
    barriers_release_every_party_together,
    timeouts_are_accurate,
    handles_reach_pool_initializers,
);

/// A handle outside an argument list (here, returned from a target) is refused with an error
/// that says where handles may go.
#[test]
fn a_handle_outside_arguments_is_a_clear_error() {
    fn give_back(l: Lock) -> Lock {
        l
    }
    let lock = Lock::new().unwrap();
    let mut p = Process::new(give_back, (lock,));
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    assert!(e.to_string().contains("can only travel as"), "{e}");
}
