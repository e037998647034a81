//! What a pool asks of its workers: how many, how they start, and their limits.

use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::start::StartMethod;

/// How workers are made, and the pool's limits on them.
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: StartMethod,
    pub(crate) init: Option<(i64, Vec<u8>)>,
    /// Descriptors of the handles among the initializer's arguments, sent to every worker.
    pub(crate) init_fds: Vec<OwnedFd>,
    /// The initializer's arguments, kept as long as a worker may still be started: every new
    /// worker decodes them again, so the handles among them are still held by this process
    /// (a queue waited on here must not conclude that nobody can put while one worker
    /// replaces another: the next one will hold it).
    #[expect(dead_code, reason = "held, never read")]
    pub(crate) init_args: Option<Box<dyn std::any::Any + Send>>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    /// Put before each worker's name (a remote agent's host), so reports name the host.
    pub(crate) name_prefix: Option<String>,
}
