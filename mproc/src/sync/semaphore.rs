//! [`Semaphore`], a counter of permits.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicU32;

use super::{KIND_SEMAPHORE, WORDS_AT, block_handle, new_block, sleep, wake};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::deadline_after;
use crate::sys::layout::shared_layout;
use crate::sys::shared::Block;

shared_layout! {
    /// A semaphore's words, at `WORDS_AT`.
    struct Words {
        count: AtomicU32,
        waiters: AtomicU32,
        /// A bounded semaphore's bound (else `u32::MAX`).
        max: AtomicU32,
    }
}
const _: () = assert!(std::mem::offset_of!(Words, waiters) == 4);
const _: () = assert!(std::mem::offset_of!(Words, max) == 8);

/// A counting semaphore shared between processes: Python's `multiprocessing.Semaphore`.
///
/// ```
/// let s = mproc::Semaphore::new(2)?;
/// s.acquire()?;
/// s.acquire()?;
/// let e = s.acquire_timeout(std::time::Duration::from_millis(5)).unwrap_err();
/// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
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

    pub(super) fn with_max(value: usize, max: u32) -> Result<Semaphore, Error> {
        let value = u32::try_from(value)
            .ok()
            .filter(|&v| v < u32::MAX)
            .ok_or_else(|| Error::invalid("a semaphore holds at most u32::MAX - 1 permits"))?;
        let block = new_block(KIND_SEMAPHORE, "a semaphore")?;
        block
            .view::<Words>(WORDS_AT)
            .count
            .store(value, Ordering::Relaxed);
        block
            .view::<Words>(WORDS_AT)
            .max
            .store(max, Ordering::Release);
        Ok(Semaphore::from_block(block))
    }

    /// Its words in the block (a block of this kind is always large enough: `new_block`).
    fn words(&self) -> &Words {
        self.block.view(WORDS_AT)
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
        self.take(None)
    }

    /// Like [`acquire`](Self::acquire), giving up after `timeout` with `Err(Timeout)`.
    ///
    /// ```
    /// let s = mproc::Semaphore::new(0)?;
    /// let e = s.acquire_timeout(std::time::Duration::from_millis(5)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// s.release()?;
    /// s.acquire_timeout(std::time::Duration::from_millis(5))?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.take(deadline_after(timeout))
    }

    /// Takes a permit if there is one now (Python's `acquire(False)`): `Ok(false)` if none.
    ///
    /// ```
    /// let s = mproc::Semaphore::new(1)?;
    /// assert!(s.try_acquire()?);
    /// assert!(!s.try_acquire()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Result<bool, Error> {
        Ok(self.take_now())
    }

    /// Takes a permit if the count is above 0.
    fn take_now(&self) -> bool {
        let count = &self.words().count;
        let mut c = count.load(Ordering::Acquire);
        while c > 0 {
            match count.compare_exchange_weak(c, c - 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
        false
    }

    /// Takes a permit, waiting until `deadline`. It sleeps in slices of
    /// [`WAKE_LOST`](crate::sys::shared::WAKE_LOST), looking again after each: a release wakes
    /// one sleeper, and one killed before it took the permit loses the wake-up for the others.
    fn take(&self, deadline: Option<Instant>) -> Result<(), Error> {
        loop {
            if self.take_now() {
                return Ok(());
            }
            let until = crate::sys::shared::next_look(deadline);
            let woke = sleep(&self.words().waiters, &self.words().count, 0, Some(until));
            if !woke.map_err(|e| Error::os("waiting on a semaphore", e))?
                && deadline.is_some_and(|d| Instant::now() >= d)
            {
                // One last try: a permit given back as the deadline passed (its wake-up came
                // after the sleep timed out, or the deadline had passed before the sleep
                // began) is there all the same.
                if self.take_now() {
                    return Ok(());
                }
                return Err(ErrorKind::Timeout.into());
            }
        }
    }

    /// Gives a permit back.
    ///
    /// # Errors
    ///
    /// For a [`BoundedSemaphore`](crate::BoundedSemaphore), `InvalidArgument` when that would exceed its initial
    /// value.
    ///
    /// ```
    /// let s = mproc::Semaphore::new(0)?;
    /// s.release()?;
    /// assert_eq!(s.value(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn release(&self) -> Result<(), Error> {
        let count = &self.words().count;
        let max = self.words().max.load(Ordering::Acquire);
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
        wake(&self.words().waiters, &self.words().count, 1);
        Ok(())
    }

    /// The permits available now (Python's `get_value`).
    ///
    /// ```
    /// assert_eq!(mproc::Semaphore::new(3)?.value(), 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn value(&self) -> usize {
        self.words().count.load(Ordering::Relaxed) as usize
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A permit given back while a waiter sleeps, whose wake-up comes only after the waiter's
    /// deadline (here: never; the count is set without one), is taken all the same: the
    /// waiter looks once more when its sleep times out.
    #[test]
    fn a_permit_given_back_as_the_deadline_passes_is_taken() {
        let s = Semaphore::new(0).unwrap();
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || s.acquire_timeout(Duration::from_millis(300)))
        };
        let asleep = Instant::now() + Duration::from_secs(10);
        while s.words().waiters.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < asleep, "the waiter never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Asleep in the kernel by now (it counted itself just before).
        std::thread::sleep(Duration::from_millis(50));
        s.words().count.store(1, Ordering::SeqCst);
        waiter.join().unwrap().expect("the permit there at the deadline");
        assert_eq!(s.value(), 0);
    }

    /// A sleeper whose wake-up went to a waiter killed before it took the permit (forged
    /// here: the count raised with no wake-up) takes the permit at its next look, without a
    /// deadline of its own. Before the sleeps in slices, it slept for ever.
    #[test]
    fn a_sleeper_passed_over_by_a_lost_wake_up_takes_the_permit() {
        let s = Semaphore::new(0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let s = s.clone();
            std::thread::spawn(move || tx.send(s.acquire()))
        };
        let asleep = Instant::now() + Duration::from_secs(10);
        while s.words().waiters.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < asleep, "the waiter never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        s.words().count.store(1, Ordering::SeqCst);
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert!(matches!(got, Ok(Ok(()))), "the waiter still sleeps: {got:?}");
        waiter.join().unwrap().unwrap();
        assert_eq!(s.value(), 0);
    }
}
