//! [`as_completed`] and [`wait`], as Python's `concurrent.futures` has them: one thread
//! watches many [`AsyncResult`]s at once and sleeps until one lands (each job, once complete,
//! queues its index in a shared `Watch`, `job.rs`). No polling.

use std::iter::FusedIterator;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::job::Watch;
use super::result::AsyncResult;
use crate::error::{Error, ErrorKind};

/// Watches every result of `results`: each index lands in the watch once its task has
/// finished (at once for those already finished, in their order).
fn watch_all<R>(results: &[AsyncResult<R>]) -> Arc<Watch> {
    let watch = Arc::new(Watch::default());
    for (i, r) in results.iter().enumerate() {
        r.watch(&watch, i);
    }
    watch
}

/// Yields `results` as their tasks finish, fastest first, as Python's
/// `concurrent.futures.as_completed`: each as `(index, &result)`, its index in `results`.
/// Those already finished come first, in their order. The thread sleeps until a result lands
/// (no polling); results of several pools may be mixed.
///
/// A result whose task never finishes blocks the iteration: see
/// [`as_completed_timeout`] for a bounded form.
///
/// ```
/// use std::time::Duration;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let pool = mproc::Pool::new(3)?;
/// let results = [300, 10, 150]
///     .into_iter()
///     .map(|ms| pool.apply_async(nap, (ms,)))
///     .collect::<Result<Vec<_>, _>>()?;
/// let order: Vec<usize> = mproc::as_completed(&results).map(|(i, _)| i).collect();
/// assert_eq!(order, [1, 2, 0]); // the 10 ms task first, the 300 ms one last
/// for (i, r) in mproc::as_completed(&results) {
///     println!("task {i}: {}", r.get()?); // all finished by now: input order
/// }
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn as_completed<R>(results: &[AsyncResult<R>]) -> AsCompleted<'_, R> {
    AsCompleted {
        results,
        watch: watch_all(results),
        left: results.len(),
    }
}

/// Like [`as_completed`], within `timeout` in all: once it has passed with results still
/// running, the iterator yields one `Err(Timeout)` and ends, as Python's `as_completed(fs,
/// timeout)` raises `TimeoutError`. The results left are still running; wait for them again
/// if you like.
///
/// ```
/// use std::time::Duration;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let results = vec![pool.apply_async(nap, (10,))?, pool.apply_async(nap, (5_000,))?];
/// let mut each = mproc::as_completed_timeout(&results, Duration::from_secs(1));
/// let (first, r) = each.next().unwrap()?;
/// assert_eq!((first, r.get()?), (0, 10));
/// let e = each.next().unwrap().unwrap_err();
/// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
/// assert!(each.next().is_none());
/// assert!(!results[1].ready());
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn as_completed_timeout<R>(
    results: &[AsyncResult<R>],
    timeout: Duration,
) -> AsCompletedTimeout<'_, R> {
    AsCompletedTimeout {
        inner: as_completed(results),
        // Too far to represent: no deadline at all.
        deadline: Instant::now().checked_add(timeout),
        timed_out: false,
    }
}

/// The iterator [`as_completed`] returns: `(index, &result)` in finishing order. It knows
/// how many are left (`len`).
///
/// ```
/// fn one() -> u8 {
///     1
/// }
/// let pool = mproc::Pool::new(1)?;
/// let results = vec![pool.apply_async(one, ())?, pool.apply_async(one, ())?];
/// let mut each: mproc::AsCompleted<'_, u8> = mproc::as_completed(&results);
/// assert_eq!(each.len(), 2);
/// each.next();
/// assert_eq!(each.len(), 1);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct AsCompleted<'a, R> {
    results: &'a [AsyncResult<R>],
    watch: Arc<Watch>,
    left: usize,
}

impl<'a, R> AsCompleted<'a, R> {
    /// The next result to finish, waiting until `deadline` at most (`None`: it passed).
    fn next_until(&mut self, deadline: Option<Instant>) -> Option<(usize, &'a AsyncResult<R>)> {
        let i = self.watch.next(deadline)?;
        self.left -= 1;
        Some((i, &self.results[i]))
    }
}

impl<'a, R> Iterator for AsCompleted<'a, R> {
    type Item = (usize, &'a AsyncResult<R>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.next_until(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<R> ExactSizeIterator for AsCompleted<'_, R> {}

impl<R> FusedIterator for AsCompleted<'_, R> {}

impl<R> std::fmt::Debug for AsCompleted<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("results", &self.results.len())
            .field("left", &self.left)
            .finish()
    }
}

/// The iterator [`as_completed_timeout`] returns: `Ok((index, &result))` in finishing order,
/// then one `Err(Timeout)` if time ran out first.
///
/// ```
/// use std::time::Duration;
///
/// fn one() -> u8 {
///     1
/// }
/// let pool = mproc::Pool::new(1)?;
/// let results = vec![pool.apply_async(one, ())?];
/// let each: mproc::AsCompletedTimeout<'_, u8> =
///     mproc::as_completed_timeout(&results, Duration::from_secs(10));
/// let values = each
///     .map(|r| r.and_then(|(_, r)| r.get()))
///     .collect::<Result<Vec<u8>, _>>()?;
/// assert_eq!(values, [1]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct AsCompletedTimeout<'a, R> {
    inner: AsCompleted<'a, R>,
    deadline: Option<Instant>,
    timed_out: bool,
}

impl<'a, R> Iterator for AsCompletedTimeout<'a, R> {
    type Item = Result<(usize, &'a AsyncResult<R>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.inner.left == 0 || self.timed_out {
            return None;
        }
        match self.inner.next_until(self.deadline) {
            Some(found) => Some(Ok(found)),
            None => {
                self.timed_out = true;
                Some(Err(ErrorKind::Timeout.into()))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.timed_out {
            (0, Some(0))
        } else {
            (self.inner.left.min(1), Some(self.inner.left))
        }
    }
}

impl<R> FusedIterator for AsCompletedTimeout<'_, R> {}

impl<R> std::fmt::Debug for AsCompletedTimeout<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompletedTimeout")
            .field("results", &self.inner.results.len())
            .field("left", &self.inner.left)
            .field("timed_out", &self.timed_out)
            .finish()
    }
}

/// Whether a finished result failed with an error other than `Cancelled` (Python's
/// `FIRST_EXCEPTION` does not count cancelled futures).
fn raised<R: DeserializeOwned>(r: &AsyncResult<R>) -> bool {
    matches!(r.successful(), Ok(false)) && r.get().is_err_and(|e| e.kind() != &ErrorKind::Cancelled)
}

/// When [`wait`] returns, as Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION` and
/// `ALL_COMPLETED`.
///
/// ```
/// assert_ne!(mproc::Return::FirstCompleted, mproc::Return::AllCompleted);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Return {
    /// As soon as any result has finished.
    FirstCompleted,
    /// As soon as any result has finished with an error other than `Cancelled` (a panic, a
    /// lost worker, a timeout, ...); if none does, once all have finished.
    FirstException,
    /// Once every result has finished.
    AllCompleted,
}

/// Waits for `results` as `return_when` says, or until `timeout` has passed (`None`: no
/// limit), and returns `(done, pending)`: the indexes in `results` of those that have
/// finished and of those still running, each in ascending order, as Python's
/// `concurrent.futures.wait`. On timeout it returns what is done by then; it never fails.
/// The thread sleeps until a result lands (no polling).
///
/// ```
/// use std::time::Duration;
/// use mproc::Return;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let results = vec![pool.apply_async(nap, (5_000,))?, pool.apply_async(nap, (10,))?];
/// let (done, pending) = mproc::wait(&results, Return::FirstCompleted, None);
/// assert_eq!((done, pending), (vec![1], vec![0]));
/// let (done, pending) = mproc::wait(&results, Return::AllCompleted, Some(Duration::from_millis(100)));
/// assert_eq!((done, pending), (vec![1], vec![0])); // timed out
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn wait<R: DeserializeOwned>(
    results: &[AsyncResult<R>],
    return_when: Return,
    timeout: Option<Duration>,
) -> (Vec<usize>, Vec<usize>) {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let watch = watch_all(results);
    let mut done = vec![false; results.len()];
    let (mut count, mut failed) = (0, false);
    loop {
        // What has landed so far, without waiting.
        while let Some(i) = watch.try_next() {
            done[i] = true;
            count += 1;
            failed = failed || (return_when == Return::FirstException && raised(&results[i]));
        }
        let satisfied = count == results.len()
            || match return_when {
                Return::FirstCompleted => count > 0,
                Return::FirstException => failed,
                Return::AllCompleted => false,
            };
        if satisfied {
            break;
        }
        // Sleep until one more lands (back in the queue for the top of the loop to take),
        // or until the deadline.
        match watch.next(deadline) {
            Some(i) => watch.push(i),
            None => break,
        }
    }
    let (done, pending): (Vec<_>, Vec<_>) = (0..results.len()).partition(|&i| done[i]);
    (done, pending)
}
