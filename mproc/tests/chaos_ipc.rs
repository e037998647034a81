//! Chaos for queues, pipes and the sync primitives: peers SIGKILLed at random moments (inside
//! puts, gets, sends and receives, with small, large and very large values), ends closed from
//! other threads, more waiters than a barrier has parties, misused joinable queues. Each
//! scenario checks that nothing is lost or delivered twice beyond what the kills explain, that
//! a dead peer is a clear error, and that every wait ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use mproc::{
    Array, Barrier, Condition, ErrorKind, Event, JoinableQueue, Lock, Queue, StartMethod, Value,
    pipe,
};

use crate::common::{PATIENCE, pattern, start};

/// A small, fast generator: the same run each seed.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The body of item `id`: mostly small, some past a pipe's inline size and a pool's file
/// threshold (256 KiB), a few very large (10 MiB).
fn size_of_item(id: u32) -> usize {
    match id % 16 {
        5 => 300 << 10,
        11 if id % 48 == 11 => 10 << 20,
        _ => (id as usize * 37) % 500,
    }
}

#[derive(Serialize, Deserialize)]
struct Item {
    producer: u32,
    id: u32,
    body: ByteBuf,
}

fn item(producer: u32, id: u32) -> Item {
    Item {
        producer,
        id,
        body: ByteBuf::from(pattern(id as u8 ^ producer as u8, size_of_item(id))),
    }
}

fn intact(it: &Item) -> bool {
    it.body.len() == size_of_item(it.id)
        && *it.body == pattern(it.id as u8 ^ it.producer as u8, size_of_item(it.id))[..]
}

/// Puts items `0..n` of `producer`, in order.
fn put_items(q: Queue<Item>, producer: u32, n: u32) {
    for id in 0..n {
        q.put(item(producer, id)).unwrap();
    }
}

/// Producers SIGKILLed at random moments (inside puts of small, 300 KiB and 10 MiB items, and
/// the ring's growth): what arrives from each is intact, never twice, and a prefix of what it
/// put, with no gap (a later put was published after an earlier one returned). The queue
/// stays usable.
fn producers_killed_at_random_lose_no_published_item(m: StartMethod) {
    const PRODUCERS: u32 = 3;
    const EACH: u32 = 400;
    let q = Queue::<Item>::new().unwrap();
    let mut rng = Rng::seeded();
    let mut got: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let take = |it: Item, got: &mut BTreeMap<u32, Vec<u32>>| {
        assert!(intact(&it), "item {}/{} intact", it.producer, it.id);
        got.entry(it.producer).or_default().push(it.id);
    };
    let mut procs: Vec<_> = (0..PRODUCERS)
        .map(|p| start(m, put_items, (q.clone(), p, EACH)))
        .collect();
    // Kill each at a random moment while reading what they put.
    let deadlines: Vec<Instant> = (0..PRODUCERS)
        .map(|_| Instant::now() + Duration::from_millis(20 + rng.below(400)))
        .collect();
    let mut killed = vec![false; PRODUCERS as usize];
    let until = Instant::now() + PATIENCE;
    while killed.iter().any(|k| !k) {
        assert!(Instant::now() < until, "producers never killed");
        for (i, p) in procs.iter().enumerate() {
            if !killed[i] && Instant::now() >= deadlines[i] {
                let _ = p.kill();
                killed[i] = true;
            }
        }
        if let Some(it) = q.try_get().unwrap() {
            take(it, &mut got);
        }
    }
    for p in &mut procs {
        let _ = p.join_timeout(PATIENCE);
    }
    // Whatever is left, then the queue still works.
    while let Some(it) = q.try_get().unwrap() {
        take(it, &mut got);
    }
    q.put(item(99, 5)).unwrap();
    let last = q.get_timeout(PATIENCE).unwrap();
    assert!(last.producer == 99 && intact(&last));
    assert!(q.is_empty(), "{} left", q.len());
    for (p, ids) in got {
        let expect: Vec<u32> = (0..ids.len() as u32).collect();
        assert_eq!(ids, expect, "producer {p}: in order, once each, no gap");
    }
}

/// Gets items and marks each in `seen` (under its lock) as soon as it has it, until killed or
/// the queue is closed.
fn get_and_mark(q: Queue<Item>, seen: Array<u8>) {
    while let Ok(it) = q.get_timeout(PATIENCE) {
        assert!(intact(&it), "item {} intact", it.id);
        let mut s = seen.lock().unwrap();
        s[it.id as usize] += 1;
    }
}

/// Consumers SIGKILLed at random moments (inside gets of small, 300 KiB and 10 MiB items, or
/// while marking what they got): nothing is delivered twice, and no more is missing than there
/// were kills (each may lose the one item it got before marking it).
fn consumers_killed_at_random_get_each_item_at_most_once(m: StartMethod) {
    const N: u32 = 300;
    const CONSUMERS: usize = 2;
    const KILLS: usize = 6;
    let q = Queue::<Item>::new().unwrap();
    let seen = Array::<u8>::new(N as usize).unwrap();
    let mut rng = Rng::seeded();
    for id in 0..N {
        q.put(item(0, id)).unwrap();
    }
    let mut procs: Vec<_> = (0..CONSUMERS)
        .map(|_| start(m, get_and_mark, (q.clone(), seen.clone())))
        .collect();
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(5 + rng.below(60)));
        let at = rng.below(CONSUMERS as u64) as usize;
        let _ = procs[at].kill();
        let _ = procs[at].join_timeout(PATIENCE);
        procs[at] = start(m, get_and_mark, (q.clone(), seen.clone()));
    }
    // The rest, by this process too.
    while let Some(it) = q.try_get().unwrap() {
        assert!(intact(&it));
        seen.lock().unwrap()[it.id as usize] += 1;
    }
    q.close();
    for p in &mut procs {
        p.join_timeout(PATIENCE).unwrap();
    }
    let seen = seen.to_vec().unwrap();
    let twice: Vec<_> = (0..N).filter(|&i| seen[i as usize] > 1).collect();
    let missing = seen.iter().filter(|&&n| n == 0).count();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert!(missing <= KILLS, "{missing} missing after {KILLS} kills");
}

/// More waiters than parties, as Python allows: they pass `parties` at a time, each with an
/// index below `parties` (distinct within its pass), and nobody passes before its partners
/// arrived.
#[test]
fn a_barrier_with_more_waiters_than_parties_lets_parties_through_at_a_time() {
    use std::sync::atomic::{AtomicI64, AtomicU64};
    const PARTIES: u64 = 3;
    const THREADS: usize = 7;
    const ARRIVALS: i64 = 60_000;
    for _ in 0..3 {
        // Arrivals in all, shared out as the threads come: a multiple of the parties, so
        // every arrival has its partners.
        let left = AtomicI64::new(ARRIVALS);
        let (arrived, passed) = (AtomicU64::new(0), AtomicU64::new(0));
        let b = Barrier::new(PARTIES as usize).unwrap();
        let bad = Mutex::new(Vec::new());
        let indices = Mutex::new([0i64; PARTIES as usize]);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                let b = b.clone();
                let (bad, left, indices) = (&bad, &left, &indices);
                let (arrived, passed) = (&arrived, &passed);
                s.spawn(move || {
                    while left.fetch_sub(1, Ordering::SeqCst) > 0 {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        let r = b.wait_timeout(PATIENCE);
                        // Every pass so far had all its parties arrive first.
                        let p = passed.fetch_add(1, Ordering::SeqCst) + 1;
                        let a = arrived.load(Ordering::SeqCst);
                        match r {
                            Ok(i) if (i as u64) < PARTIES && p <= a / PARTIES * PARTIES => {
                                indices.lock().unwrap()[i] += 1;
                            }
                            other => {
                                bad.lock()
                                    .unwrap()
                                    .push(format!("{other:?}, {p} passed, {a} arrived"));
                                b.abort();
                                return;
                            }
                        }
                    }
                });
            }
        });
        let bad = bad.lock().unwrap();
        assert!(
            bad.is_empty(),
            "{} bad passes: {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );
        let each = ARRIVALS / PARTIES as i64;
        assert_eq!(
            *indices.lock().unwrap(),
            [each; PARTIES as usize],
            "each index once a pass"
        );
    }
}

/// Sends 300 KiB values until the pipe fails; returns how many went.
fn send_until_closed(conn: mproc::Connection<ByteBuf>) -> u32 {
    let mut n = 0;
    while conn
        .send(ByteBuf::from(pattern(n as u8, 300 << 10)))
        .is_ok()
    {
        n += 1;
    }
    n
}

/// Reads values (checking each) and counts them in `count` until killed.
fn read_and_count(conn: mproc::Connection<ByteBuf>, count: Value<u32>) {
    loop {
        let Ok(v) = conn.recv() else { return };
        let n = count.get().unwrap();
        assert!(*v == pattern(n as u8, 300 << 10)[..], "value {n} intact");
        count.set(n + 1).unwrap();
    }
}

/// A reader SIGKILLed at a random moment (reading, or with 16 values unread, its sender
/// waiting in its pacing): the sender, the only other holder, gets `Closed` soon, never a hang.
fn a_pipe_reader_killed_at_random_ends_its_senders_wait(m: StartMethod) {
    let mut rng = Rng::seeded();
    for _ in 0..3 {
        let (here, there) = pipe::<ByteBuf>().unwrap();
        let count = Value::new(0u32).unwrap();
        let mut reader = start(m, read_and_count, (there, count.clone()));
        let mut sender = start(m, send_until_closed, (here,));
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        reader.kill().unwrap();
        let _ = reader.join_timeout(PATIENCE);
        let sent = sender.join_timeout(PATIENCE).unwrap();
        assert!(sent >= count.get().unwrap());
    }
}

/// `close` from another thread ends a `recv` waiting on the same end, and a `send` waiting in
/// its pacing for a reader that never reads, with `Closed`.
#[test]
fn close_from_another_thread_ends_waits_on_the_same_end() {
    let (a, b) = pipe::<ByteBuf>().unwrap();
    let a2 = a.clone();
    let t = std::thread::spawn(move || a2.recv().map(|_| ()).unwrap_err().kind().clone());
    std::thread::sleep(Duration::from_millis(50));
    a.close();
    let began = Instant::now();
    while !t.is_finished() {
        assert!(began.elapsed() < PATIENCE, "recv went on after close");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(t.join().unwrap(), ErrorKind::Closed);
    drop(b);

    // Small values fill the socket's buffer: the sender waits in poll.
    let (a, _b) = pipe::<ByteBuf>().unwrap();
    let a2 = a.clone();
    let t = std::thread::spawn(move || {
        loop {
            if let Err(e) = a2.send(ByteBuf::from(vec![3u8; 1000])) {
                return e.kind().clone();
            }
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    a.close();
    let began = Instant::now();
    while !t.is_finished() {
        assert!(began.elapsed() < PATIENCE, "send went on after close");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(t.join().unwrap(), ErrorKind::Closed);
}

/// One process, both ends, two threads: 10 MiB and 300 KiB values to itself, read by another
/// thread, with ends forgotten and dropped in odd orders after.
#[test]
fn large_values_to_itself_across_threads_and_ends_forgotten() {
    let (a, b) = pipe::<ByteBuf>().unwrap();
    let sizes = [10 << 20, 300 << 10, 5, 10 << 20, 70 << 10];
    let tx = a.clone();
    let t = std::thread::spawn(move || {
        for round in 0..3u8 {
            for &s in &sizes {
                tx.send(ByteBuf::from(pattern(round, s))).unwrap();
            }
        }
    });
    for round in 0..3u8 {
        for &s in &sizes {
            let v = b.recv_timeout(PATIENCE).unwrap();
            assert!(*v == pattern(round, s)[..]);
        }
    }
    t.join().unwrap();
    // Unread values left behind; one clone forgotten, the others dropped reader first.
    a.send(ByteBuf::from(vec![1; 1 << 20])).unwrap();
    let b2 = b.clone();
    std::mem::forget(b2);
    drop(b);
    // `b` is forgotten, not closed: the socket stays open, so sends still go.
    a.send(ByteBuf::from(vec![2; 1 << 20])).unwrap();
    drop(a);
}

/// A consumer SIGKILLed before `task_done` leaves its item unfinished: `join` then ends (with
/// `Closed` once nobody else can finish it, or `Timeout`), never hangs; `task_done` beyond
/// the items put is refused.
fn take_one_and_die(q: JoinableQueue<u32>) {
    let _ = q.get_timeout(PATIENCE).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(60));
}

fn joinable_with_a_consumer_killed_before_task_done(m: StartMethod) {
    let q = JoinableQueue::<u32>::new().unwrap();
    q.put(1).unwrap();
    q.put(2).unwrap();
    let mut p = start(m, take_one_and_die, (q.clone(),));
    let _ = p.join_timeout(PATIENCE);
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 2);
    q.task_done().unwrap();
    assert_eq!(q.unfinished(), 1, "the dead one's item");
    let began = Instant::now();
    let e = q.join().unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Closed);
    assert!(began.elapsed() < PATIENCE);
    // The dead one's, finished by us; then no more.
    q.task_done().unwrap();
    q.join_timeout(PATIENCE).unwrap();
    assert!(q.task_done().is_err(), "more task_done than items");
    assert_eq!(q.unfinished(), 0);
}

/// A put that fails after its item was counted (its encoding fails) gives the count back; a
/// `task_done` that raced it must not make the next item count as finished before it is.
#[derive(Debug)]
struct FailsLate {
    go: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
}

impl Serialize for FailsLate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeSeq};
        // The first pass measures; the second (into the queue) waits, then fails.
        let mut seq = s.serialize_seq(Some(1))?;
        seq.serialize_element(&0u8)?;
        if self.started.swap(true, Ordering::SeqCst) {
            let until = Instant::now() + PATIENCE;
            while !self.go.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            return Err(S::Error::custom("fails late"));
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for FailsLate {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        unreachable!("never put")
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Job {
    Real(u32),
    Bad(FailsLate),
}

#[test]
fn a_task_done_racing_a_failed_put_does_not_finish_the_next_item() {
    let q = JoinableQueue::<Job>::new().unwrap();
    let go = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let bad = Job::Bad(FailsLate {
        go: go.clone(),
        started: started.clone(),
    });
    let q2 = q.clone();
    let t = std::thread::spawn(move || q2.put(&bad).is_err());
    // The put is inside its encoding now (counted, not published).
    let until = Instant::now() + PATIENCE;
    while !(started.load(Ordering::SeqCst) && q.unfinished() == 1) {
        assert!(Instant::now() < until, "the put never began");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Nothing was ever put: a task_done now is one too many.
    let extra = q.task_done();
    go.store(true, Ordering::SeqCst);
    assert!(t.join().unwrap(), "the put failed");
    q.put(Job::Real(7)).unwrap();
    assert_eq!(
        q.unfinished(),
        1,
        "one item put and not done (the extra task_done said {extra:?})"
    );
    let e = q.join_timeout(Duration::from_millis(50)).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout);
    assert!(matches!(q.get().unwrap(), Job::Real(7)));
    q.task_done().unwrap();
    q.join_timeout(PATIENCE).unwrap();
}

/// Increments `v` under `lock` `n` times, each increment in two halves (so a death in the
/// middle shows), until killed.
fn bump_in_halves(lock: Lock, v: Value<u64>, n: u64) {
    for _ in 0..n {
        let g = lock.acquire_timeout(PATIENCE).unwrap();
        let mut x = v.get().unwrap();
        if g.owner_died() {
            // Told, as only the next acquirer is: finish the dead one's half increment.
            x += x % 2;
        }
        assert_eq!(x % 2, 0, "a half increment with no owner death reported");
        v.set(x + 1).unwrap();
        std::hint::black_box(x);
        v.set(x + 2).unwrap();
    }
}

/// Holders of a Lock SIGKILLed at random while holding it or not: the next acquirer is told
/// when the owner died (and only then may the value be odd), nobody waits forever, and the
/// count is even whenever the lock was handed on cleanly.
fn lock_holders_killed_at_random_hand_the_lock_on(m: StartMethod) {
    let lock = Lock::new().unwrap();
    let v = Value::new(0u64).unwrap();
    let mut rng = Rng::seeded();
    for _ in 0..6 {
        let mut ps: Vec<_> = (0..2)
            .map(|_| start(m, bump_in_halves, (lock.clone(), v.clone(), 1_000_000)))
            .collect();
        std::thread::sleep(Duration::from_millis(10 + rng.below(40)));
        for p in &mut ps {
            p.kill().unwrap();
            let e = p.join_timeout(PATIENCE).unwrap_err();
            assert!(!matches!(e.kind(), ErrorKind::Panicked(_)), "{e}");
        }
        let g = lock.acquire_timeout(PATIENCE).unwrap();
        let x = v.get().unwrap();
        if !g.owner_died() {
            assert_eq!(x % 2, 0, "a half increment with no owner death reported");
        } else {
            v.set(x + (x % 2)).unwrap();
        }
    }
}

/// `notify` racing waiters whose timeouts are about to end: values handed over one at a time
/// under the condition (each waits for the other's acknowledgement) are never missed, and
/// every wait ends.
#[test]
fn notify_racing_timeouts_loses_no_handover() {
    let lock = Lock::new().unwrap();
    let cond = Condition::new(&lock).unwrap();
    let slot = Value::new(0u32).unwrap();
    let ack = Value::new(0u32).unwrap();
    const N: u32 = 2000;
    std::thread::scope(|s| {
        let (cond2, lock2, slot2, ack2) = (cond.clone(), lock.clone(), slot.clone(), ack.clone());
        s.spawn(move || {
            let until = Instant::now() + PATIENCE;
            let mut g = lock2.acquire().unwrap();
            for next in 1..=N {
                while slot2.get().unwrap() != next {
                    assert!(Instant::now() < until, "stuck waiting for {next}");
                    g = cond2.wait_timeout(g, Duration::from_micros(50)).unwrap().0;
                }
                ack2.set(next).unwrap();
                cond2.notify_all();
            }
        });
        let until = Instant::now() + PATIENCE;
        let mut g = lock.acquire().unwrap();
        for i in 1..=N {
            while ack.get().unwrap() != i - 1 {
                assert!(Instant::now() < until, "consumer never took {}", i - 1);
                g = cond.wait_timeout(g, Duration::from_micros(70)).unwrap().0;
            }
            slot.set(i).unwrap();
            cond.notify(1);
        }
        drop(g);
    });
    assert_eq!(ack.get().unwrap(), N);
}

/// Set and clear racing timed waiters: every wait ends, whatever it says.
#[test]
fn event_set_clear_pulses_end_timed_waits() {
    let e = Event::new().unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let e = e.clone();
                let stop = &stop;
                s.spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let _ = e.wait_timeout(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        for _ in 0..2000 {
            e.set();
            e.clear();
        }
        stop.store(true, Ordering::SeqCst);
        let until = Instant::now() + PATIENCE;
        for w in waiters {
            while !w.is_finished() {
                assert!(Instant::now() < until, "a waiter never ended");
                std::thread::sleep(Duration::from_millis(2));
            }
            w.join().unwrap();
        }
    });
}

/// Sends values of every size (up to 10 MiB) in order, for ever (until killed).
fn send_items(conn: mproc::Connection<Item>) {
    for id in 0.. {
        if conn.send(item(1, id)).is_err() {
            return;
        }
    }
}

/// A sender SIGKILLed at a random moment (encoding a 10 MiB value into its file, or sending
/// it): the reader gets whole values, in order, then `Closed`; never a torn value or a wait
/// for ever.
fn a_pipe_sender_killed_at_random_leaves_whole_values_then_closed(m: StartMethod) {
    let mut rng = Rng::seeded();
    for _ in 0..3 {
        let (here, there) = pipe::<Item>().unwrap();
        let mut p = start(m, send_items, (there,));
        let kill_at = Instant::now() + Duration::from_millis(rng.below(300));
        let mut next = 0;
        let e = loop {
            if Instant::now() >= kill_at && p.is_alive() {
                p.kill().unwrap();
            }
            match here.recv_timeout(PATIENCE) {
                Ok(it) => {
                    assert!(it.id == next && intact(&it), "value {next} whole, in order");
                    next += 1;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), &ErrorKind::Closed, "{e}");
        let _ = p.join_timeout(PATIENCE);
    }
}

/// Gets one item every few milliseconds, for ever (until killed).
fn get_slowly(q: Queue<Item>) {
    while q.get_timeout(PATIENCE).is_ok() {
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// Large puts into a bounded queue whose only consumer is SIGKILLed at a random moment: the
/// put waiting for room ends with `Closed` (nobody else can get), not a wait for ever.
fn a_put_waiting_on_a_consumer_that_dies_is_closed(m: StartMethod) {
    let mut rng = Rng::seeded();
    let q = Queue::<Item>::bounded(2).unwrap();
    let mut p = start(m, get_slowly, (q.clone(),));
    let kill_at = Instant::now() + Duration::from_millis(rng.below(200));
    let began = Instant::now();
    let mut killed = false;
    let mut id = 0;
    let e = loop {
        if !killed && Instant::now() >= kill_at {
            p.kill().unwrap();
            killed = true;
        }
        // 300 KiB and 10 MiB items mostly.
        match q.put_timeout(item(0, id * 3 + 5), PATIENCE) {
            Ok(()) => id += 1,
            Err(e) => break e,
        }
        assert!(began.elapsed() < PATIENCE, "still putting");
    };
    assert!(killed);
    assert_eq!(e.kind(), &ErrorKind::Closed, "{e}");
    let _ = p.join_timeout(PATIENCE);
    // What was put and not got is still there, whole.
    let mut left = 0;
    while let Some(it) = q.try_get().unwrap() {
        assert!(intact(&it));
        left += 1;
    }
    assert!(left <= 2);
}

/// Puts `n` items (300 KiB and 10 MiB ones among them) into a joinable queue.
fn put_joinable(q: JoinableQueue<Item>, n: u32) {
    for id in 0..n {
        q.put(item(2, id)).unwrap();
    }
}

/// A producer SIGKILLed inside a put of a joinable queue: once every item it published is
/// got and marked done, `join` returns (the item it died putting was never in the queue),
/// and the queue says it is empty.
fn join_after_a_producer_killed_inside_a_put(m: StartMethod) {
    let mut rng = Rng::seeded();
    let q = JoinableQueue::<Item>::new().unwrap();
    let mut p = start(m, put_joinable, (q.clone(), 100_000));
    // Inside a put, most likely: the producer does little else.
    let until = Instant::now() + Duration::from_millis(50 + rng.below(200));
    let mut got = 0u32;
    while Instant::now() < until {
        if let Some(it) = q.try_get().unwrap() {
            assert!(it.id == got && intact(&it));
            got += 1;
            q.task_done().unwrap();
        }
    }
    p.kill().unwrap();
    let _ = p.join_timeout(PATIENCE);
    while let Some(it) = q.try_get().unwrap() {
        assert!(it.id == got && intact(&it));
        got += 1;
        q.task_done().unwrap();
    }
    assert_eq!(q.len(), 0, "all {got} published items got");
    assert_eq!(q.unfinished(), 0, "all {got} published items done");
    q.join_timeout(PATIENCE).unwrap();
}

/// Whether this process is a child of the test.
fn in_child() -> bool {
    mproc::current_process().name() != "MainProcess"
}

/// A value whose encoding into the queue (its second: the first sizes it) stalls in a child,
/// after it says so in `/tmp`.
#[derive(Debug, Deserialize)]
struct StallsInPut(u32);

impl Serialize for StallsInPut {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        static ENCODINGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        if in_child() && ENCODINGS.fetch_add(1, Ordering::SeqCst) == 1 {
            std::fs::write(stall_marker(std::process::id()), b"").unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        self.0.serialize(s)
    }
}

fn stall_marker(pid: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("mproc-chaos-ipc-{pid}-in-put"))
}

fn put_stalling(q: JoinableQueue<StallsInPut>) {
    q.put(StallsInPut(2)).unwrap();
}

/// A producer killed inside a put, with no put after it (nobody takes the producers' lock
/// again): the item it died putting was never in the queue, so it is neither counted in
/// `len` nor unfinished, and `join` returns once the items that were put are done.
fn a_put_cut_short_by_a_kill_is_not_counted_even_with_no_put_after(m: StartMethod) {
    let q = JoinableQueue::<StallsInPut>::new().unwrap();
    q.put(StallsInPut(1)).unwrap();
    let mut p = start(m, put_stalling, (q.clone(),));
    let mark = stall_marker(p.pid().unwrap());
    crate::common::wait_until("the child is inside its put", || mark.exists());
    p.kill().unwrap();
    let _ = p.join_timeout(PATIENCE);
    let _ = std::fs::remove_file(&mark);
    assert_eq!(q.get_timeout(PATIENCE).unwrap().0, 1);
    q.task_done().unwrap();
    assert!(q.try_get().unwrap().is_none());
    assert_eq!(
        (q.len(), q.unfinished()),
        (0, 0),
        "the cut-short put counts for nothing"
    );
    q.join_timeout(PATIENCE).unwrap();
}

/// Fills the whole array with one value after another under its lock, for ever (until
/// killed), so a death mid-fill leaves it mixed.
fn fill_rows(a: Array<u64>, me: u64) {
    for round in 0.. {
        let mut g = a.lock().unwrap();
        let first = g[0];
        if !g.owner_died() {
            assert!(
                g.iter().all(|&x| x == first),
                "mixed with no owner death told"
            );
        }
        let v = me << 32 | round;
        for x in g.iter_mut() {
            *x = v;
        }
    }
}

/// Writers of a shared array SIGKILLed at random moments, inside their writes or not: a
/// half-written array is only ever seen by an acquirer told that the owner died.
fn array_writers_killed_at_random_are_told(m: StartMethod) {
    let a = Array::<u64>::new(64 << 10).unwrap();
    let mut rng = Rng::seeded();
    for _ in 0..4 {
        let mut ps: Vec<_> = (0..2)
            .map(|i| start(m, fill_rows, (a.clone(), i + 1)))
            .collect();
        std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
        for p in &mut ps {
            p.kill().unwrap();
            let e = p.join_timeout(PATIENCE).unwrap_err();
            assert!(!matches!(e.kind(), ErrorKind::Panicked(_)), "{e}");
        }
        let mut g = a.lock().unwrap();
        let first = g[0];
        if g.owner_died() {
            for x in g.iter_mut() {
                *x = first;
            }
        } else {
            assert!(
                g.iter().all(|&x| x == first),
                "mixed with no owner death told"
            );
        }
    }
}

/// Waits on the condition until `flag` is set, then sets `done`.
fn wait_for_flag(lock: Lock, cond: Condition, flag: Value<u32>, done: Event) {
    let mut g = lock.acquire().unwrap();
    while flag.get().unwrap() == 0 {
        g = cond.wait_timeout(g, PATIENCE).unwrap().0;
    }
    drop(g);
    done.set();
}

/// Takes the lock, sets the flag, and dies holding it without notifying.
fn set_and_die_holding(lock: Lock, flag: Value<u32>) {
    let _g = lock.acquire().unwrap();
    flag.set(1).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_secs(60));
}

/// A condition's waiters in other processes, and a process that dies holding the lock: a
/// notify from here wakes them, they take the lock (told its owner died), see the flag and
/// end, none hangs.
fn condition_waiters_survive_a_lock_holder_killed(m: StartMethod) {
    let lock = Lock::new().unwrap();
    let cond = Condition::new(&lock).unwrap();
    let flag = Value::new(0u32).unwrap();
    let done: Vec<Event> = (0..2).map(|_| Event::new().unwrap()).collect();
    let mut waiters: Vec<_> = done
        .iter()
        .map(|d| {
            start(
                m,
                wait_for_flag,
                (lock.clone(), cond.clone(), flag.clone(), d.clone()),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut killer = start(m, set_and_die_holding, (lock.clone(), flag.clone()));
    assert!(killer.join_timeout(PATIENCE).is_err());
    cond.notify_all();
    for d in &done {
        d.wait_timeout(PATIENCE).unwrap();
    }
    for w in &mut waiters {
        w.join_timeout(PATIENCE).unwrap();
    }
}

/// A waiter asleep when the event is set is released, even if the event is cleared again
/// before it runs (as Python's `Event.set` promises: every waiter is awakened).
#[test]
fn a_set_then_clear_releases_the_waiters_asleep_at_the_set() {
    let e = Event::new().unwrap();
    for _ in 0..5 {
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let e = e.clone();
                std::thread::spawn(move || e.wait_timeout(Duration::from_secs(2)))
            })
            .collect();
        // Asleep by now.
        std::thread::sleep(Duration::from_millis(50));
        e.set();
        e.clear();
        for w in waiters {
            w.join().unwrap().expect("released by the set");
        }
    }
}

fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

/// How many descriptors of mproc's message files (a large message's memory, kept to be
/// used again) and eventfds (a pool's thread is woken by one) the calling process holds.
fn message_files_here() -> usize {
    crate::common::open_fds()
        .iter()
        .filter(|(_, l)| l.contains("memfd:mproc-message") || l.contains("[eventfd]"))
        .count()
}

/// Children started after large messages went through a pool and a pipe (each side keeping
/// the memory files they went in, to use again), and while they go, hold none of those files:
/// each would keep up to 64 MiB of this process's memory for the child's whole life, after
/// the pool or pipe is gone. Nor the pool's eventfd, which is of no use to them.
fn children_inherit_no_message_file(m: StartMethod) {
    // Alone: the count is of every message file in the child.
    if !crate::common::alone() {
        return;
    }
    let big = vec![7u8; 1 << 20];
    let workers = crate::common::pool(m, 1);
    assert_eq!(workers.apply(echo_bytes, (big.clone(),)).unwrap(), big);
    let (tx, rx) = pipe::<Vec<u8>>().unwrap();
    tx.send(big.clone()).unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), big);
    let child = || {
        let mut c = mproc::Process::new(message_files_here, ()).start_method(m);
        c.start().unwrap();
        c.join_timeout(PATIENCE).unwrap()
    };
    assert_eq!(
        child(),
        0,
        "a child holds message files kept by a pool and a pipe"
    );
    // And while they go, from other threads.
    let stop = AtomicBool::new(false);
    let leaked = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(workers.apply(echo_bytes, (big.clone(),)).unwrap(), big);
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                tx.send(big.clone()).unwrap();
                assert_eq!(rx.recv_timeout(PATIENCE).unwrap(), big);
            }
        });
        let leaked: Vec<usize> = (0..60).map(|_| child()).filter(|&n| n != 0).collect();
        stop.store(true, Ordering::Relaxed);
        leaked
    });
    assert!(
        leaked.is_empty(),
        "children holding message files: {leaked:?}"
    );
}

per_start_method!(
    children_inherit_no_message_file,
    producers_killed_at_random_lose_no_published_item,
    consumers_killed_at_random_get_each_item_at_most_once,
    a_pipe_reader_killed_at_random_ends_its_senders_wait,
    joinable_with_a_consumer_killed_before_task_done,
    lock_holders_killed_at_random_hand_the_lock_on,
    a_pipe_sender_killed_at_random_leaves_whole_values_then_closed,
    a_put_waiting_on_a_consumer_that_dies_is_closed,
    join_after_a_producer_killed_inside_a_put,
    a_put_cut_short_by_a_kill_is_not_counted_even_with_no_put_after,
    array_writers_killed_at_random_are_told,
    condition_waiters_survive_a_lock_holder_killed,
);
