//! Python's `multiprocessing`, in Rust: run functions in separate OS processes, with Python's
//! vocabulary and Rust's types.
//!
//! ```
//! use mproc::{Process, current_process};
//!
//! fn squarer(n: u64) -> u64 {
//!     println!("{n} squared to {} by: {}", n * n, current_process().name());
//!     n * n
//! }
//!
//! let mut procs: Vec<_> = [2, 3, 4].into_iter().map(|n| Process::new(squarer, (n,))).collect();
//! for p in &mut procs {
//!     p.start()?;
//! }
//! let squares: Vec<u64> = procs.iter_mut().map(|p| p.join()).collect::<Result<_, _>>()?;
//! assert_eq!(squares, [4, 9, 16]);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! **Linux only.** Arguments and return values cross between processes through serde: your own
//! types need `#[derive(Serialize, Deserialize)]` (`cargo add serde --features derive`). Coming
//! from Python, read the porting guide (`docs/from-python.md` in the repository) and the
//! README's Python → mproc table.
//!
//! # The map
//!
//! | you want | use |
//! | --- | --- |
//! | run one function in a child process, get its value back | [`Process`]: `new(f, args)`, `start`, `join` (a panic or a death is an `Err`), `terminate`, `kill` |
//! | a pool of worker processes | [`Pool`] (`new(n)`, or [`Pool::builder`] for initializer, `task_timeout`, `max_tasks_per_child`, start method) |
//! | one call on the pool, now or later | [`Pool::apply`], [`Pool::apply_async`] → [`AsyncResult`] (`get`, `get_timeout`, `ready`, `wait`, `successful`, `cancel`, `on_complete`, a `Future`, `progress`) |
//! | many calls | [`Pool::map`], `starmap`, `imap` ([`Imap`], lazy and bounded), `imap_unordered`, their `_async` forms; [`Pool::chunksize`] → [`Chunked`] |
//! | results as they finish | [`as_completed`], [`as_completed_timeout`], [`wait`] with [`Return`] |
//! | what the workers did | [`Pool::stats`] → [`PoolStats`] |
//! | a progress bar | `Pool::progress` (feature `progress`) |
//! | logs of processes, tasks and workers | feature `tracing`: events on targets `mproc::process` and `mproc::pool`; a child's own events come back on `mproc::child` |
//! | workers on other machines | `Pool::builder().remote(Remote::redis(url)?...)` (feature `remote`) |
//! | messages between processes | [`Queue`], [`JoinableQueue`], [`SimpleQueue`], [`pipe`] → [`Connection`] |
//! | shared state | [`Value`], [`Array`] (any [`Pod`] type, with a lock), [`Buffer`] (read-only, passed without a copy), [`SharedMemory`], [`Manager`]'s [`Dict`] and [`List`] (any serde type) |
//! | synchronisation | [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`], [`Barrier`] |
//! | how children start | [`StartMethod`], [`set_start_method`], [`get_start_method`]; [`current_process`], [`cpu_count`] |
//! | what went wrong | [`Error`] and its [`ErrorKind`] ([`PanicReport`], [`LostReport`], ...) |
//! | a state per worker (a model, a connection) | [`PoolBuilder::worker_state`] and [`with_state`] |
//! | workers that leak or balloon | [`PoolBuilder::max_memory_per_child`], [`PoolBuilder::memory_limit_per_child`] |
//! | Ctrl-C and SIGTERM | workers are the pool's: with no handler the program ends at once, with one (`ctrlc`) the pool works on (`examples/ctrl_c.rs`) |
//!
//! # Python → mproc
//!
//! | Python | mproc |
//! | --- | --- |
//! | `p = Process(target=f, args=(x,)); p.start(); p.join()` | `let mut p = Process::new(f, (x,)); p.start()?; let value = p.join()?;` (the return value comes back) |
//! | `p.daemon = True`, `p.terminate()`, `p.exitcode` | `.daemon(true)`, `p.terminate()?`, `p.exitcode()` |
//! | `with Pool(4) as pool:` | `let pool = Pool::new(4)?;` (dropped: terminated) |
//! | `pool.map(f, xs)`, `pool.starmap(f, pairs)`, `pool.imap(f, xs, chunksize=8)` | `pool.map(f, xs)?`, `pool.starmap(f, pairs)?`, `pool.chunksize(8).imap(f, xs)?` |
//! | `r = pool.apply_async(f, (x,)); r.get(timeout=1)` | `let r = pool.apply_async(f, (x,))?; r.get_timeout(Duration::from_secs(1))?` |
//! | `Pool(initializer=f, initargs=(a,), maxtasksperchild=100)` | `Pool::builder().initializer(f, (a,)).max_tasks_per_child(100).build()?` |
//! | `concurrent.futures.as_completed(fs)`, `wait(fs, return_when=FIRST_COMPLETED)` | [`as_completed`]`(&results)`, [`wait`]`(&results, Return::FirstCompleted, None)` |
//! | `Queue()`, `q.put(x)`, `q.get(timeout=1)` | `Queue::new()?`, `q.put(x)?`, `q.get_timeout(Duration::from_secs(1))?` |
//! | `a, b = Pipe()` | `let (a, b) = mproc::pipe::<T>()?;` |
//! | `Lock()`, `with lock:` | `Lock::new()?`, `let _guard = lock.acquire()?;` |
//! | `Value('i', 0)`, `Array('d', 10)` | `Value::new(0i32)?`, `Array::<f64>::new(10)?` |
//! | `Manager().dict()`, `.list()` | `Manager::new()?.dict::<K, V>()?`, `.list::<T>()?` |
//! | `set_start_method('spawn')` | `mproc::set_start_method(StartMethod::Spawn)` |
//! | `if __name__ == "__main__":` | not needed: workers never run `main` |
//!
//! Handles ([`Queue`], [`Lock`], [`Value`], [`SharedMemory`], ...) travel as arguments of a
//! [`Process`] or a pool task, as in Python, under every start method; each is released when its
//! last holder, in any process, lets it go.
//!
//! # How workers start
//!
//! No call is needed in `main`. A constructor in the ELF `.init_array` section runs before
//! `main` in every executable that links mproc; in a process that mproc started as a worker
//! (marked by the `MPROC_WORKER` environment variable) it runs the target and exits, so code in
//! your `main` never runs twice. This works the same in binaries, examples and test harnesses.
//!
//! # Start methods
//!
//! [`StartMethod::Forkserver`] (the default), [`StartMethod::Spawn`] and
//! [`StartMethod::Fork`], as in Python; see [`StartMethod`] for what each child may touch.
//!
//! # Targets
//!
//! A target is a `fn` item or a closure that captures nothing, with 0 to 6 serde-serializable
//! arguments passed as a tuple, exactly as Python's `args`: `(n,)`, `()`, `(a, b)`. It crosses
//! into the child as an offset inside the executable, checked against the build's identity.
//!
//! A closure that captures a variable is refused, but only when the program is *built*
//! (`cargo build`, `run` or `test`): `cargo check` and rust-analyzer accept it. Rust has no trait
//! bound for "captures nothing", so the check is a constant evaluated when code is generated;
//! its error reads "an mproc target must be a plain `fn` item or a closure that captures
//! nothing" and names the closure's file and line. Pass what it would capture as an argument.
//!
//! # Sending data
//!
//! Arguments, results, queue items and pipe messages are serde values, in mproc's own binary
//! format. A `Vec`, slice or `Box<[T]>` of primitive numbers (`u8` to `u128`, `i8` to `i128`,
//! `f32`, `f64`) is copied whole, as a `String` is: plain `Vec<u8>` needs no `serde_bytes`, in a
//! struct field or alone. A value over 64 KiB encoded crosses a [`Queue`] in its shared ring and
//! a [`Connection`] in a memory file, each byte copied twice (in and out); on the bench machine a
//! 10 MiB `Vec<u8>` or `Vec<f64>` moves at 12–14 GB/s either way (BENCHMARKS.md). Sequences
//! of anything else (`Vec<bool>`, `Vec<char>`, structs, maps, `VecDeque`) go element by
//! element. A pool task's arguments and result travel on the worker's socket, or past 256 KiB
//! in a memory file each side reads in place: 4–5 GB/s there and back for a 10 MiB
//! `Vec<f64>`. Such a large result stays in shared memory until its [`AsyncResult`] is dropped
//! (a fork child cannot read it: an error). When many tasks read the same data, use a
//! [`Buffer`]: it travels by handle, so no task copies it, whatever its size.
//!
//! ```
//! let (a, b) = mproc::pipe::<Vec<f64>>()?;
//! let big: Vec<f64> = (0..1_000_000).map(f64::from).collect();
//! a.send(&big)?; // one copy into a memory file, one out
//! assert_eq!(b.recv()?, big);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Errors
//!
//! Every fallible call returns [`Result`]. `fn main() -> mproc::Result<()>` prints a failure
//! as `Error: Kind: sentence` (`Error: WorkerLost: process ... was killed by signal 9 ...`).
//!
//! # Platform-specific behavior
//!
//! Linux only (it relies on pidfds, `close_range` and `signalfd`).

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
// `unsafe` is fenced into `sys/` (and the one `.init_array` attribute of `start/bootstrap.rs`);
// each of those files opts in by itself.
#![deny(unsafe_code)]

// One clear error on other systems, and none after it: everything below names the OS layer
// and is left out there.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "mproc supports Linux only: it is built on pidfds, memfd seals, futexes, signalfd and \
     close_range"
);

/// A `tracing` event (`tracing::event!`'s arguments) under the `tracing` feature; nothing
/// without it.
macro_rules! event {
    ($($arg:tt)*) => {{
        #[cfg(feature = "tracing")]
        {
            ::tracing::event!($($arg)*);
        }
    }};
}

/// Each item it wraps exists on Linux only (see the `compile_error!` above).
macro_rules! linux_only {
    ($($item:item)*) => { $( #[cfg(target_os = "linux")] $item )* };
}

linux_only! {
    mod buffer;
    mod channel;
    #[cfg(doctest)]
    mod compile_fail;
    mod connection;
    mod current;
    mod error;
    mod handle;
    mod manager;
    mod memfile;
    mod panics;
    mod pool;
    mod process;
    mod queue;
    #[cfg(feature = "tracing")]
    mod relay;
    #[cfg(not(feature = "tracing"))]
    #[path = "relay_off.rs"]
    mod relay;
    #[cfg(feature = "remote")]
    mod remote;
    mod shared;
    mod shared_memory;
    mod start;
    mod sync;
    mod sys;
    mod wire;

    /// Plain old data (bytemuck's): what [`Value`] and [`Array`] may hold.
    pub use bytemuck::Pod;
    pub use buffer::Buffer;
    pub use connection::{Connection, pipe};
    pub use error::{CodecReport, Error, ErrorKind, LostReport, OsReport, PanicReport, Result};
    pub use pool::{
        AsCompleted, AsCompletedTimeout, AsyncResult, Chunked, Imap, Pool, PoolBuilder, PoolStats,
        Progress, Restarts, Return, WithState, WorkerStats,
        as_completed, as_completed_timeout, wait, with_state,
    };
    pub use manager::{Dict, List, Manager};
    pub use process::{CurrentProcess, Process, cpu_count, current_process};
    pub use queue::{JoinableQueue, Queue, SimpleQueue};
    #[cfg(feature = "remote")]
    pub use remote::Remote;
    pub use shared::{Array, ArrayGuard, Value, ValueGuard};
    pub use shared_memory::SharedMemory;
    pub use start::setup::Stdio;
    pub use start::{StartMethod, get_start_method, set_start_method};
    pub use sync::{
        Barrier, BoundedSemaphore, Condition, Event, Lock, LockGuard, RLock, RLockGuard, Semaphore,
        WaitTimeoutResult,
    };
    pub use wire::target::Target;

    /// Entry points for the fuzz targets in `fuzz/`; not part of the API.
    #[doc(hidden)]
    pub mod __fuzz {
        /// Drives both sides of a pool lane (shared-memory rings) with `data`, with a peer's
        /// arbitrary writes into the shared header and rings between calls. Must never panic,
        /// fault or hang, whatever the bytes.
        pub fn lane(data: &[u8]) {
            crate::pool::lane::fuzz(data)
        }

        /// Drives a queue's shared-memory ring with `data`: puts, gets, growth and the other calls,
        /// with a peer's arbitrary writes into the header and ring between them. Must never panic,
        /// fault or hang, whatever the bytes.
        pub fn ring(data: &[u8]) {
            crate::queue::ring::fuzz(data)
        }

        /// Feeds `data` to the frame decoder in pieces and decodes every frame as each message
        /// type a peer may send. Must never panic, whatever the bytes.
        pub fn wire(data: &[u8]) {
            crate::wire::fuzz(data)
        }

        /// Parses `data` as everything the shared-memory keeper reads from others: a request from
        /// a process, a record left by another keeper (its bytes and its file name), and inotify
        /// events. Must never panic, and whatever parses must encode back to `data`.
        pub fn keeper(data: &[u8]) {
            crate::shared_memory::server::fuzz(data)
        }

        /// Parses `data` as a Redis reply the way a remote pool's connections read them: never
        /// a panic; a value parses the same from its own bytes, none of their parts reads as
        /// a whole reply, and it is the value the `redis` crate's parser makes of them.
        #[cfg(feature = "remote")]
        pub fn resp(data: &[u8]) {
            crate::remote::resp::fuzz(data)
        }
    }
}
