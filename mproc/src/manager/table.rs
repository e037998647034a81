//! The engine under [`Dict`](super::Dict) and [`List`](super::List): a hash table of byte keys
//! and values in one block of shared memory, guarded by the block's robust mutex, that a
//! process killed at any instruction leaves whole, and whose every operation costs what it
//! holds, never its capacity.
//!
//! # Layout (offsets from the block's data area, `DATA_AT`)
//!
//! - A header of 256 bytes: the slots per index (a power of two), the bytes per arena, the
//!   most live entries it takes, the layout's mark (`LAYOUT_MARK`, so a block of another
//!   layout is refused), which side is live (`active`), its epoch, its arena's used bytes
//!   (`top`), its live entries (`len`), its used records (`used`: live ones and holes), the
//!   highest epoch ever handed out, and the journal (below).
//! - Two indexes of `slots` slots of two words: a state word (empty, live, tombstone, with
//!   the epoch it was written in) and the key's hash (its top half) beside its record's
//!   number (its bottom half).
//! - Two order arrays of `slots * 3 / 4` records of three words, in insertion order: the
//!   key's hash, the entry's offset in the arena (or `HOLE` once removed), its key and value
//!   lengths.
//! - Two arenas of `cap` bytes, where entries (key bytes, then value bytes) are appended.
//!
//! This is CPython's compact dict in shared memory: the index is sparse (three quarters full
//! at most) and only found through a key's hash; the records are dense and in the order the
//! keys came, so a walk of `0..used` lists them as Python's dict does (an update rewrites its
//! record in place: the key keeps its place; a remove leaves a hole, squeezed out at the next
//! compaction). [`Table::entries`] and [`Table::compact`] walk the records, never the index:
//! they cost the live entries and the holes since the last compaction, not the capacity (they
//! scanned every slot: `items()` of 3 entries took 52-69 µs at the default capacity and
//! 1.5-2.7 ms at 1 M slots, 0.27-0.36 µs at both now; see BENCHMARKS.md). A remove compacts
//! first once its holes would outnumber both the live entries and `SPARE_HOLES`, so holes
//! never make a small dict's walk long (and a compaction's cost, spread over the removes
//! that made its holes, is a few records each). Per-record headers in the arena walked from 0
//! to `top` were the other way considered: they walk dead bytes of every update too, and an
//! update appended there would lose its key's place.
//!
//! A slot written in another epoch is empty. `clear` only starts a new epoch (so it costs
//! the same whatever the capacity), and a compaction builds the other side's index in a new
//! epoch (so it need not zero it first: that wrote, and made resident, the whole index). Each
//! epoch is handed out once (`EPOCH_HIGH` is raised before a slot is written in it), so the
//! leftovers of a compaction that was killed never read as live in a later one.
//!
//! # Crash safety
//!
//! Every change is prepared where nobody looks (beyond `top`, records from `used` on, or the
//! side that is not live), then described in the journal (up to `J_MAX` pairs of an offset
//! and the word to store there), committed by one store of the journal's length, applied, and
//! the journal cleared. A process killed before the commit leaves only garbage nobody reads;
//! one killed after it leaves a journal that the next locker (told by the robust mutex that
//! its owner died) applies again: each step writes absolute values, so applying twice is
//! applying once. Compiler fences keep the stores in that order (another process sees them
//! only through the lock, whose hand-over orders the memory).
//!
//! Nothing here trusts the block: every offset, length and record number is checked (a
//! journal may only write the header's counters, the indexes and the order arrays), and a
//! block another process scribbled over gives an `Err`, never a panic or a read out of
//! bounds.

use std::hash::Hasher;
use std::sync::atomic::{Ordering, compiler_fence};

use crate::error::{Error, ErrorKind};

/// Header words (byte offsets), set once by `init`.
const SLOTS: usize = 0;
const CAP: usize = 8;
/// The most live entries it takes (at most three quarters of the slots).
const MAX_LEN: usize = 16;
const LAYOUT: usize = 24;
/// What `LAYOUT` holds: this layout, version 2. (The first layout kept its arena's `top`
/// there, below 2^32; each layout refuses the other's blocks as corrupt.)
const LAYOUT_MARK: u64 = u64::from_le_bytes(*b"mptable2");
/// The counters, changed through the journal only (but `EPOCH_HIGH`).
const ACTIVE: usize = 32;
const EPOCH: usize = 40;
const TOP: usize = 48;
const LEN: usize = 56;
const USED: usize = 64;
/// The highest epoch handed out: raised, alone, before any slot is written in a new one.
const EPOCH_HIGH: usize = 72;
/// The journal: how many pairs (0: none), then the pairs (offset, word).
const J_LEN: usize = 80;
const J_PAIRS: usize = 88;
const J_MAX: usize = 8;
pub(super) const HEADER: usize = 256;
const _: () = assert!(J_PAIRS + J_MAX * 16 <= HEADER);

const SLOT_BYTES: usize = 16;
const RECORD_BYTES: usize = 24;
const EMPTY: u64 = 0;
const LIVE: u64 = 1;
const TOMB: u64 = 2;
/// A slot's state word: its epoch above these bits, its state in them.
const STATE_BITS: u32 = 2;
/// Past the last epoch (2^62 clears and compactions: never reached).
const EPOCH_END: u64 = 1 << (64 - STATE_BITS);
/// A slot's second word: the hash's top half, the record's number in the bottom half.
const HASH_HIGH: u64 = !0xffff_ffff;
/// A removed record's offset.
const HOLE: u64 = u64::MAX;
/// The most holes a remove leaves before it compacts, whatever the live entries (fewer in a
/// table too small for that many).
const SPARE_HOLES: usize = 256;

/// The records per order array of a table of `slots` slots.
fn records_for(slots: usize) -> usize {
    slots / 4 * 3 + slots % 4 * 3 / 4
}

/// The bytes a table of `slots` slots with arenas of `cap` bytes needs.
pub(super) fn bytes_for(slots: usize, cap: usize) -> Option<usize> {
    let side = slots
        .checked_mul(SLOT_BYTES)?
        .checked_add(records_for(slots).checked_mul(RECORD_BYTES)?)?
        .checked_add(cap)?;
    side.checked_mul(2)?.checked_add(HEADER)
}

/// Sets up a fresh (zeroed) area for at most `max_len` entries (which `slots` must allow).
pub(super) fn init(m: &mut [u8], slots: usize, cap: usize, max_len: usize) {
    put(m, SLOTS, slots as u64);
    put(m, CAP, cap as u64);
    put(m, MAX_LEN, max_len as u64);
    put(m, LAYOUT, LAYOUT_MARK);
}

fn corrupt() -> Error {
    Error::protocol("a managed container's shared memory is corrupt (written by another program?)")
}

fn put(m: &mut [u8], at: usize, v: u64) {
    m[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn word(m: &[u8], at: usize) -> Result<u64, Error> {
    let b = m.get(at..at.checked_add(8).ok_or_else(corrupt)?).ok_or_else(corrupt)?;
    Ok(u64::from_le_bytes(b.try_into().expect("eight bytes")))
}

/// In tests: a writer stopped after a chosen number of stores (as a kill would stop it).
#[cfg(test)]
mod stop {
    use std::cell::Cell;

    thread_local! {
        pub(super) static AFTER: Cell<Option<usize>> = const { Cell::new(None) };
    }
}

fn store_point() -> Result<(), Error> {
    #[cfg(test)]
    if let Some(n) = stop::AFTER.get() {
        if n == 0 {
            return Err(Error::protocol("stopped here by the test"));
        }
        stop::AFTER.set(Some(n - 1));
    }
    Ok(())
}

fn set(m: &mut [u8], at: usize, v: u64) -> Result<(), Error> {
    store_point()?;
    m.get_mut(at..at.checked_add(8).ok_or_else(corrupt)?)
        .ok_or_else(corrupt)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// A key's hash: SipHash with fixed keys, the same in every process.
pub(super) fn hash(key: &[u8]) -> u64 {
    #[allow(deprecated)] // SipHasher: fixed keys on purpose, and std's own
    let mut h = std::hash::SipHasher::new();
    h.write(key);
    h.finish()
}

/// An entry's key and value bytes, copied out.
pub(super) type Entry = (Vec<u8>, Vec<u8>);

/// One record of an order array: an entry, in the order keys came.
#[derive(Clone, Copy, Debug)]
struct Record {
    hash: u64,
    off: u64,
    lens: u64,
}

impl Record {
    fn key_len(&self) -> usize {
        (self.lens >> 32) as usize
    }

    fn val_len(&self) -> usize {
        (self.lens & 0xffff_ffff) as usize
    }

    fn lens(key: usize, value: usize) -> u64 {
        ((key as u64) << 32) | value as u64
    }
}

/// A key found: its slot, its record's number, the record.
struct Hit {
    slot: usize,
    number: usize,
    record: Record,
}

/// Where a key is, or the slot where it would go.
enum Found {
    At(Hit),
    Free(usize),
}

/// The changes a commit makes: (offset, word) pairs.
#[derive(Default)]
struct Journal {
    pairs: [(usize, u64); J_MAX],
    len: usize,
}

impl Journal {
    fn with(mut self, at: usize, v: u64) -> Journal {
        self.pairs[self.len] = (at, v);
        self.len += 1;
        self
    }
}

/// The table, seen by the holder of its lock.
pub(super) struct Table<'a> {
    m: &'a mut [u8],
    slots: usize,
    records: usize,
    cap: usize,
    /// The header's epoch (kept here: every slot read compares with it).
    epoch: u64,
}

impl<'a> Table<'a> {
    /// The table in `m`, checked; after its holder died, its journal applied first.
    pub(super) fn open(m: &'a mut [u8], owner_died: bool) -> Result<Table<'a>, Error> {
        if word(m, LAYOUT)? != LAYOUT_MARK {
            return Err(Error::protocol(
                "a managed container's shared memory is not laid out as this build of mproc \
                 lays it out (made by another version?), or is corrupt",
            ));
        }
        let slots = word(m, SLOTS)? as usize;
        let cap = word(m, CAP)? as usize;
        let fits = slots.is_power_of_two()
            && slots <= 1 << 32
            && bytes_for(slots, cap).is_some_and(|b| b <= m.len())
            && cap < u32::MAX as usize;
        if !fits {
            return Err(corrupt());
        }
        let mut t = Table {
            m,
            slots,
            records: records_for(slots),
            cap,
            epoch: 0,
        };
        if owner_died || t.w(J_LEN)? != 0 {
            t.replay()?;
        }
        t.epoch = t.w(EPOCH)?;
        // Bounded counters keep every sum below in range.
        let sane = t.w(ACTIVE)? <= 1
            && t.w(TOP)? <= cap as u64
            && t.w(LEN)? <= t.w(USED)?
            && t.w(USED)? <= t.records as u64
            && t.w(MAX_LEN)? <= t.records as u64
            && t.epoch <= t.w(EPOCH_HIGH)?
            && t.w(EPOCH_HIGH)? < EPOCH_END;
        if !sane {
            return Err(corrupt());
        }
        Ok(t)
    }

    fn w(&self, at: usize) -> Result<u64, Error> {
        word(self.m, at)
    }

    fn active(&self) -> Result<usize, Error> {
        match self.w(ACTIVE)? {
            a @ (0 | 1) => Ok(a as usize),
            _ => Err(corrupt()),
        }
    }

    fn slot_at(&self, which: usize, i: usize) -> usize {
        HEADER + (which * self.slots + i) * SLOT_BYTES
    }

    fn record_at(&self, which: usize, n: usize) -> usize {
        HEADER + 2 * self.slots * SLOT_BYTES + (which * self.records + n) * RECORD_BYTES
    }

    fn arena_at(&self, which: usize) -> usize {
        self.record_at(2, 0) + which * self.cap
    }

    /// Slot `i` of index `which` as it reads in `epoch`: its state, and its hash and record.
    fn slot(&self, which: usize, i: usize, epoch: u64) -> Result<(u64, u64), Error> {
        let at = self.slot_at(which, i);
        let state = self.w(at)?;
        if state >> STATE_BITS != epoch {
            return Ok((EMPTY, 0));
        }
        Ok((state & ((1 << STATE_BITS) - 1), self.w(at + 8)?))
    }

    fn record(&self, which: usize, n: usize) -> Result<Record, Error> {
        let at = self.record_at(which, n);
        Ok(Record {
            hash: self.w(at)?,
            off: self.w(at + 8)?,
            lens: self.w(at + 16)?,
        })
    }

    /// Writes record `n` of order array `which`, where nobody reads it (from `used` on, or on
    /// the side that is not live).
    fn write_record(&mut self, which: usize, n: usize, r: Record) -> Result<(), Error> {
        if n >= self.records {
            return Err(corrupt());
        }
        let at = self.record_at(which, n);
        for (k, v) in [r.hash, r.off, r.lens].into_iter().enumerate() {
            set(self.m, at + 8 * k, v)?;
        }
        Ok(())
    }

    /// The bytes of a record's entry in arena `which`: key, then value.
    fn entry(&self, which: usize, r: &Record) -> Result<(&[u8], &[u8]), Error> {
        let (k, v) = (r.key_len(), r.val_len());
        let off = usize::try_from(r.off).map_err(|_| corrupt())?;
        if off.checked_add(k + v).is_none_or(|end| end > self.cap) {
            return Err(corrupt());
        }
        let at = self.arena_at(which) + off;
        let bytes = self.m.get(at..at + k + v).ok_or_else(corrupt)?;
        Ok(bytes.split_at(k))
    }

    /// Whether a journal may write at `at`: the counters, the indexes, the order arrays.
    fn journaled(&self, at: usize) -> bool {
        at.is_multiple_of(8) && ((ACTIVE..J_LEN).contains(&at) || (HEADER..self.arena_at(0)).contains(&at))
    }

    /// Applies a committed journal again (idempotent), then clears it.
    fn replay(&mut self) -> Result<(), Error> {
        let n = self.w(J_LEN)? as usize;
        if n > J_MAX {
            return Err(corrupt());
        }
        for k in 0..n {
            let at = self.w(J_PAIRS + 16 * k)? as usize;
            let v = self.w(J_PAIRS + 16 * k + 8)?;
            if !self.journaled(at) {
                return Err(corrupt());
            }
            set(self.m, at, v)?;
        }
        self.epoch = self.w(EPOCH)?;
        compiler_fence(Ordering::SeqCst);
        set(self.m, J_LEN, 0)
    }

    /// Writes `j` to the journal, commits it, and applies it.
    fn commit(&mut self, j: Journal) -> Result<(), Error> {
        for (k, &(at, v)) in j.pairs[..j.len].iter().enumerate() {
            set(self.m, J_PAIRS + 16 * k, at as u64)?;
            set(self.m, J_PAIRS + 16 * k + 8, v)?;
        }
        compiler_fence(Ordering::SeqCst);
        set(self.m, J_LEN, j.len as u64)?;
        compiler_fence(Ordering::SeqCst);
        self.replay()
    }

    /// A new epoch, never handed out before (so no slot was ever written in it).
    fn new_epoch(&mut self) -> Result<u64, Error> {
        let next = self.w(EPOCH_HIGH)?.saturating_add(1);
        if next >= EPOCH_END {
            return Err(corrupt());
        }
        set(self.m, EPOCH_HIGH, next)?;
        compiler_fence(Ordering::SeqCst);
        Ok(next)
    }

    pub(super) fn len(&self) -> Result<usize, Error> {
        Ok(self.w(LEN)? as usize)
    }

    fn used(&self) -> Result<usize, Error> {
        Ok(self.w(USED)? as usize)
    }

    /// Finds `key` (hashed `h`) in the live index.
    fn find(&self, key: &[u8], h: u64) -> Result<Found, Error> {
        let (active, used) = (self.active()?, self.used()?);
        let mask = self.slots - 1;
        let mut free = None;
        for n in 0..self.slots {
            let i = (h as usize).wrapping_add(n) & mask;
            let (state, tag) = self.slot(active, i, self.epoch)?;
            match state {
                EMPTY => return Ok(Found::Free(free.unwrap_or(i))),
                TOMB => {
                    free.get_or_insert(i);
                }
                LIVE if tag & HASH_HIGH == h & HASH_HIGH => {
                    let number = (tag & !HASH_HIGH) as usize;
                    if number >= used {
                        return Err(corrupt());
                    }
                    let record = self.record(active, number)?;
                    if record.off == HOLE {
                        return Err(corrupt());
                    }
                    if record.hash == h
                        && record.key_len() == key.len()
                        && self.entry(active, &record)?.0 == key
                    {
                        return Ok(Found::At(Hit { slot: i, number, record }));
                    }
                }
                LIVE => {}
                _ => return Err(corrupt()),
            }
        }
        free.map(Found::Free).ok_or_else(|| Error::from(ErrorKind::Full))
    }

    /// The value stored under `key`, copied out.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.find(key, hash(key))? {
            Found::At(hit) => Ok(Some(self.entry(self.active()?, &hit.record)?.1.to_vec())),
            Found::Free(_) => Ok(None),
        }
    }

    /// Stores `value` under `key`; returns what `old` makes of the value it replaces. `old`
    /// reads that value in place, before anything is written: if it fails, nothing changes
    /// (a value of another type is refused, not dropped unread).
    pub(super) fn insert<R>(
        &mut self,
        key: &[u8],
        value: &[u8],
        old: impl FnOnce(&[u8]) -> Result<R, Error>,
    ) -> Result<Option<R>, Error> {
        let need = key.len() + value.len();
        if key.len() >= u32::MAX as usize || value.len() >= u32::MAX as usize || need > self.cap {
            return Err(Error::invalid(format!(
                "an entry of {need} bytes does not fit a managed container of {} bytes",
                self.cap
            )));
        }
        let h = hash(key);
        let mut found = self.find(key, h)?;
        let old = match &found {
            Found::At(hit) => Some(old(self.entry(self.active()?, &hit.record)?.1)?),
            Found::Free(_) => None,
        };
        let adds = matches!(found, Found::Free(_));
        if adds && self.len()? as u64 >= self.w(MAX_LEN)? {
            return Err(ErrorKind::Full.into());
        }
        let no_room = |t: &Table<'_>| -> Result<bool, Error> {
            Ok(t.w(TOP)? > (t.cap - need) as u64 || (adds && t.used()? >= t.records))
        };
        if no_room(self)? {
            self.compact()?;
            if no_room(self)? {
                return Err(ErrorKind::Full.into());
            }
            found = self.find(key, h)?;
        }
        self.place(key, value, h, found)?;
        Ok(old)
    }

    /// Appends `key` and `value` (hashed `h`) to the arena and commits them: in place of the
    /// record `found` (the key keeps its place in the order), or as a new record and slot.
    fn place(&mut self, key: &[u8], value: &[u8], h: u64, found: Found) -> Result<(), Error> {
        let need = key.len() + value.len();
        let (active, top) = (self.active()?, self.w(TOP)? as usize);
        // Checked again: another process may scribble while this one holds the lock.
        if top > self.cap - need {
            return Err(corrupt());
        }
        // Beyond `top`: nobody reads it until the commit.
        let at = self.arena_at(active) + top;
        store_point()?;
        let dst = self.m.get_mut(at..at + need).ok_or_else(corrupt)?;
        dst[..key.len()].copy_from_slice(key);
        dst[key.len()..].copy_from_slice(value);
        let lens = Record::lens(key.len(), value.len());
        let journal = match found {
            Found::At(hit) => {
                let at = self.record_at(active, hit.number);
                Journal::default().with(at + 8, top as u64).with(at + 16, lens)
            }
            Found::Free(i) => {
                let (number, len) = (self.used()?, self.len()?);
                let record = Record { hash: h, off: top as u64, lens };
                self.write_record(active, number, record)?;
                let at = self.slot_at(active, i);
                Journal::default()
                    .with(at, self.epoch << STATE_BITS | LIVE)
                    .with(at + 8, h & HASH_HIGH | number as u64)
                    .with(USED, number as u64 + 1)
                    .with(LEN, (len as u64).saturating_add(1))
            }
        };
        self.commit(journal.with(TOP, (top + need) as u64))
    }

    /// Removes `key`; returns what `take` makes of its value. `take` reads the value in place,
    /// before anything is written: if it fails, nothing changes (a value of another type is
    /// refused, not dropped unread).
    pub(super) fn remove<R>(
        &mut self,
        key: &[u8],
        take: impl FnOnce(&[u8]) -> Result<R, Error>,
    ) -> Result<Option<R>, Error> {
        let h = hash(key);
        let Found::At(mut hit) = self.find(key, h)? else {
            return Ok(None);
        };
        let old = take(self.entry(self.active()?, &hit.record)?.1)?;
        // Found, so one at least (a count scribbled to 0 is not).
        let left = |t: &Table<'_>| t.len()?.checked_sub(1).ok_or_else(corrupt);
        let holes = self.used()?.checked_sub(self.len()?).ok_or_else(corrupt)? + 1;
        let spare = SPARE_HOLES.min(self.records / 4);
        if holes > left(self)?.max(spare) {
            self.compact()?;
            let Found::At(again) = self.find(key, h)? else {
                return Err(corrupt());
            };
            hit = again;
        }
        let active = self.active()?;
        let journal = Journal::default()
            .with(self.slot_at(active, hit.slot), self.epoch << STATE_BITS | TOMB)
            .with(self.record_at(active, hit.number) + 8, HOLE)
            .with(LEN, left(self)? as u64);
        self.commit(journal)?;
        Ok(Some(old))
    }

    /// Empties it: a new epoch, in which every slot is empty.
    pub(super) fn clear(&mut self) -> Result<(), Error> {
        let epoch = self.new_epoch()?;
        let journal = Journal::default()
            .with(EPOCH, epoch)
            .with(TOP, 0)
            .with(LEN, 0)
            .with(USED, 0);
        self.commit(journal)
    }

    /// Every live entry, in insertion order: (key, value) bytes.
    pub(super) fn entries(&self) -> Result<Vec<Entry>, Error> {
        let (active, len) = (self.active()?, self.len()?);
        let mut found = Vec::with_capacity(len);
        for n in 0..self.used()? {
            let record = self.record(active, n)?;
            if record.off != HOLE {
                let (k, v) = self.entry(active, &record)?;
                found.push((k.to_vec(), v.to_vec()));
            }
        }
        if found.len() != len {
            return Err(corrupt());
        }
        Ok(found)
    }

    /// Copies the live entries, in order, into the other side (which nobody reads), indexed
    /// in a new epoch, then makes that side live: drops holes, tombstones and the arena's
    /// dead bytes. Walks the records, not the index: costs the live entries and the holes.
    fn compact(&mut self) -> Result<(), Error> {
        let active = self.active()?;
        let other = 1 - active;
        let (len, used) = (self.len()?, self.used()?);
        let epoch = self.new_epoch()?;
        let (mut top, mut count) = (0usize, 0usize);
        for n in 0..used {
            let record = self.record(active, n)?;
            if record.off == HOLE {
                continue;
            }
            let bytes = record.key_len() + record.val_len();
            // Checks the record's bytes lie in the arena.
            self.entry(active, &record)?;
            if top + bytes > self.cap {
                return Err(corrupt());
            }
            let from = self.arena_at(active) + record.off as usize;
            let to = self.arena_at(other) + top;
            store_point()?;
            self.m.copy_within(from..from + bytes, to);
            self.write_record(other, count, Record { off: top as u64, ..record })?;
            self.index(other, epoch, record.hash, count)?;
            top += bytes;
            count += 1;
        }
        if count != len {
            return Err(corrupt());
        }
        let journal = Journal::default()
            .with(ACTIVE, other as u64)
            .with(EPOCH, epoch)
            .with(TOP, top as u64)
            .with(LEN, count as u64)
            .with(USED, count as u64);
        self.commit(journal)
    }

    /// Puts record `number` (hashed `h`) in index `which`, read in `epoch` (being built:
    /// nobody reads it).
    fn index(&mut self, which: usize, epoch: u64, h: u64, number: usize) -> Result<(), Error> {
        let mask = self.slots - 1;
        for n in 0..self.slots {
            let i = (h as usize).wrapping_add(n) & mask;
            if self.slot(which, i, epoch)?.0 == EMPTY {
                let at = self.slot_at(which, i);
                set(self.m, at, epoch << STATE_BITS | LIVE)?;
                return set(self.m, at + 8, h & HASH_HIGH | number as u64);
            }
        }
        Err(corrupt())
    }
}

#[cfg(test)]
mod tests;
