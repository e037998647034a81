//! `imap` and `imap_unordered`: results as a stream, input pulled lazily.
//!
//! The iterator submits chunks as it is consumed, keeping at most a window of them in flight,
//! so an endless input works and memory stays bounded. Dropping it cancels what it had not yet
//! returned.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::dispatcher::{Chunk, Shared};
use super::job::{JobState, decode_slot};
use crate::error::{Error, ErrorKind};

/// One encoded chunk of input and its item count, or why it could not be encoded (and how
/// many items that chunk had: each gets the error).
pub(crate) type Feed<'a> =
    Box<dyn Iterator<Item = Result<(super::task::Encoded, usize), (Error, usize)>> + 'a>;

/// The results of [`Pool::imap`](crate::Pool::imap) or
/// [`Pool::imap_unordered`](crate::Pool::imap_unordered): one `Result` per input item.
///
/// When the input says how long it is (a `Vec`, a range: its `size_hint` is exact), so does
/// this iterator's `size_hint`: the results not yet yielded, so a progress bar can be sized
/// from it (`indicatif`'s `progress_count(it.size_hint().0 as u64)`). Should the pool be
/// closed or terminated under it, the stream ends early and the hint says so.
///
/// ```
/// fn square(n: u64) -> u64 {
///     n * n
/// }
/// let pool = mproc::Pool::new(2)?;
/// // An endless input: only what is consumed is ever computed.
/// let first: Vec<u64> = pool.imap(square, 1..)?.take(5).collect::<Result<_, _>>()?;
/// assert_eq!(first, [1, 4, 9, 16, 25]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Imap<'a, R> {
    shared: Arc<Shared>,
    job: Arc<JobState>,
    feed: Feed<'a>,
    entry: i64,
    target: &'static str,
    ordered: bool,
    ahead: usize,
    exhausted: bool,
    consumed: usize,
    /// Results not yet yielded, when the input's length is known.
    left: Option<usize>,
    next_ordered: usize,
    ready: VecDeque<Result<R, Error>>,
    /// Its chunks' own time limit per task, if any.
    timeout: Option<std::time::Duration>,
    /// The progress bar it advances, if one was asked for.
    #[cfg(feature = "progress")]
    bar: Option<super::progress::Bar>,
    _value: PhantomData<fn() -> R>,
}

impl<'a, R> Imap<'a, R> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        feed: Feed<'a>,
        entry: i64,
        target: &'static str,
        ordered: bool,
        ahead: usize,
        len: Option<usize>,
    ) -> Self {
        shared.stream_opened();
        Imap {
            shared,
            job: if ordered {
                JobState::new()
            } else {
                JobState::unordered()
            },
            feed,
            entry,
            target,
            ordered,
            ahead: ahead.max(1),
            exhausted: false,
            consumed: 0,
            left: len,
            next_ordered: 0,
            ready: VecDeque::new(),
            timeout: None,
            #[cfg(feature = "progress")]
            bar: None,
            _value: PhantomData,
        }
    }

    /// Gives its chunks their own time limit per task.
    pub(crate) fn with_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Advances `bar` with each item it yields.
    #[cfg(feature = "progress")]
    pub(crate) fn with_bar(mut self, bar: super::progress::Bar) -> Self {
        self.bar = Some(bar);
        self
    }

    /// One item yielded (`true`), or the end (`false`): the bar follows.
    #[cfg_attr(not(feature = "progress"), expect(unused_variables))]
    fn tick(&mut self, item: bool) {
        #[cfg(feature = "progress")]
        match (item, &self.bar) {
            (true, Some(bar)) => bar.inc(),
            (false, Some(_)) => self.bar.take().into_iter().for_each(|b| b.finish()),
            _ => {}
        }
    }

    /// Submits input chunks until the window is full or the input ends.
    fn top_up(&mut self) {
        while !self.exhausted && self.job.lock().added() - self.consumed < self.ahead {
            match self.feed.next() {
                None => self.finish_input(),
                Some(Err((e, items))) => {
                    let index = self.job.add_chunk(0, items);
                    self.job.deliver(index, Err(e));
                }
                Some(Ok(((payload, fds), items))) => {
                    let id = self.shared.chunk_id();
                    let index = self.job.add_chunk(id, items);
                    let chunk =
                        Chunk::new(id, self.entry, payload, Arc::clone(&self.job), index, items)
                            .with_handles(fds)
                            .with_timeout(self.timeout);
                    // On refusal the chunk has been failed with the reason (it is yielded), and
                    // the stream ends there: an endless input must not yield errors forever.
                    if self.shared.submit(chunk, false).is_err() {
                        self.finish_input();
                        self.left = None;
                    }
                }
            }
        }
    }

    /// No more input will be submitted.
    fn finish_input(&mut self) {
        if !self.exhausted {
            self.exhausted = true;
            self.job.seal();
            self.shared.stream_closed();
        }
    }
}

impl<R: DeserializeOwned> Iterator for Imap<'_, R> {
    type Item = Result<R, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(1);
                }
                self.tick(true);
                return Some(item);
            }
            self.top_up();
            if self.exhausted && self.consumed == self.job.lock().added() {
                self.tick(false);
                return None;
            }
            let stuck = if self.shared.foreign() {
                Some(Shared::foreign_error as fn() -> Error)
            } else if self.shared.on_own_thread() {
                Some(Shared::own_thread_error as fn() -> Error)
            } else {
                None
            };
            if let Some(why) = stuck {
                // A fork child, or a callback on the pool's own thread: nothing will answer
                // while this thread waits; say so once, then end.
                self.exhausted = true;
                self.consumed = self.job.lock().added();
                self.left = Some(0);
                return Some(Err(why()));
            }
            let ordered = self.ordered.then_some(self.next_ordered);
            let mut inner = self
                .job
                .wait_for(None, true, |inner| pick(inner, ordered).is_some())
                .expect("no deadline");
            let index = pick(&inner, ordered).expect("just waited for it");
            if let Some(answered) = &mut inner.answered {
                answered.pop_front();
            }
            let slot = inner.slot_mut(index).expect("a picked chunk is present");
            self.ready.extend(decode_slot::<R>(slot, self.target));
            slot.outcome = None;
            slot.consumed = true;
            inner.trim();
            drop(inner);
            self.consumed += 1;
            self.next_ordered += usize::from(self.ordered);
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.left {
            Some(n) => (n, Some(n)),
            None => (self.ready.len(), None),
        }
    }
}

/// The chunk to hand out next: chunk `ordered` once it is answered, or (unordered) the
/// earliest answered chunk not yet handed out.
fn pick(inner: &super::job::JobInner, ordered: Option<usize>) -> Option<usize> {
    match ordered {
        Some(i) => {
            let at = i.checked_sub(inner.base)?;
            inner.slots.get(at)?.outcome.as_ref().map(|_| i)
        }
        None => inner.answered.as_ref()?.front().copied(),
    }
}

impl<R> Drop for Imap<'_, R> {
    fn drop(&mut self) {
        self.tick(false);
        self.finish_input();
        let ids = self.job.fail_waiting(&ErrorKind::Cancelled.into());
        let ids: Vec<u64> = ids.into_iter().filter(|&id| id != 0).collect();
        if !ids.is_empty() {
            self.shared.cancel(ids);
        }
    }
}

impl<R> fmt::Debug for Imap<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("target", &self.target)
            .field("ordered", &self.ordered)
            .field("consumed_chunks", &self.consumed)
            .finish()
    }
}
