//! The dispatcher: one thread per pool that owns every worker and decides who runs what.
//!
//! It knows, for each worker, the chunks it was sent, in order (`in_flight`). Workers take
//! chunks strictly in that order, count each in their lane before running it, and publish each
//! answer before taking the next; so when a worker dies, the oldest unanswered chunk fails
//! (`WorkerLost`) if the lane's count says it was taken, the ones behind it go back to the front
//! of the queue, and a replacement starts. A worker the dispatcher kills itself (task timeout, cancel, garbage on its socket) is
//! only "condemned" at first: its accounting waits until its exit is seen and its socket drained,
//! so an answer already on its way is never mistaken for a task still running. See `README.md`
//! beside this file for the states.
//!
//! The API side talks to it through [`Shared`]: a command queue behind a mutex and an eventfd
//! that wakes its `poll`. Chunks and answers travel in each worker's lane (shared memory, see
//! `pool/lane.rs`); what goes on a worker's socket (large frames, wake-ups, `Stop`) goes through
//! its outbox, so one slow worker never blocks the others.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::job::{self, JobState};
use super::lane::Lane;
use super::task;
use crate::channel::{self, Outbox};
use crate::error::{Error, ErrorKind};
use crate::process;
use crate::start::{self, Child, StartMethod};
use crate::sys::exe;
use crate::sys::fd::{self, EventFd};
use crate::sys::proc::Exit;
use crate::wire::codec;
use crate::wire::message::{FromWorker, PoolWorkerSpec, Role, Start, ToWorker};

/// Chunks a worker may hold at once when they are slow: the one it runs and the next, already
/// in its lane, so it never waits for the dispatcher between tasks.
const WINDOW: usize = 2;

/// The most chunks a worker whose chunks are quick may hold: enough that a stream of tiny
/// tasks keeps it busy while the dispatcher sleeps between wake-ups.
const MAX_WINDOW: usize = 256;
// A claim slot must outlive every task a worker may hold.
const _: () = assert!(MAX_WINDOW <= super::lane::MARKS);

/// How much work (by the worker's running average) its window may hold: little enough that
/// few tasks wait behind one that turns out slow.
const DEPTH: Duration = Duration::from_millis(1);

/// Chunks faster than this (on average) count as quick; a window stops growing while the
/// running chunk is older than five times this.
const QUICK: Duration = Duration::from_micros(200);

/// A chunk of one job, as the dispatcher moves it around. Dropped unanswered (the pool is
/// going away), it answers `Terminated`, so no waiter is ever left without an answer.
pub(crate) struct Chunk {
    pub(crate) id: u64,
    pub(crate) entry: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) job: Arc<JobState>,
    pub(crate) index: usize,
    pub(crate) items: usize,
    answered: bool,
    /// Taken back from a worker that holds it but had not taken it (it will skip it): this is
    /// the inert entry left in that worker's order; a copy went back to the queue.
    revoked: bool,
    /// Descriptors of the handles among its arguments: such a chunk goes on the socket.
    handles: Vec<std::os::fd::OwnedFd>,
}

impl Chunk {
    pub(crate) fn new(
        id: u64,
        entry: i64,
        payload: Vec<u8>,
        job: Arc<JobState>,
        index: usize,
        items: usize,
    ) -> Chunk {
        Chunk {
            id,
            entry,
            payload,
            job,
            index,
            items,
            answered: false,
            revoked: false,
            handles: Vec::new(),
        }
    }

    /// The descriptors of the handles among its arguments.
    pub(crate) fn with_handles(mut self, handles: Vec<std::os::fd::OwnedFd>) -> Chunk {
        self.handles = handles;
        self
    }

    /// Gives the job this chunk's answer (an inert revoked entry has none to give: its copy
    /// answers).
    fn finish(mut self, outcome: super::job::ChunkOutcome) {
        if !self.revoked {
            self.job.deliver(self.index, outcome);
        }
        self.answered = true;
    }

    /// Leaves an inert entry here and returns the live copy (same id, same slot).
    fn revoke(&mut self) -> Chunk {
        self.revoked = true;
        self.answered = true;
        Chunk::new(
            self.id,
            self.entry,
            std::mem::take(&mut self.payload),
            Arc::clone(&self.job),
            self.index,
            self.items,
        )
        .with_handles(std::mem::take(&mut self.handles))
    }

    fn fail(self, err: Error) {
        self.finish(Err(err));
    }

    /// Whether the job already has an answer for it (it was cancelled).
    fn answered(&self) -> bool {
        self.job.is_answered(self.index)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if !self.answered {
            self.job
                .deliver(self.index, Err(ErrorKind::Terminated.into()));
        }
    }
}

pub(crate) enum Command {
    Submit(Vec<Chunk>),
    /// Cancel these chunks; kill the workers running any of them.
    Cancel(Vec<u64>),
    /// Cancel these chunks, but let the ones already running finish.
    Withdraw(Vec<u64>),
    Close,
    Terminate,
    /// Nothing to do but look again (a stream ended).
    Wake,
}

/// What the API side and the dispatcher share.
pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    /// The dispatcher's state. Its thread holds it while it works and lets go while it waits
    /// in `poll`; a submitting thread that finds it free assigns its chunks itself and writes
    /// them to the workers, saving a wake-up of the dispatcher on the way to a worker.
    state: Mutex<Option<Dispatcher>>,
    /// Signalled when the dispatcher has finished (for `join` from several threads).
    finished: Condvar,
    wake: EventFd,
    next_chunk: AtomicU64,
    /// Commands sent so far: a helping waiter stops when this moves.
    posted: AtomicU64,
    /// Set while the dispatcher thread, woken from `poll`, waits for the state: a helping
    /// waiter lets go at once.
    wanted: AtomicBool,
    /// The fork generation that made the pool: in a fork child that inherited it, the
    /// dispatcher thread, the workers and the lanes are not there, and nothing may touch them.
    generation: u64,
}

#[derive(Default)]
struct Inbox {
    commands: VecDeque<Command>,
    closed: bool,
    /// Set once the dispatcher stops (or is told to terminate): nothing sent after it would be
    /// answered.
    stopped: Option<Error>,
    broken: Option<Error>,
    /// `imap` iterators that may still submit chunks: a closed pool serves them to the end.
    streams: usize,
    finished: bool,
}

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
            generation: crate::sys::proc::fork_generation(),
        }))
    }

    /// Whether this process is a fork child of the one that made the pool.
    pub(crate) fn foreign(&self) -> bool {
        crate::sys::proc::fork_generation() != self.generation
    }

    /// The error for using a pool in a fork child of its process.
    pub(crate) fn foreign_error() -> Error {
        Error::invalid(
            "this Pool belongs to the process that created it; a forked child cannot use it \
             (create a pool in the child instead)",
        )
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
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
    /// side. Before letting go it sets the sleep words back as the dispatcher left them (and
    /// wakes the dispatcher if anything arrived meanwhile), so nothing published goes unseen.
    /// Callbacks of jobs it completes run after it has let go.
    pub(crate) fn help(&self, done: &dyn Fn() -> bool, until: Instant) -> bool {
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
        // If this unwinds (a bug), the sleep words may be left clear: wake the dispatcher,
        // whose next turn reads every lane and sets them again.
        struct WakeOnUnwind<'a>(&'a EventFd);
        impl Drop for WakeOnUnwind<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.notify();
                }
            }
        }
        let _unwind = WakeOnUnwind(&self.wake);
        let callbacks = job::deferring_callbacks(|| {
            for round in 1u32.. {
                d.drain_lanes();
                if done()
                    || Instant::now() >= until
                    || self.posted.load(Ordering::Relaxed) != posted
                    || self.wanted.load(Ordering::Relaxed)
                {
                    break;
                }
                // Let a worker or the dispatcher that waits for this CPU have it.
                if round % 64 == 0 {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            d.assign();
            d.flush();
            let rested = (0..4).any(|_| {
                let rested = d.workers.iter().all(|w| w.lane.prepare_sleep());
                if !rested {
                    d.drain_lanes();
                }
                rested
            });
            if !rested || d.needs_attention() {
                self.wake.notify();
            }
        });
        drop(state);
        job::run_callbacks(callbacks);
        true
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
        refusal(&self.inbox(), true).map_or(Ok(()), Err)
    }

    /// Queues chunks. A new job is refused once the pool is closed; more chunks of a job
    /// submitted before (an `imap` pulling its input) are taken until the dispatcher stops.
    pub(crate) fn submit(&self, chunks: Vec<Chunk>, new_job: bool) -> Result<(), Error> {
        if self.foreign() {
            let e = Shared::foreign_error();
            for c in chunks {
                c.fail(e.clone());
            }
            return Err(e);
        }
        let mut inbox = self.inbox();
        if let Some(e) = refusal(&inbox, new_job) {
            drop(inbox);
            for c in chunks {
                c.fail(e.clone());
            }
            return Err(e);
        }
        // The fast path: the dispatcher is waiting, so assign and write here. Never blocks:
        // the inbox is held, and the dispatcher takes the inbox while holding the state.
        let chunks = match self.state.try_lock() {
            Ok(mut state) => match state.as_mut() {
                Some(d) if inbox.commands.is_empty() && d.broken.is_none() => {
                    d.queue.extend(chunks);
                    d.assign();
                    d.flush();
                    if d.needs_attention() {
                        self.wake.notify();
                    }
                    return Ok(());
                }
                _ => chunks,
            },
            Err(_) => chunks,
        };
        self.send(&mut inbox, Command::Submit(chunks));
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, Option<Dispatcher>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
        self.send(&mut inbox, Command::Terminate);
    }

    /// An `imap` iterator starts: a closed pool keeps serving it.
    pub(crate) fn stream_opened(&self) {
        self.inbox().streams += 1;
    }

    /// Whether a closed pool can get no more work: no `imap` stream open, and no command
    /// waiting (an `imap`'s last chunks may have come just after the dispatcher took its
    /// commands, and its stream closed just before it looks here).
    fn nothing_more_to_come(&self) -> bool {
        let inbox = self.inbox();
        inbox.streams == 0 && inbox.commands.is_empty()
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

    /// The dispatcher is gone: refuse everything from now on and wake every `join`.
    fn mark_finished(&self, why: &Error) {
        let mut inbox = self.inbox();
        inbox.stopped.get_or_insert_with(|| why.clone());
        inbox.finished = true;
        // Chunks still queued are dropped here, which answers them.
        inbox.commands.clear();
        drop(inbox);
        self.finished.notify_all();
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

/// How workers are made.
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: StartMethod,
    pub(crate) init: Option<(i64, Vec<u8>)>,
    /// Descriptors of the handles among the initializer's arguments, sent to every worker.
    pub(crate) init_fds: Vec<std::os::fd::OwnedFd>,
    /// The initializer's arguments, kept as long as a worker may still be started: every new
    /// worker decodes them again, so the handles among them are still held by this process
    /// (a queue waited on here must not conclude that nobody can put while one worker
    /// replaces another: the next one will hold it).
    #[expect(dead_code, reason = "held, never read")]
    pub(crate) init_args: Option<Box<dyn std::any::Any + Send>>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
}

struct Worker {
    child: Child,
    name: String,
    ready: bool,
    in_flight: VecDeque<Chunk>,
    /// When the oldest chunk in flight became the running one.
    front_since: Instant,
    given: usize,
    /// Takes no more chunks (rotated out, condemned, or its socket closed).
    stopping: bool,
    /// Killed by the dispatcher, and why: the chunk it targeted (if any) gets this error.
    condemned: Option<(Option<u64>, Error)>,
    /// Whether its control socket can still be read.
    ctrl_open: bool,
    outbox: Outbox,
    /// A running average of how long its chunks take, to size its window.
    average: Duration,
    /// How it ended, once its exit descriptor said so.
    ended: Option<Exit>,
    /// The shared-memory rings its tasks and answers travel in.
    lane: Lane,
    /// Answers that came on the socket (too large for the lane), in order, each waiting for
    /// its placeholder in the lane.
    socket_answers: VecDeque<(u64, Result<serde_bytes::ByteBuf, Error>)>,
    /// Placeholders met in the lane whose answers have not come on the socket yet; the lane is
    /// not read past them.
    placeholders: usize,
    /// Answers accepted; compared with the lane's `started` count when it dies.
    answered: u64,
    /// How many chunks it may hold in this round of assignments (0 once its lane is full).
    limit: usize,
    /// The front chunk whose slowness already made the dispatcher take back the chunks
    /// waiting behind it.
    rebalanced: Option<u64>,
}

impl Worker {
    fn accepting(&self) -> bool {
        self.ready && !self.stopping && self.ctrl_open
    }

    /// Whether it counts toward the pool's size: serving, or still finishing chunks.
    fn occupies_slot(&self) -> bool {
        !self.stopping || !self.in_flight.is_empty()
    }

    /// How many chunks it may hold, as of `now`.
    fn window(&self, now: Instant) -> usize {
        let front_quick = self.in_flight.is_empty()
            || now.saturating_duration_since(self.front_since) < QUICK * 5;
        if !front_quick {
            return WINDOW;
        }
        let each = (self.average.as_nanos() as u64).max(1000);
        usize::try_from(DEPTH.as_nanos() as u64 / each)
            .unwrap_or(MAX_WINDOW)
            .clamp(WINDOW, MAX_WINDOW)
    }

    /// Accepts the answer to the chunk it was running (its oldest).
    fn accept(&mut self, id: u64, result: Result<serde_bytes::ByteBuf, Error>, now: Instant) {
        if self
            .in_flight
            .front()
            .is_some_and(|c| c.id == id && c.revoked)
        {
            // It skipped a chunk taken back from it; the copy runs elsewhere.
            self.in_flight.pop_front();
            self.answered += 1;
            self.front_since = now;
            return;
        }
        if self.in_flight.front().is_some_and(|c| c.id == id) {
            let chunk = self.in_flight.pop_front().expect("just looked");
            self.answered += 1;
            self.timed(now.saturating_duration_since(self.front_since));
            self.front_since = now;
            chunk.finish(result.map(serde_bytes::ByteBuf::into_vec));
        } else {
            // Out of order: it is not running what we think. Trust nothing more.
            self.condemn(None, Error::protocol("a pool worker answered out of order"));
        }
    }

    /// Reads the answers in its lane, in order, taking large ones from `socket_answers` at
    /// their placeholders.
    fn drain_lane(&mut self, scratch: &mut Vec<u8>) {
        let now = Instant::now();
        loop {
            while self.placeholders > 0 {
                let Some((id, result)) = self.socket_answers.pop_front() else {
                    return; // the lane waits for the socket
                };
                self.placeholders -= 1;
                self.accept(id, result, now);
            }
            match self.lane.pop_into(scratch) {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    let front = self.in_flight.front().map(|c| c.id);
                    self.condemn(front, Error::protocol("a pool worker corrupted its lane"));
                    return;
                }
            }
            match channel::decode_message::<FromWorker>(scratch) {
                Ok(FromWorker::Done { id, result }) => self.accept(id, result, now),
                Ok(FromWorker::OnSocket) => self.placeholders += 1,
                Ok(_) | Err(_) => {
                    let front = self.in_flight.front().map(|c| c.id);
                    self.condemn(
                        front,
                        Error::protocol("a pool worker wrote garbage in its lane"),
                    );
                    return;
                }
            }
        }
    }

    /// Records a chunk answered after `took`.
    fn timed(&mut self, took: Duration) {
        self.average = (self.average * 7 + took) / 8;
    }

    fn lost(&self, exit: Exit) -> Error {
        Error::lost(&self.name, self.child.pid(), exit)
    }

    /// When its running chunk passes `timeout` (scaled by the chunk's items: the timeout is
    /// per task).
    fn deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        let front = self.in_flight.front()?;
        if self.condemned.is_some() || front.revoked {
            return None;
        }
        let allowed = timeout?.checked_mul(front.items.max(1) as u32)?;
        self.front_since.checked_add(allowed)
    }

    /// When the chunks waiting behind a slow running chunk should be taken back, if ever.
    fn rebalance_at(&self) -> Option<Instant> {
        let front = self.in_flight.front()?;
        let waiting = self.in_flight.len() > 1;
        (waiting && self.condemned.is_none() && self.rebalanced != Some(front.id))
            .then(|| self.front_since + QUICK * 5)
    }

    /// Takes back the chunks it holds but has not claimed (revoking them in its lane so it
    /// skips them), leaving inert entries in their place; returns the live copies, in order.
    fn revoke_untaken(&mut self) -> Vec<Chunk> {
        let taken = self.lane.started().saturating_sub(self.answered) as usize;
        let mut copies = Vec::new();
        for at in taken.max(1)..self.in_flight.len() {
            let task = self.answered + at as u64 + 1;
            let c = &mut self.in_flight[at];
            if c.revoked || c.answered() {
                continue;
            }
            if !self.lane.revoke(task) {
                break; // it has just claimed this one: it runs here
            }
            copies.push(c.revoke());
        }
        copies
    }

    /// Kills it; the accounting happens when its exit is seen.
    fn condemn(&mut self, target: Option<u64>, why: Error) {
        if self.condemned.is_none() {
            let _ = self.child.signal(libc::SIGKILL);
            self.condemned = Some((target, why));
            self.stopping = true;
        }
    }
}

/// What one `poll` of the dispatcher waits on.
struct Plan {
    /// Descriptor numbers (valid while the state is not held: only the dispatcher thread
    /// closes workers' descriptors) and whether to wait for writability.
    fds: Vec<(RawFd, bool)>,
    /// Per worker: whether its control socket is in `fds` after its exit descriptor.
    layout: Vec<bool>,
    deadline: Option<Instant>,
}

/// The dispatcher thread's body. A panic in it (a bug) still ends the pool cleanly: the state
/// is dropped, which answers every chunk it held with `Terminated`, and `join` returns.
pub(crate) fn run(shared: Arc<Shared>) {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| serve(&shared)));
    let why = match outcome {
        Ok(why) => why,
        Err(payload) => {
            std::mem::forget(payload);
            Error::protocol("the pool's dispatcher failed; the pool was stopped")
        }
    };
    // Dropping the state answers whatever it still held and breaks the Arc cycle.
    let state = shared.state().take();
    drop(state);
    shared.mark_finished(&why);
}

fn serve(shared: &Shared) -> Error {
    loop {
        let plan = {
            let mut state = shared.state();
            let d = state.as_mut().expect("installed before the thread starts");
            match d.turn() {
                Ok(plan) => plan,
                Err(stop) => {
                    d.shut_down(&stop);
                    return stop;
                }
            }
        };
        // Waiting without the state, so submitting threads can reach the workers directly.
        let ready = fd::poll_numbers(&plan.fds, plan.deadline);
        shared.wanted.store(true, Ordering::Relaxed);
        let mut state = shared.state();
        shared.wanted.store(false, Ordering::Relaxed);
        let d = state.as_mut().expect("only this thread removes it");
        match ready {
            Ok(ready) => d.handle(&plan, &ready),
            Err(e) => d.break_pool(Error::os("waiting on the pool's workers", e)),
        }
    }
}

/// The dispatcher's state.
pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    config: Config,
    workers: Vec<Worker>,
    queue: VecDeque<Chunk>,
    closed: bool,
    broken: Option<Error>,
    /// Where lane frames are encoded and read.
    scratch: Vec<u8>,
}

impl Dispatcher {
    /// Starts the pool's workers (so start-up errors reach `Pool::build`), ready to run.
    pub(crate) fn new(shared: Arc<Shared>, config: Config) -> Result<Dispatcher, Error> {
        let mut d = Dispatcher {
            shared,
            config,
            workers: Vec::new(),
            queue: VecDeque::new(),
            closed: false,
            broken: None,
            scratch: Vec::new(),
        };
        for _ in 0..d.config.processes {
            let w = d.start_worker()?;
            d.workers.push(w);
        }
        Ok(d)
    }

    fn start_worker(&self) -> Result<Worker, Error> {
        let (number, lineage) = process::next_child();
        let prefix = match self.config.method {
            StartMethod::Fork => "ForkPoolWorker",
            StartMethod::Spawn => "SpawnPoolWorker",
            StartMethod::Forkserver => "ForkServerPoolWorker",
        };
        let name = format!("{prefix}-{number}");
        let start = Start {
            handles: self.config.init_fds.len() as u32,
            identity: exe::identity(),
            entry: task::worker_entry(),
            target: "mproc::Pool worker".into(),
            name: name.clone(),
            lineage,
            args: Vec::new(),
            role: Role::PoolWorker(PoolWorkerSpec {
                init: self
                    .config
                    .init
                    .as_ref()
                    .map(|(entry, args)| (*entry, serde_bytes::ByteBuf::from(args.clone()))),
            }),
        };
        let init_fds: Vec<_> = self.config.init_fds.iter().map(AsFd::as_fd).collect();
        let mut child = start::launch(
            self.config.method,
            &channel::encode_message(&start)?,
            &init_fds,
        )?;
        let (lane, file) =
            Lane::create().map_err(|e| Error::os("creating a pool worker's lane", e))?;
        // Small, but the start message before it may still fill the socket: bounded, like it.
        let lane_message = channel::encode_message(&ToWorker::<&[u8]>::Lane)?;
        let sent = child.channel().send_frame_until(
            &lane_message,
            &[file.as_fd()],
            fd::deadline_after(start::PATIENCE),
        );
        drop(file);
        if let Err(e) = sent {
            let _ = child.signal(libc::SIGKILL);
            return Err(e);
        }
        Ok(Worker {
            child,
            name,
            ready: false,
            in_flight: VecDeque::new(),
            front_since: Instant::now(),
            given: 0,
            stopping: false,
            condemned: None,
            ctrl_open: true,
            outbox: Outbox::default(),
            // Start cautious: the window deepens once chunks prove quick.
            average: QUICK * 2,
            ended: None,
            lane,
            socket_answers: VecDeque::new(),
            placeholders: 0,
            answered: 0,
            limit: 0,
            rebalanced: None,
        })
    }

    /// Hands the started workers to `shared`, where the dispatcher thread ([`run`]) and
    /// submitting threads find them.
    pub(crate) fn install(self) {
        let shared = Arc::clone(&self.shared);
        *shared.state() = Some(self);
    }

    /// Whether the dispatcher thread must look (a deadline to set, or bytes still to write)
    /// after a submitting thread assigned chunks itself.
    fn needs_attention(&self) -> bool {
        self.config.task_timeout.is_some()
            || !self.queue.is_empty()
            || self.workers.iter().any(|w| !w.outbox.is_empty())
            || self.rebalance_deadline().is_some()
    }

    /// When the dispatcher should look at taking chunks back from a slow worker: only while
    /// another worker has room (else the answer that frees one wakes it anyway).
    fn rebalance_deadline(&self) -> Option<Instant> {
        let at = self.workers.iter().filter_map(Worker::rebalance_at).min()?;
        self.has_room(Instant::now()).then_some(at)
    }

    /// One turn of work; `Err(why)` when the pool must stop, else what to wait on.
    fn turn(&mut self) -> Result<Plan, Error> {
        // Answers keep arriving in the lanes while this runs: go round until every lane is
        // empty with its sleep word set, or, after a few rounds, poll without waiting (so
        // exits and deadlines are still looked at).
        for _ in 0..4 {
            if let Some(stop) = self.take_commands() {
                return Err(stop);
            }
            self.drain_lanes();
            self.replace_workers();
            self.assign();
            self.flush();
            if self.closed && self.idle() && self.shared.nothing_more_to_come() {
                return Err(ErrorKind::PoolClosed.into());
            }
            if self.workers.iter().all(|w| w.lane.prepare_sleep()) {
                return Ok(self.plan(None));
            }
        }
        Ok(self.plan(Some(Instant::now())))
    }

    /// Accepts every answer waiting in a lane; workers are told the reader is awake (no
    /// wake-up needed).
    fn drain_lanes(&mut self) {
        for w in &mut self.workers {
            w.lane.awake();
            w.drain_lane(&mut self.scratch);
        }
    }

    /// Applies queued commands; `Some(error)` when the pool must stop now.
    fn take_commands(&mut self) -> Option<Error> {
        let commands = std::mem::take(&mut self.shared.inbox().commands);
        for command in commands {
            match command {
                Command::Submit(chunks) => match &self.broken {
                    Some(e) => chunks.into_iter().for_each(|c| c.fail(e.clone())),
                    None => self.queue.extend(chunks),
                },
                Command::Cancel(ids) => self.cancel(ids.into_iter().collect(), true),
                Command::Withdraw(ids) => self.cancel(ids.into_iter().collect(), false),
                Command::Close => self.closed = true,
                // Whatever came after it in this batch is dropped, which answers it.
                Command::Terminate => return Some(ErrorKind::Terminated.into()),
                Command::Wake => {}
            }
        }
        None
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.workers.iter().all(|w| w.in_flight.is_empty())
    }

    /// Gives queued chunks to workers with room, least loaded first.
    fn assign(&mut self) {
        let now = Instant::now();
        for w in &mut self.workers {
            w.limit = if w.accepting() { w.window(now) } else { 0 };
        }
        while let Some(chunk) = self.queue.pop_front() {
            if chunk.answered() {
                chunk.finish(Err(ErrorKind::Cancelled.into())); // cancelled while queued: a no-op
                continue;
            }
            let Some(w) = self
                .workers
                .iter_mut()
                .filter(|w| w.in_flight.len() < w.limit)
                .min_by_key(|w| w.in_flight.len())
            else {
                self.queue.push_front(chunk);
                return;
            };
            let task = ToWorker::Task {
                id: chunk.id,
                entry: chunk.entry,
                payload: chunk.payload.as_slice(),
                handles: chunk.handles.len() as u32,
            };
            // Small tasks go in the lane; a large one (or one carrying handles' descriptors) on
            // the socket, with a placeholder in the lane that keeps its place in the order.
            let small = chunk.handles.is_empty() && codec::encoded_len(&task).is_ok_and(Lane::fits);
            let scratch = &mut self.scratch;
            scratch.clear();
            let placed = if small {
                let _ = codec::encode_into(scratch, &task);
                w.lane.push(scratch)
            } else {
                let _ = codec::encode_into(scratch, &ToWorker::<&[u8]>::OnSocket);
                match w.lane.has_room(scratch.len()) {
                    Ok(true) => {
                        let copies = chunk
                            .handles
                            .iter()
                            .map(|fd| crate::sys::fd::dup_above(fd.as_fd(), 0))
                            .collect::<Result<Vec<_>, _>>();
                        let pushed = match copies {
                            Ok(fds) => w.outbox.push_with_fds(&task, fds),
                            Err(e) => Err(Error::os("passing a handle to a pool worker", e)),
                        };
                        if let Err(e) = pushed {
                            chunk.fail(e);
                            continue;
                        }
                        // It had room a moment ago and only this thread writes: a refusal
                        // now means the worker tampered with the lane (it is killed below, so
                        // the task already queued on its socket never runs).
                        match w.lane.push(scratch) {
                            Ok(true) => Ok(true),
                            _ => Err(super::lane::Corrupt),
                        }
                    }
                    other => other,
                }
            };
            if placed.is_err() {
                let front = w.in_flight.front().map(|c| c.id);
                w.condemn(front, Error::protocol("a pool worker corrupted its lane"));
            }
            if placed != Ok(true) {
                w.limit = 0;
                self.queue.push_front(chunk);
                continue;
            }
            if w.lane.peer_needs_wake() {
                let _ = w.outbox.push(&ToWorker::<&[u8]>::Wake);
            }
            if w.in_flight.is_empty() {
                w.front_since = now;
            }
            w.in_flight.push_back(chunk);
            w.given += 1;
            if self
                .config
                .max_tasks_per_child
                .is_some_and(|max| w.given >= max)
            {
                let _ = w.outbox.push(&ToWorker::<&[u8]>::Stop);
                w.stopping = true;
                w.limit = 0;
            }
        }
    }

    /// Writes what each worker can take now. A worker whose socket is broken is dying; its
    /// exit is handled when it is seen.
    fn flush(&mut self) {
        for w in self.workers.iter_mut().filter(|w| w.condemned.is_none()) {
            let _ = w.outbox.flush(w.child.channel());
        }
    }

    /// What the dispatcher waits on: the wake-up eventfd, then per worker its exit descriptor
    /// and, while open, its control socket; and the next task deadline.
    fn plan(&self, now: Option<Instant>) -> Plan {
        let timeout = self.config.task_timeout;
        let deadline = self
            .workers
            .iter()
            .filter_map(|w| w.deadline(timeout))
            .chain(self.rebalance_deadline())
            .chain(now)
            .min();
        let mut fds = vec![(self.shared.wake.as_fd().as_raw_fd(), false)];
        let mut layout = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            fds.push((w.child.exit_fd().as_raw_fd(), false));
            if w.ctrl_open {
                let write = !w.outbox.is_empty() && w.condemned.is_none();
                fds.push((w.child.channel_fd().as_raw_fd(), write));
            }
            layout.push(w.ctrl_open);
        }
        Plan {
            fds,
            layout,
            deadline,
        }
    }

    /// Handles what `poll` reported for `plan` (the worker list has not changed since: only
    /// this thread adds or removes workers).
    fn handle(&mut self, plan: &Plan, ready: &[fd::Ready]) {
        if ready[0].readable {
            self.shared.wake.drain();
        }
        let mut at = 1;
        for (i, &has_ctrl) in plan.layout.iter().enumerate() {
            let exit = ready[at];
            let ctrl = if has_ctrl {
                ready[at + 1]
            } else {
                Default::default()
            };
            at += 1 + usize::from(has_ctrl);
            if i >= self.workers.len() {
                break; // the pool broke while handling an earlier worker
            }
            if ctrl.writable {
                let w = &mut self.workers[i];
                let _ = w.outbox.flush(w.child.channel());
            }
            if ctrl.readable || ctrl.hangup {
                self.read_worker(i);
            }
            if i < self.workers.len() && (exit.readable || exit.hangup) {
                self.check_worker_exit(i);
            }
        }
        self.reap_departed();
        self.expire_timeouts();
        self.rebalance();
    }

    /// Handles every message worker `i` has sent, on its socket and in its lane.
    fn read_worker(&mut self, i: usize) {
        self.read_socket(i);
        if let Some(w) = self.workers.get_mut(i) {
            w.drain_lane(&mut self.scratch);
        }
    }

    /// Handles the messages on worker `i`'s socket (answers there wait for their place).
    fn read_socket(&mut self, i: usize) {
        let w = &mut self.workers[i];
        while w.ctrl_open {
            let frame = match w.child.channel().try_recv_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(e) => {
                    // Closed, or garbage that cannot be framed: either way it can say nothing
                    // more. If it lives on, it is of no use.
                    w.ctrl_open = false;
                    w.stopping = true;
                    // Closed mid-frame is a death while sending (its exit tells how), not
                    // garbage.
                    if *e.kind() != ErrorKind::Closed && !w.child.channel().at_eof() {
                        let front = w.in_flight.front().map(|c| c.id);
                        w.condemn(front, e);
                    }
                    return;
                }
            };
            match channel::decode_message::<FromWorker>(&frame) {
                Ok(FromWorker::Ready) => w.ready = true,
                Ok(FromWorker::InitFailed(e)) => {
                    self.break_pool(ErrorKind::InitializerFailed(Box::new(e)).into());
                    return;
                }
                Ok(FromWorker::Done { id, result }) => w.socket_answers.push_back((id, result)),
                Ok(FromWorker::Wake) => {}
                Ok(FromWorker::OnSocket) => {
                    let front = w.in_flight.front().map(|c| c.id);
                    w.condemn(front, Error::protocol("a pool worker sent a lane message"));
                }
                Err(e) => {
                    // Garbage from a worker: it cannot be trusted with more work.
                    let front = w.in_flight.front().map(|c| c.id);
                    w.condemn(front, e);
                }
            }
        }
    }

    /// Notes that worker `i` has ended, after reading what it sent before.
    fn check_worker_exit(&mut self, i: usize) {
        let ended = match self.workers[i].child.poll_exit() {
            Ok(exit) => exit,
            Err(_) => Some(Exit::Unknown),
        };
        if ended.is_some() {
            self.read_worker(i);
            if let Some(w) = self.workers.get_mut(i) {
                w.ended = ended;
            }
        }
    }

    /// Removes every worker that has ended: the chunk it was running fails (with the reason it
    /// was killed for, if it was killed for that chunk), the others are requeued.
    fn reap_departed(&mut self) {
        let mut i = 0;
        while i < self.workers.len() {
            let Some(exit) = self.workers[i].ended else {
                i += 1;
                continue;
            };
            let mut w = self.workers.swap_remove(i);
            // An answer sent on the socket just before it died, without its placeholder.
            if w.placeholders == 0 {
                while let Some((id, result)) = w.socket_answers.pop_front() {
                    w.accept(id, result, Instant::now());
                }
            }
            // Every answer it published has been accepted: if it took one more task, that one
            // was running; the ones after it never started.
            let running = w.lane.started() > w.answered;
            let failure = match w.condemned.take() {
                Some((target, why)) if target == w.in_flight.front().map(|c| c.id) => why,
                _ => w.lost(exit),
            };
            if !w.ready && self.config.init.is_some() && self.broken.is_none() {
                // Died during its initializer: never respawn into the same failure.
                self.break_pool(ErrorKind::InitializerFailed(Box::new(failure)).into());
                continue;
            }
            if running {
                if let Some(chunk) = w.in_flight.pop_front() {
                    chunk.fail(failure);
                }
            }
            self.requeue(w.in_flight.drain(..));
        }
    }

    /// Puts chunks that never started back at the front of the queue, in order (dropping the
    /// ones already answered: cancelled).
    fn requeue(&mut self, chunks: impl DoubleEndedIterator<Item = Chunk>) {
        for c in chunks.rev() {
            if c.revoked {
                continue; // inert: its copy is queued or running elsewhere
            }
            if c.answered() {
                c.finish(Err(ErrorKind::Cancelled.into())); // already answered: a no-op
            } else {
                self.queue.push_front(c);
            }
        }
    }

    /// Takes back the chunks waiting behind a chunk that has run for a while, when another
    /// worker could run them now: a slow task never holds up quick ones queued behind it.
    fn rebalance(&mut self) {
        let now = Instant::now();
        if !self.has_room(now) {
            return;
        }
        let mut taken_back = Vec::new();
        for w in &mut self.workers {
            if w.rebalance_at().is_some_and(|at| at <= now) {
                w.drain_lane(&mut self.scratch);
                if w.rebalance_at().is_some_and(|at| at <= now) {
                    w.rebalanced = w.in_flight.front().map(|c| c.id);
                    taken_back.extend(w.revoke_untaken());
                }
            }
        }
        for c in taken_back.into_iter().rev() {
            self.queue.push_front(c);
        }
    }

    /// Whether some worker could take a chunk taken back from another now.
    fn has_room(&self, now: Instant) -> bool {
        self.workers
            .iter()
            .any(|w| w.accepting() && w.in_flight.len() < w.window(now).min(WINDOW))
    }

    /// Kills workers whose running chunk has passed its deadline.
    fn expire_timeouts(&mut self) {
        let timeout = self.config.task_timeout;
        let now = Instant::now();
        for w in &mut self.workers {
            if w.deadline(timeout).is_some_and(|d| d <= now) {
                // An answer already in the lane means it finished in time.
                w.drain_lane(&mut self.scratch);
            }
            if w.deadline(timeout).is_some_and(|d| d <= now) {
                let front = w.in_flight.front().map(|c| c.id);
                w.condemn(front, ErrorKind::TaskTimedOut.into());
            }
        }
    }

    /// Cancelled chunks: dropped from the queue. A chunk a worker holds but has not claimed
    /// yet is revoked in its lane, and the worker skips it; one it has taken (running, or about to)
    /// costs the worker if `kill_running`, else it runs to its end (its answer is dropped).
    fn cancel(&mut self, ids: HashSet<u64>, kill_running: bool) {
        self.queue.retain(|c| !ids.contains(&c.id));
        for w in &mut self.workers {
            // Answers already published are not "running".
            w.drain_lane(&mut self.scratch);
            let mut running = None;
            for (at, c) in w.in_flight.iter().enumerate() {
                if c.revoked || !ids.contains(&c.id) {
                    continue;
                }
                // Its number in the worker's count of tasks taken.
                let task = w.answered + at as u64 + 1;
                if !w.lane.revoke(task) {
                    running = Some(c.id);
                    break; // the worker runs in order: it has taken nothing after this one
                }
            }
            if let Some(id) = running.filter(|_| kill_running) {
                w.condemn(Some(id), ErrorKind::Cancelled.into());
            }
        }
    }

    /// Starts workers until `processes` occupy their slots (unless closed and idle, or broken).
    fn replace_workers(&mut self) {
        if self.broken.is_some() || (self.closed && self.idle()) {
            return;
        }
        let occupied = self.workers.iter().filter(|w| w.occupies_slot()).count();
        for _ in occupied..self.config.processes {
            match self.start_worker() {
                Ok(w) => self.workers.push(w),
                Err(e) if self.workers.is_empty() => {
                    self.break_pool(e);
                    return;
                }
                Err(_) => return, // try again at the next event
            }
        }
    }

    /// The pool can no longer run anything: everything waiting fails with `err`, new work is
    /// refused with it, and the workers are killed.
    fn break_pool(&mut self, err: Error) {
        if self.broken.is_some() {
            return;
        }
        self.shared.inbox().broken = Some(err.clone());
        self.broken = Some(err.clone());
        for c in self.queue.drain(..) {
            c.fail(err.clone());
        }
        for mut w in self.workers.drain(..) {
            let _ = w.child.signal(libc::SIGKILL);
            for c in w.in_flight.drain(..) {
                c.fail(err.clone());
            }
            let _ = w.child.wait(fd::deadline_after(start::PATIENCE));
        }
    }

    /// Ends the pool: on close (all work done) workers are asked to stop and exit on their own;
    /// on terminate they are killed and what is left fails with `Terminated`.
    fn shut_down(&mut self, why: &Error) {
        let terminate = *why.kind() == ErrorKind::Terminated;
        self.shared
            .inbox()
            .stopped
            .get_or_insert_with(|| why.clone());
        for c in self.queue.drain(..) {
            c.fail(why.clone());
        }
        for w in &mut self.workers {
            if terminate {
                let _ = w.child.signal(libc::SIGKILL);
            } else {
                let _ = w.outbox.push(&ToWorker::<&[u8]>::Stop);
                let _ = w.outbox.flush(w.child.channel());
            }
        }
        let deadline = fd::deadline_after(start::PATIENCE);
        for mut w in self.workers.drain(..) {
            for c in w.in_flight.drain(..) {
                c.fail(why.clone());
            }
            if !matches!(w.child.wait(deadline), Ok(Some(_))) {
                let _ = w.child.signal(libc::SIGKILL);
                let _ = w.child.wait(fd::deadline_after(Duration::from_secs(1)));
            }
        }
    }
}
