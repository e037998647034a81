//! A lane: two single-producer, single-consumer byte rings in one shared mapping, one each way
//! between a pool's dispatcher and one of its workers, plus the shared words that say who is
//! asleep and how many tasks the worker has started.
//!
//! Frames cross without a system call. A side about to block first says so in its `asleep`
//! word and looks at its ring once more; a side that publishes a frame then looks at the
//! peer's word and, only if the peer sleeps, wakes it by some other means (the pool sends a
//! small message on the worker's socket). Both looks are ordered by a sequentially consistent
//! fence, so one of the two always sees the other: a frame is never left unseen by a sleeper.
//!
//! Layout (`HEADER` bytes of words, each on its own cache line, then the two rings):
//!
//! ```text
//! down.tail  down.head  up.tail  up.head  worker_asleep  parent_asleep  started  magic,capacity
//! claim slots (MARKS words)
//! [ down ring: parent -> worker, CAPACITY bytes ][ up ring: worker -> parent, CAPACITY bytes ]
//! ```
//!
//! Positions are byte counts that only grow; a frame is a `u32` length, four bytes of padding
//! and the body, padded to 8 bytes, never split across the ring's end (a `u32::MAX` length
//! says "continue at the start"). Each side keeps its own position privately and trusts
//! nothing it reads from the peer: a position or length out of bounds is reported as
//! [`Corrupt`], never followed.

// The lane lives in shared memory, reached through pointers into its mapping.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::fd::InternalFd;
use super::shm::Mapping;

const LINE: usize = 64;
const HEADER: usize = 4096;
/// Bytes in each ring.
const CAPACITY: usize = 256 * 1024;
const FRAME_HEADER: usize = 8;
const WRAP: u32 = u32::MAX;
const MAGIC: u64 = 0x6d70_726f_635f_6c31; // "mproc_l1"

/// The largest frame body a ring carries; larger ones must travel some other way.
pub(crate) const MAX_FRAME: usize = CAPACITY / 8;

const DOWN_TAIL: usize = 0;
const DOWN_HEAD: usize = LINE;
const UP_TAIL: usize = 2 * LINE;
const UP_HEAD: usize = 3 * LINE;
const WORKER_ASLEEP: usize = 4 * LINE;
const PARENT_ASLEEP: usize = 5 * LINE;
const STARTED: usize = 6 * LINE;
const MAGIC_AT: usize = 7 * LINE;
/// Claim slots: slot `n % MARKS` decides who has task number `n` (see [`Lane::claim`]).
const MARKS_AT: usize = 8 * LINE;

/// How many claim slots a lane keeps: at least as many tasks as a worker may hold at once,
/// so a slot is never reused while its task may still be taken back.
pub(crate) const MARKS: usize = 256;

/// A slot's value once the worker has claimed task `n` to run it.
const fn claimed(task: u64) -> u64 {
    (task << 1) | 1
}

/// A slot's value once the dispatcher has taken task `n` back.
const fn revoked(task: u64) -> u64 {
    task << 1
}

/// The peer wrote something a well-behaved peer never writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt;

#[derive(Debug, Clone, Copy)]
struct Ring {
    tail: usize,
    head: usize,
    data: usize,
}

const DOWN: Ring = Ring {
    tail: DOWN_TAIL,
    head: DOWN_HEAD,
    data: HEADER,
};
const UP: Ring = Ring {
    tail: UP_TAIL,
    head: UP_HEAD,
    data: HEADER + CAPACITY,
};

/// One side's view of a lane.
#[derive(Debug)]
pub(crate) struct Lane {
    map: Mapping,
    out: Ring,
    inc: Ring,
    mine_asleep: usize,
    peer_asleep: usize,
    /// Where this side writes next in its outgoing ring (never read back from shared memory).
    out_tail: u64,
    /// Where this side reads next in its incoming ring.
    in_head: u64,
    /// Tasks started (the worker's side only).
    started: u64,
}

fn padded(len: usize) -> usize {
    FRAME_HEADER + len.next_multiple_of(8)
}

impl Lane {
    /// The dispatcher's side of a new lane, and the descriptor to send to the worker.
    pub(crate) fn create() -> io::Result<(Lane, InternalFd)> {
        let (map, file) = Mapping::create("mproc-lane", HEADER + 2 * CAPACITY)?;
        let lane = Lane::new(map, true);
        lane.word(MAGIC_AT).store(MAGIC, Ordering::Relaxed);
        lane.word(MAGIC_AT + 8)
            .store(CAPACITY as u64, Ordering::Release);
        Ok((lane, file))
    }

    /// The worker's side of the lane whose memory file is `file`.
    pub(crate) fn open(file: BorrowedFd<'_>) -> io::Result<Lane> {
        let map = Mapping::open(file)?;
        if map.len() != HEADER + 2 * CAPACITY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a lane"));
        }
        let lane = Lane::new(map, false);
        if lane.word(MAGIC_AT).load(Ordering::Relaxed) != MAGIC
            || lane.word(MAGIC_AT + 8).load(Ordering::Acquire) != CAPACITY as u64
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a lane"));
        }
        Ok(lane)
    }

    fn new(map: Mapping, parent: bool) -> Lane {
        let (out, inc, mine_asleep, peer_asleep) = if parent {
            (DOWN, UP, PARENT_ASLEEP, WORKER_ASLEEP)
        } else {
            (UP, DOWN, WORKER_ASLEEP, PARENT_ASLEEP)
        };
        Lane {
            map,
            out,
            inc,
            mine_asleep,
            peer_asleep,
            out_tail: 0,
            in_head: 0,
            started: 0,
        }
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        const { assert!(MARKS_AT + 8 * MARKS <= HEADER) };
        debug_assert!(at + 8 <= HEADER && at % 8 == 0);
        // SAFETY: `at` is one of the header's 8-aligned offsets inside the mapping (which is
        // page-aligned and outlives the borrow); both processes touch these words only through
        // atomics, and `AtomicU64` has the layout of `u64`.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU64>() }
    }

    /// Whether a body of `len` bytes may go in a ring at all.
    pub(crate) fn fits(len: usize) -> bool {
        len <= MAX_FRAME
    }

    /// Where a frame of `len` would go now (offset, bytes skipped to wrap), or `None` when it
    /// does not fit now.
    fn room(&self, len: usize) -> Result<Option<(usize, usize)>, Corrupt> {
        if !Lane::fits(len) {
            return Ok(None);
        }
        let head = self.word(self.out.head).load(Ordering::Acquire);
        let used = self.out_tail.wrapping_sub(head);
        if used > CAPACITY as u64 {
            return Err(Corrupt); // the peer's position is impossible
        }
        let free = CAPACITY - used as usize;
        let off = (self.out_tail % CAPACITY as u64) as usize;
        let need = padded(len);
        let skip = if need > CAPACITY - off {
            CAPACITY - off
        } else {
            0
        };
        Ok((skip + need <= free).then_some((off, skip)))
    }

    /// Whether a frame of `len` bytes can be pushed now.
    pub(crate) fn has_room(&self, len: usize) -> Result<bool, Corrupt> {
        Ok(self.room(len)?.is_some())
    }

    /// Publishes `body` as one frame; `Ok(false)` (nothing written) when the ring is full or
    /// the body too large.
    pub(crate) fn push(&mut self, body: &[u8]) -> Result<bool, Corrupt> {
        let Some((mut off, skip)) = self.room(body.len())? else {
            return Ok(false);
        };
        let data = self.out.data;
        if skip > 0 {
            // SAFETY: `off` is 8-aligned and at least 8 bytes before the ring's end, in the
            // part of the ring the consumer has released.
            unsafe { self.map.as_ptr().add(data + off).cast::<u32>().write(WRAP) };
            self.out_tail += skip as u64;
            off = 0;
        }
        // SAFETY: `room` checked that the padded frame fits between `off` and the ring's end
        // and in the space the consumer has released; nobody reads it before the tail moves.
        unsafe {
            let at = self.map.as_ptr().add(data + off);
            at.cast::<u32>().write(body.len() as u32);
            at.add(4).cast::<u32>().write(0);
            std::ptr::copy_nonoverlapping(body.as_ptr(), at.add(FRAME_HEADER), body.len());
        }
        self.out_tail += padded(body.len()) as u64;
        self.word(self.out.tail)
            .store(self.out_tail, Ordering::Release);
        Ok(true)
    }

    /// Whether the incoming ring holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.word(self.inc.tail).load(Ordering::Acquire) == self.in_head
    }

    /// Copies the next incoming frame into `buf` (replacing its contents); `Ok(false)` when
    /// there is none.
    pub(crate) fn pop_into(&mut self, buf: &mut Vec<u8>) -> Result<bool, Corrupt> {
        loop {
            let tail = self.word(self.inc.tail).load(Ordering::Acquire);
            if tail == self.in_head {
                return Ok(false);
            }
            let avail = tail.wrapping_sub(self.in_head);
            if avail > CAPACITY as u64 {
                return Err(Corrupt);
            }
            let avail = avail as usize;
            let off = (self.in_head % CAPACITY as u64) as usize;
            let at = self.inc.data + off;
            // SAFETY: `off` is 8-aligned and at most CAPACITY - 8, so the length word is
            // inside the ring; the producer published it before moving the tail (Acquire).
            // Read once (volatile): the peer's memory, checked below, must not be re-read after.
            let len = unsafe { self.map.as_ptr().add(at).cast::<u32>().read_volatile() };
            if len == WRAP {
                let skip = CAPACITY - off;
                // A wrap at the ring's start is never written (every frame fits after it), so
                // this loop turns at most twice, however fast a peer moves the tail.
                if skip > avail || off == 0 {
                    return Err(Corrupt);
                }
                self.in_head += skip as u64;
                continue;
            }
            let len = len as usize;
            if len > MAX_FRAME || padded(len) > avail || padded(len) > CAPACITY - off {
                return Err(Corrupt);
            }
            buf.clear();
            buf.reserve(len);
            // SAFETY: the body lies inside the ring (checked above) and inside `buf`'s spare
            // capacity (reserved above); the producer does not touch published frames.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.map.as_ptr().add(at + FRAME_HEADER),
                    buf.as_mut_ptr(),
                    len,
                );
                buf.set_len(len);
            }
            self.in_head += padded(len) as u64;
            self.word(self.inc.head)
                .store(self.in_head, Ordering::Release);
            return Ok(true);
        }
    }

    /// Says this side is about to block; `true` when it may (nothing arrived meanwhile). On
    /// `false` it has already taken the word back.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.word(self.mine_asleep).store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.is_empty() {
            true
        } else {
            self.awake();
            false
        }
    }

    /// Says this side is awake (no wake-up needed).
    pub(crate) fn awake(&self) {
        self.word(self.mine_asleep).store(0, Ordering::Relaxed);
    }

    /// After publishing: whether the peer sleeps and must be woken (at most once per sleep).
    pub(crate) fn peer_needs_wake(&self) -> bool {
        fence(Ordering::SeqCst);
        let peer = self.word(self.peer_asleep);
        peer.load(Ordering::Relaxed) != 0 && peer.swap(0, Ordering::SeqCst) != 0
    }

    /// The worker has just taken its next task: counts it and claims it. `true` if it is
    /// the worker's to run; `false` if the dispatcher took it back first ([`Lane::revoke`]),
    /// in which case the worker must skip it.
    ///
    /// Exactly one side decides each task: the claim and the revocation are single atomic
    /// read-modify-writes of the same slot, so whichever comes second sees the first. The
    /// slot's value names the task number, so a value left from task `n - MARKS` (a chunk
    /// taken back earlier, perhaps the very chunk now returning) never decides task `n`.
    pub(crate) fn claim(&mut self) -> bool {
        self.started += 1;
        let task = self.started;
        self.word(STARTED).store(task, Ordering::Release);
        self.slot(task).swap(claimed(task), Ordering::AcqRel) != revoked(task)
    }

    /// How many tasks the worker has taken (claimed or skipped).
    pub(crate) fn started(&self) -> u64 {
        self.word(STARTED).load(Ordering::Acquire)
    }

    /// The dispatcher takes back the worker's task number `task` (counting from 1): `true`
    /// if the worker had not claimed it, so it never will run it (it skips it); `false` if
    /// the worker has claimed it and runs it (only killing the worker stops it then).
    ///
    /// The dispatcher must only revoke tasks the worker may not have passed by `MARKS`:
    /// tasks it holds, of which there are never more than `MARKS`.
    pub(crate) fn revoke(&self, task: u64) -> bool {
        let slot = self.slot(task);
        let mut seen = slot.load(Ordering::Acquire);
        loop {
            if seen == claimed(task) {
                return false;
            }
            match slot.compare_exchange_weak(
                seen,
                revoked(task),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
    }

    fn slot(&self, task: u64) -> &AtomicU64 {
        self.word(MARKS_AT + 8 * (task % MARKS as u64) as usize)
    }
}

/// The lane fuzz target's body (`mproc::__fuzz::lane`): a dispatcher's and a worker's side
/// of one lane, driven by `data` one operation at a time: pushes and pops both ways, the
/// sleep handshake, a worker that opens the file again, and a peer's arbitrary writes anywhere
/// in the shared file (positions, lengths, ring bytes). Every call must return: no panic, no
/// access outside the mapping, no endless loop; a side reports a bad peer as [`Corrupt`], and
/// only after some stray write. Frames no stray write could have touched arrive whole and in
/// order.
pub(crate) fn fuzz(data: &[u8]) {
    use std::collections::VecDeque;
    use std::os::fd::AsFd;

    let Ok((parent, file)) = Lane::create() else {
        return;
    };
    let Ok(worker) = Lane::open(file.as_fd()) else {
        return;
    };
    let mut sides = [parent, worker];
    // Frames pushed by each side and not yet popped by the other.
    let mut sent: [VecDeque<Vec<u8>>; 2] = Default::default();
    // Whether anything but the two sides' own calls wrote to the lane.
    let mut tampered = false;
    let mut buf = Vec::new();
    let mut input = data.iter().copied();
    let mut byte = || input.next().unwrap_or(0);
    let word = |byte: &mut dyn FnMut() -> u8, n: usize| {
        (0..n).fold(0u64, |w, i| w | u64::from(byte()) << (8 * i))
    };
    let file_len = HEADER + 2 * CAPACITY;
    for step in 0..data.len().min(512) {
        let op = byte();
        let me = usize::from(op & 1);
        let peer = 1 - me;
        match (op >> 1) % 8 {
            // Push a frame: small, near the largest, or too large.
            0 | 1 => {
                let len = match op >> 4 {
                    0..=11 => word(&mut byte, 1) as usize * 8 + step % 8,
                    12..=14 => MAX_FRAME - word(&mut byte, 1) as usize,
                    _ => MAX_FRAME + 1 + word(&mut byte, 1) as usize,
                };
                let body: Vec<u8> = (0..len).map(|i| (i ^ step) as u8).collect();
                match sides[me].push(&body) {
                    Ok(true) => sent[me].push_back(body),
                    Ok(false) => assert!(tampered || !sent[me].is_empty() || len > MAX_FRAME),
                    Err(Corrupt) => assert!(tampered, "an honest peer reported corrupt"),
                }
            }
            // Pop a frame.
            2 | 3 => match sides[me].pop_into(&mut buf) {
                Ok(true) => {
                    assert!(
                        buf.len() <= MAX_FRAME,
                        "a frame longer than any ring carries"
                    );
                    let want = sent[peer].pop_front();
                    assert!(
                        tampered || want.as_deref() == Some(&buf[..]),
                        "a frame garbled"
                    );
                }
                Ok(false) => assert!(tampered || sent[peer].is_empty(), "a frame lost"),
                Err(Corrupt) => assert!(tampered, "an honest peer reported corrupt"),
            },
            // A peer's write of up to 8 bytes anywhere in the file.
            4 => {
                let at = word(&mut byte, 3) as usize % file_len;
                let bytes: Vec<u8> = (0..byte() % 9).map(|_| byte()).collect();
                let _ = sides[0].map.write_at(at, &bytes);
                tampered = true;
            }
            // A peer's write of a position (or length word) of its choice, near the truth.
            5 => {
                let at = [DOWN_TAIL, DOWN_HEAD, UP_TAIL, UP_HEAD][usize::from(byte() % 4)];
                let now = sides[0].word(at).load(Ordering::Relaxed);
                let value = match byte() % 4 {
                    0 => now.wrapping_add(word(&mut byte, 2)),
                    1 => now.wrapping_sub(word(&mut byte, 2)),
                    2 => now.wrapping_add(CAPACITY as u64 * word(&mut byte, 1)),
                    _ => word(&mut byte, 8),
                };
                sides[0].word(at).store(value, Ordering::Release);
                tampered = true;
            }
            // The rest of a side's calls.
            6 => {
                let len = word(&mut byte, 3) as usize;
                let _ = sides[me].has_room(len);
                let _ = sides[me].is_empty();
                if sides[me].prepare_sleep() {
                    let _ = sides[peer].peer_needs_wake();
                    sides[me].awake();
                }
                let _ = sides[me].started();
            }
            // The worker maps the file again: its positions start over, so what it reads next
            // is no longer what the dispatcher sent.
            _ => {
                if let Ok(lane) = Lane::open(file.as_fd()) {
                    sides[1] = lane;
                }
                tampered = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn pair() -> (Lane, Lane) {
        let (parent, file) = Lane::create().unwrap();
        let worker = Lane::open(file.as_fd()).unwrap();
        (parent, worker)
    }

    #[test]
    fn frames_cross_both_ways_in_order_across_wraps() {
        let (mut p, mut w) = pair();
        let mut buf = Vec::new();
        let mut next_in = 0u32;
        let mut sent = 0u32;
        // Sizes that do not divide the capacity, so frames wrap at many offsets.
        for round in 0..20_000u32 {
            let body: Vec<u8> = (0..(round % 1000)).map(|i| (i ^ sent) as u8).collect();
            if p.push(&body).unwrap() {
                sent += 1;
            }
            if round % 3 == 0 {
                while w.pop_into(&mut buf).unwrap() {
                    let want: Vec<u8> =
                        (0..buf.len() as u32).map(|i| (i ^ next_in) as u8).collect();
                    assert_eq!(buf, want);
                    next_in += 1;
                }
            }
        }
        while w.pop_into(&mut buf).unwrap() {
            next_in += 1;
        }
        assert_eq!(next_in, sent);
        assert!(sent > 10_000);
        assert!(w.push(b"up").unwrap());
        assert!(p.pop_into(&mut buf).unwrap());
        assert_eq!(buf, b"up");
        assert!(!p.pop_into(&mut buf).unwrap());
    }

    #[test]
    fn full_ring_refuses_and_oversized_frames_never_fit() {
        let (mut p, mut w) = pair();
        assert!(!p.push(&vec![0; MAX_FRAME + 1]).unwrap());
        let body = vec![7; MAX_FRAME];
        let mut n = 0;
        while p.push(&body).unwrap() {
            n += 1;
        }
        assert_eq!(n, CAPACITY / padded(MAX_FRAME));
        assert!(!p.has_room(MAX_FRAME).unwrap());
        let mut buf = Vec::new();
        assert!(w.pop_into(&mut buf).unwrap());
        assert!(p.has_room(MAX_FRAME).unwrap());
    }

    #[test]
    fn sleep_words_hand_over_exactly_one_wake() {
        let (mut p, w) = pair();
        assert!(w.prepare_sleep());
        assert!(p.push(b"x").unwrap());
        assert!(p.peer_needs_wake());
        assert!(!p.peer_needs_wake(), "one wake per sleep");
        assert!(!w.prepare_sleep(), "a frame is waiting: do not sleep");
        assert!(!p.peer_needs_wake());
    }

    #[test]
    fn corrupt_positions_are_reported_not_followed() {
        let (mut p, mut w) = pair();
        assert!(p.push(b"hello").unwrap());
        // A peer that writes an impossible tail.
        p.word(DOWN_TAIL).store(u64::MAX / 2, Ordering::Release);
        let mut buf = Vec::new();
        assert_eq!(w.pop_into(&mut buf), Err(Corrupt));
        // A frame whose length runs past what was published.
        let (mut p, mut w) = pair();
        assert!(p.push(b"hello").unwrap());
        // SAFETY: the first frame's length word, inside the down ring.
        unsafe { p.map.as_ptr().add(HEADER).cast::<u32>().write(4000) };
        assert_eq!(w.pop_into(&mut buf), Err(Corrupt));
        // A consumer that writes an impossible head: the producer refuses to write.
        let (mut p, _w) = pair();
        p.word(DOWN_HEAD).store(1 << 40, Ordering::Release);
        assert_eq!(p.push(b"x"), Err(Corrupt));
        assert_eq!(p.has_room(1), Err(Corrupt));
        // A file of the wrong size is not a lane.
        let (_m, file) = Mapping::create("x", 4096).unwrap();
        assert!(Lane::open(file.as_fd()).is_err());
    }

    /// The interleaving that made a task nobody cancelled answer `Cancelled`: the worker
    /// counted the task, the dispatcher marked it and read the count (so kept it as
    /// running), then the worker read the mark (so skipped it). Nobody ran it.
    #[test]
    fn claim_then_revoke_keeps_the_task_with_the_worker() {
        let (p, mut w) = pair();
        assert!(w.claim(), "task 1 was not revoked: the worker runs it");
        assert!(
            !p.revoke(1),
            "task 1 is claimed: the dispatcher must not take it back"
        );
    }

    #[test]
    fn revoke_then_claim_makes_the_worker_skip() {
        let (p, mut w) = pair();
        assert!(p.revoke(1), "task 1 not claimed yet");
        assert!(p.revoke(1), "revoking twice is still revoked");
        assert!(!w.claim(), "task 1 was revoked: the worker skips it");
        assert!(!p.revoke(1), "decided: the worker has passed it");
        assert!(w.claim(), "task 2 was not revoked");
    }

    /// A chunk taken back and handed to the same worker again a slot-length later must run:
    /// the old value in its slot names the old task number.
    #[test]
    fn a_slot_reused_a_ring_later_decides_only_its_own_task() {
        let (p, mut w) = pair();
        assert!(p.revoke(2));
        assert!(w.claim()); // task 1
        assert!(!w.claim()); // task 2: skipped
        for _ in 3..2 + MARKS as u64 {
            assert!(w.claim());
        }
        assert!(
            w.claim(),
            "task 2 + MARKS shares task 2's slot but was never revoked"
        );
        assert!(!p.revoke(2 + MARKS as u64));
    }

    /// Both sides racing on many tasks, on two threads: for each task exactly one side
    /// decides (the dispatcher revoked it and the worker skipped it, or neither).
    #[test]
    fn claim_and_revoke_race_exactly_one_winner() {
        const TASKS: u64 = 20_000;
        const AHEAD: u64 = MARKS as u64 / 2;
        let (p, mut w) = pair();
        // How far the dispatcher has got; each side stays within AHEAD tasks of the other, as
        // in a pool (the dispatcher revokes only tasks the worker holds).
        let passed = AtomicU64::new(0);
        let (revoked, skipped) = std::thread::scope(|s| {
            let dispatcher = s.spawn(|| {
                let mut revoked = Vec::new();
                for task in 1..=TASKS {
                    while task > p.started() + AHEAD {
                        std::thread::yield_now();
                    }
                    if task % 3 != 0 && p.revoke(task) {
                        revoked.push(task);
                    }
                    passed.store(task, Ordering::Release);
                }
                revoked
            });
            let mut skipped = Vec::new();
            for task in 1..=TASKS {
                while task > passed.load(Ordering::Acquire) + AHEAD {
                    std::thread::yield_now();
                }
                if !w.claim() {
                    skipped.push(task);
                }
            }
            (dispatcher.join().unwrap(), skipped)
        });
        assert_eq!(revoked, skipped);
    }

    #[test]
    fn started_counts_cross() {
        let (p, mut w) = pair();
        assert_eq!(p.started(), 0);
        assert!(w.claim());
        assert!(w.claim());
        assert_eq!(p.started(), 2);
    }

    /// A worker handed a lane whose file could shrink (a well-formed lane, unsealed) would
    /// fault on its first read once the sender cut it: it must refuse the file instead.
    fn open_a_lane_its_sender_can_shrink() -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::from(super::super::shm::testing::unsealed_memfd(
            HEADER + 2 * CAPACITY,
        ));
        file.write_all_at(&MAGIC.to_ne_bytes(), MAGIC_AT as u64)
            .and_then(|()| file.write_all_at(&(CAPACITY as u64).to_ne_bytes(), MAGIC_AT as u64 + 8))
            .and_then(|()| file.write_all_at(&8u64.to_ne_bytes(), DOWN_TAIL as u64))
            .map_err(|e| e.to_string())?;
        match Lane::open(file.as_fd()) {
            Ok(mut lane) => {
                file.set_len(0).map_err(|e| e.to_string())?;
                let _ = lane.pop_into(&mut Vec::new());
                Err("a lane that could shrink was opened".into())
            }
            Err(e) if e.to_string().contains("could shrink") => Ok(()),
            Err(e) => Err(format!("the wrong error: {e}")),
        }
    }

    #[test]
    fn a_lane_file_that_could_shrink_is_refused_not_a_crash() {
        super::super::shm::testing::in_children(open_a_lane_its_sender_can_shrink);
    }

    /// The fuzz target's body on cheap random inputs, on every `cargo test`: the long run is
    /// `cargo fuzz` (fuzz/README.md); this keeps the checks honest between runs.
    #[test]
    fn the_fuzz_body_survives_random_inputs() {
        for data in super::super::shm::testing::fuzz_inputs(60) {
            super::fuzz(&data);
        }
    }

    #[test]
    fn a_wrap_at_the_rings_start_is_corrupt() {
        let (p, mut w) = pair();
        // A peer that says "continue at the start" at the start, and a whole ring published.
        // SAFETY: the first length word of the down ring, inside the mapping.
        unsafe { p.map.as_ptr().add(HEADER).cast::<u32>().write(WRAP) };
        p.word(DOWN_TAIL).store(CAPACITY as u64, Ordering::Release);
        assert_eq!(w.pop_into(&mut Vec::new()), Err(Corrupt));
    }
}
