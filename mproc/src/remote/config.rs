//! [`Remote`]: where a remote pool's Redis is and how to trust it; the builder options that
//! make a pool remote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::auth::Key;
use super::conn::Endpoint;
use crate::error::Error;
use crate::pool::PoolBuilder;
use crate::start::StartMethod;

/// The largest task or result frame by default (SCALEOUT.md).
pub(crate) const DEFAULT_MAX_FRAME: usize = 8 << 20;

/// The heartbeat's time to live by default: a host silent this long is dead.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(1);

/// A Redis server that a [`Pool`](crate::Pool) runs its tasks through, on worker hosts
/// (agents) that run the same build of the program.
///
/// The submitting program gives it to [`PoolBuilder::remote`]; a worker host is the same
/// executable started with `MPROC_REMOTE=<url>` and `MPROC_KEY_FILE=<path>` (it turns into an
/// agent before `main`), or a program that calls [`Remote::serve`]. Both sides need the same
/// key file: every frame is authenticated with it, and it never goes to Redis.
///
/// ```no_run
/// use mproc::{Pool, Remote};
///
/// fn square(n: u64) -> u64 {
///     n * n
/// }
/// let pool = Pool::builder()
///     .remote(Remote::redis("redis://10.0.0.5:6379/0")?.key_file("/etc/myapp/mproc.key"))
///     .max_retries(1)
///     .build()?;
/// assert_eq!(pool.map(square, 0..4)?, [0, 1, 4, 9]);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Remote {
    pub(crate) endpoint: Endpoint,
    key: Option<PathBuf>,
    pub(crate) processes: Option<usize>,
    pub(crate) method: Option<StartMethod>,
    pub(crate) ttl: Duration,
    pub(crate) max_frame: usize,
    /// For [`serve`](Self::serve): how long Redis may stay out of reach (`None`: for ever).
    pub(crate) redial_for: Option<Duration>,
}

impl Remote {
    /// The Redis server at `url`: `redis://[user:password@]host:port/db`, `rediss://…` for
    /// TLS, or `redis+unix:///path/to/redis.sock`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a URL of another scheme.
    ///
    /// ```
    /// assert!(mproc::Remote::redis("redis://127.0.0.1:6379/0").is_ok());
    /// assert!(mproc::Remote::redis("http://example.com").is_err());
    /// ```
    pub fn redis(url: &str) -> Result<Remote, Error> {
        let known = ["redis://", "rediss://", "redis+unix://", "unix://"];
        if !known.iter().any(|s| url.starts_with(s)) {
            return Err(Error::invalid(format!(
                "a Redis URL starts with redis://, rediss:// or redis+unix:// (got {:?})",
                url.split("://").next().unwrap_or(url)
            )));
        }
        Ok(Remote {
            endpoint: Endpoint {
                url: url.to_owned(),
                ca: None,
            },
            key: None,
            processes: None,
            method: None,
            ttl: DEFAULT_TTL,
            max_frame: DEFAULT_MAX_FRAME,
            redial_for: None,
        })
    }

    /// The file holding the shared secret (at least 16 bytes, readable by its owner only;
    /// for example `head -c 32 /dev/urandom > mproc.key && chmod 600 mproc.key`). Required:
    /// without it a remote pool or agent refuses to start.
    ///
    /// ```
    /// let remote = mproc::Remote::redis("redis://127.0.0.1/")?.key_file("/etc/myapp/mproc.key");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn key_file(mut self, path: impl AsRef<Path>) -> Remote {
        self.key = Some(path.as_ref().to_owned());
        self
    }

    /// A PEM file of the certificate authority that signed the server's certificate, for
    /// `rediss://` (default: the system's trusted roots).
    ///
    /// ```
    /// let remote = mproc::Remote::redis("rediss://redis.internal:6380/0")?.ca_file("/etc/myapp/ca.pem");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Remote {
        self.endpoint.ca = Some(path.as_ref().to_owned());
        self
    }

    /// For [`serve`](Self::serve): how many local worker processes this agent runs (default:
    /// [`cpu_count`](crate::cpu_count); `MPROC_PROCESSES` for an agent started by the
    /// environment).
    ///
    /// ```
    /// let remote = mproc::Remote::redis("redis://127.0.0.1/")?.processes(8);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn processes(mut self, n: usize) -> Remote {
        self.processes = Some(n);
        self
    }

    /// For [`serve`](Self::serve): how this agent's local workers start (default:
    /// [`get_start_method`](crate::get_start_method); `MPROC_START_METHOD=fork|spawn|forkserver`
    /// for an agent started by the environment).
    ///
    /// ```
    /// let remote = mproc::Remote::redis("redis://127.0.0.1/")?.start_method(mproc::StartMethod::Spawn);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> Remote {
        self.method = Some(method);
        self
    }

    /// How long a silent agent lives before it counts as dead and its running tasks fail (or
    /// re-run). Default 1 s; an agent refreshes it four times per period from a thread and a
    /// connection of its own, so a busy task does not starve it. Agents and submitters of one
    /// deployment should agree (each agent sets its own). A submitting program silent for four
    /// of them, 1 s at least (killed, or stopped), loses its pool: Redis drops it, and agents
    /// stop its tasks.
    ///
    /// ```
    /// use std::time::Duration;
    /// let remote = mproc::Remote::redis("redis://127.0.0.1/")?.heartbeat_ttl(Duration::from_secs(3));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn heartbeat_ttl(mut self, ttl: Duration) -> Remote {
        self.ttl = ttl.max(Duration::from_millis(100));
        self
    }

    /// For [`serve`](Self::serve): how long this agent keeps dialling Redis again once it is
    /// lost (its connections dropped, the server down or restarting), or while it is not there
    /// yet at the agent's start (not started, loading its data), before it gives up and
    /// `serve` returns a `Broker` error (an agent started by the environment then exits with
    /// status 1). Default `None`: for ever, as a worker daemon should (Celery's workers keep
    /// retrying their broker too); `MPROC_REDIAL_MS=<ms>` for an agent started by the
    /// environment. `Some(Duration::ZERO)` gives up at the first failure, for a supervisor that
    /// restarts it instead.
    ///
    /// While Redis is away the agent keeps its local workers and the tasks they run, and dials
    /// again after 0, 50, 100, 200 ms, ... then every second. Once Redis answers again it
    /// serves on: the answers of the tasks it ran meanwhile are recorded if their pool still
    /// exists (once each, as always) and dropped if it does not (a restart without persistence
    /// loses every pool, and their callers get a `Broker` error); if Redis forgot the agent (a
    /// restart, or an outage longer than its heartbeat TTL), it registers again under a new
    /// name, and serves the pools made from then on.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// // Give up after a minute without Redis (a supervisor restarts the agent).
    /// mproc::Remote::redis("redis://10.0.0.5:6379/0")?
    ///     .key_file("/etc/myapp/mproc.key")
    ///     .redial_for(Some(Duration::from_secs(60)))
    ///     .serve()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn redial_for(mut self, limit: Option<Duration>) -> Remote {
        self.redial_for = limit;
        self
    }

    /// The largest task or result frame, in bytes (default 8 MiB): a task whose arguments
    /// encode larger fails with `InvalidArgument` before it is sent; a larger result fails
    /// its task. For big data, share it another way and send its name. A pool keeps the
    /// frames of its tasks in flight until they are answered (64 MiB of them at most, and
    /// one more), so that those Redis loses can be sent again.
    ///
    /// ```
    /// let remote = mproc::Remote::redis("redis://127.0.0.1/")?.max_frame(32 << 20);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_frame(mut self, bytes: usize) -> Remote {
        self.max_frame = bytes.max(1024);
        self
    }

    /// The key, read now.
    pub(crate) fn load_key(&self) -> Result<Key, Error> {
        match &self.key {
            Some(path) => Key::from_file(path),
            None => Err(Error::invalid(
                "a remote pool needs a key: Remote::key_file(path) (or MPROC_KEY_FILE for an \
                 agent); every frame is authenticated with it, so remote mode never runs \
                 without one",
            )),
        }
    }
}

impl PoolBuilder {
    /// Runs the pool's tasks on agents through a Redis server instead of local workers: see
    /// [`Remote`]. Every method of the pool keeps its meaning; handles (queues, locks, shared
    /// memory) cannot cross hosts and are refused with `InvalidArgument`. `processes(n)` then
    /// bounds the chunks in flight across all agents (default: the total of the workers the
    /// agents announce), and the default chunk size follows Python's rule with that number.
    ///
    /// ```no_run
    /// let pool = mproc::Pool::builder()
    ///     .remote(mproc::Remote::redis("redis://127.0.0.1/")?.key_file("mproc.key"))
    ///     .build()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn remote(mut self, remote: Remote) -> PoolBuilder {
        self.backend = Some(Box::new(remote));
        self
    }

    /// For a remote pool: how many times a task whose host died while running it is run
    /// again (default 0: it fails with `WorkerLost`). A task that fails this many re-runs
    /// fails with `WorkerLost` (its report counts the attempts) and a copy goes to the
    /// dead-letter stream. Tasks a dead host held but had not started are re-queued and
    /// never counted. A local pool refuses it at `build`.
    ///
    /// ```no_run
    /// let pool = mproc::Pool::builder()
    ///     .remote(mproc::Remote::redis("redis://127.0.0.1/")?.key_file("mproc.key"))
    ///     .max_retries(2)
    ///     .build()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_retries(mut self, n: u32) -> PoolBuilder {
        self.max_retries = Some(n);
        self
    }
}
