//! Queues between processes: [`Queue`], [`SimpleQueue`], [`JoinableQueue`].
//!
//! A queue lives in shared memory that every process holding it maps (see `queue/ring.rs`): a
//! put encodes the value straight into the ring and a get decodes straight out of it, with no
//! system call unless someone has to sleep, and no feeder thread: what `put` returned from is
//! in the queue, so a process's exit is never held up by data nobody read (Python's is,
//! gh-73983). Producers and consumers have a lock each, both robust: a process that dies in
//! the middle of a put or a get leaves the queue consistent, and every item is delivered
//! exactly once.
//!
//! A queue knows which processes hold it, and each process how many handles it has (handles
//! are `Send` but not `Sync`, so every thread that can use a queue holds a handle of its own
//! and the count is exact). When a get would wait forever because the queue was shared with
//! other processes and none of them holds it any more (they ended, were killed, or dropped
//! it), and the waiting handle is this process's only one, the get fails with `Closed`
//! instead of hanging (Python's hangs, gh-87971); likewise a put on a full bounded queue, and
//! a `join` with items no one is left to finish. A queue that never left its process waits
//! as Python's does.

use std::borrow::Borrow;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind};
use crate::sys::proc;
use crate::wire::codec;

pub(crate) mod ring;
use ring::{Holder, Push, Ring, Wait};

const KIND_QUEUE: u32 = 20;
const KIND_SIMPLE: u32 = 21;
const KIND_JOINABLE: u32 = 22;

/// How long a get spins, watching the ring, before it sleeps.
const SPIN: Duration = Duration::from_micros(20);
/// How long a waiter sleeps before it first checks whether anyone else still holds the
/// queue; the interval doubles up to [`MAX_CHECK`].
const FIRST_CHECK: Duration = Duration::from_millis(5);
const MAX_CHECK: Duration = Duration::from_millis(100);

fn os(what: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::InvalidData {
        return Error::protocol(e.to_string());
    }
    Error::os(what.to_string(), e)
}

/// A process start time is kept to its low 42 bits (clock ticks: centuries), so that it packs
/// with a pid into one word.
const START_BITS: u32 = 42;

fn start_key(start: u64) -> u64 {
    start & ((1 << START_BITS) - 1)
}

/// This process, as the holders' table names it. Cached per pid (a fork child recomputes).
fn me() -> Holder {
    static ME: AtomicU64 = AtomicU64::new(0);
    let pid = proc::getpid();
    let packed = ME.load(Ordering::Relaxed);
    if packed != 0 && (packed >> START_BITS) as u32 == pid {
        return Holder {
            pid,
            start: start_key(packed),
        };
    }
    let Some((_, start)) = proc::process_start(pid) else {
        // No /proc to tell processes apart: never conclude that nobody else holds a queue.
        NO_PROC.store(true, Ordering::Relaxed);
        return Holder { pid, start: 0 };
    };
    let start = start_key(start);
    ME.store((u64::from(pid) << START_BITS) | start, Ordering::Relaxed);
    Holder { pid, start }
}

/// Set when `/proc` cannot say who is who.
static NO_PROC: AtomicBool = AtomicBool::new(false);

/// Whether the holder `h` still runs (not a zombie, and not another process with its pid).
fn alive(h: Holder) -> bool {
    match proc::process_start(h.pid) {
        Some((running, start)) => running && start_key(start) == h.start,
        // Unreadable: gone, unless kill(2) says it exists.
        None => {
            proc::kill(h.pid, 0).map_or_else(|e| e.raw_os_error() != Some(libc::ESRCH), |()| true)
        }
    }
}

/// Every queue this process holds, so that a child made with fork(2) (which inherits them all,
/// passed or not) is counted as a holder of each before it runs: it may reach one through a
/// static, and put before it ever says so itself.
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// The list of this process's queues, locked and held across a fork by `start::fork`, with a
/// strong reference to each: from before the fork until the child is counted as a holder
/// ([`LiveQueues::count_fork_child`]), each queue has one more handle in this process than
/// its users hold, so no get here concludes in that gap that nobody else can put (the child
/// exists, and may put, before it is counted).
pub(crate) struct LiveQueues {
    _list: MutexGuard<'static, Vec<Weak<Shared>>>,
    held: Vec<Arc<Shared>>,
}

pub(crate) fn live_queues() -> LiveQueues {
    let mut list = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|w| w.strong_count() > 0);
    let held = list.iter().filter_map(Weak::upgrade).collect();
    LiveQueues { _list: list, held }
}

impl LiveQueues {
    /// Counts the fork child `pid` as a holder of every queue this process holds: it inherited
    /// them, and may put or get before it ever says so itself. It does not mark them as
    /// shared: a child that never touches a queue leaves it as private as it was (the child
    /// marks it when it first uses it, see [`Shared::attach`]).
    pub(crate) fn count_fork_child(&mut self, pid: u32) {
        if self.held.is_empty() {
            return;
        }
        let Some((_, start)) = proc::process_start(pid) else {
            return;
        };
        let child = Holder {
            pid,
            start: start_key(start),
        };
        for shared in &self.held {
            let _ = shared.ring.attach(child, alive, false);
        }
    }
}

/// One process's handle on a queue's memory.
struct Shared {
    ring: Ring,
    kind: u32,
    /// `fork_generation() + 1` of the process counted in the holders' table for this handle
    /// (0: none). A fork child that inherited the handle counts itself on first use.
    attached: AtomicU64,
}

impl Shared {
    fn new(ring: Ring, kind: u32) -> Result<Arc<Shared>, Error> {
        let shared = Shared {
            ring,
            kind,
            attached: AtomicU64::new(0),
        };
        shared.attach()?;
        let shared = Arc::new(shared);
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&shared));
        Ok(shared)
    }

    fn create(kind: u32, maxsize: u64) -> Result<Arc<Shared>, Error> {
        let ring =
            Ring::create(kind, maxsize).map_err(|e| os("creating shared memory for a queue", e))?;
        Shared::new(ring, kind)
    }

    /// Counts this process as a holder, once per process. A handle this process inherited
    /// through fork (attached by an earlier generation) and now uses makes the queue shared
    /// with another process, as passing it would have: from now on the dead-holder rule
    /// applies to it.
    fn attach(&self) -> Result<(), Error> {
        let generation = proc::fork_generation() + 1;
        let was = self.attached.load(Ordering::Acquire);
        if was == generation {
            return Ok(());
        }
        if self
            .attached
            .compare_exchange(was, generation, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let inherited = was != 0;
            self.ring
                .attach(me(), alive, inherited)
                .map_err(|e| os("registering with a queue", e))?;
        }
        Ok(())
    }

    /// Whether nothing can ever arrive (or leave) unless this very call does it: the queue was
    /// shared with another process, no other process holds it, no handle to it is on its way
    /// to one, and this is this process's only handle.
    ///
    /// The last is exact because handles are not `Sync`: a thread that can use the queue
    /// holds a handle of its own (a clone, or one reached through a `Mutex`, which counts
    /// too), so a strong count of 1 means no other thread can reach it while this call runs.
    /// A caller that gets `true` tries once more before failing: a thread that just put (or
    /// got) and dropped its clone may have done so after the caller last looked.
    fn alone(self: &Arc<Self>) -> Result<bool, Error> {
        if Arc::strong_count(self) > 1 || NO_PROC.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let beyond = self
            .ring
            .shared_beyond(me(), alive)
            .map_err(|e| os("reading a queue's holders", e))?;
        // Pairs with the release of the handle dropped last (in this process, or through the
        // registry lock in another), so the try that follows sees what it did.
        std::sync::atomic::fence(Ordering::Acquire);
        Ok(!beyond)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.attached.load(Ordering::Acquire) == proc::fork_generation() + 1 {
            let _ = self.ring.detach(me());
        }
    }
}

/// When a waiter next checks whether anyone else holds the queue.
struct Patience {
    next: Instant,
    every: Duration,
}

impl Patience {
    fn new() -> Patience {
        Patience {
            next: Instant::now() + FIRST_CHECK,
            every: FIRST_CHECK,
        }
    }

    /// The deadline for the next sleep: the caller's, or the next check if sooner.
    fn until(&self, deadline: Option<Instant>) -> Instant {
        deadline.map_or(self.next, |d| d.min(self.next))
    }

    /// After a sleep: `true` when it is time to check (and the next check is scheduled).
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.every = (self.every * 2).min(MAX_CHECK);
        self.next = now + self.every;
        true
    }
}

/// The typed operations, shared by the three queue types.
struct Core<T> {
    shared: Arc<Shared>,
    _values: PhantomData<fn(T) -> T>,
    /// Not `Sync` (still `Send`): a thread uses a queue through a handle of its own, so the
    /// handle count that [`Shared::alone`] reads is exact.
    _one_thread: PhantomData<Cell<()>>,
}

impl<T> Clone for Core<T> {
    fn clone(&self) -> Self {
        Core {
            shared: self.shared.clone(),
            _values: PhantomData,
            _one_thread: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Core<T> {
    fn new(kind: u32, maxsize: u64) -> Result<Self, Error> {
        Ok(Core {
            shared: Shared::create(kind, maxsize)?,
            _values: PhantomData,
            _one_thread: PhantomData,
        })
    }

    fn ring(&self) -> &Ring {
        &self.shared.ring
    }

    /// Puts `value`, waiting for room until `deadline`; with `at_once`, not at all (the
    /// locks, only ever held briefly, are still waited for: a busy lock is not a full queue).
    fn put(&self, value: &T, deadline: Option<Instant>, at_once: bool) -> Result<(), Error> {
        let lock_deadline = if at_once { None } else { deadline };
        self.shared.attach()?;
        let len = codec::encoded_len(value)
            .map_err(|e| Error::codec(std::any::type_name::<T>(), "encode", e))?;
        let joinable = self.shared.kind == KIND_JOINABLE;
        let mut patience = Patience::new();
        // Taken before a check that may lead to sleep; not on the first try, which usually
        // succeeds (a ticket reads the consumers' cache line).
        let mut ticket = None;
        // Set when nobody else can get any more: one last try, then `Closed`.
        let mut last = false;
        loop {
            if self.ring().is_closed() {
                return Err(ErrorKind::Closed.into());
            }
            let pushed = {
                let Some(mut producer) = self
                    .ring()
                    .producer(lock_deadline)
                    .map_err(|e| os("locking a queue", e))?
                else {
                    return Err(ErrorKind::Full.into());
                };
                producer.push(len, joinable, lock_deadline, |buf| {
                    codec::encode_to_slice(buf, value)
                        .map_err(|e| Error::codec(std::any::type_name::<T>(), "encode", e))
                })?
            };
            match pushed {
                Push::Done => return Ok(()),
                Push::Busy => return Err(ErrorKind::Full.into()),
                Push::Full | Push::NoRoom => {}
            }
            if last {
                return Err(ErrorKind::Closed.into());
            }
            if at_once || deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ErrorKind::Full.into());
            }
            let Some(taken) = ticket else {
                ticket = Some(self.ring().ticket(Wait::Get));
                continue; // check again, now that a get will move the ticket on
            };
            let slept = self
                .ring()
                .sleep(Wait::Get, taken, Some(patience.until(deadline)))
                .map_err(|e| os("waiting for room in a queue", e))?;
            last = !slept && patience.due() && self.shared.alone()?;
            ticket = Some(self.ring().ticket(Wait::Get));
        }
    }

    /// Gets a value, waiting until `deadline` (`Some(now)`: not at all); `None` when the
    /// deadline passed.
    fn get(&self, deadline: Option<Instant>) -> Result<Option<T>, Error> {
        self.shared.attach()?;
        let mut patience = Patience::new();
        let mut spun = false;
        // As in `put`: no ticket on the first try (it reads the producers' cache line).
        let mut ticket = None;
        // Set when nobody else can put any more: one last try, then `Closed`.
        let mut last = false;
        loop {
            if let Some(value) = self.pop(deadline)? {
                return Ok(Some(value?));
            }
            if last || self.ring().is_closed() {
                return Err(ErrorKind::Closed.into());
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            if !spun {
                spun = true;
                let until = deadline.map_or(now + SPIN, |d| d.min(now + SPIN));
                while !self.ring().has_frames() && Instant::now() < until {
                    std::hint::spin_loop();
                }
                continue;
            }
            let Some(taken) = ticket else {
                ticket = Some(self.ring().ticket(Wait::Put));
                continue; // check again, now that a put will move the ticket on
            };
            let slept = self
                .ring()
                .sleep(Wait::Put, taken, Some(patience.until(deadline)))
                .map_err(|e| os("waiting for a queue", e))?;
            last = !slept && patience.due() && !self.ring().has_frames() && self.shared.alone()?;
            ticket = Some(self.ring().ticket(Wait::Put));
        }
    }

    /// Takes the next frame, if any, and decodes it (`Some(Err)`: it did not decode; it is
    /// consumed all the same).
    fn pop(&self, deadline: Option<Instant>) -> Result<Option<Result<T, Error>>, Error> {
        let Some(mut consumer) = self
            .ring()
            .consumer(deadline)
            .map_err(|e| os("locking a queue", e))?
        else {
            return Ok(None);
        };
        consumer
            .pop(|bytes| {
                codec::decode_shared::<T>(bytes)
                    .map_err(|e| Error::codec(std::any::type_name::<T>(), "decode", e))
            })
            .map_err(|e| os("reading a queue", e))
    }

    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ring = &self.shared.ring;
        let at = crate::handle::export_then(ring.as_fd(), || ring.lend())
            .map_err(serde::ser::Error::custom)?;
        at.serialize(s)
    }

    fn deserialize<'de, D: Deserializer<'de>>(d: D, kind: u32) -> Result<Self, D::Error> {
        let (at, token) = <(u32, u64)>::deserialize(d)?;
        let fd = crate::handle::import(at).map_err(serde::de::Error::custom)?;
        let ring = Ring::open(fd, kind).map_err(serde::de::Error::custom)?;
        let shared = Shared::new(ring, kind).map_err(serde::de::Error::custom)?;
        // Attached first, then no longer in flight: never a moment when neither counts.
        shared.ring.arrived(token);
        Ok(Core {
            shared,
            _values: PhantomData,
            _one_thread: PhantomData,
        })
    }
}

fn deadline_in(timeout: Duration) -> Option<Instant> {
    crate::sys::fd::deadline_after(timeout)
}

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
/// bounded queue when nobody can get, and [`JoinableQueue::join`] when nobody can finish an
/// item. Such a `Closed` says that nobody else can answer, not that the queue was closed:
/// [`is_closed`](Queue::is_closed) stays false, and this handle may still put and get.
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
    core: Core<T>,
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

    fn with_kind(kind: u32, maxsize: usize) -> Result<Queue<T>, Error> {
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

    /// Like [`put`](Queue::put), giving up with `Err(Full)` after `timeout`: early with
    /// `Closed` only when nobody else can ever get (see [`Queue`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let q = mproc::Queue::<u32>::bounded(1)?;
    /// q.put(1)?;
    /// let e = q.put_timeout(2, Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Full);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn put_timeout(&self, value: impl Borrow<T>, timeout: Duration) -> Result<(), Error> {
        self.core.put(value.borrow(), deadline_in(timeout), false)
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
            .get(deadline_in(timeout))?
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

/// A simpler queue: Python's `multiprocessing.SimpleQueue` (unbounded; `put`, `get`,
/// `is_empty`, `close`).
///
/// As [`Queue`]'s: a handle is `Send + Clone` but not `Sync` (give each thread a clone), and a
/// `get` fails with `Closed` early only once the queue was shared with another process and
/// nobody else can put (see [`Queue`]).
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

    /// Puts `value` (a `T` or a `&T`) at the back; as [`Queue::put`].
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

    /// Takes the item at the front, waiting for one; as [`Queue::get`].
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

    /// Closes it for every process; as [`Queue::close`].
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
        self.join_until(deadline_in(timeout))
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
                .map_err(|e| os("waiting for a queue's items to be done", e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A fork child exists, and may put, before the parent counts it as a holder: a get of
    /// the parent's in that gap must not conclude that nobody else can put. (Found when a
    /// thread's `get` on a shared queue raced another thread's `Fork` start: the child, which
    /// used the queue through a static later, was not counted yet, and the get said `Closed`.)
    #[test]
    fn a_fork_child_counts_as_a_holder_from_its_first_moment() {
        let q = Queue::<u8>::new().unwrap();
        // Shared with another process once, and nobody else holds it now: the dead-holder
        // rule applies to it.
        let ring = &q.core.shared.ring;
        ring.arrived(ring.lend());
        assert!(
            q.core.shared.alone().unwrap(),
            "set-up: nobody else holds it"
        );

        let mut live = live_queues();
        let pid = match proc::fork().unwrap() {
            proc::Forked::Child => {
                drop(live);
                std::thread::sleep(Duration::from_millis(200));
                let code = i32::from(q.put(7).is_err());
                proc::exit_now(code)
            }
            proc::Forked::Parent(pid) => pid,
        };
        // The gap `start::fork` has between fork(2) and counting the child.
        let alone_in_gap = q.core.shared.alone().unwrap();
        live.count_fork_child(pid);
        drop(live);
        let got = q.get_timeout(Duration::from_secs(10));
        let exit = proc::reap_blocking(pid).unwrap();
        assert!(!alone_in_gap, "the child was forked: it may put");
        assert_eq!(got.unwrap(), 7);
        assert_eq!(exit, proc::Exit::Code(0));
    }
}
