//! [`AsyncResult`]: the handle on one submitted job, waiting on its [`JobState`] (`job.rs`)
//! and, while it waits, helping the dispatcher read the workers' lanes.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::dispatcher::Shared;
use super::job::{Decoder, JobInner, JobState, Watch};
use crate::error::{Error, ErrorKind};
use crate::sys::fd;

/// How long a waiter stays awake (reading the lanes itself, or yielding its CPU) before it
/// sleeps: a few wake-ups' cost here, so a quick answer is picked up without the dispatcher
/// or the waiter having to be woken, even when the machine is busy.
pub(crate) const SPIN: Duration = Duration::from_micros(200);

/// Waits for the whole job. For a short while the waiter does the dispatcher's reading
/// itself, if the dispatcher sleeps (see [`Shared::help`]): a quick answer then reaches it
/// without a system call on either side.
///
/// # Errors
///
/// `Timeout` once `deadline` has passed; `InvalidArgument` where nothing could complete the
/// job while this thread waits: in a fork child of the pool's process, and on the pool's own
/// thread (nothing reads the workers while a callback runs there).
fn wait_complete<'a>(
    job: &'a JobState,
    pool: &Shared,
    deadline: Option<Instant>,
) -> Result<MutexGuard<'a, JobInner>, Error> {
    let stuck = if pool.foreign() {
        Some(Shared::foreign_error as fn() -> Error)
    } else if pool.on_own_thread() {
        Some(Shared::own_thread_error as fn() -> Error)
    } else {
        None
    };
    if let Some(why) = stuck {
        // Nothing here will ever complete it.
        let inner = job.lock();
        return if inner.complete() { Ok(inner) } else { Err(why()) };
    }
    let mut now = super::job::placed_at(job).unwrap_or_else(Instant::now);
    let spin_until = deadline.map_or(now + SPIN, |d| d.min(now + SPIN));
    let done = || job.is_done();
    while !done() && now < spin_until {
        // Someone else has the dispatcher's state: leave this CPU to whoever needs it.
        if !pool.help(&done, now, spin_until) {
            std::thread::yield_now();
        }
        if done() {
            break; // without a look at the clock
        }
        now = Instant::now();
    }
    job.wait_for(deadline, false, JobInner::complete)
        .ok_or_else(|| ErrorKind::Timeout.into())
}

/// How far an [`AsyncResult`] has got ([`AsyncResult::progress`]): `done` of `total` items
/// have finished. Displays as `done/total`.
///
/// ```
/// let p = mproc::Progress { done: 3, total: 10 };
/// assert_eq!(p.to_string(), "3/10");
/// assert!(!p.is_finished());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Progress {
    /// Items finished, successfully or not.
    pub done: usize,
    /// All items of the task.
    pub total: usize,
}

impl Progress {
    /// Whether every item has finished.
    ///
    /// ```
    /// assert!(mproc::Progress { done: 2, total: 2 }.is_finished());
    /// ```
    pub fn is_finished(&self) -> bool {
        self.done == self.total
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.done, self.total)
    }
}

/// The result of a task submitted to a [`Pool`](crate::Pool), as Python's `AsyncResult`.
///
/// ```
/// use std::time::Duration;
///
/// fn slow_square(n: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(50));
///     n * n
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let r = pool.apply_async(slow_square, (7,))?;
/// assert!(!r.ready());
/// assert_eq!(r.get()?, 49);
/// assert!(r.ready());
/// assert_eq!(r.successful()?, true);
/// assert_eq!(r.get()?, 49); // again
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// It is also a [`Future`] whose output is `Result<R>`, usable under any executor:
///
/// ```
/// fn double(n: i32) -> i32 {
///     n * 2
/// }
/// let pool = mproc::Pool::new(1)?;
/// let r = pool.apply_async(double, (21,))?;
/// assert_eq!(futures::executor::block_on(r)?, 42);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct AsyncResult<R> {
    /// Its job: `None` only once dropped (see its `Drop`).
    held: Option<Arc<JobState>>,
    decode: Decoder<R>,
    target: &'static str,
    pool: Arc<Shared>,
    _value: PhantomData<fn() -> R>,
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(
        job: Arc<JobState>,
        decode: Decoder<R>,
        target: &'static str,
        pool: Arc<Shared>,
    ) -> Self {
        AsyncResult {
            held: Some(job),
            decode,
            target,
            pool,
            _value: PhantomData,
        }
    }

    /// The job it waits on.
    pub(crate) fn job(&self) -> &Arc<JobState> {
        self.held.as_ref().expect("a result's job is taken only as it is dropped")
    }

    /// Tells `watch` (with `index`) once the task has finished (`as_completed`, `wait`): at
    /// once in a fork child of the pool's process, where nothing will ever finish it (its
    /// `get` says so without waiting).
    pub(crate) fn watch(&self, watch: &Arc<Watch>, index: usize) {
        if self.pool.foreign() {
            watch.push(index);
        } else {
            self.job().watch(watch, index);
        }
    }

    /// How far it has got: items finished (successfully or not) out of all its items. A
    /// `map_async` counts its items as each chunk's answer comes (so by chunks of its
    /// chunk size); an `apply_async` is `0/1`, then `1/1`. Never blocks. For a bar on
    /// stderr, see `Pool::progress` (feature `progress`).
    ///
    /// ```
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// let r = pool.chunksize(10).map_async(inc, 0..100)?;
    /// let p = r.progress();
    /// assert_eq!(p.total, 100);
    /// assert!(p.done <= 100 && p.done % 10 == 0);
    /// r.wait()?;
    /// assert_eq!(r.progress().to_string(), "100/100");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn progress(&self) -> Progress {
        let (done, total) = self.job().progress();
        Progress { done, total }
    }

    /// Whether the task has finished (successfully or not). Never blocks.
    ///
    /// ```
    /// fn one() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(one, ())?;
    /// r.wait()?;
    /// assert!(r.ready());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn ready(&self) -> bool {
        self.job().is_complete()
    }

    /// Waits until the task has finished (successfully or not: [`get`](Self::get) says which).
    ///
    /// # Errors
    ///
    /// `InvalidArgument` in a fork child of the pool's process, where nothing will ever
    /// finish the task.
    ///
    /// ```
    /// fn one() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(one, ())?;
    /// r.wait()?;
    /// assert!(r.ready());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait(&self) -> Result<(), Error> {
        self.wait_until(None)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` with `Err(Timeout)`; the task
    /// goes on and the call may be repeated.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap() {
    ///     std::thread::sleep(Duration::from_millis(300));
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(nap, ())?;
    /// let e = r.wait_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// r.wait_timeout(Duration::from_secs(30))?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.wait_until(fd::deadline_after(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<(), Error> {
        wait_complete(self.job(), &self.pool, deadline).map(drop)
    }

    /// Whether the task finished without an error.
    ///
    /// # Errors
    ///
    /// `NotReady` while it has not finished; `InvalidArgument` in a fork child of the process
    /// that got the result, if the result is large (256 KiB or more encoded): it stays in
    /// shared memory the child does not inherit, so it can be read in the parent only (a
    /// smaller one is read in either).
    ///
    /// ```
    /// fn boom() {
    ///     panic!("no");
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(boom, ())?;
    /// r.wait()?;
    /// assert_eq!(r.successful()?, false);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn successful(&self) -> Result<bool, Error>
    where
        R: DeserializeOwned,
    {
        let inner = self.job().lock();
        if !inner.complete() {
            return Err(ErrorKind::NotReady.into());
        }
        // A value that cannot be read here is not a failure of the task.
        for slot in inner.slots.iter() {
            if let Some(Ok(answered)) = &slot.outcome {
                answered.bytes.readable()?;
            }
        }
        Ok((self.decode)(&inner.slots, self.target).is_ok())
    }

    /// Cancels the task: if it was still queued it never runs; if it was running, its worker
    /// is killed and replaced. Returns `false` if it had already finished (then nothing
    /// changes). After `true`, [`get`](Self::get) gives `Err(Cancelled)`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn sleepy() {
    ///     std::thread::sleep(Duration::from_secs(60));
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(sleepy, ())?;
    /// assert!(r.cancel());
    /// assert_eq!(r.get().unwrap_err().kind(), &mproc::ErrorKind::Cancelled);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn cancel(&self) -> bool {
        let ids = self.job().fail_waiting(&ErrorKind::Cancelled.into());
        let any = !ids.is_empty();
        if any {
            self.pool.cancel(ids);
        }
        any
    }

    /// Runs `callback` with the outcome once the task has finished: Python's `callback` and
    /// `error_callback` in one. It runs on the thread that sees the answer first: the pool's
    /// dispatcher thread, or a thread waiting in `get`/`wait` that picked the answer up
    /// itself (after it has let go of the pool), or this thread right away if the task has
    /// already finished. So, unlike CPython's single result-handler thread, callbacks of
    /// different tasks may run at the same time and out of completion order; each runs once.
    /// Keep it short: whoever runs it waits for it. It may submit to the pool, but not wait
    /// for the pool's tasks: on the pool's thread, `get` (so `apply`, `map`) of a task not
    /// finished gives `Err(InvalidArgument)` at once instead of waiting for itself (so do
    /// `wait` and an `imap`'s next item). [`as_completed`](crate::as_completed) and
    /// [`wait`](crate::wait) have no error to give, and awaiting the task as a future blocks
    /// its executor: there they would wait for ever, as CPython's result handler does; a
    /// callback that needs several results should count them as they come instead.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// fn triple(n: u32) -> u32 {
    ///     n * 3
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let (tx, rx) = mpsc::channel();
    /// pool.apply_async(triple, (5,))?.on_complete(move |r| tx.send(r).unwrap());
    /// assert_eq!(rx.recv().unwrap()?, 15);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn on_complete(&self, callback: impl FnOnce(Result<R, Error>) + Send + 'static)
    where
        R: DeserializeOwned + 'static,
    {
        let job = Arc::clone(self.job());
        let (decode, target) = (self.decode, self.target);
        self.job().on_complete(Box::new(move || {
            let value = decode(&job.lock().slots, target);
            callback(value)
        }));
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits for the task and returns its value. May be called again: each call decodes the
    /// stored answer anew. A wait spins for up to 200 µs before it sleeps, so a quick answer
    /// is picked up without a wake-up.
    ///
    /// # Errors
    ///
    /// `Panicked` if the target panicked; `WorkerLost` if its worker died; `TaskTimedOut`;
    /// `Cancelled`; `Terminated` if the pool was terminated first. In a fork child of the
    /// pool's process, `InvalidArgument`: for a task not finished at the fork (nothing will
    /// finish it there), and for a large value (256 KiB or more encoded), which stays in
    /// shared memory the child does not inherit (the parent reads it; a smaller value is read
    /// in either). `InvalidArgument` too for a task not finished, asked for in a callback
    /// that runs on the pool's own thread (see [`on_complete`](Self::on_complete)): it would
    /// wait for itself.
    ///
    /// ```
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// assert_eq!(pool.apply_async(add, (2, 3))?.get()?, 5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get(&self) -> Result<R, Error> {
        let inner = wait_complete(self.job(), &self.pool, None)?;
        (self.decode)(&inner.slots, self.target)
    }

    /// Like [`get`](Self::get), but gives up after `timeout` with `Err(Timeout)`; the task
    /// goes on and the call may be repeated.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap() -> u8 {
    ///     std::thread::sleep(Duration::from_millis(300));
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(nap, ())?;
    /// assert_eq!(r.get_timeout(Duration::from_millis(10)).unwrap_err().kind(), &mproc::ErrorKind::Timeout);
    /// assert_eq!(r.get_timeout(Duration::from_secs(30))?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, Error> {
        let inner = wait_complete(self.job(), &self.pool, fd::deadline_after(timeout))?;
        (self.decode)(&inner.slots, self.target)
    }
}

impl<R> Drop for AsyncResult<R> {
    fn drop(&mut self) {
        // Its job, if no one else holds it, is kept for this thread's next call
        // (`job::recycle`).
        if let Some(job) = self.held.take() {
            super::job::recycle(job);
        }
    }
}

impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.job().lock();
        if inner.complete() {
            return Poll::Ready((self.decode)(&inner.slots, self.target));
        }
        if self.pool.foreign() {
            return Poll::Ready(Err(Shared::foreign_error()));
        }
        inner.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<R> fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncResult")
            .field("target", &self.target)
            .field("ready", &self.ready())
            .finish()
    }
}
