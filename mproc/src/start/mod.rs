//! How a child process comes to exist: the three start methods, the worker's entry before
//! `main`, and the handle the parent keeps on each child.
//!
//! - [`bootstrap`]: the constructor that intercepts a worker before `main`, told what to become
//!   by its [`marker`];
//! - [`worker`]: what a child does: read its [`Start`](crate::wire::message::Start), run the
//!   target, send the outcome, exit;
//! - [`fork`], [`spawn`], [`forkserver`]: the start methods;
//! - [`child`]: the parent's handle on a started child (waiting, reaping, signalling);
//! - [`alive`]: the pipe whose hang-up tells children their parent has died;
//! - [`role`]: how a role of a module above this one (a pool worker, the shared-memory keeper)
//!   is entered, through an entry pointer, so this layer never names those modules;
//! - [`at_fork`]: the hooks those modules register to hold their locks across a `Fork` start,
//!   and the crate's lock order.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::Error;

pub(crate) mod alive;
pub(crate) mod at_fork;
pub(crate) mod bootstrap;
pub(crate) mod child;
pub(crate) mod children;
pub(crate) mod fork;
pub(crate) mod forkserver;
pub(crate) mod marker;
pub(crate) mod role;
pub(crate) mod setup;
pub(crate) mod spawn;
pub(crate) mod worker;

pub(crate) use child::Child;

/// How a child process is created, as in Python's `multiprocessing`.
///
/// ```
/// use mproc::{Process, StartMethod};
///
/// fn hello() -> String {
///     format!("hello from {}", mproc::current_process().name())
/// }
/// for method in StartMethod::ALL {
///     let mut p = Process::new(hello, ()).start_method(method);
///     p.start()?;
///     println!("{method}: {}", p.join()?);
/// }
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Platform-specific behavior
///
/// mproc runs on Linux; the default there is [`StartMethod::Forkserver`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum StartMethod {
    /// `fork()` the calling process; the child runs the target in a copy of the parent.
    ///
    /// Fast, and the child sees the parent's memory as it was at the fork. Unsafe to combine
    /// with threads in the parent: only the forking thread exists in the child, so a lock
    /// another thread held at that moment (inside `malloc`, `println!`, a `Mutex` of yours)
    /// stays locked forever there. Use it only from single-threaded programs, or when you know
    /// what every other thread may hold. The child keeps the parent's own open files, as in
    /// Python, but mproc's descriptors that belong to other children are closed in it.
    Fork,
    /// Start a fresh copy of the current executable (`/proc/self/exe`), which runs the target
    /// before `main`. The child sees none of the parent's statics, threads or open files except
    /// the handles passed to it. The slowest method, and the most isolated.
    Spawn,
    /// Ask a fork server to fork a child. The server is a fresh, single-threaded copy of the
    /// executable started (with `Spawn`) the first time it is needed; its children are as
    /// clean as spawned ones and start nearly as fast as forked ones. The default.
    ///
    /// Children live as long as the process that started them wants, whatever happens to the
    /// server: if it is killed (by hand, or by the out-of-memory killer), running children
    /// carry on and are joined as usual, and the next start replaces the server.
    ///
    /// The server keeps one child forked ahead of the next start (a start then costs a
    /// message, not a fork): one extra idle process while the server runs. Left unasked for a
    /// millisecond, if a CPU is free then (or at one of a few later looks), it maps in the code
    /// that the page cache holds of the program and its libraries, of the files it owns or
    /// could write (all of them, as root), so the child it becomes does not fault it in; those
    /// pages count in its `VmRSS`, not in the `RssAnon` that a pool's memory caps read.
    Forkserver,
}

impl StartMethod {
    /// All three, in the order Python lists them.
    ///
    /// ```
    /// assert_eq!(mproc::StartMethod::ALL.len(), 3);
    /// ```
    pub const ALL: [StartMethod; 3] = [
        StartMethod::Fork,
        StartMethod::Spawn,
        StartMethod::Forkserver,
    ];

    /// Python's name for it: `"fork"`, `"spawn"` or `"forkserver"`.
    ///
    /// ```
    /// assert_eq!(mproc::StartMethod::Spawn.name(), "spawn");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Fork => "fork",
            StartMethod::Spawn => "spawn",
            StartMethod::Forkserver => "forkserver",
        }
    }

    fn from_u8(v: u8) -> StartMethod {
        match v {
            0 => StartMethod::Fork,
            1 => StartMethod::Spawn,
            _ => StartMethod::Forkserver,
        }
    }
}

impl fmt::Display for StartMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(StartMethod::Forkserver as u8);

/// Sets the start method that new processes use unless they choose their own.
///
/// ```
/// use mproc::StartMethod;
///
/// mproc::set_start_method(StartMethod::Spawn);
/// assert_eq!(mproc::get_start_method(), StartMethod::Spawn);
/// mproc::set_start_method(StartMethod::Forkserver);
/// ```
pub fn set_start_method(method: StartMethod) {
    DEFAULT_METHOD.store(method as u8, Ordering::Relaxed);
}

/// The start method new processes use unless they choose their own.
///
/// ```
/// println!("processes start with {}", mproc::get_start_method());
/// ```
pub fn get_start_method() -> StartMethod {
    StartMethod::from_u8(DEFAULT_METHOD.load(Ordering::Relaxed))
}

/// How long a child, or the fork server, may take to read its start message or answer a
/// request before it is considered broken (and killed). Generous: it bounds a hang, it is not a
/// performance target.
pub(crate) const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Starts a child with `method` and hands it `start`, an encoded
/// [`Start`](crate::wire::message::Start) (each method sends it as early as it can, so the
/// child finds it waiting).
pub(crate) fn launch(
    method: StartMethod,
    start: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<Child, Error> {
    match method {
        StartMethod::Fork => fork::launch(start, fds),
        StartMethod::Spawn => spawn::launch(start, fds),
        StartMethod::Forkserver => forkserver::launch(start, fds),
    }
}

/// A child being started: [`begin`] it, then [`finish`](Launching::finish) it, to start
/// several at once.
pub(crate) enum Launching {
    /// Started already (`fork` and `spawn` have nothing to wait for).
    Started(Child),
    /// Asked of the fork server (not yet announced), or started in the spare it lent.
    Asked(forkserver::Requested),
}

/// As [`launch`], without waiting for the fork server's child to announce itself: starting
/// several children, a caller begins them all before it finishes the first, so the server
/// forks one while the others start.
pub(crate) fn begin(
    method: StartMethod,
    start: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> Result<Launching, Error> {
    match method {
        StartMethod::Forkserver => forkserver::request(start, fds).map(Launching::Asked),
        _ => launch(method, start, fds).map(Launching::Started),
    }
}

impl Launching {
    /// The child's control socket: what is sent on it now comes after its start message;
    /// `None` if that could not be sent (`finish` then says why).
    pub(crate) fn channel(&self) -> Option<&crate::channel::Channel> {
        match self {
            Launching::Started(child) => Some(child.channel_ref()),
            Launching::Asked(requested) => requested.channel(),
        }
    }

    /// The child, once started; `start` and `fds` are what [`begin`] was given (a fork server
    /// found dead is replaced and asked again, once: `true` with the child then, as what was
    /// sent on [`channel`](Launching::channel) went to no child).
    pub(crate) fn finish(
        self,
        start: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(Child, bool), Error> {
        match self {
            Launching::Started(child) => Ok((child, false)),
            Launching::Asked(requested) => requested.finish(start, fds),
        }
    }
}

/// A pidfd for our new child `pid`, listed as internal. If none can be had, the child is
/// killed and reaped at once (it cannot be watched, so it must not run unwatched or linger as
/// a zombie).
pub(crate) fn pidfd_for_our_child(pid: u32) -> Result<crate::sys::fd::InternalFd, Error> {
    use crate::sys::{fd, proc};
    match fd::create_internal(|| Ok([proc::pidfd_open(pid)?])) {
        Ok([pidfd]) => Ok(pidfd),
        Err(e) => {
            let _ = proc::kill(pid, libc::SIGKILL);
            let _ = proc::reap_blocking(pid);
            Err(Error::os("opening a pidfd for a new child", e))
        }
    }
}

/// A connected socket pair, both ends listed as internal from birth.
pub(crate) fn socket_pair() -> Result<[crate::sys::fd::InternalFd; 2], Error> {
    crate::sys::socket::internal_socketpair().map_err(|e| Error::os("creating a socket pair", e))
}
