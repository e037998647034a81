//! [`BoundedSemaphore`], a [`Semaphore`] that refuses over-release.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Semaphore;
use crate::error::Error;

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
    /// s.acquire_timeout(std::time::Duration::ZERO)?;
    /// let e = s.acquire_timeout(std::time::Duration::ZERO).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.0.acquire_timeout(timeout)
    }

    /// See [`Semaphore::try_acquire`].
    ///
    /// ```
    /// let s = mproc::BoundedSemaphore::new(1)?;
    /// assert!(s.try_acquire()?);
    /// assert!(!s.try_acquire()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Result<bool, Error> {
        self.0.try_acquire()
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
