//! [`Barrier`], a meeting point for a fixed number of parties.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{KIND_BARRIER, WORDS_AT, block_handle, new_block};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::deadline_after;
use crate::sys::futex;
use crate::sys::layout::shared_layout;
use crate::sys::shared::Block;

shared_layout! {
    /// A barrier's words, at `WORDS_AT` (it sleeps on `generation` without counting its
    /// sleepers).
    struct Words {
        /// Arrivals ever: the party that takes ticket `t` passes with generation
        /// `t / parties` as index `t % parties`. Only ever incremented, so an arrival and
        /// the generation it joins are one atomic step, however many more processes than
        /// parties wait at once.
        tickets: AtomicU64,
        parties: AtomicU32,
        _unused: AtomicU32,
        /// How many generations have passed (modulo 2^32; only ever moved forward): bumped
        /// by the last party of each. The others sleep on it.
        generation: AtomicU32,
        broken: AtomicU32,
    }
}
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(Words, tickets) == 0);
    assert!(offset_of!(Words, parties) == 8);
    assert!(offset_of!(Words, generation) == 16);
    assert!(offset_of!(Words, broken) == 20);
    assert!(WORDS_AT.is_multiple_of(8));
};

/// Whether generation `mine` has passed, by the count of passed generations `passed`
/// (both modulo 2^32).
fn has_passed(passed: u32, mine: u32) -> bool {
    (passed.wrapping_sub(mine) as i32) > 0
}

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
        block
            .view::<Words>(WORDS_AT)
            .parties
            .store(parties, Ordering::Release);
        Ok(Barrier::from_block(block))
    }

    /// Its words in the block (a block of this kind is always large enough: `new_block`).
    fn words(&self) -> &Words {
        self.block.view(WORDS_AT)
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
        self.words().parties.load(Ordering::Acquire) as usize
    }

    /// Waits until every party has arrived; returns a distinct index (0 to parties − 1) per
    /// party and pass.
    ///
    /// # Errors
    ///
    /// `BrokenBarrier` once it is broken (aborted, or another party's wait timed out).
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

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Err(Timeout)`. As in
    /// Python, a party that gives up breaks the barrier: the others, waiting or still to come,
    /// get `Err(BrokenBarrier)`.
    ///
    /// ```
    /// use mproc::ErrorKind;
    ///
    /// let b = mproc::Barrier::new(2)?;
    /// let e = b.wait_timeout(std::time::Duration::from_millis(5)).unwrap_err();
    /// assert_eq!(e.kind(), &ErrorKind::Timeout);
    /// assert_eq!(b.wait().unwrap_err().kind(), &ErrorKind::BrokenBarrier, "broken for everyone");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<usize, Error> {
        self.wait_until(deadline_after(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<usize, Error> {
        let broken = &self.words().broken;
        let generation = &self.words().generation;
        let parties = u64::from(self.words().parties.load(Ordering::Acquire));
        if broken.load(Ordering::SeqCst) != 0 {
            return Err(ErrorKind::BrokenBarrier.into());
        }
        let ticket = self.words().tickets.fetch_add(1, Ordering::SeqCst);
        let mine = (ticket / parties) as u32;
        let index = (ticket % parties) as usize;
        if index as u64 + 1 == parties {
            // The last of its generation: the generation passes. Never moved back (the last
            // party of the next one may have got here first).
            let mut seen = generation.load(Ordering::SeqCst);
            while !has_passed(seen, mine) {
                match generation.compare_exchange(
                    seen,
                    mine.wrapping_add(1),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => break,
                    Err(now) => seen = now,
                }
            }
            futex::wake(generation, u32::MAX);
            return Ok(index);
        }
        loop {
            let seen = generation.load(Ordering::SeqCst);
            if has_passed(seen, mine) {
                return Ok(index);
            }
            if broken.load(Ordering::SeqCst) != 0 {
                return Err(ErrorKind::BrokenBarrier.into());
            }
            match futex::wait(generation, seen, deadline) {
                Ok(true) => {}
                Ok(false) => {
                    if has_passed(generation.load(Ordering::SeqCst), mine) {
                        return Ok(index);
                    }
                    self.abort();
                    return Err(ErrorKind::Timeout.into());
                }
                Err(e) => return Err(Error::os("waiting on a barrier", e)),
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
        self.words().broken.store(1, Ordering::SeqCst);
        futex::wake(&self.words().generation, u32::MAX);
    }

    /// Whether it is broken.
    ///
    /// ```
    /// assert!(!mproc::Barrier::new(2)?.is_broken());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_broken(&self) -> bool {
        self.words().broken.load(Ordering::SeqCst) != 0
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
