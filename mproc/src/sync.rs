//! Synchronization between processes: [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`].
//!
//! Each object lives in a small block of shared memory (a memory file) that every process
//! holding a handle maps; handles are cheap `Clone`s of one object and travel as arguments of
//! [`Process::new`](crate::Process::new) and of pool tasks under every start method. Locks are
//! robust process-shared pthread mutexes: if a process dies holding one, the next acquirer gets
//! it and is told (`owner_died()`), where Python's would deadlock. The others wait on futexes in
//! the shared block, with timeouts.

mod barrier;
mod bounded_semaphore;
mod condition;
mod event;
mod lock;
mod rlock;
mod semaphore;

pub use barrier::Barrier;
pub use bounded_semaphore::BoundedSemaphore;
pub use condition::{Condition, WaitTimeoutResult};
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::Semaphore;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Deserializer, Serializer};

use crate::error::Error;
use crate::sys::futex;
use crate::sys::layout::shared_layout;
use crate::sys::shared::{Block, BlockHeader};

pub(crate) const KIND_LOCK: u32 = 1;
pub(crate) const KIND_RLOCK: u32 = 2;
const KIND_SEMAPHORE: u32 = 3;
const KIND_EVENT: u32 = 4;
const KIND_CONDITION: u32 = 5;
const KIND_BARRIER: u32 = 6;

/// Where a block's mutex sits.
pub(crate) const MUTEX_AT: usize = 64;
/// Where a block's words sit (after the mutex, which is 40 bytes): each kind's `Words`
/// layout, whose second word counts the sleepers (see [`sleep`]).
const WORDS_AT: usize = 128;

shared_layout! {
    /// The first line of every sync object's block.
    pub(crate) struct Head {
        _block: BlockHeader,
        /// A lock's identity (to match a `Condition`'s lock with a guard's).
        pub(crate) id: AtomicU64,
    }
}
const _: () = assert!(std::mem::offset_of!(Head, id) == 16);
const _: () = assert!(std::mem::size_of::<Head>() <= MUTEX_AT);

/// A block of `kind` with room for its words (no mutex).
fn new_block(kind: u32, what: &str) -> Result<Arc<Block>, Error> {
    Block::create(kind, WORDS_AT + 64, mutexes_of(kind))
        .map(Arc::new)
        .map_err(|e| Error::os(format!("creating shared memory for {what}"), e))
}

/// Sleeps while `word` holds `expected`, counted in the block's `waiters` so that [`wake`]
/// skips the system call when nobody sleeps. `Ok(false)`: the deadline passed.
fn sleep(
    waiters: &AtomicU32,
    word: &AtomicU32,
    expected: u32,
    deadline: Option<Instant>,
) -> std::io::Result<bool> {
    waiters.fetch_add(1, Ordering::SeqCst);
    let woke = futex::wait(word, expected, deadline);
    waiters.fetch_sub(1, Ordering::SeqCst);
    woke
}

/// Wakes up to `n` sleepers on `word` (after the caller changed it), if any sleep.
fn wake(waiters: &AtomicU32, word: &AtomicU32, n: u32) {
    if waiters.load(Ordering::SeqCst) > 0 {
        futex::wake(word, n);
    }
}

/// Where blocks of `kind` have a robust mutex: a lock's, an `RLock`'s, a shared value's and
/// a shared array's, at [`MUTEX_AT`].
fn mutexes_of(kind: u32) -> &'static [usize] {
    match kind {
        KIND_SEMAPHORE | KIND_EVENT | KIND_CONDITION | KIND_BARRIER => &[],
        _ => &[MUTEX_AT],
    }
}

/// A handle's bytes: the index of its block's descriptor in the message (see `handle.rs`).
pub(crate) fn serialize_block<S: Serializer>(block: &Block, s: S) -> Result<S::Ok, S::Error> {
    use std::os::fd::AsFd;
    let at = crate::handle::export(block.as_fd()).map_err(serde::ser::Error::custom)?;
    s.serialize_u32(at)
}

pub(crate) fn deserialize_block<'de, D: Deserializer<'de>>(
    d: D,
    kind: u32,
) -> Result<Arc<Block>, D::Error> {
    let at = u32::deserialize(d)?;
    let fd = crate::handle::import(at)
        .map_err(serde::de::Error::custom)?
        .into_owned();
    Block::open(fd, kind, mutexes_of(kind))
        .map(Arc::new)
        .map_err(serde::de::Error::custom)
}

/// Implements `Serialize`/`Deserialize` for a handle whose only field is `block: Arc<Block>`.
macro_rules! block_handle {
    ($ty:ident, $kind:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::sync::serialize_block(&self.block, s)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($ty::from_block($crate::sync::deserialize_block(d, $kind)?))
            }
        }
    };
}
use block_handle;

/// A block with a robust mutex at [`MUTEX_AT`] and `extra` more bytes after the words.
pub(crate) fn new_mutex_block(
    kind: u32,
    extra: usize,
    recursive: bool,
) -> Result<Arc<Block>, Error> {
    let block = Block::create(kind, WORDS_AT + 64 + extra, &[MUTEX_AT])
        .map_err(|e| Error::os("creating shared memory for a lock", e))?;
    block
        .mutex_at(MUTEX_AT)
        .init(recursive)
        .map_err(|e| Error::os("setting up a shared lock", e))?;
    block
        .view::<Head>(0)
        .id
        .store(random_id(), Ordering::Relaxed);
    Ok(Arc::new(block))
}

/// An identity unlikely to repeat: time, pid and a counter.
fn random_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 40) ^ NEXT.fetch_add(1, Ordering::Relaxed).rotate_left(20)
}
