//! [`PoolStats`]: what [`Pool::stats`](crate::Pool::stats) reports, mpire's "worker insights"
//! for mproc: per worker, its process, tasks, busy and idle time, and its restarts and why;
//! and the pool's failures by kind.
//!
//! The dispatcher keeps the books as it goes (it counts answers and departures anyway); each
//! worker adds its busy time to its lane's shared words once per run of tasks (two clock
//! readings per run, not per task), so nothing is measured per task and nothing is paid when
//! nobody asks.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A pool's statistics at one moment ([`Pool::stats`](crate::Pool::stats)). Its `Display` is a
/// readable table.
///
/// ```
/// fn inc(n: u64) -> u64 {
///     n + 1
/// }
/// let pool = mproc::Pool::new(2)?;
/// pool.map(inc, 0..100)?;
/// let stats = pool.stats();
/// assert_eq!(stats.workers.len(), 2);
/// assert_eq!(stats.tasks(), 100);
/// println!("{stats}");
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// The workers alive now, by slot (a replacement takes its predecessor's slot); in a
    /// remote pool, every live agent's workers, by agent.
    pub workers: Vec<WorkerStats>,
    /// Tasks (items) finished by workers that have since ended.
    pub tasks_of_ended: u64,
    /// Restarts of every slot, by reason.
    pub restarts: Restarts,
    /// Tasks that failed, by the name of their [`ErrorKind`](crate::ErrorKind) variant
    /// (`"Panicked"`, `"WorkerLost"`, `"TaskTimedOut"`, `"Cancelled"`, ...): what the workers
    /// ran, not what was refused or dropped before it reached one.
    pub errors: BTreeMap<String, u64>,
    /// Chunks taken back from a worker busy with a slow task: chunks are sent to a worker ahead
    /// of time, so that it never waits for its next one, and those it has not started when its
    /// current one runs long (while another worker could take them) go back to the front of
    /// the pool's queue, for the next worker free. The `Display` table names it when it is
    /// not 0.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// // Quick tasks sent behind a slow one do not wait for it.
    /// let slow = pool.apply_async(nap, (200,))?;
    /// let quick = pool.chunksize(1).map_async(nap, vec![1; 40])?;
    /// assert_eq!(quick.get()?.len(), 40);
    /// slow.get()?;
    /// println!("{} chunks taken back", pool.stats().taken_back);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[serde(default)]
    pub taken_back: u64,
}

impl PoolStats {
    /// Adds `other`'s books to these (a remote pool's agents, each with its own).
    #[cfg_attr(not(feature = "remote"), expect(dead_code))]
    pub(crate) fn merge(&mut self, other: PoolStats) {
        self.workers.extend(other.workers);
        self.tasks_of_ended += other.tasks_of_ended;
        self.restarts.add(&other.restarts);
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.taken_back += other.taken_back;
    }

    /// Tasks (items: each `apply`, each item of a `map`) finished so far, by every worker the
    /// pool has had.
    ///
    /// ```
    /// assert_eq!(mproc::PoolStats::default().tasks(), 0);
    /// ```
    pub fn tasks(&self) -> u64 {
        self.tasks_of_ended + self.workers.iter().map(|w| w.tasks).sum::<u64>()
    }
}

/// One worker's statistics ([`PoolStats::workers`]).
///
/// ```
/// fn inc(n: u64) -> u64 {
///     n + 1
/// }
/// let pool = mproc::Pool::new(1)?;
/// pool.map(inc, 0..10)?;
/// let w = &pool.stats().workers[0];
/// assert_eq!((w.slot, w.tasks), (0, 10));
/// assert!(w.pid.is_some());
/// assert!(w.busy + w.idle <= w.age);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The remote agent it serves under (`None` in a local pool).
    pub agent: Option<String>,
    /// Its place in the pool (in a remote pool, in its agent's), from 0; a replacement takes
    /// the slot of the worker it replaces.
    pub slot: usize,
    /// Its process name (`ForkServerPoolWorker-3`, ...).
    pub name: String,
    /// Its process id.
    pub pid: Option<u32>,
    /// Tasks (items) it has finished, successfully or not.
    pub tasks: u64,
    /// Chunks it has answered (a `map` sends its items in chunks).
    pub chunks: u64,
    /// How long it has been running tasks (decoding, running, encoding).
    pub busy: Duration,
    /// How long it has waited for work since it was ready.
    pub waiting: Duration,
    /// How long it took to start and run the pool's initializer.
    pub startup: Duration,
    /// All its time not busy: `startup + waiting` (to the clock's rounding).
    pub idle: Duration,
    /// How long since it was started.
    pub age: Duration,
    /// How many times this slot's worker was replaced, by reason.
    pub restarts: Restarts,
}

/// How many times workers were replaced, by reason.
///
/// ```
/// let mut r = mproc::Restarts::default();
/// r.died = 1;
/// assert_eq!(r.total(), 1);
/// assert_eq!(r.to_string(), "1 died");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Restarts {
    /// It died on its own (a crash, a signal, an exit).
    pub died: u64,
    /// It was killed for a task past its `task_timeout`.
    pub timed_out: u64,
    /// It was retired after `max_tasks_per_child` tasks.
    pub retired: u64,
    /// It was killed to stop a cancelled task.
    pub cancelled: u64,
    /// It was killed for breaking the pool's protocol (writing garbage in its lane, ...).
    pub misbehaved: u64,
    /// It grew past the pool's memory: retired after a task for `max_memory_per_child`, or
    /// killed during one for `memory_limit_per_child`.
    #[serde(default)]
    pub over_memory: u64,
}

impl Restarts {
    /// All restarts, whatever the reason.
    ///
    /// ```
    /// assert_eq!(mproc::Restarts::default().total(), 0);
    /// ```
    pub fn total(&self) -> u64 {
        self.died + self.timed_out + self.retired + self.cancelled + self.misbehaved + self.over_memory
    }

    pub(crate) fn add(&mut self, other: &Restarts) {
        self.died += other.died;
        self.timed_out += other.timed_out;
        self.retired += other.retired;
        self.cancelled += other.cancelled;
        self.misbehaved += other.misbehaved;
        self.over_memory += other.over_memory;
    }
}

impl fmt::Display for Restarts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.died, "died"),
            (self.timed_out, "timed out"),
            (self.retired, "retired"),
            (self.cancelled, "cancelled"),
            (self.misbehaved, "misbehaved"),
            (self.over_memory, "over memory"),
        ];
        let mut any = false;
        for (n, what) in parts.into_iter().filter(|(n, _)| *n > 0) {
            if any {
                f.write_str(", ")?;
            }
            write!(f, "{n} {what}")?;
            any = true;
        }
        if !any {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// A duration for the table: seconds with three decimals.
fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

impl fmt::Display for PoolStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>4}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  restarts",
            "slot", "pid", "tasks", "busy", "waiting", "startup", "age"
        )?;
        for w in &self.workers {
            if let Some(agent) = &w.agent {
                writeln!(f, "agent {agent}:")?;
            }
            let pid = w.pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
            writeln!(
                f,
                "{:>4}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}  {}",
                w.slot,
                pid,
                w.tasks,
                secs(w.busy),
                secs(w.waiting),
                secs(w.startup),
                secs(w.age),
                w.restarts
            )?;
        }
        write!(
            f,
            "tasks: {} ({} by workers since ended); restarts: {}",
            self.tasks(),
            self.tasks_of_ended,
            self.restarts
        )?;
        if self.taken_back > 0 {
            write!(f, "; taken back: {}", self.taken_back)?;
        }
        if !self.errors.is_empty() {
            f.write_str("; failed: ")?;
            for (i, (kind, n)) in self.errors.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{n} {kind}")?;
            }
        }
        Ok(())
    }
}
