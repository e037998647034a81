//! The API side of the dispatcher: [`Shared`]'s methods that `Pool`, `AsyncResult` and `Imap`
//! call to submit chunks, cancel them, close or terminate the pool, and, while waiting, help
//! the dispatcher read the workers' lanes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::chunk::{Call, Chunks};
use super::{Command, Dispatcher, Inbox, Look, Shared};
use crate::error::{Error, ErrorKind};
use crate::pool::job;
use crate::sys::fd::EventFd;

impl Shared {
    pub(crate) fn new() -> Result<Arc<Shared>, Error> {
        Ok(Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            state: Mutex::new(None),
            finished: Condvar::new(),
            wake: EventFd::new()
                .map_err(|e| Error::os("creating the pool's wake-up eventfd", e))?,
            next_chunk: AtomicU64::new(1),
            posted: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            generation: crate::sys::proc::fork_generation(),
            direct: std::sync::OnceLock::new(),
            stats_source: std::sync::OnceLock::new(),
            thread: std::sync::OnceLock::new(),
        }))
    }

    /// Whether this process is a fork child of the one that made the pool.
    pub(crate) fn foreign(&self) -> bool {
        crate::sys::proc::fork_generation() != self.generation
    }

    /// Whether this is the pool's own thread: while a callback runs there nothing reads the
    /// workers, so nothing it waits for of the pool's could finish.
    pub(crate) fn on_own_thread(&self) -> bool {
        // Every `get` asks: this thread's id is kept in a thread-local, as
        // `thread::current()` takes and drops a reference to the thread's record each time.
        thread_local!(static THIS_THREAD: std::thread::ThreadId = std::thread::current().id());
        self.thread.get() == Some(&THIS_THREAD.with(|id| *id))
    }

    /// The error for waiting, on the pool's own thread (in a callback), for a task of the pool.
    pub(crate) fn own_thread_error() -> Error {
        Error::invalid(
            "a callback running on the pool's own thread cannot wait for the pool's tasks (it \
             would wait for itself, and the pool with it): submit with apply_async and take \
             the value in an on_complete callback instead",
        )
    }

    /// The error for using a pool in a fork child of its process.
    pub(crate) fn foreign_error() -> Error {
        Error::invalid(
            "this Pool belongs to the process that created it; a forked child cannot use it \
             (create a pool in the child instead)",
        )
    }

    fn send(&self, inbox: &mut Inbox, command: Command) {
        inbox.commands.push_back(command);
        self.posted.fetch_add(1, Ordering::Relaxed);
        self.wake.notify();
    }

    /// Called by a thread waiting for `done()`: if the dispatcher sleeps in `poll`, this thread
    /// reads the workers' lanes itself until `done()`, `until`, or a command for the
    /// dispatcher arrives. Meanwhile the workers are told the dispatcher is awake, so they
    /// publish answers without waking anyone: a quick answer costs no system call on either
    /// side. Before letting go it sets the sleep words of the workers that hold chunks again
    /// (the plain word, woken at the next answer, never a deferred one: the dispatcher's sleep
    /// may have no deadline) and wakes the dispatcher if anything arrived meanwhile, so nothing
    /// published goes unseen. A worker that holds nothing has nothing to publish: its word is
    /// set when it is next handed a chunk by a thread that does not read the lanes
    /// (`Dispatcher::set_owed_words`), off the way of a quick call's answer.
    /// Callbacks of jobs it completes run after it has let go. `now`: the caller's reading of
    /// the clock, taken a moment before.
    pub(crate) fn help(&self, done: &dyn Fn() -> bool, now: Instant, until: Instant) -> bool {
        if self.wanted.load(Ordering::Relaxed) || self.foreign() {
            return false;
        }
        let Ok(mut state) = self.state.try_lock() else {
            return false;
        };
        let Some(d) = state.as_mut().filter(|d| d.broken.is_none()) else {
            return false;
        };
        let posted = self.posted.load(Ordering::Relaxed);
        let _unwind = WakeOnUnwind(&self.wake);
        let callbacks = job::deferring_callbacks(|| {
            let mut spin = Spin::new(now, until, posted);
            loop {
                d.drain_lanes(Some(spin.now));
                if done() || !spin.next(self, || d.say_cpu(None)) {
                    break;
                }
            }
            self.let_go(d);
        });
        drop(state);
        job::run_callbacks(callbacks);
        true
    }

    /// What a reader of the lanes does as it lets go of the state: hands out what is queued,
    /// sets the sleep words of the workers that hold chunks (the plain word, woken at the
    /// next answer, never a deferred one: the dispatcher's sleep may have no deadline), and
    /// wakes the dispatcher if anything arrived meanwhile, so nothing published goes unseen.
    fn let_go(&self, d: &mut Dispatcher) {
        d.assign();
        d.flush();
        let rested = (0..4).any(|_| {
            let rested = d.prepare_sleep(false).is_some();
            if !rested {
                d.drain_lanes(None);
            }
            rested
        });
        if !rested || d.needs_attention() {
            self.wake.notify();
        }
    }

    /// Submits a call whose caller waits for its value at once (`Pool::apply`). When this
    /// thread finds the state free and a worker that holds nothing (as
    /// [`submit_call`](Shared::submit_call) may), it keeps the state while the worker runs
    /// the task and reads the answer from that worker's lane itself, as a waiter helping the
    /// dispatcher would (`help`), but with no job, chunk or books made for the call, and no
    /// other lane read or sleep word set (`Dispatcher::place_waited`). It lets go as `help`
    /// does, after `spin`, or at a command for the dispatcher or the dispatcher thread wanting
    /// the state (a worker's exit, an answer on a socket), or at anything but the answer in
    /// the lane: the call is then put in the books as `submit_call` would have put it, and
    /// its job is returned to wait on.
    pub(crate) fn submit_waited(&self, call: Call, spin: Duration) -> Result<Waited, Error> {
        // A callback on the pool's own thread is refused its wait, whether or not a worker is
        // idle (see `on_own_thread`). A pool that refuses new work says why the usual way.
        if self.foreign()
            || self.direct.get().is_some()
            || self.on_own_thread()
            || self.refusing.load(Ordering::Acquire)
        {
            return self.submit_call(call).map(Waited::Job);
        }
        event!(target: "mproc::pool", tracing::Level::DEBUG, chunks = 1, items = 1,
            first_task = call.id, "tasks submitted");
        // Without the inbox's lock (issue 15, item 4: 10 ns of every call): the state is
        // tried alone (which never blocks, so the inbox's order before it does not apply),
        // and no command waits in the inbox, before this call, if the dispatcher has taken as
        // many as were posted. A command this thread posted, or one posted before something
        // that made this call (a message from its poster, say), was counted before this
        // reading; one posted meanwhile by another thread is as if posted after the call, and
        // makes this thread let go (`Spin`).
        let posted = self.posted.load(Ordering::Relaxed);
        let placed = self.state_for_waited(posted).and_then(|mut state| {
            let at = state.as_mut()?.place_waited(&call)?;
            Some((state, at))
        });
        let Some((mut state, at)) = placed else {
            return self.submit_call(call).map(Waited::Job);
        };
        let placed = Instant::now();
        let d = state.as_mut().expect("placed by it");
        let mut spin = Spin::new(placed, placed + spin, posted);
        let read = loop {
            match d.look_waited(at, call.id, placed, spin.now) {
                Look::Nothing => {}
                Look::Answered(answered) => {
                    drop(state);
                    if let crate::memfile::Payload::Bytes(bytes) = call.payload {
                        // This thread's buffer for its next call's arguments.
                        crate::memfile::give_back_buffer(bytes);
                    }
                    return Ok(Waited::Answered(answered));
                }
                Look::Other(read) => break Some(read),
            }
            if !spin.next(self, || d.say_cpu_waited(at)) {
                break None;
            }
        };
        // Before this, the call was in no books and the words as they were: nothing to mend.
        let _unwind = WakeOnUnwind(&self.wake);
        let mut job = None;
        let callbacks = job::deferring_callbacks(|| {
            job = Some(d.hold_waited(at, call, placed, read));
            self.let_go(d);
        });
        drop(state);
        job::run_callbacks(callbacks);
        Ok(Waited::Job(job.expect("made above")))
    }

    /// The pool can run nothing more: every later submission fails with `why` (the first
    /// reason given stays).
    pub(crate) fn set_broken(&self, why: &Error) {
        let mut inbox = self.inbox();
        inbox.broken.get_or_insert_with(|| why.clone());
        self.refusing.store(true, Ordering::Release);
    }

    /// A fresh chunk id.
    pub(crate) fn chunk_id(&self) -> u64 {
        self.next_chunk.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether new jobs are accepted; the error to give if not.
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        if self.foreign() {
            return Err(Shared::foreign_error());
        }
        if !self.refusing.load(Ordering::Acquire) {
            return Ok(());
        }
        refusal(&self.inbox(), true).map_or(Ok(()), Err)
    }

    /// Queues chunks. A new job is refused once the pool is closed; more chunks of a job
    /// submitted before (an `imap` pulling its input) are taken until the dispatcher stops.
    pub(crate) fn submit(&self, chunks: impl Into<Chunks>, new_job: bool) -> Result<(), Error> {
        let chunks = chunks.into();
        if self.foreign() {
            let e = Shared::foreign_error();
            chunks.fail(&e);
            return Err(e);
        }
        event!(
            target: "mproc::pool",
            tracing::Level::DEBUG,
            chunks = chunks.as_slice().len(),
            items = chunks.as_slice().iter().map(|c| c.items).sum::<usize>(),
            first_task = chunks.as_slice().first().map(|c| c.id),
            "tasks submitted"
        );
        let inbox = self.inbox();
        if let Some(e) = refusal(&inbox, new_job) {
            drop(inbox);
            chunks.fail(&e);
            return Err(e);
        }
        self.submit_open(inbox, chunks);
        Ok(())
    }

    /// Submits a call (`apply_async`), a new job of one chunk of one item, and returns its
    /// job. As [`submit`](Shared::submit) of its chunk, but when this thread finds the state
    /// free and a worker holding nothing, the call's task goes into that worker's lane first,
    /// and its job and chunk are made while the worker runs it (`Dispatcher::place_call`).
    pub(crate) fn submit_call(&self, call: Call) -> Result<Arc<job::JobState>, Error> {
        if self.foreign() {
            return Err(Shared::foreign_error());
        }
        event!(target: "mproc::pool", tracing::Level::DEBUG, chunks = 1, items = 1,
            first_task = call.id, "tasks submitted");
        let inbox = self.inbox();
        if let Some(e) = refusal(&inbox, true) {
            return Err(e);
        }
        if self.direct.get().is_none()
            && let Some(mut state) = self.state_to_assign(&inbox)
            && let Some(d) = state.as_mut()
        {
            match d.place_call(call) {
                Ok(job) => {
                    d.flush();
                    if d.needs_attention() {
                        self.wake.notify();
                    }
                    return Ok(job);
                }
                Err(back) => {
                    let (chunk, job) = back.into_chunk();
                    let callbacks = self.assign_here(d, chunk.into());
                    drop(state);
                    drop(inbox);
                    job::run_callbacks(callbacks);
                    return Ok(job);
                }
            }
        }
        let (chunk, job) = call.into_chunk();
        self.submit_open(inbox, chunk.into());
        Ok(job)
    }

    /// Submits chunks the inbox (held) accepts.
    fn submit_open(&self, mut inbox: MutexGuard<'_, Inbox>, chunks: Chunks) {
        // Another backend's fast path, when no command waits before these chunks.
        let chunks = match self.direct.get() {
            Some(direct) if inbox.commands.is_empty() => match direct(chunks.into_vec()) {
                None => return,
                Some(back) => Chunks::Many(back),
            },
            _ => chunks,
        };
        if let Some(mut state) = self.state_to_assign(&inbox)
            && let Some(d) = state.as_mut()
        {
            let callbacks = self.assign_here(d, chunks);
            drop(state);
            drop(inbox);
            job::run_callbacks(callbacks);
            return;
        }
        self.send(&mut inbox, Command::Submit(chunks.into_vec()));
    }

    /// The fast path's way in: the dispatcher's state, when a submitting thread (holding the
    /// inbox) may assign and write its chunks itself because the dispatcher is waiting. Never
    /// blocks: the inbox is held, and the dispatcher takes the inbox while holding the state.
    /// Not taken while the dispatcher thread wants the state, or while a command waits before
    /// these chunks: the dispatcher will read the inbox. Nor for a broken pool.
    fn state_to_assign(&self, inbox: &Inbox) -> Option<MutexGuard<'_, Option<Dispatcher>>> {
        if !inbox.commands.is_empty() || self.wanted.load(Ordering::Relaxed) {
            return None;
        }
        let state = self.state.try_lock().ok()?;
        state
            .as_ref()
            .is_some_and(|d| d.broken.is_none())
            .then_some(state)
    }

    /// The dispatcher's state for a waited call ([`Shared::submit_waited`]): free, the
    /// dispatcher thread not wanting it, the pool not broken, and every command posted up to
    /// `posted` (a reading of `Shared::posted`) taken.
    #[inline]
    fn state_for_waited(&self, posted: u64) -> Option<MutexGuard<'_, Option<Dispatcher>>> {
        if self.wanted.load(Ordering::Relaxed) {
            return None;
        }
        let state = self.state.try_lock().ok()?;
        state
            .as_ref()
            .is_some_and(|d| d.broken.is_none() && d.taken == posted)
            .then_some(state)
    }

    /// Queues `chunks` and assigns them on this thread, which holds the inbox and the state.
    /// A chunk failed here (a descriptor it could not pass, say) completes its job on this
    /// thread: its callbacks, which may use the pool, are returned, to run once both locks
    /// are let go.
    fn assign_here(&self, d: &mut Dispatcher, chunks: Chunks) -> Vec<job::Callback> {
        job::deferring_callbacks(|| {
            d.enqueue(chunks);
            d.assign();
            d.set_owed_words();
            d.flush();
            if d.needs_attention() {
                self.wake.notify();
            }
        })
    }

    pub(crate) fn cancel(&self, ids: Vec<u64>) {
        if self.foreign() {
            return;
        }
        let mut inbox = self.inbox();
        self.send(&mut inbox, Command::Cancel(ids));
    }

    /// Like [`Shared::cancel`], but chunks already running finish (their answers are dropped):
    /// for work the caller abandons, not work that must stop.
    pub(crate) fn withdraw(&self, ids: Vec<u64>) {
        if self.foreign() {
            return;
        }
        let mut inbox = self.inbox();
        self.send(&mut inbox, Command::Withdraw(ids));
    }

    pub(crate) fn close(&self) {
        if self.foreign() {
            return;
        }
        let mut inbox = self.inbox();
        if !inbox.closed {
            inbox.closed = true;
            self.refusing.store(true, Ordering::Release);
            self.send(&mut inbox, Command::Close);
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inbox().closed
    }

    pub(crate) fn terminate(&self) {
        if self.foreign() {
            return;
        }
        let mut inbox = self.inbox();
        inbox.closed = true;
        inbox
            .stopped
            .get_or_insert_with(|| ErrorKind::Terminated.into());
        self.refusing.store(true, Ordering::Release);
        self.send(&mut inbox, Command::Terminate);
    }

    /// An `imap` iterator starts: a closed pool keeps serving it.
    pub(crate) fn stream_opened(&self) {
        self.inbox().streams += 1;
    }

    /// An `imap` iterator has submitted its last chunk (or was dropped).
    pub(crate) fn stream_closed(&self) {
        if self.foreign() {
            return;
        }
        let mut inbox = self.inbox();
        inbox.streams = inbox.streams.saturating_sub(1);
        self.send(&mut inbox, Command::Wake);
    }

    /// Waits until the dispatcher has finished.
    pub(crate) fn wait_finished(&self) {
        if self.foreign() {
            return; // nothing runs here to finish
        }
        let mut inbox = self.inbox();
        while !inbox.finished {
            inbox = self.finished.wait(inbox).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Wakes the dispatcher if a thread reading the lanes unwinds (a bug): the sleep words may be
/// left clear, or a call left out of the books; the dispatcher's next turn reads every lane and
/// sets the words again.
struct WakeOnUnwind<'a>(&'a EventFd);

impl Drop for WakeOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.notify();
        }
    }
}

/// What a call whose caller waits for it at once came to ([`Shared::submit_waited`]).
pub(crate) enum Waited {
    /// Its answer, read by the caller itself.
    Answered(job::Answered),
    /// Its job, to wait on as any call's.
    Job(Arc<job::JobState>),
}

/// A thread's spin while it reads lanes holding the state (`Shared::help`,
/// [`Shared::submit_waited`]): until a deadline, a command for the dispatcher, or the
/// dispatcher thread wanting the state.
struct Spin {
    /// The clock, read every eighth round (a round is a few tens of nanoseconds): an answer
    /// is timed by the last reading, so that none waits for the clock (see `Worker::drain`).
    now: Instant,
    until: Instant,
    posted: u64,
    round: u32,
}

impl Spin {
    fn new(now: Instant, until: Instant, posted: u64) -> Spin {
        Spin {
            now,
            until,
            posted,
            round: 0,
        }
    }

    /// Waits a moment before the next look; `false` when the spin must end. `share`: whether
    /// to let this CPU go now and then, asked every 64th round.
    fn next(&mut self, pool: &Shared, share: impl FnOnce() -> bool) -> bool {
        self.round = self.round.wrapping_add(1);
        if self.round.is_multiple_of(8) {
            self.now = Instant::now();
            if self.now >= self.until {
                return false;
            }
        }
        if pool.posted.load(Ordering::Relaxed) != self.posted
            || pool.wanted.load(Ordering::Relaxed)
        {
            return false;
        }
        // Let a worker that may wait for this CPU have it; a worker on a CPU of its own does
        // not, and a yield would only hand the turn to whatever else runs here (see
        // `Lane::say_cpu`).
        if self.round.is_multiple_of(64) {
            if share() {
                std::thread::yield_now();
            }
            // An answer that came meanwhile is not timed by the reading before.
            self.now = Instant::now();
        } else {
            std::hint::spin_loop();
        }
        true
    }
}

/// Why a submission must be refused, if it must.
fn refusal(inbox: &Inbox, new_job: bool) -> Option<Error> {
    match (&inbox.broken, &inbox.stopped) {
        (Some(e), _) => Some(e.clone()),
        (None, Some(_)) => Some(ErrorKind::PoolClosed.into()),
        _ if new_job && inbox.closed => Some(ErrorKind::PoolClosed.into()),
        _ => None,
    }
}
