//! The agent: a worker host's side of remote pools. It reads task entries from the build's
//! stream (a consumer of its group), runs each in a local mproc pool of its own (one per
//! remote pool, with that pool's initializer and limits, retired when idle), and records each
//! answer with one atomic script. A task that crashes its process fails alone: the local pool
//! replaces the worker, and the agent stays up.
//!
//! Three threads, each with its own connection:
//! - the heartbeat: refreshes `hb:<agent>` every quarter of its TTL (a CPU-bound task never
//!   starves it), runs the reaper, and checks running tasks for cancels and gone pools;
//! - the reader: `XREADGROUP` of at most the free part of the agent's window (its workers
//!   plus a read-ahead of about 1 ms of work), so a dead agent strands little;
//! - the engine (the calling thread): checks each frame's MAC before decoding it, records
//!   entries as running when a local worker is free for them (the `START` script), hands them
//!   to the local pool, and records answers (`RECORD`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex};
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
use crate::pool::{Pool, RawTask};

/// A local pool unused this long is retired (its workers exit).
const RETIRE_AFTER: Duration = Duration::from_secs(10);

/// How long a blocking read waits before it looks at its flags.
const BLOCK_MS: u64 = 100;

/// What the engine hears.
enum Event {
    /// Entries the reader took.
    Read(Vec<conn::Entry>),
    /// A local pool answered the entry `id`.
    Done(String, Result<Vec<u8>, Error>),
    /// Running entries to cancel (their task was cancelled, or their pool is gone).
    Cancel(Vec<String>),
    /// The heartbeat found the agent declared dead.
    Reaped,
    /// The reader or heartbeat failed: Redis is gone.
    Failed(Error),
    /// SIGTERM: finish what runs, hand back what is held, leave.
    Drain,
}

/// What the threads share.
struct Common {
    endpoint: Endpoint,
    keys: Keys,
    ttl: Duration,
    /// The consumer name and heartbeat key in use (a new one after being declared dead).
    id: Mutex<String>,
    /// Entries read and not yet recorded or dropped: the reader reads only what fits.
    outstanding: AtomicUsize,
    room: Condvar,
    room_lock: Mutex<()>,
    window: AtomicUsize,
    /// Running entries: id -> (pool, task), for the heartbeat's cancel checks.
    running: Mutex<HashMap<String, (u64, u64)>>,
    stop: AtomicBool,
}

impl Common {
    fn id(&self) -> String {
        self.id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.outstanding.fetch_sub(n, Ordering::AcqRel);
            let _g = self.room_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.room.notify_all();
        }
    }
}

/// An entry read, checked, and waiting for a local worker.
struct Held {
    id: String,
    frame: TaskFrame,
}

/// One remote pool's local pool.
struct Local {
    pool: Result<Pool, Error>,
    used: Instant,
    /// The pool's frame limit (its submitter's `Remote::max_frame`).
    max_frame: usize,
}

/// Serves remote pools until Redis fails (or the process is killed).
pub(crate) fn serve(remote: Remote) -> Result<(), Error> {
    let key = remote.load_key()?;
    let workers = remote.processes.unwrap_or_else(crate::cpu_count).max(1);
    let build = crate::sys::exe::identity();
    let keys = Keys::new(build, &key);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let common = Arc::new(Common {
        endpoint: remote.endpoint.clone(),
        keys,
        ttl: remote.ttl,
        id: Mutex::new(String::new()),
        outstanding: AtomicUsize::new(0),
        room: Condvar::new(),
        room_lock: Mutex::new(()),
        window: AtomicUsize::new(workers * 2),
        running: Mutex::new(HashMap::new()),
        stop: AtomicBool::new(false),
    });
    let mut con = Conn::open(&common.endpoint, Duration::ZERO)?;
    conn::ensure_group(&mut con, &common.keys.tasks())?;
    // Before any thread starts, so that all inherit the blocked SIGTERM (local workers start
    // with a clean mask).
    let term = crate::sys::proc::sigterm_fd()
        .map_err(|e| Error::os("watching for SIGTERM", e))?;
    let (tx, rx) = mpsc::channel();
    let mut engine = Engine {
        common: Arc::clone(&common),
        con,
        key,
        build,
        host,
        workers,
        max_frame: remote.max_frame,
        method: remote.method,
        tx: tx.clone(),
        held: VecDeque::new(),
        tasks: HashMap::new(),
        locals: HashMap::new(),
        records: Vec::new(),
        pace: Pace::default(),
        draining: false,
        unsettled: VecDeque::new(),
    };
    engine.register()?;
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| Error::os("starting an agent thread", e))
    };
    let beat = {
        let (c, tx) = (Arc::clone(&common), tx.clone());
        let con = Conn::open(&common.endpoint, Duration::ZERO)?;
        spawn("mproc-agent-heartbeat", Box::new(move || heartbeat(con, &c, &tx)))?
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
    let reader = {
        let (c, tx) = (Arc::clone(&common), tx);
        let con = Conn::open(&common.endpoint, Duration::from_millis(BLOCK_MS))?;
        spawn("mproc-agent-reader", Box::new(move || read_tasks(con, &c, &tx)))?
    };
    let outcome = engine.run(&rx);
    common.stop.store(true, Ordering::Relaxed);
    common.room.notify_all();
    let _ = (beat.join(), reader.join());
    outcome?;
    engine.leave()
}

struct Engine {
    common: Arc<Common>,
    con: Conn,
    key: Key,
    build: u64,
    host: String,
    workers: usize,
    max_frame: usize,
    method: Option<crate::StartMethod>,
    tx: Sender<Event>,
    held: VecDeque<Held>,
    /// Entries handed to a local pool: id -> (pool, task, its handle, when it started).
    tasks: HashMap<String, (u64, u64, RawTask, Instant)>,
    locals: HashMap<u64, Local>,
    /// Answers to record: (entry id, pool, task, sealed result).
    records: Vec<(String, u64, u64, Vec<u8>)>,
    pace: Pace,
    /// SIGTERM came: nothing new starts; the run ends once what runs is recorded.
    draining: bool,
    /// Per pipeline sent and not read yet (the connection keeps their bytes), oldest first:
    /// the entries it started, whose verdicts it carries.
    unsettled: VecDeque<Vec<String>>,
}

/// Pipelines an agent may have in flight before it reads the oldest one's replies.
const UNSETTLED: usize = 16;

impl Engine {
    /// Announces this agent under a fresh id: its heartbeat, then its workers.
    fn register(&mut self) -> Result<(), Error> {
        self.settle(0)?; // the connection's replies in order: nothing else may be unread
        let id = format!("{}-{:016x}", self.host, crate::sys::proc::random_u64().unwrap_or(0));
        let keys = &self.common.keys;
        let ttl_ms = self.common.ttl.as_millis() as u64;
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
            .arg(self.workers)
            .ignore();
        self.con
            .run("registering the agent", |c| pipe.query::<()>(c))?;
        *self.common.id.lock().unwrap_or_else(|e| e.into_inner()) = id;
        Ok(())
    }

    fn run(&mut self, rx: &Receiver<Event>) -> Result<(), Error> {
        loop {
            // Replies are read when nothing else is to be done (or too many wait).
            let idle = if self.unsettled.is_empty() {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(1)
            };
            let first = match rx.recv_timeout(idle) {
                Ok(e) => Some(e),
                Err(RecvTimeoutError::Timeout) => {
                    self.settle(0)?;
                    None
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            for event in first.into_iter().chain(rx.try_iter()) {
                match event {
                    Event::Read(entries) => self.take(entries)?,
                    Event::Done(id, outcome) => self.answered(&id, outcome),
                    Event::Cancel(ids) => {
                        for id in ids {
                            if let Some((_, _, task, _)) = self.tasks.get(&id) {
                                task.cancel();
                            }
                        }
                    }
                    Event::Reaped => self.reaped()?,
                    Event::Failed(e) => return Err(e),
                    Event::Drain => {
                        log("SIGTERM: finishing the running tasks, then leaving");
                        self.draining = true;
                        self.common.stop.store(true, Ordering::Relaxed);
                    }
                }
            }
            if self.draining {
                let n = self.held.len();
                self.held.clear(); // still pending for this agent: re-queued when it leaves
                self.common.release(n);
            }
            self.step()?;
            self.retire();
            if self.draining && self.tasks.is_empty() && self.records.is_empty() {
                return self.settle(0);
            }
        }
    }

    /// Checks entries the reader took and holds the good ones; a bad one is refused (logged,
    /// answered with an error so its submitter does not wait, and never run).
    fn take(&mut self, entries: Vec<conn::Entry>) -> Result<(), Error> {
        for entry in entries {
            // Read again after a reconnection: already held or running here.
            let known = self.tasks.contains_key(&entry.id)
                || self.held.iter().any(|h| h.id == entry.id)
                || self.records.iter().any(|r| r.0 == entry.id);
            if known {
                self.common.release(1);
                continue;
            }
            let opened = entry
                .field("f")
                .ok_or_else(|| Error::protocol("a task entry without its frame"))
                .and_then(|sealed| frame::open::<TaskFrame>(&self.key, Kind::Task, sealed));
            let refused: Result<(), (u64, u64, Error)> = match opened {
                Ok(frame) if frame.build != self.build => Err((
                    frame.pool,
                    frame.task,
                    Error::from(ErrorKind::ExecutableMismatch),
                )),
                Ok(frame) => match self.local(frame.pool) {
                    Ok(()) => {
                        self.held.push_back(Held { id: entry.id, frame });
                        continue;
                    }
                    Err(e) => Err((frame.pool, frame.task, e)),
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
                self.record(entry.id, pool, task, Err(e));
            }
        }
        Ok(())
    }

    /// Makes sure the local pool of remote pool `pool` exists (reading its frame).
    fn local(&mut self, pool: u64) -> Result<(), Error> {
        if let Some(l) = self.locals.get_mut(&pool) {
            l.used = Instant::now();
            return l.pool.as_ref().map(|_| ()).map_err(Clone::clone);
        }
        self.settle(0)?; // the connection's replies in order: nothing else may be unread
        let key = self.common.keys.pool(pool);
        let sealed: Option<Vec<u8>> = self
            .con
            .run("reading a remote pool's settings", |c| {
                redis::cmd("GET").arg(&key).query(c)
            })?;
        let Some(sealed) = sealed else {
            return Err(ErrorKind::PoolClosed.into()); // gone: its tasks are skipped
        };
        let opened = frame::open::<PoolFrame>(&self.key, Kind::Pool, &sealed);
        let max_frame = opened
            .as_ref()
            .map_or(self.max_frame, |f| usize::try_from(f.max_frame).unwrap_or(usize::MAX));
        let made = opened.and_then(|f| {
            if f.build != self.build || f.pool != pool {
                return Err(ErrorKind::ExecutableMismatch.into());
            }
            let mut b = Pool::builder().processes(self.workers);
            // Panic reports and `current_process().name()` then say which host ran a task.
            b.name_prefix = Some(self.host.clone());
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
            b.build()
        });
        if let Err(e) = &made {
            log(&format!("remote pool {pool:x} cannot be served here: {e}"));
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
        ok
    }

    /// A local pool answered entry `id`.
    fn answered(&mut self, id: &str, outcome: Result<Vec<u8>, Error>) {
        let Some((pool, task, _, started)) = self.tasks.remove(id) else {
            return;
        };
        self.pace.note(started.elapsed(), self.workers, &self.common.window);
        self.common
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.record(id.to_owned(), pool, task, outcome);
    }

    /// Queues an answer to record.
    fn record(&mut self, id: String, pool: u64, task: u64, outcome: Result<Vec<u8>, Error>) {
        let limit = self.locals.get(&pool).map_or(self.max_frame, |l| l.max_frame);
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
            agent: self.common.id(),
            outcome: outcome.map(ByteBuf::from),
        };
        match frame::seal(&self.key, Kind::Result, &frame) {
            Ok(sealed) => self.records.push((id, pool, task, sealed)),
            Err(e) => log(&format!("a result could not be encoded: {e}")),
        }
    }

    /// One round trip: records answers, then starts held entries on free workers.
    fn step(&mut self) -> Result<(), Error> {
        let free = self.workers.saturating_sub(self.tasks.len());
        let starting: Vec<Held> = (0..free).map_while(|_| self.held.pop_front()).collect();
        if self.records.is_empty() && starting.is_empty() {
            return Ok(());
        }
        let keys = &self.common.keys;
        let me = self.common.id();
        let mut pipe = redis::pipe();
        let records = std::mem::take(&mut self.records);
        // (Replies are read raw below; none is ignored.)
        if !records.is_empty() {
            pipe.cmd("EVAL")
                .arg(scripts::RECORD)
                .arg(2)
                .arg(keys.tasks())
                .arg(keys.running(&me))
                .arg(&keys.prefix);
            for (id, pool, task, sealed) in &records {
                pipe.arg(id).arg(pool).arg(task).arg(sealed);
            }
        }
        if !starting.is_empty() {
            pipe.cmd("EVAL")
                .arg(scripts::START)
                .arg(3)
                .arg(keys.tasks())
                .arg(keys.heartbeat(&me))
                .arg(keys.running(&me))
                .arg(&keys.prefix);
            for h in &starting {
                pipe.arg(&h.id).arg(h.frame.pool).arg(h.frame.task);
            }
        }
        // The entries start while the script that marks them running is on its way: its
        // round trip overlaps their run instead of coming before it. An entry the script
        // refuses (cancelled, already answered, its pool gone, or this agent declared dead) is
        // taken back from the local pool at once, and its answer is not recorded.
        let packed = pipe.get_packed_pipeline();
        let replies = usize::from(!records.is_empty()) + usize::from(!starting.is_empty());
        self.con
            .send("recording results and starting tasks", packed, replies)?;
        let ids: Vec<String> = starting.iter().map(|h| h.id.clone()).collect();
        for h in starting {
            self.start(h);
        }
        // Recorded entries are acknowledged by the script just sent: their room is free.
        let recorded = records.iter().filter(|r| !r.0.is_empty()).count();
        self.common.release(recorded);
        self.unsettled.push_back(ids);
        self.settle(UNSETTLED)
    }

    /// Reads the replies of sent pipelines until at most `keep` are unread. An entry the
    /// START script refused (cancelled, already answered, its pool gone, or this agent
    /// declared dead) is taken back from the local pool; its answer is not recorded (one
    /// already recorded was harmless: the script records nothing twice).
    fn settle(&mut self, keep: usize) -> Result<(), Error> {
        while self.unsettled.len() > keep {
            let reply = self.con.recv("recording results and starting tasks")?;
            let Some(ids) = self.unsettled.pop_front() else {
                break;
            };
            if ids.is_empty() {
                continue;
            }
            let verdicts = match reply.into_iter().last() {
                Some(Value::Array(v)) => v,
                _ => Vec::new(), // declared dead meanwhile: these were re-queued for others
            };
            let mut refused = 0;
            for (i, id) in ids.iter().enumerate() {
                if matches!(verdicts.get(i), Some(Value::Int(1))) {
                    continue;
                }
                self.common
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                let mut pending = false;
                if let Some((_, _, task, _)) = self.tasks.remove(id) {
                    task.cancel();
                    pending = true;
                }
                if let Some(at) = self.records.iter().position(|r| &r.0 == id) {
                    self.records.remove(at);
                    pending = true;
                }
                // Not yet released unless its answer was already sent for recording.
                refused += usize::from(pending);
            }
            self.common.release(refused);
            if verdicts.is_empty() {
                self.reaped()?;
            }
        }
        Ok(())
    }

    /// Hands a held entry to its local pool.
    fn start(&mut self, h: Held) {
        let Held { id, frame } = h;
        let (pool, task) = (frame.pool, frame.task);
        let local = self.locals.get_mut(&pool).map(|l| {
            l.used = Instant::now();
            l.pool.as_ref().map_err(Clone::clone)
        });
        let submitted = match local {
            Some(Ok(p)) => {
                let tx = self.tx.clone();
                let done_id = id.clone();
                p.submit_raw(
                    frame.entry,
                    frame.payload.into_vec(),
                    frame.items as usize,
                    move |outcome| {
                        let _ = tx.send(Event::Done(done_id, outcome));
                    },
                )
            }
            Some(Err(e)) => Err(e),
            None => Err(ErrorKind::PoolClosed.into()),
        };
        match submitted {
            Ok(raw) => {
                self.common
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone(), (pool, task));
                self.tasks.insert(id, (pool, task, raw, Instant::now()));
            }
            Err(e) => self.record(id, pool, task, Err(e)),
        }
    }

    /// Declared dead (silent past the TTL): the held entries were re-queued for others, so
    /// drop them; running ones finish and are recorded only if nobody else recorded them
    /// first. Then join again under a new id.
    fn reaped(&mut self) -> Result<(), Error> {
        log("this agent was declared dead (silent past its heartbeat TTL); rejoining");
        let n = self.held.len();
        self.held.clear();
        self.common.release(n);
        self.register()
    }

    /// After a drain, once the reader has stopped: gives up the heartbeat and reaps itself,
    /// so what it held but never started is re-queued at no charge, and it is forgotten.
    fn leave(&mut self) -> Result<(), Error> {
        self.settle(0)?;
        let key = self.common.keys.heartbeat(&self.common.id());
        self.con
            .run("leaving", |c| redis::cmd("DEL").arg(&key).query::<()>(c))?;
        reap(&mut self.con, &self.common.keys)?;
        self.locals.clear();
        Ok(())
    }

    /// Retires local pools idle for a while.
    fn retire(&mut self) {
        let busy: Vec<u64> = self.tasks.values().map(|t| t.0).collect();
        let held: Vec<u64> = self.held.iter().map(|h| h.frame.pool).collect();
        self.locals.retain(|p, l| {
            busy.contains(p) || held.contains(p) || l.used.elapsed() < RETIRE_AFTER
        });
    }
}

/// The read-ahead: about 1 ms of work beyond the workers, from the mean task time.
#[derive(Default)]
struct Pace {
    mean_us: f64,
}

impl Pace {
    fn note(&mut self, took: Duration, workers: usize, window: &AtomicUsize) {
        let us = took.as_secs_f64() * 1e6;
        self.mean_us = if self.mean_us == 0.0 {
            us
        } else {
            self.mean_us * 0.9 + us * 0.1
        };
        let ahead = (1000.0 / self.mean_us.max(1.0) * workers as f64) as usize;
        window.store(workers + ahead.clamp(1, 256), Ordering::Relaxed);
    }
}

/// The reader's loop: takes at most the free part of the window. After its connection was
/// replaced (a stop and continue interrupted a read whose entries may be lost in flight), it
/// reads this consumer's pending entries again; the engine drops those it already has.
fn read_tasks(mut con: Conn, c: &Common, tx: &Sender<Event>) {
    let mut again = false;
    while !c.stop.load(Ordering::Relaxed) {
        let window = c.window.load(Ordering::Relaxed);
        let out = c.outstanding.load(Ordering::Acquire);
        if out >= window && !again {
            let g = c.room_lock.lock().unwrap_or_else(|e| e.into_inner());
            let _ = c.room.wait_timeout(g, Duration::from_millis(BLOCK_MS));
            continue;
        }
        let (id, tasks) = (c.id(), c.keys.tasks());
        let (count, from) = if again { (100_000, "0") } else { (window - out, ">") };
        let reply = con.run("reading the task stream", |k| {
            redis::cmd("XREADGROUP")
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
                .query::<Value>(k)
        });
        again = con.take_reconnected();
        match reply {
            Ok(v) => {
                let entries = conn::stream_entries(v);
                if !entries.is_empty() {
                    c.outstanding.fetch_add(entries.len(), Ordering::AcqRel);
                    if tx.send(Event::Read(entries)).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Event::Failed(e));
                return;
            }
        }
    }
}

/// The heartbeat's loop: keeps the agent alive, reaps dead ones, and watches running tasks
/// for cancels and gone pools.
fn heartbeat(mut con: Conn, c: &Common, tx: &Sender<Event>) {
    let period = c.ttl / 4;
    let ttl_ms = c.ttl.as_millis() as u64;
    let mut last_reap = Instant::now();
    while !c.stop.load(Ordering::Relaxed) {
        let id = c.id();
        let key = c.keys.heartbeat(&id);
        let alive = con.run("refreshing the agent's heartbeat", |k| {
            redis::cmd("SET")
                .arg(&key)
                .arg(1)
                .arg("PX")
                .arg(ttl_ms)
                .arg("XX")
                .query::<Option<String>>(k)
        });
        match alive {
            Ok(Some(_)) => {}
            Ok(None) => {
                // Expired: the reaper has taken (or will take) what this agent held.
                if tx.send(Event::Reaped).is_err() {
                    return;
                }
                // Wait for the engine to rejoin under a new id.
                let until = Instant::now() + c.ttl;
                while c.id() == id && Instant::now() < until && !c.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                continue;
            }
            Err(e) => {
                let _ = tx.send(Event::Failed(e));
                return;
            }
        }
        if last_reap.elapsed() >= Duration::from_millis(250) {
            last_reap = Instant::now();
            if let Err(e) = reap(&mut con, &c.keys) {
                let _ = tx.send(Event::Failed(e));
                return;
            }
            match cancelled(&mut con, c) {
                Ok(ids) if !ids.is_empty() => {
                    let _ = tx.send(Event::Cancel(ids));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Event::Failed(e));
                    return;
                }
            }
        }
        std::thread::sleep(period.min(Duration::from_millis(250)));
    }
}

/// Running entries whose task was cancelled or whose pool is gone.
fn cancelled(con: &mut Conn, c: &Common) -> Result<Vec<String>, Error> {
    let running: Vec<(String, (u64, u64))> = c
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if running.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (_, (pool, task)) in &running {
        pipe.cmd("SISMEMBER").arg(c.keys.cancel(*pool)).arg(task);
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
