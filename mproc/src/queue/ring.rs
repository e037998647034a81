//! The memory behind a `Queue`: a multi-producer, multi-consumer ring of byte frames in one
//! memory file that every process holding the queue maps, with two robust locks (one for the
//! producers, one for the consumers, so a put and a get run at the same time), counters, futex
//! words to sleep on, and a table of the processes that hold the queue. Handles on their way
//! to another process are counted by the kernel, as locks on the file (see [`Ring::lend`]).
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
//! Layout: a 4 KiB [`Header`] (words on separate cache lines by who writes
//! them), then the ring. A frame is a `u32` length, four bytes of padding, the body, padded to 8 bytes, never split
//! across the ring's end (a `u32::MAX` length says "continue at the start"). Positions are
//! byte counts that only grow; the ring offset of position `p` is `(p - base) % cap`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crate::sys::{dir, futex};
use crate::sys::layout::Mapped;
use crate::sys::shared::{Held, RobustMutex, Taken};
use crate::sys::shm::{self, Mapping};

mod frames;
mod fuzz;
mod layout;
#[cfg(test)]
mod tests;

pub(crate) use frames::{Consumer, Producer};
pub(crate) use fuzz::fuzz;
use layout::{DATA_AT, Header, SLOTS};

/// Address space each process reserves for one queue: the most its file may grow to.
pub(crate) const RESERVE: usize = 1 << 34;
/// The ring's first size.
const FIRST_CAP: usize = 64 * 1024;
/// The largest frame body.
pub(crate) const MAX_FRAME: usize = u32::MAX as usize - 1;
const SKIP: u32 = u32::MAX;
const MAGIC: u32 = 0x6d70_7172; // "mpqr"

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

/// One process's mapping of a queue's memory.
#[derive(Debug)]
pub(crate) struct Ring {
    map: Mapped<Header>,
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
            map: Mapped::new(map)?,
            file,
            file_len,
        };
        for mutex in ring.mutexes() {
            mutex.init(false)?;
        }
        ring.h().fixed.kind.store(kind, Ordering::Relaxed);
        ring.h().fixed.maxsize.store(maxsize, Ordering::Relaxed);
        ring.h()
            .shape
            .cap
            .store(FIRST_CAP as u64, Ordering::Relaxed);
        ring.h()
            .rare
            .limit
            .store(ring.map.map().len() as u64, Ordering::Relaxed);
        ring.h().fixed.magic.store(MAGIC, Ordering::Release);
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
            map: Mapped::new(map)?,
            file,
            file_len,
        };
        if ring.h().fixed.magic.load(Ordering::Acquire) != MAGIC
            || ring.h().fixed.kind.load(Ordering::Relaxed) != kind
            || ring.layout().is_err()
        {
            return Err(bad());
        }
        // Growth stays within what every holder could map.
        let limit = &ring.h().rare.limit;
        limit.fetch_min(ring.map.map().len() as u64, Ordering::AcqRel);
        if len > ring.map.map().len() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "the queue has grown beyond the address space this process can reserve for it",
            ));
        }
        Ok(ring)
    }

    /// The header (checked to fit the mapping when it was made).
    fn h(&self) -> &Header {
        self.map.header()
    }

    fn mutexes(&self) -> [&RobustMutex; 3] {
        let h = self.h();
        [&h.put_mutex, &h.get_mutex, &h.reg_mutex]
    }

    /// The ring's capacity and base, as published in the header, checked: a capacity no
    /// holder could have published (zero, not a multiple of 8, or reaching past the file or
    /// the mapping) or a base off the frames' 8-byte grid is reported, never followed.
    fn layout(&self) -> io::Result<(usize, u64)> {
        let cap = self.h().shape.cap.load(Ordering::Relaxed);
        let base = self.h().shape.base.load(Ordering::Relaxed);
        let end = usize::try_from(cap)
            .ok()
            .filter(|&cap| cap != 0 && cap % 8 == 0)
            .and_then(|cap| DATA_AT.checked_add(cap))
            .filter(|&end| end <= self.map.map().len());
        match end {
            Some(end) if base.is_multiple_of(8) && self.file_reaches(end)? => Ok((end - DATA_AT, base)),
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

    /// Where the ring's bytes `at..at + len` (ring offsets; `at` 8-aligned) are in the file,
    /// checked to lie inside the ring, the file and the mapping. Callers hold the lock that
    /// gives them those bytes under the protocol (see the module docs).
    fn frame_at(&self, at: usize, len: usize) -> io::Result<usize> {
        let (cap, _) = self.layout()?;
        if !at.is_multiple_of(8) || at.checked_add(len).is_none_or(|end| end > cap) {
            return Err(corrupt("a frame outside the ring"));
        }
        Ok(DATA_AT + at)
    }

    /// The frame length word at ring offset `at` (8-aligned), as one atomic word.
    fn length_word(&self, at: usize) -> io::Result<&AtomicU32> {
        self.map.map().view(self.frame_at(at, 4)?)
    }

    /// The most items it holds (0: no limit).
    pub(crate) fn maxsize(&self) -> u64 {
        self.h().fixed.maxsize.load(Ordering::Relaxed)
    }

    /// Finishes the bookkeeping of a producer or a consumer that died inside a put or a get,
    /// if its lock is free: otherwise the next put or get would, and until then the dead
    /// one's journaled counts would show in [`Ring::len`] and [`Ring::unfinished`] (an item
    /// never published counted as held and unfinished, so a `join` with nobody left to put
    /// would never see every item done). A live holder of the lock is left alone.
    pub(crate) fn settle(&self) {
        let h = self.h();
        if h.put.stage.load(Ordering::Acquire) != 0
            && let Ok(Some((_held, Taken::OwnerDied))) = h.put_mutex.try_lock()
        {
            self.recover_put();
        }
        if h.get.active.load(Ordering::Acquire) != 0
            && let Ok(Some((_held, Taken::OwnerDied))) = h.get_mutex.try_lock()
        {
            self.recover_get();
        }
    }

    /// How many items it holds now (a snapshot).
    pub(crate) fn len(&self) -> u64 {
        let gets = self.h().get.gets.load(Ordering::Acquire);
        let puts = self.h().put.puts.load(Ordering::Acquire);
        puts.saturating_sub(gets)
    }

    /// Whether a frame is there to take (a snapshot).
    pub(crate) fn has_frames(&self) -> bool {
        self.h().put.written.load(Ordering::Acquire) != self.h().get.read.load(Ordering::Acquire)
    }

    /// Takes the producers' lock (waiting until `deadline`), finishing the bookkeeping of a
    /// producer that died holding it.
    pub(crate) fn producer(&self, deadline: Option<Instant>) -> io::Result<Option<Producer<'_>>> {
        let Some((held, taken)) = self.h().put_mutex.lock(deadline)? else {
            return Ok(None);
        };
        if taken == Taken::OwnerDied {
            self.recover_put();
        }
        self.check_layout()?;
        Ok(Some(Producer { ring: self, held }))
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
        let Some((held, taken)) = self.h().get_mutex.lock(deadline)? else {
            return Ok(None);
        };
        if taken == Taken::OwnerDied {
            self.recover_get();
        }
        self.check_layout()?;
        Ok(Some(held))
    }

    fn check_layout(&self) -> io::Result<()> {
        if self.h().shape.relocating.load(Ordering::Relaxed) != 0 {
            // A process died while moving the frames: what the queue held is lost.
            self.h().shape.broken.store(1, Ordering::Relaxed);
        }
        if self.h().shape.broken.load(Ordering::Relaxed) != 0 {
            return Err(corrupt("a process died while growing it"));
        }
        Ok(())
    }

    fn recover_put(&self) {
        if self.h().put.stage.load(Ordering::Relaxed) == 0 {
            return;
        }
        let before = self.h().put.written_before.load(Ordering::Relaxed);
        if self.h().put.written.load(Ordering::Relaxed) == before {
            // Never published: its counts go back to what they were (by value, so running
            // this twice does no harm).
            self.undo_put();
        }
        self.h().put.stage.store(0, Ordering::Release);
    }

    /// Puts the producers' counts back to the journaled values.
    fn undo_put(&self) {
        let puts = self.h().put.puts_before.load(Ordering::Relaxed);
        self.h().put.puts.store(puts, Ordering::Release);
        let added = self.h().put.added_before.load(Ordering::Relaxed);
        self.h().put.added.store(added, Ordering::Release);
        // A `task_done` may have counted the item while it was in flight (one call too
        // many): it is taken back, so the next item is not finished before it is got.
        self.take_back_extra_done();
        self.notify_done_if_zero();
    }

    /// Takes back `task_done`s beyond the items put (counted against an item whose put then
    /// failed, see [`Ring::undo_put`]); `true` if there were any.
    fn take_back_extra_done(&self) -> bool {
        let word = &self.h().rare.done;
        loop {
            let done = word.load(Ordering::Acquire);
            let added = self.h().put.added.load(Ordering::Acquire);
            if done <= added {
                return false;
            }
            if word
                .compare_exchange(done, added, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
        }
    }

    fn recover_get(&self) {
        if self.h().get.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let read_before = self.h().get.read_before.load(Ordering::Relaxed);
        let gets_before = self.h().get.gets_before.load(Ordering::Relaxed);
        if self.h().get.read.load(Ordering::Relaxed) != read_before
            && self.h().get.gets.load(Ordering::Relaxed) == gets_before
        {
            // Consumed, not yet counted.
            self.h()
                .get
                .gets
                .store(gets_before.wrapping_add(1), Ordering::Release);
        }
        self.h().get.active.store(0, Ordering::Release);
    }

    // --- closing, waiting and waking ---

    /// Marks the queue closed and wakes everyone who waits on it.
    pub(crate) fn close(&self) {
        self.h().fixed.closed.store(1, Ordering::SeqCst);
        for (seq, _) in self.seqs() {
            seq.fetch_add(1, Ordering::SeqCst);
            futex::wake(seq, u32::MAX);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.h().fixed.closed.load(Ordering::SeqCst) != 0
    }

    /// For each [`Wait`]: the word its sleepers sleep on, and how many sleep.
    fn seqs(&self) -> [(&AtomicU32, &AtomicU32); 3] {
        let h = self.h();
        [
            (&h.put.seq, &h.rare.getters_asleep),
            (&h.get.seq, &h.rare.putters_asleep),
            (&h.rare.done_seq, &h.rare.joiners_asleep),
        ]
    }

    /// A ticket for [`Ring::sleep`]: read it, check the condition, then sleep on it.
    pub(crate) fn ticket(&self, on: Wait) -> u32 {
        self.seqs()[on as usize].0.load(Ordering::SeqCst)
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
        asleep.fetch_add(1, Ordering::SeqCst);
        let woke = futex::wait(seq, ticket, deadline);
        asleep.fetch_sub(1, Ordering::SeqCst);
        woke
    }

    fn notify(&self, on: Wait, n: u32) {
        let (seq, asleep) = self.seqs()[on as usize];
        seq.fetch_add(1, Ordering::SeqCst);
        if asleep.load(Ordering::SeqCst) > 0 {
            futex::wake(seq, n);
        }
    }

    // --- joinable queues ---

    /// Items put and not yet marked done.
    pub(crate) fn unfinished(&self) -> u64 {
        let done = self.h().rare.done.load(Ordering::Acquire);
        self.h()
            .put
            .added
            .load(Ordering::Acquire)
            .saturating_sub(done)
    }

    /// Marks one item done; `false` (and no change) when none is unfinished.
    pub(crate) fn task_done(&self) -> bool {
        let word = &self.h().rare.done;
        let mut done = word.load(Ordering::Acquire);
        loop {
            if done >= self.h().put.added.load(Ordering::Acquire) {
                return false;
            }
            match word.compare_exchange_weak(done, done + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => done = now,
            }
        }
        // Counted against an item in flight whose put failed meanwhile: one too many after
        // all (its undo may have taken it back already, or does so after this look).
        if self.take_back_extra_done() {
            return false;
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
            self.h().rare.ever_shared.store(1, Ordering::Release);
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
            None => self.h().overflow.store(1, Ordering::Relaxed),
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
        if self.h().rare.ever_shared.load(Ordering::Acquire) == 0
            || self.h().overflow.load(Ordering::Relaxed) != 0
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

    /// A handle is on its way to another process: returns the descriptor that travels in its
    /// message. It is an opening of the queue's file of its own (not a duplicate of this
    /// process's), holding a shared lock (`dir::lock_shared`) while it exists: in this
    /// process's encoded message, in a socket's queue, in a child that has yet to decode it,
    /// in a pool's task waiting for a worker. Until the lock goes the queue counts as shared
    /// ([`Ring::shared_beyond`]); it goes however the message ends: decoded (the receiver
    /// attaches, then takes the lock off, [`Ring::arrived`]), or its last copy closed by the
    /// kernel: dropped unread, or lost with a process that died holding it.
    ///
    /// Where the file cannot be opened again (no `/proc`) or locked, a plain duplicate
    /// travels, and the queue is marked as having had a handle in flight that nobody can see:
    /// from then on nobody concludes that nobody else holds it.
    pub(crate) fn lend(&self) -> io::Result<OwnedFd> {
        self.h().rare.ever_shared.store(1, Ordering::Release);
        let own = shm::reopen(self.file.as_fd())
            .and_then(|file| dir::lock_shared(file.as_fd()).map(|()| file));
        match own {
            Ok(file) => Ok(file),
            Err(_) => {
                self.h().rare.untracked.store(1, Ordering::Release);
                crate::sys::fd::dup_above(self.file.as_fd(), 0)
            }
        }
    }

    /// The handle lent in the message this ring was opened from arrived (its process
    /// attached first): the message's lock comes off, for every copy of that message (a
    /// message decoded several times, a pool initializer's by each worker, counts once).
    /// Should that fail, the lock stays only as long as this mapping or a copy of the
    /// message, as a holder would.
    pub(crate) fn arrived(&self) {
        let _ = dir::unlock(self.file.as_fd());
    }

    /// Whether a handle may be on its way to another process: an opening lent with one still
    /// holds its lock (seen from any other opening). When the kernel cannot say, it may.
    fn in_flight(&self) -> bool {
        self.h().rare.untracked.load(Ordering::Acquire) != 0
            || dir::is_locked(self.file.as_fd()).unwrap_or(true)
    }

    fn lock_registry(&self) -> io::Result<Held<'_>> {
        // A registry update is a few stores; a dead owner leaves at most a half-written slot,
        // which names a dead or a live process either way.
        let (held, _) = self
            .h()
            .reg_mutex
            .lock(None)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        Ok(held)
    }

    fn slot(&self, i: usize) -> (&AtomicU32, &AtomicU32, &AtomicU64) {
        let slot = &self.h().slots[i];
        (&slot.pid, &slot.count, &slot.start)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Every hold is a scoped `Held` today, so none is left here; one ever forgotten must
        // not leave a thread's robust list pointing into unmapped memory (see
        // `RobustMutex::held_here`).
        if self.mutexes().iter().any(|m| m.held_here()) {
            self.map.keep_mapped();
        }
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
