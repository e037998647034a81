//! Frames in and out of the ring: a put, a get, and the ring's growth.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use super::layout::DATA_AT;
use super::{MAX_FRAME, Push, Ring, SKIP, Wait, corrupt, round8};
use crate::sys::layout::SharedReader;
use crate::sys::shared::Held;
use crate::sys::shm;

/// The producers' lock, held.
pub(crate) struct Producer<'a> {
    pub(super) ring: &'a Ring,
    pub(super) held: Held<'a>,
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
        let puts = r.h().put.puts.load(Ordering::Relaxed);
        if max > 0 && puts.saturating_sub(r.h().get.gets.load(Ordering::Acquire)) >= max {
            return Ok(Push::Full);
        }
        let need = 8 + round8(len);
        let written = r.h().put.written.load(Ordering::Relaxed);
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
            if !room(r.h().put.read_seen.load(Ordering::Relaxed)) {
                let read = r.h().get.read.load(Ordering::Acquire);
                r.h().put.read_seen.store(read, Ordering::Relaxed);
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
        let added = r.h().put.added.load(Ordering::Relaxed);
        r.h().put.written_before.store(written, Ordering::Relaxed);
        r.h().put.puts_before.store(puts, Ordering::Relaxed);
        r.h().put.added_before.store(added, Ordering::Relaxed);
        r.h().put.stage.store(1, Ordering::Release);
        if joinable {
            r.h()
                .put
                .added
                .store(added.wrapping_add(1), Ordering::Release);
        }
        r.h()
            .put
            .puts
            .store(puts.wrapping_add(1), Ordering::Release);
        let filled = frame_body(r, &mut self.held, at, skip, len);
        /// Puts the counts back unless forgotten: when `fill` fails or unwinds (the lock is
        /// then released normally, so no later locker would).
        struct Undo<'a>(&'a Ring);
        impl Drop for Undo<'_> {
            fn drop(&mut self) {
                self.0.undo_put();
                self.0.h().put.stage.store(0, Ordering::Release);
            }
        }
        let undo = Undo(r);
        let outcome = match filled {
            Ok(body) => fill(body),
            Err(e) => Err(e.into()),
        };
        outcome?;
        std::mem::forget(undo);
        r.h().put.written.store(
            written.wrapping_add((skip + need) as u64),
            Ordering::Release,
        );
        r.h().put.stage.store(0, Ordering::Release);
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
        let limit = (r.h().rare.limit.load(Ordering::Acquire) as usize).min(r.map.map().len());
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
        let base = r.h().shape.base.load(Ordering::Relaxed);
        let read = r.h().get.read.load(Ordering::Relaxed);
        let written = r.h().put.written.load(Ordering::Relaxed);
        // Copy the live frames, in order and without skips, to [cap, cap + moved).
        let mut pos = read;
        let mut moved = 0usize;
        while pos != written {
            let at = (pos.wrapping_sub(base) % cap as u64) as usize;
            let left = written.wrapping_sub(pos) as usize;
            // Inside the old ring (checked against the old capacity, still published); both
            // locks are held.
            let len = r.length_word(at)?.load(Ordering::Relaxed);
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
            // To the grown file past the old ring (within the limit checked above); both locks
            // are held, so nobody honest touches either range.
            let from = r.frame_at(at, size)?;
            r.map.map().copy_within(from, DATA_AT + cap + moved, size)?;
            moved += size;
            pos = pos.wrapping_add(size as u64);
        }
        // Publish the new layout; a death in these four stores breaks the queue (reported).
        let new_read = written.wrapping_sub(moved as u64);
        r.h().shape.relocating.store(1, Ordering::SeqCst);
        r.h().shape.cap.store(new_cap as u64, Ordering::Relaxed);
        r.h()
            .shape
            .base
            .store(new_read.wrapping_sub(cap as u64), Ordering::Relaxed);
        r.h().get.read.store(new_read, Ordering::Release);
        r.h().shape.relocating.store(0, Ordering::SeqCst);
        // Both locks are held: the cached positions can be made exact.
        r.h().put.read_seen.store(new_read, Ordering::Relaxed);
        r.h().get.written_seen.store(written, Ordering::Relaxed);
        Ok(Push::Done)
    }
}

/// Writes the header of a frame of `len` bytes at ring offset `at` (and the skip mark before
/// it, if `skip`) and lends its body to be filled, under the producers' lock (`held`).
fn frame_body<'a>(
    r: &'a Ring,
    held: &'a mut Held<'_>,
    at: usize,
    skip: usize,
    len: usize,
) -> io::Result<&'a mut [u8]> {
    if skip > 0 {
        // Past `written`: the producers' bytes, and we hold their lock.
        let (cap, _) = r.layout()?;
        r.length_word(cap.saturating_sub(skip))?
            .store(SKIP, Ordering::Relaxed);
    }
    // `8 + round8(len)` bytes between `written` and `read + cap`, which no consumer reads
    // until `written` moves past them; no other producer writes them (we hold the lock).
    let frame = r.frame_at(at, 8 + round8(len))?;
    let map = r.map.map();
    map.view::<AtomicU32>(frame)?
        .store(len as u32, Ordering::Relaxed);
    map.view::<AtomicU32>(frame + 4)?
        .store(0, Ordering::Relaxed);
    map.locked_bytes(held, frame + 8, len)
}

/// The consumers' lock, held.
pub(crate) struct Consumer<'a> {
    pub(super) ring: &'a Ring,
    pub(super) _held: Held<'a>,
}

impl Consumer<'_> {
    /// Takes the oldest frame and hands its bytes to `read`, as a reader that copies them out
    /// of shared memory (once: a decoder checks its private copy, and a large body goes
    /// straight into the value it becomes); `None` when the ring is empty. The frame is
    /// consumed whatever `read` returns, unless it unwinds.
    pub(crate) fn pop<R>(
        &mut self,
        read: impl FnOnce(SharedReader<'_>) -> R,
    ) -> io::Result<Option<R>> {
        let r = self.ring;
        let start = r.h().get.read.load(Ordering::Relaxed);
        let (cap, base) = r.layout()?;
        // Where consumers last saw the producers (stored under the consumers' lock after an
        // acquire load, so the frames before it are as surely published): only when it shows
        // nothing new is the producers' cache line read.
        let mut written = r.h().get.written_seen.load(Ordering::Relaxed);
        let ahead = written.wrapping_sub(start);
        if ahead == 0 || ahead as usize > cap {
            written = r.h().put.written.load(Ordering::Acquire);
            r.h().get.written_seen.store(written, Ordering::Relaxed);
            if written == start {
                return Ok(None);
            }
        }
        let mut pos = start;
        let mut at = (pos.wrapping_sub(base) % cap as u64) as usize;
        // Before `written`: published by a producer (acquire above) and ours under the
        // consumers' lock. Read once, then checked.
        let mut len = r.length_word(at)?.load(Ordering::Relaxed);
        if len == SKIP {
            pos = pos.wrapping_add((cap - at) as u64);
            at = 0;
            if written.wrapping_sub(pos) as usize > cap {
                return Err(corrupt("a skip past the last frame"));
            }
            len = r.length_word(0)?.load(Ordering::Relaxed);
        }
        let size = 8 + round8(len as usize);
        if len == SKIP || size > written.wrapping_sub(pos) as usize {
            return Err(corrupt("a frame longer than the bytes queued"));
        }
        // A published frame that no honest producer overwrites until `read` moves past it,
        // which only we do, under the lock.
        let body = r.frame_at(at + 8, len as usize)?;
        let out = read(r.map.map().reader(body, len as usize)?);
        let gets = r.h().get.gets.load(Ordering::Relaxed);
        r.h().get.read_before.store(start, Ordering::Relaxed);
        r.h().get.gets_before.store(gets, Ordering::Relaxed);
        r.h().get.active.store(1, Ordering::Release);
        r.h()
            .get
            .read
            .store(pos.wrapping_add(size as u64), Ordering::Release);
        r.h()
            .get
            .gets
            .store(gets.wrapping_add(1), Ordering::Release);
        r.h().get.active.store(0, Ordering::Release);
        r.notify(Wait::Get, 1);
        Ok(Some(out))
    }
}
