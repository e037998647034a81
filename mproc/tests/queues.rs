//! Queues across processes, under every start method: exactly-once delivery with many
//! producers and consumers, growth, bounds, dead peers (no hang), deaths inside a put or a get,
//! exits not held up by unread data, joinable queues, closing, timeouts, pool tasks.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use mproc::{ErrorKind, JoinableQueue, Lock, Pool, Queue, SimpleQueue, StartMethod};

use crate::common::{PATIENCE, start, wait_until};

/// The seed's addTwoNumbers: the child puts, the parent's get waits for it.
fn add_two(a: i64, b: i64, q: Queue<i64>) {
    q.put(a + b).unwrap();
}

/// Gets `n` items and returns their sum (the other direction).
fn sum_of(q: SimpleQueue<u64>, n: usize) -> u64 {
    (0..n).map(|_| q.get().unwrap()).sum()
}

fn values_cross_both_ways(m: StartMethod) {
    let q = Queue::new().unwrap();
    let mut p = start(m, add_two, (40, 2, q.clone()));
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 42);
    p.join_timeout(PATIENCE).unwrap();

    let s = SimpleQueue::new().unwrap();
    let mut p = start(m, sum_of, (s.clone(), 1000));
    for i in 0..1000u64 {
        s.put(i).unwrap();
    }
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 999 * 1000 / 2);
    assert!(s.is_empty());
}

/// An item with a body of varying size, so frames wrap around the ring and make it grow while
/// others put and get.
#[derive(Serialize, Deserialize)]
struct Item {
    id: u64,
    body: Vec<u8>,
}

fn body_for(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(2_654_435_761) % 3000) as usize;
    vec![(id % 251) as u8; len]
}

fn produce(q: Queue<Option<Item>>, first: u64, n: u64) {
    for id in first..first + n {
        q.put(Some(Item {
            id,
            body: body_for(id),
        }))
        .unwrap();
    }
}

/// Gets until a `None`; returns the ids it got, checking each body.
fn consume(q: Queue<Option<Item>>) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(item) = q.get_timeout(PATIENCE).unwrap() {
        assert_eq!(item.body, body_for(item.id), "item {} intact", item.id);
        got.push(item.id);
    }
    got
}

fn exactly_once(q: Queue<Option<Item>>, m: StartMethod) {
    const PRODUCERS: u64 = 3;
    const CONSUMERS: usize = 3;
    const EACH: u64 = 3000;
    let mut consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| start(m, consume, (q.clone(),)))
        .collect();
    let mut producers: Vec<_> = (0..PRODUCERS)
        .map(|i| start(m, produce, (q.clone(), i * EACH, EACH)))
        .collect();
    // The parent produces and consumes too (without waiting: the others may take all).
    let mut mine = Vec::new();
    for id in PRODUCERS * EACH..(PRODUCERS + 1) * EACH {
        q.put(Some(Item {
            id,
            body: body_for(id),
        }))
        .unwrap();
        if id % 4 == 0
            && let Some(item) = q.try_get().unwrap()
        {
            mine.push(item.expect("no sentinel yet").id);
        }
    }
    for p in &mut producers {
        p.join_timeout(PATIENCE).unwrap();
    }
    for _ in 0..CONSUMERS {
        q.put(None).unwrap();
    }
    let mut all: Vec<u64> = mine;
    for c in &mut consumers {
        all.extend(c.join_timeout(PATIENCE).unwrap());
    }
    let total = (PRODUCERS + 1) * EACH;
    let distinct: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len() as u64, total, "nothing lost or delivered twice");
    assert_eq!(distinct.len() as u64, total);
    assert_eq!(distinct.last(), Some(&(total - 1)));
    assert!(q.is_empty());
}

fn many_producers_and_consumers_get_each_item_once(m: StartMethod) {
    exactly_once(Queue::new().unwrap(), m);
}

fn a_bounded_queue_too(m: StartMethod) {
    let q = Queue::bounded(16).unwrap();
    exactly_once(q, m);
}

/// Holds the queue a while, puts nothing.
fn hold(q: Queue<u8>, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    drop(q);
}

fn a_get_nobody_can_answer_fails_instead_of_hanging(m: StartMethod) {
    // The only other holder is killed.
    let q = Queue::<u8>::new().unwrap();
    let p = start(m, hold, (q.clone(), 60_000));
    let t = Instant::now();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        p.kill().unwrap();
        p
    });
    let e = q.get_timeout(PATIENCE).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Closed, "{e}");
    assert!(t.elapsed() >= Duration::from_millis(190));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let mut p = killer.join().unwrap();
    let _ = p.join_timeout(PATIENCE);

    // The other holder returns without putting; a full bounded queue likewise fails a put.
    let q = Queue::<u8>::bounded(1).unwrap();
    q.put(1).unwrap();
    let mut p = start(m, hold, (q.clone(), 100));
    let e = q.put_timeout(2, PATIENCE).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Closed, "{e}");
    p.join_timeout(PATIENCE).unwrap();
    assert_eq!(q.get().unwrap(), 1, "what was there is still there");

    // While another handle lives in this process, a get just waits (another thread may put).
    let q = Queue::<u8>::new().unwrap();
    let mut p = start(m, hold, (q.clone(), 10));
    p.join_timeout(PATIENCE).unwrap();
    let other = q.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        other.put(9).unwrap();
    });
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 9);
    t.join().unwrap();
}

/// Runs `f` on its own thread and waits at most [`PATIENCE`] for its answer: an untimed wait
/// that hangs fails the test instead of hanging it.
fn within_patience<R: Send + 'static>(what: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("{what} did not return"))
}

/// The queue went to a child that is gone; the getting thread holds one handle and another
/// thread a clone, and puts 300 ms later (then drops its clone at once): the get waits for it.
/// (Handles used to be `Sync`: shared by reference, the putter was not counted, and the get
/// answered `Closed` after 5 ms. Now that does not compile; see `Queue`'s doc tests.)
fn a_get_waits_for_a_thread_of_this_process_that_can_still_put(m: StartMethod) {
    for timed in [false, true] {
        let q = Queue::<u8>::new().unwrap();
        let mut p = start(m, hold, (q.clone(), 10));
        p.join_timeout(PATIENCE).unwrap();
        let t = Instant::now();
        let putter = q.clone();
        let put = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            putter.put(9)
        });
        let got = within_patience("get", move || {
            if timed {
                q.get_timeout(Duration::from_secs(2))
            } else {
                q.get()
            }
        });
        put.join().unwrap().unwrap();
        assert_eq!(got.unwrap(), 9, "timed: {timed}");
        assert!(t.elapsed() >= Duration::from_millis(290));
    }
}

/// Returns at once: a child that has nothing to do with the parent's queues.
fn nothing() {}

/// A queue that never left this process waits its full time (a `Fork` child inherits every
/// queue, which used to make a private queue look abandoned once that child was gone).
fn a_queue_that_never_left_this_process_waits_its_full_time(m: StartMethod) {
    let want = Duration::from_millis(100);
    let q = Queue::<u8>::bounded(1).unwrap();
    let j = JoinableQueue::<u8>::new().unwrap();
    let mut p = start(m, nothing, ());
    p.join_timeout(PATIENCE).unwrap();

    let t = Instant::now();
    let e = q.get_timeout(want).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    assert!(t.elapsed() >= want, "{:?}", t.elapsed());
    assert!(!q.is_closed());
    q.put(1).unwrap();
    let t = Instant::now();
    let e = q.put_timeout(2, want).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    assert!(t.elapsed() >= want, "{:?}", t.elapsed());
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 1);
    q.put(3).unwrap();
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 3);

    j.put(1).unwrap();
    let t = Instant::now();
    let e = j.join_timeout(want).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout, "{e}");
    assert!(t.elapsed() >= want, "{:?}", t.elapsed());
}

/// One thread starts short-lived children one after another while another waits on its own
/// queue, again and again: every wait runs its full time.
fn private_waits_outlast_children_coming_and_going(m: StartMethod) {
    let want = Duration::from_millis(100);
    let q = Queue::<u8>::new().unwrap();
    let stop = AtomicBool::new(false);
    let started = AtomicU32::new(0);
    let answers: Vec<_> = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let mut p = start(m, nothing, ());
                started.fetch_add(1, Ordering::Relaxed);
                p.join_timeout(PATIENCE).unwrap();
            }
        });
        wait_until("a child starts", || started.load(Ordering::Relaxed) > 0);
        let answers = (0..8)
            .map(|_| {
                let t = Instant::now();
                (
                    q.get_timeout(want).map_err(|e| e.kind().clone()),
                    t.elapsed(),
                )
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        answers
    });
    for (answer, took) in answers {
        assert_eq!(answer, Err(ErrorKind::Timeout), "after {took:?}");
        assert!(took >= want, "{took:?}");
    }
    assert!(started.load(Ordering::Relaxed) > 1);
}

/// gh-87971: a child that should put returns without putting; an untimed get in the parent
/// answers `Closed` instead of hanging.
fn an_untimed_get_fails_once_the_only_other_holder_is_gone(m: StartMethod) {
    let q = Queue::<u8>::new().unwrap();
    let mut p = start(m, hold, (q.clone(), 50));
    let t = Instant::now();
    let e = within_patience("get", move || q.get()).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Closed, "{e}");
    assert!(
        t.elapsed() >= Duration::from_millis(40),
        "{:?}",
        t.elapsed()
    );
    p.join_timeout(PATIENCE).unwrap();
}

/// Whether this is a child (the test harness's process is "MainProcess").
fn in_child() -> bool {
    mproc::current_process().name() != "MainProcess"
}

fn marker(parent: u32, what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mproc-queue-test-{parent}-{what}"))
}

/// A value whose decoding stalls in a child (after leaving a marker file), so that the child
/// can be killed in the middle of a get.
#[derive(Debug, PartialEq)]
struct StallsDecoding(u32, u32);

impl Serialize for StallsDecoding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.0, self.1).serialize(s)
    }
}

impl<'de> Deserialize<'de> for StallsDecoding {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (parent, n) = <(u32, u32)>::deserialize(d)?;
        if in_child() {
            std::fs::write(marker(parent, "decoding"), b"").unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        Ok(StallsDecoding(parent, n))
    }
}

/// A value whose second encoding (the one into the queue, after sizing) stalls in a child.
#[derive(Debug, PartialEq, Deserialize)]
struct StallsEncoding(u32, u32);

static ENCODINGS: AtomicU32 = AtomicU32::new(0);

impl Serialize for StallsEncoding {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if in_child() && ENCODINGS.fetch_add(1, Ordering::SeqCst) == 1 {
            std::fs::write(marker(self.0, "encoding"), b"").unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        (self.0, self.1).serialize(s)
    }
}

fn get_one(q: Queue<StallsDecoding>) -> u32 {
    q.get().unwrap().1
}

fn put_one(q: JoinableQueue<StallsEncoding>, n: u32) {
    q.put(StallsEncoding(std::process::id(), n)).unwrap();
}

fn a_death_inside_a_get_or_a_put_loses_nothing(m: StartMethod) {
    let me = std::process::id();
    // A consumer killed while decoding: the item stays for the next consumer.
    let q = Queue::new().unwrap();
    q.put(StallsDecoding(me, 1)).unwrap();
    q.put(StallsDecoding(me, 2)).unwrap();
    let mark = marker(me, "decoding");
    let _ = std::fs::remove_file(&mark);
    let mut p = start(m, get_one, (q.clone(),));
    wait_until("the child decodes", || mark.exists());
    p.kill().unwrap();
    assert!(p.join_timeout(PATIENCE).is_err());
    let _ = std::fs::remove_file(&mark);
    assert_eq!(q.len(), 2);
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), StallsDecoding(me, 1));
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), StallsDecoding(me, 2));
    assert!(q.try_get().unwrap().is_none());

    // A producer killed while writing its item into a joinable queue: the half-written item
    // never appears, and it does not count as unfinished.
    let q = JoinableQueue::new().unwrap();
    q.put(StallsEncoding(0, 1)).unwrap();
    let mut p = start(m, put_one, (q.clone(), 2));
    let mark = marker(p.pid().unwrap(), "encoding");
    wait_until("the child encodes", || mark.exists());
    assert_eq!(q.unfinished(), 2, "counted while the put is under way");
    p.kill().unwrap();
    assert!(p.join_timeout(PATIENCE).is_err());
    let _ = std::fs::remove_file(&mark);
    q.put(StallsEncoding(0, 3)).unwrap();
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), StallsEncoding(0, 1));
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), StallsEncoding(0, 3));
    assert!(q.try_get().unwrap().is_none());
    assert_eq!(q.len(), 0);
    q.task_done().unwrap();
    q.task_done().unwrap();
    q.join_timeout(PATIENCE).unwrap();
}

/// Puts `n` items of `size` bytes and returns at once.
fn flood(q: Queue<ByteBuf>, n: u32, size: usize) -> u32 {
    for i in 0..n {
        q.put(ByteBuf::from(vec![i as u8; size])).unwrap();
    }
    n
}

fn an_exit_is_not_held_up_by_unread_items(m: StartMethod) {
    let q = Queue::new().unwrap();
    let mut p = start(m, flood, (q.clone(), 40, 1 << 20));
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 40, "the child exited");
    for i in 0..40u32 {
        let item = q.get_timeout(PATIENCE).unwrap();
        assert_eq!(item.len(), 1 << 20);
        assert!(item.iter().all(|&b| b == i as u8));
    }
    // 10 MiB items cross too.
    let mut p = start(m, flood, (q.clone(), 3, 10 << 20));
    for i in 0..3u8 {
        let item = q.get_timeout(PATIENCE).unwrap();
        assert_eq!(item.len(), 10 << 20);
        assert!(item.iter().all(|&b| b == i));
    }
    p.join_timeout(PATIENCE).unwrap();
}

/// Gets items and marks each done, until the queue is closed; returns how many.
fn work_through(q: JoinableQueue<u32>) -> u32 {
    let mut n = 0;
    while let Ok(_item) = q.get() {
        std::thread::sleep(Duration::from_micros(200));
        q.task_done().unwrap();
        n += 1;
    }
    n
}

fn joinable_queues_join_when_every_item_is_done(m: StartMethod) {
    let q = JoinableQueue::new().unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|_| start(m, work_through, (q.clone(),)))
        .collect();
    for i in 0..300 {
        q.put(i).unwrap();
    }
    q.join_timeout(PATIENCE).unwrap();
    assert_eq!(q.unfinished(), 0);
    assert!(q.is_empty());
    q.close();
    let done: u32 = kids
        .iter_mut()
        .map(|p| p.join_timeout(PATIENCE).unwrap())
        .sum();
    assert_eq!(done, 300);
    assert!(q.task_done().is_err(), "more task_done than items");

    // Items nobody is left to finish: join fails instead of hanging.
    let q = JoinableQueue::<u32>::new().unwrap();
    let mut p = start(m, hold_joinable, (q.clone(),));
    q.put(1).unwrap();
    p.join_timeout(PATIENCE).unwrap();
    let e = q.join_timeout(PATIENCE).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Closed, "{e}");
}

fn hold_joinable(q: JoinableQueue<u32>) {
    drop(q);
}

/// Waits in a get; returns what ended it.
fn wait_for_one(q: Queue<u8>) -> Option<ErrorKind> {
    q.get().err().map(|e| e.kind().clone())
}

fn close_wakes_every_waiter(m: StartMethod) {
    let q = Queue::new().unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|_| start(m, wait_for_one, (q.clone(),)))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    q.close();
    for p in &mut kids {
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), Some(ErrorKind::Closed));
    }
    assert_eq!(q.put(1).unwrap_err().kind(), &ErrorKind::Closed);
}

fn timeouts_are_accurate(_m: StartMethod) {
    let want = Duration::from_millis(100);
    let check = |what: &str, took: Duration| {
        assert!(took >= want, "{what} returned early: {took:?}");
        assert!(
            took < want + Duration::from_millis(150),
            "{what} took {took:?}"
        );
    };
    let q = Queue::<u8>::bounded(1).unwrap();
    let t = Instant::now();
    assert_eq!(q.get_timeout(want).unwrap_err().kind(), &ErrorKind::Timeout);
    check("Queue::get_timeout", t.elapsed());
    q.put(1).unwrap();
    let t = Instant::now();
    assert_eq!(
        q.put_timeout(2, want).unwrap_err().kind(),
        &ErrorKind::Timeout
    );
    check("Queue::put_timeout", t.elapsed());
    let j = JoinableQueue::<u8>::new().unwrap();
    j.put(1).unwrap();
    let t = Instant::now();
    assert_eq!(
        j.join_timeout(want).unwrap_err().kind(),
        &ErrorKind::Timeout
    );
    check("JoinableQueue::join_timeout", t.elapsed());
}

/// A timed call that succeeds gives what the untimed call gives, after waiting if it must;
/// `Full` is a try's answer, a timed put's is `Timeout`.
#[test]
fn timed_queue_calls_answer_what_untimed_ones_do() {
    let q = Queue::<u8>::bounded(1).unwrap();
    let () = q.put_timeout(1, PATIENCE).unwrap();
    assert_eq!(q.try_put(2).unwrap_err().kind(), &ErrorKind::Full);
    assert_eq!(
        q.put_timeout(2, Duration::ZERO).unwrap_err().kind(),
        &ErrorKind::Timeout
    );
    let getter = q.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        getter.get_timeout(PATIENCE)
    });
    let () = q.put_timeout(2, PATIENCE).unwrap();
    assert_eq!(t.join().unwrap().unwrap(), 1);
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 2);

    let j = JoinableQueue::<u8>::new().unwrap();
    j.put(1).unwrap();
    assert_eq!(j.get_timeout(PATIENCE).unwrap(), 1);
    j.task_done().unwrap();
    let () = j.join_timeout(PATIENCE).unwrap();
}

fn put_square(q: Queue<u64>, x: u64) -> u64 {
    q.put(x * x).unwrap();
    x
}

fn queues_reach_pool_tasks(m: StartMethod) {
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let q = Queue::new().unwrap();
    let args: Vec<_> = (0..50u64).map(|x| (q.clone(), x)).collect();
    let xs = pool
        .starmap_async(put_square, args)
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap();
    assert_eq!(xs.len(), 50);
    let mut got: Vec<u64> = (0..50).map(|_| q.get_timeout(PATIENCE).unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, (0..50u64).map(|x| x * x).collect::<Vec<_>>());
}

per_start_method!(
    values_cross_both_ways,
    many_producers_and_consumers_get_each_item_once,
    a_bounded_queue_too,
    a_get_nobody_can_answer_fails_instead_of_hanging,
    a_death_inside_a_get_or_a_put_loses_nothing,
    an_exit_is_not_held_up_by_unread_items,
    joinable_queues_join_when_every_item_is_done,
    close_wakes_every_waiter,
    timeouts_are_accurate,
    queues_reach_pool_tasks,
    a_get_waits_for_a_thread_of_this_process_that_can_still_put,
    a_queue_that_never_left_this_process_waits_its_full_time,
    private_waits_outlast_children_coming_and_going,
    an_untimed_get_fails_once_the_only_other_holder_is_gone,
    a_pool_initializer_holds_its_queue_while_workers_come_and_go,
);

/// A handle inside a queued value is refused with a sentence, not sent half-way.
#[test]
fn handles_cannot_ride_inside_queue_items() {
    let q = Queue::<Lock>::new().unwrap();
    let e = q.put(Lock::new().unwrap()).unwrap_err();
    assert!(e.to_string().contains("can only travel"), "{e}");
    assert!(q.is_empty());
}

/// Types that do not match are told apart when a handle arrives.
#[test]
fn a_bounded_queue_of_zero_is_refused() {
    let e = Queue::<u8>::bounded(0).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)));
}

/// A value whose second encoding (the one into the queue, after sizing) panics.
#[derive(Debug, Deserialize)]
struct PanicsWriting(u8);

static WRITES: AtomicU32 = AtomicU32::new(0);

impl Serialize for PanicsWriting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if WRITES.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            panic!("no encoding today");
        }
        self.0.serialize(s)
    }
}

/// A put whose encoding unwinds leaves no trace: no item, no count, no unfinished task.
#[test]
fn a_panic_inside_a_put_leaves_the_counts_alone() {
    let q = Queue::<PanicsWriting>::bounded(1).unwrap();
    let j = JoinableQueue::<PanicsWriting>::new().unwrap();
    for _ in 0..2 {
        let put =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| q.put(PanicsWriting(1))));
        assert!(put.is_err());
        let put =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| j.put(PanicsWriting(1))));
        assert!(put.is_err());
    }
    assert_eq!(q.len(), 0);
    assert!(q.try_get().unwrap().is_none());
    assert_eq!(j.unfinished(), 0);
    j.join_timeout(Duration::ZERO).unwrap();
}

/// `try_put` on an unbounded queue never says `Full`, however busy its lock.
#[test]
fn try_put_on_an_unbounded_queue_always_succeeds() {
    let q = Queue::<u64>::new().unwrap();
    let full: u32 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                s.spawn(move || (0..20_000u64).filter(|&i| q.try_put(i).is_err()).count() as u32)
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(full, 0);
    assert_eq!(q.len(), 80_000);
}

/// A queue reached through a static (a `Mutex`: handles are `Send`, not `Sync`; the one in
/// the static counts as a handle like any other).
static GLOBAL: Mutex<Option<Queue<u8>>> = Mutex::new(None);

/// Puts on the queue this fork child inherited (not passed to it), after `ms` milliseconds.
fn put_on_inherited(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    let global = GLOBAL.lock().unwrap();
    global.as_ref().unwrap().put(7).unwrap();
}

/// A fork child inherits every queue; it counts as a holder from its birth, so a get waiting
/// for it does not conclude that nobody is left.
#[test]
fn a_fork_child_that_inherited_a_queue_counts_as_holding_it() {
    let q = Queue::new().unwrap();
    *GLOBAL.lock().unwrap() = Some(q.clone());
    // Shared once already, so the dead-peer rule applies to this queue.
    let mut p = start(StartMethod::Fork, hold, (q.clone(), 10));
    p.join_timeout(PATIENCE).unwrap();
    drop(q);
    let mut c = start(StartMethod::Fork, put_on_inherited, (500u64,));
    let got = GLOBAL
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .get_timeout(PATIENCE);
    c.join_timeout(PATIENCE).unwrap();
    assert_eq!(got.unwrap(), 7);
}

/// A queue that is never passed anywhere, reached by a fork child through a static.
static PRIVATE: Mutex<Option<Queue<u8>>> = Mutex::new(None);

fn put_on_private() {
    let private = PRIVATE.lock().unwrap();
    private.as_ref().unwrap().put(5).unwrap();
}

/// A fork child that uses a queue it inherited makes it shared with another process, as
/// passing it would have: once the child is gone, a get that nothing can answer fails. (Its
/// mere birth does not: see `a_queue_that_never_left_this_process_waits_its_full_time`.)
#[test]
fn a_fork_child_that_uses_an_inherited_queue_shares_it() {
    *PRIVATE.lock().unwrap() = Some(Queue::new().unwrap());
    let mut c = start(StartMethod::Fork, put_on_private, ());
    c.join_timeout(PATIENCE).unwrap();
    let (first, second) = within_patience("two gets", || {
        let private = PRIVATE.lock().unwrap();
        let q = private.as_ref().unwrap();
        (q.get(), q.get())
    });
    assert_eq!(first.unwrap(), 5);
    assert_eq!(second.unwrap_err().kind(), &ErrorKind::Closed);
}

/// The queue a pool worker's initializer kept (each worker process has its own).
static KEPT: Mutex<Option<Queue<u32>>> = Mutex::new(None);

/// Decodes slowly in a child (200 ms): a worker that decodes it before a queue attaches to
/// the queue that much later.
#[derive(Debug)]
struct SlowToDecode;

impl Serialize for SlowToDecode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ().serialize(s)
    }
}

impl<'de> Deserialize<'de> for SlowToDecode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        if in_child() {
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(SlowToDecode)
    }
}

fn keep_queue(_slow: SlowToDecode, q: Queue<u32>) {
    *KEPT.lock().unwrap() = Some(q);
}

fn put_on_kept(x: u32) {
    KEPT.lock().unwrap().as_ref().unwrap().put(x).unwrap();
}

/// A pool keeps its initializer's arguments, handles included, and decodes them again in
/// every worker it starts: while the pool lives, a worker yet to start can put, so a get
/// that waits while one worker replaces another must wait for it, not answer `Closed`.
/// (Each worker here runs one task, and attaches to the queue 200 ms after it starts, well
/// past the waiting get's first checks.)
fn a_pool_initializer_holds_its_queue_while_workers_come_and_go(m: StartMethod) {
    let q = Queue::<u32>::new().unwrap();
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .max_tasks_per_child(1)
        .initializer(keep_queue, (SlowToDecode, q.clone()))
        .build()
        .unwrap();
    let n = 3;
    let results: Vec<_> = (0..n)
        .map(|i| pool.apply_async(put_on_kept, (i,)).unwrap())
        .collect();
    let got: Vec<_> = (0..n)
        .map(|_| q.get_timeout(PATIENCE).map_err(|e| e.kind().clone()))
        .collect();
    for r in results {
        r.get_timeout(PATIENCE).unwrap();
    }
    assert_eq!(got, (0..n).map(Ok).collect::<Vec<_>>());
}
