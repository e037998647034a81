//! [`Queue`], Python's `multiprocessing.Queue`.

use std::borrow::Borrow;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::KIND_QUEUE;
use super::typed::Core;
use crate::error::{Error, ErrorKind};
use crate::sys::fd::deadline_after;

/// A queue of `T` shared between processes: Python's `multiprocessing.Queue`.
///
/// Any number of processes may put and get at once; each item is delivered exactly once, in
/// the order it was put. Values cross encoded with serde, straight into and out of shared
/// memory. `put` takes a `T` or a `&T`. Handles are cheap clones of one queue and travel as
/// arguments of [`Process::new`](crate::Process::new) and of pool tasks.
///
/// [`close`](Queue::close) closes the queue for every process: later puts fail with
/// `Closed`, gets take what is left and then fail with `Closed`.
///
/// # Threads: one handle each
///
/// A handle is `Send + Clone` but not `Sync` (as `std::sync::mpsc::Sender` was before Rust
/// 1.72): to use a queue from several threads, give each thread a clone. A handle kept where
/// threads take turns with it, in a `static Mutex<Option<Queue<T>>>` say, is fine too (a
/// `Mutex` of a `Send` value is `Sync`), and counts as one handle. This is what lets a queue
/// know exactly how many of this process's threads can still use it (next section).
///
/// ```
/// let q = mproc::Queue::<u32>::new()?;
/// let producer = q.clone(); // one handle per thread
/// let t = std::thread::spawn(move || producer.put(7));
/// assert_eq!(q.get()?, 7);
/// t.join().unwrap()?;
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// Sharing one handle by reference does not compile:
///
/// ```compile_fail,E0277
/// let q = mproc::Queue::<u32>::new().unwrap();
/// std::thread::scope(|s| {
///     s.spawn(|| q.put(7).unwrap()); // `&Queue` cannot go to another thread
/// });
/// ```
///
/// # When a wait ends with `Closed` before its time
///
/// Once a queue has been shared with another process (passed to a child or a pool task, sent
/// inside a message, or used by a fork child that inherited it), a get that would wait for an
/// item nobody can put fails with `Closed` instead of hanging (Python's hangs, gh-87971): it
/// checks while it waits (within about 100 ms) whether any other process still holds the
/// queue (they returned, were killed, or dropped it), whether a handle to it is on its way to
/// one, and whether the waiting handle is this process's only one. Only when all say "nobody"
/// is `Closed` certain, and only then does it come early; otherwise a timed wait runs its full
/// time and answers `Timeout`, and an untimed one goes on waiting. Likewise a put on a full
/// bounded queue when nobody can get, and [`JoinableQueue::join`](crate::JoinableQueue::join) when nobody can finish an
/// item. Such a `Closed` says that nobody else can answer, not that the queue was closed:
/// [`is_closed`](Queue::is_closed) stays false, and this handle may still put and get.
///
/// A handle is on its way until it is decoded, for as long as a copy of the message that
/// carries it exists: the arguments of a [`Process`](crate::Process) not started yet (or
/// whose start failed: it may be started again), a message in a [`pipe`](crate::pipe) not
/// read yet, a pool task not run yet, a child's arguments it has not decoded yet. It stops
/// counting when it is decoded, or when the last copy goes undecoded: dropped unread with
/// its pipe or its unstarted `Process`, cancelled, or lost with a process killed before it
/// decoded it.
///
/// Limits: a cancelled pool task that had already gone ahead to a busy worker counts until
/// that worker is through with the task before it (it then skips it); an undecoded copy that
/// a `Fork` child inherited (started while the message existed here) counts until that child
/// ends.
///
/// A queue that never left its process waits as Python's does, whatever its handles: a
/// `get_timeout` runs its full time, and a `get` on an empty queue that only this thread
/// holds waits forever. (A child made with `Fork` inherits every queue, used or not; that
/// alone does not make a queue shared.)
///
/// ```
/// use std::time::Duration;
/// use mproc::{ErrorKind, Process, Queue};
///
/// fn put_nothing(_q: Queue<u8>) {}
///
/// let q = Queue::<u8>::new()?;
/// let e = q.get_timeout(Duration::from_millis(50)).unwrap_err();
/// assert_eq!(e.kind(), &ErrorKind::Timeout); // never shared: waits its full time
///
/// let mut p = Process::new(put_nothing, (q.clone(),));
/// p.start()?;
/// p.join()?;
/// // Shared, the child is gone, and `q` is this process's only handle: nobody can put.
/// assert_eq!(q.get().unwrap_err().kind(), &ErrorKind::Closed);
/// assert!(!q.is_closed());
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Example
///
/// ```
/// use mproc::{Process, Queue};
///
/// fn add_two(a: u64, b: u64, q: Queue<u64>) {
///     q.put(a + b).unwrap();
/// }
///
/// let q = Queue::new()?;
/// let mut p = Process::new(add_two, (2, 3, q.clone()));
/// p.start()?;
/// assert_eq!(q.get()?, 5);
/// p.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Queue<T> {
    pub(super) core: Core<T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            core: self.core.clone(),
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.core.shared.ring.len())
            .field("maxsize", &self.core.shared.ring.maxsize())
            .finish()
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// An unbounded queue (it grows as needed; a put never waits).
    ///
    /// ```
    /// let q = mproc::Queue::<String>::new()?;
    /// q.put("hello".to_string())?;
    /// assert_eq!(q.get()?, "hello");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<Queue<T>, Error> {
        Ok(Queue {
            core: Core::new(KIND_QUEUE, 0)?,
        })
    }

    /// A queue holding at most `maxsize` items: a put waits while it is full.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` when `maxsize` is 0.
    ///
    /// ```
    /// let q = mproc::Queue::bounded(1)?;
    /// q.put(1u8)?;
    /// assert_eq!(q.try_put(2u8).unwrap_err().kind(), &mproc::ErrorKind::Full);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn bounded(maxsize: usize) -> Result<Queue<T>, Error> {
        Queue::with_kind(KIND_QUEUE, maxsize)
    }

    pub(super) fn with_kind(kind: u32, maxsize: usize) -> Result<Queue<T>, Error> {
        if maxsize == 0 {
            return Err(Error::invalid(
                "a bounded queue must hold at least one item (use Queue::new for no bound)",
            ));
        }
        Ok(Queue {
            core: Core::new(kind, maxsize as u64)?,
        })
    }

    /// Puts `value` at the back, waiting while a bounded queue is full.
    ///
    /// # Errors
    ///
    /// `Closed` if the queue is closed, or if it is full and nobody else can ever get (see
    /// [`Queue`]); `Codec` if the value does not encode.
    ///
    /// ```
    /// let q = mproc::Queue::<Vec<u8>>::new()?;
    /// let big = vec![7u8; 1 << 20];
    /// q.put(&big)?; // by reference: no clone
    /// assert_eq!(q.get()?, big);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn put(&self, value: impl Borrow<T>) -> Result<(), Error> {
        self.core.put(value.borrow(), None, false)
    }

    /// Like [`put`](Queue::put), giving up with `Err(Timeout)` after `timeout` (Python raises
    /// `Full` there; mproc keeps `Full` for [`try_put`](Queue::try_put)): early with `Closed`
    /// only when nobody else can ever get (see [`Queue`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = mproc::Queue::<u32>::bounded(1)?;
    /// q.put(1)?;
    /// let e = q.put_timeout(2, Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// assert_eq!(q.get()?, 1);
    /// q.put_timeout(2, Duration::from_millis(10))?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn put_timeout(&self, value: impl Borrow<T>, timeout: Duration) -> Result<(), Error> {
        self.core
            .put(value.borrow(), deadline_after(timeout), false)
    }

    /// Puts `value` if there is room now; `Err(Full)` otherwise.
    ///
    /// ```
    /// let q = mproc::Queue::bounded(2)?;
    /// q.try_put('a')?;
    /// q.try_put('b')?;
    /// assert!(q.try_put('c').is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_put(&self, value: impl Borrow<T>) -> Result<(), Error> {
        self.core.put(value.borrow(), None, true)
    }

    /// Takes the item at the front, waiting for one.
    ///
    /// # Errors
    ///
    /// `Closed` if the queue is closed and empty, or if it is empty and nobody else can ever
    /// put (see [`Queue`]: a queue that never left this process waits); `Codec` if the item
    /// does not decode as a `T` (it is consumed).
    ///
    /// ```
    /// let q = mproc::Queue::new()?;
    /// q.put(1)?;
    /// q.put(2)?;
    /// assert_eq!((q.get()?, q.get()?), (1, 2));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get(&self) -> Result<T, Error> {
        self.core
            .get(None)?
            .ok_or_else(|| ErrorKind::Timeout.into())
    }

    /// Like [`get`](Queue::get), giving up with `Err(Timeout)` after `timeout`: early with
    /// `Closed` only when nobody else can ever put (see [`Queue`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = mproc::Queue::<u8>::new()?;
    /// let e = q.get_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.core
            .get(deadline_after(timeout))?
            .ok_or_else(|| ErrorKind::Timeout.into())
    }

    /// Takes the item at the front if there is one now.
    ///
    /// ```
    /// let q = mproc::Queue::new()?;
    /// assert_eq!(q.try_get()?, None);
    /// q.put(5)?;
    /// assert_eq!(q.try_get()?, Some(5));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_get(&self) -> Result<Option<T>, Error> {
        match self.core.pop(None)? {
            Some(value) => value.map(Some),
            None if self.core.ring().is_closed() => Err(ErrorKind::Closed.into()),
            None => Ok(None),
        }
    }
}

impl<T> Queue<T> {
    /// How many items it holds (Python's `qsize`): exact when nobody is putting or getting.
    ///
    /// ```
    /// let q = mproc::Queue::<String>::new()?;
    /// q.put("x".to_string())?;
    /// assert_eq!(q.len(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.core.shared.ring.settle();
        self.core.shared.ring.len() as usize
    }

    /// Whether it holds no items (a snapshot, like [`len`](Queue::len)).
    ///
    /// ```
    /// let q = mproc::Queue::<u8>::new()?;
    /// assert!(q.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound given to [`bounded`](Queue::bounded); `None` when unbounded.
    ///
    /// ```
    /// assert_eq!(mproc::Queue::<u8>::bounded(3)?.maxsize(), Some(3));
    /// assert_eq!(mproc::Queue::<u8>::new()?.maxsize(), None);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn maxsize(&self) -> Option<usize> {
        match self.core.shared.ring.maxsize() {
            0 => None,
            n => Some(n as usize),
        }
    }

    /// Closes the queue, for every process that holds it: puts fail with `Closed` from now on,
    /// gets take what is left and then fail with `Closed`; whoever waits is woken.
    ///
    /// Python's `close` only says that this process will put nothing more, and lets a
    /// background thread flush; mproc has no such thread (a put is done when it returns), so
    /// closing is about the queue itself.
    ///
    /// ```
    /// let q = mproc::Queue::new()?;
    /// q.put(1)?;
    /// q.close();
    /// assert!(q.put(2).is_err());
    /// assert_eq!(q.get()?, 1);
    /// assert_eq!(q.get().unwrap_err().kind(), &mproc::ErrorKind::Closed);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn close(&self) {
        self.core.shared.ring.close();
    }

    /// Whether [`close`](Queue::close) was called, by any process.
    ///
    /// ```
    /// let q = mproc::Queue::<u8>::new()?;
    /// q.close();
    /// assert!(q.is_closed());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.core.shared.ring.is_closed()
    }
}

impl<T: Serialize + DeserializeOwned> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.core.serialize(s)
    }
}

impl<'de, T: Serialize + DeserializeOwned> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Queue {
            core: Core::deserialize(d, KIND_QUEUE)?,
        })
    }
}
