//! [`SimpleQueue`], Python's `multiprocessing.SimpleQueue`.

use std::borrow::Borrow;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::KIND_SIMPLE;
use super::typed::Core;
use crate::error::{Error, ErrorKind};

/// A simpler queue: Python's `multiprocessing.SimpleQueue` (unbounded; `put`, `get`,
/// `is_empty`, `close`).
///
/// As [`Queue`](crate::Queue)'s: a handle is `Send + Clone` but not `Sync` (give each thread a clone), and a
/// `get` fails with `Closed` early only once the queue was shared with another process and
/// nobody else can put (see [`Queue`](crate::Queue)).
///
/// ```compile_fail,E0277
/// fn shared_by_reference<T: Sync>(_: &T) {}
/// shared_by_reference(&mproc::SimpleQueue::<u8>::new().unwrap());
/// ```
///
/// ```
/// use mproc::{Process, SimpleQueue};
///
/// fn greet(q: SimpleQueue<String>) {
///     q.put(format!("hello from {}", std::process::id())).unwrap();
/// }
///
/// let q = SimpleQueue::new()?;
/// let mut p = Process::new(greet, (q.clone(),));
/// p.start()?;
/// assert!(q.get()?.starts_with("hello from"));
/// p.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct SimpleQueue<T> {
    core: Core<T>,
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            core: self.core.clone(),
        }
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("len", &self.core.shared.ring.len())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// A new, empty queue.
    ///
    /// ```
    /// let q = mproc::SimpleQueue::<u32>::new()?;
    /// assert!(q.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<SimpleQueue<T>, Error> {
        Ok(SimpleQueue {
            core: Core::new(KIND_SIMPLE, 0)?,
        })
    }

    /// Puts `value` (a `T` or a `&T`) at the back; as [`Queue::put`](crate::Queue::put).
    ///
    /// ```
    /// let q = mproc::SimpleQueue::<[u8; 3]>::new()?;
    /// q.put(&[1u8, 2, 3])?;
    /// assert_eq!(q.get()?, [1, 2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn put(&self, value: impl Borrow<T>) -> Result<(), Error> {
        self.core.put(value.borrow(), None, false)
    }

    /// Takes the item at the front, waiting for one; as [`Queue::get`](crate::Queue::get).
    ///
    /// ```
    /// let q = mproc::SimpleQueue::new()?;
    /// q.put(4u16)?;
    /// assert_eq!(q.get()?, 4);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get(&self) -> Result<T, Error> {
        self.core
            .get(None)?
            .ok_or_else(|| ErrorKind::Timeout.into())
    }
}

impl<T> SimpleQueue<T> {
    /// Whether it holds no items now.
    ///
    /// ```
    /// let q = mproc::SimpleQueue::new()?;
    /// q.put(1)?;
    /// assert!(!q.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        !self.core.shared.ring.has_frames()
    }

    /// Closes it for every process; as [`Queue::close`](crate::Queue::close).
    ///
    /// ```
    /// let q = mproc::SimpleQueue::<u8>::new()?;
    /// q.close();
    /// assert!(q.get().is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn close(&self) {
        self.core.shared.ring.close();
    }
}

impl<T: Serialize + DeserializeOwned> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.core.serialize(s)
    }
}

impl<'de, T: Serialize + DeserializeOwned> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SimpleQueue {
            core: Core::deserialize(d, KIND_SIMPLE)?,
        })
    }
}
