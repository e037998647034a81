//! [`RLock`], the re-entrant lock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{KIND_RLOCK, MUTEX_AT, block_handle, deadline, new_mutex_block, os};
use crate::error::Error;
use crate::sys::shared::{Block, Taken};

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
