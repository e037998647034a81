//! The memory behind a `Queue`: a multi-producer, multi-consumer ring of byte frames in one
//! memory file that every process holding the queue maps, with two robust locks (one for the
//! producers, one for the consumers, so a put and a get run at the same time), counters, futex
//! words to sleep on, and a table of the processes that hold the queue.
//!
//! The file grows when a frame does not fit (a queue is unbounded in bytes), up to
//! [`RESERVE`]: each process maps that much address space once, and pages past the file's
//! end become usable in every mapping as soon as one process grows the file, so nobody
//! remaps. Growth takes both locks and moves the live frames to the new part of the file.
//!
//! Exactly once, even when a process dies inside a put or a get: a frame becomes visible in
//! one store (`written`) and is consumed in one store (`read`); the counters that go with them
//! (`puts`, `gets`, a joinable queue's `added`) are journaled before, and the next
//! process to take the dead one's lock (told by `EOWNERDEAD`) finishes or undoes the
//! bookkeeping. A frame half written by a dead producer is simply never published; a frame a
//! dead consumer was decoding stays in the queue for the next one.
//!
//! Layout: a 4 KiB header (words on separate cache lines by who writes them), then the ring.
//! A frame is a `u32` length, four bytes of padding, the body, padded to 8 bytes, never split
//! across the ring's end (a `u32::MAX` length says "continue at the start"). Positions are
//! byte counts that only grow; the ring offset of position `p` is `(p - base) % cap`.

// The ring lives in shared memory, reached through pointers into its mapping.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use super::futex;
use super::shared::{Held, RobustMutex, Taken};
use super::shm::{self, Mapping};

/// Address space each process reserves for one queue: the most its file may grow to.
pub(crate) const RESERVE: usize = 1 << 34;
/// Where the ring starts in the file.
const DATA_AT: usize = 4096;
/// The ring's first size.
const FIRST_CAP: usize = 64 * 1024;
/// The largest frame body.
pub(crate) const MAX_FRAME: usize = u32::MAX as usize - 1;
const SKIP: u32 = u32::MAX;
const MAGIC: u32 = 0x6d70_7172; // "mpqr"

const KIND_AT: usize = 4;
const MAXSIZE_AT: usize = 8;
/// Read by every put and get, written once: on the read-mostly first line.
const CLOSED_AT: usize = 16;
const PUT_MUTEX_AT: usize = 64;
const GET_MUTEX_AT: usize = 128;
const REG_MUTEX_AT: usize = 192;
// Written by producers.
const WRITTEN_AT: usize = 256;
const PUTS_AT: usize = 264;
const PUT_STAGE_AT: usize = 272;
const PUT_SEQ_AT: usize = 276;
const WRITTEN_BEFORE_AT: usize = 280;
const PUTS_BEFORE_AT: usize = 288;
const ADDED_AT: usize = 296;
const ADDED_BEFORE_AT: usize = 304;
/// `read` as producers last loaded it (never ahead of it): a put that finds room by it needs
/// no look at the consumers' line.
const READ_SEEN_AT: usize = 312;
// Written by consumers.
const READ_AT: usize = 320;
const GETS_AT: usize = 328;
const GET_ACTIVE_AT: usize = 336;
const GET_SEQ_AT: usize = 340;
const READ_BEFORE_AT: usize = 344;
const GETS_BEFORE_AT: usize = 352;
/// `written` as consumers last loaded it (never ahead of it), likewise.
const WRITTEN_SEEN_AT: usize = 360;
// Written when the ring grows.
const BASE_AT: usize = 384;
const CAP_AT: usize = 392;
const RELOCATING_AT: usize = 400;
const BROKEN_AT: usize = 404;
// Written rarely.
const GETTERS_ASLEEP_AT: usize = 448;
const PUTTERS_ASLEEP_AT: usize = 452;
const DONE_SEQ_AT: usize = 460;
const JOINERS_ASLEEP_AT: usize = 464;
const DONE_AT: usize = 472;
const LENDS_AT: usize = 480;
const EVER_SHARED_AT: usize = 488;
const LENT_OVERFLOW_AT: usize = 492;
const LIMIT_AT: usize = 496;
// The holders' table (under the registry lock).
const OVERFLOW_AT: usize = 512;
const SLOTS_AT: usize = 576;
const SLOTS: usize = 128;
const SLOT: usize = 16;
/// One bit per handle on its way to another process, by token (modulo the bits).
const LENT_AT: usize = SLOTS_AT + SLOTS * SLOT;
const LENT_WORDS: usize = 64;
const _: () = assert!(LENT_AT + LENT_WORDS * 8 <= DATA_AT);

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the queue's shared memory is corrupt ({what})"),
    )
}

fn round8(n: usize) -> usize {
    n.next_multiple_of(8)
}

/// Maps with [`RESERVE`] bytes of address space, or less where this process may not have that
/// much (a `ulimit -v`): a quarter at a time, down to 64 MiB.
fn reserve<T>(mut map: impl FnMut(usize) -> io::Result<T>) -> io::Result<T> {
    let mut size = RESERVE;
    loop {
        match map(size) {
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && size > 64 << 20 => size /= 4,
            other => return other,
        }
    }
}

fn lent_bit(token: u64) -> (usize, u64) {
    let i = (token % (LENT_WORDS as u64 * 64)) as usize;
    (LENT_AT + 8 * (i / 64), 1 << (i % 64))
}

/// One process's mapping of a queue's memory.
#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapping,
    file: OwnedFd,
    /// A size the file had (it never shrinks): ring bytes below it can be touched. Bytes past
    /// the file's end would fault (`SIGBUS`), so a capacity read from the shared header is
    /// checked against this before it is followed (and the file's size asked again when the
    /// check fails: another holder may have grown it).
    file_len: AtomicUsize,
}

/// What a put found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// The frame is in the queue.
    Done,
    /// The queue holds its maximum number of items.
    Full,
    /// The frame does not fit and the queue cannot grow (any more); wait for a get.
    NoRoom,
    /// The consumers' lock (needed to grow) was not free before the deadline.
    Busy,
}

/// A process that holds a queue: its pid and the start time the kernel gave it (so a reused
/// pid is not mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Holder {
    pub(crate) pid: u32,
    pub(crate) start: u64,
}

impl Ring {
    /// A new, empty queue of `kind`, holding at most `maxsize` items (0: no limit).
    pub(crate) fn create(kind: u32, maxsize: u64) -> io::Result<Ring> {
        let (map, file) =
            reserve(|r| Mapping::create_growable("mproc-queue", DATA_AT + FIRST_CAP, r))?;
        let file_len = AtomicUsize::new(DATA_AT + FIRST_CAP);
        let ring = Ring {
            map,
            file,
            file_len,
        };
        for at in [PUT_MUTEX_AT, GET_MUTEX_AT, REG_MUTEX_AT] {
            ring.mutex(at).init(false)?;
        }
        ring.u32(KIND_AT).store(kind, Ordering::Relaxed);
        ring.u64(MAXSIZE_AT).store(maxsize, Ordering::Relaxed);
        ring.u64(CAP_AT).store(FIRST_CAP as u64, Ordering::Relaxed);
        ring.u64(LIMIT_AT)
            .store(ring.map.len() as u64, Ordering::Relaxed);
        ring.u32(0).store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Maps a queue received from another process, checking that it is one of `kind`.
    pub(crate) fn open(file: OwnedFd, kind: u32) -> io::Result<Ring> {
        let (map, len) = reserve(|r| Mapping::open_growable(file.as_fd(), r))?;
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not an mproc queue of this kind",
            )
        };
        if len < DATA_AT + FIRST_CAP {
            return Err(bad());
        }
        let file_len = AtomicUsize::new(len);
        let ring = Ring {
            map,
            file,
            file_len,
        };
        if ring.u32(0).load(Ordering::Acquire) != MAGIC
            || ring.u32(KIND_AT).load(Ordering::Relaxed) != kind
            || ring.layout().is_err()
        {
            return Err(bad());
        }
        // Growth stays within what every holder could map.
        let limit = ring.u64(LIMIT_AT);
        limit.fetch_min(ring.map.len() as u64, Ordering::AcqRel);
        if len > ring.map.len() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the queue has grown beyond the address space this process can reserve for it",
            ));
        }
        Ok(ring)
    }

    fn u32(&self, at: usize) -> &AtomicU32 {
        assert!(at % 4 == 0 && at + 4 <= DATA_AT);
        // SAFETY: inside the header, which lies inside the file from creation on (checked by
        // `open`) and inside the mapping; aligned; every process touches it only atomically.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU32>() }
    }

    fn u64(&self, at: usize) -> &AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= DATA_AT);
        // SAFETY: as for `u32`.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn mutex(&self, at: usize) -> &RobustMutex {
        assert!(at % 64 == 0 && at + std::mem::size_of::<RobustMutex>() <= DATA_AT);
        // SAFETY: inside the header and aligned; `RobustMutex` is a transparent cell over the
        // C type, initialized by `create` before the file was shared.
        unsafe { &*self.map.as_ptr().add(at).cast::<RobustMutex>() }
    }

    /// The ring's capacity and base, as published in the header, checked: a capacity no
    /// holder could have published (zero, not a multiple of 8, or reaching past the file or
    /// the mapping) or a base off the frames' 8-byte grid is reported, never followed.
    fn layout(&self) -> io::Result<(usize, u64)> {
        let cap = self.u64(CAP_AT).load(Ordering::Relaxed);
        let base = self.u64(BASE_AT).load(Ordering::Relaxed);
        let end = usize::try_from(cap)
            .ok()
            .filter(|&cap| cap != 0 && cap % 8 == 0)
            .and_then(|cap| DATA_AT.checked_add(cap))
            .filter(|&end| end <= self.map.len());
        match end {
            Some(end) if base % 8 == 0 && self.file_reaches(end)? => Ok((end - DATA_AT, base)),
            _ => Err(corrupt(
                "a ring capacity or base that does not fit its file",
            )),
        }
    }

    /// Whether the file is at least `end` bytes long.
    fn file_reaches(&self, end: usize) -> io::Result<bool> {
        if end <= self.file_len.load(Ordering::Relaxed) {
            return Ok(true);
        }
        // Grown by another holder since we last looked, or a corrupt capacity.
        let len = shm::file_len(self.file.as_fd())?;
        self.file_len.fetch_max(len, Ordering::Relaxed);
        Ok(end <= len)
    }

    /// The ring's bytes `at..at + len` (ring offsets; `at` 8-aligned). Callers hold the lock
    /// that gives them those bytes under the protocol (see the module docs).
    fn bytes(&self, at: usize, len: usize) -> io::Result<*mut u8> {
        let (cap, _) = self.layout()?;
        if at % 8 != 0 || at.checked_add(len).is_none_or(|end| end > cap) {
            return Err(corrupt("a frame outside the ring"));
        }
        // SAFETY: inside the mapping and inside the file (both checked by `layout`), aligned
        // for the frame's length word.
        Ok(unsafe { self.map.as_ptr().add(DATA_AT + at) })
    }

    /// The most items it holds (0: no limit).
    pub(crate) fn maxsize(&self) -> u64 {
        self.u64(MAXSIZE_AT).load(Ordering::Relaxed)
    }

    /// How many items it holds now (a snapshot).
    pub(crate) fn len(&self) -> u64 {
        let gets = self.u64(GETS_AT).load(Ordering::Acquire);
        let puts = self.u64(PUTS_AT).load(Ordering::Acquire);
        puts.saturating_sub(gets)
    }

    /// Whether a frame is there to take (a snapshot).
    pub(crate) fn has_frames(&self) -> bool {
        self.u64(WRITTEN_AT).load(Ordering::Acquire) != self.u64(READ_AT).load(Ordering::Acquire)
    }

    /// Takes the producers' lock (waiting until `deadline`), finishing the bookkeeping of a
    /// producer that died holding it.
    pub(crate) fn producer(&self, deadline: Option<Instant>) -> io::Result<Option<Producer<'_>>> {
        let Some((held, taken)) = self.mutex(PUT_MUTEX_AT).lock(deadline)? else {
            return Ok(None);
        };
        if taken == Taken::OwnerDied {
            self.recover_put();
        }
        self.check_layout()?;
        Ok(Some(Producer {
            ring: self,
            _held: held,
        }))
    }

    /// Takes the consumers' lock (waiting until `deadline`), finishing the bookkeeping of a
    /// consumer that died holding it.
    pub(crate) fn consumer(&self, deadline: Option<Instant>) -> io::Result<Option<Consumer<'_>>> {
        Ok(self.lock_get(deadline)?.map(|held| Consumer {
            ring: self,
            _held: held,
        }))
    }

    fn lock_get(&self, deadline: Option<Instant>) -> io::Result<Option<Held<'_>>> {
        let Some((held, taken)) = self.mutex(GET_MUTEX_AT).lock(deadline)? else {
            return Ok(None);
        };
        if taken == Taken::OwnerDied {
            self.recover_get();
        }
        self.check_layout()?;
        Ok(Some(held))
    }

    fn check_layout(&self) -> io::Result<()> {
        if self.u32(RELOCATING_AT).load(Ordering::Relaxed) != 0 {
            // A process died while moving the frames: what the queue held is lost.
            self.u32(BROKEN_AT).store(1, Ordering::Relaxed);
        }
        if self.u32(BROKEN_AT).load(Ordering::Relaxed) != 0 {
            return Err(corrupt("a process died while growing it"));
        }
        Ok(())
    }

    fn recover_put(&self) {
        if self.u32(PUT_STAGE_AT).load(Ordering::Relaxed) == 0 {
            return;
        }
        let before = self.u64(WRITTEN_BEFORE_AT).load(Ordering::Relaxed);
        if self.u64(WRITTEN_AT).load(Ordering::Relaxed) == before {
            // Never published: its counts go back to what they were (by value, so running
            // this twice does no harm).
            self.undo_put();
        }
        self.u32(PUT_STAGE_AT).store(0, Ordering::Release);
    }

    /// Puts the producers' counts back to the journaled values.
    fn undo_put(&self) {
        let puts = self.u64(PUTS_BEFORE_AT).load(Ordering::Relaxed);
        self.u64(PUTS_AT).store(puts, Ordering::Release);
        let added = self.u64(ADDED_BEFORE_AT).load(Ordering::Relaxed);
        self.u64(ADDED_AT).store(added, Ordering::Release);
        self.notify_done_if_zero();
    }

    fn recover_get(&self) {
        if self.u32(GET_ACTIVE_AT).load(Ordering::Relaxed) == 0 {
            return;
        }
        let read_before = self.u64(READ_BEFORE_AT).load(Ordering::Relaxed);
        let gets_before = self.u64(GETS_BEFORE_AT).load(Ordering::Relaxed);
        if self.u64(READ_AT).load(Ordering::Relaxed) != read_before
            && self.u64(GETS_AT).load(Ordering::Relaxed) == gets_before
        {
            // Consumed, not yet counted.
            self.u64(GETS_AT)
                .store(gets_before.wrapping_add(1), Ordering::Release);
        }
        self.u32(GET_ACTIVE_AT).store(0, Ordering::Release);
    }

    // --- closing, waiting and waking ---

    /// Marks the queue closed and wakes everyone who waits on it.
    pub(crate) fn close(&self) {
        self.u32(CLOSED_AT).store(1, Ordering::SeqCst);
        for (seq, _) in self.seqs() {
            self.u32(seq).fetch_add(1, Ordering::SeqCst);
            futex::wake(self.u32(seq), u32::MAX);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.u32(CLOSED_AT).load(Ordering::SeqCst) != 0
    }

    fn seqs(&self) -> [(usize, usize); 3] {
        [
            (PUT_SEQ_AT, GETTERS_ASLEEP_AT),
            (GET_SEQ_AT, PUTTERS_ASLEEP_AT),
            (DONE_SEQ_AT, JOINERS_ASLEEP_AT),
        ]
    }

    /// A ticket for [`Ring::sleep`]: read it, check the condition, then sleep on it.
    pub(crate) fn ticket(&self, on: Wait) -> u32 {
        self.u32(self.seqs()[on as usize].0).load(Ordering::SeqCst)
    }

    /// Sleeps until what `on` watches changes after `ticket` was read, or `deadline`.
    /// `Ok(false)` when the deadline passed.
    pub(crate) fn sleep(
        &self,
        on: Wait,
        ticket: u32,
        deadline: Option<Instant>,
    ) -> io::Result<bool> {
        let (seq, asleep) = self.seqs()[on as usize];
        self.u32(asleep).fetch_add(1, Ordering::SeqCst);
        let woke = futex::wait(self.u32(seq), ticket, deadline);
        self.u32(asleep).fetch_sub(1, Ordering::SeqCst);
        woke
    }

    fn notify(&self, on: Wait, n: u32) {
        let (seq, asleep) = self.seqs()[on as usize];
        self.u32(seq).fetch_add(1, Ordering::SeqCst);
        if self.u32(asleep).load(Ordering::SeqCst) > 0 {
            futex::wake(self.u32(seq), n);
        }
    }

    // --- joinable queues ---

    /// Items put and not yet marked done.
    pub(crate) fn unfinished(&self) -> u64 {
        let done = self.u64(DONE_AT).load(Ordering::Acquire);
        self.u64(ADDED_AT)
            .load(Ordering::Acquire)
            .saturating_sub(done)
    }

    /// Marks one item done; `false` (and no change) when none is unfinished.
    pub(crate) fn task_done(&self) -> bool {
        let word = self.u64(DONE_AT);
        let mut done = word.load(Ordering::Acquire);
        loop {
            if done >= self.u64(ADDED_AT).load(Ordering::Acquire) {
                return false;
            }
            match word.compare_exchange_weak(done, done + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => done = now,
            }
        }
        self.notify_done_if_zero();
        true
    }

    fn notify_done_if_zero(&self) {
        if self.unfinished() == 0 {
            self.notify(Wait::Done, u32::MAX);
        }
    }

    // --- holders ---

    /// Counts one more handle of `me` in the table; with `shares`, also marks the queue as
    /// used by more than one process (after counting `me`, so that no reader of the mark can
    /// miss `me`). When the table is full the queue is marked so, and then never concludes
    /// that nobody else holds it.
    ///
    /// Being in the table does not by itself mark the queue: a fork child is counted at birth
    /// for every queue its parent holds, used or not, and its mere existence must not make a
    /// queue that never left its process look abandoned once it is gone.
    pub(crate) fn attach(
        &self,
        me: Holder,
        alive: impl Fn(Holder) -> bool,
        shares: bool,
    ) -> io::Result<()> {
        let _held = self.lock_registry()?;
        self.count(me, alive);
        if shares {
            self.u32(EVER_SHARED_AT).store(1, Ordering::Release);
        }
        Ok(())
    }

    fn count(&self, me: Holder, alive: impl Fn(Holder) -> bool) {
        let mut free = None;
        for i in 0..SLOTS {
            let (pid, count, start) = self.slot(i);
            if pid.load(Ordering::Relaxed) == me.pid && start.load(Ordering::Relaxed) == me.start {
                count.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let taken = pid.load(Ordering::Relaxed) != 0;
            let stale = taken
                && !alive(Holder {
                    pid: pid.load(Ordering::Relaxed),
                    start: start.load(Ordering::Relaxed),
                });
            if free.is_none() && (!taken || stale) {
                free = Some(i);
            }
        }
        match free {
            Some(i) => {
                let (pid, count, start) = self.slot(i);
                pid.store(me.pid, Ordering::Relaxed);
                start.store(me.start, Ordering::Relaxed);
                count.store(1, Ordering::Relaxed);
            }
            None => self.u32(OVERFLOW_AT).store(1, Ordering::Relaxed),
        }
    }

    /// Counts one handle of `me` less.
    pub(crate) fn detach(&self, me: Holder) -> io::Result<()> {
        let _held = self.lock_registry()?;
        for i in 0..SLOTS {
            let (pid, count, start) = self.slot(i);
            if pid.load(Ordering::Relaxed) == me.pid && start.load(Ordering::Relaxed) == me.start {
                if count.fetch_sub(1, Ordering::Relaxed) <= 1 {
                    pid.store(0, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether some process other than `me`, or another handle of `me`, may still use the
    /// queue. `alive` says whether a listed process still runs. A queue that was never shared
    /// with another process (never lent, never used by a fork child that inherited it) counts
    /// as shared: it waits as Python's does.
    pub(crate) fn shared_beyond(
        &self,
        me: Holder,
        alive: impl Fn(Holder) -> bool,
    ) -> io::Result<bool> {
        let _held = self.lock_registry()?;
        if self.u32(EVER_SHARED_AT).load(Ordering::Acquire) == 0
            || self.u32(OVERFLOW_AT).load(Ordering::Relaxed) != 0
            || self.in_flight()
        {
            return Ok(true);
        }
        for i in 0..SLOTS {
            let (pid, count, start) = self.slot(i);
            let holder = Holder {
                pid: pid.load(Ordering::Relaxed),
                start: start.load(Ordering::Relaxed),
            };
            if holder.pid == 0 {
                continue;
            }
            if holder == me {
                if count.load(Ordering::Relaxed) > 1 {
                    return Ok(true);
                }
            } else if alive(holder) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A handle is on its way to another process (in a message not yet decoded): until it
    /// [`arrived`](Ring::arrived), the queue counts as shared. Returns the token the message
    /// carries.
    pub(crate) fn lend(&self) -> u64 {
        self.u32(EVER_SHARED_AT).store(1, Ordering::Release);
        let token = self.u64(LENDS_AT).fetch_add(1, Ordering::AcqRel);
        let (word, bit) = lent_bit(token);
        if self.u64(word).fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            // As many handles in flight as there are bits: count it as shared for good.
            self.u32(LENT_OVERFLOW_AT).store(1, Ordering::Release);
        }
        token
    }

    /// The handle lent with `token` was decoded (its process attached first). A message
    /// decoded several times (a pool initializer's, by each worker) clears it once.
    pub(crate) fn arrived(&self, token: u64) {
        let (word, bit) = lent_bit(token);
        self.u64(word).fetch_and(!bit, Ordering::AcqRel);
    }

    fn in_flight(&self) -> bool {
        self.u32(LENT_OVERFLOW_AT).load(Ordering::Acquire) != 0
            || (0..LENT_WORDS).any(|i| self.u64(LENT_AT + 8 * i).load(Ordering::Acquire) != 0)
    }

    fn lock_registry(&self) -> io::Result<Held<'_>> {
        // A registry update is a few stores; a dead owner leaves at most a half-written slot,
        // which names a dead or a live process either way.
        let (held, _) = self
            .mutex(REG_MUTEX_AT)
            .lock(None)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        Ok(held)
    }

    fn slot(&self, i: usize) -> (&AtomicU32, &AtomicU32, &AtomicU64) {
        let at = SLOTS_AT + i * SLOT;
        (self.u32(at), self.u32(at + 4), self.u64(at + 8))
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Every hold is a scoped `Held` today, so none is left here; one ever forgotten must
        // not leave a thread's robust list pointing into unmapped memory (see
        // `RobustMutex::held_here`).
        if [PUT_MUTEX_AT, GET_MUTEX_AT, REG_MUTEX_AT]
            .into_iter()
            .any(|at| self.mutex(at).held_here())
        {
            self.map.keep_mapped();
        }
    }
}

#[cfg(test)]
mod held_tests {
    use super::super::shared::tests::{MUTEX, in_own_process, lock_block};
    use super::*;

    /// A queue's lock left held (no queue API does that, but one forgotten hold would) keeps
    /// its memory mapped: later locks of other mutexes work, through this thread's list.
    #[test]
    fn a_queue_lock_left_held_leaves_later_locks_working() {
        in_own_process(
            "sys::ring::held_tests::a_queue_lock_left_held_leaves_later_locks_working",
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
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// What a sleeper waits for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wait {
    /// A put (for getters).
    Put = 0,
    /// A get (for putters of a full queue).
    Get = 1,
    /// The last unfinished item marked done (for joiners).
    Done = 2,
}

/// The producers' lock, held.
pub(crate) struct Producer<'a> {
    ring: &'a Ring,
    _held: Held<'a>,
}

impl Producer<'_> {
    /// Appends a frame of `len` bytes that `fill` writes, growing the ring if it must (which
    /// waits for the consumers' lock until `deadline`). With `joinable`, the item also counts
    /// as unfinished. If `fill` fails nothing is published.
    pub(crate) fn push<E: From<io::Error>>(
        &mut self,
        len: usize,
        joinable: bool,
        deadline: Option<Instant>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<Push, E> {
        let r = self.ring;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a message of {len} bytes; a queue takes at most {MAX_FRAME}"),
            )
            .into());
        }
        let max = r.maxsize();
        let puts = r.u64(PUTS_AT).load(Ordering::Relaxed);
        if max > 0 && puts.saturating_sub(r.u64(GETS_AT).load(Ordering::Acquire)) >= max {
            return Ok(Push::Full);
        }
        let need = 8 + round8(len);
        let written = r.u64(WRITTEN_AT).load(Ordering::Relaxed);
        let (at, skip) = loop {
            let (cap, base) = r.layout()?;
            let at = (written.wrapping_sub(base) % cap as u64) as usize;
            let skip = if cap - at >= need { 0 } else { cap - at };
            let room = |read: u64| {
                let used = written.wrapping_sub(read) as usize;
                used <= cap && cap - used >= skip + need
            };
            // Judged first by where producers last saw the consumers (a stale value only
            // understates the room), so most puts never touch the consumers' cache line.
            // The value was stored under the producers' lock after an acquire load of `read`,
            // so the frames it frees are as surely consumed as if we had loaded it ourselves.
            if !room(r.u64(READ_SEEN_AT).load(Ordering::Relaxed)) {
                let read = r.u64(READ_AT).load(Ordering::Acquire);
                r.u64(READ_SEEN_AT).store(read, Ordering::Relaxed);
                let used = written.wrapping_sub(read) as usize;
                if used > cap {
                    return Err(corrupt("more bytes queued than it holds").into());
                }
                if !room(read) {
                    match self.grow(cap, used, need, deadline)? {
                        Push::Done => continue,
                        other => return Ok(other),
                    }
                }
            }
            break (if skip > 0 { 0 } else { at }, skip);
        };
        let added = r.u64(ADDED_AT).load(Ordering::Relaxed);
        r.u64(WRITTEN_BEFORE_AT).store(written, Ordering::Relaxed);
        r.u64(PUTS_BEFORE_AT).store(puts, Ordering::Relaxed);
        r.u64(ADDED_BEFORE_AT).store(added, Ordering::Relaxed);
        r.u32(PUT_STAGE_AT).store(1, Ordering::Release);
        if joinable {
            r.u64(ADDED_AT)
                .store(added.wrapping_add(1), Ordering::Release);
        }
        r.u64(PUTS_AT)
            .store(puts.wrapping_add(1), Ordering::Release);
        let filled = (|| {
            if skip > 0 {
                let (cap, _) = r.layout()?;
                let p = r.bytes(cap.saturating_sub(skip), 4)?;
                // SAFETY: 4 bytes at an 8-aligned offset inside the ring, past `written`:
                // producers' bytes, and we hold the producers' lock.
                unsafe { p.cast::<u32>().write(SKIP) };
            }
            let p = r.bytes(at, need)?;
            // SAFETY: `need` bytes inside the ring between `written` and `read + cap`, which
            // no consumer reads until `written` moves past them; we hold the producers' lock,
            // so no other producer writes them; 8-aligned.
            let body = unsafe {
                p.cast::<u32>().write(len as u32);
                p.add(4).cast::<u32>().write(0);
                std::slice::from_raw_parts_mut(p.add(8), len)
            };
            Ok::<_, io::Error>(body)
        })();
        /// Puts the counts back unless forgotten: when `fill` fails or unwinds (the lock is
        /// then released normally, so no later locker would).
        struct Undo<'a>(&'a Ring);
        impl Drop for Undo<'_> {
            fn drop(&mut self) {
                self.0.undo_put();
                self.0.u32(PUT_STAGE_AT).store(0, Ordering::Release);
            }
        }
        let undo = Undo(r);
        let outcome = match filled {
            Ok(body) => fill(body),
            Err(e) => Err(e.into()),
        };
        outcome?;
        std::mem::forget(undo);
        r.u64(WRITTEN_AT).store(
            written.wrapping_add((skip + need) as u64),
            Ordering::Release,
        );
        r.u32(PUT_STAGE_AT).store(0, Ordering::Release);
        r.notify(Wait::Put, 1);
        Ok(Push::Done)
    }

    /// Makes room for a frame of `need` bytes: a larger file, the live frames moved to its new
    /// part. Takes the consumers' lock (order: producers', then consumers').
    fn grow(
        &mut self,
        cap: usize,
        used: usize,
        need: usize,
        deadline: Option<Instant>,
    ) -> io::Result<Push> {
        let r = self.ring;
        let limit = (r.u64(LIMIT_AT).load(Ordering::Acquire) as usize).min(r.map.len());
        let least = (cap + used + need + 8).next_multiple_of(4096);
        let new_cap = (cap * 2)
            .max(least)
            .min(limit.saturating_sub(DATA_AT) / 4096 * 4096);
        if new_cap < least {
            return Ok(Push::NoRoom);
        }
        let Some(_get) = r.lock_get(deadline)? else {
            return Ok(Push::Busy);
        };
        shm::grow_file(r.file.as_fd(), DATA_AT + new_cap)?;
        r.file_len.fetch_max(DATA_AT + new_cap, Ordering::Relaxed);
        let base = r.u64(BASE_AT).load(Ordering::Relaxed);
        let read = r.u64(READ_AT).load(Ordering::Relaxed);
        let written = r.u64(WRITTEN_AT).load(Ordering::Relaxed);
        // Copy the live frames, in order and without skips, to [cap, cap + moved).
        let mut pos = read;
        let mut moved = 0usize;
        while pos != written {
            let at = (pos.wrapping_sub(base) % cap as u64) as usize;
            let left = written.wrapping_sub(pos) as usize;
            // SAFETY: 4 bytes at an 8-aligned offset inside the old ring (`bytes` checks the
            // bounds against the old capacity, still published); both locks are held.
            let len = unsafe { r.bytes(at, 4)?.cast::<u32>().read() };
            if len == SKIP {
                if cap - at > left {
                    return Err(corrupt("a skip past the last frame"));
                }
                pos = pos.wrapping_add((cap - at) as u64);
                continue;
            }
            let size = 8 + round8(len as usize);
            if size > left || at + size > cap || cap + moved + size > new_cap {
                return Err(corrupt("a frame longer than the bytes queued"));
            }
            let from = r.bytes(at, size)?;
            // SAFETY: the destination lies in the grown file past the old ring (the mapping
            // covers it: checked against the reservation above) and does not overlap the
            // source; both locks are held, so nobody else touches either range.
            unsafe {
                let to = r.map.as_ptr().add(DATA_AT + cap + moved);
                std::ptr::copy_nonoverlapping(from, to, size);
            }
            moved += size;
            pos = pos.wrapping_add(size as u64);
        }
        // Publish the new layout; a death in these four stores breaks the queue (reported).
        let new_read = written.wrapping_sub(moved as u64);
        r.u32(RELOCATING_AT).store(1, Ordering::SeqCst);
        r.u64(CAP_AT).store(new_cap as u64, Ordering::Relaxed);
        r.u64(BASE_AT)
            .store(new_read.wrapping_sub(cap as u64), Ordering::Relaxed);
        r.u64(READ_AT).store(new_read, Ordering::Release);
        r.u32(RELOCATING_AT).store(0, Ordering::SeqCst);
        // Both locks are held: the cached positions can be made exact.
        r.u64(READ_SEEN_AT).store(new_read, Ordering::Relaxed);
        r.u64(WRITTEN_SEEN_AT).store(written, Ordering::Relaxed);
        Ok(Push::Done)
    }
}

/// The consumers' lock, held.
pub(crate) struct Consumer<'a> {
    ring: &'a Ring,
    _held: Held<'a>,
}

impl Consumer<'_> {
    /// Takes the oldest frame and hands its bytes to `read`; `None` when the ring is empty.
    /// The frame is consumed whatever `read` returns, unless it unwinds.
    pub(crate) fn pop<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> io::Result<Option<R>> {
        let r = self.ring;
        let start = r.u64(READ_AT).load(Ordering::Relaxed);
        let (cap, base) = r.layout()?;
        // Where consumers last saw the producers (stored under the consumers' lock after an
        // acquire load, so the frames before it are as surely published): only when it shows
        // nothing new is the producers' cache line read.
        let mut written = r.u64(WRITTEN_SEEN_AT).load(Ordering::Relaxed);
        let ahead = written.wrapping_sub(start);
        if ahead == 0 || ahead as usize > cap {
            written = r.u64(WRITTEN_AT).load(Ordering::Acquire);
            r.u64(WRITTEN_SEEN_AT).store(written, Ordering::Relaxed);
            if written == start {
                return Ok(None);
            }
        }
        let mut pos = start;
        let mut at = (pos.wrapping_sub(base) % cap as u64) as usize;
        // SAFETY: 4 bytes at an 8-aligned offset inside the ring, before `written`: published
        // by a producer (acquire above) and ours under the consumers' lock.
        let mut len = unsafe { r.bytes(at, 4)?.cast::<u32>().read() };
        if len == SKIP {
            pos = pos.wrapping_add((cap - at) as u64);
            at = 0;
            if written.wrapping_sub(pos) as usize > cap {
                return Err(corrupt("a skip past the last frame"));
            }
            // SAFETY: as above, at the ring's start.
            len = unsafe { r.bytes(0, 4)?.cast::<u32>().read() };
        }
        let size = 8 + round8(len as usize);
        if len == SKIP || size > written.wrapping_sub(pos) as usize {
            return Err(corrupt("a frame longer than the bytes queued"));
        }
        let p = r.bytes(at + 8, len as usize)?;
        // SAFETY: the body lies inside the ring (checked) in a published frame that no
        // producer overwrites until `read` moves past it, which only we do, under the lock.
        let out = read(unsafe { std::slice::from_raw_parts(p, len as usize) });
        let gets = r.u64(GETS_AT).load(Ordering::Relaxed);
        r.u64(READ_BEFORE_AT).store(start, Ordering::Relaxed);
        r.u64(GETS_BEFORE_AT).store(gets, Ordering::Relaxed);
        r.u32(GET_ACTIVE_AT).store(1, Ordering::Release);
        r.u64(READ_AT)
            .store(pos.wrapping_add(size as u64), Ordering::Release);
        r.u64(GETS_AT)
            .store(gets.wrapping_add(1), Ordering::Release);
        r.u32(GET_ACTIVE_AT).store(0, Ordering::Release);
        r.notify(Wait::Get, 1);
        Ok(Some(out))
    }
}

/// The queue fuzz target's body (`mproc::__fuzz::ring`): one queue, mapped once or twice in
/// this process, driven by `data` one operation at a time: puts (growing the file), gets, the
/// joinable and holder calls, another mapping opened from the file, the file grown by
/// someone else, and a peer's arbitrary writes to the header (but its locks: a peer that
/// scribbles on a lock can make every holder wait forever, which no check here can prevent)
/// and to the ring. Every call must return: no panic, no fault (`SIGBUS` past the file), no
/// endless loop; what a corrupt header makes impossible is an `InvalidData` error, and only
/// after some stray write. Frames no stray write could have touched come out whole and in
/// order.
pub(crate) fn fuzz(data: &[u8]) {
    use std::collections::VecDeque;

    const KIND: u32 = 7;
    let locks = [PUT_MUTEX_AT, GET_MUTEX_AT, REG_MUTEX_AT]
        .map(|at| at..at + std::mem::size_of::<RobustMutex>());
    let Ok(first) = Ring::create(KIND, 0) else {
        return;
    };
    let mut rings = vec![first];
    let mut sent: VecDeque<Vec<u8>> = VecDeque::new();
    let mut tampered = false;
    let me = Holder { pid: 1, start: 1 };
    let mut input = data.iter().copied();
    let mut byte = || input.next().unwrap_or(0);
    let word = |byte: &mut dyn FnMut() -> u8, n: usize| {
        (0..n).fold(0u64, |w, i| w | u64::from(byte()) << (8 * i))
    };
    let honest = |tampered: bool, e: &io::Error| {
        assert!(tampered, "an honest queue reported {e}");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    };
    for step in 0..data.len().min(256) {
        let op = byte();
        let ring = &rings[usize::from(op & 1) % rings.len()];
        match (op >> 1) % 8 {
            // A put: small, or large enough to grow the ring.
            0 | 1 => {
                let len = match op >> 4 {
                    0..=12 => word(&mut byte, 1) as usize * 8 + step % 8,
                    _ => FIRST_CAP / 2 + word(&mut byte, 2) as usize * 4,
                };
                let Ok(Some(mut producer)) = ring.producer(None) else {
                    assert!(tampered, "an honest queue's lock failed");
                    continue;
                };
                let body: Vec<u8> = (0..len).map(|i| (i ^ step) as u8).collect();
                let pushed = producer.push(len, op & 0x10 != 0, None, |b| {
                    b.copy_from_slice(&body);
                    Ok::<_, io::Error>(())
                });
                match pushed {
                    Ok(Push::Done) => sent.push_back(body),
                    Ok(_) => assert!(tampered, "an honest, unbounded queue refused a put"),
                    Err(e) => honest(tampered, &e),
                }
            }
            // A get.
            2 | 3 => {
                let Ok(Some(mut consumer)) = ring.consumer(None) else {
                    assert!(tampered, "an honest queue's lock failed");
                    continue;
                };
                match consumer.pop(|b| b.to_vec()) {
                    Ok(Some(got)) => {
                        let want = sent.pop_front();
                        assert!(tampered || want.as_ref() == Some(&got), "a frame garbled");
                    }
                    Ok(None) => assert!(tampered || sent.is_empty(), "a frame lost"),
                    Err(e) => honest(tampered, &e),
                }
            }
            // A peer's write of up to 8 bytes anywhere in the header, but on a lock, or in
            // the first part of the ring.
            4 => {
                let at = word(&mut byte, 2) as usize % (DATA_AT + FIRST_CAP);
                let bytes: Vec<u8> = (0..byte() % 9).map(|_| byte()).collect();
                let end = at + bytes.len();
                if !locks.iter().any(|l| at < l.end && l.start < end) {
                    let _ = ring.map.write_at(at, &bytes);
                    tampered = true;
                }
            }
            // A peer's write of a word that steers the ring, near its value or anything.
            5 => {
                const WORDS: [usize; 14] = [
                    CAP_AT,
                    BASE_AT,
                    READ_AT,
                    WRITTEN_AT,
                    READ_SEEN_AT,
                    WRITTEN_SEEN_AT,
                    PUTS_AT,
                    GETS_AT,
                    ADDED_AT,
                    DONE_AT,
                    LIMIT_AT,
                    MAXSIZE_AT,
                    WRITTEN_BEFORE_AT,
                    READ_BEFORE_AT,
                ];
                let at = WORDS[usize::from(byte()) % WORDS.len()];
                let now = ring.u64(at).load(Ordering::Relaxed);
                let value = match byte() % 4 {
                    0 => now.wrapping_add(word(&mut byte, 2)),
                    1 => now.wrapping_sub(word(&mut byte, 2)),
                    2 => now.wrapping_mul(word(&mut byte, 1)),
                    _ => word(&mut byte, 8),
                };
                ring.u64(at).store(value, Ordering::Relaxed);
                tampered = true;
            }
            // Another mapping of the same queue, or the file grown by someone else.
            6 => {
                if op & 0x10 == 0 {
                    let opened = ring.file.try_clone().and_then(|f| Ring::open(f, KIND));
                    match opened {
                        Ok(r) if rings.len() < 3 => rings.push(r),
                        Ok(_) => {}
                        Err(e) => assert!(tampered, "an honest queue did not open: {e}"),
                    }
                } else {
                    let to = DATA_AT + word(&mut byte, 2) as usize * 64;
                    let _ = shm::grow_file(ring.file.as_fd(), to);
                }
            }
            // The rest of the calls.
            _ => {
                let _ = (
                    ring.len(),
                    ring.has_frames(),
                    ring.maxsize(),
                    ring.unfinished(),
                );
                let _ = ring.task_done();
                let ticket = ring.ticket(Wait::Put);
                let _ = ring.sleep(Wait::Put, ticket.wrapping_add(1), Some(Instant::now()));
                let _ = ring.attach(me, |_| false, op & 0x20 != 0);
                let _ = ring.shared_beyond(me, |h| h.pid % 2 == 0);
                let token = ring.lend();
                ring.arrived(token);
                let _ = ring.detach(me);
                if op & 0x10 != 0 {
                    ring.close();
                    assert!(ring.is_closed());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ring.u64(CAP_AT).store(cap, Ordering::Relaxed);
            ring.u64(BASE_AT).store(base, Ordering::Relaxed);
            ring.u64(READ_AT).store(read, Ordering::Relaxed);
            ring.u64(WRITTEN_AT).store(read + 16, Ordering::Relaxed);
            ring.u64(READ_SEEN_AT).store(read, Ordering::Relaxed);
            let what = format!("capacity {cap}, base {base}, read {read}");
            let mut consumer = ring.consumer(None).map_err(text)?.ok_or("the lock")?;
            match consumer.pop(|b| b.to_vec()) {
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
        super::super::shm::testing::in_children(use_a_queue_with_a_corrupt_layout);
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
        assert_eq!(c.pop(|b| b.to_vec()).unwrap().unwrap(), body);
    }

    /// The fuzz target's body on cheap random inputs, on every `cargo test`: the long run is
    /// `cargo fuzz` (fuzz/README.md); this keeps the checks honest between runs.
    #[test]
    fn the_fuzz_body_survives_random_inputs() {
        for data in super::super::shm::testing::fuzz_inputs(40) {
            super::fuzz(&data);
        }
    }
}
