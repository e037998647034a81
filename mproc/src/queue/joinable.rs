//! [`JoinableQueue`], a [`Queue`] that counts unfinished items.

use std::fmt;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ring::Wait;
use super::typed::{Core, Patience};
use super::{KIND_JOINABLE, Queue};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::deadline_after;

/// A [`Queue`] that counts unfinished items: Python's `multiprocessing.JoinableQueue`.
///
/// Every put adds one unfinished item; a consumer calls [`task_done`](JoinableQueue::task_done)
/// when it has finished with an item it got, and [`join`](JoinableQueue::join) waits until
/// every item put has been marked done. It has all of [`Queue`]'s methods (through `Deref`).
///
/// As [`Queue`]'s: a handle is `Send + Clone` but not `Sync` (give each thread a clone), and
/// `join` fails with `Closed` early only once the queue was shared with another process and
/// nobody else can finish an item (see [`Queue`]).
///
/// ```compile_fail,E0277
/// fn shared_by_reference<T: Sync>(_: &T) {}
/// shared_by_reference(&mproc::JoinableQueue::<u8>::new().unwrap());
/// ```
///
/// ```
/// use mproc::{JoinableQueue, Process};
///
/// fn consume(q: JoinableQueue<u32>) {
///     while let Ok(_item) = q.get() {
///         q.task_done().unwrap();
///     }
/// }
///
/// let q = JoinableQueue::new()?;
/// let mut p = Process::new(consume, (q.clone(),));
/// p.start()?;
/// for i in 0..100 {
///     q.put(i)?;
/// }
/// q.join()?; // all 100 done
/// q.close(); // the consumer's get now fails, and it returns
/// p.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("len", &self.queue.len())
            .field("unfinished", &self.queue.core.shared.ring.unfinished())
            .finish()
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;

    fn deref(&self) -> &Queue<T> {
        &self.queue
    }
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue.
    ///
    /// ```
    /// let q = mproc::JoinableQueue::<u8>::new()?;
    /// q.join()?; // nothing unfinished
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            queue: Queue {
                core: Core::new(KIND_JOINABLE, 0)?,
            },
        })
    }

    /// A joinable queue holding at most `maxsize` items (0 is `InvalidArgument`).
    ///
    /// ```
    /// let q = mproc::JoinableQueue::bounded(1)?;
    /// q.put(1u8)?;
    /// assert!(q.try_put(2u8).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn bounded(maxsize: usize) -> Result<JoinableQueue<T>, Error> {
        Ok(JoinableQueue {
            queue: Queue::with_kind(KIND_JOINABLE, maxsize)?,
        })
    }
}

impl<T> JoinableQueue<T> {
    /// Marks one item as finished.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when called more times than items were put (Python's `ValueError`).
    ///
    /// ```
    /// let q = mproc::JoinableQueue::new()?;
    /// q.put(1)?;
    /// q.get()?;
    /// q.task_done()?;
    /// assert!(q.task_done().is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn task_done(&self) -> Result<(), Error> {
        if self.queue.core.shared.ring.task_done() {
            Ok(())
        } else {
            Err(Error::invalid(
                "task_done() called more times than items were put in the queue",
            ))
        }
    }

    /// How many items were put and not yet marked done.
    ///
    /// ```
    /// let q = mproc::JoinableQueue::new()?;
    /// q.put('a')?;
    /// assert_eq!(q.unfinished(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn unfinished(&self) -> usize {
        self.queue.core.shared.ring.settle();
        self.queue.core.shared.ring.unfinished() as usize
    }

    /// Waits until every item put has been marked done.
    ///
    /// # Errors
    ///
    /// `Closed` when items are unfinished and nobody else can ever finish them (see
    /// [`Queue`]: a queue that never left this process waits).
    ///
    /// ```
    /// let q = mproc::JoinableQueue::new()?;
    /// q.put(1)?;
    /// q.get()?;
    /// q.task_done()?;
    /// q.join()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn join(&self) -> Result<(), Error> {
        self.join_until(None)
    }

    /// Like [`join`](JoinableQueue::join), giving up with `Err(Timeout)` after `timeout`:
    /// early with `Closed` only when nobody else can ever finish an item.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = mproc::JoinableQueue::new()?;
    /// q.put(1)?;
    /// let e = q.join_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.join_until(deadline_after(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), Error> {
        let shared = &self.queue.core.shared;
        shared.attach()?;
        let ring = &shared.ring;
        let mut patience = Patience::new();
        // Set when nobody else can finish an item any more: one last look, then `Closed`.
        let mut last = false;
        loop {
            let ticket = ring.ticket(Wait::Done);
            // A producer that died inside a put counted an item it never published.
            ring.settle();
            if ring.unfinished() == 0 {
                return Ok(());
            }
            if last {
                return Err(ErrorKind::Closed.into());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ErrorKind::Timeout.into());
            }
            let slept = ring
                .sleep(Wait::Done, ticket, Some(patience.until(deadline)))
                .map_err(|e| Error::os("waiting for a queue's items to be done", e))?;
            last = !slept && patience.due() && ring.unfinished() > 0 && shared.alone()?;
        }
    }
}

impl<T: Serialize + DeserializeOwned> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.queue.core.serialize(s)
    }
}

impl<'de, T: Serialize + DeserializeOwned> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(JoinableQueue {
            queue: Queue {
                core: Core::deserialize(d, KIND_JOINABLE)?,
            },
        })
    }
}
