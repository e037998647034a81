//! [`Event`], a flag processes wait for.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{KIND_EVENT, WORDS_AT, block_handle, deadline, new_block, sleep, wake};
use crate::error::Error;
use crate::sys::shared::Block;

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
