//! Synchronization between processes: [`Lock`], [`RLock`], [`Semaphore`],
//! [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`].
//!
//! Each object lives in a small block of shared memory (a memory file) that every process
//! holding a handle maps; handles are cheap `Clone`s of one object and travel as arguments of
//! [`Process::new`](crate::Process::new) and of pool tasks under every start method. Locks are
//! robust process-shared pthread mutexes: if a process dies holding one, the next acquirer gets
//! it and is told (`owner_died()`), where Python's would deadlock. The others wait on futexes in
//! the shared block, with timeouts.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind};
use crate::sys::futex;
use crate::sys::shared::{Block, Held, Taken};

pub(crate) const KIND_LOCK: u32 = 1;
pub(crate) const KIND_RLOCK: u32 = 2;
const KIND_SEMAPHORE: u32 = 3;
const KIND_EVENT: u32 = 4;
const KIND_CONDITION: u32 = 5;
const KIND_BARRIER: u32 = 6;

/// Where a block's mutex sits.
pub(crate) const MUTEX_AT: usize = 64;
/// Where a block's counters sit (after the mutex, which is 40 bytes).
const WORDS_AT: usize = 128;
/// A lock's identity (to match a `Condition`'s lock with a guard's), in the header.
const ID_AT: usize = 16;

pub(crate) fn os(what: &str, e: std::io::Error) -> Error {
    Error::os(what.to_string(), e)
}

fn deadline(timeout: Duration) -> Option<Instant> {
    crate::sys::fd::deadline_after(timeout)
}

/// A block of `kind` with room for its words (no mutex).
fn new_block(kind: u32, what: &str) -> Result<Arc<Block>, Error> {
    Block::create(kind, WORDS_AT + 64, mutexes_of(kind))
        .map(Arc::new)
        .map_err(|e| os(&format!("creating shared memory for {what}"), e))
}

/// Sleeps while the word at `at` holds `expected`, counted in the block's waiters so that
/// [`wake`] skips the system call when nobody sleeps. `Ok(false)`: the deadline passed.
fn sleep(
    block: &Block,
    at: usize,
    expected: u32,
    deadline: Option<Instant>,
) -> std::io::Result<bool> {
    let waiters = block.u32_at(WAITERS_AT);
    waiters.fetch_add(1, Ordering::SeqCst);
    let woke = futex::wait(block.u32_at(at), expected, deadline);
    waiters.fetch_sub(1, Ordering::SeqCst);
    woke
}

/// Wakes up to `n` sleepers on the word at `at` (after the caller changed it), if any sleep.
fn wake(block: &Block, at: usize, n: u32) {
    if block.u32_at(WAITERS_AT).load(Ordering::SeqCst) > 0 {
        futex::wake(block.u32_at(at), n);
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
    let fd = crate::handle::import(at).map_err(serde::de::Error::custom)?;
    Block::open(fd, kind, mutexes_of(kind))
        .map(Arc::new)
        .map_err(serde::de::Error::custom)
}

/// Implements `Serialize`/`Deserialize` for a handle whose only field is `block: Arc<Block>`.
macro_rules! block_handle {
    ($ty:ident, $kind:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_block(&self.block, s)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($ty::from_block(deserialize_block(d, $kind)?))
            }
        }
    };
}

// ----------------------------------------------------------------------------------------
// Lock

/// A mutual-exclusion lock shared between processes: Python's `multiprocessing.Lock`.
///
/// `acquire` returns a guard that releases the lock when dropped. If a process dies holding
/// the lock, the next acquirer gets it and its guard's [`owner_died`](LockGuard::owner_died)
/// says so (whatever the lock protected may be half-updated).
///
/// ```
/// use mproc::{Lock, Process};
///
/// fn work(lock: Lock) -> bool {
///     let guard = lock.acquire().unwrap();
///     guard.owner_died()
/// }
/// let lock = Lock::new()?;
/// let mut p = Process::new(work, (lock.clone(),));
/// p.start()?;
/// assert!(!p.join()?);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Lock {
    block: Arc<Block>,
}

impl Lock {
    /// A new, unlocked lock.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// drop(lock.acquire()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<Lock, Error> {
        Ok(Lock::from_block(new_mutex_block(KIND_LOCK, 0, false)?))
    }

    fn from_block(block: Arc<Block>) -> Lock {
        Lock { block }
    }

    fn id(&self) -> u64 {
        self.block.u64_at(ID_AT).load(Ordering::Relaxed)
    }

    /// Waits for the lock and takes it.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if this thread already holds it (it is not re-entrant: see
    /// [`RLock`]).
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let guard = lock.acquire()?;
    /// assert!(lock.try_acquire()?.is_none());
    /// drop(guard);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<LockGuard<'_>, Error> {
        self.take(None)?.ok_or_else(|| ErrorKind::Timeout.into())
    }

    /// Like [`acquire`](Self::acquire), giving up after `timeout` with `Err(Timeout)`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let lock = mproc::Lock::new()?;
    /// let _held = lock.acquire()?;
    /// let other = lock.clone();
    /// let e = std::thread::spawn(move || other.acquire_timeout(Duration::from_millis(10)).map(drop))
    ///     .join()
    ///     .unwrap()
    ///     .unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>, Error> {
        self.take(deadline(timeout))?
            .ok_or_else(|| ErrorKind::Timeout.into())
    }

    /// Takes the lock if it is free now.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// assert!(lock.try_acquire()?.is_some());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Result<Option<LockGuard<'_>>, Error> {
        let taken = match self.block.mutex_at(MUTEX_AT).try_lock() {
            // Held by this very thread: not available, as for anyone else.
            Err(e) if e.raw_os_error() == Some(libc::EDEADLK) => None,
            other => other.map_err(|e| lock_error(e, "taking a lock"))?,
        };
        Ok(taken.map(|(held, taken)| LockGuard::new(self, held, taken)))
    }

    fn take(&self, deadline: Option<Instant>) -> Result<Option<LockGuard<'_>>, Error> {
        let taken = self
            .block
            .mutex_at(MUTEX_AT)
            .lock(deadline)
            .map_err(|e| lock_error(e, "taking a lock"))?;
        Ok(taken.map(|(held, taken)| LockGuard::new(self, held, taken)))
    }
}

fn lock_error(e: std::io::Error, what: &str) -> Error {
    if e.raw_os_error() == Some(libc::EDEADLK) {
        Error::invalid("this thread already holds the lock (a Lock is not re-entrant; use RLock)")
    } else {
        os(what, e)
    }
}

/// A block with a robust mutex at [`MUTEX_AT`] and `extra` more bytes after the words.
pub(crate) fn new_mutex_block(
    kind: u32,
    extra: usize,
    recursive: bool,
) -> Result<Arc<Block>, Error> {
    let block = Block::create(kind, WORDS_AT + 64 + extra, &[MUTEX_AT])
        .map_err(|e| os("creating shared memory for a lock", e))?;
    block
        .mutex_at(MUTEX_AT)
        .init(recursive)
        .map_err(|e| os("setting up a shared lock", e))?;
    block.u64_at(ID_AT).store(random_id(), Ordering::Relaxed);
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

block_handle!(Lock, KIND_LOCK);

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock").finish_non_exhaustive()
    }
}

/// A held [`Lock`]; dropping it releases the lock. Not `Send`: the thread that took a lock
/// releases it.
///
/// A guard passed to `mem::forget` keeps the lock held until its thread exits (other
/// processes are then told that its owner died). If the lock's last handle in this process is
/// dropped before that, its shared memory stays mapped until the process exits: the holding
/// thread's robust list still points into it.
///
/// ```
/// let lock = mproc::Lock::new()?;
/// {
///     let guard = lock.acquire()?;
///     assert!(!guard.owner_died());
/// } // released here
/// assert!(lock.try_acquire()?.is_some());
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct LockGuard<'a> {
    lock: &'a Lock,
    _held: Held<'a>,
    owner_died: bool,
}

impl<'a> LockGuard<'a> {
    fn new(lock: &'a Lock, held: Held<'a>, taken: Taken) -> Self {
        LockGuard {
            lock,
            _held: held,
            owner_died: taken == Taken::OwnerDied,
        }
    }

    /// Whether the previous owner died holding the lock (like a poisoned
    /// `std::sync::Mutex`): what it protected may be half-updated.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// assert!(!lock.acquire()?.owner_died());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("owner_died", &self.owner_died)
            .finish()
    }
}

// ----------------------------------------------------------------------------------------
// RLock

/// A re-entrant lock shared between processes: Python's `multiprocessing.RLock`. The thread
/// that holds it may acquire it again; it is free once released as many times.
///
/// Dropping the last handle in this process while one of its threads still holds the lock
/// leaves its shared memory mapped until the process exits (the thread's robust list still
/// points into it); the lock is freed for other processes when that thread exits.
///
/// ```
/// let lock = mproc::RLock::new()?;
/// lock.acquire()?;
/// lock.acquire()?;
/// lock.release()?;
/// lock.release()?;
/// assert!(lock.release().is_err(), "not held any more");
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct RLock {
    block: Arc<Block>,
    owner_died: Arc<AtomicBool>,
}

impl RLock {
    /// A new, free re-entrant lock.
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<RLock, Error> {
        Ok(RLock::from_block(new_mutex_block(KIND_RLOCK, 0, true)?))
    }

    fn from_block(block: Arc<Block>) -> RLock {
        RLock {
            block,
            owner_died: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Waits for the lock and takes it (again, if this thread holds it).
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// lock.acquire()?;
    /// lock.release()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<(), Error> {
        self.take(None).map(|_| ())
    }

    /// Like [`acquire`](Self::acquire), giving up after `timeout`: `Ok(false)` then.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let lock = mproc::RLock::new()?;
    /// assert!(lock.acquire_timeout(Duration::from_millis(10))?);
    /// lock.release()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.take(deadline(timeout))
    }

    fn take(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        let taken = self
            .block
            .mutex_at(MUTEX_AT)
            .lock(deadline)
            .map_err(|e| os("taking an RLock", e))?;
        Ok(match taken {
            Some((held, taken)) => {
                self.owner_died
                    .store(taken == Taken::OwnerDied, Ordering::Relaxed);
                // Released by `release`, not by a guard.
                std::mem::forget(held);
                true
            }
            None => false,
        })
    }

    /// Releases one level of this thread's hold.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if this thread does not hold it.
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// assert!(lock.release().is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn release(&self) -> Result<(), Error> {
        self.block.mutex_at(MUTEX_AT).unlock().map_err(|e| {
            if e.raw_os_error() == Some(libc::EPERM) {
                Error::invalid("release of an RLock this thread does not hold")
            } else {
                os("releasing an RLock", e)
            }
        })
    }

    /// Whether the last acquisition through this handle found that the previous owner died
    /// holding the lock.
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// lock.acquire()?;
    /// assert!(!lock.owner_died());
    /// lock.release()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn owner_died(&self) -> bool {
        self.owner_died.load(Ordering::Relaxed)
    }
}

block_handle!(RLock, KIND_RLOCK);

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock").finish_non_exhaustive()
    }
}

// ----------------------------------------------------------------------------------------
// Semaphore and BoundedSemaphore

const COUNT_AT: usize = WORDS_AT;
const WAITERS_AT: usize = WORDS_AT + 4;
const MAX_AT: usize = WORDS_AT + 8;

/// A counting semaphore shared between processes: Python's `multiprocessing.Semaphore`.
///
/// ```
/// let s = mproc::Semaphore::new(2)?;
/// s.acquire()?;
/// s.acquire()?;
/// assert!(!s.acquire_timeout(std::time::Duration::from_millis(5))?);
/// s.release()?;
/// assert_eq!(s.value(), 1);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Semaphore {
    block: Arc<Block>,
}

impl Semaphore {
    /// A semaphore with `value` permits.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` above `u32::MAX - 1` permits.
    ///
    /// ```
    /// let s = mproc::Semaphore::new(0)?;
    /// assert_eq!(s.value(), 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(value: usize) -> Result<Semaphore, Error> {
        Semaphore::with_max(value, 0)
    }

    fn with_max(value: usize, max: u32) -> Result<Semaphore, Error> {
        let value = u32::try_from(value)
            .ok()
            .filter(|&v| v < u32::MAX)
            .ok_or_else(|| Error::invalid("a semaphore holds at most u32::MAX - 1 permits"))?;
        let block = new_block(KIND_SEMAPHORE, "a semaphore")?;
        block.u32_at(COUNT_AT).store(value, Ordering::Relaxed);
        block.u32_at(MAX_AT).store(max, Ordering::Release);
        Ok(Semaphore::from_block(block))
    }

    fn from_block(block: Arc<Block>) -> Semaphore {
        Semaphore { block }
    }

    /// Takes a permit, waiting for one.
    ///
    /// ```
    /// let s = mproc::Semaphore::new(1)?;
    /// s.acquire()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<(), Error> {
        self.take(None).map(|_| ())
    }

    /// Takes a permit, waiting at most `timeout`: `Ok(false)` if none came.
    ///
    /// ```
    /// let s = mproc::Semaphore::new(0)?;
    /// assert!(!s.acquire_timeout(std::time::Duration::from_millis(5))?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.take(deadline(timeout))
    }

    fn take(&self, deadline: Option<Instant>) -> Result<bool, Error> {
        let count = self.block.u32_at(COUNT_AT);
        loop {
            let c = count.load(Ordering::Acquire);
            if c > 0 {
                if count
                    .compare_exchange_weak(c, c - 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(true);
                }
                continue;
            }
            let woke = sleep(&self.block, COUNT_AT, 0, deadline);
            if !woke.map_err(|e| os("waiting on a semaphore", e))? {
                return Ok(false);
            }
        }
    }

    /// Gives a permit back.
    ///
    /// # Errors
    ///
    /// For a [`BoundedSemaphore`], `InvalidArgument` when that would exceed its initial
    /// value.
    ///
    /// ```
    /// let s = mproc::Semaphore::new(0)?;
    /// s.release()?;
    /// assert_eq!(s.value(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn release(&self) -> Result<(), Error> {
        let count = self.block.u32_at(COUNT_AT);
        let max = self.block.u32_at(MAX_AT).load(Ordering::Acquire);
        let limit = if max == 0 { u32::MAX - 1 } else { max };
        let mut c = count.load(Ordering::Relaxed);
        loop {
            if c >= limit {
                return Err(Error::invalid(if max == 0 {
                    "the semaphore cannot count higher"
                } else {
                    "a BoundedSemaphore was released more times than it was acquired"
                }));
            }
            match count.compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => c = now,
            }
        }
        wake(&self.block, COUNT_AT, 1);
        Ok(())
    }

    /// The permits available now (Python's `get_value`).
    ///
    /// ```
    /// assert_eq!(mproc::Semaphore::new(3)?.value(), 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn value(&self) -> usize {
        self.block.u32_at(COUNT_AT).load(Ordering::Relaxed) as usize
    }
}

block_handle!(Semaphore, KIND_SEMAPHORE);

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.value())
            .finish()
    }
}

/// A [`Semaphore`] that refuses to be released above its initial value: Python's
/// `BoundedSemaphore`.
///
/// ```
/// let s = mproc::BoundedSemaphore::new(1)?;
/// assert!(s.release().is_err(), "over-release");
/// s.acquire()?;
/// s.release()?;
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct BoundedSemaphore(Semaphore);

impl BoundedSemaphore {
    /// A bounded semaphore with `value` permits, which is also its maximum.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for 0 (it could never be released) or above `u32::MAX - 1`.
    ///
    /// ```
    /// let s = mproc::BoundedSemaphore::new(2)?;
    /// assert_eq!(s.value(), 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(value: usize) -> Result<BoundedSemaphore, Error> {
        if value == 0 {
            return Err(Error::invalid(
                "a BoundedSemaphore needs at least one permit",
            ));
        }
        let max = u32::try_from(value)
            .map_err(|_| Error::invalid("a semaphore holds at most u32::MAX - 1 permits"))?;
        Ok(BoundedSemaphore(Semaphore::with_max(value, max)?))
    }

    /// See [`Semaphore::acquire`].
    ///
    /// ```
    /// mproc::BoundedSemaphore::new(1)?.acquire()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<(), Error> {
        self.0.acquire()
    }

    /// See [`Semaphore::acquire_timeout`].
    ///
    /// ```
    /// let s = mproc::BoundedSemaphore::new(1)?;
    /// assert!(s.acquire_timeout(std::time::Duration::ZERO)?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<bool, Error> {
        self.0.acquire_timeout(timeout)
    }

    /// See [`Semaphore::release`]; over-release is an error.
    ///
    /// ```
    /// assert!(mproc::BoundedSemaphore::new(1)?.release().is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn release(&self) -> Result<(), Error> {
        self.0.release()
    }

    /// See [`Semaphore::value`].
    ///
    /// ```
    /// assert_eq!(mproc::BoundedSemaphore::new(4)?.value(), 4);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn value(&self) -> usize {
        self.0.value()
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedSemaphore")
            .field("value", &self.value())
            .finish()
    }
}

// ----------------------------------------------------------------------------------------
// Event

const FLAG_AT: usize = WORDS_AT;

/// A flag processes can wait for: Python's `multiprocessing.Event`.
///
/// ```
/// use mproc::{Event, Process};
///
/// fn signal(e: Event) {
///     e.set();
/// }
/// let e = Event::new()?;
/// let mut p = Process::new(signal, (e.clone(),));
/// p.start()?;
/// assert!(e.wait_timeout(std::time::Duration::from_secs(30)));
/// p.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Event {
    block: Arc<Block>,
}

impl Event {
    /// A new, clear event.
    ///
    /// ```
    /// assert!(!mproc::Event::new()?.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<Event, Error> {
        Ok(Event::from_block(new_block(KIND_EVENT, "an event")?))
    }

    fn from_block(block: Arc<Block>) -> Event {
        Event { block }
    }

    /// Sets the flag and wakes every waiter.
    ///
    /// ```
    /// let e = mproc::Event::new()?;
    /// e.set();
    /// assert!(e.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn set(&self) {
        self.block.u32_at(FLAG_AT).store(1, Ordering::SeqCst);
        wake(&self.block, FLAG_AT, u32::MAX);
    }

    /// Clears the flag.
    ///
    /// ```
    /// let e = mproc::Event::new()?;
    /// e.set();
    /// e.clear();
    /// assert!(!e.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn clear(&self) {
        self.block.u32_at(FLAG_AT).store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    ///
    /// ```
    /// assert!(!mproc::Event::new()?.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_set(&self) -> bool {
        self.block.u32_at(FLAG_AT).load(Ordering::Acquire) != 0
    }

    /// Waits until the flag is set.
    ///
    /// ```
    /// let e = mproc::Event::new()?;
    /// e.set();
    /// e.wait();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits until the flag is set or `timeout` passes; `true` if it is set.
    ///
    /// ```
    /// let e = mproc::Event::new()?;
    /// assert!(!e.wait_timeout(std::time::Duration::from_millis(5)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let flag = self.block.u32_at(FLAG_AT);
        while flag.load(Ordering::Acquire) == 0 {
            if !matches!(sleep(&self.block, FLAG_AT, 0, deadline), Ok(true)) {
                return flag.load(Ordering::Acquire) != 0;
            }
        }
        true
    }
}

block_handle!(Event, KIND_EVENT);

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

// ----------------------------------------------------------------------------------------
// Condition

const SEQ_AT: usize = WORDS_AT;

/// A condition variable shared between processes, over a [`Lock`]: Python's
/// `multiprocessing.Condition`.
///
/// ```
/// use mproc::{Condition, Lock};
/// use std::time::Duration;
///
/// let lock = Lock::new()?;
/// let cond = Condition::new(&lock)?;
/// let guard = lock.acquire()?;
/// let (guard, woken) = cond.wait_timeout(guard, Duration::from_millis(5))?;
/// assert!(!woken, "nobody notified");
/// drop(guard);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
pub struct Condition {
    lock: Lock,
    #[serde(
        serialize_with = "serialize_block_arc",
        deserialize_with = "deserialize_condition_block"
    )]
    block: Arc<Block>,
}

fn serialize_block_arc<S: Serializer>(block: &Arc<Block>, s: S) -> Result<S::Ok, S::Error> {
    serialize_block(block, s)
}

fn deserialize_condition_block<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<Block>, D::Error> {
    deserialize_block(d, KIND_CONDITION)
}

impl Condition {
    /// A condition over `lock` (it keeps its own handle to it).
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let cond = mproc::Condition::new(&lock)?;
    /// cond.notify_all();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(lock: &Lock) -> Result<Condition, Error> {
        Ok(Condition {
            lock: lock.clone(),
            block: new_block(KIND_CONDITION, "a condition")?,
        })
    }

    /// Its lock.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let cond = mproc::Condition::new(&lock)?;
    /// drop(cond.lock().acquire()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn lock(&self) -> &Lock {
        &self.lock
    }

    /// Releases the lock held by `guard`, waits to be notified, and takes the lock again.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if `guard` holds another lock than this condition's.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let cond = mproc::Condition::new(&lock)?;
    /// let other = mproc::Lock::new()?;
    /// assert!(cond.wait(other.acquire()?).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait<'a>(&self, guard: LockGuard<'a>) -> Result<LockGuard<'a>, Error> {
        self.wait_until(guard, None).map(|(g, _)| g)
    }

    /// Like [`wait`](Self::wait), but waits at most `timeout`; the `bool` is `true` when it
    /// was woken before the timeout (Python's meaning).
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let cond = mproc::Condition::new(&lock)?;
    /// let (_g, woken) = cond.wait_timeout(lock.acquire()?, std::time::Duration::ZERO)?;
    /// assert!(!woken);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout<'a>(
        &self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> Result<(LockGuard<'a>, bool), Error> {
        self.wait_until(guard, deadline(timeout))
    }

    fn wait_until<'a>(
        &self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> Result<(LockGuard<'a>, bool), Error> {
        if guard.lock.id() != self.lock.id() {
            return Err(Error::invalid(
                "the guard holds another lock than this condition's",
            ));
        }
        let lock = guard.lock;
        let seq = self.block.u32_at(SEQ_AT);
        let seen = seq.load(Ordering::SeqCst);
        drop(guard);
        // A notify from here on changes `seq`, so the sleep below returns at once.
        let woke = sleep(&self.block, SEQ_AT, seen, deadline);
        let again = lock.acquire()?;
        let woken = match woke {
            Ok(true) => true,
            Ok(false) => seq.load(Ordering::SeqCst) != seen,
            Err(e) => return Err(os("waiting on a condition", e)),
        };
        Ok((again, woken))
    }

    /// Wakes up to `n` waiters.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// mproc::Condition::new(&lock)?.notify(1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn notify(&self, n: usize) {
        self.block.u32_at(SEQ_AT).fetch_add(1, Ordering::SeqCst);
        wake(&self.block, SEQ_AT, u32::try_from(n).unwrap_or(u32::MAX));
    }

    /// Wakes every waiter.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// mproc::Condition::new(&lock)?.notify_all();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn notify_all(&self) {
        self.notify(usize::MAX);
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").finish_non_exhaustive()
    }
}

// ----------------------------------------------------------------------------------------
// Barrier

const PARTIES_AT: usize = WORDS_AT + 8;
const ARRIVED_AT: usize = WORDS_AT + 12;
const GENERATION_AT: usize = WORDS_AT + 16;
const BROKEN_AT: usize = WORDS_AT + 20;

/// A barrier for a fixed number of parties: Python's `multiprocessing.Barrier`.
///
/// ```
/// let b = mproc::Barrier::new(1)?;
/// assert_eq!(b.wait()?, 0);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct Barrier {
    block: Arc<Block>,
}

impl Barrier {
    /// A barrier that opens once `parties` processes (or threads) wait on it.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for 0.
    ///
    /// ```
    /// assert!(mproc::Barrier::new(0).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(parties: usize) -> Result<Barrier, Error> {
        let parties = u32::try_from(parties)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| Error::invalid("a barrier needs between 1 and u32::MAX parties"))?;
        let block = new_block(KIND_BARRIER, "a barrier")?;
        block.u32_at(PARTIES_AT).store(parties, Ordering::Release);
        Ok(Barrier::from_block(block))
    }

    fn from_block(block: Arc<Block>) -> Barrier {
        Barrier { block }
    }

    /// How many parties it waits for.
    ///
    /// ```
    /// assert_eq!(mproc::Barrier::new(3)?.parties(), 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn parties(&self) -> usize {
        self.block.u32_at(PARTIES_AT).load(Ordering::Acquire) as usize
    }

    /// Waits until every party has arrived; returns a distinct index (0 to parties − 1) per
    /// party and pass.
    ///
    /// # Errors
    ///
    /// `BrokenBarrier` once it is broken (aborted, or a wait timed out).
    ///
    /// ```
    /// let b = mproc::Barrier::new(1)?;
    /// b.abort();
    /// assert_eq!(b.wait().unwrap_err().kind(), &mproc::ErrorKind::BrokenBarrier);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait(&self) -> Result<usize, Error> {
        self.wait_until(None)
    }

    /// Like [`wait`](Self::wait), but when `timeout` passes first the barrier breaks (for
    /// every party) and this returns `Err(BrokenBarrier)`.
    ///
    /// ```
    /// let b = mproc::Barrier::new(2)?;
    /// assert!(b.wait_timeout(std::time::Duration::from_millis(5)).is_err());
    /// assert!(b.wait().is_err(), "broken for everyone");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, Error> {
        self.wait_until(deadline(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<usize, Error> {
        let broken = self.block.u32_at(BROKEN_AT);
        let generation = self.block.u32_at(GENERATION_AT);
        let arrived = self.block.u32_at(ARRIVED_AT);
        let parties = self.block.u32_at(PARTIES_AT).load(Ordering::Acquire);
        let pass = generation.load(Ordering::SeqCst);
        if broken.load(Ordering::SeqCst) != 0 {
            return Err(ErrorKind::BrokenBarrier.into());
        }
        let index = arrived.fetch_add(1, Ordering::SeqCst);
        if index + 1 >= parties {
            arrived.store(0, Ordering::SeqCst);
            generation.fetch_add(1, Ordering::SeqCst);
            futex::wake(generation, u32::MAX);
            return Ok(index as usize);
        }
        loop {
            if generation.load(Ordering::SeqCst) != pass {
                return Ok(index as usize);
            }
            if broken.load(Ordering::SeqCst) != 0 {
                return Err(ErrorKind::BrokenBarrier.into());
            }
            match futex::wait(generation, pass, deadline) {
                Ok(true) => {}
                Ok(false) => {
                    if generation.load(Ordering::SeqCst) != pass {
                        return Ok(index as usize);
                    }
                    self.abort();
                    return Err(ErrorKind::BrokenBarrier.into());
                }
                Err(e) => return Err(os("waiting on a barrier", e)),
            }
        }
    }

    /// Breaks the barrier: every waiter, now and later, gets `Err(BrokenBarrier)`.
    ///
    /// ```
    /// let b = mproc::Barrier::new(2)?;
    /// b.abort();
    /// assert!(b.is_broken());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn abort(&self) {
        self.block.u32_at(BROKEN_AT).store(1, Ordering::SeqCst);
        futex::wake(self.block.u32_at(GENERATION_AT), u32::MAX);
    }

    /// Whether it is broken.
    ///
    /// ```
    /// assert!(!mproc::Barrier::new(2)?.is_broken());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_broken(&self) -> bool {
        self.block.u32_at(BROKEN_AT).load(Ordering::SeqCst) != 0
    }
}

block_handle!(Barrier, KIND_BARRIER);

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("broken", &self.is_broken())
            .finish()
    }
}
