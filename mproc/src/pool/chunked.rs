//! [`Chunked`]: the map family (`map`, `starmap`, `imap` and their `_async` forms) with a
//! chunk size, chosen or Python's default: splits the input into chunks and submits them.

use std::any::type_name;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::dispatcher::{Call, Chunk, Shared, Waited};
use super::imap::{self, Imap};
use super::job::{self, JobState};
use super::result::{self, AsyncResult};
use super::task;
use crate::error::Error;
use crate::wire::target::Target;

/// A `map` submits its chunks in batches of about this many bytes (or chunks), so workers
/// start on the first while the rest are encoded.
const SUBMIT_BYTES: usize = 256 * 1024;
const SUBMIT_CHUNKS: usize = 16384;

/// Marks a job that is still submitting chunks, like an `imap`, for as long as it lives.
struct Stream<'a>(&'a Shared);

impl<'a> Stream<'a> {
    fn open(shared: &'a Shared) -> Stream<'a> {
        shared.stream_opened();
        Stream(shared)
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        self.0.stream_closed();
    }
}

/// The map family with a chosen chunk size; made by [`Pool::chunksize`](crate::Pool::chunksize).
///
/// ```
/// fn inc(n: u32) -> u32 {
///     n + 1
/// }
/// let pool = mproc::Pool::new(2)?;
/// let by_ten = pool.chunksize(10);
/// assert_eq!(by_ten.map(inc, 0..3)?, [1, 2, 3]);
/// assert_eq!(by_ten.imap(inc, 0..3)?.count(), 3);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct Chunked<'p> {
    shared: &'p Arc<Shared>,
    processes: usize,
    size: Option<usize>,
    /// Its own time limit per task (`pool.timeout(d)`), instead of the pool's `task_timeout`.
    timeout: Option<Duration>,
    /// Whether it draws a progress bar on stderr.
    #[cfg(feature = "progress")]
    bar: bool,
}

impl std::fmt::Debug for Chunked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunked")
            .field("processes", &self.processes)
            .field("size", &self.size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<'p> Chunked<'p> {
    /// The map family of a pool (`shared`, with `processes` workers) by chunks of `size`
    /// (`None`: Python's default).
    pub(super) fn new(shared: &'p Arc<Shared>, processes: usize, size: Option<usize>) -> Self {
        Chunked {
            shared,
            processes,
            size,
            timeout: None,
            #[cfg(feature = "progress")]
            bar: false,
        }
    }

    /// The same calls by chunks of `n` items (`map`'s `chunksize`; `0` is refused when a map
    /// is called).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// let quick = pool.timeout(Duration::from_secs(5)).chunksize(10);
    /// assert_eq!(quick.map(inc, 0..3)?, [1, 2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn chunksize(self, n: usize) -> Chunked<'p> {
        Chunked {
            size: Some(n),
            ..self
        }
    }

    /// The same calls with their own time limit per task (per item of a map, as the pool's
    /// `task_timeout`), in place of the pool's: a task still running after `timeout` has its
    /// worker killed and replaced, and fails with `TaskTimedOut`; the pool's other calls are
    /// not affected. [`Pool::timeout`](crate::Pool::timeout) is the same with the default
    /// chunk size.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let hasty = pool.chunksize(1).timeout(Duration::from_millis(200));
    /// let e = hasty.apply(nap, (60_000,)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::TaskTimedOut);
    /// assert_eq!(pool.apply(nap, (300,))?, 300); // no limit here
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn timeout(self, timeout: Duration) -> Chunked<'p> {
        Chunked {
            timeout: Some(timeout),
            ..self
        }
    }

    /// [`Pool::apply`](crate::Pool::apply) under this view's time limit (the chunk size does
    /// not apply: one call is one task).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn one() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// assert_eq!(pool.timeout(Duration::from_secs(5)).apply(one, ())?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn apply<F, A>(&self, f: F, args: A) -> Result<F::Output, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        let target = type_name::<F>();
        // As `apply_async` and its `get`, but a worker that holds nothing may be handed the
        // task and read by this thread with no job made (`Shared::submit_waited`).
        match self.shared.submit_waited(self.call::<F, A>(&args, target)?, result::SPIN)? {
            Waited::Answered(answered) => job::decode_answer::<F::Output>(answered, target),
            Waited::Job(job) => AsyncResult::new(
                job,
                job::decode_one::<F::Output>,
                target,
                Arc::clone(self.shared),
            )
            .get(),
        }
    }

    /// [`Pool::apply_async`](crate::Pool::apply_async) under this view's time limit.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn one() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.timeout(Duration::from_secs(5)).apply_async(one, ())?;
    /// assert_eq!(r.get()?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn apply_async<F, A>(&self, f: F, args: A) -> Result<AsyncResult<F::Output>, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = f;
        let target = type_name::<F>();
        let job = self.shared.submit_call(self.call::<F, A>(&args, target)?)?;
        Ok(AsyncResult::new(
            job,
            job::decode_one::<F::Output>,
            target,
            Arc::clone(self.shared),
        ))
    }

    /// A call of `F` on `args`, its arguments encoded, once the pool is seen to take it.
    fn call<F, A>(&self, args: &A, target: &str) -> Result<Call, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        self.shared.check_open()?;
        let (payload, fds) =
            task::encode_chunk(std::slice::from_ref(args), target, self.shared.large_in_files())?;
        Ok(Call {
            id: self.shared.chunk_id(),
            entry: task::chunk_entry::<F, A>(),
            payload,
            handles: fds,
            timeout: self.timeout,
        })
    }

    /// The same map family, drawing a progress bar on stderr (feature `progress`): items
    /// done of all, rate and ETA, only when stderr is a terminal. `map` and `starmap` draw it
    /// while they wait, their `_async` forms from a thread of their own until the job is
    /// done, `imap` and `imap_unordered` as their items are taken (a count with a spinner
    /// when the input's length is unknown). [`Pool::progress`](crate::Pool::progress) is
    /// the same with the default chunk size.
    ///
    /// ```
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.chunksize(10).progress().map(inc, 0..100)?.len(), 100);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn progress(self) -> Chunked<'p> {
        Chunked { bar: true, ..self }
    }

    /// Python's rule for `map` when no size was chosen: `ceil(len / (4 * processes))`.
    fn size_for(&self, len: usize) -> Result<usize, Error> {
        match self.size {
            Some(0) => Err(Error::invalid("chunksize must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(len.div_ceil(4 * self.processes).max(1)),
        }
    }

    /// [`Pool::map`](crate::Pool::map) with this chunk size.
    ///
    /// ```
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.chunksize(1).map(inc, [1, 2])?, [2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn map<F, T, I>(&self, f: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
    {
        self.starmap(f, items.into_iter().map(|t| (t,)))
    }

    /// [`Pool::map_async`](crate::Pool::map_async) with this chunk size.
    ///
    /// ```
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.chunksize(1).map_async(inc, [1, 2])?.get()?, [2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn map_async<F, T, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
    {
        self.starmap_async(f, items.into_iter().map(|t| (t,)))
    }

    /// [`Pool::starmap`](crate::Pool::starmap) with this chunk size.
    ///
    /// ```
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.chunksize(1).starmap(add, [(1, 1)])?, [2]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn starmap<F, A, I>(&self, f: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let r = self.submit_all(f, items)?;
        #[cfg(feature = "progress")]
        if self.bar {
            let bar = super::progress::Bar::new(Some(r.progress().total));
            if !bar.is_hidden() {
                bar.follow(r.job());
            }
        }
        r.get()
    }

    /// [`Pool::starmap_async`](crate::Pool::starmap_async) with this chunk size.
    ///
    /// ```
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.chunksize(1).starmap_async(add, [(1, 1)])?.get()?, [2]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn starmap_async<F, A, I>(
        &self,
        f: F,
        items: I,
    ) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let r = self.submit_all(f, items)?;
        #[cfg(feature = "progress")]
        if self.bar {
            super::progress::follow_in_background(r.job());
        }
        Ok(r)
    }

    /// Splits `items` into chunks and submits them all.
    fn submit_all<F, A, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        let _ = f;
        self.shared.check_open()?;
        let items: Vec<A> = items.into_iter().collect();
        let size = self.size_for(items.len())?;
        let target = type_name::<F>();
        let entry = task::chunk_entry::<F, A>();
        let job = JobState::new();
        // Chunks go to the workers in batches as they are encoded, so the workers start while
        // the rest is still being encoded; each batch joins the job under one lock.
        let mut pending = Vec::new();
        let mut bytes = 0;
        let mut first = true;
        let mut pieces = items.chunks(size).peekable();
        // Until the last batch is in, a concurrent `close` must not end the pool under it.
        let _stream = Stream::open(self.shared);
        while let Some(piece) = pieces.next() {
            let in_file = self.shared.large_in_files();
            let (payload, fds) = match task::encode_chunk(piece, target, in_file) {
                Ok(encoded) => encoded,
                Err(e) => {
                    // Chunks already handed out are withdrawn; running ones finish.
                    self.shared.withdraw(job.fail_waiting(&e));
                    return Err(e);
                }
            };
            bytes += payload.len();
            pending.push((self.shared.chunk_id(), piece.len(), payload, fds));
            let last = pieces.peek().is_none();
            if last || bytes >= SUBMIT_BYTES || pending.len() >= SUBMIT_CHUNKS {
                let at = job.add_chunks(pending.iter().map(|&(id, items, ..)| (id, items)));
                let batch = pending
                    .drain(..)
                    .enumerate()
                    .map(|(i, (id, items, payload, fds))| {
                        Chunk::new(id, entry, payload, Arc::clone(&job), at + i, items)
                            .with_handles(fds)
                            .with_timeout(self.timeout)
                    })
                    .collect::<Vec<_>>();
                if last {
                    job.seal();
                }
                self.shared.submit(batch, std::mem::take(&mut first))?;
                bytes = 0;
            }
        }
        if first {
            job.seal(); // no items: complete at once
        }
        Ok(AsyncResult::new(
            job,
            job::decode_all::<F::Output>,
            target,
            Arc::clone(self.shared),
        ))
    }

    /// [`Pool::imap`](crate::Pool::imap) with this chunk size.
    ///
    /// ```
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// let v: Vec<u32> = pool.chunksize(4).imap(inc, 0..10)?.collect::<Result<_, _>>()?;
    /// assert_eq!(v, (1..11).collect::<Vec<_>>());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap<'a, F, T, I>(&self, f: F, items: I) -> Result<Imap<'a, F::Output>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'a,
    {
        self.stream(f, items, true)
    }

    /// [`Pool::imap_unordered`](crate::Pool::imap_unordered) with this chunk size.
    ///
    /// ```
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.chunksize(4).imap_unordered(inc, 0..10)?.count(), 10);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap_unordered<'a, F, T, I>(&self, f: F, items: I) -> Result<Imap<'a, F::Output>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'a,
    {
        self.stream(f, items, false)
    }

    fn stream<'a, F, T, I>(
        &self,
        f: F,
        items: I,
        ordered: bool,
    ) -> Result<Imap<'a, F::Output>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'a,
    {
        let _ = f;
        self.shared.check_open()?;
        let size = match self.size {
            Some(0) => return Err(Error::invalid("chunksize must be at least 1")),
            Some(n) => n,
            None => 1,
        };
        let target = type_name::<F>();
        let mut input = items.into_iter().map(|t| (t,));
        let len = match input.size_hint() {
            (low, Some(high)) if low == high => Some(low),
            _ => None,
        };
        let in_file = self.shared.large_in_files();
        let feed: imap::Feed<'a> = Box::new(std::iter::from_fn(move || {
            let piece: Vec<(T,)> = input.by_ref().take(size).collect();
            (!piece.is_empty()).then(|| {
                let n = piece.len();
                task::encode_chunk(&piece, target, in_file)
                    .map(|enc| (enc, n))
                    .map_err(|e| (e, n))
            })
        }));
        // Enough in flight to keep every worker's window full twice over.
        let ahead = self.processes * 4;
        let stream = Imap::new(
            Arc::clone(self.shared),
            feed,
            task::chunk_entry::<F, (T,)>(),
            target,
            ordered,
            ahead,
            len,
        )
        .with_timeout(self.timeout);
        #[cfg(feature = "progress")]
        let stream = if self.bar {
            stream.with_bar(super::progress::Bar::new(len))
        } else {
            stream
        };
        Ok(stream)
    }
}
