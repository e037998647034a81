//! The agent: a worker host's side of remote pools. It reads task entries from the build's
//! stream (a consumer of its group), runs each in a local mproc pool of its own (one per
//! remote pool, with that pool's initializer and limits, retired when idle), and records each
//! answer with one atomic script. A task that crashes its process fails alone: the local pool
//! replaces the worker, and the agent stays up.
//!
//! Threads, each blocking read with its own connection:
//! - the heartbeat: refreshes `hb:<agent>` every quarter of its TTL (a CPU-bound task never
//!   starves it), runs the reaper, and checks running tasks for cancels and gone pools;
//! - the reader: `XREADGROUP` of at most the free part of the agent's window (its workers
//!   plus a read-ahead of about 1 ms of work: none before a task's time is known, nor for
//!   tasks of 10 ms or more, so that an agent holds no long task another agent's idle worker
//!   could run), so a dead agent strands little; it checks each
//!   frame's MAC before decoding it and hands the entry to its local pool, where it waits for
//!   a worker (held: not marked running);
//! - each local pool's dispatcher, through the hub: just before workers get entries, it marks
//!   them running and records the answers it gathered, in one `STEP` script on the hub's
//!   connection (written before a worker can see the entries; its reply read later). A local
//!   pool gives each worker one entry at a time, so what is marked running is exactly what
//!   runs, and a worker's next entry starts one hand-over after its answer, with no trip
//!   through another thread.
//! - the engine (the calling thread): acts on what the others report (cancels, refusals,
//!   being declared dead, SIGTERM, Redis gone) and reads replies left unread.
//!
//! Redis lost (a connection dropped, the server down or restarted): each thread dials again
//! on its own ([`Redial`]: at once, then after 50 ms doubling up to 1 s), for as long as
//! [`Remote::redial_for`] allows (for ever by default), and the local pools and their workers
//! stay as they are. Nothing starts while the hub's connection is down; answers gathered
//! meanwhile, and those of `STEP`s whose replies were lost, are sent again once it is back
//! (the script records each task once, and drops the answers of pools that are gone);
//! entries that were to start are read again. The heartbeat and the reader see whether Redis
//! still knows the agent (it forgets it when restarted empty, or reaps it after an outage
//! longer than the heartbeat TTL): if not, the engine registers it again under a new id, as
//! when it was declared dead, and the reader recreates the consumer group if it is gone.
//! A Redis not there yet at the agent's start is waited for the same way ([`dial_at_start`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::Value;
use serde_bytes::ByteBuf;

use super::auth::{Key, Kind};
use super::config::Remote;
use super::conn::{self, Conn, Endpoint};
use super::frame::{self, GROUP, Keys, PoolFrame, ResultFrame, TaskFrame};
use super::scripts;
use super::submitter::{log, reap};
use crate::error::{Error, ErrorKind};
use crate::pool::{Gated, Pool, RawTask, Verdict, Waker};
use crate::sys::fd;

/// A local pool unused this long is retired (its workers exit).
const RETIRE_AFTER: Duration = Duration::from_secs(10);

/// How long a blocking read waits before it looks at its flags.
const BLOCK_MS: u64 = 100;

/// Pipelines the hub may have in flight before it reads the oldest one's replies.
const UNSETTLED: usize = 16;

/// How long after its last pipeline the hub counts as quiet (its replies are read then, and
/// the answered entries not yet acknowledged are).
const QUIET: Duration = Duration::from_millis(1);

/// Answered entries acknowledged together, in one `XACK`, one `XDEL` and one `HDEL` of a
/// `STEP` (each call a script makes costs the server about a microsecond beyond its
/// command).
const ACK_BATCH: usize = 32;

/// The most entries one `STEP` acknowledges (Lua's `unpack` takes a few thousand at most).
const ACK_MAX: usize = 1024;

/// What the engine hears.
enum Event {
    /// Running entries to cancel (their task was cancelled, or their pool is gone).
    Cancel(Vec<String>),
    /// Entries the `STEP` script refused to start: take them back from their local pools.
    Refused(Vec<RawTask>),
    /// The heartbeat, the reader or a `STEP` reply found the agent of this id declared dead,
    /// or forgotten (Redis restarted without its data).
    Reaped(String),
    /// The hub's connection failed, the one of this epoch ([`Hub::epoch`]): dial again.
    Lost(Error, u64),
    /// A thread gave up on Redis (out of reach past [`Remote::redial_for`]): the agent ends.
    Failed(Error),
    /// SIGTERM: finish what runs, hand back what is held, leave.
    Drain,
}

/// The names of the agent's connections (`CLIENT LIST`).
const HUB_NAME: &str = "mproc-agent-hub";
const READER_NAME: &str = "mproc-agent-reader";
const HEARTBEAT_NAME: &str = "mproc-agent-heartbeat";

/// The first pause between two tries to reach Redis again (the first try is at once).
const FIRST_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause between two tries.
const LAST_PAUSE: Duration = Duration::from_secs(1);

/// An answer to record: (entry id, pool, task, sealed result); an empty entry id for a frame
/// that was never started (refused).
type Record = (String, u64, u64, Vec<u8>);

/// What the threads share.
struct Common {
    endpoint: Endpoint,
    keys: Keys,
    key: Key,
    ttl: Duration,
    workers: usize,
    /// How long Redis may stay out of reach ([`Remote::redial_for`]; `None`: for ever).
    redial_for: Option<Duration>,
    /// How many threads are dialling Redis again now (the first says so, and the last once
    /// it answers).
    down: AtomicUsize,
    /// Set when entries this agent read may have been dropped unrun (their start failed
    /// with the hub's connection): the reader reads its pending entries again.
    reread: AtomicBool,
    /// The consumer name and heartbeat key in use (a new one after being declared dead).
    id: Mutex<String>,
    /// Entries read and not yet recorded or dropped: the reader reads only what fits.
    outstanding: AtomicUsize,
    room: Condvar,
    room_lock: Mutex<()>,
    /// Set while the reader waits for room (under `room_lock`): only then does a release
    /// take the lock and wake it.
    reader_waits: AtomicBool,
    window: AtomicUsize,
    stop: AtomicBool,
    tx: Sender<Event>,
    /// Lock order: a local pool's locks, then the hub (a dispatcher asks the hub while it
    /// holds its pool). So nothing calls into a local pool while it holds the hub.
    hub: Mutex<Hub>,
}

/// The entries in local pools, the answers to record, and the connection both go out on.
struct Hub {
    con: Conn,
    /// Entries handed to a local pool and not answered yet.
    tasks: HashMap<String, Task>,
    /// Answers to record.
    records: Vec<Record>,
    /// Answers sent once, whose `STEP` failed or whose reply was lost with the connection:
    /// sent again once the hub's connection is back (a task is recorded once, however often
    /// its answer comes). Their room was freed when they were first sent.
    resend: Vec<Record>,
    /// Entries a local worker is about to get, to mark running: (entry id, pool, task).
    starting: Vec<(String, u64, u64)>,
    /// Entries whose answers are recorded (their `STEP`'s reply came, and was no error), to
    /// acknowledge, delete and unmark with a later `STEP` ([`ACK_BATCH`] at a time, or once
    /// the hub is quiet). Only then: a `STEP` that failed (the server out of memory, say)
    /// recorded nothing, and its entries must stay for the reaper to re-queue.
    acked: Vec<String>,
    /// The `STEP` script's digest (loaded when the agent registers).
    step: String,
    /// Per pipeline sent and not read yet (the connection keeps their bytes), oldest first.
    unsettled: VecDeque<Unsettled>,
    /// The failure of a `STEP` or of reading its reply: from then on nothing more is sent,
    /// and nothing more is taken for recorded, until the engine has dialled Redis again and
    /// replaced the connection. Meanwhile nothing starts.
    broken: Option<Error>,
    /// Which connection this is: one more each time the engine replaces it (a failure told
    /// of an older one is over).
    epoch: u64,
    /// When the last pipeline went out (its replies may still be on their way).
    sent: Instant,
    /// What wakes each local pool's dispatcher, by remote pool.
    wakers: HashMap<u64, Waker>,
    /// Local pools told to wait (`Verdict::Later`): the agent's workers were all busy.
    waiting: HashSet<u64>,
    pace: Pace,
}

/// An entry in a local pool.
struct Task {
    pool: u64,
    task: u64,
    /// Its pool's frame limit (its submitter's `Remote::max_frame`).
    max_frame: usize,
    /// Set once submitted (a gate may ask before).
    raw: Option<RawTask>,
    /// When a worker got it (marked running); `None` while it waits (held).
    started: Option<Instant>,
    /// The engine cancelled it (its task was cancelled, or its pool is gone): a `Cancelled`
    /// answer is its own. Any other `Cancelled` is the local pool's dropping it unrun,
    /// its start not sent (the hub's connection failed).
    cancelled: bool,
}

impl Common {
    /// An agent's shared state before it registers (no id, no script loaded yet).
    fn new(
        endpoint: Endpoint,
        (keys, key): (Keys, Key),
        (ttl, redial_for): (Duration, Option<Duration>),
        workers: usize,
        tx: Sender<Event>,
        con: Conn,
    ) -> Common {
        Common {
            endpoint,
            keys,
            key,
            ttl,
            workers,
            redial_for,
            down: AtomicUsize::new(0),
            reread: AtomicBool::new(false),
            id: Mutex::new(String::new()),
            outstanding: AtomicUsize::new(0),
            room: Condvar::new(),
            room_lock: Mutex::new(()),
            reader_waits: AtomicBool::new(false),
            // No read-ahead until a task's time is known: the first agent to read would
            // take what other agents' workers could run (long tasks wait behind each other).
            window: AtomicUsize::new(workers),
            stop: AtomicBool::new(false),
            tx,
            hub: Mutex::new(Hub {
                con,
                tasks: HashMap::new(),
                records: Vec::new(),
                resend: Vec::new(),
                starting: Vec::new(),
                acked: Vec::new(),
                step: String::new(),
                unsettled: VecDeque::new(),
                broken: None,
                epoch: 0,
                sent: Instant::now(),
                wakers: HashMap::new(),
                waiting: HashSet::new(),
                pace: Pace::default(),
            }),
        }
    }

    fn id(&self) -> String {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, n: usize) {
        if n > 0 {
            let left = self.outstanding.fetch_sub(n, Ordering::SeqCst) - n;
            if self.reader_waits.load(Ordering::SeqCst) && self.may_read(left) {
                // Taken and let go before the notify: a reader that checked before this
                // waits by now; one that checks after sees the room. (Notified under the
                // lock, the reader woke only to wait for it.)
                drop(self.room_lock.lock().unwrap_or_else(|e| e.into_inner()));
                self.room.notify_all();
            }
        }
    }

    /// Whether the reader reads more with `out` entries outstanding: once half the
    /// read-ahead is free (at least one entry), so that it reads entries in batches rather
    /// than one per answer (each read costs the reader and the local pool a wake-up); the
    /// half left is about 0.5 ms of work, several times a read's round trip. Counted on the
    /// read-ahead, not the window: with tasks longer than a millisecond the read-ahead is one
    /// entry, and a free worker is then reason enough to read.
    fn may_read(&self, out: usize) -> bool {
        let window = self.window.load(Ordering::Relaxed);
        let ahead = window.saturating_sub(self.workers);
        out + (ahead / 2).max(1) <= window
    }

    /// The reader waits (bounded) until it [may read](Self::may_read) again.
    fn wait_for_room(&self) {
        let g = self.room_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.reader_waits.store(true, Ordering::SeqCst);
        if !self.may_read(self.outstanding.load(Ordering::SeqCst)) {
            let _ = self.room.wait_timeout(g, Duration::from_millis(BLOCK_MS));
        }
        self.reader_waits.store(false, Ordering::SeqCst);
    }

    /// A local worker is picked for entry `id`: it is to be marked running with the next
    /// [`flush`](Self::flush), unless it was dropped (declared dead, or draining), or the
    /// agent's workers are all busy (its local pools together run no more than the workers it
    /// announced: this one waits, and is woken when one is free), or the hub's connection is
    /// down (it waits until Redis is reached again). On a local pool's thread.
    fn gate(&self, id: &str) -> Verdict {
        let mut hub = self.hub();
        let running = hub.tasks.values().filter(|t| t.started.is_some()).count();
        let broken = hub.broken.is_some();
        let Some(t) = hub.tasks.get_mut(id) else {
            return Verdict::Drop;
        };
        if running >= self.workers || broken {
            let pool = t.pool;
            hub.waiting.insert(pool);
            return Verdict::Later;
        }
        t.started = Some(Instant::now());
        let start = (id.to_owned(), t.pool, t.task);
        hub.starting.push(start);
        Verdict::Go
    }

    /// Sends the answers gathered and marks the entries about to start running, in one
    /// script; `false` if the hub's connection is down (the engine is told, and dials again;
    /// the entries are not run, and are read again once Redis answers). From a local pool's
    /// dispatcher (before its workers get the entries, and at the end of each turn) and from
    /// the engine.
    fn flush(&self) -> bool {
        self.flush_with(false)
    }

    /// [`flush`](Self::flush); with `acks`, also when only acknowledgements wait, and all of
    /// them go.
    fn flush_with(&self, acks: bool) -> bool {
        let mut hub = self.hub();
        let acks_wait = acks && !hub.acked.is_empty();
        if hub.records.is_empty() && hub.resend.is_empty() && hub.starting.is_empty() && !acks_wait
        {
            return true;
        }
        let (told, epoch) = (hub.broken.is_some(), hub.epoch);
        let sent = hub.send(self, acks);
        let Err(e) = sent else {
            drop(hub);
            if let Ok(settled) = sent {
                settled.tell(self);
            }
            return true;
        };
        // Not run, not marked: still pending for this agent, read again once Redis answers.
        let dropped = std::mem::take(&mut hub.starting);
        for (id, ..) in &dropped {
            hub.tasks.remove(id);
        }
        drop(hub);
        if !dropped.is_empty() {
            self.reread.store(true, Ordering::SeqCst);
            self.release(dropped.len());
        }
        if !told {
            let _ = self.tx.send(Event::Lost(e, epoch));
        }
        false
    }

    /// The reader, the heartbeat and the engine's dialling again: waits `pause`, less if
    /// the agent is stopping.
    fn nap(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while !self.stop.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
    }

    /// After telling the engine that agent `id` was declared dead: waits (bounded) until it
    /// has registered again under a new id.
    fn wait_for_new_id(&self, id: &str) {
        let until = Instant::now() + self.ttl;
        while self.id() == id && Instant::now() < until && !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A local pool answered entry `id` (on whichever thread saw it).
    fn answered(&self, id: String, outcome: Result<Vec<u8>, Error>) {
        let mut hub = self.hub();
        let Some(t) = hub.tasks.remove(&id) else {
            return; // dropped or refused: not recorded
        };
        let dropped = matches!(&outcome, Err(e) if *e.kind() == ErrorKind::Cancelled);
        if dropped && !t.cancelled {
            // Dropped unrun by its local pool (its start failed with the hub's connection,
            // whichever thread sent it): still pending for this agent, read again.
            hub.wake_waiting();
            drop(hub);
            self.reread.store(true, Ordering::SeqCst);
            self.release(1);
            return;
        }
        if let Some(started) = t.started {
            hub.pace.note(started.elapsed(), self.workers, &self.window);
            hub.wake_waiting();
        }
        let record = self.seal(id, t.pool, t.task, t.max_frame, outcome);
        hub.records.extend(record);
    }

    /// An answer as its result frame, ready to record.
    fn seal(
        &self,
        id: String,
        pool: u64,
        task: u64,
        limit: usize,
        outcome: Result<Vec<u8>, Error>,
    ) -> Option<Record> {
        let outcome = match outcome {
            Ok(b) if b.len() + 512 > limit => Err(Error::invalid(format!(
                "the task's results encode to {} bytes, over the remote pool's frame limit of \
                 {limit} bytes (Remote::max_frame)",
                b.len(),
            ))),
            other => other,
        };
        let frame = ResultFrame {
            pool,
            task,
            agent: self.id(),
            outcome: outcome.map(ByteBuf::from),
        };
        match frame::seal(&self.key, Kind::Result, &frame) {
            Ok(sealed) => Some((id, pool, task, sealed)),
            Err(e) => {
                log(&format!("a result could not be encoded: {e}"));
                None
            }
        }
    }

    /// Takes back every entry still waiting in a local pool (declared dead, or draining:
    /// the reaper re-queues them at no charge); returns their handles, to cancel without the
    /// hub.
    fn drop_held(&self) -> Vec<RawTask> {
        let mut hub = self.hub();
        let held: Vec<String> = hub
            .tasks
            .iter()
            .filter(|(_, t)| t.started.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let raws = held
            .iter()
            .filter_map(|id| hub.tasks.remove(id).and_then(|t| t.raw))
            .collect();
        drop(hub);
        self.release(held.len());
        raws
    }
}

/// A thread's dialling of Redis again after a command failed: how long it waits before
/// each try (none before the first, then [`FIRST_PAUSE`] doubling up to [`LAST_PAUSE`]: never
/// a busy loop), and whether the agent's limit ([`Remote::redial_for`]) has passed.
#[derive(Default)]
struct Redial {
    /// When the first failure of this outage came (`None`: Redis answers).
    since: Option<Instant>,
    pause: Duration,
    /// When Redis last answered again: a failure within a second of it goes on from the
    /// pause reached (a server that takes connections and fails every command is not
    /// hammered).
    ended: Option<Instant>,
}

impl Redial {
    /// A command failed with `e`: how long to wait before trying again, or, past the limit,
    /// the error that ends the agent.
    fn failed(&mut self, c: &Common, e: &Error) -> Result<Duration, Error> {
        let since = *self.since.get_or_insert_with(|| {
            if self.ended.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.pause = Duration::ZERO;
            }
            if c.down.fetch_add(1, Ordering::SeqCst) == 0 {
                log(&format!(
                    "Redis at {} is out of reach ({e}); dialling it again {}, keeping the \
                     local workers and their tasks",
                    c.endpoint.shown(),
                    redial_span(c.redial_for)
                ));
            }
            Instant::now()
        });
        let within = |limit| format!("again within {limit:?}");
        let left = time_left(e, &c.endpoint, c.redial_for, since, within)?;
        let pause = self.pause;
        self.pause = (pause * 2).clamp(FIRST_PAUSE, LAST_PAUSE);
        Ok(pause.min(left))
    }

    /// A thread's command failed with `e`: naps before its next try (`true`), or, past the
    /// limit, tells the engine that the agent ends (`false`).
    fn nap_after(&mut self, c: &Common, e: &Error) -> bool {
        match self.failed(c, e) {
            Ok(pause) => {
                c.nap(pause);
                true
            }
            Err(e) => {
                let _ = c.tx.send(Event::Failed(e));
                false
            }
        }
    }

    /// A command succeeded: Redis answers (again).
    fn reached(&mut self, c: &Common) {
        if let Some(since) = self.since.take() {
            self.ended = Some(Instant::now());
            if c.down.fetch_sub(1, Ordering::SeqCst) == 1 {
                log(&format!(
                    "Redis at {} answers again (out of reach for {:.1?}); serving on",
                    c.endpoint.shown(),
                    since.elapsed()
                ));
            }
        }
    }
}

/// One `STEP` sent, its reply not read yet.
struct Unsettled {
    /// The agent's id it was sent under.
    id: String,
    /// The entries it started, whose verdicts it carries.
    starts: Vec<String>,
    /// The answers it records: acknowledged once its reply says so, sent again if it is
    /// lost.
    recorded: Vec<Record>,
    /// The entries it acknowledges (still pending in Redis until it runs).
    acks: Vec<String>,
}

/// What reading replies found, to pass on once the hub is let go.
#[derive(Default)]
struct Settled {
    refused: Vec<RawTask>,
    /// The agent's id a `STEP` found declared dead.
    reaped: Option<String>,
}

impl Settled {
    fn tell(self, c: &Common) {
        if !self.refused.is_empty() {
            let _ = c.tx.send(Event::Refused(self.refused));
        }
        if let Some(id) = self.reaped {
            let _ = c.tx.send(Event::Reaped(id));
        }
    }
}

impl Hub {
    /// One `STEP`: the answers gathered so far, and the entries about to start. Written
    /// now, its reply read later; the entries may start as soon as this returns (the script
    /// is on its way before a worker can take them).
    ///
    /// With `all_acks`, or [`ACK_BATCH`] of them waiting, the answered entries not yet
    /// acknowledged are.
    fn send(&mut self, c: &Common, all_acks: bool) -> Result<Settled, Error> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let keys = &c.keys;
        let me = c.id();
        let fresh = std::mem::take(&mut self.records);
        let mut records = std::mem::take(&mut self.resend);
        let again = records.len();
        records.extend(fresh);
        let starting = std::mem::take(&mut self.starting);
        let acks: Vec<String> = match all_acks || self.acked.len() >= ACK_BATCH {
            true => {
                let n = self.acked.len().min(ACK_MAX);
                self.acked.drain(..n).collect()
            }
            false => Vec::new(),
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.step)
            .arg(3)
            .arg(keys.tasks())
            .arg(keys.heartbeat(&me))
            .arg(keys.running(&me))
            .arg(&keys.prefix)
            .arg(records.len())
            .arg(acks.len());
        for id in &acks {
            cmd.arg(id);
        }
        for (id, pool, task, sealed) in &records {
            cmd.arg(id).arg(pool).arg(task).arg(sealed);
        }
        for (id, pool, task) in &starting {
            cmd.arg(id).arg(pool).arg(task);
        }
        let sent = self.con.send(
            "recording results and starting tasks",
            cmd.get_packed_command(),
            1,
        );
        if let Err(e) = sent {
            // Nothing of it went: all of it goes again once Redis answers, but the entries
            // to start (the caller drops them).
            self.broken = Some(e.clone());
            self.records = records.split_off(again);
            self.resend = records;
            self.acked.extend(acks);
            self.starting = starting;
            self.lose_unsettled();
            return Err(e);
        }
        // Answered entries are done with here (acknowledged by a later script, once this
        // one's reply says they are recorded): their room is free (that of answers sent
        // again was freed when they first went).
        c.release(records[again..].iter().filter(|r| !r.0.is_empty()).count());
        self.sent = Instant::now();
        self.unsettled.push_back(Unsettled {
            id: me,
            starts: starting.into_iter().map(|s| s.0).collect(),
            recorded: records,
            acks,
        });
        self.settle(c, UNSETTLED)
    }

    /// The connection failed: the replies of the `STEP`s in flight will not come. Their
    /// answers go again, and their acknowledgements (sending them twice is harmless).
    fn lose_unsettled(&mut self) {
        for u in std::mem::take(&mut self.unsettled) {
            self.resend.extend(u.recorded);
            self.acked.extend(u.acks);
        }
    }

    /// Reads the replies of sent pipelines until at most `keep` are unread. An entry the
    /// STEP script refused to start (cancelled, already answered, its pool gone, or this agent
    /// declared dead) is to be taken back from its local pool; its answer is not recorded
    /// (one already recorded was harmless: the script records nothing twice). The answers a
    /// reply confirms are to be acknowledged; a reply that is an error fails the agent, and
    /// leaves its entries pending for the reaper.
    fn settle(&mut self, c: &Common, keep: usize) -> Result<Settled, Error> {
        let mut out = Settled::default();
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        while self.unsettled.len() > keep {
            let Some(step) = self.unsettled.pop_front() else {
                break;
            };
            let reply = match self.con.recv("recording results and starting tasks") {
                Ok(reply) => reply,
                Err(e) => {
                    // This `STEP` and the ones after it may have recorded nothing: none of
                    // their answers is taken for recorded, and none is read again (the
                    // connection's own list of them may be gone with it). They go again
                    // once the connection is replaced.
                    self.broken = Some(e.clone());
                    self.unsettled.push_front(step);
                    self.lose_unsettled();
                    return Err(e);
                }
            };
            let Unsettled {
                id: me,
                starts: ids,
                recorded,
                ..
            } = step;
            self.acked
                .extend(recorded.into_iter().map(|r| r.0).filter(|id| !id.is_empty()));
            if ids.is_empty() {
                continue;
            }
            // {recorded, verdicts}, or {recorded, -1}: declared dead meanwhile, these were
            // re-queued for others.
            let verdicts = match reply.into_iter().next() {
                Some(Value::Array(v)) => match v.into_iter().nth(1) {
                    Some(Value::Array(v)) => v,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut refused = 0;
            for (i, id) in ids.iter().enumerate() {
                if matches!(verdicts.get(i), Some(Value::Int(1))) {
                    continue;
                }
                let mut pending = false;
                if let Some(t) = self.tasks.remove(id) {
                    out.refused.extend(t.raw);
                    pending = true;
                    self.wake_waiting();
                }
                if let Some(at) = self.records.iter().position(|r| &r.0 == id) {
                    self.records.remove(at);
                    pending = true;
                }
                // Not yet released unless its answer was already sent for recording.
                refused += usize::from(pending);
            }
            c.release(refused);
            if verdicts.is_empty() {
                out.reaped = Some(me);
            }
        }
        Ok(out)
    }

    /// A worker is free: wakes the local pools that were told to wait for one.
    fn wake_waiting(&mut self) {
        for pool in std::mem::take(&mut self.waiting) {
            if let Some(w) = self.wakers.get(&pool) {
                w.wake(); // a write to its eventfd: no lock taken
            }
        }
    }

    /// Whether `id` is here already (read again after a reconnection): waiting or running,
    /// answered, or answered and not acknowledged yet.
    fn knows(&self, id: &str) -> bool {
        self.tasks.contains_key(id)
            || self.records.iter().chain(&self.resend).any(|r| r.0 == id)
            || self.acked.iter().any(|a| a == id)
            || self
                .unsettled
                .iter()
                .any(|u| u.recorded.iter().any(|r| r.0 == id) || u.acks.iter().any(|a| a == id))
    }
}

/// One remote pool's local pool.
struct Local {
    pool: Result<Pool, Error>,
    used: Instant,
    /// The pool's frame limit (its submitter's `Remote::max_frame`).
    max_frame: usize,
}

/// Serves remote pools until SIGTERM, or until Redis stays out of reach past
/// [`Remote::redial_for`] (or the process is killed).
pub(crate) fn serve(remote: Remote) -> Result<(), Error> {
    let key = remote.load_key()?;
    let workers = remote.processes.unwrap_or_else(crate::cpu_count).max(1);
    let build = crate::sys::exe::identity();
    let keys = Keys::new(build, &key);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    // Before any thread starts, so that all inherit the blocked SIGTERM (local workers start
    // with a clean mask); and before Redis is waited for, which SIGTERM ends.
    let term = crate::sys::proc::sigterm_fd()
        .map_err(|e| Error::os("watching for SIGTERM", e))?;
    // Every connection made before the agent registers: once it is registered, a Redis
    // that fails is dialled again, never the end of a start half made.
    let Some([con, beat_con, read_con]) = dial_at_start(&remote, &keys.tasks(), term.as_fd())?
    else {
        log("SIGTERM before Redis answered: the agent leaves, having taken nothing");
        return Ok(());
    };
    let (tx, rx) = mpsc::channel();
    let common = Arc::new(Common::new(
        remote.endpoint.clone(),
        (keys, key),
        (remote.ttl, remote.redial_for),
        workers,
        tx.clone(),
        con,
    ));
    let mut engine = Engine {
        common: Arc::clone(&common),
        host: host.clone(),
        draining: false,
        stranded: false,
        redial: Redial::default(),
        reaped_meanwhile: None,
    };
    engine.register()?;
    let intake = Intake {
        common: Arc::clone(&common),
        build,
        host,
        max_frame: remote.max_frame,
        method: remote.method,
        locals: HashMap::new(),
    };
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| Error::os("starting an agent thread", e))
    };
    let beat = {
        let c = Arc::clone(&common);
        spawn("mproc-agent-heartbeat", Box::new(move || heartbeat(beat_con, &c)))?
    };
    {
        let tx = tx.clone();
        spawn(
            "mproc-agent-sigterm",
            Box::new(move || {
                let mut buf = [0u8; 128];
                if rustix::io::read(&term, &mut buf).is_ok() {
                    let _ = tx.send(Event::Drain);
                }
            }),
        )?;
    }
    drop(tx);
    let reader = std::thread::Builder::new()
        .name("mproc-agent-reader".into())
        .spawn(move || intake.run(read_con))
        .map_err(|e| Error::os("starting an agent thread", e))?;
    let outcome = engine.run(&rx);
    common.stop.store(true, Ordering::Relaxed);
    common.room.notify_all();
    let _ = beat.join();
    let locals = reader.join();
    let left = match engine.stranded {
        // SIGTERM with Redis out of reach: what this agent holds is the reaper's.
        true => outcome,
        false => outcome.map(|()| {
            // Drained: a Redis out of reach now only leaves the agent's registration to
            // expire (the reaper then re-queues what it held, at no charge).
            if let Err(e) = engine.leave() {
                log(&format!(
                    "drained, but Redis could not be told ({e}): what this agent held is \
                     re-queued once its heartbeat expires"
                ));
            }
        }),
    };
    // The local pools close once the agent has left (what they still hold is re-queued).
    drop(locals);
    left
}

/// The agent's first connections: the hub's (polled, so that its `STEP` replies are parsed
/// by mproc, not the crate) with the task stream's group made, the heartbeat's, and the
/// reader's; made once Redis answers. Redis out of reach in a way that may pass (not started
/// yet, loading its data: [`conn::may_pass`]) is dialled again as after a loss (at once, then
/// [`FIRST_PAUSE`] doubling up to [`LAST_PAUSE`]) for as long as [`Remote::redial_for`]
/// allows, so that agents may start before their Redis (a container or a unit started
/// first); one that will not pass (a password refused, a certificate rejected, a bad URL)
/// ends the agent at once. `None` if SIGTERM came first.
fn dial_at_start(
    remote: &Remote,
    tasks: &str,
    term: BorrowedFd<'_>,
) -> Result<Option<[Conn; 3]>, Error> {
    let endpoint = &remote.endpoint;
    let open = || -> Result<[Conn; 3], Error> {
        let mut hub = Conn::open_polled(endpoint, Duration::ZERO)?.named(HUB_NAME);
        conn::ensure_group(&mut hub, tasks)?;
        let beat = Conn::open(endpoint, Duration::ZERO)?.named(HEARTBEAT_NAME);
        let block = Duration::from_millis(BLOCK_MS);
        let read = Conn::open_polled(endpoint, block)?.named(READER_NAME);
        Ok([hub, beat, read])
    };
    let mut since: Option<Instant> = None;
    let mut pause = Duration::ZERO;
    // Connections that failed in a row while Redis answered.
    let mut refused = 0;
    loop {
        let (e, passes) = match open() {
            Ok(cons) => {
                if let Some(at) = since {
                    log(&format!(
                        "Redis at {} answers (waited {:.1?}); serving",
                        endpoint.shown(),
                        at.elapsed()
                    ));
                }
                return Ok(Some(cons));
            }
            // What failed is told by a look at Redis alone: out of reach, and whether that
            // may pass. Reached, the failure was the connections' own (a command refused),
            // unless Redis went away and came back meanwhile: three in a row are taken for
            // their own.
            Err(e) => match endpoint.reach() {
                Ok(()) => {
                    refused += 1;
                    (e, refused < 3)
                }
                Err(failed) => {
                    refused = 0;
                    failed
                }
            },
        };
        if !passes {
            return Err(e);
        }
        let since = *since.get_or_insert_with(|| {
            log(&format!(
                "Redis at {} is out of reach at the agent's start ({e}); dialling it again {}",
                endpoint.shown(),
                redial_span(remote.redial_for)
            ));
            Instant::now()
        });
        let within = |limit| format!("within {limit:?} of the agent's start");
        let left = time_left(&e, endpoint, remote.redial_for, since, within)?;
        let woke = fd::poll_read(&[term], fd::deadline_after(pause.min(left)))
            .map_err(|e| Error::os("waiting for SIGTERM", e))?;
        if woke[0].readable {
            return Ok(None);
        }
        pause = (pause * 2).clamp(FIRST_PAUSE, LAST_PAUSE);
    }
}

/// How long an agent keeps dialling Redis, for its log: `redial_for`'s limit, or for ever.
fn redial_span(limit: Option<Duration>) -> String {
    match limit {
        Some(limit) => format!("for up to {limit:?} (Remote::redial_for)"),
        None => "until it answers".into(),
    }
}

/// How long an agent may still dial Redis, out of reach since `since`, within `limit`
/// (`None`: for ever); past it, the error that ends the agent, from `e`, the last failure:
/// "Redis … was not reached " and what `within` says of the limit.
fn time_left(
    e: &Error,
    endpoint: &Endpoint,
    limit: Option<Duration>,
    since: Instant,
    within: impl FnOnce(Duration) -> String,
) -> Result<Duration, Error> {
    let Some(limit) = limit else {
        return Ok(Duration::MAX);
    };
    let left = limit.saturating_sub(since.elapsed());
    if !left.is_zero() {
        return Ok(left);
    }
    let why = match e.kind() {
        ErrorKind::Broker(why) => why.clone(),
        _ => e.to_string(),
    };
    let within = within(limit);
    Err(ErrorKind::Broker(format!(
        "{why}; Redis at {} was not reached {within} (Remote::redial_for; MPROC_REDIAL_MS for \
         an agent started by the environment)",
        endpoint.shown()
    ))
    .into())
}

struct Engine {
    common: Arc<Common>,
    host: String,
    /// SIGTERM came: nothing new starts; the run ends once what runs is recorded.
    draining: bool,
    /// SIGTERM came while Redis was out of reach: the agent leaves without a word to Redis
    /// (its heartbeat expires, and the reaper re-queues what it held, or fails or re-runs
    /// what it ran, as for a host that died).
    stranded: bool,
    /// The hub's connection dialled again.
    redial: Redial,
    /// The agent found declared dead (this id) while the hub's connection was down: it
    /// registers again once it is back.
    reaped_meanwhile: Option<String>,
}

/// Why the engine's turn stopped short.
enum Halt {
    /// The hub's connection failed: dial again.
    Lost(Error),
    /// The agent ends with this error.
    Failed(Error),
}

impl Engine {
    /// Announces this agent under a fresh id: its heartbeat, then its workers.
    fn register(&mut self) -> Result<(), Error> {
        let c = &self.common;
        let mut hub = c.hub();
        // The connection's replies in order: nothing else may be unread.
        let settled = hub.settle(c, 0)?;
        let id = format!("{}-{:016x}", self.host, crate::sys::proc::random_u64().unwrap_or(0));
        let keys = &c.keys;
        let ttl_ms = c.ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys.heartbeat(&id))
            .arg(1)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("HSET")
            .arg(keys.agents())
            .arg(&id)
            .arg(c.workers)
            .ignore()
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(scripts::STEP);
        let (step,): (String,) = hub
            .con
            .run("registering the agent", |k| pipe.query(k))?;
        hub.step = step;
        *c.id.lock().unwrap_or_else(|e| e.into_inner()) = id;
        drop(hub);
        // A refusal seen here belongs to the old id: its entries were re-queued.
        self.cancel_all(settled.refused);
        Ok(())
    }

    /// Acts on what the threads report until the agent ends: `Ok` once drained (or on
    /// SIGTERM while Redis is out of reach), the error once Redis was out of reach past the
    /// limit.
    fn run(&mut self, rx: &Receiver<Event>) -> Result<(), Error> {
        loop {
            match self.turn(rx) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(Halt::Lost(e)) => {
                    if !self.recover(rx, e)? {
                        return Ok(());
                    }
                }
                Err(Halt::Failed(e)) => return Err(e),
            }
        }
    }

    /// One wait for events, and what follows; `true` once the agent is done.
    fn turn(&mut self, rx: &Receiver<Event>) -> Result<bool, Halt> {
        // Replies left unread are read once the hub has been quiet for a while (then they
        // are here: reading them does not hold the hub waiting), and answered entries
        // still pending are acknowledged.
        let idle = {
            let hub = self.common.hub();
            match hub.unsettled.is_empty() && hub.acked.is_empty() {
                true => Duration::from_secs(1),
                false => QUIET,
            }
        };
        let first = match rx.recv_timeout(idle) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => {
                let c = &self.common;
                let mut hub = c.hub();
                if hub.sent.elapsed() >= QUIET {
                    let settled = hub.settle(c, 0).map_err(Halt::Lost)?;
                    let acks = !hub.acked.is_empty();
                    drop(hub);
                    settled.tell(c);
                    if acks {
                        c.flush_with(true);
                    }
                }
                None
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(true),
        };
        let mut reaped = false;
        for event in first.into_iter().chain(rx.try_iter()) {
            match event {
                Event::Cancel(ids) => self.cancel_ids(&ids),
                Event::Refused(raws) => self.cancel_all(raws),
                Event::Reaped(id) => reaped |= id == self.common.id(),
                Event::Lost(e, epoch) => {
                    if epoch == self.common.hub().epoch {
                        self.reaped_meanwhile = reaped.then(|| self.common.id());
                        return Err(Halt::Lost(e));
                    }
                    // A connection replaced since.
                }
                Event::Failed(e) => return Err(Halt::Failed(e)),
                Event::Drain => {
                    log("SIGTERM: finishing the running tasks, then leaving");
                    self.draining = true;
                    self.common.stop.store(true, Ordering::Relaxed);
                }
            }
        }
        if reaped && let Err(e) = self.reaped() {
            // Registered again once the hub's connection is back.
            self.reaped_meanwhile = Some(self.common.id());
            return Err(Halt::Lost(e));
        }
        if self.draining {
            // Still pending for this agent: re-queued when it leaves.
            let held = self.common.drop_held();
            self.cancel_all(held);
        }
        self.common.flush();
        if self.draining {
            let hub = self.common.hub();
            if hub.tasks.is_empty() && hub.records.is_empty() && hub.resend.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The hub's connection failed with `e`: dials Redis again, with pauses (see
    /// [`Redial`]), until it answers (`true`: the agent serves on, and what the failure left
    /// unsent goes again), or the limit passes (the error). Draining (SIGTERM came before or
    /// meanwhile), it tries for one heartbeat TTL at most, then leaves without Redis
    /// (`false`).
    fn recover(&mut self, rx: &Receiver<Event>, mut e: Error) -> Result<bool, Error> {
        loop {
            let out_for = self.redial.since.map_or(Duration::ZERO, |t| t.elapsed());
            if self.draining && out_for >= self.common.ttl {
                log(&format!(
                    "draining with Redis out of reach ({e}): leaving now; what this agent \
                     held is re-queued by the reaper once its heartbeat expires"
                ));
                self.stranded = true;
                return Ok(false);
            }
            let pause = self.redial.failed(&self.common, &e)?;
            let until = Instant::now() + pause;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Event::Drain) => {
                        log("SIGTERM: finishing the running tasks, then leaving");
                        self.draining = true;
                        self.common.stop.store(true, Ordering::Relaxed);
                    }
                    Ok(Event::Failed(e)) => return Err(e),
                    Ok(Event::Cancel(ids)) => self.cancel_ids(&ids),
                    Ok(Event::Refused(raws)) => self.cancel_all(raws),
                    Ok(Event::Reaped(id)) => self.reaped_meanwhile = Some(id),
                    Ok(Event::Lost(..)) => {}
                    Err(_) => break,
                }
            }
            match self.reconnect() {
                Ok(()) => {
                    self.redial.reached(&self.common);
                    return Ok(true);
                }
                Err(again) => e = again,
            }
        }
    }

    /// A new connection for the hub, with the consumer group and the `STEP` script there
    /// (Redis may have restarted without them); what the old one left unsent goes on it.
    /// The reader reads its pending entries again (some may have been dropped unrun), and
    /// the agent registers again if it was found declared dead meanwhile.
    fn reconnect(&mut self) -> Result<(), Error> {
        let c = Arc::clone(&self.common);
        let mut con = Conn::open_polled(&c.endpoint, Duration::ZERO)?.named(HUB_NAME);
        conn::ensure_group(&mut con, &c.keys.tasks())?;
        let step: String = con.run("loading the agent's script", |k| {
            redis::cmd("SCRIPT").arg("LOAD").arg(scripts::STEP).query(k)
        })?;
        let mut hub = c.hub();
        hub.lose_unsettled();
        hub.con = con;
        hub.step = step;
        hub.broken = None;
        hub.epoch += 1;
        hub.wake_waiting();
        drop(hub);
        c.reread.store(true, Ordering::SeqCst);
        if let Some(id) = self.reaped_meanwhile.take()
            && id == c.id()
            && let Err(e) = self.reaped()
        {
            self.reaped_meanwhile = Some(id);
            return Err(e);
        }
        Ok(())
    }

    /// Cancels the running entries `ids` (their task was cancelled, or their pool is gone).
    fn cancel_ids(&self, ids: &[String]) {
        let mut hub = self.common.hub();
        let raws: Vec<RawTask> = ids
            .iter()
            .filter_map(|id| {
                let t = hub.tasks.get_mut(id)?;
                t.cancelled = true;
                t.raw.clone()
            })
            .collect();
        drop(hub);
        self.cancel_all(raws);
    }

    fn cancel_all(&self, raws: Vec<RawTask>) {
        for raw in raws {
            raw.cancel();
        }
    }

    /// Declared dead (silent past the TTL): the held entries were re-queued for others, so
    /// drop them; running ones finish and are recorded only if nobody else recorded them
    /// first. Then join again under a new id.
    fn reaped(&mut self) -> Result<(), Error> {
        log(
            "this agent was declared dead (silent past its heartbeat TTL), or Redis forgot it \
             (restarted without its data); rejoining",
        );
        let held = self.common.drop_held();
        self.cancel_all(held);
        self.register()
    }

    /// After a drain, once the reader has stopped: gives up the heartbeat and reaps itself,
    /// so what it held but never started is re-queued at no charge, and it is forgotten.
    fn leave(&mut self) -> Result<(), Error> {
        let c = &self.common;
        // Every reply read first, so that only recorded answers are acknowledged. (The
        // reaper below deletes what is left anyway; this only spares it the work.)
        // (What it found refused needs nothing more: the local pools close after this.)
        c.hub().settle(c, 0)?;
        while !c.hub().acked.is_empty() {
            if !c.flush_with(true) {
                break; // Redis is gone: the next command says so
            }
        }
        let mut hub = c.hub();
        hub.settle(c, 0)?;
        let key = c.keys.heartbeat(&c.id());
        hub.con
            .run("leaving", |k| redis::cmd("DEL").arg(&key).query::<()>(k))?;
        reap(&mut hub.con, &c.keys, c.ttl)?;
        Ok(())
    }
}

/// The reader's side: reads entries, checks them, and hands them to the local pools it
/// keeps (one per remote pool, retired when idle).
struct Intake {
    common: Arc<Common>,
    build: u64,
    host: String,
    max_frame: usize,
    method: Option<crate::StartMethod>,
    locals: HashMap<u64, Local>,
}

impl Intake {
    /// The reader's loop: takes at most the free part of the window. After its connection
    /// was replaced (a stop and continue interrupted a read whose entries may be lost in
    /// flight, or Redis was out of reach), it reads this consumer's pending entries again,
    /// and drops those it has. After a failure it dials Redis again (see [`Redial`]), and
    /// before it reads again it makes sure the consumer group is there and Redis still knows
    /// this agent (else the engine registers it again: entries read under a forgotten name
    /// would be no one's). Returns the local pools, to close once the agent has left.
    fn run(mut self, mut con: Conn) -> HashMap<u64, Local> {
        let c = Arc::clone(&self.common);
        let mut again = false;
        let mut check = false;
        let mut redial = Redial::default();
        let mut told = Instant::now();
        let mut stats_failing = false;
        while !c.stop.load(Ordering::Relaxed) {
            self.retire();
            if told.elapsed() >= STATS_EVERY && !check {
                told = Instant::now();
                // Statistics are for people: one that cannot be written is said, not fatal
                // (a lost server fails the read below, and is handled there).
                match self.tell_stats(&mut con) {
                    Err(e) if !stats_failing => {
                        log(&format!("the statistics could not be written (said once): {e}"));
                        stats_failing = true;
                    }
                    Err(_) => {}
                    Ok(()) => stats_failing = false,
                }
            }
            let failed = if check {
                match self.known(&mut con) {
                    Ok(true) => {
                        check = false;
                        again = true;
                        None
                    }
                    Ok(false) => {
                        redial.reached(&c);
                        let id = c.id();
                        let _ = c.tx.send(Event::Reaped(id.clone()));
                        c.wait_for_new_id(&id);
                        continue;
                    }
                    Err(e) => Some(e),
                }
            } else {
                None
            };
            let failed = failed.or_else(|| {
                again |= c.reread.swap(false, Ordering::SeqCst);
                self.read(&mut con, &mut again).err()
            });
            match failed {
                None => redial.reached(&c),
                Some(e) => {
                    check = true;
                    if !redial.nap_after(&c, &e) {
                        break;
                    }
                }
            }
        }
        self.locals
    }

    /// Whether Redis still knows this agent (its heartbeat, or its registration), once the
    /// consumer group is there again.
    fn known(&self, con: &mut Conn) -> Result<bool, Error> {
        let c = &self.common;
        conn::ensure_group(con, &c.keys.tasks())?;
        let id = c.id();
        let (hb, agents) = (c.keys.heartbeat(&id), c.keys.agents());
        let (beats, registered): (bool, bool) = con.run("looking for the agent's registration", |k| {
            redis::pipe()
                .cmd("EXISTS")
                .arg(&hb)
                .cmd("HEXISTS")
                .arg(&agents)
                .arg(&id)
                .query(k)
        })?;
        Ok(beats || registered)
    }

    /// One read of the task stream (if the window has room), its entries handed to their
    /// local pools. `again`: this consumer's pending entries are read (set again when the
    /// connection was replaced under the read, or on a failure).
    fn read(&mut self, con: &mut Conn, again: &mut bool) -> Result<(), Error> {
        let c = Arc::clone(&self.common);
        let window = c.window.load(Ordering::Relaxed);
        let out = c.outstanding.load(Ordering::SeqCst);
        if !*again && !c.may_read(out) {
            c.wait_for_room();
            return Ok(());
        }
        let (id, tasks) = (c.id(), c.keys.tasks());
        let (count, from) = if *again {
            (100_000, "0")
        } else {
            (window.saturating_sub(out).max(1), ">")
        };
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&id)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(&tasks)
            .arg(from)
            .get_packed_command();
        let reread = *again;
        let reply = con.ask("reading the task stream", read, 1);
        *again = con.take_reconnected();
        let entries = match reply {
            Ok(mut v) => conn::stream_entries(v.pop().unwrap_or(Value::Nil)),
            Err(e) => {
                *again = true;
                return Err(e);
            }
        };
        c.outstanding.fetch_add(entries.len(), Ordering::AcqRel);
        if c.stop.load(Ordering::Relaxed) {
            // Draining: still pending for this agent, re-queued when it leaves.
            c.release(entries.len());
            return Ok(());
        }
        if let Err(e) = self.take(con, entries, reread) {
            *again = true;
            return Err(e);
        }
        // Refused entries' answers (the local pools flush their own).
        c.flush();
        Ok(())
    }

    /// Checks entries the reader took and hands the good ones to their local pools; a bad
    /// one is refused (logged, answered with an error so its submitter does not wait, and
    /// never run).
    ///
    /// `reread`: this consumer's pending entries read again (after a reconnection), some of
    /// which it has; new entries (`>`) are never among them, and are not looked for.
    ///
    /// Redis failing under it (reading a pool's frame): the entries not handed on yet are let
    /// go (still pending for this agent, read again once Redis answers), and the error is
    /// the caller's.
    fn take(&mut self, con: &mut Conn, entries: Vec<conn::Entry>, reread: bool) -> Result<(), Error> {
        let c = Arc::clone(&self.common);
        let total = entries.len();
        for (at, entry) in entries.into_iter().enumerate() {
            if reread && c.hub().knows(&entry.id) {
                // Read again after a reconnection: already here.
                c.release(1);
                continue;
            }
            let opened = entry
                .field("f")
                .ok_or_else(|| Error::protocol("a task entry without its frame"))
                .and_then(|sealed| frame::open::<TaskFrame>(&c.key, Kind::Task, sealed));
            let refused: Result<(), (u64, u64, Error)> = match opened {
                Ok(frame) if frame.build != self.build => Err((
                    frame.pool,
                    frame.task,
                    Error::from(ErrorKind::ExecutableMismatch),
                )),
                Ok(frame) => match self.local(con, frame.pool) {
                    Ok(Ok(())) => {
                        self.start(entry.id, frame);
                        continue;
                    }
                    Ok(Err(e)) => Err((frame.pool, frame.task, e)),
                    Err(e) => {
                        c.release(total - at);
                        return Err(e);
                    }
                },
                Err(e) => {
                    log(&format!("task entry {} refused, not run: {e}", entry.id));
                    let clear = |f: &str| entry.text(f).and_then(|t| t.parse::<u64>().ok());
                    match (clear("p"), clear("k")) {
                        (Some(p), Some(k)) => Err((p, k, e)),
                        _ => Err((0, 0, e)),
                    }
                }
            };
            if let Err((pool, task, e)) = refused {
                let record = c.seal(entry.id, pool, task, self.max_frame, Err(e));
                c.hub().records.extend(record);
            }
        }
        Ok(())
    }

    /// Writes each local pool's statistics where its submitter reads them (`Pool::stats`),
    /// sealed, with this agent's id.
    fn tell_stats(&self, con: &mut Conn) -> Result<(), Error> {
        let c = &self.common;
        let me = c.id();
        let script = redis::Script::new(scripts::STATS);
        for (pool, local) in &self.locals {
            let Ok(p) = &local.pool else {
                continue;
            };
            let mut stats = p.stats();
            for w in &mut stats.workers {
                w.agent = Some(me.clone());
            }
            let sealed = frame::seal(&c.key, Kind::Stats, &stats)?;
            con.run("writing the agent's statistics", |k| {
                script
                    .key(c.keys.pool(*pool))
                    .key(c.keys.stats(*pool))
                    .arg(&me)
                    .arg(&sealed)
                    .invoke::<i64>(k)
            })?;
        }
        Ok(())
    }

    /// Makes sure the local pool of remote pool `pool` exists (reading its frame): the
    /// error it cannot be served with inside, Redis's failure outside.
    fn local(&mut self, con: &mut Conn, pool: u64) -> Result<Result<(), Error>, Error> {
        if let Some(l) = self.locals.get_mut(&pool) {
            l.used = Instant::now();
            return Ok(l.pool.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        let c = Arc::clone(&self.common);
        let key = c.keys.pool(pool);
        let sealed: Option<Vec<u8>> =
            con.run("reading a pool's frame", |k| redis::cmd("GET").arg(&key).query(k))?;
        let Some(sealed) = sealed else {
            return Ok(Err(ErrorKind::PoolClosed.into()));
        };
        let opened = frame::open::<PoolFrame>(&c.key, Kind::Pool, &sealed);
        let max_frame = opened
            .as_ref()
            .map_or(self.max_frame, |f| usize::try_from(f.max_frame).unwrap_or(usize::MAX));
        let made = opened.and_then(|f| {
            if f.build != self.build || f.pool != pool {
                return Err(ErrorKind::ExecutableMismatch.into());
            }
            let mut b = Pool::builder().processes(c.workers);
            // Panic reports and `current_process().name()` then say which host ran a task.
            b.name_prefix = Some(self.host.clone());
            let flush = Arc::clone(&c);
            b.gated = Some(Gated {
                flush: Arc::new(move || flush.flush()),
            });
            if let Some(m) = self.method {
                b = b.start_method(m);
            }
            if let Some((entry, args)) = f.init {
                b = b.raw_initializer(entry, args.into_vec());
            }
            if let Some(ms) = f.task_timeout_ms {
                b = b.task_timeout(Duration::from_millis(ms));
            }
            if let Some(n) = f.max_tasks_per_child {
                b = b.max_tasks_per_child(n as usize);
            }
            if let Some(bytes) = f.max_memory_per_child {
                b = b.max_memory_per_child(bytes);
            }
            if let Some(bytes) = f.memory_limit_per_child {
                b = b.memory_limit_per_child(bytes);
            }
            b.build()
        });
        match &made {
            Ok(p) => {
                c.hub().wakers.insert(pool, p.waker());
            }
            Err(e) => log(&format!("remote pool {pool:x} cannot be served here: {e}")),
        }
        let ok = made.as_ref().map(|_| ()).map_err(Clone::clone);
        self.locals.insert(
            pool,
            Local {
                pool: made,
                used: Instant::now(),
                max_frame,
            },
        );
        Ok(ok)
    }

    /// Hands an entry to its local pool, where it waits for a worker (its gate marks it
    /// running then).
    fn start(&mut self, id: String, frame: TaskFrame) {
        let c = Arc::clone(&self.common);
        let (pool, task) = (frame.pool, frame.task);
        let Some(local) = self.locals.get_mut(&pool) else {
            let record = c.seal(id, pool, task, self.max_frame, Err(ErrorKind::PoolClosed.into()));
            c.hub().records.extend(record);
            return;
        };
        local.used = Instant::now();
        let max_frame = local.max_frame;
        // In the hub before the pool can ask about it.
        c.hub().tasks.insert(
            id.clone(),
            Task {
                pool,
                task,
                max_frame,
                raw: None,
                started: None,
                cancelled: false,
            },
        );
        let submitted = match &local.pool {
            Ok(p) => {
                let (gate, done) = (Arc::clone(&c), Arc::clone(&c));
                let (gate_id, done_id) = (id.clone(), id.clone());
                p.submit_raw(
                    frame.entry,
                    frame.payload.into_vec(),
                    frame.items as usize,
                    frame.timeout_ms.map(Duration::from_millis),
                    move || gate.gate(&gate_id),
                    move |outcome| done.answered(done_id, outcome.and_then(only_bytes)),
                )
            }
            Err(e) => Err(e.clone()),
        };
        let mut hub = c.hub();
        match submitted {
            Ok(raw) => {
                if let Some(t) = hub.tasks.get_mut(&id) {
                    t.raw = Some(raw);
                }
            }
            // Unless its answer came already (a pool that broke answers at once).
            Err(e) => {
                if hub.tasks.remove(&id).is_some() {
                    let record = c.seal(id, pool, task, max_frame, Err(e));
                    hub.records.extend(record);
                }
            }
        }
    }

    /// Retires local pools idle for a while.
    fn retire(&mut self) {
        let busy: Vec<u64> = self.common.hub().tasks.values().map(|t| t.pool).collect();
        let idle: Vec<u64> = self
            .locals
            .iter()
            .filter(|(p, l)| !busy.contains(p) && l.used.elapsed() >= RETIRE_AFTER)
            .map(|(p, _)| *p)
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut hub = self.common.hub();
        for p in &idle {
            hub.wakers.remove(p);
            hub.waiting.remove(p);
        }
        drop(hub);
        // Closed without the hub: their dispatchers may still ask it.
        self.locals.retain(|p, _| !idle.contains(p));
    }
}

/// How often an agent writes its statistics for each pool it serves.
const STATS_EVERY: Duration = Duration::from_millis(250);

/// The read-ahead: about 1 ms of work beyond the workers, from the mean task time; none for
/// tasks of [`NO_READ_AHEAD`] or more (see [`read_ahead`]).
#[derive(Default)]
struct Pace {
    mean_us: f64,
}

/// Tasks at least this long (on average) get no read-ahead: a worker that finishes one waits
/// for the next one's read (a round trip, well under a millisecond), at most a few percent of
/// the task, where an entry read ahead would wait a whole task behind it while another
/// agent's worker sat idle.
const NO_READ_AHEAD: Duration = Duration::from_millis(10);

impl Pace {
    fn note(&mut self, took: Duration, workers: usize, window: &AtomicUsize) {
        let us = took.as_secs_f64() * 1e6;
        self.mean_us = if self.mean_us == 0.0 {
            us
        } else {
            self.mean_us * 0.9 + us * 0.1
        };
        window.store(workers + read_ahead(self.mean_us, workers), Ordering::Relaxed);
    }
}

/// The entries read beyond `workers` for tasks of `mean_us` on average: about 1 ms of work,
/// at least one, at most 256; none for tasks of [`NO_READ_AHEAD`] or more.
fn read_ahead(mean_us: f64, workers: usize) -> usize {
    if mean_us >= NO_READ_AHEAD.as_secs_f64() * 1e6 {
        return 0;
    }
    ((1000.0 / mean_us.max(1.0) * workers as f64) as usize).clamp(1, 256)
}

/// The heartbeat's loop: keeps the agent alive, reaps dead ones, and watches running tasks
/// for cancels and gone pools. Redis out of reach: it dials again (see [`Redial`]) until it
/// answers, or ends the agent past the limit.
fn heartbeat(mut con: Conn, c: &Common) {
    let tx = &c.tx;
    let period = c.ttl / 4;
    let mut last_reap = Instant::now();
    let mut redial = Redial::default();
    let script = redis::Script::new(scripts::HEARTBEAT);
    while !c.stop.load(Ordering::Relaxed) {
        let id = c.id();
        match beat(&mut con, c, (&script, &id), &mut last_reap) {
            Ok(true) => redial.reached(c),
            Ok(false) => {
                redial.reached(c);
                // Expired: the reaper has taken (or will take) what this agent held; or
                // Redis restarted and forgot it.
                if tx.send(Event::Reaped(id.clone())).is_err() {
                    return;
                }
                // Wait for the engine to rejoin under a new id.
                c.wait_for_new_id(&id);
                continue;
            }
            Err(e) if redial.nap_after(c, &e) => continue,
            Err(_) => return,
        }
        std::thread::sleep(period.min(Duration::from_millis(250)));
    }
}

/// One heartbeat of agent `id` (`false`: it was declared dead, or forgotten), and, every
/// 250 ms, the reaper and the look for cancelled tasks.
fn beat(
    con: &mut Conn,
    c: &Common,
    (beat, id): (&redis::Script, &str),
    last_reap: &mut Instant,
) -> Result<bool, Error> {
    let key = c.keys.heartbeat(id);
    let ttl_ms = c.ttl.as_millis() as u64;
    let alive = con.run("refreshing the agent's heartbeat", |k| {
        beat.key(&key)
            .key(c.keys.agents())
            .arg(id)
            .arg(ttl_ms)
            .invoke::<i64>(k)
    })?;
    if alive != 1 {
        return Ok(false);
    }
    if last_reap.elapsed() >= Duration::from_millis(250) {
        *last_reap = Instant::now();
        reap(con, &c.keys, c.ttl)?;
        let ids = cancelled(con, c)?;
        if !ids.is_empty() {
            let _ = c.tx.send(Event::Cancel(ids));
        }
    }
    Ok(true)
}

/// Running entries whose task is done (cancelled, or answered by another agent after this
/// one was declared dead) or whose pool is gone.
fn cancelled(con: &mut Conn, c: &Common) -> Result<Vec<String>, Error> {
    let running: Vec<(String, (u64, u64))> = c
        .hub()
        .tasks
        .iter()
        .filter(|(_, t)| t.started.is_some())
        .map(|(id, t)| (id.clone(), (t.pool, t.task)))
        .collect();
    if running.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (_, (pool, task)) in &running {
        pipe.cmd("HEXISTS").arg(c.keys.done(*pool)).arg(task);
        pipe.cmd("EXISTS").arg(c.keys.pool(*pool));
    }
    let flags: Vec<bool> = con.run("checking for cancelled tasks", |k| pipe.query(k))?;
    Ok(running
        .into_iter()
        .zip(flags.chunks(2))
        .filter(|(_, f)| f[0] || !f[1])
        .map(|((id, _), _)| id)
        .collect())
}

/// An answer's bytes, or an error if its values hold handles: a descriptor cannot travel to
/// another host.
fn only_bytes(answered: crate::pool::job::Answered) -> Result<Vec<u8>, Error> {
    if answered.handles.is_empty() {
        answered.bytes.into_vec()
    } else {
        Err(Error::invalid(
            "the task returned a handle (a Buffer, a Lock, ...): handles cannot travel to \
             another host",
        ))
    }
}

/// The hub's books against a real redis-server: which answered entries it acknowledges, and
/// when.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::conn::testing::{at, server};

    /// About a millisecond of work read ahead, at least one entry; none for long tasks.
    #[test]
    fn the_read_ahead_is_a_millisecond_of_work_and_none_for_long_tasks() {
        assert_eq!(read_ahead(10.0, 2), 200);
        assert_eq!(read_ahead(0.1, 4), 256);
        assert_eq!(read_ahead(900.0, 1), 1);
        assert_eq!(read_ahead(5_000.0, 4), 1);
        assert_eq!(read_ahead(9_999.0, 4), 1);
        assert_eq!(read_ahead(10_000.0, 4), 0);
        assert_eq!(read_ahead(2e6, 2), 0);
    }

    /// A hub with no local pools, registered as agent `a1` of pool 7, on `sock`.
    fn common(sock: &std::path::Path) -> (Arc<Common>, Receiver<Event>) {
        let endpoint = at(sock, "");
        let key = Key::new(vec![7; 32]).unwrap();
        let keys = Keys::new(1, &key);
        let mut con = Conn::open_polled(&endpoint, Duration::ZERO).unwrap();
        conn::ensure_group(&mut con, &keys.tasks()).unwrap();
        let step: String = con
            .run("loading STEP", |k| {
                redis::cmd("SCRIPT").arg("LOAD").arg(scripts::STEP).query(k)
            })
            .unwrap();
        let (pool, hb) = (keys.pool(7), keys.heartbeat("a1"));
        con.run("set-up", |k| {
            redis::pipe()
                .cmd("SET")
                .arg(&pool)
                .arg("frame")
                .cmd("SET")
                .arg(&hb)
                .arg(1)
                .query::<()>(k)
        })
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let ttl = (Duration::from_secs(1), None);
        let c = Common::new(endpoint, (keys, key), ttl, 1, tx, con);
        *c.id.lock().unwrap() = "a1".into();
        c.hub().step = step;
        (Arc::new(c), rx)
    }

    /// A `Cancelled` answer the engine did not ask for is the local pool's dropping the
    /// entry unrun (its start's `STEP` failed, on whichever thread): nothing is recorded, its
    /// room is free, and the reader reads it again. One the engine asked for is recorded.
    #[test]
    fn an_entry_dropped_unrun_is_read_again_not_answered() {
        let (_server, sock) = server();
        let (c, _rx) = common(&sock);
        for (id, cancelled) in [("1-1", false), ("2-2", true)] {
            let task = Task {
                pool: 7,
                task: 1,
                max_frame: 1 << 20,
                raw: None,
                started: Some(Instant::now()),
                cancelled,
            };
            c.hub().tasks.insert(id.into(), task);
            c.outstanding.fetch_add(1, Ordering::SeqCst);
            c.answered(id.into(), Err(ErrorKind::Cancelled.into()));
            let hub = c.hub();
            assert!(!hub.tasks.contains_key(id));
            assert_eq!(hub.records.len(), usize::from(cancelled), "{id}");
            drop(hub);
            assert_eq!(c.reread.swap(false, Ordering::SeqCst), !cancelled);
            // Released now, or once its answer is sent.
            let out = c.outstanding.load(Ordering::SeqCst);
            assert_eq!(out, usize::from(cancelled), "{id}");
        }
    }

    /// An entry of pool 7's task `task`, read by `a1`: its id.
    fn entry(c: &Common, task: u64) -> String {
        let tasks = c.keys.tasks();
        let mut hub = c.hub();
        let id: String = hub
            .con
            .run("xadd", |k| {
                redis::cmd("XADD")
                    .arg(&tasks)
                    .arg("*")
                    .arg("f")
                    .arg("F")
                    .arg("p")
                    .arg(7)
                    .arg("k")
                    .arg(task)
                    .query(k)
            })
            .unwrap();
        hub.con
            .run("xreadgroup", |k| {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg("a1")
                    .arg("STREAMS")
                    .arg(&tasks)
                    .arg(">")
                    .query::<Value>(k)
            })
            .unwrap();
        // Counted as the reader counts what it read.
        c.outstanding.fetch_add(1, Ordering::SeqCst);
        id
    }

    /// An answered entry is acknowledged only once the reply of the `STEP` recording it came
    /// and was no error: a `STEP` the server refused (out of memory here) recorded nothing,
    /// and its entry must stay pending for the reaper to re-queue, not be acknowledged by a
    /// later `STEP`'s batch. Meanwhile the reader knows the entry (it is not run again if
    /// read again).
    #[test]
    fn only_recorded_answers_are_acknowledged() {
        let (_server, sock) = server();
        let (c, _rx) = common(&sock);
        let first = entry(&c, 1);
        let sealed = |t| c.seal(String::new(), 7, t, 1 << 20, Ok(vec![1])).unwrap().3;
        c.hub().records.push((first.clone(), 7, 1, sealed(1)));
        assert!(c.flush());
        {
            let hub = c.hub();
            assert!(hub.acked.is_empty(), "acknowledged before its reply came");
            assert!(hub.knows(&first));
        }
        c.hub().settle(&c, 0).unwrap();
        assert_eq!(c.hub().acked, std::slice::from_ref(&first));
        assert!(c.hub().knows(&first));
        // The server out of memory: the next answer's `STEP` fails; the one after it, sent
        // before that failure is read, succeeds.
        let (second, third) = (entry(&c, 2), entry(&c, 3));
        // On a connection of its own: the hub's has replies unread.
        let mut admin = Conn::open(&c.endpoint, Duration::ZERO).unwrap();
        let mut oom = |limit: &str| {
            admin
                .run("config", |k| {
                    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(limit).query::<()>(k)
                })
                .unwrap()
        };
        // The server's count of error replies: the failing `STEP` has run once it grows (the
        // next `CONFIG SET`, on another connection, could otherwise run first).
        let mut errors = {
            let mut admin = Conn::open(&c.endpoint, Duration::ZERO).unwrap();
            move || -> u64 {
                let info: String = admin
                    .run("info", |k| redis::cmd("INFO").arg("stats").query(k))
                    .unwrap();
                info.lines()
                    .find_map(|l| l.strip_prefix("total_error_replies:"))
                    .and_then(|n| n.trim().parse().ok())
                    .expect("total_error_replies in INFO stats")
            }
        };
        let before = errors();
        oom("1");
        c.hub().records.push((second.clone(), 7, 2, sealed(2)));
        assert!(c.flush());
        let until = Instant::now() + Duration::from_secs(5);
        while errors() == before {
            assert!(Instant::now() < until, "the STEP did not run");
            std::thread::sleep(Duration::from_millis(1));
        }
        oom("0");
        c.hub().records.push((third.clone(), 7, 3, sealed(3)));
        assert!(c.flush());
        let Err(e) = c.hub().settle(&c, 0) else {
            panic!("the STEP succeeded with the server out of memory")
        };
        assert!(e.to_string().contains("OOM"), "{e}");
        // Nothing after the failure is taken for recorded, and nothing more goes out: what
        // is pending stays for the reaper (which re-queues the second, and deletes the
        // first and the third, whose tasks are done).
        {
            let hub = c.hub();
            assert!(!hub.acked.contains(&second) && !hub.acked.contains(&third));
        }
        assert!(!c.flush_with(true), "a STEP sent after a failure");
        assert!(c.hub().settle(&c, 0).is_err());
        let tasks = c.keys.tasks();
        let mut con = Conn::open(&c.endpoint, Duration::ZERO).unwrap();
        let pending: Value = con
            .run("xpending", |k| {
                redis::cmd("XPENDING").arg(&tasks).arg(GROUP).arg("-").arg("+").arg(10).query(k)
            })
            .unwrap();
        let pending = format!("{pending:?}");
        for id in [&first, &second, &third] {
            assert!(pending.contains(id.as_str()), "{id} not pending: {pending}");
        }
        let done = c.keys.done(7);
        let recorded: Vec<String> = con
            .run("hkeys", |k| redis::cmd("HKEYS").arg(&done).query(k))
            .unwrap();
        assert_eq!(recorded, ["1", "3"], "the second recorded");
    }
}
