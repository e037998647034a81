//! The queue's header, as every process maps it: the first [`DATA_AT`] bytes of its file.
//!
//! Words sit on cache lines by who writes them (producers, consumers, growth, the rare rest),
//! so that a put and a get running at the same time do not fight over one line. The offsets
//! are pinned by the assertions at the end: they are what every holder of a queue agrees on.

use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::sys::layout::{Line, shared_layout};
use crate::sys::shared::RobustMutex;

/// Where the ring starts in the file.
pub(super) const DATA_AT: usize = 4096;
/// Holders the table has room for.
pub(super) const SLOTS: usize = 128;

shared_layout! {
    /// The whole header.
    pub(super) struct Header {
        pub(super) fixed: Fixed,
        pub(super) put_mutex: Line<RobustMutex>,
        pub(super) get_mutex: Line<RobustMutex>,
        /// Guards the holders' table.
        pub(super) reg_mutex: Line<RobustMutex>,
        pub(super) put: Producers,
        pub(super) get: Consumers,
        pub(super) shape: Shape,
        pub(super) rare: Rare,
        /// Set when the holders' table was ever full: then nobody concludes that nobody else
        /// holds the queue.
        pub(super) overflow: Line<AtomicU32>,
        /// The holders' table (under the registry lock).
        pub(super) slots: [Slot; SLOTS],
    }
}

shared_layout! {
    /// Written once, read by every put and get: the read-mostly first line.
    #[repr(align(64))]
    pub(super) struct Fixed {
        /// `MAGIC`, stored last when the queue is made.
        pub(super) magic: AtomicU32,
        pub(super) kind: AtomicU32,
        pub(super) maxsize: AtomicU64,
        pub(super) closed: AtomicU32,
    }
}

shared_layout! {
    /// Written by producers, under their lock.
    #[repr(align(64))]
    pub(super) struct Producers {
        /// Where the next frame goes (a position: bytes ever written).
        pub(super) written: AtomicU64,
        pub(super) puts: AtomicU64,
        /// Non-zero while a put's bookkeeping is journaled and not finished.
        pub(super) stage: AtomicU32,
        /// Bumped by every put: getters sleep on it.
        pub(super) seq: AtomicU32,
        pub(super) written_before: AtomicU64,
        pub(super) puts_before: AtomicU64,
        /// Items put to a joinable queue.
        pub(super) added: AtomicU64,
        pub(super) added_before: AtomicU64,
        /// `read` as producers last loaded it (never ahead of it): a put that finds room by it
        /// needs no look at the consumers' line.
        pub(super) read_seen: AtomicU64,
    }
}

shared_layout! {
    /// Written by consumers, under their lock.
    #[repr(align(64))]
    pub(super) struct Consumers {
        /// Where the next frame to take starts.
        pub(super) read: AtomicU64,
        pub(super) gets: AtomicU64,
        /// Non-zero while a get's bookkeeping is journaled and not finished.
        pub(super) active: AtomicU32,
        /// Bumped by every get: putters of a full queue sleep on it.
        pub(super) seq: AtomicU32,
        pub(super) read_before: AtomicU64,
        pub(super) gets_before: AtomicU64,
        /// `written` as consumers last loaded it (never ahead of it), likewise.
        pub(super) written_seen: AtomicU64,
    }
}

shared_layout! {
    /// Written when the ring grows (under both locks).
    #[repr(align(64))]
    pub(super) struct Shape {
        /// The position at ring offset 0.
        pub(super) base: AtomicU64,
        /// The ring's size in bytes.
        pub(super) cap: AtomicU64,
        /// Non-zero while frames are being moved: seen by a later locker, the queue is broken.
        pub(super) relocating: AtomicU32,
        pub(super) broken: AtomicU32,
    }
}

shared_layout! {
    /// Written rarely: sleepers, joinable counts, sharing, the growth limit.
    #[repr(align(64))]
    pub(super) struct Rare {
        pub(super) getters_asleep: AtomicU32,
        pub(super) putters_asleep: AtomicU32,
        _spare: AtomicU32,
        /// Bumped when the last unfinished item is marked done: joiners sleep on it.
        pub(super) done_seq: AtomicU32,
        pub(super) joiners_asleep: AtomicU32,
        pub(super) done: AtomicU64,
        _spare_word: AtomicU64,
        pub(super) ever_shared: AtomicU32,
        /// Set when a handle went on its way unseen (see `Ring::lend`): then nobody concludes
        /// that nobody else holds the queue.
        pub(super) untracked: AtomicU32,
        /// The largest file every holder could map: growth stays below it.
        pub(super) limit: AtomicU64,
    }
}

shared_layout! {
    /// One process that holds the queue, and how many handles it has.
    pub(super) struct Slot {
        pub(super) pid: AtomicU32,
        pub(super) count: AtomicU32,
        pub(super) start: AtomicU64,
    }
}

// The offsets every queue has had (the file is the protocol between holders).
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(offset_of!(Header, fixed) + offset_of!(Fixed, magic) == 0);
    assert!(offset_of!(Header, fixed) + offset_of!(Fixed, kind) == 4);
    assert!(offset_of!(Header, fixed) + offset_of!(Fixed, maxsize) == 8);
    assert!(offset_of!(Header, fixed) + offset_of!(Fixed, closed) == 16);
    assert!(offset_of!(Header, put_mutex) == 64);
    assert!(offset_of!(Header, get_mutex) == 128);
    assert!(offset_of!(Header, reg_mutex) == 192);
    let put = offset_of!(Header, put);
    assert!(put + offset_of!(Producers, written) == 256);
    assert!(put + offset_of!(Producers, puts) == 264);
    assert!(put + offset_of!(Producers, stage) == 272);
    assert!(put + offset_of!(Producers, seq) == 276);
    assert!(put + offset_of!(Producers, written_before) == 280);
    assert!(put + offset_of!(Producers, puts_before) == 288);
    assert!(put + offset_of!(Producers, added) == 296);
    assert!(put + offset_of!(Producers, added_before) == 304);
    assert!(put + offset_of!(Producers, read_seen) == 312);
    let get = offset_of!(Header, get);
    assert!(get + offset_of!(Consumers, read) == 320);
    assert!(get + offset_of!(Consumers, gets) == 328);
    assert!(get + offset_of!(Consumers, active) == 336);
    assert!(get + offset_of!(Consumers, seq) == 340);
    assert!(get + offset_of!(Consumers, read_before) == 344);
    assert!(get + offset_of!(Consumers, gets_before) == 352);
    assert!(get + offset_of!(Consumers, written_seen) == 360);
    let shape = offset_of!(Header, shape);
    assert!(shape + offset_of!(Shape, base) == 384);
    assert!(shape + offset_of!(Shape, cap) == 392);
    assert!(shape + offset_of!(Shape, relocating) == 400);
    assert!(shape + offset_of!(Shape, broken) == 404);
    let rare = offset_of!(Header, rare);
    assert!(rare + offset_of!(Rare, getters_asleep) == 448);
    assert!(rare + offset_of!(Rare, putters_asleep) == 452);
    assert!(rare + offset_of!(Rare, done_seq) == 460);
    assert!(rare + offset_of!(Rare, joiners_asleep) == 464);
    assert!(rare + offset_of!(Rare, done) == 472);
    assert!(rare + offset_of!(Rare, ever_shared) == 488);
    assert!(rare + offset_of!(Rare, untracked) == 492);
    assert!(rare + offset_of!(Rare, limit) == 496);
    assert!(offset_of!(Header, overflow) == 512);
    assert!(offset_of!(Header, slots) == 576);
    assert!(
        size_of::<Slot>() == 16 && offset_of!(Slot, count) == 4 && offset_of!(Slot, start) == 8
    );
    assert!(size_of::<Header>() <= DATA_AT);
};
