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
//! Layout: a [`Header`] (each word on a cache line of its own, then the claim slots) in the
//! first `HEADER` bytes, then the two rings, each `CAPACITY` bytes:
//! `[ header ][ down ring: parent -> worker ][ up ring: worker -> parent ]`.
//!
//! Positions are byte counts that only grow. A frame is one 8-byte word, then the body; it
//! starts on a cache line of its own (frames are padded to 64 bytes) and is never split
//! across the ring's end (a `u32::MAX` length says "continue at the start"). The word holds
//! the body's length and a stamp of the frame's position, and is stored last, released: a
//! frame says itself that it is there, so a reader waiting for one reads one cache line,
//! not a tail word and then the frame (the producer publishes no tail at all). So that a
//! reader never takes stale bytes for a frame, the producer zeroes the word where the next
//! frame will go before it publishes one (the first word of each line, a few KiB ahead at a
//! time, off the way of the frame it publishes); the one case where it cannot, a ring
//! exactly full, leaves there the word of the frame at the consumer's last published
//! position, a ring back, whose stamp differs.
//!
//! The consumer publishes its position (the `head` word, which tells the producer how much
//! room is free) at least every quarter ring ([`PUBLISH_EVERY`]), not at every frame, so
//! that the producer's look at it usually finds the line unchanged in its cache. A producer
//! may so see up to a quarter ring less room than there is: never too little for a frame
//! once the consumer has read everything (the largest frame is an eighth of the ring). So a
//! ring that looks full holds unread frames: a worker whose ring of answers is full wakes a
//! sleeping dispatcher and tries again every 50 µs; a dispatcher that finds a worker's ring
//! full waits for its answers, which come since a worker sleeps only with nothing to read.
//!
//! Each side keeps its own positions privately and trusts nothing it reads from the peer: a
//! position or length out of bounds is reported as [`Corrupt`], never followed, and a frame's
//! body is copied out before anyone looks at it.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use crate::sys::fd::InternalFd;
use crate::sys::layout::{Line, Mapped, shared_layout};
use crate::sys::shm::Mapping;

const HEADER: usize = 16384;
/// Bytes in each ring.
const CAPACITY: usize = 256 * 1024;
const FRAME_HEADER: usize = 8;
/// Frames start on cache lines of their own.
const FRAME_ALIGN: usize = 64;
const WRAP: u32 = u32::MAX;
const MAGIC: u64 = 0x6d70_726f_635f_6c33; // "mproc_l3"

/// The most a consumer reads before it publishes its position.
const PUBLISH_EVERY: u64 = (CAPACITY / 4) as u64;

/// How far ahead of its position a producer keeps its ring zeroed (see the module's docs);
/// it zeroes again once less than half of this is left.
const ZERO_AHEAD: u64 = 4096;

/// The largest frame body a ring carries; larger ones must travel some other way.
pub(crate) const MAX_FRAME: usize = CAPACITY / 8;

/// More bytes than a lane message puts around the bytes it carries (a tag, an id, a length:
/// 24–32 bytes): bytes this much under [`MAX_FRAME`] fit in a frame without being sized first.
pub(crate) const FRAME_OVERHEAD: usize = 64;

/// How many claim slots a lane keeps: at least as many tasks as a worker may hold at once,
/// so a slot is never reused while its task may still be taken back.
pub(crate) const MARKS: usize = 1024;

shared_layout! {
    /// The shared words of a lane.
    struct Header {
        /// The worker's position in the down ring, published every [`PUBLISH_EVERY`] bytes.
        down_head: Line<AtomicU64>,
        /// The dispatcher's position in the up ring, the same way.
        up_head: Line<AtomicU64>,
        worker_asleep: Line<AtomicU64>,
        parent_asleep: Line<AtomicU64>,
        /// Tasks the worker has taken.
        started: Line<AtomicU64>,
        id: Line<Id>,
        /// Claim slots: slot `n % MARKS` decides who has task number `n` (see [`Lane::claim`]).
        marks: [AtomicU64; MARKS],
        /// What the worker says of its work, for the pool's statistics (never trusted for
        /// anything else).
        work: Line<Work>,
        /// The CPU each side last said it runs on (see [`Lane::say_cpu`]).
        cpus: Line<Cpus>,
    }
}

/// Where the other side of a lane last said it runs ([`Lane::say_cpu`]); `room`, heard by a
/// worker only: the dispatcher's side says the pool's busy workers and the thread that placed
/// a call on it number no more than its CPUs (so a worker on that thread's CPU may move to
/// another, and one on a CPU of its own need not let it go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// It never said.
    Unsaid,
    /// On another CPU.
    Elsewhere { room: bool },
    /// On this side's CPU.
    Here { room: bool },
}

/// A CPU word: the CPU plus one in its low bits (`0`: not said), and the dispatcher's
/// `room` at this bit.
const ROOM_SHIFT: u32 = 32;
const CPU_MASK: u64 = (1 << ROOM_SHIFT) - 1;

shared_layout! {
    /// The CPU each side of a lane last said it runs on (see [`ROOM_SHIFT`]). Written only
    /// when it changes, so a side reading its peer's word costs no cache line's bounce; a
    /// hint for spinning, never trusted for anything else.
    struct Cpus {
        worker: AtomicU64,
        parent: AtomicU64,
    }
}

shared_layout! {
    /// The worker's own account of its work (`Pool::stats`).
    struct Work {
        /// Nanoseconds spent in runs of tasks that have ended.
        busy_ns: AtomicU64,
        /// When its current run of tasks began (`CLOCK_MONOTONIC` ns), or 0 between runs.
        run_since_ns: AtomicU64,
        /// Panics caught in its tasks.
        panics: AtomicU64,
    }
}

shared_layout! {
    /// What makes a file a lane: `MAGIC`, then `CAPACITY` (stored last, released).
    struct Id {
        magic: AtomicU64,
        capacity: AtomicU64,
    }
}

// The offsets of the lanes every build has used (a worker and its pool may be different
// builds only in theory, but a moved word would be caught here, not in a hang).
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(Header, down_head) == 0);
    assert!(offset_of!(Header, up_head) == 64);
    assert!(offset_of!(Header, worker_asleep) == 2 * 64);
    assert!(offset_of!(Header, parent_asleep) == 3 * 64);
    assert!(offset_of!(Header, started) == 4 * 64);
    assert!(offset_of!(Header, id) == 5 * 64);
    assert!(offset_of!(Id, capacity) == 8);
    assert!(offset_of!(Header, marks) == 6 * 64);
    assert!(offset_of!(Header, work) == 6 * 64 + MARKS * 8);
    assert!(offset_of!(Header, cpus) == 7 * 64 + MARKS * 8);
    assert!(std::mem::size_of::<Header>() <= HEADER);
};

/// A slot's value once the worker has claimed task `n` to run it.
const fn claimed(task: u64) -> u64 {
    (task << 1) | 1
}

/// A slot's value once the dispatcher has taken task `n` back.
const fn revoked(task: u64) -> u64 {
    task << 1
}

/// Stores `value` in one of this side's words (relaxed) only if it holds another: storing
/// the same value again would still take the word's line from a peer that has read it since
/// (and this side's next locked instruction would wait for that).
fn store_if_changed(word: &AtomicU64, value: u64) {
    if word.load(Ordering::Relaxed) != value {
        word.store(value, Ordering::Relaxed);
    }
}

/// The peer wrote something a well-behaved peer never writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Corrupt;

/// One of the two rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Parent to worker.
    Down,
    /// Worker to parent.
    Up,
}

impl Way {
    fn head(self, h: &Header) -> &AtomicU64 {
        match self {
            Way::Down => &h.down_head,
            Way::Up => &h.up_head,
        }
    }

    /// Where its bytes start in the file.
    fn data(self) -> usize {
        match self {
            Way::Down => HEADER,
            Way::Up => HEADER + CAPACITY,
        }
    }
}

/// One side's view of a lane.
#[derive(Debug)]
pub(crate) struct Lane {
    map: Mapped<Header>,
    out: Way,
    /// The dispatcher's side (else the worker's).
    parent: bool,
    /// Where this side writes next in its outgoing ring (never read back from shared memory).
    out_tail: u64,
    /// How far its outgoing ring is zeroed: every frame word past `out_tail` up to here is
    /// zero, and the one at `out_tail` too unless the ring was exactly full (see the module's
    /// docs).
    zeroed: u64,
    /// Where this side reads next in its incoming ring.
    in_head: u64,
    /// The position it last published in its incoming ring's `head` word.
    published: u64,
    /// Tasks started (the worker's side only).
    started: u64,
}

fn padded(len: usize) -> usize {
    (FRAME_HEADER + len).next_multiple_of(FRAME_ALIGN)
}

/// The stamp of a frame at position `pos` (never zero, and different for the frame a ring
/// back: positions a ring apart differ by `CAPACITY / 8` here).
fn stamp(pos: u64) -> u32 {
    ((pos >> 3) as u32) | 1
}

/// A frame word: the stamp of position `pos` and the length `len` (or [`WRAP`]).
fn frame_word_of(pos: u64, len: u32) -> u64 {
    (u64::from(stamp(pos)) << 32) | u64::from(len)
}

/// The length in frame word `word` if it is the word of a frame at `pos`.
fn length_at(word: u64, pos: u64) -> Option<u32> {
    ((word >> 32) as u32 == stamp(pos)).then_some(word as u32)
}

fn corrupt(_: io::Error) -> Corrupt {
    Corrupt
}

impl Lane {
    /// The dispatcher's side of a new lane, and the descriptor to send to the worker.
    pub(crate) fn create() -> io::Result<(Lane, InternalFd)> {
        let (map, file) = Mapping::create("mproc-lane", HEADER + 2 * CAPACITY)?;
        let lane = Lane::new(map, true)?;
        let id = &lane.header().id;
        id.magic.store(MAGIC, Ordering::Relaxed);
        id.capacity.store(CAPACITY as u64, Ordering::Release);
        Ok((lane, file))
    }

    /// The worker's side of the lane whose memory file is `file`.
    pub(crate) fn open(file: BorrowedFd<'_>) -> io::Result<Lane> {
        let map = Mapping::open(file)?;
        if map.len() != HEADER + 2 * CAPACITY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a lane"));
        }
        let lane = Lane::new(map, false)?;
        let id = &lane.header().id;
        if id.magic.load(Ordering::Relaxed) != MAGIC
            || id.capacity.load(Ordering::Acquire) != CAPACITY as u64
        {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a lane"));
        }
        Ok(lane)
    }

    fn new(map: Mapping, parent: bool) -> io::Result<Lane> {
        Ok(Lane {
            map: Mapped::new(map)?,
            out: if parent { Way::Down } else { Way::Up },
            parent,
            out_tail: 0,
            zeroed: 0,
            in_head: 0,
            published: 0,
            started: 0,
        })
    }

    fn header(&self) -> &Header {
        self.map.header()
    }

    fn inc(&self) -> Way {
        match self.out {
            Way::Down => Way::Up,
            Way::Up => Way::Down,
        }
    }

    /// This side's CPU word, then the peer's.
    fn cpu_words(&self) -> (&AtomicU64, &AtomicU64) {
        let cpus = &self.header().cpus;
        match self.parent {
            true => (&cpus.parent, &cpus.worker),
            false => (&cpus.worker, &cpus.parent),
        }
    }

    fn asleep(&self, mine: bool) -> &AtomicU64 {
        let h = self.header();
        if mine == self.parent {
            &h.parent_asleep
        } else {
            &h.worker_asleep
        }
    }

    /// The frame word at byte `at` of the file (8-aligned, inside a ring), as one atomic
    /// word: the peer's, read once, then checked.
    fn frame_word(&self, at: usize) -> Result<&AtomicU64, Corrupt> {
        self.map.map().view::<AtomicU64>(at).map_err(corrupt)
    }

    /// The frame word at position `pos` of ring `way`.
    fn frame_word_at(&self, way: Way, pos: u64) -> Result<&AtomicU64, Corrupt> {
        self.frame_word(way.data() + (pos % CAPACITY as u64) as usize)
    }

    /// Whether a body of `len` bytes may go in a ring at all.
    pub(crate) fn fits(len: usize) -> bool {
        len <= MAX_FRAME
    }

    /// The bytes a frame of `len` would skip to wrap now and the position up to which the
    /// consumer has released the ring, or `None` when it does not fit now.
    fn room(&self, len: usize) -> Result<Option<(usize, u64)>, Corrupt> {
        if !Lane::fits(len) {
            return Ok(None);
        }
        let head = self.out.head(self.header()).load(Ordering::Acquire);
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
        Ok((skip + need <= free).then_some((skip, self.out_tail + free as u64)))
    }

    /// Whether a frame of `len` bytes can be pushed now.
    pub(crate) fn has_room(&self, len: usize) -> Result<bool, Corrupt> {
        Ok(self.room(len)?.is_some())
    }

    /// Publishes `body` as one frame; `Ok(false)` (nothing written) when the ring is full or
    /// the body too large.
    pub(crate) fn push(&mut self, body: &[u8]) -> Result<bool, Corrupt> {
        self.push_asleep(body, None)
    }

    /// [`Lane::push`]; with `Some(task)`, the dispatcher's side pushes task number `task`
    /// (counting from 1) to a worker whose every answer it has read, and asks to be woken by
    /// the answer to that task (or by one after which the worker has nothing more to take),
    /// with no fence and no look at the ring ([`Lane::prepare_sleep_until`] does both).
    /// Nothing can come before that answer, and the frame, stored after this word and
    /// released, shows the worker the word before it can run what the frame brings (the
    /// worker acquires the frame).
    ///
    /// The word names the task, not just "the next answer": a worker still on its way from
    /// its last answer (already read) to idle, which finds this word and this task already in
    /// its lane, would otherwise take the word for that answer's and wake the pool's thread
    /// for nothing (measured: hundreds to thousands of times a second with back-to-back calls,
    /// each a system call on both sides).
    ///
    /// The word is stored after the frame's bytes, without a look at it first: the worker
    /// reads its line after each answer, so the store waits for the line, and every store
    /// after it waits too (x86 keeps stores in order). Stored before the bytes, their copy
    /// out of the frame just encoded (small stores, read back by wider loads) waited for it
    /// as well, and the frame's own line was asked for only after it: two waits in a row on
    /// a call's way instead of two at once (issue 15, item 4).
    pub(crate) fn push_asleep(&mut self, body: &[u8], task: Option<u64>) -> Result<bool, Corrupt> {
        let Some((skip, released)) = self.room(body.len())? else {
            return Ok(false);
        };
        let wrap = self.out_tail;
        let at = wrap + skip as u64;
        let end = at + padded(body.len()) as u64;
        // `room` checked that the padded frame fits between its offset and the ring's end and
        // in the space the consumer has released; nobody reads it before its word is stored.
        let data = self.out.data() + (at % CAPACITY as u64) as usize;
        self.map
            .map()
            .copy_in(data + FRAME_HEADER, body)
            .map_err(corrupt)?;
        // The next frame's word is zero before this frame is published (see the module's
        // docs): zeroed ahead already, or now (unless the ring is exactly full).
        if self.zeroed < end + FRAME_HEADER as u64 {
            if end + FRAME_HEADER as u64 <= released {
                self.frame_word_at(self.out, end)?.store(0, Ordering::Relaxed);
            }
            self.zeroed = end + FRAME_HEADER as u64;
        }
        if let Some(task) = task {
            debug_assert!(self.parent, "only the dispatcher asks so");
            self.asleep(true)
                .store(task.saturating_add(1), Ordering::Relaxed);
        }
        self.frame_word(data)?
            .store(frame_word_of(at, body.len() as u32), Ordering::Release);
        if skip > 0 {
            // In the part of the ring the consumer has released, at least a line before its
            // end; stored after the frame it leads to.
            self.frame_word_at(self.out, wrap)?
                .store(frame_word_of(wrap, WRAP), Ordering::Release);
        }
        self.out_tail = end;
        self.zero_ahead(released)?;
        Ok(true)
    }

    /// Keeps the outgoing ring zeroed [`ZERO_AHEAD`] past its position, in the room the
    /// consumer has released (up to position `released`).
    fn zero_ahead(&mut self, released: u64) -> Result<(), Corrupt> {
        if self.zeroed >= self.out_tail + ZERO_AHEAD / 2 {
            return Ok(());
        }
        // Frame words lie only at the start of a line: the rest of each line is left alone
        // (the consumer may be reading the first).
        let mut line = self.zeroed.max(self.out_tail).next_multiple_of(FRAME_ALIGN as u64);
        let to = (self.out_tail + ZERO_AHEAD).min(released);
        while line < to {
            self.frame_word_at(self.out, line)?.store(0, Ordering::Relaxed);
            line += FRAME_ALIGN as u64;
        }
        self.zeroed = self.zeroed.max(to);
        Ok(())
    }

    /// Whether the incoming ring holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.frame_word_at(self.inc(), self.in_head)
            .map_or(true, |w| length_at(w.load(Ordering::Acquire), self.in_head).is_none())
    }

    /// Copies the next incoming frame into `buf` (replacing its contents); `Ok(false)` when
    /// there is none.
    pub(crate) fn pop_into(&mut self, buf: &mut Vec<u8>) -> Result<bool, Corrupt> {
        let inc = self.inc();
        loop {
            let off = (self.in_head % CAPACITY as u64) as usize;
            let at = inc.data() + off;
            // Read once: checked below, never read again.
            let word = self.frame_word(at)?.load(Ordering::Acquire);
            let Some(len) = length_at(word, self.in_head) else {
                return Ok(false);
            };
            if len == WRAP {
                // A wrap at the ring's start is never written (every frame fits after it), so
                // this loop turns at most twice.
                if off == 0 {
                    return Err(Corrupt);
                }
                self.in_head += (CAPACITY - off) as u64;
                continue;
            }
            let len = len as usize;
            if len > MAX_FRAME || padded(len) > CAPACITY - off {
                return Err(Corrupt);
            }
            buf.clear();
            self.map
                .map()
                .append_to(at + FRAME_HEADER, len, buf)
                .map_err(corrupt)?;
            self.in_head += padded(len) as u64;
            if self.in_head - self.published >= PUBLISH_EVERY {
                self.published = self.in_head;
                inc.head(self.header())
                    .store(self.in_head, Ordering::Release);
            }
            return Ok(true);
        }
    }

    /// Says this side is about to block; `true` when it may (nothing arrived meanwhile). On
    /// `false` it has already taken the word back.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.prepare_sleep_until(0)
    }

    /// Like [`Lane::prepare_sleep`], but the dispatcher asks to be woken only by an answer the
    /// worker publishes once it has taken task number `started` (counting from 1): the answer
    /// to that task or a later one, or an answer after which it has nothing more to take, or
    /// when its ring toward the dispatcher is full. The answers before then wait unread, and
    /// one wake-up reads many. `0`: after the next answer, as `prepare_sleep`.
    ///
    /// The word holds `started + 1` (`1` is "after the next answer", `0` "awake").
    pub(crate) fn prepare_sleep_until(&self, started: u64) -> bool {
        debug_assert!(self.parent || started == 0, "only the dispatcher defers its wake-up");
        self.asleep(true)
            .store(started.saturating_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.is_empty() {
            true
        } else {
            self.awake();
            false
        }
    }

    /// Says this side is awake (no wake-up needed). A reader says so at every look at the
    /// ring: the word is stored only when it changes ([`store_if_changed`]).
    pub(crate) fn awake(&self) {
        store_if_changed(self.asleep(true), 0);
    }

    /// Says this side runs on `cpu` now (the dispatcher's side adds whether a worker on its
    /// CPU may move to another: `room`, or as it last said with `None`); where the peer last
    /// said it runs. A side spinning
    /// while it waits for the other lets its CPU go (`sched_yield`) only when they share it,
    /// as the other may be waiting for that very CPU; on CPUs of their own neither yields:
    /// a yield would only hand the turn to whatever else runs there.
    pub(crate) fn say_cpu(&self, cpu: u32, room: Option<bool>) -> Peer {
        let (mine, peer) = self.cpu_words();
        let was = mine.load(Ordering::Relaxed);
        let room = room.unwrap_or((was >> ROOM_SHIFT) & 1 == 1) && self.parent;
        store_if_changed(mine, (u64::from(cpu) + 1) | (u64::from(room) << ROOM_SHIFT));
        let word = peer.load(Ordering::Relaxed);
        let room = (word >> ROOM_SHIFT) & 1 == 1;
        match word & CPU_MASK {
            0 => Peer::Unsaid,
            at if at == u64::from(cpu) + 1 => Peer::Here { room },
            _ => Peer::Elsewhere { room },
        }
    }

    /// Takes back what this side said of its CPU (before it sleeps: a wake-up may put it
    /// anywhere, and a peer trusting the old word would spin beside it without yielding).
    pub(crate) fn unsay_cpu(&self) {
        store_if_changed(self.cpu_words().0, 0);
    }

    /// After publishing: whether the peer sleeps and must be woken (at most once per sleep).
    /// A worker leaves a dispatcher that asked to be woken later
    /// ([`Lane::prepare_sleep_until`]) asleep until it publishes an answer having taken the
    /// task named, or having nothing more to take (so no answer is left unread once it stops).
    /// A worker calls this after each answer.
    pub(crate) fn peer_needs_wake(&self) -> bool {
        self.wake_peer(true)
    }

    /// Like [`Lane::peer_needs_wake`] (a worker's, after an answer), but a dispatcher found
    /// asleep is watched for up to `grace` first, while this side has nothing more to take: a
    /// reader that says it is awake meanwhile (a thread that has just submitted a task and is
    /// on its way to wait for the answer, say) reads the ring before it can sleep again, so
    /// the answer needs no wake-up.
    ///
    /// Why a reader seen awake again will see the answer: every waking of the reader's word
    /// is followed by reads of the ring until its next `prepare_sleep_until`, which looks at
    /// the ring after a sequentially consistent fence (or until it hands the reading to the
    /// dispatcher thread, whose turn does the same). This side published before its own
    /// fence (in `wake_peer`) and saw the word asleep after that fence, then awake: had the
    /// reader's fence come first, this side could not have seen the older "awake" after the
    /// newer "asleep" (reads of one word never go back). So the reader's fence comes second
    /// and its look at the ring finds the answer.
    pub(crate) fn peer_needs_wake_unless_back(&self, grace: std::time::Duration) -> bool {
        if !self.due_wake(true) {
            return false;
        }
        let peer = self.asleep(false);
        // With more to take, the wait would hold up the next task: woken at once, as before.
        if !self.is_empty() {
            return peer.swap(0, Ordering::SeqCst) != 0;
        }
        let until = std::time::Instant::now() + grace;
        loop {
            for _ in 0..32 {
                if peer.load(Ordering::Relaxed) == 0 {
                    return false;
                }
                std::hint::spin_loop();
            }
            if std::time::Instant::now() >= until {
                return peer.swap(0, Ordering::SeqCst) != 0;
            }
        }
    }

    /// Whether the peer sleeps, however late it asked to be woken (its ring toward it is
    /// full, say); at most once per sleep.
    pub(crate) fn peer_needs_wake_now(&self) -> bool {
        self.wake_peer(false)
    }

    /// Whether the peer sleeps and is due its wake-up (taken: at most once per sleep); with
    /// `as_asked`, a deferred word is honoured.
    fn wake_peer(&self, as_asked: bool) -> bool {
        self.due_wake(as_asked) && self.asleep(false).swap(0, Ordering::SeqCst) != 0
    }

    /// Whether the peer sleeps and is due a wake-up (not yet taken); with `as_asked`, a
    /// deferred word is honoured.
    fn due_wake(&self, as_asked: bool) -> bool {
        fence(Ordering::SeqCst);
        let word = self.asleep(false).load(Ordering::Relaxed);
        if word == 0 {
            return false;
        }
        // Only a worker reads a deferred word; the dispatcher trusts no word a worker wrote.
        !(as_asked && !self.parent && word > 1 && self.started < word - 1 && !self.is_empty())
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
        self.header().started.store(task, Ordering::Release);
        self.slot(task).swap(claimed(task), Ordering::AcqRel) != revoked(task)
    }

    /// The worker begins a run of tasks (its lane had one after being empty) at `now_ns`.
    pub(crate) fn begin_run(&self, now_ns: u64) {
        self.header().work.run_since_ns.store(now_ns, Ordering::Relaxed);
    }

    /// The worker's run of tasks begun at `since_ns` ends at `now_ns` (its lane is empty).
    pub(crate) fn end_run(&self, since_ns: u64, now_ns: u64) {
        let w = &self.header().work;
        // Between runs first: a reader may miss this run's time for an instant, never count
        // it twice (it reads `busy_ns` first, acquiring what came before the add).
        w.run_since_ns.store(0, Ordering::Relaxed);
        w.busy_ns
            .fetch_add(now_ns.saturating_sub(since_ns), Ordering::Release);
    }

    /// The worker has caught `n` panics in its tasks so far.
    pub(crate) fn set_panics(&self, n: u64) {
        self.header().work.panics.store(n, Ordering::Relaxed);
    }

    /// What the worker says of its work at `now_ns`: nanoseconds busy (its current run
    /// included) and panics caught. Whatever a worker wrote there, only numbers come out.
    pub(crate) fn work(&self, now_ns: u64) -> (u64, u64) {
        let w = &self.header().work;
        // `busy_ns` first: a run it includes has its `run_since_ns` cleared by then (see
        // `end_run`), so no run is counted both as ended and as running.
        let ended = w.busy_ns.load(Ordering::Acquire);
        let since = w.run_since_ns.load(Ordering::Relaxed);
        let running = if since == 0 { 0 } else { now_ns.saturating_sub(since) };
        (ended.saturating_add(running), w.panics.load(Ordering::Relaxed))
    }

    /// How many tasks the worker has taken (claimed or skipped).
    pub(crate) fn started(&self) -> u64 {
        self.header().started.load(Ordering::Acquire)
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
        &self.header().marks[(task % MARKS as u64) as usize]
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
                let _ = sides[0].map.map().write_at(at, &bytes);
                tampered = true;
            }
            // A peer's write of a position, or of the frame word a side reads next (with the
            // stamp it expects, or one of a ring away), of its choice, near the truth.
            5 => {
                let h = sides[0].header();
                let pick = byte() % 4;
                let reader = &sides[usize::from(pick & 1)];
                let (at, now) = match pick {
                    0 | 1 => {
                        let pos = reader.in_head + CAPACITY as u64 * u64::from(byte() % 2);
                        let Ok(at) = reader.frame_word_at(reader.inc(), reader.in_head) else {
                            continue;
                        };
                        (at, frame_word_of(pos, word(&mut byte, 2) as u32))
                    }
                    2 => (&*h.down_head, h.down_head.load(Ordering::Relaxed)),
                    _ => (&*h.up_head, h.up_head.load(Ordering::Relaxed)),
                };
                let value = match byte() % 4 {
                    0 => now.wrapping_add(word(&mut byte, 2)),
                    1 => now.wrapping_sub(word(&mut byte, 2)),
                    2 => now.wrapping_add(CAPACITY as u64 * word(&mut byte, 1)),
                    _ => word(&mut byte, 8),
                };
                at.store(value, Ordering::Release);
                tampered = true;
            }
            // The rest of a side's calls.
            6 => {
                let len = word(&mut byte, 3) as usize;
                let _ = sides[me].has_room(len);
                let _ = sides[me].is_empty();
                // The dispatcher may put its wake-up off until a task of its choice.
                let until = if me == 0 { word(&mut byte, 2) } else { 0 };
                if sides[me].prepare_sleep_until(until) {
                    let _ = sides[peer].peer_needs_wake();
                    let _ = sides[peer].peer_needs_wake_now();
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

    /// Each side hears where the other last said it runs, and the worker hears whether the
    /// dispatcher's side says it may move; a worker's word carries no such say.
    #[test]
    fn each_side_hears_where_the_other_runs() {
        let (p, w) = pair();
        assert_eq!(p.say_cpu(3, Some(true)), Peer::Unsaid);
        assert_eq!(w.say_cpu(3, Some(true)), Peer::Here { room: true });
        assert_eq!(p.say_cpu(3, Some(false)), Peer::Here { room: false });
        assert_eq!(w.say_cpu(3, Some(false)), Peer::Here { room: false });
        assert_eq!(w.say_cpu(0, Some(false)), Peer::Elsewhere { room: false });
        assert_eq!(p.say_cpu(0, Some(true)), Peer::Here { room: false });
        assert_eq!(w.say_cpu(0, Some(false)), Peer::Here { room: true });
        // CPU 0 is said as a word of its own, never read as "not said".
        assert_eq!(p.say_cpu(1, Some(true)), Peer::Elsewhere { room: false });
        assert_eq!(w.say_cpu(0, Some(false)), Peer::Elsewhere { room: true });
        // The CPU said again, the room as it was.
        assert_eq!(p.say_cpu(0, None), Peer::Here { room: false });
        assert_eq!(w.say_cpu(1, None), Peer::Elsewhere { room: true });
        // A side about to sleep takes its word back.
        w.unsay_cpu();
        assert_eq!(p.say_cpu(1, None), Peer::Unsaid);
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
        // The consumer publishes its position once it has read a quarter ring, not at every
        // frame: the producer sees the room then.
        let mut buf = Vec::new();
        assert!(w.pop_into(&mut buf).unwrap());
        assert!(!p.has_room(MAX_FRAME).unwrap());
        while w.in_head < PUBLISH_EVERY {
            assert!(w.pop_into(&mut buf).unwrap());
        }
        assert!(p.has_room(MAX_FRAME).unwrap());
    }

    #[test]
    fn a_worker_wakes_a_dispatcher_that_stays_asleep_but_not_one_that_comes_back() {
        use std::time::{Duration, Instant};
        let (mut p, mut w) = pair();
        // Nobody comes back: woken once the grace has run out, and only once.
        assert!(p.prepare_sleep());
        assert!(w.push(b"a").unwrap());
        let t = Instant::now();
        assert!(w.peer_needs_wake_unless_back(Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(20));
        assert!(!w.peer_needs_wake_unless_back(Duration::from_millis(20)));
        let mut buf = Vec::new();
        assert!(p.pop_into(&mut buf).unwrap(), "the first answer");
        // With a task waiting to be taken, no wait: woken at once.
        assert!(p.push(b"task").unwrap());
        assert!(p.prepare_sleep());
        assert!(w.push(b"a2").unwrap());
        let t = Instant::now();
        assert!(w.peer_needs_wake_unless_back(Duration::from_secs(30)));
        assert!(t.elapsed() < Duration::from_secs(20), "it waited with work to do");
        assert!(w.pop_into(&mut buf).unwrap(), "the task");
        assert!(p.pop_into(&mut buf).unwrap(), "the second answer");
        // A reader comes back meanwhile (on another thread, as a caller on its way to wait
        // for the answer): no wake-up, and the answer is there for it.
        assert!(p.prepare_sleep());
        assert!(w.push(b"b").unwrap());
        let back = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            p.awake();
            let mut buf = Vec::new();
            let found = p.pop_into(&mut buf).unwrap();
            (found, buf)
        });
        let t = Instant::now();
        assert!(!w.peer_needs_wake_unless_back(Duration::from_secs(30)));
        assert!(t.elapsed() < Duration::from_secs(20), "it saw the reader back");
        assert_eq!(back.join().unwrap(), (true, b"b".to_vec()));
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
    fn a_deferred_sleep_is_woken_at_the_task_named_or_when_the_worker_runs_dry() {
        let (mut p, mut w) = pair();
        let mut buf = Vec::new();
        for _ in 0..4 {
            assert!(p.push(b"task").unwrap());
        }
        // Wake me at an answer once task 3 has been taken (or nothing is left to take).
        assert!(p.prepare_sleep_until(3));
        for task in 1..=2 {
            assert!(w.pop_into(&mut buf).unwrap() && w.claim());
            assert!(w.push(b"answer").unwrap());
            assert!(!w.peer_needs_wake(), "task {task}: not yet");
        }
        assert!(w.pop_into(&mut buf).unwrap() && w.claim());
        assert!(w.push(b"answer").unwrap());
        assert!(w.peer_needs_wake(), "task 3 answered");
        assert!(!w.peer_needs_wake(), "one wake per sleep");
        // Its ring toward the worker empty, the worker wakes it whatever the task named.
        let mut answers = 0;
        while p.pop_into(&mut buf).unwrap() {
            answers += 1;
        }
        assert_eq!(answers, 3);
        assert!(p.prepare_sleep_until(100));
        assert!(w.pop_into(&mut buf).unwrap() && w.claim());
        assert!(w.push(b"answer").unwrap());
        assert!(w.peer_needs_wake(), "nothing left to take: no answer may stay unread");
        // A worker whose ring toward the dispatcher is full wakes it at once (`publish`).
        assert!(p.pop_into(&mut buf).unwrap());
        assert!(p.push(b"task").unwrap());
        assert!(p.prepare_sleep_until(100));
        let answer = vec![1; MAX_FRAME];
        while w.push(&answer).unwrap() {
            assert!(!w.peer_needs_wake(), "deferred while there is room");
        }
        assert!(!w.peer_needs_wake(), "a full ring alone does not end the deferral");
        assert!(w.peer_needs_wake_now());
        assert!(!w.peer_needs_wake_now(), "one wake per sleep");
        while p.pop_into(&mut buf).unwrap() {}
        // Not deferred: woken after the next answer.
        assert!(p.prepare_sleep_until(0));
        assert!(w.push(b"answer").unwrap());
        assert!(w.peer_needs_wake());
    }

    /// A call placed on a worker still on its way from its last answer (read already) to
    /// idle: the word set for the new task is not the last answer's, and wakes no one until
    /// the new task is answered.
    #[test]
    fn a_word_set_for_the_next_task_is_not_taken_for_the_last_answers() {
        use std::time::Duration;
        let (mut p, mut w) = pair();
        let mut buf = Vec::new();
        assert!(p.push(b"task 1").unwrap());
        assert!(w.pop_into(&mut buf).unwrap() && w.claim());
        assert!(w.push(b"answer 1").unwrap());
        assert!(p.pop_into(&mut buf).unwrap(), "the caller reads it itself");
        // The caller places task 2 before the worker looks whether its reader sleeps.
        assert!(p.push_asleep(b"task 2", Some(2)).unwrap());
        assert!(!w.peer_needs_wake(), "task 1's answer was read");
        assert!(!w.peer_needs_wake_unless_back(Duration::from_millis(1)));
        // Task 2's answer, unread, wakes the caller that left without waiting, once.
        assert!(w.pop_into(&mut buf).unwrap() && w.claim());
        assert!(w.push(b"answer 2").unwrap());
        assert!(w.peer_needs_wake_unless_back(Duration::from_millis(1)));
        assert!(!w.peer_needs_wake(), "one wake per sleep");
        // The same with the word set after the push, with a look (a thread that handed the
        // worker its task and lets go without reading the lanes).
        assert!(p.pop_into(&mut buf).unwrap(), "answer 2, read");
        assert!(p.push(b"task 3").unwrap());
        assert!(p.prepare_sleep_until(3));
        assert!(!w.peer_needs_wake(), "task 2's answer was read");
        assert!(!w.peer_needs_wake_unless_back(Duration::from_millis(1)));
        assert!(w.pop_into(&mut buf).unwrap() && w.claim());
        assert!(w.push(b"answer 3").unwrap());
        assert!(w.peer_needs_wake_unless_back(Duration::from_millis(1)));
    }

    #[test]
    fn a_worker_cannot_defer_its_own_wake_up() {
        // Whatever a worker writes in its word, the dispatcher reads it as "asleep".
        let (mut p, w) = pair();
        w.header().worker_asleep.store(1_000, Ordering::Relaxed);
        assert!(p.push(b"task").unwrap());
        assert!(p.peer_needs_wake());
        drop(w);
    }

    #[test]
    fn corrupt_positions_are_reported_not_followed() {
        let mut buf = Vec::new();
        // A frame word of the right stamp whose length is more than any frame.
        let (mut p, mut w) = pair();
        assert!(p.push(b"hello").unwrap());
        p.frame_word(HEADER)
            .unwrap()
            .store(frame_word_of(0, MAX_FRAME as u32 + 1), Ordering::Relaxed);
        assert_eq!(w.pop_into(&mut buf), Err(Corrupt));
        // A consumer that writes an impossible head: the producer refuses to write.
        let (mut p, _w) = pair();
        p.header().down_head.store(1 << 40, Ordering::Release);
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
        let file = std::fs::File::from(crate::sys::shm::testing::unsealed_memfd(
            HEADER + 2 * CAPACITY,
        ));
        let id = std::mem::offset_of!(Header, id) as u64;
        file.write_all_at(&MAGIC.to_ne_bytes(), id)
            .and_then(|()| file.write_all_at(&(CAPACITY as u64).to_ne_bytes(), id + 8))
            .and_then(|()| file.write_all_at(&8u64.to_ne_bytes(), 0))
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
        crate::sys::shm::testing::in_children(open_a_lane_its_sender_can_shrink);
    }

    /// The fuzz target's body on cheap random inputs, on every `cargo test`: the long run is
    /// `cargo fuzz` (fuzz/README.md); this keeps the checks honest between runs.
    #[test]
    fn the_fuzz_body_survives_random_inputs() {
        for data in crate::sys::shm::testing::fuzz_inputs(60) {
            super::fuzz(&data);
        }
    }

    #[test]
    fn frames_past_the_rings_end_are_corrupt() {
        // A frame word of the right stamp, a line before the ring's end, whose length runs
        // past it.
        let (p, mut w) = pair();
        let last = (CAPACITY - FRAME_ALIGN) as u64;
        p.frame_word_at(Way::Down, last)
            .unwrap()
            .store(frame_word_of(last, 64), Ordering::Relaxed);
        w.in_head = last;
        assert_eq!(w.pop_into(&mut Vec::new()), Err(Corrupt));
        // The id of another kind of file.
        let (p, file) = Lane::create().unwrap();
        p.header().id.magic.store(1, Ordering::Relaxed);
        assert!(Lane::open(file.as_fd()).is_err());
    }

    #[test]
    fn a_wrap_at_the_rings_start_is_corrupt() {
        let (p, mut w) = pair();
        // A peer that says "continue at the start" at the start.
        p.frame_word(HEADER)
            .unwrap()
            .store(frame_word_of(0, WRAP), Ordering::Relaxed);
        assert_eq!(w.pop_into(&mut Vec::new()), Err(Corrupt));
    }

    /// A ring filled to its last byte: the word where the next frame goes is then the first
    /// frame's, still unread, so the producer leaves it alone; once read, it is not read again
    /// a ring later (its stamp is a ring old).
    #[test]
    fn an_exactly_full_ring_loses_nothing_and_reads_nothing_twice() {
        let (mut p, mut w) = pair();
        let len = 32 * 1024 - FRAME_HEADER;
        assert_eq!(padded(len), 32 * 1024);
        for round in 0..3u8 {
            for i in 0..CAPACITY / padded(len) {
                assert!(p.push(&vec![round ^ i as u8; len]).unwrap(), "frame {i}");
            }
            assert!(!p.has_room(0).unwrap(), "exactly full");
            let mut buf = Vec::new();
            for i in 0..CAPACITY / padded(len) {
                assert!(w.pop_into(&mut buf).unwrap(), "frame {i} of round {round}");
                assert_eq!(buf, vec![round ^ i as u8; len]);
            }
            assert!(!w.pop_into(&mut buf).unwrap(), "a frame read twice");
            assert!(w.is_empty());
        }
    }

    /// A producer and a consumer on two threads, neither waiting for the other, frames of
    /// every size (from none to the largest, eight of them filling the ring exactly) whose
    /// bodies are full of words that would be frame words a ring or two later: each arrives
    /// whole and in order, also where the stamps' `u32` wraps (a position of 2^35 bytes).
    #[test]
    fn two_threads_stream_every_frame_whole_and_in_order() {
        for start in [0, (1u64 << 35) - 3 * CAPACITY as u64 + 640] {
            stream_between_threads(10_000, start);
        }
    }

    /// The body of frame `seq` of `len` bytes, to go at `pos`: its number, then every third
    /// word a frame word of a line a ring or two later, the rest a pattern.
    fn stream_body(seq: u64, len: usize, pos: u64) -> Vec<u8> {
        let mut b: Vec<u8> = (0..len).map(|i| (seq as usize * 31 + i) as u8).collect();
        b[..8].copy_from_slice(&seq.to_le_bytes());
        for i in (8..len.saturating_sub(7)).step_by(24) {
            let line = (pos + 8 + i as u64) & !63;
            let word = frame_word_of(line + CAPACITY as u64 * (1 + seq % 2), 8);
            b[i..i + 8].copy_from_slice(&word.to_le_bytes());
        }
        b
    }

    fn stream_between_threads(frames: u64, start: u64) {
        use std::time::{Duration, Instant};
        let (mut p, mut w) = pair();
        p.out_tail = start;
        p.zeroed = start;
        w.in_head = start;
        w.published = start;
        p.header().down_head.store(start, Ordering::Release);
        let len_of = |r: u64| match r % 8 {
            0 => MAX_FRAME,
            1 => 32 * 1024 - FRAME_HEADER,
            2 => 4096 - FRAME_HEADER,
            3 => 56,
            4 => 8 + (r >> 8) as usize % 4096,
            _ => 8 + (r >> 8) as usize % 200,
        };
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut r = crate::sys::shm::testing::xorshift(0x1234_5678_9abc_def1);
                for seq in 0..frames {
                    let body = stream_body(seq, len_of(r()), p.out_tail);
                    let t = Instant::now();
                    while !p.push(&body).unwrap() {
                        std::thread::yield_now();
                        assert!(t.elapsed() < Duration::from_secs(20), "producer stuck");
                    }
                }
            });
            let mut buf = Vec::new();
            let mut t = Instant::now();
            let mut seq = 0;
            while seq < frames {
                if !w.pop_into(&mut buf).unwrap() {
                    std::thread::yield_now();
                    assert!(t.elapsed() < Duration::from_secs(20), "consumer stuck");
                    continue;
                }
                assert_eq!(buf[..8], seq.to_le_bytes(), "frame {seq}");
                let want = stream_body(seq, buf.len(), 0);
                for (i, (got, want)) in buf.iter().zip(&want).enumerate().skip(8) {
                    // The poison words depend on where the frame went: not compared.
                    assert!(got == want || (i - 8) % 24 < 8, "frame {seq}, byte {i}");
                }
                seq += 1;
                t = Instant::now();
            }
            assert!(!w.pop_into(&mut buf).unwrap());
        });
    }

    /// Bodies full of words that would be frame words where later frames go (of the lap
    /// after theirs, at every position) never pass for frames: each side reads exactly what
    /// the other published, lap after lap, whatever sizes the frames have.
    #[test]
    fn stale_bytes_are_never_read_as_frames() {
        let (mut p, mut w) = pair();
        let mut buf = Vec::new();
        let (mut sent, mut read, mut refused) = (0u64, 0u64, 0u64);
        let mut pos = 0u64;
        for round in 0..30_000u64 {
            let len = [8, 56, 57, 200, 1000, 4096, MAX_FRAME][(round * 7 % 11 % 7) as usize];
            // Each word of the body holds the frame word of a line start a ring after the
            // frame's (the line it would lie in, or one or two later: `round % 3`).
            let body: Vec<u8> = (0..len / 8)
                .flat_map(|i| {
                    let line = (pos + CAPACITY as u64 + 8 * i as u64) & !63;
                    frame_word_of(line + 64 * (round % 3), 8).to_le_bytes()
                })
                .collect();
            if p.push(&body).unwrap() {
                sent += 1;
                pos = p.out_tail;
            } else {
                refused += 1;
            }
            // Read every hundredth round, so that the ring runs full at times.
            if round % 100 == 0 {
                while w.pop_into(&mut buf).unwrap() {
                    assert!(matches!(buf.len(), 8 | 56 | 1000 | 4096) || buf.len() >= 200);
                    read += 1;
                }
                assert!(w.is_empty());
            }
        }
        while w.pop_into(&mut buf).unwrap() {
            read += 1;
        }
        assert_eq!(read, sent);
        assert!(sent > 10_000, "{sent}");
        assert!(refused > 100, "the ring was full {refused} times");
    }

}
