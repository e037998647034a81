//! What a submitted job owes its caller: one slot per chunk, filled by the dispatcher, waited
//! on by the handles ([`AsyncResult`](crate::AsyncResult) in `result.rs`, the `imap` iterators
//! in `imap.rs`), and decoded into the caller's values. It knows nothing of the dispatcher.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::Instant;

use serde::de::DeserializeOwned;

use super::task;
use crate::error::{Error, ErrorKind, PanicReport};
use crate::handle::{Marks, Scope};

/// A chunk's answer: the encoded per-item results (with the descriptors of the handles among
/// them), or an error for the whole chunk.
pub(crate) type ChunkOutcome = Result<Answered, Error>;

pub(crate) use super::task::Answered;

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

impl Slot {
    /// A chunk of `items` items with dispatcher id `id`, not answered yet.
    fn new(id: u64, items: usize) -> Slot {
        Slot {
            items,
            outcome: None,
            id,
            consumed: false,
        }
    }
}

/// A job's chunks not yet consumed, in order: the first kept inline, so that a job of one
/// chunk (every `apply`) allocates nothing for it.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// The front chunk; `None` only while `rest` is empty too.
    first: Option<Slot>,
    rest: VecDeque<Slot>,
}

impl Slots {
    fn one(slot: Slot) -> Slots {
        Slots {
            first: Some(slot),
            rest: VecDeque::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    pub(crate) fn get(&self, at: usize) -> Option<&Slot> {
        match at {
            0 => self.first.as_ref(),
            _ => self.rest.get(at - 1),
        }
    }

    pub(crate) fn get_mut(&mut self, at: usize) -> Option<&mut Slot> {
        match at {
            0 => self.first.as_mut(),
            _ => self.rest.get_mut(at - 1),
        }
    }

    pub(crate) fn front(&self) -> Option<&Slot> {
        self.first.as_ref()
    }

    fn push_back(&mut self, slot: Slot) {
        match self.first {
            None => self.first = Some(slot),
            Some(_) => self.rest.push_back(slot),
        }
    }

    fn pop_front(&mut self) -> Option<Slot> {
        let front = self.first.take();
        self.first = self.rest.pop_front();
        front
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.first.iter().chain(&self.rest)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.first.iter_mut().chain(&mut self.rest)
    }
}

/// The shared state of one job.
pub(crate) struct JobState {
    inner: Mutex<JobInner>,
    changed: Condvar,
    /// Set once complete, for waiters that spin briefly before sleeping.
    done: AtomicBool,
    /// Set (under the lock) once `fail_waiting` has answered chunks that may still be queued:
    /// until then a chunk's slot is answered only through the chunk itself, and
    /// `is_answered` needs no lock.
    failed_early: AtomicBool,
}

#[derive(Default)]
pub(crate) struct JobInner {
    /// The chunks not yet consumed from the front; chunk `i` is at `i - base`. A stream drops
    /// consumed chunks from the front, so an endless `imap` holds only its window.
    pub(crate) slots: Slots,
    pub(crate) base: usize,
    added: usize,
    filled: usize,
    /// Items in the chunks added, and in those answered (for progress).
    items_added: usize,
    items_filled: usize,
    /// Whether every chunk has been added (an `imap` adds them as it goes).
    sealed: bool,
    pub(crate) waker: Option<Waker>,
    callbacks: Vec<Callback>,
    /// Waiters on many jobs (`as_completed`, `wait`), with this job's index among theirs:
    /// told once it completes. A waiter gone is dropped from here at the next registration,
    /// so repeated waits on a long-running job do not pile up.
    watchers: Vec<(Weak<Watch>, usize)>,
    /// Threads blocked in `wait_for` on something short of the whole job (an `imap` waiting
    /// for one chunk): a delivery that completes nothing wakes only them. Threads waiting for
    /// the whole job are woken once, when it completes.
    waiters: usize,
    /// Threads asleep on `changed` for any reason (completion too): with none, completing
    /// the job makes no system call (a condvar's notify always does one).
    sleepers: usize,
    /// For an unordered stream: answered chunks not yet handed out, in answer order.
    pub(crate) answered: Option<VecDeque<usize>>,
}

impl JobInner {
    pub(crate) fn complete(&self) -> bool {
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
    /// Whether the job is complete, without taking its lock (for waiters that spin).
    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    pub(crate) fn new() -> Arc<JobState> {
        JobState::of(JobInner::default())
    }

    fn of(inner: JobInner) -> Arc<JobState> {
        Arc::new(JobState {
            inner: Mutex::new(inner),
            changed: Condvar::new(),
            done: AtomicBool::new(false),
            failed_early: AtomicBool::new(false),
        })
    }

    /// A job of one chunk of `items` items with dispatcher id `id` (its index is 0), sealed:
    /// what `add_chunk` and `seal` make of a new job, without taking its lock. The job of
    /// this thread's last call is made into it if no one holds that any more ([`recycle`]).
    pub(crate) fn single(id: u64, items: usize) -> Arc<JobState> {
        // A reading this thread kept for an earlier call is no one's now: this job may lie
        // where that call's did (made of it, or put there by the allocator), and would be
        // taken for it (see [`placed_at`]).
        let _ = PLACED.try_with(|p| p.set(None));
        let inner = JobInner {
            slots: Slots::one(Slot::new(id, items)),
            added: 1,
            items_added: items,
            sealed: true,
            ..JobInner::default()
        };
        let spare = SPARE_JOB.try_with(Cell::take).ok().flatten();
        if let Some(mut job) = spare
            && let Some(state) = Arc::get_mut(&mut job)
        {
            // No one else holds it, nor can any more: it is as new once its fields are.
            let was = std::mem::replace(
                state.inner.get_mut().unwrap_or_else(|e| e.into_inner()),
                inner,
            );
            state.inner.clear_poison();
            *state.done.get_mut() = false;
            *state.failed_early.get_mut() = false;
            drop(was);
            return job;
        }
        JobState::of(inner)
    }

    /// A job whose answered chunks are queued in answer order (for `imap_unordered`).
    pub(crate) fn unordered() -> Arc<JobState> {
        let job = JobState::new();
        job.lock().answered = Some(VecDeque::new());
        job
    }

    /// Whether chunk `index` has its answer (or was consumed). Asked of a chunk not yet answered
    /// by itself (queued, about to go to a worker, or held by one): only `fail_waiting` answers
    /// such a chunk, so until it has run this takes no lock (a chunk it fails a moment later
    /// is withdrawn from its worker as before).
    pub(crate) fn is_answered(&self, index: usize) -> bool {
        if !self.failed_early.load(Ordering::Acquire) {
            return false;
        }
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
        self.add_chunks(std::iter::once((id, items)))
    }

    /// Adds chunks of `(dispatcher id, items)` under one lock; the index of the first (the
    /// others follow it in order).
    pub(crate) fn add_chunks(&self, chunks: impl Iterator<Item = (u64, usize)>) -> usize {
        let mut inner = self.lock();
        let first = inner.added;
        for (id, items) in chunks {
            inner.slots.push_back(Slot::new(id, items));
            inner.added += 1;
            inner.items_added += items;
        }
        first
    }

    /// No more chunks will be added.
    pub(crate) fn seal(&self) {
        let mut inner = self.lock();
        inner.sealed = true;
        self.changed_locked(inner);
    }

    /// After a change under the lock (`inner`): if the job is now complete, tells everyone
    /// waiting for it ([`Finished`]), else wakes the threads waiting for part of it.
    fn changed_locked(&self, mut inner: MutexGuard<'_, JobInner>) {
        if inner.complete() {
            let finished = self.finish(&mut inner);
            drop(inner);
            finished.tell(self);
        } else if inner.waiters > 0 {
            drop(inner);
            self.changed.notify_all();
        }
    }

    /// Fills chunk `index` unless it already has an answer (a cancelled chunk's late result is
    /// dropped here).
    pub(crate) fn deliver(&self, index: usize, outcome: ChunkOutcome) {
        let mut inner = self.lock();
        let Some(slot) = inner.slot_mut(index) else {
            return;
        };
        if slot.outcome.is_some() || slot.consumed {
            return;
        }
        slot.outcome = Some(outcome);
        let items = slot.items;
        inner.filled += 1;
        inner.items_filled += items;
        if let Some(answered) = &mut inner.answered {
            answered.push_back(index);
        }
        self.changed_locked(inner);
    }

    /// Fills every chunk still waiting with `err`; returns their dispatcher ids.
    pub(crate) fn fail_waiting(&self, err: &Error) -> Vec<u64> {
        let (ids, finished) = {
            let mut inner = self.lock();
            self.failed_early.store(true, Ordering::Release);
            let mut ids = Vec::new();
            let base = inner.base;
            let mut failed = Vec::new();
            let mut items = 0;
            for (at, slot) in inner.slots.iter_mut().enumerate() {
                if slot.outcome.is_none() && !slot.consumed {
                    slot.outcome = Some(Err(err.clone()));
                    ids.push(slot.id);
                    failed.push(base + at);
                    items += slot.items;
                }
            }
            inner.filled += ids.len();
            inner.items_filled += items;
            if let Some(answered) = &mut inner.answered {
                answered.extend(failed);
            }
            let finished = inner.complete().then(|| self.finish(&mut inner));
            (ids, finished)
        };
        match finished {
            Some(finished) => finished.tell(self),
            None => self.changed.notify_all(),
        }
        ids
    }

    /// The job has just completed, under its lock: marks it done and takes what must be told.
    fn finish(&self, inner: &mut JobInner) -> Finished {
        self.done.store(true, Ordering::Release);
        // A thread that looked before this lock saw the job incomplete and is counted; one
        // that looks after it sees the job complete.
        Finished {
            waker: inner.waker.take(),
            callbacks: std::mem::take(&mut inner.callbacks),
            watchers: std::mem::take(&mut inner.watchers),
            sleepers: inner.sleepers,
        }
    }

    /// Items answered (successfully or not) and items added so far.
    pub(crate) fn progress(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.items_filled, inner.items_added)
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
            inner.sleepers += 1;
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
            inner.sleepers -= 1;
        }
    }

    /// Runs `callback` once the job is complete: now (on this thread) if it already is, else
    /// on the thread that completes it.
    pub(crate) fn on_complete(&self, callback: Box<dyn FnOnce() + Send>) {
        let mut inner = self.lock();
        if inner.complete() {
            drop(inner);
            callback();
        } else {
            inner.callbacks.push(callback);
        }
    }

    /// Tells `watch` (with `index`) once the job is complete: now if it already is.
    pub(crate) fn watch(&self, watch: &Arc<Watch>, index: usize) {
        let mut inner = self.lock();
        if inner.complete() {
            drop(inner);
            watch.push(index);
        } else {
            inner.watchers.retain(|(w, _)| w.strong_count() > 0);
            inner.watchers.push((Arc::downgrade(watch), index));
        }
    }
}

/// What a job that has just completed must tell, once its lock is let go: the threads asleep
/// on it, the waiters on many jobs, a future's waker, and its callbacks.
struct Finished {
    waker: Option<Waker>,
    callbacks: Vec<Callback>,
    watchers: Vec<(Weak<Watch>, usize)>,
    sleepers: usize,
}

impl Finished {
    /// Tells them, in this order: sleepers, waiters on many jobs, the waker, the callbacks
    /// (deferred if this thread is helping the dispatcher). Called without `job`'s lock.
    fn tell(self, job: &JobState) {
        let Finished {
            waker,
            callbacks,
            watchers,
            sleepers,
        } = self;
        if sleepers > 0 {
            job.changed.notify_all();
        }
        for (watch, index) in watchers {
            if let Some(watch) = watch.upgrade() {
                watch.push(index);
            }
        }
        if let Some(w) = waker {
            // A waker's panic is the executor's: it must not take down whoever completed the
            // job (the dispatcher, or a waiter holding the pool's state).
            if let Err(payload) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()))
            {
                std::mem::forget(payload);
            }
        }
        if !callbacks.is_empty()
            && let Some(callbacks) = defer_callbacks(callbacks)
        {
            run_callbacks(callbacks);
        }
    }
}

/// One thread waiting on many jobs at once (`as_completed`, `wait`): each job, once
/// complete, queues its index here and wakes the waiter. No polling: the waiter sleeps until
/// one lands.
#[derive(Default)]
pub(crate) struct Watch {
    ready: Mutex<VecDeque<usize>>,
    landed: Condvar,
}

impl Watch {
    pub(crate) fn push(&self, index: usize) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(index);
        self.landed.notify_one();
    }

    /// An index that has landed, without waiting.
    pub(crate) fn try_next(&self) -> Option<usize> {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// The next index to land, waiting for one until `deadline` (forever if `None`);
    /// `None` once the deadline has passed.
    pub(crate) fn next(&self, deadline: Option<Instant>) -> Option<usize> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(i) = ready.pop_front() {
                return Some(i);
            }
            ready = match deadline {
                None => self.landed.wait(ready).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.landed
                        .wait_timeout(ready, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

pub(crate) type Callback = Box<dyn FnOnce() + Send>;

thread_local! {
    /// While a thread helps the dispatcher (a waiter, a submitter), in a scope of its own
    /// ([`deferring_callbacks`]): callbacks of jobs it completes wait here until it has let go
    /// of the dispatcher's state (a callback may use the pool).
    static DEFERRED: std::cell::RefCell<Vec<Callback>> =
        const { std::cell::RefCell::new(Vec::new()) };
    static DEFERRED_FROM: Marks = const { std::cell::Cell::new((None, 0)) };
}

/// Keeps `callbacks` for later if this thread defers them; else gives them back to run now.
fn defer_callbacks(callbacks: Vec<Callback>) -> Option<Vec<Callback>> {
    Scope::extend(&DEFERRED, &DEFERRED_FROM, callbacks)
}

thread_local! {
    /// The job of this thread's last call, once its result was dropped with no one else
    /// holding it: the next call's job, made without an allocation (issue 15, item 4: made and
    /// freed, a job cost about 48 ns of each back-to-back `apply`).
    static SPARE_JOB: Cell<Option<Arc<JobState>>> = const { Cell::new(None) };
    /// The job of this thread's last call placed on an idle worker, and the clock as read
    /// then (for its worker's books; see [`placed_at`]).
    static PLACED: Cell<Option<(usize, Instant)>> = const { Cell::new(None) };
}

/// Notes that this thread has just handed `job`'s call to a worker, at `at` (a reading taken
/// just after its frame was pushed).
pub(crate) fn note_placed(job: &Arc<JobState>, at: Instant) {
    let _ = PLACED.try_with(|p| p.set(Some((Arc::as_ptr(job) as usize, at))));
}

/// When this thread handed `job`'s call to a worker, if it was its last call so placed (taken:
/// asked once): a `get` that follows starts its wait from that reading, not from one of its
/// own, which took ~30 ns of the call's way (issue 15, item 4). A reading of the past, at
/// worst: a wait that begins from it spins no longer, and an answer it times looks no slower,
/// than from the clock's.
pub(crate) fn placed_at(job: &JobState) -> Option<Instant> {
    let (placed, at) = PLACED.try_with(Cell::take).ok().flatten()?;
    (placed == std::ptr::from_ref(job) as usize).then_some(at)
}

/// Keeps `job` (an [`AsyncResult`](crate::AsyncResult) dropped) for this thread's next
/// [`JobState::single`] if nothing else holds it (a callback, a watcher, another result's
/// copy) and it holds nothing worth freeing now: one chunk, its answer small enough to lie
/// inline or not there, no executor's waker (a `map`'s slots, a large answer's buffer or
/// memory file, are let go at once, not kept until this thread's next call, which may never
/// come).
pub(crate) fn recycle(mut job: Arc<JobState>) {
    let Some(state) = Arc::get_mut(&mut job) else {
        return;
    };
    let inner = state.inner.get_mut().unwrap_or_else(|e| e.into_inner());
    let small = |outcome: &Option<ChunkOutcome>| match outcome {
        None => true,
        Some(Ok(answered)) => {
            matches!(answered.bytes, crate::memfile::Received::Small(..))
                && answered.handles.is_empty()
        }
        Some(Err(_)) => false,
    };
    let kept = inner.slots.len() == 1
        && inner.slots.front().is_some_and(|s| small(&s.outcome))
        && inner.callbacks.is_empty()
        && inner.watchers.is_empty()
        && inner.waker.is_none()
        && inner.answered.is_none();
    if kept {
        // What it replaces (nothing, nearly always) drops outside the slot's access.
        let _before = SPARE_JOB.try_with(|spare| spare.replace(Some(job)));
    }
}

/// Runs `f` with this thread's callbacks deferred; returns them (those of a scope left by
/// unwinding are dropped unrun, with the scope).
pub(crate) fn deferring_callbacks(f: impl FnOnce()) -> Vec<Callback> {
    let scope = Scope::open(&DEFERRED, &DEFERRED_FROM, Vec::new());
    f();
    scope.close()
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
pub(crate) type Decoder<R> = fn(&Slots, &str) -> Result<R, Error>;

/// One value: the first item of the only chunk.
pub(crate) fn decode_one<R: DeserializeOwned>(
    slots: &Slots,
    target: &str,
) -> Result<R, Error> {
    // Nearly always one item that brought no handles: decoded without a `Vec` (anything else,
    // or an answer that does not decode so, goes the general way, which says what is wrong).
    if let (1, Some(slot)) = (slots.len(), slots.front())
        && slot.items == 1
        && let Some(Ok(answered)) = &slot.outcome
        && let Some(one) = one_bare::<R>(answered)
    {
        return one;
    }
    let mut all = decode_all::<R>(slots, target)?;
    all.pop()
        .ok_or_else(|| Error::protocol("a task's answer held no value"))
}

/// The one value of an answer of one item that brought no handles, decoded without a `Vec`;
/// `None` when it does not decode so (the general way then says what is wrong).
fn one_bare<R: DeserializeOwned>(answered: &Answered) -> Option<Result<R, Error>> {
    if !answered.handles.is_empty() {
        return None;
    }
    let one = crate::handle::providing(Vec::new(), || task::decode_one_bare::<R>(answered))?;
    Some(one.map_err(|p| panicked(*p)))
}

/// One value, from the answer to a call read by its caller itself (`Pool::apply`), as
/// [`decode_one`] decodes it from a job's one chunk.
pub(crate) fn decode_answer<R: DeserializeOwned>(
    answered: Answered,
    target: &str,
) -> Result<R, Error> {
    if let Some(one) = one_bare::<R>(&answered) {
        return one;
    }
    let slot = Slot {
        outcome: Some(Ok(answered)),
        ..Slot::new(0, 1)
    };
    decode_one(&Slots::one(slot), target)
}

/// Every item of every chunk, in order; the first failure (by position) is the error.
pub(crate) fn decode_all<R: DeserializeOwned>(
    slots: &Slots,
    target: &str,
) -> Result<Vec<R>, Error> {
    let mut out = Vec::with_capacity(slots.iter().map(|s| s.items).sum());
    // The chunks that brought no handles (nearly all) are decoded in one scope of none, not
    // each in its own (see `task::decode_chunk`), and straight into `out`.
    crate::handle::providing(Vec::new(), || {
        for slot in slots.iter() {
            match &slot.outcome {
                Some(Ok(answered)) if answered.handles.is_empty() => {
                    for item in counted(slot, task::decode_chunk_bare::<R>(answered, target))? {
                        out.push(item.map_err(|p| panicked(*p))?);
                    }
                }
                _ => {
                    for item in decode_slot::<R>(slot, target) {
                        out.push(item?);
                    }
                }
            }
        }
        Ok(out)
    })
}

/// A chunk's decoded items, if there are as many as it was given.
fn counted<T>(slot: &Slot, decoded: Result<Vec<T>, Error>) -> Result<Vec<T>, Error> {
    let items = decoded?;
    if items.len() != slot.items {
        return Err(Error::protocol(format!(
            "a chunk of {} items came back with {} results",
            slot.items,
            items.len()
        )));
    }
    Ok(items)
}

/// The error of an item whose task panicked.
fn panicked(report: PanicReport) -> Error {
    ErrorKind::Panicked(report).into()
}

/// A chunk's items: each value or its panic; a whole-chunk failure repeats for every item.
pub(crate) fn decode_slot<R: DeserializeOwned>(slot: &Slot, target: &str) -> Vec<Result<R, Error>> {
    let failed = |e: Error| (0..slot.items).map(|_| Err(e.clone())).collect();
    match &slot.outcome {
        None => failed(Error::from(ErrorKind::NotReady)),
        Some(Err(e)) => failed(e.clone()),
        Some(Ok(answered)) => match counted(slot, task::decode_chunk::<R>(answered, target)) {
            Err(e) => failed(e),
            Ok(items) => items.into_iter().map(|r| r.map_err(|p| panicked(*p))).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Slots` is a deque whose front lies inline: in every order of pushes and pops, it
    /// holds what a `VecDeque` would, in the same places.
    #[test]
    fn slots_keep_a_deques_order_whatever_is_pushed_and_popped() {
        let mut slots = Slots::default();
        let mut model = VecDeque::new();
        let mut next = 0u64;
        // Pushes and pops in runs of different lengths, down to empty more than once.
        for step in 0..400u64 {
            if (step / 7) % 3 != 2 || model.is_empty() {
                slots.push_back(Slot::new(next, 1));
                model.push_back(next);
                next += 1;
            } else {
                assert_eq!(slots.pop_front().map(|s| s.id), model.pop_front());
            }
            assert_eq!(slots.len(), model.len());
            assert_eq!(slots.front().map(|s| s.id), model.front().copied());
            let ids: Vec<u64> = slots.iter().map(|s| s.id).collect();
            assert_eq!(ids, Vec::from(model.clone()));
            for at in 0..=model.len() {
                assert_eq!(slots.get(at).map(|s| s.id), model.get(at).copied());
            }
        }
        while let Some(id) = model.pop_front() {
            assert_eq!(slots.pop_front().map(|s| s.id), Some(id));
        }
        assert!(slots.pop_front().is_none() && slots.len() == 0);
        // `iter_mut` visits every one, the inline front included.
        for id in 0..3 {
            slots.push_back(Slot::new(id, 1));
        }
        slots.pop_front();
        slots.push_back(Slot::new(3, 1));
        for slot in slots.iter_mut() {
            slot.consumed = true;
        }
        assert_eq!(slots.iter().filter(|s| s.consumed).count(), 3);
        let mut one = Slots::one(Slot::new(5, 3));
        one.get_mut(0).unwrap().consumed = true;
        assert!(one.iter().all(|s| s.consumed && s.items == 3));
        assert!(one.get_mut(1).is_none());
    }

    /// A job of one chunk answered with `results` (an encoded `Vec` of them).
    fn answered_single<T: serde::Serialize>(
        results: &[Result<T, Box<PanicReport>>],
    ) -> Arc<JobState> {
        let job = JobState::single(9, 1);
        assert!(!job.is_done());
        let bytes = crate::wire::codec::encode(&results).unwrap();
        job.deliver(0, Ok(bytes.into()));
        assert!(job.is_done(), "one delivery completes a job of one chunk");
        job
    }

    #[test]
    fn one_value_is_decoded_or_its_panic_or_what_is_wrong_with_the_answer() {
        let job = answered_single::<u64>(&[Ok(7)]);
        assert_eq!(decode_one::<u64>(&job.lock().slots, "t").unwrap(), 7);
        let report = PanicReport {
            message: "boom".into(),
            location: None,
            process: "w".into(),
            backtrace: None,
        };
        let job = answered_single::<u64>(&[Err(Box::new(report))]);
        let e = decode_one::<u64>(&job.lock().slots, "t").unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Panicked(r) if r.message == "boom"), "{e}");
        // Two results for one item, or none: what the general way says, not a value.
        for wrong in [vec![Ok(1u64), Ok(2)], vec![]] {
            let job = answered_single::<u64>(&wrong);
            let e = decode_one::<u64>(&job.lock().slots, "t").unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Protocol(_)), "{e}");
            assert!(e.to_string().contains("came back with"), "{e}");
        }
        // A value of another type: a codec error.
        let job = answered_single::<String>(&[Ok("seven".into())]);
        let e = decode_one::<u64>(&job.lock().slots, "t").unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Codec { .. }), "{e}");
        // An error for the whole chunk (its worker died, say).
        let job = JobState::single(9, 1);
        job.deliver(0, Err(ErrorKind::Cancelled.into()));
        let e = decode_one::<u64>(&job.lock().slots, "t").unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Cancelled);
    }

    #[test]
    fn watches_of_waiters_gone_do_not_pile_up_on_a_job() {
        let job = JobState::new();
        job.add_chunk(1, 1);
        job.seal();
        for i in 0..1000 {
            let gone = Arc::new(Watch::default());
            job.watch(&gone, i);
        }
        assert!(job.lock().watchers.len() <= 1);
        let w = Arc::new(Watch::default());
        job.watch(&w, 7);
        assert_eq!(w.try_next(), None);
        job.deliver(0, Ok(Vec::new().into()));
        assert_eq!(w.try_next(), Some(7));
        assert_eq!(w.try_next(), None, "told once");
        // Complete already: told at once.
        let late = Arc::new(Watch::default());
        job.watch(&late, 3);
        assert_eq!(late.next(None), Some(3));
        // Nothing lands: `next` gives up at its deadline.
        assert_eq!(late.next(Some(Instant::now())), None);
    }

    /// Callbacks of jobs completed while a thread defers them are kept, in order, by its
    /// innermost scope, and returned when it closes; an inner scope's are its own; those of a
    /// scope left by unwinding are dropped unrun, and the outer scope keeps its own; outside
    /// any scope they are given back to run at once.
    #[test]
    fn deferred_callbacks_are_kept_by_their_own_scope() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let cb = |n: u32| -> Callback {
            let ran = Arc::clone(&ran);
            Box::new(move || ran.lock().unwrap().push(n))
        };
        let now = defer_callbacks(vec![cb(0)]).expect("outside any scope: to run now");
        run_callbacks(now);
        let mut inner = Vec::new();
        let outer = deferring_callbacks(|| {
            assert!(defer_callbacks(vec![cb(1), cb(2)]).is_none());
            inner = deferring_callbacks(|| assert!(defer_callbacks(vec![cb(3)]).is_none()));
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                deferring_callbacks(|| {
                    assert!(defer_callbacks(vec![cb(9)]).is_none());
                    panic!("in an inner scope");
                })
            }));
            assert!(unwound.is_err());
            assert!(defer_callbacks(vec![cb(4)]).is_none());
        });
        assert_eq!((inner.len(), outer.len()), (1, 3));
        run_callbacks(inner);
        run_callbacks(outer);
        assert_eq!(*ran.lock().unwrap(), [0, 3, 1, 2, 4]);
        assert!(defer_callbacks(vec![cb(5)]).is_some(), "every scope closed");
    }

    /// The clock reading of a call placed on an idle worker belongs to that call's job only:
    /// a later job of this thread at the same address (the dropped job made into it, or a
    /// new one where the allocator put the old) is not given it, or its `get` would start
    /// its wait from a reading of the past and skip its spin, sleeping at once.
    #[test]
    fn a_placed_calls_reading_is_not_a_later_jobs_at_the_same_address() {
        let placed = JobState::single(1, 1);
        let long_ago = Instant::now();
        note_placed(&placed, long_ago);
        let at = Arc::as_ptr(&placed);
        // Its result dropped without a `get`: kept as this thread's spare, then made into
        // the next call's job, which goes the queue's way (no reading of its own).
        recycle(placed);
        let next = JobState::single(2, 1);
        assert_eq!(Arc::as_ptr(&next), at, "the spare was reused");
        assert_eq!(placed_at(&next), None, "the old call's reading given to the next");
        // A placed call's own reading still reaches its `get`.
        let now = Instant::now();
        note_placed(&next, now);
        assert_eq!(placed_at(&next), Some(now));
        assert_eq!(placed_at(&next), None, "taken: asked once");
    }
}
