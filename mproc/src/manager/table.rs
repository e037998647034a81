//! The engine under [`Dict`](super::Dict) and [`List`](super::List): a hash table of byte keys
//! and values in one block of shared memory, guarded by the block's robust mutex, that a
//! process killed at any instruction leaves whole.
//!
//! # Layout (offsets from the block's data area, `DATA_AT`)
//!
//! - A header of 192 bytes: the number of slots per table (a power of two), the bytes per
//!   arena, which table and arena are live (`active`), the live arena's used bytes (`top`),
//!   live entries (`len`), tombstones, the next insertion number, the journal (below), and
//!   the epoch.
//! - Two tables of `slots` slots of five words: state (empty, live, tombstone, with the
//!   epoch it was written in), the key's hash, the entry's offset in the live arena, its key
//!   and value lengths, its insertion number (so `keys` lists in insertion order, as Python's
//!   dict does).
//! - Two arenas of `cap` bytes, where entries (key bytes, then value bytes) are appended.
//!
//! A slot written in an earlier epoch is empty: `clear` only starts a new epoch, so it costs
//! the same whatever the capacity (zeroing the table made it cost, and made resident, the
//! whole table: 5 MiB for the default capacity).
//!
//! # Crash safety
//!
//! Every change is prepared where nobody looks (beyond `top`, or in the table and arena that
//! are not live), then described in the journal, committed by one store of the journal's
//! kind, applied, and the journal cleared. A process killed before the commit leaves only
//! garbage nobody reads; one killed after it leaves a journal that the next locker (told by
//! the robust mutex that its owner died) applies again: each step writes absolute values, so
//! applying twice is applying once. Compiler fences keep the stores in that order (another
//! process sees them only through the lock, whose hand-over orders the memory).
//!
//! Nothing here trusts the block: every offset is checked, and a block another process
//! scribbled over gives an `Err`, never a panic or a read out of bounds.

use std::hash::Hasher;
use std::sync::atomic::{Ordering, compiler_fence};

use crate::error::{Error, ErrorKind};

/// Header words (byte offsets).
const SLOTS: usize = 0;
const CAP: usize = 8;
const ACTIVE: usize = 16;
const TOP: usize = 24;
const LEN: usize = 32;
const TOMBS: usize = 40;
const NEXT_SEQ: usize = 48;
/// The journal: its kind (0 none; 1 a slot; 2 a flip to the other table and arena; 3 clear:
/// a new epoch), then what it sets.
const J_KIND: usize = 56;
const J_SLOT: usize = 64;
const J_WORDS: usize = 72; // five words: the slot's new contents
const J_TOP: usize = 112;
const J_LEN: usize = 120;
const J_TOMBS: usize = 128;
const J_SEQ: usize = 136;
const J_ACTIVE: usize = 144;
/// The most live entries it takes (at most three quarters of the slots).
const MAX_LEN: usize = 152;
/// The epoch: slots written in another are empty.
const EPOCH: usize = 160;
const J_EPOCH: usize = 168;
pub(super) const HEADER: usize = 192;

const SLOT_WORDS: usize = 5;
const SLOT_BYTES: usize = SLOT_WORDS * 8;
const EMPTY: u64 = 0;
const LIVE: u64 = 1;
const TOMB: u64 = 2;
/// A slot's state word: its epoch above these bits, its state in them.
const STATE_BITS: u32 = 2;
/// Past the last epoch (2^62 clears: never reached).
const EPOCH_END: u64 = 1 << (64 - STATE_BITS);

/// The bytes a table of `slots` slots with arenas of `cap` bytes needs.
pub(super) fn bytes_for(slots: usize, cap: usize) -> Option<usize> {
    slots
        .checked_mul(SLOT_BYTES * 2)?
        .checked_add(cap.checked_mul(2)?)?
        .checked_add(HEADER)
}

/// Sets up a fresh (zeroed) area for at most `max_len` entries (which `slots` must allow).
pub(super) fn init(m: &mut [u8], slots: usize, cap: usize, max_len: usize) {
    put(m, SLOTS, slots as u64);
    put(m, CAP, cap as u64);
    put(m, MAX_LEN, max_len as u64);
}

fn corrupt() -> Error {
    Error::protocol("a managed container's shared memory is corrupt (written by another program?)")
}

fn put(m: &mut [u8], at: usize, v: u64) {
    m[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn word(m: &[u8], at: usize) -> Result<u64, Error> {
    let b = m.get(at..at + 8).ok_or_else(corrupt)?;
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
    m.get_mut(at..at + 8)
        .ok_or_else(corrupt)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// A key's hash: SipHash with fixed keys, the same in every process. Never 0 or 1 apart from
/// chance, which only costs a comparison.
pub(super) fn hash(key: &[u8]) -> u64 {
    #[allow(deprecated)] // SipHasher: fixed keys on purpose, and std's own
    let mut h = std::hash::SipHasher::new();
    h.write(key);
    h.finish()
}

/// An entry's key and value bytes, copied out.
pub(super) type Entry = (Vec<u8>, Vec<u8>);

/// One slot's five words.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    state: u64,
    hash: u64,
    off: u64,
    lens: u64,
    seq: u64,
}

impl Slot {
    fn key_len(&self) -> usize {
        (self.lens >> 32) as usize
    }

    fn val_len(&self) -> usize {
        (self.lens & 0xffff_ffff) as usize
    }
}

/// The table, seen by the holder of its lock.
pub(super) struct Table<'a> {
    m: &'a mut [u8],
    slots: usize,
    cap: usize,
    /// The header's epoch (kept here: every slot read compares with it).
    epoch: u64,
}

/// Where a key is, or where it would go.
enum Found {
    At(usize, Slot),
    Free(usize),
}

impl<'a> Table<'a> {
    /// The table in `m`, checked; after its holder died, its journal applied first.
    pub(super) fn open(m: &'a mut [u8], owner_died: bool) -> Result<Table<'a>, Error> {
        let slots = word(m, SLOTS)? as usize;
        let cap = word(m, CAP)? as usize;
        let fits = slots.is_power_of_two()
            && bytes_for(slots, cap).is_some_and(|b| b <= m.len())
            && cap < u32::MAX as usize;
        if !fits {
            return Err(corrupt());
        }
        let epoch = word(m, EPOCH)?;
        let mut t = Table {
            m,
            slots,
            cap,
            epoch,
        };
        // Before the epoch is checked: a clear's journal sets a new one.
        if owner_died || t.w(J_KIND)? != 0 {
            t.replay()?;
        }
        // Bounded counters keep every sum below in range.
        let sane = t.w(TOP)? <= cap as u64
            && t.w(LEN)? <= slots as u64
            && t.w(TOMBS)? <= slots as u64
            && t.w(MAX_LEN)? <= slots as u64
            && t.epoch < EPOCH_END;
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

    fn table_at(&self, which: usize) -> usize {
        HEADER + which * self.slots * SLOT_BYTES
    }

    fn arena_at(&self, which: usize) -> usize {
        HEADER + 2 * self.slots * SLOT_BYTES + which * self.cap
    }

    fn slot(&self, which: usize, i: usize) -> Result<Slot, Error> {
        let at = self.table_at(which) + i * SLOT_BYTES;
        let word = self.w(at)?;
        let state = if word >> STATE_BITS == self.epoch {
            word & ((1 << STATE_BITS) - 1)
        } else {
            EMPTY
        };
        Ok(Slot {
            state,
            hash: self.w(at + 8)?,
            off: self.w(at + 16)?,
            lens: self.w(at + 24)?,
            seq: self.w(at + 32)?,
        })
    }

    /// The live slots of table `which`, in slot order. Only a slot found live is read whole:
    /// this scan of every slot is most of what `entries` and `compact` cost, and reading
    /// each slot's five words through `slot` made it three to seven times slower.
    fn live_slots(&self, which: usize) -> Result<Vec<Slot>, Error> {
        let at = self.table_at(which);
        let table = self.m.get(at..at + self.slots * SLOT_BYTES).ok_or_else(corrupt)?;
        let live = (LIVE | self.epoch << STATE_BITS).to_le_bytes();
        let mut found = Vec::with_capacity(self.len()?.min(self.slots));
        for (i, s) in table.chunks_exact(SLOT_BYTES).enumerate() {
            if s[..8] == live {
                found.push(self.slot(which, i)?);
            }
        }
        Ok(found)
    }

    fn write_slot(&mut self, which: usize, i: usize, s: Slot) -> Result<(), Error> {
        let at = self.table_at(which) + i * SLOT_BYTES;
        let state = (self.epoch << STATE_BITS) | s.state;
        for (k, v) in [state, s.hash, s.off, s.lens, s.seq].into_iter().enumerate() {
            set(self.m, at + 8 * k, v)?;
        }
        Ok(())
    }

    /// The bytes of a live slot's entry in arena `which`: key, then value.
    fn entry(&self, which: usize, s: &Slot) -> Result<(&[u8], &[u8]), Error> {
        let (off, k, v) = (s.off as usize, s.key_len(), s.val_len());
        if off.checked_add(k + v).is_none_or(|end| end > self.cap) {
            return Err(corrupt());
        }
        let at = self.arena_at(which) + off;
        let bytes = self.m.get(at..at + k + v).ok_or_else(corrupt)?;
        Ok(bytes.split_at(k))
    }

    /// Applies a committed journal again (idempotent), then clears it.
    fn replay(&mut self) -> Result<(), Error> {
        match self.w(J_KIND)? {
            0 => return Ok(()),
            1 => {
                let i = self.w(J_SLOT)? as usize;
                if i >= self.slots {
                    return Err(corrupt());
                }
                let mut words = [0u64; SLOT_WORDS];
                for (k, w) in words.iter_mut().enumerate() {
                    *w = self.w(J_WORDS + 8 * k)?;
                }
                let [state, hash, off, lens, seq] = words;
                if state > TOMB {
                    return Err(corrupt());
                }
                let active = self.active()?;
                self.write_slot(active, i, Slot { state, hash, off, lens, seq })?;
                for (at, from) in [(TOP, J_TOP), (LEN, J_LEN), (TOMBS, J_TOMBS), (NEXT_SEQ, J_SEQ)] {
                    let v = self.w(from)?;
                    set(self.m, at, v)?;
                }
            }
            2 => {
                let to = self.w(J_ACTIVE)?;
                if to > 1 {
                    return Err(corrupt());
                }
                for (at, from) in [(TOP, J_TOP), (LEN, J_LEN), (TOMBS, J_TOMBS), (ACTIVE, J_ACTIVE)] {
                    let v = self.w(from)?;
                    set(self.m, at, v)?;
                }
            }
            3 => {
                let epoch = self.w(J_EPOCH)?;
                if epoch >= EPOCH_END {
                    return Err(corrupt());
                }
                for at in [TOP, LEN, TOMBS] {
                    set(self.m, at, 0)?;
                }
                set(self.m, EPOCH, epoch)?;
                self.epoch = epoch;
            }
            _ => return Err(corrupt()),
        }
        compiler_fence(Ordering::SeqCst);
        set(self.m, J_KIND, 0)
    }

    /// Commits the journal of kind `kind` already written, and applies it.
    fn commit(&mut self, kind: u64) -> Result<(), Error> {
        compiler_fence(Ordering::SeqCst);
        set(self.m, J_KIND, kind)?;
        compiler_fence(Ordering::SeqCst);
        self.replay()
    }

    pub(super) fn len(&self) -> Result<usize, Error> {
        Ok(self.w(LEN)? as usize)
    }

    /// Finds `key` (hashed `h`) in the live table.
    fn find(&self, key: &[u8], h: u64) -> Result<Found, Error> {
        let active = self.active()?;
        let mask = self.slots - 1;
        let mut free = None;
        for n in 0..self.slots {
            let i = (h as usize).wrapping_add(n) & mask;
            let s = self.slot(active, i)?;
            match s.state {
                EMPTY => return Ok(Found::Free(free.unwrap_or(i))),
                TOMB => {
                    free.get_or_insert(i);
                }
                LIVE if s.hash == h && s.key_len() == key.len() => {
                    if self.entry(active, &s)?.0 == key {
                        return Ok(Found::At(i, s));
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
            Found::At(_, s) => Ok(Some(self.entry(self.active()?, &s)?.1.to_vec())),
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
        let old = match found {
            Found::At(_, s) => Some(old(self.entry(self.active()?, &s)?.1)?),
            Found::Free(_) => None,
        };
        let (len, tombs) = (self.len()?, self.w(TOMBS)? as usize);
        let adds = matches!(found, Found::Free(_));
        if adds && len as u64 >= self.w(MAX_LEN)? {
            return Err(ErrorKind::Full.into());
        }
        let crowded = adds && (len + tombs + 1) * 4 > self.slots * 3;
        if crowded || self.w(TOP)? as usize + need > self.cap {
            self.compact()?;
            let (len, top) = (self.len()?, self.w(TOP)? as usize);
            if (adds && (len + 1) * 4 > self.slots * 3) || top + need > self.cap {
                return Err(ErrorKind::Full.into());
            }
            found = self.find(key, h)?;
        }
        // As they are now (a compaction dropped the tombstones).
        let (len, tombs) = (self.len()?, self.w(TOMBS)? as usize);
        let active = self.active()?;
        let (i, seq, next_seq) = match found {
            Found::At(i, s) => (i, s.seq, self.w(NEXT_SEQ)?),
            Found::Free(i) => {
                let seq = self.w(NEXT_SEQ)?;
                (i, seq, seq + 1)
            }
        };
        let was_tomb = self.slot(active, i)?.state == TOMB;
        // Beyond `top`: nobody reads it until the commit.
        let top = self.w(TOP)? as usize;
        let at = self.arena_at(active) + top;
        store_point()?;
        let dst = self.m.get_mut(at..at + need).ok_or_else(corrupt)?;
        dst[..key.len()].copy_from_slice(key);
        dst[key.len()..].copy_from_slice(value);
        let slot = Slot {
            state: LIVE,
            hash: h,
            off: top as u64,
            lens: ((key.len() as u64) << 32) | value.len() as u64,
            seq,
        };
        let (len, tombs) = match (&old, was_tomb) {
            (Some(_), _) => (len, tombs),
            (None, true) => (len + 1, tombs.saturating_sub(1)),
            (None, false) => (len + 1, tombs),
        };
        self.journal_slot(i, slot, top + need, len, tombs, next_seq)?;
        self.commit(1)?;
        Ok(old)
    }

    /// Removes `key`; returns what `take` makes of its value. `take` reads the value in place,
    /// before anything is written: if it fails, nothing changes (a value of another type is
    /// refused, not dropped unread).
    pub(super) fn remove<R>(
        &mut self,
        key: &[u8],
        take: impl FnOnce(&[u8]) -> Result<R, Error>,
    ) -> Result<Option<R>, Error> {
        let Found::At(i, s) = self.find(key, hash(key))? else {
            return Ok(None);
        };
        let old = take(self.entry(self.active()?, &s)?.1)?;
        let (len, tombs) = (self.len()?, self.w(TOMBS)? as usize);
        let (top, seq) = (self.w(TOP)? as usize, self.w(NEXT_SEQ)?);
        let tomb = Slot {
            state: TOMB,
            ..Slot::default()
        };
        self.journal_slot(i, tomb, top, len.saturating_sub(1), tombs + 1, seq)?;
        self.commit(1)?;
        Ok(Some(old))
    }

    fn journal_slot(
        &mut self,
        i: usize,
        s: Slot,
        top: usize,
        len: usize,
        tombs: usize,
        seq: u64,
    ) -> Result<(), Error> {
        set(self.m, J_SLOT, i as u64)?;
        for (k, v) in [s.state, s.hash, s.off, s.lens, s.seq].into_iter().enumerate() {
            set(self.m, J_WORDS + 8 * k, v)?;
        }
        for (at, v) in [(J_TOP, top as u64), (J_LEN, len as u64), (J_TOMBS, tombs as u64), (J_SEQ, seq)] {
            set(self.m, at, v)?;
        }
        Ok(())
    }

    /// Empties it: a new epoch, in which every slot is empty.
    pub(super) fn clear(&mut self) -> Result<(), Error> {
        let next = self.epoch + 1;
        if next >= EPOCH_END {
            return Err(corrupt());
        }
        set(self.m, J_EPOCH, next)?;
        self.commit(3)
    }

    /// Every live entry, in insertion order: (key, value) bytes.
    pub(super) fn entries(&self) -> Result<Vec<Entry>, Error> {
        let active = self.active()?;
        let mut live = self.live_slots(active)?;
        live.sort_unstable_by_key(|s| s.seq);
        live.iter()
            .map(|s| {
                let (k, v) = self.entry(active, s)?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    /// Copies the live entries into the other table and arena (which nobody reads), then
    /// makes those live: drops tombstones and the arena's dead bytes.
    fn compact(&mut self) -> Result<(), Error> {
        let active = self.active()?;
        let other = 1 - active;
        let at = self.table_at(other);
        self.m
            .get_mut(at..at + self.slots * SLOT_BYTES)
            .ok_or_else(corrupt)?
            .fill(0);
        let mask = self.slots - 1;
        let mut top = 0usize;
        let mut len = 0usize;
        for s in self.live_slots(active)? {
            let n = s.key_len() + s.val_len();
            let off = usize::try_from(s.off).map_err(|_| corrupt())?;
            if off.checked_add(n).is_none_or(|end| end > self.cap) || top + n > self.cap {
                return Err(corrupt());
            }
            let from = self.arena_at(active) + off;
            let to = self.arena_at(other) + top;
            store_point()?;
            self.m.copy_within(from..from + n, to);
            // Live entries beyond three quarters of the slots: scribbled (and the probe below
            // could find no empty slot).
            if len >= self.slots * 3 / 4 {
                return Err(corrupt());
            }
            let mut j = s.hash as usize & mask;
            while self.slot(other, j)?.state != EMPTY {
                j = (j + 1) & mask;
            }
            self.write_slot(other, j, Slot { off: top as u64, ..s })?;
            top += n;
            len += 1;
        }
        for (at, v) in [(J_TOP, top as u64), (J_LEN, len as u64), (J_TOMBS, 0), (J_ACTIVE, other as u64)] {
            set(self.m, at, v)?;
        }
        self.commit(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes a value out as its bytes (a `Dict` decodes it instead).
    fn copy(value: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(value.to_vec())
    }

    fn area(slots: usize, cap: usize) -> Vec<u8> {
        let mut m = vec![0u8; bytes_for(slots, cap).unwrap()];
        init(&mut m, slots, cap, slots * 3 / 4);
        m
    }

    #[test]
    fn inserts_gets_removes_and_compacts() {
        let mut m = area(16, 256);
        let mut t = Table::open(&mut m, false).unwrap();
        for round in 0..50u32 {
            let k = (round % 5).to_le_bytes();
            let v = vec![round as u8; 20];
            t.insert(&k, &v, copy).unwrap();
            assert_eq!(t.get(&k).unwrap(), Some(v));
        }
        assert_eq!(t.len().unwrap(), 5);
        assert_eq!(t.remove(&3u32.to_le_bytes(), copy).unwrap().map(|v| v[0]), Some(48));
        assert_eq!(t.get(&3u32.to_le_bytes()).unwrap(), None);
        let keys: Vec<_> = t.entries().unwrap().into_iter().map(|(k, _)| k[0]).collect();
        assert_eq!(keys, [0, 1, 2, 4], "insertion order, kept across updates and compaction");
        // Full: 12 of 16 slots at most.
        t.clear().unwrap();
        for k in 0..12u32 {
            t.insert(&k.to_le_bytes(), b"x", copy).unwrap();
        }
        let e = t.insert(&99u32.to_le_bytes(), b"x", copy).unwrap_err();
        assert_eq!(*e.kind(), ErrorKind::Full);
    }

    /// The counters stay true through churn that compacts again and again (found when a
    /// stale tombstone count, read before a compaction, was written back after it).
    #[test]
    fn counters_stay_true_through_compactions() {
        let mut m = area(16, 512);
        let mut t = Table::open(&mut m, false).unwrap();
        for i in 0..2000u32 {
            t.insert(&i.to_le_bytes(), &[1; 20], copy).unwrap();
            if i >= 5 {
                t.remove(&(i - 5).to_le_bytes(), copy).unwrap();
            }
            let live = t.entries().unwrap().len();
            assert_eq!(t.len().unwrap(), live);
            assert!(t.w(TOMBS).unwrap() as usize + live <= 12, "at {i}");
        }
        Table::open(&mut m, true).unwrap();
    }

    /// A writer stopped after each of its stores in turn (an update, an insert that compacts,
    /// a remove, a clear): the next opener, told its owner died, finds the change either
    /// wholly made or not made at all.
    #[test]
    fn a_change_stopped_anywhere_is_all_or_nothing() {
        let mut start = area(8, 64);
        {
            let mut t = Table::open(&mut start, false).unwrap();
            // In a later epoch than the first: a change finished by the next opener is
            // written in the epoch it was made in.
            t.insert(b"z", b"0", copy).unwrap();
            t.clear().unwrap();
            t.insert(b"a", b"1", copy).unwrap();
            t.insert(b"b", b"2", copy).unwrap();
            t.remove(b"b", copy).unwrap();
            t.insert(b"c", &[7; 20], copy).unwrap();
        }
        type Change = fn(&mut Table<'_>) -> Result<(), Error>;
        let changes: [(&str, Change); 4] = [
            ("update", |t| t.insert(b"a", b"3", copy).map(drop)),
            // 64-byte arenas, 27 used plus dead bytes: this one compacts first.
            ("insert", |t| t.insert(b"d", &[9; 30], copy).map(drop)),
            ("remove", |t| t.remove(b"a", copy).map(drop)),
            ("clear", |t| t.clear()),
        ];
        let view = |m: &mut Vec<u8>| {
            let t = Table::open(m, true).unwrap();
            (t.len().unwrap(), t.entries().unwrap())
        };
        let before = view(&mut start.clone());
        for (name, change) in changes {
            let mut done = start.clone();
            change(&mut Table::open(&mut done, false).unwrap()).unwrap();
            let after = view(&mut done);
            assert_ne!(before, after, "{name} changes something");
            for n in 0.. {
                let mut m = start.clone();
                stop::AFTER.set(Some(n));
                let finished = change(&mut Table::open(&mut m, false).unwrap()).is_ok();
                stop::AFTER.set(None);
                let seen = view(&mut m);
                assert!(seen == before || seen == after, "{name} stopped after {n} stores: {seen:?}");
                if finished {
                    assert_eq!(seen, after);
                    break;
                }
            }
        }
    }

    /// A clear writes the header only, whatever the capacity (it zeroed the whole table,
    /// making a large container's table resident at every clear); the slots it leaves behind
    /// read as empty, through inserts, removes and compactions that follow, as a model
    /// `HashMap` says.
    #[test]
    fn a_clear_touches_the_header_only_and_leaves_nothing_behind() {
        let mut m = area(64, 4096);
        let mut model = std::collections::HashMap::<u8, Vec<u8>>::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for step in 0..20_000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let key = (rng % 60) as u8;
            let mut t = Table::open(&mut m, false).unwrap();
            match rng >> 60 {
                0 => {
                    let tables = HEADER..t.arena_at(0);
                    let before = t.m[tables.clone()].to_vec();
                    t.clear().unwrap();
                    assert!(t.m[tables] == before[..], "step {step}: a clear wrote slots");
                    model.clear();
                }
                1..=5 => assert_eq!(t.remove(&[key], copy).unwrap(), model.remove(&key)),
                _ => {
                    let v = vec![step as u8; (rng >> 40) as usize % 40];
                    match t.insert(&[key], &v, copy) {
                        Ok(old) => assert_eq!(old, model.insert(key, v)),
                        Err(e) => assert_eq!(*e.kind(), ErrorKind::Full, "step {step}"),
                    }
                }
            }
            assert_eq!(t.len().unwrap(), model.len(), "step {step}");
            let mut seen = t.entries().unwrap();
            seen.sort();
            let mut want: Vec<_> = model.iter().map(|(k, v)| (vec![*k], v.clone())).collect();
            want.sort();
            assert_eq!(seen, want, "step {step}");
        }
    }

    /// A value refused by the caller's decoder (a `Dict` of other types) is not removed nor
    /// replaced: not a byte of the table changes, even where the insert would compact first.
    #[test]
    fn a_refused_take_changes_nothing() {
        let refuse = |_: &[u8]| Err::<(), _>(Error::invalid("not a u64"));
        let mut m = area(8, 64);
        let mut t = Table::open(&mut m, false).unwrap();
        t.insert(b"a", &[1; 20], copy).unwrap();
        t.insert(b"a", &[2; 20], copy).unwrap();
        t.insert(b"b", b"2", copy).unwrap();
        let before = m.clone();
        let mut t = Table::open(&mut m, false).unwrap();
        // 64-byte arenas with 45 used: the insert would compact to find room.
        assert!(t.insert(b"a", &[3; 20], refuse).is_err());
        assert!(t.remove(b"a", refuse).is_err());
        assert!(t.remove(b"b", refuse).is_err());
        assert!(m == before, "a refused take wrote to the table");
        let mut t = Table::open(&mut m, false).unwrap();
        assert_eq!(t.remove(b"a", copy).unwrap(), Some(vec![2; 20]));
    }

    #[test]
    fn scribbled_memory_is_an_error_not_a_panic() {
        let mut m = area(16, 256);
        Table::open(&mut m, false).unwrap().insert(b"k", b"v", copy).unwrap();
        for i in 0..m.len() {
            let mut bad = m.clone();
            bad[i] ^= 0xa5;
            if let Ok(mut t) = Table::open(&mut bad, true) {
                let _ = t.get(b"k");
                let _ = t.entries();
                let _ = t.insert(b"k", b"w", copy);
                let _ = t.insert(b"new", b"x", copy);
                let _ = t.remove(b"k", copy);
                let _ = t.clear();
            }
        }
    }
}
