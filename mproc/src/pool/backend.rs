//! Where a pool's tasks run when not in local worker processes: the seam through which a
//! remote backend (the `remote` feature's Redis pool) takes the place of the dispatcher.
//!
//! The API side is the same for every kind ([`Shared`]'s inbox of commands, the jobs, the
//! handles); a backend is the thread that takes those commands and answers every chunk, as
//! the dispatcher does for local workers.

#![cfg_attr(not(feature = "remote"), allow(dead_code))]

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::thread::JoinHandle;
use std::time::Duration;

use super::dispatcher::Shared;
use crate::error::Error;

/// What the builder was told, for a backend to honour.
#[derive(Debug)]
pub(crate) struct Settings {
    /// `processes(n)` if given.
    pub(crate) processes: Option<usize>,
    /// The initializer's entry and encoded arguments.
    pub(crate) init: Option<(i64, Vec<u8>)>,
    /// Whether the initializer's arguments hold handles (which cannot leave this host).
    pub(crate) init_has_handles: bool,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) memory_limit_per_child: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_retries: u32,
}

/// A kind of pool that is not a set of local worker processes.
pub(crate) trait Backend: Send + std::fmt::Debug {
    /// Starts serving `shared`'s commands; returns the thread that does (it ends, having
    /// answered every chunk, when the pool is closed and done or terminated). `processes`
    /// holds the pool's size as the backend knows it (it may change it later).
    fn start(
        self: Box<Self>,
        shared: Arc<Shared>,
        settings: Settings,
        processes: Arc<AtomicUsize>,
    ) -> Result<JoinHandle<()>, Error>;
}
