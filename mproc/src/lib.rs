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

/// Each item it wraps exists on Linux only (see the `compile_error!` above).
macro_rules! linux_only {
    ($($item:item)*) => { $( #[cfg(target_os = "linux")] $item )* };
}

linux_only! {
    mod channel;
    #[cfg(doctest)]
    mod compile_fail;
    mod connection;
    mod current;
    mod error;
    mod handle;
    mod panics;
    mod pool;
    mod process;
    mod queue;
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
    pub use connection::{Connection, pipe};
    pub use error::{CodecReport, Error, ErrorKind, LostReport, OsReport, PanicReport, Result};
    pub use pool::{
        AsCompleted, AsCompletedTimeout, AsyncResult, Chunked, Imap, Pool, PoolBuilder, PoolStats,
        Progress, Restarts, Return, WorkerStats,
        as_completed, as_completed_timeout, wait,
    };
    pub use process::{CurrentProcess, Process, cpu_count, current_process};
    pub use queue::{JoinableQueue, Queue, SimpleQueue};
    #[cfg(feature = "remote")]
    pub use remote::Remote;
    pub use shared::{Array, ArrayGuard, Value, ValueGuard};
    pub use shared_memory::SharedMemory;
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
    }
}
