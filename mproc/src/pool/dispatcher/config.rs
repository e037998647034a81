//! What a pool asks of its workers: how many, how they start, and their limits.

use std::time::Duration;

use crate::start::StartMethod;
use crate::sys::fd::InternalFd;

/// How workers are made, and the pool's limits on them.
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: StartMethod,
    pub(crate) init: Option<(i64, Vec<u8>)>,
    /// Descriptors of the handles among the initializer's arguments, sent to every worker.
    pub(crate) init_fds: Vec<InternalFd>,
    /// The initializer's arguments, kept as long as a worker may still be started: every new
    /// worker decodes them again, so the handles among them are still held by this process
    /// (a queue waited on here must not conclude that nobody can put while one worker
    /// replaces another: the next one will hold it).
    /// In a mutex only so the configuration can be shared with the thread that starts workers.
    #[expect(dead_code, reason = "held, never read")]
    pub(crate) init_args: Option<std::sync::Mutex<Box<dyn std::any::Any + Send>>>,
    pub(crate) max_tasks_per_child: Option<usize>,
    /// Resident bytes past which a worker is retired after a task.
    pub(crate) max_memory_per_child: Option<u64>,
    /// Resident bytes past which a worker is killed while it runs a task.
    pub(crate) memory_limit_per_child: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    /// Put before each worker's name (a remote agent's host), so reports name the host.
    pub(crate) name_prefix: Option<String>,
    /// A remote agent's pool: see [`Gated`].
    pub(crate) gated: Option<Gated>,
    /// The workers' environment, working directory and standard streams.
    pub(crate) setup: crate::start::setup::Setup,
}

impl Config {
    /// Whether a new worker takes chunks at once, before it says `Ready`: when it has no
    /// initializer that could fail (and so break the pool with the chunks it held), and it
    /// is not a remote agent's (whose chunks are marked running in Redis when handed over).
    /// A pool's first task then waits in the lane of a worker still starting, instead of for
    /// its `Ready` to be read and a wake-up.
    pub(crate) fn at_once(&self) -> bool {
        self.init.is_none() && self.gated.is_none()
    }

    /// The resident memory past which a worker is retired after a task: the lower of
    /// `max_memory_per_child` and `memory_limit_per_child` (past the hard limit, the next task
    /// would otherwise pay for what this one left behind).
    pub(crate) fn memory_cap(&self) -> Option<u64> {
        match (self.max_memory_per_child, self.memory_limit_per_child) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What a remote agent's local pool does differently: each worker holds one chunk at a time
/// (nothing waits behind the running one, so the agent can tell exactly which of its entries
/// run); each chunk's `on_start` is asked when a worker is picked for it (it may also say
/// `Later`: the agent's workers are all busy in its other pools), then `flush` once
/// for all those picked together, before any of them reaches a lane (the agent marks them
/// running in Redis); `flush` runs again at the end of each of the dispatcher's turns (the
/// agent sends the answers it gathered). `flush` returning `false` (Redis is gone) drops the
/// chunks picked, unrun.
#[derive(Clone)]
pub(crate) struct Gated {
    pub(crate) flush: std::sync::Arc<dyn Fn() -> bool + Send + Sync>,
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gated")
    }
}
