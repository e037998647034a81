//! Pipes across processes, under every start method: order, both directions, large values
//! through shared memory, handles inside messages, dead and closed peers, timeouts.

use std::time::{Duration, Instant};

use serde_bytes::ByteBuf;

use mproc::{Connection, ErrorKind, Lock, Queue, StartMethod, pipe};

use crate::common::{PATIENCE, pattern, start, wait_until};

/// Sends back each number plus one until the other end closes; returns how many.
fn plus_one(conn: Connection<u64>) -> u64 {
    let mut n = 0;
    while let Ok(x) = conn.recv() {
        conn.send(x + 1).unwrap();
        n += 1;
    }
    n
}

fn messages_cross_in_order_both_ways(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let mut p = start(m, plus_one, (there,));
    for i in 0..200u64 {
        here.send(i).unwrap();
    }
    for i in 0..200u64 {
        assert_eq!(here.recv_timeout(PATIENCE).unwrap(), i + 1);
    }
    drop(here); // end of file for the child
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 200);
}

/// Returns the large value it receives, reversed, and the sum of its bytes.
fn reverse(conn: Connection<ByteBuf>) -> u64 {
    let mut v = conn.recv().unwrap().into_vec();
    let sum = v.iter().map(|&b| u64::from(b)).sum();
    v.reverse();
    conn.send(ByteBuf::from(v)).unwrap();
    sum
}

fn large_values_cross_through_shared_memory(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let mut p = start(m, reverse, (there,));
    let v: Vec<u8> = (0..10u32 << 20).map(|i| (i % 253) as u8).collect();
    here.send(ByteBuf::from(v.clone())).unwrap();
    let back = here.recv_timeout(PATIENCE).unwrap();
    let sum: u64 = v.iter().map(|&b| u64::from(b)).sum();
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), sum);
    assert!(back.iter().rev().eq(v.iter()), "10 MiB intact both ways");
}

/// Waits on the connection until killed.
fn hang_on(conn: Connection<u8>) {
    let _ = conn.recv();
}

/// Returns without sending.
fn say_nothing(conn: Connection<u8>) {
    drop(conn);
}

fn a_dead_peer_is_an_error_at_once(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let p = start(m, hang_on, (there,));
    std::thread::sleep(Duration::from_millis(100));
    let killed = Instant::now();
    p.kill().unwrap();
    let e = here.recv_timeout(PATIENCE).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Closed, "{e}");
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(here.send(1).unwrap_err().kind(), &ErrorKind::Closed);

    let (here, there) = pipe().unwrap();
    let mut p = start(m, say_nothing, (there,));
    assert_eq!(
        here.recv_timeout(PATIENCE).unwrap_err().kind(),
        &ErrorKind::Closed
    );
    assert!(
        here.poll(Duration::ZERO).unwrap(),
        "end of file is readable"
    );
    p.join_timeout(PATIENCE).unwrap();
}

/// Receives a connection, a queue and a lock through a connection, and uses each.
fn handles_arrive(conn: Connection<(Connection<String>, Queue<u32>, Lock)>) {
    let (back, q, lock) = conn.recv().unwrap();
    let _g = lock.acquire().unwrap();
    q.put(7).unwrap();
    back.send("via a pipe".to_string()).unwrap();
}

fn handles_travel_inside_messages(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let mut p = start(m, handles_arrive, (there,));
    let (mine, theirs) = pipe::<String>().unwrap();
    let q = Queue::new().unwrap();
    let lock = Lock::new().unwrap();
    here.send((theirs, q.clone(), lock.clone())).unwrap();
    assert_eq!(mine.recv_timeout(PATIENCE).unwrap(), "via a pipe");
    assert_eq!(q.get_timeout(PATIENCE).unwrap(), 7);
    p.join_timeout(PATIENCE).unwrap();
    drop(lock.acquire().unwrap());
}

/// Sends `n` values from each of `threads` threads at once, big and small.
fn send_from_threads(conn: Connection<ByteBuf>, threads: u8, n: u32) {
    std::thread::scope(|s| {
        for t in 0..threads {
            let conn = conn.clone();
            s.spawn(move || {
                for i in 0..n {
                    let len = if i % 10 == 0 { 200_000 } else { 100 };
                    conn.send(ByteBuf::from(vec![t; len])).unwrap();
                }
            });
        }
    });
}

fn concurrent_senders_never_interleave(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let mut p = start(m, send_from_threads, (there, 4, 50));
    let mut counts = [0; 4];
    for _ in 0..200 {
        let v = here.recv_timeout(PATIENCE).unwrap();
        assert!(v.len() == 100 || v.len() == 200_000);
        assert!(v.iter().all(|&b| b == v[0]), "a message arrives whole");
        counts[v[0] as usize] += 1;
    }
    assert_eq!(counts, [50; 4]);
    p.join_timeout(PATIENCE).unwrap();
}

fn close_ends_the_other_side_after_what_was_sent(_m: StartMethod) {
    let (a, b) = pipe::<u8>().unwrap();
    a.send(1).unwrap();
    a.close();
    assert_eq!(b.recv().unwrap(), 1);
    assert_eq!(b.recv().unwrap_err().kind(), &ErrorKind::Closed);
    assert_eq!(b.send(2).unwrap_err().kind(), &ErrorKind::Closed);

    let want = Duration::from_millis(100);
    let (_a, b) = pipe::<u8>().unwrap();
    let t = Instant::now();
    assert_eq!(
        b.recv_timeout(want).unwrap_err().kind(),
        &ErrorKind::Timeout
    );
    let took = t.elapsed();
    assert!(
        took >= want && took < want + Duration::from_millis(150),
        "{took:?}"
    );
    let t = Instant::now();
    assert!(!b.poll(want).unwrap());
    let took = t.elapsed();
    assert!(
        took >= want && took < want + Duration::from_millis(150),
        "{took:?}"
    );
}

/// Sends back every large value it receives, unchanged, until the other end closes.
fn echo_bytes(conn: Connection<ByteBuf>) -> u32 {
    let mut n = 0;
    while let Ok(v) = conn.recv() {
        conn.send(&v).unwrap();
        n += 1;
    }
    n
}

/// The memory files of large messages are reused once their receiver is done with them:
/// many large values of varying sizes, sent faster than they are read and echoed back, all
/// arrive intact (a file is never rewritten while a receiver may still read it).
fn large_messages_reuse_memory_without_mixing_them(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let mut p = start(m, echo_bytes, (there,));
    let sizes = [
        70_000usize,
        3_000_000,
        65_537,
        1_000_000,
        200_000,
        3_000_000,
        70_001,
    ];
    let value = |i: usize, size: usize| ByteBuf::from(pattern(i as u8, size));
    for round in 0..3 {
        // All sent before any is read back: more in flight than the end keeps spare.
        for (i, &size) in sizes.iter().enumerate() {
            here.send(value(round * 10 + i, size)).unwrap();
        }
        for (i, &size) in sizes.iter().enumerate() {
            let back = here.recv_timeout(PATIENCE).unwrap();
            assert!(
                back == value(round * 10 + i, size),
                "message {i} of round {round}"
            );
        }
    }
    drop(here);
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 21);
}

/// Sends `n` values of `size` bytes (value `i` all `i`), telling `progress` after each send
/// returns.
fn flood(conn: Connection<ByteBuf>, progress: Connection<u32>, n: u32, size: usize) -> u32 {
    for i in 0..n {
        conn.send(ByteBuf::from(vec![i as u8; size])).unwrap();
        progress.send(i).unwrap();
    }
    n
}

/// Waits (bounded) for `progress` to report `fit` sends, then checks that no more come for a
/// second: the sender waits.
fn sends_then_waits(progress: &Connection<u32>, fit: u32) {
    for i in 0..fit {
        assert_eq!(progress.recv_timeout(PATIENCE).unwrap(), i);
    }
    let more = progress.recv_timeout(Duration::from_secs(1));
    assert!(more.is_err(), "a send past the {fit} that fit: {more:?}");
}

/// A sender far ahead of its reader waits once 64 MiB of large values, or 16 of them, are
/// unread, as on a full pipe (its memory once grew by every value sent ahead: 2.8 GB of
/// 10 MiB ones), and every value arrives intact and in order once they are read.
fn a_sender_ahead_of_its_reader_waits_for_it(m: StartMethod) {
    // Six files of 10 MiB (and their headers) fit in 64 MiB; sixteen of 70 KB.
    for (n, size, fit) in [(20, 10 << 20, 6), (30, 70_000, 16)] {
        let (here, there) = pipe().unwrap();
        let (progress, progress_there) = pipe().unwrap();
        let mut p = start(m, flood, (there, progress_there, n, size));
        // Nothing read here yet: the sender sends what fits, then waits.
        sends_then_waits(&progress, fit);
        for i in 0..n {
            let v = here.recv_timeout(PATIENCE).unwrap();
            assert!(
                v.len() == size && v.iter().all(|&b| b == i as u8),
                "value {i}"
            );
        }
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), n);
    }
}

/// A large value whose decoding kills its receiver when `die` is set (a receiver killed while
/// it reads a message), or sleeps `nap_ms` first.
#[derive(serde::Serialize, serde::Deserialize)]
struct Fatal {
    #[serde(deserialize_with = "die_if_set")]
    die: bool,
    #[serde(deserialize_with = "nap")]
    nap_ms: u64,
    data: ByteBuf,
}

impl Fatal {
    fn new(die: bool, nap_ms: u64, data: Vec<u8>) -> Fatal {
        Fatal {
            die,
            nap_ms,
            data: ByteBuf::from(data),
        }
    }
}

fn die_if_set<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let die = <bool as serde::Deserialize>::deserialize(d)?;
    if die {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    Ok(die)
}

fn nap<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let ms = <u64 as serde::Deserialize>::deserialize(d)?;
    std::thread::sleep(Duration::from_millis(ms));
    Ok(ms)
}

/// Receives until a value kills it or the other end closes; returns how many it read.
fn read_until_killed(conn: Connection<Fatal>) -> u32 {
    let mut n = 0;
    while conn.recv().is_ok() {
        n += 1;
    }
    n
}

/// A receiver killed inside a large value (taken from the pipe, never read to its end) holds
/// up nothing, even before its parent has reaped it: its sender counts a value as unread only
/// while its taker runs, and sends the rest, which another holder of the same end gets intact.
fn a_reader_killed_inside_a_value_does_not_stall_its_sender(m: StartMethod) {
    let size = 40 << 20;
    let (here, there) = pipe().unwrap();
    let mut p = start(m, read_until_killed, (there.clone(),));
    here.send(Fatal::new(true, 0, vec![0; size])).unwrap();
    // The child takes it (not this process, which reads from the same end only once the child
    // is dead), and dies inside it; it is not reaped yet (a zombie under fork and spawn).
    let pid = p.pid().unwrap();
    wait_until("the reader is dead", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'))
        })
    });
    // 40 MiB more on top of the lost 40 would wait for ever if the lost one still counted.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for i in 1..=3u8 {
            here.send(Fatal::new(false, 0, pattern(i, size))).unwrap();
        }
        done.send(()).unwrap();
    });
    for i in 1..=3u8 {
        let v = there.recv_timeout(PATIENCE).unwrap();
        assert!(
            !v.die && v.data == ByteBuf::from(pattern(i, size)),
            "value {i}"
        );
    }
    finished.recv_timeout(PATIENCE).unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    assert_eq!(p.exitcode(), Some(-libc::SIGKILL), "{e}");
}

/// A reader that takes a large value and reads it slowly holds its sender back while it runs:
/// it names itself in the value's file as it takes it, so the sender counts the file even
/// once the pipe is empty.
fn a_slow_reader_holds_its_sender_back(m: StartMethod) {
    let size = 40 << 20;
    let (here, there) = pipe().unwrap();
    let mut p = start(m, read_until_killed, (there,));
    here.send(Fatal::new(false, 1500, vec![1; size])).unwrap();
    // The reader takes it (the pipe empties) and naps 1.5 s inside it: 40 MiB more must wait.
    let (tell, told) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let began = Instant::now();
        here.send(Fatal::new(false, 0, vec![2; size])).unwrap();
        tell.send(began.elapsed()).unwrap();
    });
    let waited = told.recv_timeout(PATIENCE).unwrap();
    assert!(
        waited >= Duration::from_millis(1000),
        "sent after {waited:?}"
    );
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 2);
}

/// Reads nothing; leaves when `go` says so (its end closes with it).
fn leave_unread(conn: Connection<ByteBuf>, go: Connection<u8>) {
    let _ = go.recv();
    drop(conn);
}

/// A sender waiting for a reader that leaves without reading gets `Closed`, not a wait for
/// ever: the values left unread in the pipe no longer count. So does one waiting on an end
/// closed under it.
fn a_sender_waiting_on_a_reader_that_leaves_is_told_closed(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let (go, go_there) = pipe().unwrap();
    let mut p = start(m, leave_unread, (there, go_there));
    let (tell, told) = std::sync::mpsc::channel();
    let sender = here.clone();
    std::thread::spawn(move || {
        let mut sent = 0u32;
        let e = loop {
            match sender.send(ByteBuf::from(vec![1; 10 << 20])) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            tell.send(Ok(sent)).unwrap();
        };
        tell.send(Err((sent, e.kind().clone()))).unwrap();
    });
    for n in 1..=6 {
        assert_eq!(told.recv_timeout(PATIENCE).unwrap(), Ok(n));
    }
    let more = told.recv_timeout(Duration::from_secs(1));
    assert!(more.is_err(), "six fit, and no more: {more:?}");
    go.send(1).unwrap();
    let last = told.recv_timeout(PATIENCE).unwrap();
    assert_eq!(last, Err((6, ErrorKind::Closed)));
    p.join_timeout(PATIENCE).unwrap();

    // Waiting on its own end closed: `Closed` too.
    let (here, _there) = pipe::<ByteBuf>().unwrap();
    let sender = here.clone();
    let (tell, told) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..6 {
            sender.send(ByteBuf::from(vec![1; 10 << 20])).unwrap();
        }
        tell.send(None).unwrap();
        let e = sender.send(ByteBuf::from(vec![1; 10 << 20])).unwrap_err();
        tell.send(Some(e.kind().clone())).unwrap();
    });
    assert_eq!(told.recv_timeout(PATIENCE).unwrap(), None, "six sent");
    std::thread::sleep(Duration::from_millis(100));
    here.close();
    assert_eq!(
        told.recv_timeout(PATIENCE).unwrap(),
        Some(ErrorKind::Closed)
    );
}

/// How many sequenced-packet sockets (a pipe's ends) the calling process holds, from
/// `/proc/self/fd` and `/proc/self/net/unix`.
fn pipe_ends_here() -> usize {
    let seqpacket: std::collections::HashSet<String> =
        std::fs::read_to_string("/proc/self/net/unix")
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(4) == Some(&"0005")).then(|| f.get(6).map(|i| i.to_string()))?
            })
            .collect();
    crate::common::open_fds()
        .iter()
        .filter_map(|(_, l)| l.strip_prefix("socket:[")?.strip_suffix(']'))
        .filter(|inode| seqpacket.contains(*inode))
        .count()
}

/// Children started while other threads make pipes and receive ends of pipes hold none of
/// them: an end made, or received, and not yet listed as mproc's own when another thread forks
/// would stay open in the child for its whole life, and its peer would not see end of file
/// until the child ends (a `Fork` child holds only the ends passed to it).
fn children_started_beside_threads_making_and_receiving_pipes_hold_no_end(m: StartMethod) {
    // Alone: the count is of every pipe end in the child.
    if !crate::common::alone() {
        return;
    }
    let (tx, rx) = pipe::<Connection<u8>>().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut got = 0u64;
        while let Ok(end) = rx.recv_timeout(Duration::from_secs(2)) {
            drop(end);
            got += 1;
        }
        got
    });
    // At least 150 children, and for as long as it takes 150 pipes to go by meanwhile.
    let (held, made) = crate::common::children_beside(m, pipe_ends_here, 150, 150, move |_| {
        let (a, b) = pipe::<u8>().unwrap();
        tx.send(b).unwrap();
        drop(a);
    });
    let got = receiver.join().unwrap();
    assert_eq!(got, made, "every end sent was received");
    assert!(
        held.is_empty(),
        "children holding ends of pipes (child, how many): {held:?}"
    );
}

per_start_method!(
    children_started_beside_threads_making_and_receiving_pipes_hold_no_end,
    messages_cross_in_order_both_ways,
    large_values_cross_through_shared_memory,
    a_dead_peer_is_an_error_at_once,
    handles_travel_inside_messages,
    concurrent_senders_never_interleave,
    close_ends_the_other_side_after_what_was_sent,
    large_messages_reuse_memory_without_mixing_them,
    a_sender_ahead_of_its_reader_waits_for_it,
    a_reader_killed_inside_a_value_does_not_stall_its_sender,
    a_sender_waiting_on_a_reader_that_leaves_is_told_closed,
    a_slow_reader_holds_its_sender_back,
);

static INHERITED: std::sync::Mutex<Option<Connection<u8>>> = std::sync::Mutex::new(None);

/// Tries the connection this process inherited through fork (not passed to it).
fn use_inherited() -> Option<ErrorKind> {
    let conn = INHERITED.lock().unwrap().clone()?;
    conn.send(1).err().map(|e| e.kind().clone())
}

/// A fork child holds only the ends passed to it: one it inherited is closed there (the peer
/// still sees end of file when the holders it was passed to are gone) and using it is an error.
#[test]
fn a_fork_child_does_not_keep_ends_it_was_not_passed() {
    let (here, there) = pipe::<u8>().unwrap();
    *INHERITED.lock().unwrap() = Some(there);
    let mut p = start(StartMethod::Fork, use_inherited, ());
    let got = p.join_timeout(PATIENCE).unwrap();
    assert!(
        matches!(got, Some(ErrorKind::InvalidArgument(_))),
        "{got:?}"
    );
    // A fork child alive for a long while: with this process's own copy gone, nobody holds
    // the other end, whatever the child inherited.
    let p = start(StartMethod::Fork, crate::common::sleep_ms, (30_000,));
    *INHERITED.lock().unwrap() = None;
    assert_eq!(
        here.recv_timeout(PATIENCE).unwrap_err().kind(),
        &ErrorKind::Closed
    );
    assert!(p.is_alive());
    p.kill().unwrap();
}

/// Each receiver keeps its own deadline, even while another waits on the same end.
#[test]
fn recv_timeout_keeps_its_deadline_beside_another_receiver() {
    let (a, b) = pipe::<u8>().unwrap();
    std::thread::scope(|s| {
        let other = s.spawn(|| b.recv_timeout(PATIENCE));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let e = b.recv_timeout(Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Timeout);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        a.send(1).unwrap();
        assert_eq!(other.join().unwrap().unwrap(), 1);
    });
}

/// A large value whose decoding panics.
#[derive(serde::Serialize, serde::Deserialize)]
struct PanicsReading(#[serde(deserialize_with = "panic_reading")] ByteBuf);

fn panic_reading<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ByteBuf, D::Error> {
    let _ = <ByteBuf as serde::Deserialize>::deserialize(d)?;
    panic!("decoding panics");
}

/// A receive that unwinds (its value's decoding panics, the panic caught) still marks the
/// value read: its sender, which would count it as unread while this process runs, is not
/// held back by it (past 16 such values it would wait for ever).
#[test]
fn a_read_that_unwinds_holds_up_nothing() {
    let (a, b) = pipe::<PanicsReading>().unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..40 {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                a.send(PanicsReading(ByteBuf::from(vec![1; 100_000])))
                    .unwrap();
                b.recv()
            }));
            assert!(caught.is_err(), "the read panicked");
        }
        done.send(()).unwrap();
    });
    finished.recv_timeout(PATIENCE).unwrap();
}
