//! The dispatcher's books on one worker: the chunks it holds, in the order it takes them; its
//! [`WorkerState`]; its pace. (The worker's own loop, in the child, is `pool/worker.rs`.)
//!
//! Workers take their chunks strictly in order, count each before running it, and publish each
//! answer before taking the next; so the books say at any time which chunk a worker runs (its
//! oldest unanswered one, if it has taken it) and which ones wait behind it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::chunk::Chunk;
use super::link::{Answer, Link};
use super::policy;
use super::state::WorkerState;
use crate::error::{Error, ErrorKind};
use crate::sys::proc;

/// The time for one pass over the workers, read from the clock at most once, and only if the
/// pass needs it: a reading is ~25 ns, and a call to an idle worker should not wait for one.
pub(super) struct Now(Option<Instant>);

impl Now {
    /// Read when first asked.
    pub(super) fn later() -> Now {
        Now(None)
    }

    /// Already read.
    pub(super) fn at(now: Instant) -> Now {
        Now(Some(now))
    }

    pub(super) fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

/// One worker and what the dispatcher knows of it.
pub(crate) struct Worker<L> {
    pub(super) link: L,
    pub(super) state: WorkerState,
    /// The chunks it was sent, oldest first.
    pub(super) in_flight: VecDeque<Chunk>,
    /// When the oldest chunk in flight became the running one (or was handed over, while the
    /// worker has not said `Ready`; reset then).
    pub(super) front_since: Instant,
    /// Chunks it has been given, for `max_tasks_per_child`.
    pub(super) given: usize,
    /// A running average of how long its chunks take, to size its window.
    pub(super) average: Duration,
    /// Answers accepted; compared with the count of chunks it took when it dies.
    pub(super) answered: u64,
    /// How many chunks it may hold in this round of assignments (0 once it is full).
    pub(super) limit: usize,
    /// Whether it was handed a chunk while holding nothing and its reader's word has not been
    /// set since (see [`Worker::hold`]).
    pub(super) word_owed: bool,
    /// The front chunk whose slowness already made the dispatcher take back the chunks
    /// waiting behind it.
    pub(super) rebalanced: Option<u64>,
    /// Its place in the pool (for the statistics): a replacement takes the slot it frees.
    pub(super) slot: usize,
    /// When it was launched, and when it said `Ready`.
    pub(super) launched: Instant,
    pub(super) ready_at: Option<Instant>,
    /// Whether it was retired after `max_tasks_per_child`.
    pub(super) retired: bool,
    /// Whether it was retired after `max_memory_per_child`.
    pub(super) over_memory: bool,
    /// The resident memory past which it is retired after a task (the lower of
    /// `max_memory_per_child` and `memory_limit_per_child`), checked whoever reads its answers.
    memory_cap: Option<u64>,
    /// Items and chunks it has answered, and its chunks that failed, by error kind (items).
    pub(super) items: u64,
    pub(super) chunks: u64,
    pub(super) failed: BTreeMap<&'static str, u64>,
    /// Panics already told to `tracing`.
    #[cfg(feature = "tracing")]
    panics_seen: u64,
}

impl<L: Link> Worker<L> {
    /// A worker just launched. With `at_once`, it takes chunks before it says `Ready` (they
    /// wait in its lane while it starts); otherwise (it runs an initializer) only after.
    pub(super) fn new(
        link: L,
        slot: usize,
        launched: Instant,
        memory_cap: Option<u64>,
        at_once: bool,
    ) -> Worker<L> {
        let mut state = WorkerState::Starting;
        if at_once {
            state.ready();
        }
        Worker {
            slot,
            launched,
            ready_at: None,
            retired: false,
            over_memory: false,
            memory_cap,
            items: 0,
            chunks: 0,
            failed: BTreeMap::new(),
            #[cfg(feature = "tracing")]
            panics_seen: 0,
            link,
            state,
            in_flight: VecDeque::new(),
            front_since: Instant::now(),
            given: 0,
            average: policy::FIRST_AVERAGE,
            answered: 0,
            limit: 0,
            word_owed: false,
            rebalanced: None,
        }
    }

    /// It said `Ready`: it takes chunks, and the one it holds first starts its time now.
    pub(super) fn said_ready(&mut self) {
        if self.ready_at.is_none() {
            let now = Instant::now();
            self.ready_at = Some(now);
            if !self.in_flight.is_empty() {
                self.front_since = now;
            }
        }
        self.state.ready();
    }

    /// Whether it has not said `Ready` yet (chunks handed to it wait in its lane).
    pub(super) fn starting(&self) -> bool {
        self.ready_at.is_none()
    }

    /// The id of the chunk it runs or runs next.
    pub(super) fn front(&self) -> Option<u64> {
        self.in_flight.front().map(|c| c.id)
    }

    /// Whether it counts toward the pool's size.
    pub(super) fn occupies_slot(&self) -> bool {
        self.state.occupies_slot(!self.in_flight.is_empty())
    }

    /// How many chunks it may hold, as of `now` (read only if it holds some).
    pub(super) fn window(&self, now: &mut Now) -> usize {
        let running_for = (!self.in_flight.is_empty())
            .then(|| now.get().saturating_duration_since(self.front_since));
        policy::window(running_for, self.average)
    }

    /// Puts `chunk` (just sent) in its books; retires it (`Stop`) once it has been given
    /// `max_tasks_per_child`. A worker that held nothing may have been left with its reader's
    /// word saying awake (a reader letting go sets only the words of workers that hold
    /// chunks): it then owes its reader's word ([`Worker::word_owed`]), which whoever lets go
    /// of the state next without reading the lanes sets (a submitting thread,
    /// `Dispatcher::set_owed_words`); a reader sets it as it lets go.
    pub(super) fn hold(
        &mut self,
        chunk: Chunk,
        now: &mut Now,
        max_tasks_per_child: Option<usize>,
    ) {
        let first = self.in_flight.is_empty();
        if first {
            self.front_since = now.get();
        }
        event!(target: "mproc::pool", tracing::Level::TRACE, task = chunk.id,
            items = chunk.items, worker = self.link.name(), pid = self.link.pid(),
            "task handed to a worker");
        self.in_flight.push_back(chunk);
        self.count_given(max_tasks_per_child);
        self.word_owed |= first;
    }

    /// Counts a chunk handed to it; retires it (`Stop`) once it has been given
    /// `max_tasks_per_child`, and says so.
    fn count_given(&mut self, max_tasks_per_child: Option<usize>) -> bool {
        self.given += 1;
        let retire = policy::retire(self.given, max_tasks_per_child);
        if retire {
            self.retired = true;
            self.stop();
        }
        retire
    }

    /// Books the answer to a call whose caller read it from the lane itself, the worker
    /// holding nothing else (`Dispatcher::look_waited`): as [`hold`](Self::hold),
    /// [`accept`](Self::accept) and [`drain`](Self::drain) book a chunk of one item handed to
    /// it at `placed` and answered by `read` (a clock reading taken a moment before its
    /// answer was seen). Whether it was retired by it, at `max_tasks_per_child` or past its
    /// memory cap (its `Stop` is queued, to flush: the caller lets go without the dispatcher
    /// thread's turn that would send it).
    pub(super) fn book_waited(
        &mut self,
        id: u64,
        placed: Instant,
        read: Instant,
        max_tasks_per_child: Option<usize>,
    ) -> bool {
        event!(target: "mproc::pool", tracing::Level::TRACE, task = id, items = 1,
            worker = self.link.name(), pid = self.link.pid(), "task handed to a worker");
        let mut stopped = self.count_given(max_tasks_per_child);
        self.count_answered(id, 1, None);
        #[cfg(feature = "tracing")]
        self.trace_panics(id);
        self.front_since = read;
        self.average = policy::average_after(self.average, read.saturating_duration_since(placed), 1);
        if let Some(max) = self.memory_cap {
            // Retired past the cap, its `Stop` is queued too (it was accepting: not before).
            self.check_memory_after_task(max);
            stopped |= self.over_memory;
        }
        stopped
    }

    /// Counts the answer to chunk `id` of `items` items, and the items of a failed one by its
    /// error's kind.
    #[cfg_attr(not(feature = "tracing"), expect(unused_variables))]
    fn count_answered(&mut self, id: u64, items: usize, failed: Option<&Error>) {
        self.answered += 1;
        self.items += items as u64;
        self.chunks += 1;
        if let Some(e) = failed {
            *self.failed.entry(e.kind().name()).or_default() += items as u64;
            event!(target: "mproc::pool", tracing::Level::WARN, task = id,
                worker = self.link.name(), pid = self.link.pid(), error = %e, "task failed");
        } else {
            event!(target: "mproc::pool", tracing::Level::DEBUG, task = id, items,
                worker = self.link.name(), pid = self.link.pid(), "task finished");
        }
    }

    /// Sets its reader's word if it owes it (see [`Worker::hold`]): it held nothing, every
    /// answer it sent was read, and all it holds was handed to it since, which the word names;
    /// `false` if an answer is already there (someone must read the lanes).
    pub(super) fn set_owed_word(&mut self) -> bool {
        !std::mem::take(&mut self.word_owed)
            || self.link.prepare_sleep_held(self.in_flight.len() as u64)
    }

    /// Gives it nothing more and tells it to leave once it has done what it holds.
    fn stop(&mut self) {
        self.link.stop();
        self.state.retire();
        self.limit = 0;
    }

    /// After an answer: retires it if its resident memory is past `max` bytes (the lower of
    /// `max_memory_per_child` and `memory_limit_per_child`).
    fn check_memory_after_task(&mut self, max: u64) {
        if self.over_memory || self.retired || !self.state.accepting() {
            return;
        }
        let resident = self.link.pid().and_then(proc::resident_bytes);
        if resident.is_some_and(|r| r > max) {
            event!(target: "mproc::pool", tracing::Level::INFO, worker = self.link.name(),
                pid = self.link.pid(), max, "worker past max_memory_per_child: retiring it");
            self.over_memory = true;
            self.stop();
        }
    }

    /// While it runs a task: kills it if its resident memory is past `limit` bytes
    /// (`memory_limit_per_child`); the task fails with `MemoryExceeded`. Returns the chunks
    /// taken back from behind that task, to run elsewhere (see
    /// [`condemn_running`](Self::condemn_running)).
    pub(super) fn check_memory_limit(&mut self, limit: u64) -> Vec<Chunk> {
        if self.in_flight.is_empty() || self.state.is_condemned() {
            return Vec::new();
        }
        let resident = self.link.pid().and_then(proc::resident_bytes);
        let Some(resident) = resident.filter(|&r| r > limit) else {
            return Vec::new();
        };
        event!(target: "mproc::pool", tracing::Level::WARN, task = self.front(),
            worker = self.link.name(), pid = self.link.pid(), limit, resident,
            "worker past memory_limit_per_child: killing it");
        self.condemn_running(ErrorKind::MemoryExceeded { limit, resident }.into())
    }

    /// Kills it for `why`, charged to the chunk it runs (its oldest), once the chunks behind
    /// that one are taken back ([`revoke_behind`](Self::revoke_behind)): it may finish that
    /// chunk and take the next before the kill lands, and the next, another's, would be lost
    /// with it. Returns their live copies, to run elsewhere. If it had taken one of them
    /// already, the chunk it ran has finished (its answer is on its way): it is not killed.
    pub(super) fn condemn_running(&mut self, why: Error) -> Vec<Chunk> {
        let (copies, finished) = self.revoke_behind(0);
        if !finished {
            self.condemn_front(why);
        }
        copies
    }

    /// Accepts the answer to the chunk it was running (its oldest). Its next chunk's time is
    /// started by the caller, [`Worker::drain`].
    pub(super) fn accept(&mut self, (id, result): Answer) {
        if self
            .in_flight
            .front()
            .is_some_and(|c| c.id == id && c.revoked)
        {
            // It skipped a chunk taken back from it; the copy runs elsewhere.
            self.in_flight.pop_front();
            self.answered += 1;
            return;
        }
        if self.front() == Some(id) {
            let chunk = self.in_flight.pop_front().expect("just looked");
            self.count_answered(id, chunk.items, result.as_ref().err());
            #[cfg(feature = "tracing")]
            self.trace_panics(id);
            chunk.finish(result);
        } else {
            // Out of order: it is not running what we think. Trust nothing more.
            self.condemn(None, Error::protocol("a pool worker answered out of order"));
        }
    }

    /// Warns when the worker's count of panics grew with task `task`'s answer (its report
    /// is in the task's result).
    #[cfg(feature = "tracing")]
    fn trace_panics(&mut self, task: u64) {
        let (_, panics) = self.link.work(0);
        if panics > self.panics_seen {
            tracing::warn!(target: "mproc::pool", task, worker = self.link.name(),
                pid = self.link.pid(), items = panics - self.panics_seen,
                "task panicked (the report is in its result)");
            self.panics_seen = panics;
        }
    }

    /// Accepts every answer it has published, in order, up to the answer to the last chunk it
    /// holds: a worker that holds nothing has nothing to answer, and its lane is not read
    /// then (the look at the next frame's line, written last by the worker as it zeroed it
    /// ahead, cost a waiting caller a cache miss between its answer and its next call; what
    /// a misbehaving worker sent meanwhile is read once it holds a chunk again). `seen`: a
    /// clock reading its reader took a moment before it looked (a waiting thread's, see
    /// `Shared::help`), good enough for the running average of its chunks' times, so that a
    /// quick call's answer does not wait for the clock; the chunk it runs next starts its
    /// time at a fresh reading.
    pub(super) fn drain(&mut self, scratch: &mut Vec<u8>, seen: Option<Instant>) {
        if self.in_flight.is_empty() {
            return;
        }
        let answered = self.answered;
        let (since, chunks) = (self.front_since, self.chunks);
        loop {
            match self.link.next_answer(scratch) {
                Ok(Some(answer)) => {
                    self.accept(answer);
                    if self.in_flight.is_empty() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return self.condemn_front(e),
            }
        }
        if self.answered != answered {
            // A reading older than the chunk's start (or than its worker's answer, had the
            // reader been kept from its CPU a while) must not start the next chunk's time
            // early: its timeout would come early.
            let now = match seen {
                Some(seen) if self.in_flight.is_empty() && seen >= since => seen,
                _ => Instant::now(),
            };
            self.front_since = now;
            // The chunks answered since the front one began shared the time between (read in
            // one go, they all look read at `now`).
            let read = self.chunks - chunks;
            if read > 0 {
                let took = now.saturating_duration_since(since);
                self.average = policy::average_after(self.average, took, read);
            }
        }
        // After a task, past the cap: retired, its answer kept. Here, where every reader of
        // answers passes, not in the dispatcher's turn: a waiting thread may read the answer
        // (`Shared::help`).
        if let Some(max) = self.memory_cap
            && self.answered != answered
        {
            self.check_memory_after_task(max);
        }
    }

    /// When its running chunk passes `timeout` (per task: scaled by the chunk's items).
    pub(super) fn deadline(&self, timeout: Option<Duration>) -> Option<Instant> {
        let front = self.in_flight.front()?;
        // Its time starts when it has started (chunks may wait in its lane before).
        if self.state.is_condemned() || front.revoked || self.starting() {
            return None;
        }
        policy::deadline(self.front_since, front.timeout.or(timeout), front.items)
    }

    /// When the chunks waiting behind a slow running chunk should be taken back, if ever.
    pub(super) fn rebalance_at(&self) -> Option<Instant> {
        let front = self.front()?;
        if self.state.is_condemned() {
            return None;
        }
        policy::rebalance_at(
            self.in_flight.len(),
            self.front_since,
            self.rebalanced == Some(front),
            self.starting(),
        )
    }

    /// Takes back the chunks it holds but has not claimed (revoking them, so it skips them),
    /// leaving inert entries in their place; returns the live copies, in order.
    pub(super) fn revoke_untaken(&mut self) -> Vec<Chunk> {
        let taken = self.link.started().saturating_sub(self.answered) as usize;
        let mut copies = Vec::new();
        for at in policy::untaken(taken, self.in_flight.len(), self.starting()) {
            let task = self.answered + at as u64 + 1;
            let c = &mut self.in_flight[at];
            if c.revoked || c.answered() {
                continue;
            }
            if !self.link.revoke(task) {
                break; // it has just claimed this one: it runs here
            }
            copies.push(c.revoke());
        }
        copies
    }

    /// Before it is killed for the chunk at `at` in its books, which it has taken: takes back
    /// the chunks behind that one that it has not taken (revoking them, so it skips them), so
    /// that it dies running that chunk or nothing, never a chunk it took after it (which would
    /// be lost for another's sake). Returns their live copies, in order, and whether it had
    /// already taken one of them: then it has finished the chunk at `at` (it answers each chunk
    /// before taking the next), and is not to be killed for it.
    pub(super) fn revoke_behind(&mut self, at: usize) -> (Vec<Chunk>, bool) {
        let mut copies = Vec::new();
        for next in at + 1..self.in_flight.len() {
            let task = self.answered + next as u64 + 1;
            let c = &mut self.in_flight[next];
            if c.revoked || c.answered() {
                continue; // nothing of another's: inert, or cancelled too
            }
            if !self.link.revoke(task) {
                return (copies, true);
            }
            copies.push(c.revoke());
        }
        (copies, false)
    }

    /// Kills it for `why`, charged to chunk `target`; the accounting happens when its exit
    /// is seen.
    pub(super) fn condemn(&mut self, target: Option<u64>, why: Error) {
        if self.state.condemn(target, why) {
            self.link.kill();
        }
    }

    /// Kills it for `why`, charged to the chunk it runs.
    pub(super) fn condemn_front(&mut self, why: Error) {
        self.condemn(self.front(), why);
    }
}
