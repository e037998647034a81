//! The submitting side of a remote pool: a thread that takes the pool's commands (the same
//! inbox the local dispatcher serves), writes chunks to the task stream within the pool's
//! window, and runs the reaper; and a thread blocked on the pool's result stream that answers
//! each chunk. Every chunk is answered: with its result, an error an agent recorded, a lost
//! host's `WorkerLost`, `Cancelled`, `Terminated`, or a broker error when Redis goes away or
//! loses the pool.
//!
//! Each thread's connection is dialled again when it is dropped while Redis stays up (a
//! `CLIENT KILL`, a proxy's or a NAT's timeout, a server's `timeout` closing idle clients),
//! for up to the pool's TTL ([`pool_ttl`]: past it Redis drops the pool anyway). What was in
//! flight goes again: batches of tasks whose replies were not read (the `SUBMIT` script
//! writes a batch once, however often it is sent), the reader's `XREAD` from the last result
//! it took (reading takes nothing away, and an answer is taken once: its chunk leaves the
//! books), the heartbeat and the reaper. Only Redis not reached again ends the pool.
//!
//! A Redis that comes back with its data is no loss either: scripts it forgot (restarted, or
//! `SCRIPT FLUSH`) are loaded again ([`Conn::loads_again`]); and if its data is older than
//! batches this pool wrote (a snapshot or an append-only file a second behind, a replica that
//! lagged taking over), the next batch or the next tick finds it (`SUBMIT` and the number
//! Redis holds, `sent:<pool>`) and the chunks not answered of the lost batches go again (their
//! frames are kept until answered; an agent that read one before the loss may run it twice,
//! and its answer is recorded once).

use std::collections::{HashMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::Value;
use serde_bytes::ByteBuf;

use super::auth::{Key, Kind};
use crate::pool::PoolStats;
use super::config::Remote;
use super::conn::{self, Conn, Endpoint};
use super::frame::{self, Keys, PoolFrame, ResultFrame, TaskFrame};
use super::scripts;
use crate::error::{Error, ErrorKind};
use crate::pool::backend::{Backend, Settings};
use crate::pool::dispatcher::{Chunk, Command, Shared};
use crate::sys::fd;

/// How often the reaper runs and the agents' total is read again.
const TICK: Duration = Duration::from_millis(250);

/// Bytes of task frames in flight at most (at least one frame always goes).
const WINDOW_BYTES: usize = 64 << 20;

/// How long a blocking read of results waits before it looks at its stop flag.
const BLOCK_MS: u64 = 100;

/// What both threads see.
struct Flight {
    /// Chunks sent and not answered, by task id.
    chunks: Mutex<HashMap<u64, Sent>>,
    /// The reader's failure (Redis gone): the pool fails with it.
    failed: Mutex<Option<Error>>,
    stop: AtomicBool,
    /// When answers matter to the submitter's thread: the reader wakes it once fewer than
    /// this many chunks are in flight (0: never; `usize::MAX`: at every answer). Chunks
    /// waiting for room in a wide window wake it only when a quarter of the window is free,
    /// so that it writes them in batches (and agents read them in batches) rather than one
    /// per answer; a closed pool wakes it at every answer (it ends once all are answered).
    /// Set to `usize::MAX` before the submitter looks at the window (under `chunks`), so an
    /// answer that frees room it did not see is followed by a wake-up.
    wake_below: AtomicUsize,
}

impl Flight {
    fn chunks(&self) -> MutexGuard<'_, HashMap<u64, Sent>> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A chunk sent and not answered: its sealed frame, kept so that it can go again should
/// Redis lose it ([`Submitter::send_again`]; the window bounds what is kept: at most
/// [`WINDOW_BYTES`] and one frame), and the number of the batch it went in last.
struct Sent {
    chunk: Chunk,
    frame: Vec<u8>,
    batch: u64,
}

/// The error for a handle among a remote task's arguments.
pub(crate) fn handles_refused(what: &str) -> Error {
    Error::invalid(format!(
        "{what} hold a handle (a Queue, Pipe, lock, Value, SharedMemory, ...): handles work \
         between processes of one host and cannot cross to a remote pool's agents; send plain \
         data instead"
    ))
}

struct Submitter {
    shared: Arc<Shared>,
    flight: Arc<Flight>,
    con: Conn,
    endpoint: Endpoint,
    key: Key,
    keys: Keys,
    pool: u64,
    build: u64,
    max_retries: u32,
    /// The `SUBMIT` script's digest, and how many batches of tasks it was sent.
    submit: String,
    batches: u64,
    max_frame: usize,
    /// The heartbeat TTL (for the reaper's pause check).
    ttl: Duration,
    /// How long the pool lives in Redis without a word from this thread ([`pool_ttl`]).
    pool_ttl: Duration,
    fixed: Option<usize>,
    processes: Arc<AtomicUsize>,
    queue: VecDeque<Chunk>,
    closed: bool,
    next_tick: Instant,
    /// Set once it has answered everything: the fast path hands chunks back then.
    ended: bool,
}

impl Backend for Remote {
    fn start(
        self: Box<Self>,
        shared: Arc<Shared>,
        settings: Settings,
        processes: Arc<AtomicUsize>,
    ) -> Result<JoinHandle<()>, Error> {
        start(*self, shared, settings, processes)
    }
}

fn start(
    remote: Remote,
    shared: Arc<Shared>,
    settings: Settings,
    processes: Arc<AtomicUsize>,
) -> Result<JoinHandle<()>, Error> {
    let key = remote.load_key()?;
    if settings.init_has_handles {
        return Err(handles_refused("the initializer's arguments"));
    }
    let build = crate::sys::exe::identity();
    let keys = Keys::new(build, &key);
    let pool = crate::sys::proc::random_u64()
        .map_err(|e| Error::os("choosing the remote pool's id", e))?;
    let endpoint = remote.endpoint.clone();
    let pool_ttl = pool_ttl(remote.ttl);
    let mut con = Conn::open_polled(&endpoint, Duration::ZERO)?
        .redialing(pool_ttl, format!("mproc-caller-{pool:x}"))
        .loads_again(&[scripts::SUBMIT]);
    conn::ensure_group(&mut con, &keys.tasks())?;
    let frame = PoolFrame {
        pool,
        build,
        init: settings.init.map(|(e, b)| (e, ByteBuf::from(b))),
        task_timeout_ms: settings
            .task_timeout
            .map(|t| t.as_millis().try_into().unwrap_or(u64::MAX)),
        max_tasks_per_child: settings.max_tasks_per_child.map(|n| n as u64),
        max_memory_per_child: settings.max_memory_per_child,
        memory_limit_per_child: settings.memory_limit_per_child,
        max_frame: remote.max_frame as u64,
    };
    let sealed = frame::seal(&key, Kind::Pool, &frame)?;
    if sealed.len() > remote.max_frame {
        return Err(Error::invalid(format!(
            "the initializer's arguments encode to {} bytes, over the remote pool's frame limit \
             of {} (Remote::max_frame)",
            sealed.len(),
            remote.max_frame
        )));
    }
    let (submit,): (String,) = con.run("registering the remote pool", |c| {
        redis::pipe()
            .cmd("SET")
            .arg(keys.pool(pool))
            .arg(&sealed)
            .ignore()
            .cmd("SET")
            .arg(keys.alive(pool))
            .arg(1)
            .arg("PX")
            .arg(pool_ttl.as_millis() as u64)
            .ignore()
            .cmd("HSET")
            .arg(keys.pools())
            .arg(pool)
            .arg(1)
            .ignore()
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(scripts::SUBMIT)
            .query(c)
    })?;
    let (src_endpoint, src_keys, src_key) = (endpoint.clone(), keys.clone(), key.clone());
    let _ = shared.stats_source.set(Box::new(move || {
        agents_stats(&src_endpoint, &src_keys, &src_key, pool).unwrap_or_default()
    }));
    let mut s = Submitter {
        shared,
        flight: Arc::new(Flight {
            chunks: Mutex::new(HashMap::new()),
            failed: Mutex::new(None),
            stop: AtomicBool::new(false),
            wake_below: AtomicUsize::new(usize::MAX),
        }),
        con,
        endpoint,
        key,
        keys,
        pool,
        build,
        max_retries: settings.max_retries,
        submit,
        batches: 0,
        max_frame: remote.max_frame,
        ttl: remote.ttl,
        pool_ttl,
        fixed: settings.processes,
        processes,
        queue: VecDeque::new(),
        closed: false,
        next_tick: Instant::now() + TICK,
        ended: false,
    };
    s.refresh_size()?;
    let reader = {
        let con = Conn::open_polled(&s.endpoint, Duration::from_millis(BLOCK_MS))?
            .redialing(pool_ttl, format!("mproc-results-{pool:x}"));
        let (flight, shared, key) = (Arc::clone(&s.flight), Arc::clone(&s.shared), s.key.clone());
        let (stream, pool) = (s.keys.results(pool), pool);
        std::thread::Builder::new()
            .name("mproc-remote-results".into())
            .spawn(move || {
                // A panic in it (a bug) fails the pool, as Redis lost would: it does not
                // leave the chunks waiting for answers nobody reads.
                let read = || read_results(con, &flight, &shared, &key, &stream, pool);
                if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(read)) {
                    let why = Error::protocol(format!(
                        "the remote pool's result reader failed ({})",
                        panic_text(&*payload)
                    ));
                    std::mem::forget(payload);
                    *flight.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    shared.nudge();
                }
            })
            .map_err(|e| Error::os("starting the remote pool's result reader", e))?
    };
    let shared = Arc::clone(&s.shared);
    let s = Arc::new(Mutex::new(s));
    // A submitting thread that finds the submitter idle writes its chunks itself: one
    // wake-up less on the way to an agent. (Weak: the pool's state must not keep it alive.)
    let weak = Arc::downgrade(&s);
    let _ = shared.direct.set(Box::new(move |chunks| {
        let Some(s) = weak.upgrade() else {
            return Some(chunks);
        };
        let Ok(mut s) = s.try_lock() else {
            return Some(chunks);
        };
        if s.ended {
            return Some(chunks);
        }
        for c in chunks {
            s.accept(c);
        }
        if let Err(e) = s.send() {
            s.fail(e);
        }
        None
    }));
    std::thread::Builder::new()
        .name("mproc-remote".into())
        .spawn(move || {
            // A panic in it (a bug) still ends the pool cleanly, as the local dispatcher's
            // does: every chunk left is answered below. (The payload is forgotten, not
            // dropped: a payload's own drop may panic.)
            let served = panic::catch_unwind(AssertUnwindSafe(|| serve(&shared, &s)));
            let why = served.unwrap_or_else(|payload| {
                let why = Error::protocol(format!(
                    "the remote pool's thread failed ({}); the pool was stopped",
                    panic_text(&*payload)
                ));
                std::mem::forget(payload);
                why
            });
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            s.flight.stop.store(true, Ordering::Relaxed);
            let _ = reader.join();
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| s.end(&why))) {
                // Ended half way (a bug): what is left is answered without Redis.
                std::mem::forget(payload);
                if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| s.answer_all(&why)))
                {
                    std::mem::forget(payload);
                }
            }
            // Whatever happened above, waiters for the pool's end are told (chunks dropped
            // with the submitter answer `Terminated`).
            shared.mark_finished(&why);
        })
        .map_err(|e| Error::os("starting the remote pool's thread", e))
}

/// How long a pool lives in Redis after the last word from its submitter's thread (which
/// refreshes it every [`TICK`]): past it, the program holding the pool counts as gone
/// (killed, or stopped that long), and the reaper drops the pool. Four heartbeat TTLs (an
/// agent's ends after one: a pool's caller taken for dead loses more), and four ticks at least.
fn pool_ttl(ttl: Duration) -> Duration {
    (ttl * 4).max(TICK * 4)
}

/// How many results the result reader reads between two trims of its stream.
const TRIM_EVERY: usize = 32;

/// What the task pipelines do, for errors.
const WRITING: &str = "writing tasks to the task stream";

/// The loop; returns why it stopped (`Terminated` for a normal end too: nothing is left for
/// it to answer then). The submitter is locked for each turn, not while it waits.
fn serve(shared: &Shared, s: &Mutex<Submitter>) -> Error {
    loop {
        let deadline = s.lock().unwrap_or_else(|e| e.into_inner()).next_tick;
        if let Err(e) = fd::poll_read(&[shared.wake_fd()], Some(deadline)) {
            return Error::os("waiting for the remote pool's commands", e);
        }
        if let Some(why) = s.lock().unwrap_or_else(|e| e.into_inner()).turn() {
            return why;
        }
    }
}

impl Submitter {
    /// A failure on a submitting thread: the pool's thread ends the pool with it.
    fn fail(&self, e: Error) {
        *self.flight.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        self.shared.nudge();
    }

    /// One turn of the loop: commands, failures, sending, the periodic tick; `Some(why)`
    /// when the pool must end.
    fn turn(&mut self) -> Option<Error> {
        for command in self.shared.take_commands() {
            match command {
                Command::Submit(chunks) => {
                    for c in chunks {
                        self.accept(c);
                    }
                }
                Command::Cancel(ids) | Command::Withdraw(ids) => {
                    if let Err(e) = self.cancel(ids) {
                        return Some(e);
                    }
                }
                Command::Close => self.closed = true,
                Command::Terminate => {
                    self.abandon();
                    return Some(ErrorKind::Terminated.into());
                }
                Command::Wake => {}
            }
        }
        if let Some(e) = self.flight.failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Some(e);
        }
        if let Err(e) = self.send() {
            return Some(e);
        }
        if Instant::now() >= self.next_tick {
            if let Err(e) = self.tick() {
                return Some(e);
            }
            self.next_tick = Instant::now() + TICK;
        }
        if self.closed
            && self.queue.is_empty()
            && self.flight.chunks().is_empty()
            && self.shared.nothing_more_to_come()
        {
            return Some(ErrorKind::PoolClosed.into());
        }
        None
    }

    /// A submitted chunk: refused at once if it cannot go, else queued.
    fn accept(&mut self, chunk: Chunk) {
        if chunk.has_handles() {
            chunk.fail(handles_refused("the task's arguments"));
        } else if chunk.payload.len() + 256 > self.max_frame {
            let n = chunk.payload.len();
            chunk.fail(Error::invalid(format!(
                "the task's arguments encode to {n} bytes, over the remote pool's frame limit \
                 of {} bytes (Remote::max_frame)",
                self.max_frame
            )));
        } else {
            self.queue.push_back(chunk);
        }
    }

    /// Writes queued chunks while the window has room, in one pipeline.
    fn send(&mut self) -> Result<(), Error> {
        self.flight.wake_below.store(usize::MAX, Ordering::SeqCst);
        let sent = self.send_window();
        let wake_below = if self.closed {
            usize::MAX
        } else if self.queue.is_empty() {
            0
        } else {
            let window = self.processes.load(Ordering::Relaxed).max(1);
            window - window / 4
        };
        self.flight.wake_below.store(wake_below, Ordering::SeqCst);
        sent
    }

    fn send_window(&mut self) -> Result<(), Error> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let window = self.processes.load(Ordering::Relaxed).max(1);
        let mut batch = self.next_batch(self.batches);
        let mut sent = 0;
        {
            let mut chunks = self.flight.chunks();
            let mut bytes: usize = chunks.values().map(|s| s.frame.len()).sum();
            while chunks.len() < window && (chunks.is_empty() || bytes < WINDOW_BYTES) {
                let Some(mut chunk) = self.queue.pop_front() else {
                    break;
                };
                if chunk.answered() {
                    chunk.fail(ErrorKind::Cancelled.into()); // cancelled while queued
                    continue;
                }
                let sealed = match self.seal(&mut chunk) {
                    Ok(sealed) => sealed,
                    Err(e) => {
                        chunk.fail(e);
                        continue;
                    }
                };
                batch.arg(chunk.id).arg(&sealed);
                bytes += sealed.len();
                // In the books before it is written: its answer may come at once.
                let number = self.batches + 1;
                let sent_chunk = Sent {
                    chunk,
                    frame: sealed,
                    batch: number,
                };
                chunks.insert(sent_chunk.chunk.id, sent_chunk);
                sent += 1;
            }
        }
        if sent > 0 {
            // The reply is read before the next batch or command (`settle`), by when it is
            // there: no wait for it here, so neither this thread nor a caller writing its own
            // task (`apply`) sleeps until Redis answers.
            let before = self.batches;
            self.settle()?;
            if self.batches != before {
                // The last batch was found lost, and what was in flight went again, this
                // batch's chunks (booked above) with it.
                return Ok(());
            }
            self.batches += 1;
            self.con.send(WRITING, batch.get_packed_command(), 1)?;
        }
        Ok(())
    }

    /// The `SUBMIT` call of the next batch, written only if Redis holds `lowest` batches of
    /// this pool or more (fewer: it lost some); its chunks to add (two arguments each: the
    /// task id and its sealed frame).
    fn next_batch(&self, lowest: u64) -> redis::Cmd {
        let mut batch = redis::cmd("EVALSHA");
        batch
            .arg(&self.submit)
            .arg(2)
            .arg(self.keys.tasks())
            .arg(self.keys.sent(self.pool))
            .arg(self.batches + 1)
            .arg(self.pool)
            .arg(self.max_retries)
            .arg(lowest);
        batch
    }

    /// Redis holds `held` of the batches this pool wrote, fewer than it wrote: it lost the
    /// others (restarted with data older than they are, from a snapshot or an
    /// append-only file synced a second ago, or a replica that lagged took over). Their chunks
    /// not answered yet go again, in a batch of their own (which also sets the count right).
    /// One an agent had read before the loss may run twice; its answer is recorded once.
    /// Redis must still know the pool (the caller checks).
    fn send_again(&mut self, held: u64) -> Result<(), Error> {
        let mut batch = self.next_batch(held);
        let number = self.batches + 1;
        let mut again = 0;
        {
            let mut chunks = self.flight.chunks();
            let mut lost: Vec<(&u64, &mut Sent)> =
                chunks.iter_mut().filter(|(_, s)| s.batch > held).collect();
            lost.sort_unstable_by_key(|(id, _)| **id);
            for (id, s) in lost {
                batch.arg(*id).arg(&s.frame);
                s.batch = number;
                again += 1;
            }
        }
        log(&format!(
            "Redis holds {held} of the {} batches of tasks this pool wrote (was it restarted \
             with older data?): the {again} tasks of the others not answered yet are sent again",
            self.batches
        ));
        self.batches = number;
        self.con.send(WRITING, batch.get_packed_command(), 1)
    }

    /// A chunk's task frame, sealed. A large one's arguments are copied out of the memory
    /// file they were encoded into.
    fn seal(&self, chunk: &mut Chunk) -> Result<Vec<u8>, Error> {
        let payload = std::mem::take(&mut chunk.payload).into_vec()?;
        let frame = TaskFrame {
            pool: self.pool,
            task: chunk.id,
            build: self.build,
            entry: chunk.entry,
            items: chunk.items as u64,
            payload: ByteBuf::from(payload),
            timeout_ms: chunk
                .timeout
                .map(|t| t.as_millis().try_into().unwrap_or(u64::MAX)),
        };
        frame::seal(&self.key, Kind::Task, &frame)
    }

    /// Reads the replies of the task pipelines written and not read yet: an error there (the
    /// server refused an entry) ends the pool. A batch that found batches lost (`SUBMIT`'s
    /// `-1 - held`) wrote nothing: the chunks not answered of the lost batches and of the
    /// batches after them go again ([`send_again`](Self::send_again)).
    fn settle(&mut self) -> Result<(), Error> {
        loop {
            let Some(held) = self.read_replies()? else {
                return Ok(());
            };
            // Restarted with no data at all: the pool is gone too, and nothing is sent again.
            let pool = self.keys.pool(self.pool);
            let known: bool = self.con.run("checking the remote pool", |c| {
                redis::cmd("EXISTS").arg(&pool).query(c)
            })?;
            if !known {
                return Err(self.forgotten());
            }
            self.send_again(held)?;
        }
    }

    /// Reads the replies of the task pipelines not read yet; how many batches Redis holds
    /// if one found some lost (the fewest any said), else `None`.
    fn read_replies(&mut self) -> Result<Option<u64>, Error> {
        let mut lost = None;
        while self.con.unread() {
            for reply in self.con.recv(WRITING)? {
                if let Value::Int(r @ ..0) = reply {
                    let held = u64::try_from(-1 - r).unwrap_or(0);
                    lost = Some(lost.map_or(held, |l: u64| l.min(held)));
                }
            }
        }
        Ok(lost)
    }

    /// Cancels chunks: dropped if queued; if sent, agents skip them, or kill the worker
    /// running them. Their handles already say `Cancelled`.
    fn cancel(&mut self, ids: Vec<u64>) -> Result<(), Error> {
        let mut gone = Vec::new();
        {
            let mut chunks = self.flight.chunks();
            for id in &ids {
                if let Some(Sent { chunk, .. }) = chunks.remove(id) {
                    chunk.fail(ErrorKind::Cancelled.into());
                    gone.push(*id);
                }
            }
        }
        self.queue.retain(|c| !ids.contains(&c.id) || !c.answered());
        if !gone.is_empty() {
            // Marked done, as cancelled: agents skip them, or kill the worker running them,
            // and no result is recorded for them any more.
            let key = self.keys.done(self.pool);
            let mut pipe = redis::pipe();
            for id in &gone {
                pipe.cmd("HSETNX").arg(&key).arg(id).arg("c").ignore();
            }
            self.settle()?;
            self.con
                .run("cancelling remote tasks", |c| pipe.query::<()>(c))?;
        }
        Ok(())
    }

    /// Every period: keep the pool alive (and check that Redis still knows it), reap dead
    /// agents and pools, and follow the agents' total.
    fn tick(&mut self) -> Result<(), Error> {
        self.settle()?;
        let (alive, pools, pool) = (
            self.keys.alive(self.pool),
            self.keys.pools(),
            self.keys.pool(self.pool),
        );
        let ms = self.pool_ttl.as_millis() as u64;
        // Refreshed while the pool is registered, as an agent's heartbeat: one that expired
        // while Redis was paused does not make the pool gone, only the reaper does.
        let beat = redis::Script::new(scripts::HEARTBEAT);
        let registered: bool = self.con.run("keeping the remote pool alive", |c| {
            beat.key(&alive).key(&pools).arg(self.pool).arg(ms).invoke(c)
        })?;
        let sent = self.keys.sent(self.pool);
        let (known, held): (bool, Option<u64>) = self.con.run("checking the remote pool", |c| {
            redis::pipe()
                .cmd("EXISTS")
                .arg(&pool)
                .cmd("GET")
                .arg(&sent)
                .query(c)
        })?;
        if !(registered && known) {
            return Err(self.forgotten());
        }
        // Every batch written has been answered (`settle` above): Redis holds them all,
        // unless it lost some.
        let held = held.unwrap_or(0);
        if held < self.batches {
            self.send_again(held)?;
            self.settle()?;
        }
        reap(&mut self.con, &self.keys, self.ttl)?;
        self.refresh_size()
    }

    /// Why the pool ends when Redis no longer knows it.
    fn forgotten(&self) -> Error {
        ErrorKind::Broker(format!(
            "Redis no longer knows this pool (it was restarted without persistence, its keys \
             were deleted, or this program was silent past {:?}, stopped say, and the pool was \
             taken for abandoned): its tasks cannot be answered",
            self.pool_ttl
        ))
        .into()
    }

    /// The pool's size: `processes(n)`, or the workers the live agents announce.
    fn refresh_size(&mut self) -> Result<(), Error> {
        let n = match self.fixed {
            Some(n) => n,
            None => {
                self.settle()?;
                announced_workers(&mut self.con, &self.keys)?
            }
        };
        self.processes.store(n.max(1), Ordering::Relaxed);
        Ok(())
    }

    /// Terminate: agents skip or kill what they hold of this pool (its key goes first).
    fn abandon(&mut self) {
        // One try: the pool ends now, whether Redis answers or not (and nothing lost is sent
        // again).
        self.con.hurry();
        let _ = self.read_replies();
        let key = self.keys.pool(self.pool);
        let _ = self
            .con
            .run("ending the remote pool", |c| redis::cmd("DEL").arg(&key).query::<()>(c));
    }

    /// Answers what is left with `why` and deletes the pool's keys.
    fn end(&mut self, why: &Error) {
        self.ended = true;
        let why = match why.kind() {
            ErrorKind::PoolClosed => ErrorKind::Terminated.into(),
            _ => why.clone(),
        };
        if !matches!(why.kind(), ErrorKind::Terminated) {
            self.shared.set_broken(&why);
        }
        let mut pipe = redis::pipe();
        for k in self.keys.of_pool(self.pool) {
            pipe.cmd("DEL").arg(k).ignore();
        }
        pipe.cmd("HDEL").arg(self.keys.pools()).arg(self.pool).ignore();
        // One try: a pool that ends because Redis was not reached again need not wait for
        // it once more. (A connection dropped meanwhile is dialled again once.)
        self.con.hurry();
        let _ = self.read_replies();
        let what = "deleting the pool's keys";
        let _ = self.con.run(what, |c| pipe.query::<()>(c));
        self.answer_all(&why);
    }

    /// Answers every chunk left, queued, in flight or not taken yet, with `why`, and tells the
    /// pool it has finished; nothing asked of Redis.
    fn answer_all(&mut self, why: &Error) {
        for chunk in self.queue.drain(..) {
            chunk.fail(why.clone());
        }
        let left: Vec<_> = self.flight.chunks().drain().collect();
        for (_, Sent { chunk, .. }) in left {
            chunk.fail(why.clone());
        }
        for c in self.shared.take_commands() {
            if let Command::Submit(chunks) = c {
                chunks.into_iter().for_each(|c| c.fail(why.clone()));
            }
        }
        self.shared.mark_finished(why);
    }
}

/// The text of a caught panic's payload, for the error that ends the pool.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s,
        (None, Some(s)) => s,
        (None, None) => "a panic",
    }
}

/// The pool's statistics as its live agents last wrote them (every 250 ms), merged: each
/// worker names its agent. An agent whose heartbeat is gone counts no more workers; what its
/// workers finished stays counted. A record that fails its MAC is left out.
fn agents_stats(
    endpoint: &Endpoint,
    keys: &Keys,
    key: &Key,
    pool: u64,
) -> Result<PoolStats, Error> {
    let mut con = Conn::open(endpoint, Duration::ZERO)?;
    let records: Vec<(String, Vec<u8>)> = con.run("reading the agents' statistics", |c| {
        redis::cmd("HGETALL").arg(keys.stats(pool)).query(c)
    })?;
    let mut pipe = redis::pipe();
    for (agent, _) in &records {
        pipe.cmd("EXISTS").arg(keys.heartbeat(agent));
    }
    let alive: Vec<bool> = if records.is_empty() {
        Vec::new()
    } else {
        con.run("reading the agents' heartbeats", |c| pipe.query(c))?
    };
    let mut all = PoolStats::default();
    for ((agent, sealed), alive) in records.into_iter().zip(alive) {
        let Ok(mut stats) = frame::open::<PoolStats>(key, Kind::Stats, &sealed) else {
            log(&format!("the statistics of agent {agent} were refused"));
            continue;
        };
        if !alive {
            stats.tasks_of_ended += stats.workers.iter().map(|w| w.tasks).sum::<u64>();
            stats.workers.clear();
        }
        all.merge(stats);
    }
    Ok(all)
}

/// Runs the reaper's script once.
pub(crate) fn reap(con: &mut Conn, keys: &Keys, ttl: Duration) -> Result<i64, Error> {
    let script = redis::Script::new(scripts::REAP);
    con.run("reaping dead agents", |c| {
        script
            .key(keys.tasks())
            .key(keys.agents())
            .key(keys.dead())
            .key(keys.pools())
            .arg(&keys.prefix)
            .arg(ttl.as_millis() as u64)
            .invoke(c)
    })
}

/// The total of the workers the registered agents announce.
fn announced_workers(con: &mut Conn, keys: &Keys) -> Result<usize, Error> {
    let counts: Vec<usize> = con.run("reading the agents", |c| {
        redis::cmd("HVALS").arg(keys.agents()).query(c)
    })?;
    Ok(counts.iter().sum())
}

/// The result reader's loop: answers chunks as their results arrive, until told to stop or
/// Redis fails (then the pool fails with that error).
fn read_results(
    mut con: Conn,
    flight: &Flight,
    shared: &Shared,
    key: &Key,
    stream: &str,
    pool: u64,
) {
    let mut last = "0-0".to_owned();
    // Results read since the last trim.
    let mut untrimmed = 0usize;
    let mut idle = false;
    while !flight.stop.load(Ordering::Relaxed) {
        let mut pipe = redis::pipe();
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(1024)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(stream)
            .arg(&last);
        let trim = untrimmed >= TRIM_EVERY || (idle && untrimmed > 0);
        if trim {
            // What was read goes (the last entry stays until the next read: MINID keeps it).
            // One trim of the stream's head costs less than deleting each entry, and one per
            // `TRIM_EVERY` results less than one per read; once reads come back empty, what
            // is left goes too. After the read, so that both replies come at once (Redis runs
            // a command queued behind a blocked one when that one is answered): before it,
            // the trim's reply woke this thread, and the read's woke it again.
            pipe.cmd("XTRIM").arg(stream).arg("MINID").arg(&last);
            untrimmed = 0;
        }
        // Interrupted, it reads again from `last`: XREAD takes nothing away.
        let packed = pipe.get_packed_pipeline();
        let reply = con.ask("reading the remote pool's results", packed, pipe.len());
        let entries = match reply {
            Ok(r) => conn::stream_entries(r.into_iter().next().unwrap_or(Value::Nil)),
            Err(e) => {
                *flight.failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                shared.nudge();
                return;
            }
        };
        idle = entries.is_empty();
        if idle {
            continue;
        }
        let mut left = None;
        for entry in entries {
            last.clone_from(&entry.id);
            untrimmed += 1;
            let answer = answer_of(&entry, key, pool);
            let Some((task, outcome)) = answer else {
                continue;
            };
            let chunk = {
                let mut chunks = flight.chunks();
                let chunk = chunks.remove(&task);
                left = Some(chunks.len());
                chunk
            };
            if let Some(Sent { chunk, .. }) = chunk {
                chunk.finish(outcome.map(Into::into));
            }
        }
        if left.is_some_and(|n| n < flight.wake_below.load(Ordering::SeqCst)) {
            shared.nudge();
        }
    }
}

/// What a result entry says: a task and its outcome; `None` for one refused (logged).
fn answer_of(
    entry: &conn::Entry,
    key: &Key,
    pool: u64,
) -> Option<(u64, Result<Vec<u8>, Error>)> {
    if let Some(sealed) = entry.field("r") {
        return match frame::open::<ResultFrame>(key, Kind::Result, sealed) {
            Ok(r) if r.pool == pool => Some((r.task, r.outcome.map(ByteBuf::into_vec))),
            Ok(r) => {
                log(&format!("a result for another pool ({:x}) was ignored", r.pool));
                None
            }
            Err(e) => {
                log(&format!("a result entry {} was refused: {e}", entry.id));
                None
            }
        };
    }
    // The reaper's verdict on a task whose host died: it carries no MAC (the script has no
    // key) and so can only fail a task, never give it a value.
    let task = entry.text("lost")?.parse().ok()?;
    let attempts = entry.text("attempts").and_then(|a| a.parse().ok()).unwrap_or(1);
    let agent = entry.text("agent").unwrap_or("?");
    Some((task, Err(Error::lost_remotely(agent, attempts))))
}

/// A line on stderr about a refused frame: it is not run, and someone should know.
pub(crate) fn log(msg: &str) {
    crate::sys::proc::write_stderr(&format!("mproc remote: {msg}\n"));
}
