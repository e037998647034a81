//! [`Lock`] and its guard, [`LockGuard`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Head, KIND_LOCK, MUTEX_AT, block_handle, new_mutex_block};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::deadline_after;
use crate::sys::shared::{Block, Held, Taken};

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

    pub(super) fn id(&self) -> u64 {
        self.block.view::<Head>(0).id.load(Ordering::Relaxed)
    }

    /// Waits for the lock and takes it.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if this thread already holds it (it is not re-entrant: see
    /// [`RLock`](crate::RLock)).
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
        self.take(deadline_after(timeout))?
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
        Error::os(what, e)
    }
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
    pub(super) lock: &'a Lock,
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
