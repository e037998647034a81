//! `Pool`: Python's `multiprocessing.Pool`, with every task accounted for.
//!
//! - [`dispatcher`]: the thread that owns the workers and assigns each chunk to one of them;
//! - [`worker`]: a worker's loop, in the child;
//! - [`task`]: chunks of arguments and the trampoline that runs them;
//! - [`job`]: the per-job state the dispatcher fills and the handles wait on;
//! - [`result`]: [`AsyncResult`], the handle on one job;
//! - [`imap`]: the streaming iterators;
//! - [`chunked`]: the map family with a chosen chunk size.

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::start::{self, StartMethod};
use crate::wire::target::{self, Target};

pub(crate) mod backend;
mod chunked;
mod completion;
pub(crate) mod dispatcher;
mod imap;
#[cfg(feature = "progress")]
mod progress;
pub(crate) mod job;
pub(crate) mod lane;
#[cfg(feature = "remote")]
mod raw;
mod result;
mod state;
mod stats;
mod task;
pub(crate) mod worker;

pub use chunked::Chunked;
pub use completion::{
    AsCompleted, AsCompletedTimeout, Return, as_completed, as_completed_timeout, wait,
};
use dispatcher::{Config, Shared};
pub use imap::Imap;
#[cfg(feature = "remote")]
pub(crate) use dispatcher::{Gated, Verdict};
#[cfg(feature = "remote")]
pub(crate) use raw::{RawTask, Waker};
pub use result::{AsyncResult, Progress};
pub use stats::{PoolStats, Restarts, WorkerStats};
pub use state::{WithState, with_state};

/// A pool of worker processes, as Python's `multiprocessing.Pool`.
///
/// Each task (or chunk of tasks) is assigned to one worker, and the pool knows which: a worker
/// that dies (killed, segfault, abort, out of memory) fails only what it held, with
/// `Err(WorkerLost)`, and is replaced; nothing hangs. Dropping the pool terminates it, like
/// Python's `with Pool() as pool:`.
///
/// A quick task's answer is picked up without a wake-up: an idle worker watches its lane for
/// a moment (50 µs) before it sleeps, and a thread in `get` reads the lanes itself for a
/// while (200 µs). Either lets its CPU go only when the other side runs on the same CPU. A
/// worker that finds itself on the CPU of the thread waiting for it moves to another CPU, at
/// most once every 100 µs, when its task was a call placed on it while idle and the busy
/// workers and that thread number no more than the process's CPUs: the two would otherwise
/// take turns at one CPU. Only a worker that may run on every CPU it can have moves: every
/// online CPU, or all of its cpuset's (in a container given some of the machine's CPUs); its
/// CPU set is narrowed by that one CPU for the moment of the move, then every CPU again,
/// which the kernel keeps within the cpuset. One given a narrower set by hand (by an
/// initializer, `taskset`) keeps it and never moves.
///
/// ```
/// use mproc::Pool;
///
/// fn square(n: u64) -> u64 {
///     n * n
/// }
///
/// let pool = Pool::new(2)?;
/// assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
/// assert_eq!(pool.apply(square, (12,))?, 144);
/// let pending = pool.apply_async(square, (3,))?;
/// assert_eq!(pending.get()?, 9);
/// pool.close();
/// pool.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Pool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dispatcher: ThreadId,
    /// Its size: fixed for local workers; a remote pool without `processes(n)` follows the
    /// workers its agents announce.
    processes: Arc<AtomicUsize>,
}

/// Configures a [`Pool`]; made by [`Pool::builder`].
///
/// ```
/// use std::time::Duration;
///
/// fn setup(greeting: String) {
///     assert_eq!(greeting, "hello");
/// }
/// fn square(n: u64) -> u64 {
///     n * n
/// }
/// let pool = mproc::Pool::builder()
///     .processes(2)
///     .start_method(mproc::StartMethod::Forkserver)
///     .initializer(setup, ("hello".to_string(),))
///     .max_tasks_per_child(100)
///     .task_timeout(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(pool.map(square, [3, 4])?, [9, 16]);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct PoolBuilder {
    processes: Option<usize>,
    method: Option<StartMethod>,
    init: Option<Init>,
    max_tasks_per_child: Option<usize>,
    max_memory_per_child: Option<u64>,
    memory_limit_per_child: Option<u64>,
    task_timeout: Option<Duration>,
    /// Where the tasks run when not in local workers (`remote`).
    pub(crate) backend: Option<Box<dyn backend::Backend>>,
    pub(crate) max_retries: Option<u32>,
    /// Put before each worker's name (`host:ForkServerPoolWorker-3` on a remote agent).
    pub(crate) name_prefix: Option<String>,
    /// A remote agent's local pool (one chunk per worker, each started through its gate).
    pub(crate) gated: Option<dispatcher::Gated>,
    /// Its workers' environment, working directory and standard streams.
    setup: crate::start::setup::Setup,
    /// Which of `initializer` and `worker_state` set `init` (one or the other), and whether
    /// both were asked for.
    init_from: Option<&'static str>,
    init_conflict: bool,
}

/// The initializer: its entry, its encoded arguments with their handles' descriptors, and
/// the arguments themselves (kept while workers may start, see `Config::init_args`).
#[derive(Debug)]
struct Init {
    entry: i64,
    encoded: Result<target::EncodedArgs, Error>,
    args: Box<dyn Any + Send>,
}

impl PoolBuilder {
    /// Sets environment variable `key` in every worker, as
    /// [`Process::env`](crate::Process::env) does for one child. A name or value the
    /// environment cannot hold makes `build` an `InvalidArgument` error.
    ///
    /// ```
    /// fn read(_: u8) -> Option<String> {
    ///     std::env::var("MODE").ok()
    /// }
    /// let pool = mproc::Pool::builder().processes(1).env("MODE", "fast").build()?;
    /// assert_eq!(pool.apply(read, (0,))?.as_deref(), Some("fast"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn env(mut self, key: impl AsRef<std::ffi::OsStr>, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.setup.env(key.as_ref(), value.as_ref());
        self
    }

    /// Removes environment variable `key` in every worker.
    ///
    /// ```
    /// fn home(_: u8) -> bool {
    ///     std::env::var_os("HOME").is_some()
    /// }
    /// let pool = mproc::Pool::builder().processes(1).env_remove("HOME").build()?;
    /// assert!(!pool.apply(home, (0,))?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn env_remove(mut self, key: impl AsRef<std::ffi::OsStr>) -> Self {
        self.setup.env_remove(key.as_ref());
        self
    }

    /// Clears every worker's environment (the variables set after this call are its only ones).
    ///
    /// ```
    /// fn count(_: u8) -> usize {
    ///     std::env::vars_os().count()
    /// }
    /// let pool = mproc::Pool::builder().processes(1).env_clear().build()?;
    /// assert_eq!(pool.apply(count, (0,))?, 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn env_clear(mut self) -> Self {
        self.setup.env_clear();
        self
    }

    /// Every worker's working directory. One that a worker cannot enter breaks the pool as a
    /// failing initializer does: its calls fail with `InitializerFailed`, naming the
    /// directory.
    ///
    /// ```
    /// fn here(_: u8) -> std::path::PathBuf {
    ///     std::env::current_dir().unwrap()
    /// }
    /// let pool = mproc::Pool::builder().processes(1).current_dir("/").build()?;
    /// assert_eq!(pool.apply(here, (0,))?, std::path::Path::new("/"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn current_dir(mut self, dir: impl AsRef<std::path::Path>) -> Self {
        self.setup.current_dir(dir.as_ref());
        self
    }

    /// Where every worker's stdin comes from (default: the parent's): `Stdio::null()`, or a
    /// file (all workers read from the one file position).
    ///
    /// ```
    /// fn read_all(_: u8) -> String {
    ///     std::io::read_to_string(std::io::stdin()).unwrap()
    /// }
    /// let pool = mproc::Pool::builder().processes(1).stdin(mproc::Stdio::null()).build()?;
    /// assert_eq!(pool.apply(read_all, (0,))?, "");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stdin(mut self, from: impl Into<crate::Stdio>) -> Self {
        self.setup.stdio(0, from.into());
        self
    }

    /// Where every worker's stdout goes (default: the parent's): `Stdio::null()`, or a file
    /// (all workers write to it).
    ///
    /// ```
    /// fn chatty(_: u8) {
    ///     println!("unheard");
    /// }
    /// let pool = mproc::Pool::builder().processes(1).stdout(mproc::Stdio::null()).build()?;
    /// pool.apply(chatty, (0,))?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stdout(mut self, to: impl Into<crate::Stdio>) -> Self {
        self.setup.stdio(1, to.into());
        self
    }

    /// Where every worker's stderr goes (default: the parent's).
    ///
    /// ```
    /// fn noisy(_: u8) {
    ///     eprintln!("unheard");
    /// }
    /// let pool = mproc::Pool::builder().processes(1).stderr(mproc::Stdio::null()).build()?;
    /// pool.apply(noisy, (0,))?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stderr(mut self, to: impl Into<crate::Stdio>) -> Self {
        self.setup.stdio(2, to.into());
        self
    }

    /// How many worker processes (default: [`cpu_count`](crate::cpu_count)).
    ///
    /// ```
    /// let pool = mproc::Pool::builder().processes(3).build()?;
    /// assert_eq!(pool.processes(), 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = Some(n);
        self
    }

    /// How the workers start (default: [`get_start_method`](crate::get_start_method)).
    ///
    /// ```
    /// let pool = mproc::Pool::builder().start_method(mproc::StartMethod::Spawn).processes(1).build()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// A function each worker runs once, with `args`, before its first task.
    ///
    /// The pool keeps `args` for as long as it may start a worker (each new one decodes them
    /// again): a handle among them, a [`Queue`](crate::Queue) say, is held by this process
    /// until then.
    ///
    /// If it panics (or its worker dies during it), the pool is broken: every pending task and
    /// every later submission fails with `InitializerFailed`, which carries the cause. The pool
    /// never starts workers into a failure again and again (Python's Pool does, forever).
    ///
    /// ```
    /// fn fails() {
    ///     panic!("no database");
    /// }
    /// fn work() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::builder().processes(1).initializer(fails, ()).build()?;
    /// let e = pool.apply(work, ()).unwrap_err();
    /// assert!(matches!(e.kind(), mproc::ErrorKind::InitializerFailed(_)));
    /// assert!(e.to_string().contains("no database"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn initializer<F, A>(self, init: F, args: A) -> Self
    where
        F: Target<A, Output = ()>,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = init;
        self.set_init::<F, A>("initializer", args)
    }

    /// A state each worker builds once, by calling `build` with `args` before its first task,
    /// and keeps across its tasks: mpire's `worker_state`, the Rust form of Python's
    /// `initializer` that fills globals. Targets receive it as their first parameter,
    /// `&mut S`, through [`with_state`], with every pool method. A worker
    /// that replaces another (after a crash, a timeout, `max_tasks_per_child`) builds its own.
    ///
    /// `build` runs as an [`initializer`](Self::initializer) does, with the same failure
    /// rules (a panic breaks the pool with `InitializerFailed`); a pool takes one or the
    /// other (both is an `InvalidArgument` error at `build`). A task whose `S` is not the
    /// state's type, or on a pool without one, fails with `Panicked`, saying so.
    ///
    /// ```
    /// use mproc::with_state;
    ///
    /// struct Cache {
    ///     hits: u32,
    /// }
    /// fn empty() -> Cache {
    ///     Cache { hits: 0 }
    /// }
    /// fn hit(cache: &mut Cache, _key: u8) -> u32 {
    ///     cache.hits += 1;
    ///     cache.hits
    /// }
    /// let pool = mproc::Pool::builder().processes(1).worker_state(empty, ()).build()?;
    /// assert_eq!(pool.chunksize(1).map(with_state(hit), [7, 8, 9])?, [1, 2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn worker_state<F, A>(self, build: F, args: A) -> Self
    where
        F: Target<A>,
        F::Output: std::any::Any + Send,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = build;
        self.set_init::<state::BuildState<F>, A>("worker_state", args)
    }

    fn set_init<F, A>(mut self, from: &'static str, args: A) -> Self
    where
        F: Target<A, Output = ()>,
        A: Serialize + DeserializeOwned + Send + 'static,
    {
        self.init_conflict |= self.init_from.is_some_and(|was| was != from);
        self.init_from = Some(from);
        let encoded = target::encode_args::<F, A>(&args);
        self.init = Some(Init {
            entry: task::init_entry::<F, A>(),
            encoded,
            args: Box::new(args),
        });
        self
    }

    /// Replaces a worker after it has run this many tasks (chunks), as Python's
    /// `maxtasksperchild`. Zero is an error at [`build`](Self::build).
    ///
    /// ```
    /// fn pid() -> u32 {
    ///     std::process::id()
    /// }
    /// let pool = mproc::Pool::builder().processes(1).max_tasks_per_child(1).build()?;
    /// assert_ne!(pool.apply(pid, ())?, pool.apply(pid, ())?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_tasks_per_child(mut self, n: usize) -> Self {
        self.max_tasks_per_child = Some(n);
        self
    }

    /// Replaces a worker whose resident memory exceeds `bytes` after a task, as Celery's
    /// `worker_max_memory_per_child`: for tasks that leak. The task's result is kept; the
    /// worker finishes what it was given and leaves, and a new one takes its place (counted
    /// in [`Restarts::over_memory`](crate::Restarts::over_memory)). Zero is an error at
    /// [`build`](Self::build). Resident memory is what the worker holds itself: `RssAnon` in
    /// `/proc/<pid>/status`, so its heap, stacks and other private memory in RAM, but not the
    /// shared memory it maps (a [`Buffer`](crate::Buffer) every worker reads, a large result
    /// its caller has not read yet), nor the file pages it maps (its code, which the page cache
    /// holds once for every process). So memory a task keeps in shared memory it made itself
    /// (a memfd, `/dev/shm`, a file on a tmpfs), and leaked pages the kernel swapped out, do not
    /// count. Leave room above what a fresh worker uses; a worker keeps up to 64 MiB of the
    /// heap its tasks freed for the next ones (so megabyte arguments and results are not
    /// faulted in afresh at every task), and that counts too.
    ///
    /// ```
    /// fn pid() -> u32 {
    ///     std::process::id()
    /// }
    /// // 32 KiB: less than any worker uses (a fresh one, about 150 KiB), so each is replaced
    /// // after its task.
    /// let pool = mproc::Pool::builder().processes(1).max_memory_per_child(32 << 10).build()?;
    /// assert_ne!(pool.apply(pid, ())?, pool.apply(pid, ())?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// A hard limit: a worker whose resident memory (measured as for
    /// [`max_memory_per_child`](Self::max_memory_per_child)) exceeds `bytes` while it runs a
    /// task is killed, and the task fails with
    /// [`ErrorKind::MemoryExceeded`](crate::ErrorKind::MemoryExceeded) (not a generic
    /// `WorkerLost`); a new worker takes its place. The pool looks every 10 ms while a task
    /// runs, so a task that allocates faster than that may overshoot for as long; one that
    /// ends within those 10 ms is not caught (use `max_memory_per_child` as well to replace
    /// its worker afterwards). Zero is an error at [`build`](Self::build).
    ///
    /// ```
    /// fn hog(mib: usize) -> usize {
    ///     let mut kept = Vec::new();
    ///     for _ in 0..mib {
    ///         kept.push(vec![1u8; 1 << 20]);
    ///         std::thread::sleep(std::time::Duration::from_millis(1));
    ///     }
    ///     kept.len()
    /// }
    /// let pool = mproc::Pool::builder()
    ///     .processes(1)
    ///     .memory_limit_per_child(200 << 20)
    ///     .build()?;
    /// let e = pool.apply(hog, (1024,)).unwrap_err();
    /// assert!(matches!(e.kind(), mproc::ErrorKind::MemoryExceeded { .. }));
    /// assert_eq!(pool.apply(hog, (1,))?, 1, "a new worker serves");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn memory_limit_per_child(mut self, bytes: u64) -> Self {
        self.memory_limit_per_child = Some(bytes);
        self
    }

    /// Kills a worker whose task runs longer than `timeout`; the task fails with
    /// `TaskTimedOut` and a new worker takes the worker's place. A chunk of `n` tasks may run
    /// for `n × timeout` (the worker reports per chunk); on failure the whole chunk fails.
    /// The time counts from when the task's worker is ready for it: a new worker's own start
    /// (a new pool's, or a replacement's) does not count.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn sleepy() {
    ///     std::thread::sleep(Duration::from_secs(60));
    /// }
    /// let pool = mproc::Pool::builder().processes(1).task_timeout(Duration::from_millis(100)).build()?;
    /// let e = pool.apply(sleepy, ()).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::TaskTimedOut);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// An initializer given as its entry and encoded arguments (a remote agent's local pool).
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn raw_initializer(mut self, entry: i64, encoded: Vec<u8>) -> Self {
        self.init = Some(Init {
            entry,
            encoded: Ok((encoded, Vec::new())),
            args: Box::new(()),
        });
        self
    }

    /// Starts the workers. With the `Forkserver` start method (the default), `build` starts
    /// the first worker and returns, and the pool's own thread starts the others, a few at a
    /// time, while the first already runs tasks (a fork server's child is the same whenever
    /// it starts): [`Pool::stats`] may list fewer workers than `processes` for a moment. One
    /// of those that cannot start is tried again as the pool goes on, as a replacement would
    /// be. `Fork` and `Spawn` workers take this process's memory, or its environment and
    /// directory, as they are when they start, so `build` starts them all, as Python does.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for zero processes or zero tasks per child, for an environment
    /// variable the environment cannot hold, and for `env`, `current_dir` or a standard
    /// stream on a remote pool; a `Codec` error if the
    /// initializer's arguments could not be encoded; an `Os` error if a worker that `build`
    /// starts could not start.
    ///
    /// ```
    /// assert!(mproc::Pool::builder().processes(0).build().is_err());
    /// ```
    pub fn build(self) -> Result<Pool, Error> {
        if self.processes == Some(0) {
            return Err(Error::invalid("a pool needs at least one process"));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::invalid("max_tasks_per_child must be at least 1"));
        }
        if self.max_memory_per_child == Some(0) || self.memory_limit_per_child == Some(0) {
            return Err(Error::invalid("a worker's memory limit must be more than 0 bytes"));
        }
        if self.init_conflict {
            return Err(Error::invalid(
                "a pool takes an initializer or a worker_state, not both (a worker_state's \
                 build function can do what the initializer did)",
            ));
        }
        self.setup.check()?;
        if !self.setup.is_default() && self.backend.is_some() {
            return Err(Error::invalid(
                "env, current_dir and the standard streams apply to local workers; a remote \
                 pool's workers are its agents', set up where the agents start",
            ));
        }
        let (init, init_fds, init_args) = match self.init {
            Some(Init {
                entry,
                encoded,
                args,
            }) => {
                let (bytes, fds) = encoded?;
                (Some((entry, bytes)), fds, Some(args))
            }
            None => (None, Vec::new(), None),
        };
        let shared = Shared::new()?;
        if let Some(backend) = self.backend {
            let settings = backend::Settings {
                processes: self.processes,
                init,
                init_has_handles: !init_fds.is_empty(),
                max_tasks_per_child: self.max_tasks_per_child,
                max_memory_per_child: self.max_memory_per_child,
                memory_limit_per_child: self.memory_limit_per_child,
                task_timeout: self.task_timeout,
                max_retries: self.max_retries.unwrap_or(0),
            };
            let processes = Arc::new(AtomicUsize::new(self.processes.unwrap_or(1)));
            let thread = backend.start(Arc::clone(&shared), settings, Arc::clone(&processes))?;
            let _ = shared.thread.set(thread.thread().id());
            return Ok(Pool {
                shared,
                dispatcher: thread.thread().id(),
                thread: Mutex::new(Some(thread)),
                processes,
            });
        }
        if self.max_retries.is_some() {
            return Err(Error::invalid(
                "max_retries applies to remote pools (a local worker that dies was most often \
                 killed by its own task, which a re-run would kill again)",
            ));
        }
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        let config = Config {
            processes,
            method: self.method.unwrap_or_else(start::get_start_method),
            init,
            init_fds,
            init_args: init_args.map(std::sync::Mutex::new),
            max_tasks_per_child: self.max_tasks_per_child,
            max_memory_per_child: self.max_memory_per_child,
            memory_limit_per_child: self.memory_limit_per_child,
            task_timeout: self.task_timeout,
            name_prefix: self.name_prefix,
            gated: self.gated,
            setup: self.setup,
        };
        dispatcher::start(Arc::clone(&shared), config)?;
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("mproc-pool".into())
            .spawn(move || dispatcher::run(for_thread))
            .map_err(|e| Error::os("starting the pool's dispatcher thread", e))?;
        let _ = shared.thread.set(thread.thread().id());
        Ok(Pool {
            shared,
            dispatcher: thread.thread().id(),
            thread: Mutex::new(Some(thread)),
            processes: Arc::new(AtomicUsize::new(processes)),
        })
    }
}

impl Pool {
    /// A pool of `processes` workers, started with the default method.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for zero; an `Os` error if a worker could not start (see
    /// [`PoolBuilder::build`]).
    ///
    /// ```
    /// let pool = mproc::Pool::new(2)?;
    /// assert!(mproc::Pool::new(0).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for a pool with more settings.
    ///
    /// ```
    /// let pool = mproc::Pool::builder().processes(2).build()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// How many workers it keeps.
    ///
    /// ```
    /// assert_eq!(mproc::Pool::new(2)?.processes(), 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn processes(&self) -> usize {
        self.processes.load(Ordering::Relaxed).max(1)
    }

    /// The map family with an explicit chunk size: `pool.chunksize(10).map(f, items)`.
    /// Without it, `map` and `starmap` use Python's rule, `ceil(len / (4 * processes))`, and
    /// `imap` uses 1. Zero is an `InvalidArgument` error when used.
    ///
    /// ```
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.chunksize(3).map(inc, 0..7)?, [1, 2, 3, 4, 5, 6, 7]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn chunksize(&self, n: usize) -> Chunked<'_> {
        Chunked::new(&self.shared, self.processes(), Some(n))
    }

    /// The map family with a progress bar on stderr (feature `progress`): items done of all,
    /// rate and ETA, drawn only when stderr is a terminal. The chunk size is Python's default;
    /// `pool.chunksize(n).progress()` chooses it. See [`Chunked::progress`].
    ///
    /// ```
    /// fn inc(n: u32) -> u32 {
    ///     n + 1
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// let v = pool.progress().map(inc, 0..1000)?;
    /// assert_eq!(v.len(), 1000);
    /// let each: Vec<u32> = pool.progress().imap(inc, 0..10)?.collect::<Result<_, _>>()?;
    /// assert_eq!(each.len(), 10);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    #[cfg(feature = "progress")]
    pub fn progress(&self) -> Chunked<'_> {
        self.default_chunks().progress()
    }

    /// What its workers have done so far (mpire's "worker insights"): per worker, its slot,
    /// pid, tasks finished, time busy, waiting for work and starting, and how often its slot
    /// was restarted and why (death, task timeout, `max_tasks_per_child`, cancel); the
    /// tasks that failed, by error kind; the chunks taken back from a worker busy with a slow
    /// task to run elsewhere ([`PoolStats::taken_back`]). Its `Display` is a table. Keeping
    /// these books costs nothing per task (see [`PoolStats`]). A remote pool's are its live agents' (each
    /// worker names its agent), as they wrote them at most 250 ms ago.
    ///
    /// ```
    /// fn boom(n: u32) -> u32 {
    ///     if n == 3 {
    ///         panic!("three");
    ///     }
    ///     n
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// let _ = pool.chunksize(1).map(boom, 0..10);
    /// let stats = pool.stats();
    /// assert_eq!(stats.tasks(), 10);
    /// assert_eq!(stats.errors.get("Panicked"), Some(&1));
    /// eprintln!("{stats}");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// The pool's calls with their own time limit per task, in place of the pool's
    /// `task_timeout` (pebble's `schedule(timeout=)`): `pool.timeout(d).apply(f, args)`,
    /// `pool.timeout(d).map(f, items)` (per item, as `task_timeout`), and every map form. A task
    /// still running after `timeout` has its worker killed and replaced and fails with
    /// `TaskTimedOut`; the pool's other calls keep their own limit. Chain
    /// [`Chunked::chunksize`] for a chunk size.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// let each = pool.timeout(Duration::from_millis(300)).map(nap, [10, 60_000]);
    /// assert_eq!(each.unwrap_err().kind(), &mproc::ErrorKind::TaskTimedOut);
    /// assert_eq!(pool.apply(nap, (400,))?, 400); // the pool itself has no limit
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn timeout(&self, timeout: Duration) -> Chunked<'_> {
        self.default_chunks().timeout(timeout)
    }

    fn default_chunks(&self) -> Chunked<'_> {
        Chunked::new(&self.shared, self.processes(), None)
    }

    /// Runs `f(args)` in a worker and waits for its value.
    ///
    /// The quickest call there is: with a worker idle, the calling thread hands it the task
    /// and reads its answer itself, with no result handle made (about 0.8 of
    /// `apply_async(f, args)?.get()`'s time for a quick task; see BENCHMARKS.md). A worker that
    /// dies meanwhile fails the call with `WorkerLost`, as any call.
    ///
    /// # Errors
    ///
    /// As [`AsyncResult::get`], and `PoolClosed` after [`close`](Self::close).
    ///
    /// ```
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// assert_eq!(pool.apply(add, (2, 3))?, 5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn apply<F, A>(&self, f: F, args: A) -> Result<F::Output, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        self.default_chunks().apply(f, args)
    }

    /// Runs `f(args)` in a worker; the [`AsyncResult`] gives its value later.
    ///
    /// # Errors
    ///
    /// `PoolClosed` after [`close`](Self::close); a `Codec` error if `args` cannot be encoded;
    /// `InitializerFailed` if the pool is broken.
    ///
    /// ```
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(add, (2, 3))?;
    /// assert_eq!(r.get()?, 5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn apply_async<F, A>(&self, f: F, args: A) -> Result<AsyncResult<F::Output>, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
    {
        self.default_chunks().apply_async(f, args)
    }

    /// Applies `f` to every item, in parallel, and returns the values in order.
    ///
    /// # Errors
    ///
    /// The first failing item's error (by position), as [`AsyncResult::get`].
    ///
    /// ```
    /// fn square(n: u64) -> u64 {
    ///     n * n
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.map(square, vec![1, 2, 3])?, [1, 4, 9]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn map<F, T, I>(&self, f: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
    {
        self.default_chunks().map(f, items)
    }

    /// [`map`](Self::map) without waiting.
    ///
    /// ```
    /// fn square(n: u64) -> u64 {
    ///     n * n
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// let r = pool.map_async(square, 0..4)?;
    /// assert_eq!(r.get()?, [0, 1, 4, 9]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn map_async<F, T, I>(&self, f: F, items: I) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
    {
        self.default_chunks().map_async(f, items)
    }

    /// Like [`map`](Self::map), with each item a tuple of arguments.
    ///
    /// ```
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.starmap(add, [(1, 2), (3, 4)])?, [3, 7]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn starmap<F, A, I>(&self, f: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.default_chunks().starmap(f, items)
    }

    /// [`starmap`](Self::starmap) without waiting.
    ///
    /// ```
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.starmap_async(add, [(1, 2)])?.get()?, [3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn starmap_async<F, A, I>(
        &self,
        f: F,
        items: I,
    ) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Target<A>,
        A: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = A>,
    {
        self.default_chunks().starmap_async(f, items)
    }

    /// Applies `f` to each item, yielding results in order as they come; the input is pulled
    /// lazily (an endless iterator works) with a bounded number of chunks in flight.
    ///
    /// ```
    /// fn square(n: u64) -> u64 {
    ///     n * n
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// for (n, sq) in pool.imap(square, 0..5)?.enumerate() {
    ///     assert_eq!(sq?, (n * n) as u64);
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap<'a, F, T, I>(&self, f: F, items: I) -> Result<Imap<'a, F::Output>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'a,
    {
        self.default_chunks().imap(f, items)
    }

    /// Like [`imap`](Self::imap), yielding each result as soon as it is ready.
    ///
    /// ```
    /// fn square(n: u64) -> u64 {
    ///     n * n
    /// }
    /// let pool = mproc::Pool::new(2)?;
    /// let mut all: Vec<u64> = pool.imap_unordered(square, 0..5)?.collect::<Result<_, _>>()?;
    /// all.sort();
    /// assert_eq!(all, [0, 1, 4, 9, 16]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap_unordered<'a, F, T, I>(&self, f: F, items: I) -> Result<Imap<'a, F::Output>, Error>
    where
        F: Target<(T,)>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'a,
    {
        self.default_chunks().imap_unordered(f, items)
    }

    /// No more submissions: later ones fail with `PoolClosed`. Work already submitted goes on.
    ///
    /// ```
    /// fn one() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// pool.close();
    /// assert_eq!(pool.apply(one, ()).unwrap_err().kind(), &mproc::ErrorKind::PoolClosed);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn close(&self) {
        self.shared.close();
    }

    /// After [`close`](Self::close): waits until every submitted task has finished and the
    /// workers have exited.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if the pool was not closed (or terminated) first.
    ///
    /// ```
    /// fn one() -> u8 {
    ///     1
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(one, ())?;
    /// assert!(pool.join().is_err()); // not closed yet
    /// pool.close();
    /// pool.join()?;
    /// assert!(r.ready());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn join(&self) -> Result<(), Error> {
        if !self.shared.is_closed() {
            return Err(Error::invalid("join() needs close() or terminate() first"));
        }
        self.wait_dispatcher();
        Ok(())
    }

    /// Kills the workers now; tasks not finished fail with `Terminated`. Also what dropping the
    /// pool does.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn sleepy() {
    ///     std::thread::sleep(Duration::from_secs(60));
    /// }
    /// let pool = mproc::Pool::new(1)?;
    /// let r = pool.apply_async(sleepy, ())?;
    /// pool.terminate();
    /// assert_eq!(r.get().unwrap_err().kind(), &mproc::ErrorKind::Terminated);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn terminate(&self) {
        self.shared.terminate();
        self.wait_dispatcher();
    }

    /// Waits until the dispatcher has finished. From the dispatcher's own thread (a callback
    /// that calls `terminate` or `join`) it cannot wait for itself: the command stands, and
    /// the pool finishes once the callback returns.
    fn wait_dispatcher(&self) {
        if std::thread::current().id() == self.dispatcher || self.shared.foreign() {
            return;
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        self.shared.wait_finished();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes())
            .field("closed", &self.shared.is_closed())
            .finish()
    }
}
