//! Unit tests of the ring, in this process (a case that may kill its process runs in children).

use std::io;
use std::sync::atomic::Ordering;

use super::*;
use crate::sys::shared::tests::{MUTEX, in_own_process, lock_block};

/// Puts `body` as one frame.
fn put(ring: &Ring, body: &[u8]) -> io::Result<Push> {
    let mut producer = ring.producer(None)?.expect("no deadline");
    producer.push(body.len(), false, None, |b| {
        b.copy_from_slice(body);
        Ok::<_, io::Error>(())
    })
}

/// Takes one frame.
fn get(ring: &Ring) -> io::Result<Option<Vec<u8>>> {
    let mut consumer = ring.consumer(None)?.expect("no deadline");
    consumer.pop(|b| b.into_vec())?.transpose()
}

/// A body that says which frame it is.
fn body(n: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i ^ n) as u8).collect()
}

fn cap(ring: &Ring) -> u64 {
    ring.h().shape.cap.load(Ordering::Relaxed)
}

#[test]
fn frames_wrap_around_the_ring_in_order_without_growing() {
    let ring = Ring::create(1, 0).unwrap();
    // Sizes that do not divide the capacity, at most three frames queued: the positions
    // pass the ring's end many times, with skips at many offsets.
    let (mut sent, mut got) = (0, 0);
    for round in 0..3000 {
        let len = (round * 37) % 9000;
        assert_eq!(put(&ring, &body(sent, len)).unwrap(), Push::Done);
        sent += 1;
        if sent - got == 3 {
            let frame = get(&ring).unwrap().expect("a frame");
            assert_eq!(frame, body(got, frame.len()), "frame {got}");
            got += 1;
        }
    }
    while let Some(frame) = get(&ring).unwrap() {
        assert_eq!(frame, body(got, frame.len()));
        got += 1;
    }
    assert_eq!(got, sent);
    assert_eq!(cap(&ring), FIRST_CAP as u64, "it never needed to grow");
    let read = ring.h().get.read.load(Ordering::Relaxed);
    assert!(
        read > 100 * FIRST_CAP as u64,
        "it went round the ring: {read}"
    );
}

#[test]
fn the_ring_grows_and_keeps_every_frame_in_order() {
    let ring = Ring::create(1, 0).unwrap();
    // Some frames taken first, so the live ones straddle the ring's end when it grows.
    for n in 0..5 {
        put(&ring, &body(n, 5000)).unwrap();
    }
    for n in 0..5 {
        assert_eq!(get(&ring).unwrap().unwrap(), body(n, 5000));
    }
    let mut caps = vec![cap(&ring)];
    for n in 5..200 {
        assert_eq!(put(&ring, &body(n, 3000 + n)).unwrap(), Push::Done);
        if caps.last() != Some(&cap(&ring)) {
            caps.push(cap(&ring));
        }
    }
    assert!(caps.len() >= 3, "grew more than once: {caps:?}");
    assert_eq!(ring.len(), 195);
    for n in 5..200 {
        assert_eq!(get(&ring).unwrap().unwrap(), body(n, 3000 + n), "frame {n}");
    }
    assert_eq!(get(&ring).unwrap(), None);
}

#[test]
fn a_bounded_ring_is_full_at_maxsize_and_empty_after() {
    let ring = Ring::create(1, 2).unwrap();
    assert_eq!(ring.maxsize(), 2);
    assert!(!ring.has_frames());
    assert_eq!(get(&ring).unwrap(), None, "empty");
    assert_eq!(put(&ring, b"a").unwrap(), Push::Done);
    assert_eq!(
        put(&ring, b"").unwrap(),
        Push::Done,
        "an empty frame is a frame"
    );
    assert_eq!(put(&ring, b"c").unwrap(), Push::Full);
    assert_eq!(ring.len(), 2);
    assert!(ring.has_frames());
    assert_eq!(get(&ring).unwrap().unwrap(), b"a");
    assert_eq!(put(&ring, b"c").unwrap(), Push::Done);
    assert_eq!(get(&ring).unwrap().unwrap(), b"");
    assert_eq!(get(&ring).unwrap().unwrap(), b"c");
    assert_eq!(get(&ring).unwrap(), None);
    assert_eq!(ring.len(), 0);
    let mut producer = ring.producer(None).unwrap().unwrap();
    let too_big = producer.push(MAX_FRAME + 1, false, None, |_| Ok::<_, io::Error>(()));
    assert_eq!(too_big.unwrap_err().kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn a_put_that_fails_to_fill_publishes_nothing() {
    let ring = Ring::create(1, 0).unwrap();
    let mut producer = ring.producer(None).unwrap().unwrap();
    let failed = producer.push(10, true, None, |_| Err(io::Error::other("no")));
    assert!(failed.is_err());
    drop(producer);
    assert_eq!((ring.len(), ring.unfinished()), (0, 0));
    assert_eq!(get(&ring).unwrap(), None);
}

/// Positions and lengths a peer wrote into the header or the ring, within a sane capacity:
/// each is an `InvalidData` error from the get or put that meets it, never a panic, a hang
/// or a frame made of the wrong bytes.
#[test]
fn corrupt_positions_and_lengths_are_errors() {
    let corrupt = |e: io::Error| assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    let queued = || {
        let ring = Ring::create(1, 0).unwrap();
        put(&ring, b"hello").unwrap();
        ring
    };
    let frame = DATA_AT;
    // A length running past what was published.
    let ring = queued();
    ring.map
        .map()
        .view::<AtomicU32>(frame)
        .unwrap()
        .store(4000, Ordering::Relaxed);
    corrupt(get(&ring).unwrap_err());
    // A length that is the skip mark, at the ring's start.
    let ring = queued();
    ring.map
        .map()
        .view::<AtomicU32>(frame)
        .unwrap()
        .store(SKIP, Ordering::Relaxed);
    corrupt(get(&ring).unwrap_err());
    // A read position off the frames' grid.
    let ring = queued();
    ring.h().get.read.store(4, Ordering::Relaxed);
    corrupt(get(&ring).unwrap_err());
    // More bytes queued than the ring holds: a put must not overwrite unread frames.
    let ring = queued();
    ring.h()
        .put
        .written
        .store(3 * FIRST_CAP as u64, Ordering::Relaxed);
    ring.h().put.read_seen.store(0, Ordering::Relaxed);
    corrupt(put(&ring, &[1; 100]).unwrap_err());
    // A read position ahead of the written one.
    let ring = queued();
    ring.h().get.read.store(1 << 20, Ordering::Relaxed);
    ring.h().put.read_seen.store(1 << 20, Ordering::Relaxed);
    corrupt(put(&ring, &[1; 100]).unwrap_err());
    // Counts that went backwards are a length of zero, not an overflow.
    let ring = queued();
    ring.h().get.gets.store(10, Ordering::Relaxed);
    assert_eq!(ring.len(), 0);
    // A holder that died while moving the frames: the queue says it is broken.
    let ring = queued();
    ring.h().shape.relocating.store(1, Ordering::Relaxed);
    corrupt(get(&ring).unwrap_err());
    corrupt(put(&ring, b"x").unwrap_err());
}

#[test]
fn only_a_queue_of_the_kind_opens() {
    let ring = Ring::create(3, 0).unwrap();
    let file = || ring.file.try_clone().unwrap();
    assert!(Ring::open(file(), 3).is_ok());
    assert_eq!(
        Ring::open(file(), 4).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    ring.h().fixed.magic.store(0, Ordering::Relaxed);
    assert_eq!(
        Ring::open(file(), 3).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    // A shared block large enough to be a queue: another kind of memory file.
    let block = crate::sys::shared::Block::create(3, DATA_AT + FIRST_CAP, &[]).unwrap();
    use std::os::fd::AsFd;
    let file = block.as_fd().try_clone_to_owned().unwrap();
    assert!(Ring::open(file, 3).is_err());
}

#[test]
fn holders_and_lent_handles_are_counted() {
    let ring = Ring::create(1, 0).unwrap();
    let me = Holder { pid: 10, start: 1 };
    let other = Holder { pid: 11, start: 1 };
    let alive = |_| true;
    // Never shared: counts as shared (it waits, as Python's does).
    assert!(ring.shared_beyond(me, alive).unwrap());
    ring.attach(me, alive, true).unwrap();
    assert!(!ring.shared_beyond(me, alive).unwrap(), "only this handle");
    ring.attach(other, alive, false).unwrap();
    assert!(ring.shared_beyond(me, alive).unwrap(), "another process");
    assert!(
        !ring.shared_beyond(me, |h| h != other).unwrap(),
        "the other one died"
    );
    ring.detach(other).unwrap();
    let lent = ring.lend().unwrap();
    assert!(ring.shared_beyond(me, alive).unwrap(), "a handle in flight");
    drop(lent);
    assert!(!ring.shared_beyond(me, alive).unwrap(), "its message dropped unread");
    let lent = ring.lend().unwrap();
    let copy = lent.try_clone().unwrap();
    let arrived = Ring::open(lent, 1).unwrap();
    assert!(ring.shared_beyond(me, alive).unwrap(), "not arrived yet");
    arrived.arrived();
    assert!(!ring.shared_beyond(me, alive).unwrap(), "arrived");
    assert!(!arrived.shared_beyond(me, alive).unwrap(), "seen from the arrived mapping");
    drop(copy);
    let lent = arrived.lend().unwrap();
    assert!(ring.shared_beyond(me, alive).unwrap(), "lent on from there");
    assert!(arrived.shared_beyond(me, alive).unwrap(), "seen by the lender too");
    drop(lent);
    assert!(!ring.shared_beyond(me, alive).unwrap());
}

fn text(e: impl ToString) -> String {
    e.to_string()
}

/// Reads and writes a queue whose header a peer corrupted: a capacity past the end of the
/// file, zero, unaligned or absurd, or positions off the frames' grid. Each must be an
/// error; reading or writing where the header points would kill the process (`SIGBUS`
/// past the file, a division by zero, an unaligned access).
fn use_a_queue_with_a_corrupt_layout() -> Result<(), String> {
    let far = 1u64 << 29;
    let cases = [
        (1u64 << 30, 0u64, far),
        (0, 0, 0),
        (FIRST_CAP as u64 + 4, 0, 0),
        (u64::MAX, 0, 0),
        (u64::MAX - 7, 0, 0),
        (FIRST_CAP as u64, 4, 0),
    ];
    for (cap, base, read) in cases {
        let ring = Ring::create(1, 0).map_err(text)?;
        ring.producer(None)
            .map_err(text)?
            .ok_or("the producers' lock")?
            .push(5, false, None, |b| {
                b.copy_from_slice(b"hello");
                Ok::<_, io::Error>(())
            })
            .map_err(text)?;
        ring.h().shape.cap.store(cap, Ordering::Relaxed);
        ring.h().shape.base.store(base, Ordering::Relaxed);
        ring.h().get.read.store(read, Ordering::Relaxed);
        ring.h().put.written.store(read + 16, Ordering::Relaxed);
        ring.h().put.read_seen.store(read, Ordering::Relaxed);
        let what = format!("capacity {cap}, base {base}, read {read}");
        let mut consumer = ring.consumer(None).map_err(text)?.ok_or("the lock")?;
        match consumer.pop(|b| b.into_vec()) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            other => return Err(format!("{what}: a get gave {other:?}")),
        }
        drop(consumer);
        let mut producer = ring.producer(None).map_err(text)?.ok_or("the lock")?;
        let pushed = producer.push(8, false, None, |b| {
            b.fill(1);
            Ok::<_, io::Error>(())
        });
        match pushed {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {}
            other => return Err(format!("{what}: a put gave {other:?}")),
        }
        drop(producer);
        let file = ring.file.try_clone().map_err(text)?;
        if Ring::open(file, 1).is_ok() {
            return Err(format!("{what}: opened"));
        }
    }
    Ok(())
}

#[test]
fn a_corrupt_capacity_is_an_error_not_a_crash() {
    crate::sys::shm::testing::in_children(use_a_queue_with_a_corrupt_layout);
}

#[test]
fn the_ring_grows_past_the_size_it_first_saw() {
    let a = Ring::create(1, 0).unwrap();
    let b = Ring::open(a.file.try_clone().unwrap(), 1).unwrap();
    let body = vec![3u8; 3 * FIRST_CAP];
    let mut p = a.producer(None).unwrap().unwrap();
    let pushed = p.push(body.len(), false, None, |b| {
        b.copy_from_slice(&body);
        Ok::<_, io::Error>(())
    });
    assert_eq!(pushed.unwrap(), Push::Done);
    drop(p);
    // `b` still has the first size on record: it must look again, not call it corrupt.
    let mut c = b.consumer(None).unwrap().unwrap();
    assert_eq!(c.pop(|b| b.into_vec()).unwrap().unwrap().unwrap(), body);
}

/// The fuzz target's body on cheap random inputs, on every `cargo test`: the long run is
/// `cargo fuzz` (fuzz/README.md); this keeps the checks honest between runs.
#[test]
fn the_fuzz_body_survives_random_inputs() {
    for data in crate::sys::shm::testing::fuzz_inputs(40) {
        super::fuzz(&data);
    }
}

/// A queue's lock left held (no queue API does that, but one forgotten hold would) keeps
/// its memory mapped: later locks of other mutexes work, through this thread's list.
#[test]
fn a_queue_lock_left_held_leaves_later_locks_working() {
    in_own_process(
        "queue::ring::tests::a_queue_lock_left_held_leaves_later_locks_working",
        || {
            let made_before = lock_block();
            for _ in 0..3 {
                let ring = Ring::create(1, 0).unwrap();
                std::mem::forget(ring.producer(None).unwrap().unwrap());
                std::mem::forget(ring.consumer(None).unwrap().unwrap());
                drop(ring);
                // Before any new mapping can take the ring's place.
                drop(made_before.mutex_at(MUTEX).lock(None).unwrap().unwrap());
            }
            for _ in 0..100 {
                let ring = Ring::create(1, 0).unwrap();
                drop(ring.producer(None).unwrap().unwrap());
                drop(made_before.mutex_at(MUTEX).lock(None).unwrap().unwrap());
                let block = lock_block();
                drop(block.mutex_at(MUTEX).lock(None).unwrap().unwrap());
            }
        },
    );
}
