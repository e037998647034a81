//! Queue handles lost on their way to another process: in the arguments of a child killed
//! before it decoded them, of a process never started or whose start failed, in a message
//! down a pipe that nobody reads, in a pool task cancelled before its worker decoded it.
//!
//! While a handle is on its way, its receiver may still put, so a get waits for it. Once the
//! handle can never arrive, and the last real producer is gone, nobody can ever put again: a
//! get must answer `Closed` (as it does when the last other holder ends) and not wait its whole
//! deadline, or for ever without one.

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use mproc::{Connection, ErrorKind, Pool, Process, Queue, StartMethod, pipe};

use crate::common::{PATIENCE, sleep_ms, start};

/// How long a get waits to show that it does wait (someone may still put).
const A_WHILE: Duration = Duration::from_millis(300);

/// Whether this is a child (the test harness's process is "MainProcess").
fn in_child() -> bool {
    mproc::current_process().name() != "MainProcess"
}

/// Takes this many milliseconds to decode in a child: put before a queue in a target's
/// arguments, it holds the queue undecoded that long.
#[derive(Debug)]
struct SlowToDecode(u64);

impl Serialize for SlowToDecode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SlowToDecode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ms = u64::deserialize(d)?;
        if in_child() {
            std::thread::sleep(Duration::from_millis(ms));
        }
        Ok(SlowToDecode(ms))
    }
}

/// Puts 1 once its arguments are decoded.
fn put_one(_slow: SlowToDecode, q: Queue<u8>) {
    q.put(1).unwrap();
}

/// A queue that a child put one item on and left: shared with another process, and nobody
/// but this process holds it now.
fn shared_and_left(m: StartMethod) -> Queue<u8> {
    let q = Queue::new().unwrap();
    let mut p = start(m, put_one, (SlowToDecode(0), q.clone()));
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 1);
    p.join_timeout(PATIENCE).unwrap();
    q
}

/// What a get that waits at most [`A_WHILE`] answers.
fn get_a_while(q: &Queue<u8>) -> Result<u8, ErrorKind> {
    q.get_timeout(A_WHILE).map_err(|e| e.kind().clone())
}

/// A get that nobody can answer any more: `Closed`, well before its deadline.
fn assert_closed(q: &Queue<u8>, what: &str) {
    let t = Instant::now();
    let e = q.get_timeout(PATIENCE).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Closed, "{what}: {e}");
    assert!(t.elapsed() < PATIENCE / 2, "{what}: took {:?}", t.elapsed());
}

/// Case 1: the only other process that could put was killed while its arguments, queue and
/// all, were still being decoded; or ended before decoding them (a working directory it could
/// not enter).
fn a_child_gone_before_decoding_its_queue_leaves_nothing_in_flight(m: StartMethod) {
    let q = shared_and_left(m);
    let victim = start(m, put_one, (SlowToDecode(60_000), q.clone()));
    assert_eq!(
        get_a_while(&q),
        Err(ErrorKind::Timeout),
        "the child may still put"
    );
    victim.kill().unwrap();
    assert_closed(&q, "after the child was killed");
    let mut victim = victim;
    assert!(victim.join_timeout(PATIENCE).is_err());

    let mut lost = Process::new(put_one, (SlowToDecode(0), q.clone()))
        .start_method(m)
        .current_dir("/nonexistent/mproc-chaos-queue");
    lost.start().unwrap();
    let e = lost.join_timeout(PATIENCE).unwrap_err();
    assert!(e.to_string().contains("nonexistent"), "{e}");
    assert_closed(&q, "after the child that could not start its target");
}

/// Case 2: a process built with the queue among its arguments may still be started, so a get
/// waits while it exists; dropped unstarted, or after a start that failed, it can never put.
fn an_unstarted_process_holds_its_queue_until_it_is_dropped(m: StartMethod) {
    let q = shared_and_left(m);
    let mut later = Process::new(put_one, (SlowToDecode(0), q.clone())).start_method(m);
    assert_eq!(
        get_a_while(&q),
        Err(ErrorKind::Timeout),
        "it may be started"
    );
    later.start().unwrap();
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 1);
    later.join_timeout(PATIENCE).unwrap();

    let never = Process::new(put_one, (SlowToDecode(0), q.clone())).start_method(m);
    assert_eq!(
        get_a_while(&q),
        Err(ErrorKind::Timeout),
        "it may be started"
    );
    drop(never);
    assert_closed(&q, "after an unstarted process was dropped");

    let mut refused = Process::new(put_one, (SlowToDecode(0), q.clone()))
        .start_method(m)
        .env("NOT=A NAME", "1");
    let e = refused.start().unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
    drop(refused);
    assert_closed(&q, "after a process whose start failed was dropped");
}

/// Holds the reading end of a pipe for `ms` milliseconds and leaves without reading.
fn hold_unread(rx: Connection<Queue<u8>>, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    drop(rx);
}

/// Case 3: a queue sent down a pipe can still be read, and used, while the reading end lives;
/// once every reading end is gone unread, nobody can.
fn a_queue_sent_down_a_pipe_nobody_reads_leaves_nothing_in_flight(m: StartMethod) {
    let q = shared_and_left(m);
    let (tx, rx) = pipe::<Queue<u8>>().unwrap();
    tx.send(q.clone()).unwrap();
    assert_eq!(get_a_while(&q), Err(ErrorKind::Timeout), "it may be read");
    let got = rx.recv_timeout(PATIENCE).unwrap();
    got.put(5).unwrap();
    drop(got);
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 5);

    tx.send(q.clone()).unwrap();
    drop(rx);
    assert_closed(&q, "after this process dropped the reading end unread");

    let (tx, rx) = pipe::<Queue<u8>>().unwrap();
    let mut reader = start(m, hold_unread, (rx, 300));
    tx.send(q.clone()).unwrap();
    assert_eq!(get_a_while(&q), Err(ErrorKind::Timeout), "it may be read");
    reader.join_timeout(PATIENCE).unwrap();
    assert_closed(&q, "after the child left without reading");
    drop(tx);
}

/// Case 4: a pool task that carries the queue, cancelled while queued behind another (it
/// never reaches a worker), or while its worker decodes it (the worker is killed).
fn a_pool_task_cancelled_before_its_queue_is_decoded_leaves_nothing_in_flight(m: StartMethod) {
    // Built first, so that a `Fork` worker does not inherit the queue (it would count as a
    // holder for as long as it lives).
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    let q = Queue::<u8>::new().unwrap();
    pool.apply(put_one, (SlowToDecode(0), q.clone())).unwrap();
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 1);

    // The task behind it went ahead to the worker (on its socket), which skips it once it is
    // through with this one: until then it is on its way.
    let busy = pool.apply_async(sleep_ms, (1_500,)).unwrap();
    let queued = pool
        .apply_async(put_one, (SlowToDecode(0), q.clone()))
        .unwrap();
    assert_eq!(get_a_while(&q), Err(ErrorKind::Timeout), "it may run");
    assert!(queued.cancel());
    assert_closed(&q, "after a queued task was cancelled");
    assert_eq!(busy.get_timeout(PATIENCE).unwrap(), 1_500);

    let decoding = pool
        .apply_async(put_one, (SlowToDecode(60_000), q.clone()))
        .unwrap();
    assert_eq!(get_a_while(&q), Err(ErrorKind::Timeout), "it may run");
    assert!(decoding.cancel());
    if m == StartMethod::Fork {
        // The workers that replaced the killed ones were forked while this process held the
        // queue: they inherited it, and count as holders until they end.
        pool.terminate();
    }
    assert_closed(&q, "after a task was cancelled while its worker decoded it");
    assert_eq!(
        decoding.get_timeout(PATIENCE).unwrap_err().kind(),
        &ErrorKind::Cancelled
    );
}

per_start_method!(
    a_child_gone_before_decoding_its_queue_leaves_nothing_in_flight,
    an_unstarted_process_holds_its_queue_until_it_is_dropped,
    a_queue_sent_down_a_pipe_nobody_reads_leaves_nothing_in_flight,
    a_pool_task_cancelled_before_its_queue_is_decoded_leaves_nothing_in_flight,
);
