//! What a submitted job owes its caller: one slot per chunk, filled by the dispatcher, and the
//! handles that wait on them ([`AsyncResult`], and the `imap` iterators in `imap.rs`).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::dispatcher::Shared;
use super::task;
use crate::error::{Error, ErrorKind};
use crate::sys::fd;

/// A chunk's answer: the encoded per-item results, or an error for the whole chunk.
pub(crate) type ChunkOutcome = Result<Vec<u8>, Error>;

/// One chunk of a job.
#[derive(Debug)]
pub(crate) struct Slot {
    /// How many items the chunk holds.
    pub(crate) items: usize,
    /// Its answer, once it came.
    pub(crate) outcome: Option<ChunkOutcome>,
    /// Its dispatcher id (for cancelling).
    pub(crate) id: u64,
    /// Whether a stream has handed its items out (its bytes are dropped then).
    pub(crate) consumed: bool,
}

/// The shared state of one job.
pub(crate) struct JobState {
    inner: Mutex<JobInner>,
    changed: Condvar,
    /// Set once complete, for waiters that spin briefly before sleeping.
    done: AtomicBool,
}

/// How long a waiter stays awake (reading the lanes itself, or yielding its CPU) before it
/// sleeps: a few wake-ups' cost here, so a quick answer is picked up without the dispatcher
/// or the waiter having to be woken, even when the machine is busy.
const SPIN: Duration = Duration::from_micros(200);

#[derive(Default)]
pub(crate) struct JobInner {
    /// The chunks not yet consumed from the front; chunk `i` is at `i - base`. A stream drops
    /// consumed chunks from the front, so an endless `imap` holds only its window.
    pub(crate) slots: VecDeque<Slot>,
    pub(crate) base: usize,
    added: usize,
    filled: usize,
    /// Whether every chunk has been added (an `imap` adds them as it goes).
    sealed: bool,
    waker: Option<Waker>,
    callbacks: Vec<Callback>,
    /// Threads blocked in `wait_for` on something short of the whole job (an `imap` waiting
    /// for one chunk): a delivery that completes nothing wakes only them. Threads waiting for
    /// the whole job are woken once, when it completes.
    waiters: usize,
    /// For an unordered stream: answered chunks not yet handed out, in answer order.
    pub(crate) answered: Option<VecDeque<usize>>,
}

impl JobInner {
    fn complete(&self) -> bool {
        self.sealed && self.filled == self.added
    }

    /// How many chunks have been added so far.
    pub(crate) fn added(&self) -> usize {
        self.added
    }

    /// Chunk `index`, unless it was consumed and dropped.
    pub(crate) fn slot_mut(&mut self, index: usize) -> Option<&mut Slot> {
        let at = index.checked_sub(self.base)?;
        self.slots.get_mut(at)
    }

    /// Drops consumed chunks from the front.
    pub(crate) fn trim(&mut self) {
        while self.slots.front().is_some_and(|s| s.consumed) {
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

impl JobState {
    pub(crate) fn new() -> Arc<JobState> {
        Arc::new(JobState {
            inner: Mutex::new(JobInner::default()),
            changed: Condvar::new(),
            done: AtomicBool::new(false),
        })
    }

    /// A job whose answered chunks are queued in answer order (for `imap_unordered`).
    pub(crate) fn unordered() -> Arc<JobState> {
        let job = JobState::new();
        job.lock().answered = Some(VecDeque::new());
        job
    }

    /// Whether chunk `index` has its answer (or was consumed).
    pub(crate) fn is_answered(&self, index: usize) -> bool {
        let mut inner = self.lock();
        inner
            .slot_mut(index)
            .is_none_or(|s| s.outcome.is_some() || s.consumed)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, JobInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a chunk of `items` items with dispatcher id `id`; returns its index.
    pub(crate) fn add_chunk(&self, id: u64, items: usize) -> usize {
        let mut inner = self.lock();
        inner.slots.push_back(Slot {
            items,
            outcome: None,
            id,
            consumed: false,
        });
        inner.added += 1;
        inner.added - 1
    }

    /// No more chunks will be added.
    pub(crate) fn seal(&self) {
        let (done, waiters) = {
            let mut inner = self.lock();
            inner.sealed = true;
            (inner.complete(), inner.waiters)
        };
        if done {
            self.finished();
        } else if waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Fills chunk `index` unless it already has an answer (a cancelled chunk's late result is
    /// dropped here).
    pub(crate) fn deliver(&self, index: usize, outcome: ChunkOutcome) {
        let (done, waiters) = {
            let mut inner = self.lock();
            let Some(slot) = inner.slot_mut(index) else {
                return;
            };
            if slot.outcome.is_some() || slot.consumed {
                return;
            }
            slot.outcome = Some(outcome);
            inner.filled += 1;
            if let Some(answered) = &mut inner.answered {
                answered.push_back(index);
            }
            (inner.complete(), inner.waiters)
        };
        if done {
            self.finished();
        } else if waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Fills every chunk still waiting with `err`; returns their dispatcher ids.
    pub(crate) fn fail_waiting(&self, err: &Error) -> Vec<u64> {
        let (ids, done) = {
            let mut inner = self.lock();
            let mut ids = Vec::new();
            let base = inner.base;
            let mut failed = Vec::new();
            for (at, slot) in inner.slots.iter_mut().enumerate() {
                if slot.outcome.is_none() && !slot.consumed {
                    slot.outcome = Some(Err(err.clone()));
                    ids.push(slot.id);
                    failed.push(base + at);
                }
            }
            inner.filled += ids.len();
            if let Some(answered) = &mut inner.answered {
                answered.extend(failed);
            }
            (ids, inner.complete())
        };
        if done {
            self.finished();
        } else {
            self.changed.notify_all();
        }
        ids
    }

    fn finished(&self) {
        self.done.store(true, Ordering::Release);
        let (waker, callbacks) = {
            let mut inner = self.lock();
            (inner.waker.take(), std::mem::take(&mut inner.callbacks))
        };
        self.changed.notify_all();
        if let Some(w) = waker {
            // A waker's panic is the executor's: it must not take down whoever completed the
            // job (the dispatcher, or a waiter holding the pool's state).
            if let Err(payload) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()))
            {
                std::mem::forget(payload);
            }
        }
        if let Some(callbacks) = defer_callbacks(callbacks) {
            run_callbacks(callbacks);
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.lock().complete()
    }

    /// Waits until `ready(inner)` holds or `deadline` passes; returns the guard if it holds.
    /// `partial`: `ready` may hold before the job is complete (else only completion wakes).
    pub(crate) fn wait_for(
        &self,
        deadline: Option<Instant>,
        partial: bool,
        mut ready: impl FnMut(&JobInner) -> bool,
    ) -> Option<MutexGuard<'_, JobInner>> {
        let mut inner = self.lock();
        loop {
            if ready(&inner) {
                return Some(inner);
            }
            let left = match deadline {
                None => None,
                Some(d) => Some(d.checked_duration_since(Instant::now())?),
            };
            inner.waiters += usize::from(partial);
            inner = match left {
                None => self.changed.wait(inner).unwrap_or_else(|e| e.into_inner()),
                Some(left) => {
                    self.changed
                        .wait_timeout(inner, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            inner.waiters -= usize::from(partial);
        }
    }

    /// Waits for the whole job. For a short while the waiter does the dispatcher's reading
    /// itself, if the dispatcher sleeps (see [`Shared::help`]): a quick answer then reaches it
    /// without a system call on either side.
    fn wait_complete(
        &self,
        pool: &Shared,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'_, JobInner>> {
        if pool.foreign() {
            // A fork child: nothing here will ever complete it.
            let inner = self.lock();
            return inner.complete().then_some(inner);
        }
        let spin_until = Instant::now() + SPIN;
        let spin_until = deadline.map_or(spin_until, |d| d.min(spin_until));
        let done = || self.done.load(Ordering::Acquire);
        while !done() && Instant::now() < spin_until {
            // Someone else has the dispatcher's state: leave this CPU to whoever needs it.
            if !pool.help(&done, spin_until) {
                std::thread::yield_now();
            }
        }
        self.wait_for(deadline, false, JobInner::complete)
    }

    /// Runs `callback` once the job is complete: now (on this thread) if it already is, else
    /// on the thread that completes it.
    fn on_complete(&self, callback: Box<dyn FnOnce() + Send>) {
        let mut inner = self.lock();
        if inner.complete() {
            drop(inner);
            callback();
        } else {
            inner.callbacks.push(callback);
        }
    }
}

type Callback = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Set while a waiting thread helps the dispatcher: callbacks of jobs it completes wait
    /// here until it has let go of the dispatcher's state (a callback may use the pool).
    static DEFERRED: std::cell::RefCell<Option<Vec<Callback>>> =
        const { std::cell::RefCell::new(None) };
}

/// Keeps `callbacks` for later if this thread defers them; else gives them back to run now.
fn defer_callbacks(callbacks: Vec<Callback>) -> Option<Vec<Callback>> {
    DEFERRED.with(|d| match d.borrow_mut().as_mut() {
        Some(kept) => {
            kept.extend(callbacks);
            None
        }
        None => Some(callbacks),
    })
}

/// Runs `f` with this thread's callbacks deferred; returns them.
pub(crate) fn deferring_callbacks(f: impl FnOnce()) -> Vec<Callback> {
    crate::handle::scoped(&DEFERRED, Vec::new(), f)
        .1
        .unwrap_or_default()
}

/// Runs callbacks, each under its own `catch_unwind`.
pub(crate) fn run_callbacks(callbacks: Vec<Callback>) {
    for cb in callbacks {
        // A callback's panic is its own: it must not take the pool's dispatcher with it.
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(cb)) {
            std::mem::forget(payload);
        }
    }
}

/// Turns a complete job's chunks into the caller's value.
pub(crate) type Decoder<R> = fn(&VecDeque<Slot>, &str) -> Result<R, Error>;

/// One value: the first item of the only chunk.
pub(crate) fn decode_one<R: DeserializeOwned>(
    slots: &VecDeque<Slot>,
    target: &str,
) -> Result<R, Error> {
    let mut all = decode_all::<R>(slots, target)?;
    all.pop()
        .ok_or_else(|| Error::protocol("a task's answer held no value"))
}

/// Every item of every chunk, in order; the first failure (by position) is the error.
pub(crate) fn decode_all<R: DeserializeOwned>(
    slots: &VecDeque<Slot>,
    target: &str,
) -> Result<Vec<R>, Error> {
    let mut out = Vec::with_capacity(slots.iter().map(|s| s.items).sum());
    for slot in slots {
        for item in decode_slot::<R>(slot, target) {
            out.push(item?);
        }
    }
    Ok(out)
}

/// A chunk's items: each value or its panic; a whole-chunk failure repeats for every item.
pub(crate) fn decode_slot<R: DeserializeOwned>(slot: &Slot, target: &str) -> Vec<Result<R, Error>> {
    let failed = |e: Error| (0..slot.items).map(|_| Err(e.clone())).collect();
    match &slot.outcome {
        None => failed(Error::from(ErrorKind::NotReady)),
        Some(Err(e)) => failed(e.clone()),
        Some(Ok(bytes)) => match task::decode_chunk::<R>(bytes, target) {
            Err(e) => failed(e),
            Ok(items) if items.len() != slot.items => failed(Error::protocol(format!(
                "a chunk of {} items came back with {} results",
                slot.items,
                items.len()
            ))),
            Ok(items) => items
                .into_iter()
                .map(|r| r.map_err(|p| ErrorKind::Panicked(*p).into()))
                .collect(),
        },
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
    job: Arc<JobState>,
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
            job,
            decode,
            target,
            pool,
            _value: PhantomData,
        }
    }

    /// Whether the task has finished (successfully or not). Never blocks.
    ///
    /// ```
    /// fn one() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(one, ())?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn ready(&self) -> bool {
        self.job.is_complete()
    }

    /// Waits until the task has finished.
    ///
    /// ```
    /// fn one() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(one, ())?;
    /// r.wait();
    /// assert!(r.ready());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait(&self) {
        let _ = self.job.wait_complete(&self.pool, None);
    }

    /// Waits until the task has finished or `timeout` passes; `true` if it finished.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap() {
    ///     std::thread::sleep(Duration::from_millis(300));
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(nap, ())?;
    /// assert!(!r.wait_timeout(Duration::from_millis(10)));
    /// assert!(r.wait_timeout(Duration::from_secs(30)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job
            .wait_complete(&self.pool, fd::deadline_after(timeout))
            .is_some()
    }

    /// Whether the task finished without an error.
    ///
    /// # Errors
    ///
    /// `NotReady` while it has not finished.
    ///
    /// ```
    /// fn boom() {
    ///     panic!("no");
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(boom, ())?;
    /// r.wait();
    /// assert_eq!(r.successful()?, false);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn successful(&self) -> Result<bool, Error>
    where
        R: DeserializeOwned,
    {
        let inner = self.job.lock();
        if !inner.complete() {
            return Err(ErrorKind::NotReady.into());
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
        let ids = self.job.fail_waiting(&ErrorKind::Cancelled.into());
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
    /// Keep it short: whoever runs it waits for it.
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
        let job = Arc::clone(&self.job);
        let (decode, target) = (self.decode, self.target);
        self.job.on_complete(Box::new(move || {
            let value = decode(&job.lock().slots, target);
            callback(value)
        }));
    }
}

impl<R: DeserializeOwned> AsyncResult<R> {
    /// Waits for the task and returns its value. May be called again: each call decodes the
    /// stored answer anew. A wait spins for up to 50 µs before it sleeps, so a quick answer
    /// is picked up without a wake-up.
    ///
    /// # Errors
    ///
    /// `Panicked` if the target panicked; `WorkerLost` if its worker died; `TaskTimedOut`;
    /// `Cancelled`; `Terminated` if the pool was terminated first.
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
        match self.job.wait_complete(&self.pool, None) {
            Some(inner) => (self.decode)(&inner.slots, self.target),
            None => Err(Shared::foreign_error()), // only without a deadline in a fork child
        }
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
        match self
            .job
            .wait_complete(&self.pool, fd::deadline_after(timeout))
        {
            Some(inner) => (self.decode)(&inner.slots, self.target),
            None if self.pool.foreign() => Err(Shared::foreign_error()),
            None => Err(ErrorKind::Timeout.into()),
        }
    }
}

impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.job.lock();
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
