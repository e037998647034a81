//! [`RLock`], the re-entrant lock, and its guard, [`RLockGuard`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{KIND_RLOCK, MUTEX_AT, block_handle, new_mutex_block};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::deadline_after;
use crate::sys::shared::{Block, Held, Taken};

/// A re-entrant lock shared between processes: Python's `multiprocessing.RLock`. The thread
/// that holds it may acquire it again; each [`acquire`](RLock::acquire) gives a guard, as
/// [`Lock`](crate::Lock)'s does, and dropping the guard releases that one level: the lock is
/// free once every guard is gone.
///
/// If a process dies holding the lock, the next acquirer gets it and its guard's
/// [`owner_died`](RLockGuard::owner_died) says so.
///
/// ```
/// let lock = mproc::RLock::new()?;
/// let outer = lock.acquire()?;
/// let inner = lock.acquire()?; // the same thread: taken again at once
/// drop(inner);
/// drop(outer); // free for others now
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone)]
pub struct RLock {
    block: Arc<Block>,
}

impl RLock {
    /// A new, free re-entrant lock.
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// drop(lock.acquire()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<RLock, Error> {
        Ok(RLock::from_block(new_mutex_block(KIND_RLOCK, 0, true)?))
    }

    fn from_block(block: Arc<Block>) -> RLock {
        RLock { block }
    }

    /// Waits for the lock and takes it (one more level, if this thread holds it already).
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// let guard = lock.acquire()?;
    /// assert!(!guard.owner_died());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<RLockGuard<'_>, Error> {
        self.take(None)
    }

    /// Like [`acquire`](Self::acquire), giving up after `timeout` with `Err(Timeout)`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let lock = mproc::RLock::new()?;
    /// let _held = lock.acquire()?;
    /// let other = lock.clone();
    /// let e = std::thread::spawn(move || other.acquire_timeout(Duration::from_millis(10)).map(drop))
    ///     .join()
    ///     .unwrap()
    ///     .unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>, Error> {
        self.take(deadline_after(timeout))
    }

    /// Takes the lock if it is free now, or held by this thread (one more level).
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// let outer = lock.try_acquire()?.expect("free");
    /// assert!(lock.try_acquire()?.is_some(), "this thread holds it: one more level");
    /// let other = lock.clone();
    /// assert!(std::thread::spawn(move || other.try_acquire().map(|g| g.is_none()))
    ///     .join()
    ///     .unwrap()?);
    /// drop(outer);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Result<Option<RLockGuard<'_>>, Error> {
        let taken = self
            .block
            .mutex_at(MUTEX_AT)
            .try_lock()
            .map_err(|e| Error::os("taking an RLock", e))?;
        Ok(taken.map(|(held, taken)| self.guard(held, taken)))
    }

    fn guard<'a>(&'a self, held: Held<'a>, taken: Taken) -> RLockGuard<'a> {
        RLockGuard {
            lock: self,
            held,
            owner_died: taken == Taken::OwnerDied,
        }
    }

    fn take(&self, deadline: Option<Instant>) -> Result<RLockGuard<'_>, Error> {
        let (held, taken) = self
            .block
            .mutex_at(MUTEX_AT)
            .lock(deadline)
            .map_err(|e| Error::os("taking an RLock", e))?
            .ok_or(ErrorKind::Timeout)?;
        Ok(self.guard(held, taken))
    }
}

block_handle!(RLock, KIND_RLOCK);

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock").finish_non_exhaustive()
    }
}

/// One level of a held [`RLock`]; dropping it releases that level. Not `Send`: the thread
/// that took a lock releases it.
///
/// A guard passed to `mem::forget` keeps its level held until its thread exits (other
/// processes are then told that its owner died). If the lock's last handle in this process is
/// dropped before that, its shared memory stays mapped until the process exits: the holding
/// thread's robust list still points into it.
///
/// ```
/// let lock = mproc::RLock::new()?;
/// {
///     let _guard = lock.acquire()?;
/// } // released here
/// let other = lock.clone();
/// assert!(std::thread::spawn(move || other.acquire().is_ok()).join().unwrap());
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    held: Held<'a>,
    owner_died: bool,
}

impl RLockGuard<'_> {
    /// Whether the previous owner died holding the lock (like a poisoned
    /// `std::sync::Mutex`): what it protected may be half-updated.
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// assert!(!lock.acquire()?.owner_died());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// Releases this level now, as dropping the guard does, but says if the system refused
    /// (a drop cannot): Python's `release()`.
    ///
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// let guard = lock.acquire()?;
    /// guard.release()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn release(self) -> Result<(), Error> {
        let RLockGuard { lock, held, .. } = self;
        // Released by `unlock` below, which reports an error where `Held`'s drop cannot.
        std::mem::forget(held);
        lock.block
            .mutex_at(MUTEX_AT)
            .unlock()
            .map_err(|e| Error::os("releasing an RLock", e))
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard")
            .field("owner_died", &self.owner_died)
            .finish()
    }
}
