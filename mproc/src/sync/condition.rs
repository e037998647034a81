//! [`Condition`], a condition variable over a [`Lock`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    KIND_CONDITION, Lock, LockGuard, WORDS_AT, deserialize_block, new_block, serialize_block,
    sleep, wake,
};
use crate::error::Error;
use crate::sys::fd::deadline_after;
use crate::sys::layout::shared_layout;
use crate::sys::shared::Block;

shared_layout! {
    /// A condition's words, at `WORDS_AT`.
    struct Words {
        /// Bumped by every notify: waiters sleep on it.
        seq: AtomicU32,
        waiters: AtomicU32,
    }
}
const _: () = assert!(std::mem::offset_of!(Words, waiters) == 4);

/// A condition variable shared between processes, over a [`Lock`]: Python's
/// `multiprocessing.Condition`.
///
/// As with `std::sync::Condvar`, check what you wait for in a loop: a wait may end without
/// the change it waits for. And where a waiter may be killed, wait with a timeout: a
/// [`notify(1)`](Self::notify) whose waiter is killed after it was woken, before it took the
/// lock again, wakes nobody else (CPython's `notify` would wait for that waiter for ever).
///
/// ```
/// use mproc::{Condition, Lock};
/// use std::time::Duration;
///
/// let lock = Lock::new()?;
/// let cond = Condition::new(&lock)?;
/// let guard = lock.acquire()?;
/// let (guard, result) = cond.wait_timeout(guard, Duration::from_millis(5))?;
/// assert!(result.timed_out(), "nobody notified");
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
    /// Its words in the block (a block of this kind is always large enough: `new_block`).
    fn words(&self) -> &Words {
        self.block.view(WORDS_AT)
    }

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

    /// Like [`wait`](Self::wait), but waits at most `timeout`. The lock is taken again
    /// either way, so the guard comes back with whether the time ran out, as
    /// `std::sync::Condvar::wait_timeout` gives it (running out of time is not an error
    /// here: the one exception to the crate's timeout rule, since the guard must come back).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let lock = mproc::Lock::new()?;
    /// let cond = mproc::Condition::new(&lock)?;
    /// let (guard, result) = cond.wait_timeout(lock.acquire()?, Duration::ZERO)?;
    /// assert!(result.timed_out());
    /// drop(guard);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout<'a>(
        &self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> Result<(LockGuard<'a>, WaitTimeoutResult), Error> {
        self.wait_until(guard, deadline_after(timeout))
    }

    fn wait_until<'a>(
        &self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> Result<(LockGuard<'a>, WaitTimeoutResult), Error> {
        if guard.lock.id() != self.lock.id() {
            return Err(Error::invalid(
                "the guard holds another lock than this condition's",
            ));
        }
        let lock = guard.lock;
        let seq = &self.words().seq;
        let seen = seq.load(Ordering::SeqCst);
        drop(guard);
        // A notify from here on changes `seq`, so the sleep below returns at once.
        let woke = sleep(&self.words().waiters, &self.words().seq, seen, deadline);
        let again = lock.acquire()?;
        let woken = match woke {
            Ok(true) => true,
            Ok(false) => seq.load(Ordering::SeqCst) != seen,
            Err(e) => return Err(Error::os("waiting on a condition", e)),
        };
        Ok((again, WaitTimeoutResult(!woken)))
    }

    /// Wakes up to `n` waiters.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// mproc::Condition::new(&lock)?.notify(1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn notify(&self, n: usize) {
        self.words().seq.fetch_add(1, Ordering::SeqCst);
        wake(
            &self.words().waiters,
            &self.words().seq,
            u32::try_from(n).unwrap_or(u32::MAX),
        );
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

/// Whether a [`Condition::wait_timeout`] ran out of time, as `std::sync::WaitTimeoutResult`
/// says it for a `Condvar` (a type rather than a `bool`, so that it cannot be read the wrong
/// way round: Python's `wait` returns `True` when notified, the opposite).
///
/// ```
/// let lock = mproc::Lock::new()?;
/// let cond = mproc::Condition::new(&lock)?;
/// let (_guard, result) = cond.wait_timeout(lock.acquire()?, std::time::Duration::ZERO)?;
/// assert!(result.timed_out());
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// Whether the time ran out before a notify came.
    ///
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let cond = mproc::Condition::new(&lock)?;
    /// let (_guard, result) = cond.wait_timeout(lock.acquire()?, std::time::Duration::ZERO)?;
    /// assert!(result.timed_out(), "nobody notified");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").finish_non_exhaustive()
    }
}
