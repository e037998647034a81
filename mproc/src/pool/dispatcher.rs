//! The dispatcher: one thread per pool that owns every worker and decides who runs what.
//!
//! It knows, for each worker, the chunks it was sent, in order (`in_flight`). Workers run
//! chunks strictly in that order, so the oldest unanswered chunk is the one running; when a
//! worker dies, exactly that chunk fails (`WorkerLost`), the ones behind it go back to the
//! front of the queue, and a replacement starts. `task_timeout` is measured from when a chunk
//! became the oldest; past it the worker is killed and the chunk fails with `TaskTimedOut`.
//! See `README.md` beside this file for the states.
//!
//! The API side talks to it through [`Shared`]: a command queue behind a mutex and an eventfd
//! that wakes its `poll`. Everything it writes to workers goes through per-worker outboxes,
//! so one slow worker never blocks the others.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::result::JobState;
use super::task;
use crate::channel::{self, Outbox};
use crate::error::{Error, ErrorKind, LostReport};
use crate::process;
use crate::start::{self, Child, StartMethod};
use crate::sys::exe;
use crate::sys::fd::{self, EventFd, Interest};
use crate::sys::proc::Exit;
use crate::wire::message::{FromWorker, PoolWorkerSpec, Role, Start, ToWorker};

/// Chunks a worker may hold at once: the one it runs and the next, already in its socket, so
/// it never waits for the dispatcher between tasks.
const WINDOW: usize = 2;

/// The window for a worker whose chunks take less than [`QUICK`]: deep enough that a stream
/// of tiny tasks leaves the dispatcher many per system call.
const QUICK_WINDOW: usize = 32;

/// Chunks faster than this (on average) count as tiny.
const QUICK: Duration = Duration::from_micros(200);

/// A chunk of one job, as the dispatcher moves it around.
pub(crate) struct Chunk {
    pub(crate) id: u64,
    pub(crate) entry: i64,
    pub(crate) payload: Vec<u8>,
    pub(crate) job: Arc<JobState>,
    pub(crate) index: usize,
}

impl Chunk {
    fn fail(self, err: Error) {
        self.job.deliver(self.index, Err(err));
    }
}

pub(crate) enum Command {
    Submit(Vec<Chunk>),
    Cancel(Vec<u64>),
    Close,
    Terminate,
}

/// What the API side and the dispatcher share.
pub(crate) struct Shared {
    inbox: Mutex<Inbox>,
    wake: EventFd,
    next_chunk: AtomicU64,
}

#[derive(Default)]
struct Inbox {
    commands: VecDeque<Command>,
    closed: bool,
    /// Set when the dispatcher has stopped: nothing sent after it would ever be answered.
    stopped: Option<Error>,
    broken: Option<Error>,
}

impl Shared {
    pub(crate) fn new() -> Result<Arc<Shared>, Error> {
        Ok(Arc::new(Shared {
            inbox: Mutex::new(Inbox::default()),
            wake: EventFd::new()
                .map_err(|e| Error::os("creating the pool's wake-up eventfd", e))?,
            next_chunk: AtomicU64::new(1),
        }))
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, inbox: &mut Inbox, command: Command) {
        inbox.commands.push_back(command);
        self.wake.notify();
    }

    /// A fresh chunk id.
    pub(crate) fn chunk_id(&self) -> u64 {
        self.next_chunk.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether new jobs are accepted; the error to give if not.
    pub(crate) fn check_open(&self) -> Result<(), Error> {
        let inbox = self.inbox();
        if let Some(e) = &inbox.broken {
            return Err(e.clone());
        }
        if inbox.closed || inbox.stopped.is_some() {
            return Err(ErrorKind::PoolClosed.into());
        }
        Ok(())
    }

    /// Queues chunks. A new job is refused once the pool is closed; more chunks of a job
    /// submitted before (an `imap` pulling its input) are taken until the dispatcher stops.
    pub(crate) fn submit(&self, chunks: Vec<Chunk>, new_job: bool) -> Result<(), Error> {
        let mut inbox = self.inbox();
        let refusal = match (&inbox.broken, &inbox.stopped) {
            (Some(e), _) | (None, Some(e)) => Some(e.clone()),
            _ if new_job && inbox.closed => Some(ErrorKind::PoolClosed.into()),
            _ => None,
        };
        if let Some(e) = refusal {
            drop(inbox);
            for c in chunks {
                c.fail(e.clone());
            }
            return Err(e);
        }
        self.send(&mut inbox, Command::Submit(chunks));
        Ok(())
    }

    pub(crate) fn cancel(&self, ids: Vec<u64>) {
        let mut inbox = self.inbox();
        self.send(&mut inbox, Command::Cancel(ids));
    }

    pub(crate) fn close(&self) {
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
        let mut inbox = self.inbox();
        inbox.closed = true;
        self.send(&mut inbox, Command::Terminate);
    }
}

/// How workers are made.
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: StartMethod,
    pub(crate) init: Option<(i64, Vec<u8>)>,
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
    stopping: bool,
    outbox: Outbox,
    /// A running average of how long its chunks take, to size its window.
    average: Duration,
    /// How it ended, once its exit descriptor said so.
    ended: Option<Exit>,
}

impl Worker {
    fn window(&self) -> usize {
        if self.average < QUICK {
            QUICK_WINDOW
        } else {
            WINDOW
        }
    }

    /// Records a chunk answered after `took`.
    fn timed(&mut self, took: Duration) {
        self.average = (self.average * 7 + took) / 8;
    }

    fn lost(&self, exit: Exit) -> Error {
        ErrorKind::WorkerLost(LostReport {
            process: self.name.clone(),
            pid: self.child.pid(),
            signal: match exit {
                Exit::Signal(s) => Some(s),
                _ => None,
            },
            exit_code: match exit {
                Exit::Code(c) => Some(c),
                _ => None,
            },
        })
        .into()
    }

    fn deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        if self.in_flight.is_empty() {
            return None;
        }
        timeout.and_then(|t| self.front_since.checked_add(t))
    }
}

/// The dispatcher thread's state.
pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    config: Config,
    workers: Vec<Worker>,
    queue: VecDeque<Chunk>,
    closed: bool,
    broken: Option<Error>,
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
        let child = start::launch(self.config.method, &channel::encode_message(&start)?)?;
        Ok(Worker {
            child,
            name,
            ready: false,
            in_flight: VecDeque::new(),
            front_since: Instant::now(),
            given: 0,
            stopping: false,
            outbox: Outbox::default(),
            // Start cautious: the window deepens once chunks prove quick.
            average: QUICK * 2,
            ended: None,
        })
    }

    /// The thread's body.
    pub(crate) fn run(mut self) {
        let stop = loop {
            if let Some(stop) = self.take_commands() {
                break stop;
            }
            self.replace_workers();
            self.assign();
            self.flush();
            if self.closed && self.idle() {
                break ErrorKind::PoolClosed.into();
            }
            if let Err(e) = self.wait_and_handle() {
                self.break_pool(e);
            }
        };
        self.shut_down(stop);
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
                Command::Cancel(ids) => self.cancel(&ids),
                Command::Close => self.closed = true,
                Command::Terminate => return Some(ErrorKind::Terminated.into()),
            }
        }
        None
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.workers.iter().all(|w| w.in_flight.is_empty())
    }

    /// Gives queued chunks to ready workers with room, least loaded first.
    fn assign(&mut self) {
        while !self.queue.is_empty() {
            let Some(w) = self
                .workers
                .iter_mut()
                .filter(|w| w.ready && !w.stopping && w.in_flight.len() < w.window())
                .min_by_key(|w| w.in_flight.len())
            else {
                return;
            };
            let chunk = self.queue.pop_front().expect("not empty");
            let task = ToWorker::Task {
                id: chunk.id,
                entry: chunk.entry,
                payload: chunk.payload.as_slice(),
            };
            if let Err(e) = w.outbox.push(&task) {
                chunk.fail(e);
                continue;
            }
            if w.in_flight.is_empty() {
                w.front_since = Instant::now();
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
            }
        }
    }

    /// Writes what each worker can take now. A worker whose socket is broken is dying; its
    /// exit is handled when it is seen.
    fn flush(&mut self) {
        for w in &mut self.workers {
            let _ = w.outbox.flush(w.child.channel());
        }
    }

    /// Polls every worker and the wake-up eventfd until something happens or the next task
    /// deadline, then handles it.
    fn wait_and_handle(&mut self) -> Result<(), Error> {
        let timeout = self.config.task_timeout;
        let deadline = self
            .workers
            .iter()
            .filter_map(|w| w.deadline(timeout))
            .min();
        let mut interests = vec![Interest {
            fd: self.shared.wake.as_fd(),
            write: false,
        }];
        for w in &self.workers {
            let ctrl = w.child.channel_fd();
            interests.push(Interest {
                fd: ctrl,
                write: !w.outbox.is_empty(),
            });
            interests.push(Interest {
                fd: w.child.exit_fd(),
                write: false,
            });
        }
        let ready = fd::poll(&interests, deadline)
            .map_err(|e| Error::os("waiting on the pool's workers", e))?;
        drop(interests);
        if ready[0].readable {
            self.shared.wake.drain();
        }
        // Worker i's readiness is at 1 + 2i (control socket) and 2 + 2i (exit). Handling one
        // can break the pool, which empties the list: stop then.
        for i in 0..(ready.len() - 1) / 2 {
            let (ctrl, exit) = (ready[1 + 2 * i], ready[2 + 2 * i]);
            if i < self.workers.len() && ctrl.writable {
                let w = &mut self.workers[i];
                let _ = w.outbox.flush(w.child.channel());
            }
            if i < self.workers.len() && (ctrl.readable || ctrl.hangup) {
                self.read_worker(i);
            }
            if i < self.workers.len() && (exit.readable || exit.hangup) {
                self.check_worker_exit(i);
            }
        }
        self.reap_departed();
        self.expire_timeouts();
        Ok(())
    }

    /// Handles every message worker `i` has sent.
    fn read_worker(&mut self, i: usize) {
        loop {
            let w = &mut self.workers[i];
            let frame = match w.child.channel().try_recv_frame() {
                Ok(Some(frame)) => frame,
                // Nothing more now, or it closed: its exit will tell the rest.
                Ok(None) | Err(_) => return,
            };
            match channel::decode_message::<FromWorker>(&frame) {
                Ok(FromWorker::Ready) => w.ready = true,
                Ok(FromWorker::InitFailed(e)) => {
                    self.break_pool(ErrorKind::InitializerFailed(Box::new(e)).into());
                    return;
                }
                Ok(FromWorker::Done { id, result }) => {
                    let pos = w.in_flight.iter().position(|c| c.id == id);
                    if let Some(chunk) = pos.and_then(|p| w.in_flight.remove(p)) {
                        let now = Instant::now();
                        w.timed(now.saturating_duration_since(w.front_since));
                        w.front_since = now;
                        chunk
                            .job
                            .deliver(chunk.index, result.map(serde_bytes::ByteBuf::into_vec));
                    }
                }
                Err(e) => {
                    // Garbage from a worker: it cannot be trusted with more work.
                    let _ = w.child.signal(libc::SIGKILL);
                    if let Some(chunk) = w.in_flight.pop_front() {
                        chunk.fail(e);
                    }
                }
            }
        }
    }

    /// Marks worker `i` as gone if it has ended (its messages were read just before).
    fn check_worker_exit(&mut self, i: usize) {
        let w = &mut self.workers[i];
        let ended = match w.child.poll_exit() {
            Ok(exit) => exit,
            Err(_) => Some(Exit::Unknown),
        };
        if ended.is_some() {
            w.ended = ended;
            // Read anything it managed to send before dying.
            self.read_worker(i);
        }
    }

    /// Removes every worker that has ended: its running chunk fails, the others are requeued.
    fn reap_departed(&mut self) {
        let mut i = 0;
        while i < self.workers.len() {
            let Some(exit) = self.workers[i].ended else {
                i += 1;
                continue;
            };
            let mut w = self.workers.swap_remove(i);
            let lost = w.lost(exit);
            if !w.ready && self.broken.is_none() {
                // Died before it could serve: the initializer (or start-up) failed. Never
                // respawn into the same failure.
                self.break_pool(ErrorKind::InitializerFailed(Box::new(lost)).into());
                continue;
            }
            if let Some(running) = w.in_flight.pop_front() {
                running.fail(lost);
            }
            self.requeue(w.in_flight.drain(..));
        }
    }

    /// Puts chunks that never started back at the front of the queue, in order.
    fn requeue(&mut self, chunks: impl DoubleEndedIterator<Item = Chunk>) {
        for c in chunks.rev() {
            self.queue.push_front(c);
        }
    }

    /// Kills workers whose running chunk has passed its deadline.
    fn expire_timeouts(&mut self) {
        let Some(timeout) = self.config.task_timeout else {
            return;
        };
        let now = Instant::now();
        let mut i = 0;
        while i < self.workers.len() {
            if self.workers[i]
                .deadline(Some(timeout))
                .is_some_and(|d| d <= now)
            {
                let mut w = self.workers.swap_remove(i);
                let _ = w.child.signal(libc::SIGKILL);
                if let Some(running) = w.in_flight.pop_front() {
                    running.fail(ErrorKind::TaskTimedOut.into());
                }
                self.requeue(w.in_flight.drain(..));
                // Dropping the child reaps it in the background.
            } else {
                i += 1;
            }
        }
    }

    /// Cancelled chunks: dropped from the queue; a running one costs its worker.
    fn cancel(&mut self, ids: &[u64]) {
        self.queue.retain(|c| !ids.contains(&c.id));
        let mut i = 0;
        while i < self.workers.len() {
            let running = self.workers[i].in_flight.front().map(|c| c.id);
            if running.is_some_and(|id| ids.contains(&id)) {
                let mut w = self.workers.swap_remove(i);
                let _ = w.child.signal(libc::SIGKILL);
                w.in_flight.pop_front();
                let rest: Vec<Chunk> = w
                    .in_flight
                    .drain(..)
                    .filter(|c| !ids.contains(&c.id))
                    .collect();
                self.requeue(rest.into_iter());
            } else {
                i += 1;
            }
        }
    }

    /// Starts workers until there are `processes` again (unless closed and idle, or broken).
    fn replace_workers(&mut self) {
        if self.broken.is_some() || (self.closed && self.idle()) {
            return;
        }
        let serving = self.workers.iter().filter(|w| !w.stopping).count();
        for _ in serving..self.config.processes {
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
    fn shut_down(mut self, why: Error) {
        let terminate = *why.kind() == ErrorKind::Terminated;
        {
            let mut inbox = self.shared.inbox();
            inbox.stopped = Some(why.clone());
            for command in inbox.commands.drain(..) {
                if let Command::Submit(chunks) = command {
                    chunks.into_iter().for_each(|c| c.fail(why.clone()));
                }
            }
        }
        for c in self.queue.drain(..) {
            c.fail(why.clone());
        }
        let deadline = fd::deadline_after(start::PATIENCE);
        for w in &mut self.workers {
            if terminate {
                let _ = w.child.signal(libc::SIGKILL);
            } else {
                let _ = w.outbox.push(&ToWorker::<&[u8]>::Stop);
                let _ = w.outbox.flush(w.child.channel());
            }
        }
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
