//! The dispatcher: one thread per pool that owns every worker and decides who runs what.
//!
//! Its parts, each in `dispatcher/`:
//! - `chunk.rs`: a chunk as it moves between the queue and the workers;
//! - `submit.rs`: the API side ([`Shared`]'s methods: submit, cancel, close, help);
//! - `worker.rs`: its books on one worker, whose life is a `WorkerState` (`state.rs`, the
//!   state machine `README.md` beside this file draws);
//! - `policy.rs`: the scheduling rules, pure and unit-tested (windows, assignment,
//!   rebalancing, timeouts, retirement);
//! - `link.rs`: the one interface through which it talks to a worker, whatever its kind;
//!   `local.rs`: today's kind, a child process with its lane;
//! - `config.rs`: how workers are made;
//! - `tests.rs`: the loop driven through a fake kind of worker, without processes.
//!
//! This file is the loop. It knows, for each worker, the chunks it was sent, in order. Workers
//! take chunks strictly in that order, count each before running it, and publish each answer
//! before taking the next; so when a worker dies, the oldest unanswered chunk fails
//! (`WorkerLost`) if the worker's count says it was taken, the ones behind it go back to the
//! front of the queue, and a replacement starts. A worker the dispatcher kills itself (task
//! timeout, cancel, garbage) is only condemned at first: its accounting waits until its exit
//! is seen and what it sent before is read, so an answer already on its way is never
//! mistaken for a task still running.
//!
//! The API side talks to it through [`Shared`]: a command queue behind a mutex and an eventfd
//! that wakes its `poll`.

mod chunk;
mod config;
#[cfg(feature = "remote")]
mod external;
mod link;
mod local;
mod policy;
mod state;
mod submit;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub(crate) use chunk::{Call, Chunk, Chunks, Verdict};
pub(crate) use config::{Config, Gated};
pub(crate) use submit::Waited;
use link::{Answer, Link, Note, Peer, Sent};
use local::LocalLink;
use state::{Departure, WorkerState};
use worker::{Now, Worker};

use super::job::{self, JobState};
use super::stats::{PoolStats, Restarts, WorkerStats};
use crate::error::{Error, ErrorKind};
use crate::start::{self, StartMethod};
use crate::sys::time::monotonic_ns;
use crate::sys::fd::{self, EventFd};

/// What the API side asks of the dispatcher (or of another backend, `pool/backend.rs`).
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
    /// Set while the dispatcher thread waits for the state: a helping waiter lets go at once,
    /// and a submitting thread does not take it.
    wanted: AtomicBool,
    /// Set (under the inbox's lock) once the inbox refuses new jobs: closed, stopped or
    /// broken. Until then a new job needs no lock to learn that it may be encoded; `submit`
    /// decides, under the lock.
    refusing: AtomicBool,
    /// The fork generation that made the pool: in a fork child that inherited it, the
    /// dispatcher thread, the workers and the lanes are not there, and nothing may touch them.
    generation: u64,
    /// Another backend's fast path (`pool/backend.rs`): takes submitted chunks on the
    /// submitting thread when it can, handing back what it cannot take.
    pub(crate) direct: std::sync::OnceLock<Direct>,
    /// Another backend's statistics (a remote pool's agents'), for `Pool::stats`.
    pub(crate) stats_source: std::sync::OnceLock<StatsSource>,
    /// The pool's own thread (the dispatcher's, or another backend's), where callbacks run:
    /// nothing reads the workers while one runs there, so a wait there for one of the pool's
    /// tasks would wait for itself.
    pub(crate) thread: std::sync::OnceLock<std::thread::ThreadId>,
}

/// See [`Shared::stats_source`].
pub(crate) type StatsSource = Box<dyn Fn() -> PoolStats + Send + Sync>;

/// See [`Shared::direct`].
pub(crate) type Direct = Box<dyn Fn(Vec<Chunk>) -> Option<Vec<Chunk>> + Send + Sync>;

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
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, Option<Dispatcher>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, for the dispatcher thread: a thread helping meanwhile lets go at once, and
    /// a submitting thread leaves its chunks in the inbox rather than take the state first.
    /// Without this the two could pass the state back and forth, the dispatcher thread
    /// sleeping and being woken on the lock each time a caller takes it again.
    fn state_for_dispatcher(&self) -> MutexGuard<'_, Option<Dispatcher>> {
        self.wanted.store(true, Ordering::Relaxed);
        let state = self.state();
        self.wanted.store(false, Ordering::Relaxed);
        state
    }

    /// Whether a large chunk's arguments are encoded into a memory file of this process
    /// (`memfile::TaskFile`), which this dispatcher sends as it is; another backend (a remote
    /// pool, `direct`) sends bytes, so they go into a buffer.
    pub(crate) fn large_in_files(&self) -> bool {
        self.direct.get().is_none()
    }

    /// Whether a closed pool can get no more work: no `imap` stream open, and no command
    /// waiting (an `imap`'s last chunks may have come just after the dispatcher took its
    /// commands, and its stream closed just before it looks here).
    pub(crate) fn nothing_more_to_come(&self) -> bool {
        let inbox = self.inbox();
        inbox.streams == 0 && inbox.commands.is_empty()
    }

    /// The pool's statistics (`Pool::stats`); empty for a pool without this dispatcher (a
    /// remote pool), once it has ended, and in a fork child of its process.
    pub(crate) fn stats(&self) -> PoolStats {
        if self.foreign() {
            // A fork child: the state's lock may have been held when it forked.
            return PoolStats::default();
        }
        if let Some(source) = self.stats_source.get() {
            return source();
        }
        self.state().as_ref().map(Dispatcher::stats).unwrap_or_default()
    }

    /// The dispatcher is gone: refuse everything from now on and wake every `join`.
    pub(crate) fn mark_finished(&self, why: &Error) {
        let mut inbox = self.inbox();
        inbox.stopped.get_or_insert_with(|| why.clone());
        self.refusing.store(true, Ordering::Release);
        inbox.finished = true;
        // Chunks still queued are dropped here, which answers them.
        inbox.commands.clear();
        drop(inbox);
        self.finished.notify_all();
    }
}

/// What one `poll` of the dispatcher waits on.
struct Plan {
    /// Descriptor numbers (valid while the state is not held: only the dispatcher thread
    /// closes workers' descriptors) and whether to wait for writability.
    fds: Vec<(RawFd, bool)>,
    /// Per worker: how many descriptors it added to `fds` (after the wake-up eventfd).
    layout: Vec<usize>,
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
    // The memory files its large chunks gave back (`memfile::TaskFile`) go with it.
    crate::memfile::forget_files();
}

fn serve(shared: &Shared) -> Error {
    let mut unlaunched = true;
    loop {
        // The workers after the first (see `Dispatcher::new`): started here, a few at a time
        // with a turn between, without the state, so the first tasks already run on the
        // first worker meanwhile and their answers are read.
        if unlaunched {
            let later = shared
                .state()
                .as_mut()
                .and_then(|d| d.take_unlaunched(LAUNCH_BATCH));
            match later {
                Some((config, n)) => {
                    let at = Instant::now();
                    let links = LocalLink::launch_many(&config, n);
                    // Not `wanted`: a thread reading lanes meanwhile is waiting for an answer
                    // of the first worker, which the hire need not delay.
                    let callbacks = job::deferring_callbacks(|| {
                        if let Some(d) = shared.state().as_mut() {
                            d.hire_launched(links, at, false);
                        }
                    });
                    job::run_callbacks(callbacks);
                }
                None => unlaunched = false,
            }
        }
        // Callbacks of the jobs a turn completes run once the state is let go, as a waiter's
        // do (`Shared::help`): one may use the pool (submit to it, read its statistics).
        let (mut plan, mut stopped) = (None, None);
        let callbacks = {
            let mut state = shared.state_for_dispatcher();
            let d = state.as_mut().expect("installed before the thread starts");
            job::deferring_callbacks(|| match d.turn() {
                Ok(turned) => plan = Some(turned),
                Err(stop) => {
                    d.shut_down(&stop);
                    stopped = Some(stop);
                }
            })
        };
        job::run_callbacks(callbacks);
        if let Some(stop) = stopped {
            return stop;
        }
        let plan = plan.expect("a turn that did not stop made a plan");
        // A worker started in a fork server's lent spare was not told to the server then.
        crate::start::forkserver::tell_takes();
        // Waiting without the state, so submitting threads can reach the workers directly.
        let ready = fd::poll_numbers(&plan.fds, plan.deadline);
        let callbacks = {
            let mut state = shared.state_for_dispatcher();
            let d = state.as_mut().expect("only this thread removes it");
            job::deferring_callbacks(|| match ready {
                Ok(ready) => d.handle(&plan, &ready),
                Err(e) => d.break_pool(Error::os("waiting on the pool's workers", e)),
            })
        };
        job::run_callbacks(callbacks);
    }
}

/// How many of the workers after the first the dispatcher thread starts between two turns: a
/// few asked of the fork server together, not so many that answers wait long unread.
const LAUNCH_BATCH: usize = 4;

/// The dispatcher's state: its workers (of one kind, `L`) and the chunks no worker holds.
struct Dispatcher<L: Link = LocalLink> {
    shared: Arc<Shared>,
    /// Shared with the dispatcher thread while it starts workers without the state.
    config: Arc<Config>,
    workers: Vec<Worker<L>>,
    queue: VecDeque<Chunk>,
    closed: bool,
    broken: Option<Error>,
    /// Where lane frames are encoded and read.
    scratch: Vec<u8>,
    /// The books of workers that have ended, for the statistics.
    ended: Ended,
    /// Chunks taken back from workers busy with a slow one, for the statistics.
    taken_back: u64,
    /// Whether a chunk with its own time limit (`pool.timeout(d)`) ever came: from then on
    /// the dispatcher thread looks after every hand-over, as with a pool-wide `task_timeout`.
    timed: bool,
    /// The CPUs this process may use (`std::thread::available_parallelism`, at the start).
    cpus: usize,
    /// Whether the answer to a chunk just handed to a worker that held nothing may already be
    /// in its lane, with its reader's word saying awake (see [`Dispatcher::set_owed_words`]):
    /// someone must read the lanes. Cleared when they are read.
    unread: bool,
    /// Commands taken from the inbox so far: equal to `Shared::posted` when none waits there
    /// (read with the state held; see `Shared::submit_waited`).
    taken: u64,
    /// Workers `new` left to the dispatcher thread to start (see `serve`); they hold their
    /// slots meanwhile.
    unlaunched: usize,
}

/// What the caller of a waited call found in its worker's lane
/// ([`Dispatcher::look_waited`]).
enum Look {
    /// Nothing yet.
    Nothing,
    /// Its answer, booked.
    Answered(job::Answered),
    /// Something else, to judge with the call in the books.
    Other(Result<Answer, Error>),
}

/// How often a pool with `memory_limit_per_child` looks at its busy workers' memory.
const MEMORY_LOOK: Duration = Duration::from_millis(10);

/// What the statistics keep of workers that have ended.
#[derive(Default)]
struct Ended {
    tasks: u64,
    panics: u64,
    /// Per slot.
    restarts: Vec<Restarts>,
    errors: BTreeMap<String, u64>,
}

impl Ended {
    /// Keeps the work of `w`, which has ended: its tasks, panics and failures.
    fn keep_books<L: Link>(&mut self, w: &Worker<L>) {
        let (_, caught) = w.link.work(monotonic_ns());
        self.tasks += w.items;
        self.panics += caught;
        for (kind, n) in &w.failed {
            *self.errors.entry((*kind).to_owned()).or_default() += n;
        }
    }
}

/// Starts the pool's workers (so start-up errors reach `Pool::build`) and hands them to
/// `shared`, where the dispatcher thread ([`run`]) and submitting threads find them.
pub(crate) fn start(shared: Arc<Shared>, config: Config) -> Result<(), Error> {
    let d = Dispatcher::new(Arc::clone(&shared), config)?;
    *shared.state() = Some(d);
    Ok(())
}

impl<L: Link> Dispatcher<L> {
    /// Starts the pool's workers, ready to run.
    fn new(shared: Arc<Shared>, config: Config) -> Result<Dispatcher<L>, Error> {
        let mut d = Dispatcher {
            shared,
            config: Arc::new(config),
            workers: Vec::new(),
            queue: VecDeque::new(),
            closed: false,
            broken: None,
            scratch: Vec::new(),
            ended: Ended::default(),
            taken_back: 0,
            timed: false,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            unread: false,
            taken: 0,
            unlaunched: 0,
        };
        // With the fork server, the first worker is started here (its start error reaches
        // `Pool::build`) and the others by the dispatcher thread, while the first already
        // serves: asked of the server together with the first, they would delay it (the
        // server's fork of the second takes the CPU the first needs to start). The server's
        // children are the same whenever they start; a `fork` or `spawn` child is not (it
        // takes this process's memory, or its environment and directory, as they are then),
        // so those are all started here, as Python does.
        let now = match d.config.method {
            StartMethod::Forkserver => 1,
            StartMethod::Fork | StartMethod::Spawn => d.config.processes,
        };
        let launched = Instant::now();
        for (slot, link) in L::launch_many(&d.config, now).into_iter().enumerate() {
            let link = link?;
            event!(target: "mproc::pool", tracing::Level::INFO, worker = link.name(),
                pid = link.pid(), slot, "worker started");
            d.hire(link, slot, launched);
        }
        d.unlaunched = d.config.processes - now;
        Ok(d)
    }

    /// The statistics as of now (`Pool::stats`).
    fn stats(&self) -> PoolStats {
        let (now, now_ns) = (Instant::now(), monotonic_ns());
        let mut errors = self.ended.errors.clone();
        let mut panics = self.ended.panics;
        let mut workers: Vec<WorkerStats> = self
            .workers
            .iter()
            .map(|w| {
                let (busy_ns, caught) = w.link.work(now_ns);
                panics += caught;
                for (kind, n) in &w.failed {
                    *errors.entry((*kind).to_owned()).or_default() += n;
                }
                let age = now.saturating_duration_since(w.launched);
                let busy = Duration::from_nanos(busy_ns).min(age);
                // A worker may run chunks before its `Ready` is read: its start is at most
                // what it has not spent busy.
                let startup = w.ready_at.map_or(age.saturating_sub(busy), |r| {
                    r.saturating_duration_since(w.launched)
                });
                let waiting = age.saturating_sub(startup).saturating_sub(busy);
                WorkerStats {
                    agent: None,
                    slot: w.slot,
                    name: w.link.name().to_owned(),
                    pid: w.link.pid(),
                    tasks: w.items,
                    chunks: w.chunks,
                    busy,
                    waiting,
                    startup,
                    idle: age.saturating_sub(busy),
                    age,
                    restarts: self.ended.restarts.get(w.slot).copied().unwrap_or_default(),
                }
            })
            .collect();
        workers.sort_by_key(|w| (w.slot, std::cmp::Reverse(w.age)));
        if panics > 0 {
            *errors.entry("Panicked".to_owned()).or_default() += panics;
        }
        let mut restarts = Restarts::default();
        for r in &self.ended.restarts {
            restarts.add(r);
        }
        PoolStats {
            workers,
            tasks_of_ended: self.ended.tasks,
            restarts,
            errors,
            taken_back: self.taken_back,
        }
    }

    /// Keeps what the statistics need of worker `w`, which has ended (killed for
    /// `condemned`, if it was).
    fn note_departure(&mut self, w: &Worker<L>, condemned: Option<&ErrorKind>) {
        let ended = &mut self.ended;
        ended.keep_books(w);
        if ended.restarts.len() <= w.slot {
            ended.restarts.resize(w.slot + 1, Restarts::default());
        }
        let r = &mut ended.restarts[w.slot];
        #[cfg(feature = "tracing")]
        let (pid, worker, slot) = (w.link.pid(), w.link.name(), w.slot);
        match condemned {
            Some(ErrorKind::TaskTimedOut) => {
                r.timed_out += 1;
                event!(target: "mproc::pool", tracing::Level::WARN, worker, pid, slot,
                    "worker killed for a task past its task_timeout has ended");
            }
            Some(ErrorKind::MemoryExceeded { .. }) => {
                r.over_memory += 1;
                event!(target: "mproc::pool", tracing::Level::WARN, worker, pid, slot,
                    "worker killed past memory_limit_per_child has ended");
            }
            Some(ErrorKind::Cancelled) => {
                r.cancelled += 1;
                event!(target: "mproc::pool", tracing::Level::INFO, worker, pid, slot,
                    "worker killed to stop a cancelled task has ended");
            }
            #[cfg_attr(not(feature = "tracing"), expect(unused_variables))]
            Some(why) => {
                r.misbehaved += 1;
                event!(target: "mproc::pool", tracing::Level::ERROR, worker, pid, slot,
                    error = %Error::from(why.clone()), "misbehaving worker killed");
            }
            None if w.over_memory => {
                r.over_memory += 1;
                event!(target: "mproc::pool", tracing::Level::DEBUG, worker, pid, slot,
                    "worker retired after max_memory_per_child");
            }
            None if w.retired => {
                r.retired += 1;
                event!(target: "mproc::pool", tracing::Level::DEBUG, worker, pid, slot,
                    "worker retired after max_tasks_per_child");
            }
            None => {
                r.died += 1;
                event!(target: "mproc::pool", tracing::Level::ERROR, worker, pid, slot,
                    "worker died");
            }
        }
    }

    /// The slot for a new worker: the first that no worker occupies.
    fn free_slot(&self) -> usize {
        let used: HashSet<usize> = self
            .workers
            .iter()
            .filter(|w| w.occupies_slot())
            .map(|w| w.slot)
            .collect();
        (0..).find(|s| !used.contains(s)).unwrap_or(0)
    }

    /// Says to every worker holding chunks that the calling thread (a waiter reading the
    /// lanes, or one that has just handed out chunks) runs on its CPU now, and `room` (see
    /// `Lane::say_cpu`: only a call placed on an idle worker says there is room, where the
    /// pool's work is one call at a time; chunks handed out any other way say there is none;
    /// a waiter leaves it as it was: a room said by a waiter as a `map`'s last chunks
    /// finished moved a worker onto another's CPU as the next `map` began); whether this
    /// thread should let its CPU go now and then as it spins: unless every such worker said
    /// it runs on another CPU and the busy workers and this thread number no more than the
    /// CPUs.
    pub(crate) fn say_cpu(&self, room: Option<bool>) -> bool {
        let cpu = crate::sys::proc::current_cpu();
        let (mut busy, mut shared) = (0, false);
        for w in self.workers.iter().filter(|w| !w.in_flight.is_empty()) {
            // Every one is told, not only up to the first that shares.
            shared |= !matches!(w.link.say_cpu(cpu, room), Peer::Elsewhere { .. });
            busy += 1;
        }
        // No room (as `room(0)` says): one of them surely shares this CPU.
        shared || busy >= self.cpus
    }

    /// Whether the workers holding chunks, `more` about to, and one thread waiting for them
    /// number no more than the CPUs this process may use: a worker on the waiter's CPU may
    /// then move to another (`Worker::linger`). With more (a `map` on every CPU) it would
    /// only crowd a CPU where another worker runs.
    fn room(&self, more: usize) -> bool {
        let busy = self.workers.iter().filter(|w| !w.in_flight.is_empty()).count();
        busy + more < self.cpus
    }

    /// Whether the dispatcher thread must look (a deadline to set, bytes still to write, or a
    /// closed pool with nothing left to run, to end) after a submitting thread assigned chunks
    /// itself or a waiter read the lanes. The last answer of a closed pool read by a waiter
    /// (`Shared::help`) wakes no one else: the dispatcher thread, asleep since it took the
    /// `Close` with calls still running, would never look again, and `join` would wait for ever.
    fn needs_attention(&self) -> bool {
        self.config.task_timeout.is_some()
            || self.config.memory_limit_per_child.is_some()
            || self.timed
            || self.unread
            || (!self.queue.is_empty() && !self.queue_waits_for_an_answer())
            || self.workers.iter().any(|w| w.link.queued())
            || self.rebalance_deadline().is_some()
            || (self.closed && self.idle())
    }

    /// Whether chunks left queued wait for an event that wakes the dispatcher anyway: in a
    /// remote agent's pool (one chunk per worker) whose serving workers all hold theirs, the
    /// answer that frees one wakes it (and a gate that said `Later` wakes it when the agent
    /// has a worker free). Waking it for them would be a turn with nothing to do, once per
    /// batch of entries the agent's reader hands over.
    fn queue_waits_for_an_answer(&self) -> bool {
        self.config.gated.is_some()
            && self
                .workers
                .iter()
                .all(|w| !w.state.accepting() || !w.in_flight.is_empty())
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
            self.drain_lanes(None);
            self.replace_workers();
            self.assign();
            self.flush();
            if self.closed && self.idle() && self.shared.nothing_more_to_come() {
                return Err(ErrorKind::PoolClosed.into());
            }
            if let Some(deferred) = self.prepare_sleep(true) {
                self.turn_done();
                return Ok(self.plan(deferred.then(|| Instant::now() + policy::DEFERRED)));
            }
        }
        self.turn_done();
        Ok(self.plan(Some(Instant::now())))
    }

    fn turn_done(&self) {
        if let Some(g) = &self.config.gated {
            (g.flush)();
        }
    }

    /// Marks the reader asleep for every worker that holds chunks; `None` if an answer came
    /// meanwhile. A worker that holds nothing has nothing to answer: its word is set when it is
    /// next handed a chunk (see [`Dispatcher::set_owed_words`]), not at every letting go of a
    /// waiter. With `defer`,
    /// a worker holding many quick chunks wakes it only once it has answered all but half of
    /// them (see `policy::defer`); then `Some(true)`, and the dispatcher thread must sleep at
    /// most `policy::DEFERRED`. A worker whose running chunk has turned slow (its window back
    /// to `WINDOW`) wakes it at its next answer: nothing is put off while a slow chunk runs.
    fn prepare_sleep(&mut self, defer: bool) -> Option<bool> {
        let mut now = Now::later();
        let mut deferred = false;
        for w in self.workers.iter_mut().filter(|w| !w.in_flight.is_empty()) {
            w.word_owed = false;
            let ahead = match defer {
                true => policy::defer(w.in_flight.len().min(w.window(&mut now))),
                false => 0,
            };
            if !w.link.prepare_sleep(ahead as u64) {
                return None;
            }
            deferred |= ahead > 0;
        }
        Some(deferred)
    }

    /// For a submitting thread that has handed out chunks and lets go of the state without
    /// reading the lanes: sets the reader's word of each worker that was handed its first
    /// chunk meanwhile ([`Worker::hold`]), after its chunk is in its lane. Not done as a
    /// chunk is placed: a reader (the pool's thread, a waiter letting go) sets the words of
    /// every worker holding chunks as it ends, and a word set earlier would have a quick
    /// worker wake it for nothing. An answer already there makes the lanes need reading.
    fn set_owed_words(&mut self) {
        for w in &mut self.workers {
            self.unread |= !w.set_owed_word();
        }
    }

    /// Accepts every answer waiting in a lane; workers are told the reader is awake (no
    /// wake-up needed).
    fn drain_lanes(&mut self, seen: Option<Instant>) {
        self.unread = false;
        for w in &mut self.workers {
            w.link.awake();
            w.drain(&mut self.scratch, seen);
        }
    }

    /// Applies queued commands; `Some(error)` when the pool must stop now.
    fn take_commands(&mut self) -> Option<Error> {
        let commands = std::mem::take(&mut self.shared.inbox().commands);
        self.taken += commands.len() as u64;
        for command in commands {
            match command {
                Command::Submit(chunks) => match &self.broken {
                    Some(e) => chunks.into_iter().for_each(|c| c.fail(e.clone())),
                    None => self.enqueue(chunks),
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

    /// Queues submitted chunks.
    fn enqueue(&mut self, chunks: impl Into<Chunks>) {
        let chunks = chunks.into();
        self.timed = self.timed || chunks.as_slice().iter().any(|c| c.timeout.is_some());
        match chunks {
            Chunks::One(c) => self.queue.push_back(c),
            Chunks::Many(v) => self.queue.extend(v),
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.workers.iter().all(|w| w.in_flight.is_empty())
    }

    /// Gives queued chunks to workers with room, least loaded first.
    fn assign(&mut self) {
        if self.queue.is_empty() {
            return; // nothing to place (a waiter letting go, nearly always)
        }
        // Read when a worker holding chunks is sized, or when the first chunk a worker holds
        // starts its time: after it is in the lane, so that an idle worker's call does not
        // wait for the clock.
        let mut now = Now::later();
        let one_each = self.config.gated.is_some();
        for w in &mut self.workers {
            w.limit = match w.state.accepting() {
                true if one_each => 1,
                true => w.window(&mut now),
                false => 0,
            };
        }
        if one_each {
            return self.assign_gated(&mut now);
        }
        let mut placed = false;
        while let Some(chunk) = self.queue.pop_front() {
            if chunk.answered() {
                chunk.finish(Err(ErrorKind::Cancelled.into())); // cancelled while queued: a no-op
                continue;
            }
            // A worker still starting counts one more chunk: of equals, one that runs now wins.
            let loads = self.workers.iter().map(|w| {
                let starting = usize::from(w.starting());
                (w.in_flight.len() + starting, w.limit + starting)
            });
            let Some(at) = policy::least_loaded(loads) else {
                self.queue.push_front(chunk);
                break;
            };
            match self.place(at, chunk, &mut now) {
                Some(back) => self.queue.push_front(back),
                None => placed = true,
            }
        }
        if placed {
            // No room: see `assign_gated`'s end.
            self.say_cpu(Some(false));
        }
    }

    /// A remote agent's pool: picks a chunk for each free worker, asks each chunk's
    /// `on_start`, lets the gate send what it gathered (the agent marks them all running in
    /// one script), and only then puts them in the lanes, where they may start at once.
    fn assign_gated(&mut self, now: &mut Now) {
        let mut picked = Vec::new();
        while let Some(mut chunk) = self.queue.pop_front() {
            if chunk.answered() {
                chunk.finish(Err(ErrorKind::Cancelled.into())); // cancelled while queued: a no-op
                continue;
            }
            let loads = self.workers.iter().map(|w| (w.in_flight.len(), w.limit));
            let Some(at) = policy::least_loaded(loads) else {
                self.queue.push_front(chunk);
                break;
            };
            match chunk.may_start() {
                Verdict::Go => {
                    self.workers[at].limit = 0; // one chunk each: this one is taken
                    picked.push((at, chunk));
                }
                Verdict::Drop => chunk.fail(ErrorKind::Cancelled.into()),
                Verdict::Later => {
                    self.queue.push_front(chunk);
                    break;
                }
            }
        }
        if picked.is_empty() {
            return;
        }
        let go = self.config.gated.as_ref().is_none_or(|g| (g.flush)());
        let mut back = Vec::new();
        for (at, chunk) in picked {
            if !go {
                chunk.fail(ErrorKind::Cancelled.into());
                continue;
            }
            back.extend(self.place(at, chunk, now));
        }
        for chunk in back.into_iter().rev() {
            self.queue.push_front(chunk);
        }
        // Where the thread that placed them runs, and no room: what the workers' lingering
        // goes by once these are done (a call placed earlier may have said there was room).
        // Chunks placed here (a `map`, or calls queued behind others) keep the pool's thread
        // or the caller busy beside the workers, and a worker that kept its CPU while
        // lingering could hold up the very thread that hands it its next chunk.
        self.say_cpu(Some(false));
    }

    /// A call's quick way, for a submitting thread that holds the state with nothing queued:
    /// its task goes straight into the lane of a worker that holds nothing, and only then are
    /// its job and chunk made and put in that worker's books, while the worker runs it. No
    /// one reads the lanes before this thread lets go of the state, so the books are written
    /// before the answer is read, as when a chunk is placed whole. The call comes back when it
    /// cannot go so (it is then queued as any chunk).
    fn place_call(&mut self, call: Call) -> Result<Arc<JobState>, Call> {
        let Some((at, payload)) = self.idle_for(&call) else {
            return Err(call);
        };
        let room = self.room(1);
        // Its word is set with the call's frame (it holds nothing, and every answer it sent
        // has been read): the caller lets go without reading the lanes (it may never wait),
        // and the call's answer cannot come before the call. Set after it, the word would
        // need a fence and a look at the lane, which races the worker for the line its
        // answer goes in.
        if !self.send_call(at, &call, payload, true) {
            return Err(call);
        }
        let w = &mut self.workers[at];
        // Where the caller runs, for the worker lingering after it answers (it lets its CPU
        // go only if the caller may need it).
        w.link.say_cpu(crate::sys::proc::current_cpu(), Some(room));
        // The clock read while the frame's line leaves this CPU (the next locked instruction
        // waits for that); the worker's books and the caller's wait start from it.
        let now = Instant::now();
        self.timed = self.timed || call.timeout.is_some();
        let (chunk, job) = call.into_chunk();
        w.hold(chunk, &mut Now::at(now), self.config.max_tasks_per_child);
        crate::pool::job::note_placed(&job, now);
        w.word_owed = false; // set above
        w.link.wake_if_asleep();
        Ok(job)
    }

    /// The worker a call may go straight to, and the call's bytes: the first that holds
    /// nothing (the least loaded, as `assign` would pick), when nothing is queued before the
    /// call and its arguments are bytes without handles' descriptors.
    fn idle_for<'c>(&self, call: &'c Call) -> Option<(usize, &'c [u8])> {
        if !self.queue.is_empty() || self.config.gated.is_some() || !call.handles.is_empty() {
            return None;
        }
        let crate::memfile::Payload::Bytes(payload) = &call.payload else {
            return None;
        };
        let at = self
            .workers
            .iter()
            .position(|w| w.state.accepting() && w.in_flight.is_empty() && !w.starting())?;
        Some((at, payload))
    }

    /// Sends `call`'s task (its bytes, `payload`) into the lane of worker `at` (see
    /// [`idle_for`](Self::idle_for)), the reader's word set with its frame when `asleep`;
    /// whether it went. A lane found damaged condemns its worker.
    #[inline]
    fn send_call(&mut self, at: usize, call: &Call, payload: &[u8], asleep: bool) -> bool {
        let w = &mut self.workers[at];
        match w.link.send_small(call.id, call.entry, payload, &mut self.scratch, asleep) {
            Some(Sent::Placed) => true,
            Some(Sent::Broken(e)) => {
                w.condemn_front(e);
                false
            }
            Some(Sent::Full | Sent::Refused(_)) | None => false,
        }
    }

    /// A call whose caller waits for it at once, holding the state (`Shared::submit_waited`):
    /// its task goes straight into the lane of a worker that holds nothing, as in
    /// [`place_call`](Self::place_call), but nothing is made or booked for it. The caller
    /// reads its answer from that lane itself ([`look_waited`](Self::look_waited)), or puts
    /// the call in the books before it lets go ([`hold_waited`](Self::hold_waited)). Until
    /// then the worker holds nothing in the books, and no one else reads its lane: no one
    /// else has the state. Its reader's word is left saying awake (a worker holding nothing
    /// has it so): its answer wakes no one. The worker's index; `None` when the call cannot
    /// go so (it is then submitted as any call). Not for a pool whose dispatcher thread
    /// looks after every hand-over (time limits, a memory limit).
    fn place_waited(&mut self, call: &Call) -> Option<usize> {
        if self.config.task_timeout.is_some()
            || self.config.memory_limit_per_child.is_some()
            || self.timed
            || call.timeout.is_some()
        {
            return None;
        }
        let (at, payload) = self.idle_for(call)?;
        let room = self.room(1);
        if !self.send_call(at, call, payload, false) {
            return None;
        }
        let w = &mut self.workers[at];
        w.link.wake_if_asleep();
        w.link.say_cpu(crate::sys::proc::current_cpu(), Some(room));
        Some(at)
    }

    /// What worker `at`'s lane holds for the waited call `id` placed at `placed`
    /// ([`place_waited`](Self::place_waited)). Its answer is booked as a chunk's would be
    /// (`seen`: a clock reading taken a moment before the look). Anything else there (another
    /// task's answer, an error for the whole call, garbage) is returned as read, for
    /// [`hold_waited`](Self::hold_waited) to judge with the call in the books. A large answer
    /// on the socket is not here: the dispatcher thread, woken by the socket, wants the state,
    /// and the caller lets go.
    fn look_waited(&mut self, at: usize, id: u64, placed: Instant, seen: Instant) -> Look {
        let w = &mut self.workers[at];
        let read = match w.link.next_answer(&mut self.scratch) {
            Ok(None) => return Look::Nothing,
            Ok(Some((got, Ok(answered)))) if got == id => {
                if w.book_waited(id, placed, seen, self.config.max_tasks_per_child) {
                    w.link.flush(); // its `Stop`
                }
                return Look::Answered(answered);
            }
            Ok(Some(answer)) => Ok(answer),
            Err(e) => Err(e),
        };
        Look::Other(read)
    }

    /// Puts a waited call ([`place_waited`](Self::place_waited)) in worker `at`'s books as a
    /// chunk handed to it at `placed`, with what its caller read from the lane since, if
    /// anything (judged as any reader judges it): its caller lets go of the state before the
    /// answer. The call's job, to wait on.
    fn hold_waited(
        &mut self,
        at: usize,
        call: Call,
        placed: Instant,
        read: Option<Result<Answer, Error>>,
    ) -> Arc<JobState> {
        let (chunk, job) = call.into_chunk();
        let w = &mut self.workers[at];
        w.hold(chunk, &mut Now::at(placed), self.config.max_tasks_per_child);
        crate::pool::job::note_placed(&job, placed);
        match read {
            Some(Ok(answer)) => w.accept(answer),
            Some(Err(e)) => w.condemn_front(e),
            None => {}
        }
        // Every answer it sent was read (it held nothing before): its word is set as the
        // caller lets go if it still holds the call, and is not owed otherwise.
        w.word_owed = false;
        job
    }

    /// Says to the worker running a waited call, and to every worker holding chunks, that the
    /// caller runs on its CPU now; whether the caller should let its CPU go now and then as
    /// it spins (see [`say_cpu`](Self::say_cpu)).
    fn say_cpu_waited(&self, at: usize) -> bool {
        let cpu = crate::sys::proc::current_cpu();
        let shared = !matches!(self.workers[at].link.say_cpu(cpu, None), Peer::Elsewhere { .. });
        self.say_cpu(None) || shared
    }

    /// Puts `chunk` in worker `at`'s lane; gives it back when it must wait in the queue.
    fn place(&mut self, at: usize, chunk: Chunk, now: &mut Now) -> Option<Chunk> {
        let w = &mut self.workers[at];
        match w.link.send(&chunk, &mut self.scratch) {
            Sent::Placed => w.hold(chunk, now, self.config.max_tasks_per_child),
            Sent::Refused(e) => chunk.fail(e),
            Sent::Full => {
                w.limit = 0;
                return Some(chunk);
            }
            Sent::Broken(e) => {
                w.condemn_front(e);
                w.limit = 0;
                return Some(chunk);
            }
        }
        None
    }

    /// Writes what each worker can take now. A condemned worker is dying; its exit is
    /// handled when it is seen.
    fn flush(&mut self) {
        for w in self.workers.iter_mut().filter(|w| !w.state.is_condemned()) {
            w.link.flush();
        }
    }

    /// What the dispatcher waits on: the wake-up eventfd, then each worker's descriptors;
    /// and the next deadline.
    fn plan(&self, until: Option<Instant>) -> Plan {
        let timeout = self.config.task_timeout;
        // With a memory limit, a look every `MEMORY_LOOK` while any task runs.
        let memory_look = self.config.memory_limit_per_child.and_then(|_| {
            let busy = self.workers.iter().any(|w| !w.in_flight.is_empty());
            busy.then(|| Instant::now() + MEMORY_LOOK)
        });
        let deadline = self
            .workers
            .iter()
            .filter_map(|w| w.deadline(timeout))
            .chain(self.rebalance_deadline())
            .chain(memory_look)
            .chain(until)
            .min();
        let mut fds = vec![(self.shared.wake.as_fd().as_raw_fd(), false)];
        let mut layout = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            layout.push(w.link.watch(&mut fds, !w.state.is_condemned()));
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
        let mut exits = Vec::new();
        let mut at = 1;
        for (i, &count) in plan.layout.iter().enumerate() {
            let reported = &ready[at..at + count];
            at += count;
            if i >= self.workers.len() {
                break; // the pool broke while handling an earlier worker
            }
            let polled = self.workers[i].link.polled(reported);
            if polled.read {
                self.read_worker(i);
            }
            if polled.exited && i < self.workers.len()
                && let Some(lost) = self.check_worker_exit(i) {
                    exits.push((i, lost));
                }
        }
        self.reap_departed(exits);
        self.expire_timeouts();
        if let Some(limit) = self.config.memory_limit_per_child {
            let mut taken_back = Vec::new();
            for w in &mut self.workers {
                taken_back.extend(w.check_memory_limit(limit));
            }
            self.requeue(taken_back.into_iter());
        }
        self.rebalance();
    }

    /// Handles every message worker `i` has sent: notes, then answers.
    fn read_worker(&mut self, i: usize) {
        self.read_notes(i);
        if let Some(w) = self.workers.get_mut(i) {
            w.drain(&mut self.scratch, None);
        }
    }

    /// Handles worker `i`'s notes (what it says besides answers).
    fn read_notes(&mut self, i: usize) {
        while let Some(note) = self.workers[i].link.next_note() {
            let w = &mut self.workers[i];
            match note {
                Note::Ready => w.said_ready(),
                Note::InitFailed(e) => {
                    self.break_pool(ErrorKind::InitializerFailed(Box::new(e)).into());
                    return;
                }
                Note::Closed => w.state.socket_closed(),
                Note::Garbage(e) => w.condemn_front(e),
            }
        }
    }

    /// If worker `i` has ended: reads what it sent before, and returns the error for chunks
    /// lost with it.
    fn check_worker_exit(&mut self, i: usize) -> Option<Error> {
        let lost = self.workers[i].link.exited()?;
        self.read_worker(i);
        Some(lost)
    }

    /// Removes the workers that have ended (`exits`: their places, in order, and the error
    /// for what they lost): the chunk each was running fails (with the reason it was
    /// condemned for, if it was condemned for that chunk), the others are requeued.
    fn reap_departed(&mut self, exits: Vec<(usize, Error)>) {
        if exits.is_empty() || self.broken.is_some() {
            return; // a broken pool has already failed everything its workers held
        }
        // From the last place back, so each removal leaves the earlier places as they were;
        // then handled in order.
        let mut departed: Vec<_> = (exits.into_iter().rev())
            .map(|(i, lost)| (self.workers.swap_remove(i), lost))
            .collect();
        while let Some((w, lost)) = departed.pop() {
            self.depart(w, lost);
        }
    }

    /// Accounts for one worker that has ended.
    fn depart(&mut self, mut w: Worker<L>, lost: Error) {
        let condemned = match &w.state {
            WorkerState::Condemned { why, .. } => Some(why.kind().clone()),
            _ => None,
        };
        if let Some(e) = &self.broken {
            // An earlier one broke the pool: what this one held fails as everything else did.
            // Its work still counts; it is not replaced.
            self.ended.keep_books(&w);
            let e = e.clone();
            for c in w.in_flight.drain(..) {
                c.fail(e.clone());
            }
            return;
        }
        self.note_departure(&w, condemned.as_ref());
        // Every answer it published has been accepted: if it took one more chunk, that one
        // was running; the ones after it never started.
        let running = policy::was_running(w.link.started(), w.answered);
        let front = w.front();
        let failure = match w.state.depart(front, lost) {
            Departure::BeforeReady(why) if self.config.init.is_some() => {
                // Died during its initializer: never respawn into the same failure.
                self.break_pool(ErrorKind::InitializerFailed(Box::new(why)).into());
                return;
            }
            Departure::BeforeReady(why) | Departure::Lost(why) => why,
        };
        // A chunk taken back from it is no task of its (it died as it skipped it): nothing
        // failed.
        if running
            && let Some(chunk) = w.in_flight.pop_front()
            && !chunk.revoked
        {
                *self.ended.errors.entry(failure.kind().name().to_owned()).or_default() +=
                    chunk.items as u64;
                event!(target: "mproc::pool", tracing::Level::ERROR, task = chunk.id,
                    worker = w.link.name(), pid = w.link.pid(), error = %failure,
                    "task lost with its worker");
                chunk.fail(failure);
            }
        self.requeue(w.in_flight.drain(..));
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
                w.drain(&mut self.scratch, None);
                if w.rebalance_at().is_some_and(|at| at <= now) {
                    w.rebalanced = w.front();
                    taken_back.extend(w.revoke_untaken());
                }
            }
        }
        self.taken_back += taken_back.len() as u64;
        for c in taken_back.into_iter().rev() {
            self.queue.push_front(c);
        }
    }

    /// Whether some worker could take a chunk taken back from another now (one that has said
    /// `Ready`: a chunk is not moved from one worker still starting to another).
    fn has_room(&self, now: Instant) -> bool {
        let mut now = Now::at(now);
        self.workers.iter().any(|w| {
            w.state.accepting()
                && !w.starting()
                && policy::has_room(w.in_flight.len(), w.window(&mut now))
        })
    }

    /// Kills workers whose running chunk has passed its deadline.
    fn expire_timeouts(&mut self) {
        let timeout = self.config.task_timeout;
        let now = Instant::now();
        let mut taken_back = Vec::new();
        for w in &mut self.workers {
            if w.deadline(timeout).is_some_and(|d| d <= now) {
                // An answer already in the lane means it finished in time.
                w.drain(&mut self.scratch, None);
            }
            if w.deadline(timeout).is_some_and(|d| d <= now) {
                event!(target: "mproc::pool", tracing::Level::WARN, task = w.front(),
                    worker = w.link.name(), pid = w.link.pid(),
                    "task past its task_timeout: killing its worker");
                taken_back.extend(w.condemn_running(ErrorKind::TaskTimedOut.into()));
            }
        }
        self.requeue(taken_back.into_iter());
    }

    /// Cancelled chunks: dropped from the queue. A chunk a worker holds but has not claimed
    /// yet is revoked, and the worker skips it; one it has taken (running, or about to)
    /// costs the worker if `kill_running`, else it runs to its end (its answer is dropped).
    fn cancel(&mut self, ids: HashSet<u64>, kill_running: bool) {
        event!(target: "mproc::pool", tracing::Level::DEBUG, tasks = ids.len(), kill_running,
            "tasks cancelled");
        self.queue.retain(|c| !ids.contains(&c.id));
        let mut taken_back = Vec::new();
        for w in &mut self.workers {
            // Answers already published are not "running".
            w.drain(&mut self.scratch, None);
            let mut running = None;
            for (at, c) in w.in_flight.iter().enumerate() {
                if c.revoked || !ids.contains(&c.id) {
                    continue;
                }
                // Its number in the worker's count of tasks taken.
                let task = w.answered + at as u64 + 1;
                if !w.link.revoke(task) {
                    running = Some((at, c.id));
                    break; // the worker runs in order: it has taken nothing after this one
                }
            }
            if let Some((at, id)) = running.filter(|_| kill_running) {
                // It may finish this one and take the next before the kill lands: the ones
                // behind are taken back first, to run elsewhere.
                let (copies, finished) = w.revoke_behind(at);
                taken_back.extend(copies);
                if !finished {
                    event!(target: "mproc::pool", tracing::Level::INFO, task = id,
                        worker = w.link.name(), pid = w.link.pid(),
                        "running task cancelled: killing its worker");
                    w.condemn(Some(id), ErrorKind::Cancelled.into());
                }
            }
        }
        for c in taken_back.into_iter().rev() {
            self.queue.push_front(c);
        }
    }

    /// Starts workers until `processes` occupy their slots (unless closed and idle, or broken).
    fn replace_workers(&mut self) {
        if self.broken.is_some() || (self.closed && self.idle()) {
            return;
        }
        // The workers still to start after the first hold their slots too.
        let occupied =
            self.workers.iter().filter(|w| w.occupies_slot()).count() + self.unlaunched;
        let n = policy::to_start(occupied, self.config.processes);
        if n == 0 {
            return;
        }
        let launched = Instant::now();
        let links = L::launch_many(&self.config, n);
        self.hire_launched(links, launched, true);
    }

    /// Up to `most` of the workers left to start after the first, with the configuration to
    /// start them by, for the dispatcher thread to start without the state; `None` when none
    /// are left, or none will be (the pool is broken or stopping).
    fn take_unlaunched(&mut self, most: usize) -> Option<(Arc<Config>, usize)> {
        if self.broken.is_some() || self.shared.inbox().stopped.is_some() {
            self.unlaunched = 0;
        }
        let n = self.unlaunched.min(most);
        self.unlaunched -= n;
        (n > 0).then(|| (Arc::clone(&self.config), n))
    }

    /// Starts, here, the workers left to start after the first (tests: no dispatcher thread).
    #[cfg(test)]
    fn launch_the_rest(&mut self) {
        if let Some((config, n)) = self.take_unlaunched(usize::MAX) {
            let at = Instant::now();
            let links = L::launch_many(&config, n);
            self.hire_launched(links, at, false);
        }
    }

    /// Hires workers just started (begun at `at`): the ones after the first, or replacements.
    /// One that failed to start is tried again at the next turn, unless no worker is left to
    /// serve meanwhile (then the pool is broken).
    fn hire_launched(&mut self, links: Vec<Result<L, Error>>, at: Instant, replacing: bool) {
        #[cfg(feature = "tracing")]
        let (started, failed_to) = if replacing {
            (
                "replacement worker started",
                "a replacement worker could not start; it is tried again",
            )
        } else {
            (
                "worker started",
                "a worker could not start; it is tried again",
            )
        };
        #[cfg(not(feature = "tracing"))]
        let _ = replacing;
        let mut failed = None;
        for link in links {
            match link {
                Ok(link) => {
                    let slot = self.free_slot();
                    event!(target: "mproc::pool", tracing::Level::INFO, worker = link.name(),
                        pid = link.pid(), slot, "{started}");
                    self.hire(link, slot, at);
                }
                Err(e) => {
                    event!(target: "mproc::pool", tracing::Level::WARN, error = %e,
                        "{failed_to}");
                    failed = Some(e);
                }
            }
        }
        if let Some(e) = failed.filter(|_| self.workers.is_empty() && self.broken.is_none()) {
            self.break_pool(e);
        }
    }

    /// Adds a worker just launched into `slot`.
    fn hire(&mut self, link: L, slot: usize, launched: Instant) {
        let (cap, at_once) = (self.config.memory_cap(), self.config.at_once());
        self.workers.push(Worker::new(link, slot, launched, cap, at_once));
    }

    /// The pool can no longer run anything: everything waiting fails with `err`, new work is
    /// refused with it, and the workers are killed.
    fn break_pool(&mut self, err: Error) {
        if self.broken.is_some() {
            return;
        }
        self.shared.set_broken(&err);
        self.broken = Some(err.clone());
        for c in self.queue.drain(..) {
            c.fail(err.clone());
        }
        for mut w in self.workers.drain(..) {
            w.link.kill();
            for c in w.in_flight.drain(..) {
                c.fail(err.clone());
            }
            w.link.wait(fd::deadline_after(start::PATIENCE));
            self.ended.keep_books(&w);
        }
    }

    /// Ends the pool: on close (all work done) workers are asked to stop and exit on their own;
    /// on terminate they are killed and what is left fails with `Terminated`.
    fn shut_down(&mut self, why: &Error) {
        let terminate = *why.kind() == ErrorKind::Terminated;
        let mut inbox = self.shared.inbox();
        inbox.stopped.get_or_insert_with(|| why.clone());
        self.shared.refusing.store(true, Ordering::Release);
        drop(inbox);
        for c in self.queue.drain(..) {
            c.fail(why.clone());
        }
        for w in &mut self.workers {
            if terminate {
                w.link.kill();
            } else {
                w.link.stop();
                w.link.flush();
            }
        }
        let deadline = fd::deadline_after(start::PATIENCE);
        for mut w in self.workers.drain(..) {
            for c in w.in_flight.drain(..) {
                c.fail(why.clone());
            }
            if !w.link.wait(deadline) {
                w.link.kill();
                w.link.wait(fd::deadline_after(Duration::from_secs(1)));
            }
        }
    }
}
