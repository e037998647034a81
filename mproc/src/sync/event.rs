//! [`Event`], a flag processes wait for.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicU32;

use super::{KIND_EVENT, WORDS_AT, block_handle, new_block, sleep, wake};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::deadline_after;
use crate::sys::layout::shared_layout;
use crate::sys::shared::Block;

shared_layout! {
    /// An event's words, at `WORDS_AT`.
    struct Words {
        /// 1 once set.
        flag: AtomicU32,
        waiters: AtomicU32,
        /// Bumped by every `set`: waiters sleep on it, so one asleep at a set is released
        /// even if a `clear` follows before it runs.
        sets: AtomicU32,
    }
}
const _: () = assert!(std::mem::offset_of!(Words, waiters) == 4);
const _: () = assert!(std::mem::offset_of!(Words, sets) == 8);

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
/// e.wait_timeout(std::time::Duration::from_secs(30))?;
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

    /// Its words in the block (a block of this kind is always large enough: `new_block`).
    fn words(&self) -> &Words {
        self.block.view(WORDS_AT)
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
        self.words().flag.store(1, Ordering::SeqCst);
        self.words().sets.fetch_add(1, Ordering::SeqCst);
        wake(&self.words().waiters, &self.words().sets, u32::MAX);
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
        self.words().flag.store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    ///
    /// ```
    /// assert!(!mproc::Event::new()?.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_set(&self) -> bool {
        self.words().flag.load(Ordering::Acquire) != 0
    }

    /// Waits until the flag is set. A wait under way when [`set`](Self::set) is called
    /// returns, even if the flag is cleared again before the waiter runs (as in Python, where
    /// a set wakes every waiter).
    ///
    /// # Errors
    ///
    /// `Os` if the system refuses the wait (it never does on a sound block; the error is
    /// reported rather than taken for a wake-up).
    ///
    /// ```
    /// let e = mproc::Event::new()?;
    /// e.set();
    /// e.wait()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait(&self) -> Result<(), Error> {
        self.wait_until(None)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Err(Timeout)`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let e = mproc::Event::new()?;
    /// let err = e.wait_timeout(Duration::from_millis(5)).unwrap_err();
    /// assert_eq!(err.kind(), &mproc::ErrorKind::Timeout);
    /// e.set();
    /// e.wait_timeout(Duration::from_millis(5))?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_until(deadline_after(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<(), Error> {
        let (flag, sets) = (&self.words().flag, &self.words().sets);
        // Read before the flag: a set from here on moves it, and the sleep returns at once.
        let seen = sets.load(Ordering::SeqCst);
        loop {
            // Set now, or set since we first looked (and maybe cleared again since).
            if flag.load(Ordering::SeqCst) != 0 || sets.load(Ordering::SeqCst) != seen {
                return Ok(());
            }
            let woke = sleep(&self.words().waiters, sets, seen, deadline)
                .map_err(|e| Error::os("waiting on an event", e))?;
            if !woke && flag.load(Ordering::SeqCst) == 0 && sets.load(Ordering::SeqCst) == seen {
                return Err(ErrorKind::Timeout.into());
            }
        }
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
