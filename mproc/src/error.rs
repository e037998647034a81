//! The crate's one error type.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// `Result<T, mproc::Error>`.
///
/// ```
/// fn run() -> mproc::Result<u32> {
///     Ok(7)
/// }
/// assert_eq!(run().unwrap(), 7);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mproc: what happened ([`Error::kind`]) and a sentence a
/// person can act on (`Display`).
///
/// It is `Clone`, so a stored outcome can be handed out again, and it converts into
/// [`std::io::Error`] for callers that speak `io`.
///
/// ```
/// use mproc::{Error, ErrorKind};
///
/// let e = Error::from(ErrorKind::Timeout);
/// assert_eq!(e.kind(), &ErrorKind::Timeout);
/// let io: std::io::Error = e.into();
/// assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error(Box<ErrorKind>);

/// What went wrong; match on it. New kinds may be added.
///
/// ```
/// use mproc::{Error, ErrorKind};
///
/// let e = Error::from(ErrorKind::Timeout);
/// match e.kind() {
///     ErrorKind::Timeout => println!("still running; try again later"),
///     other => println!("failed: {other:?}"),
/// }
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// A wait ran out before the result was ready; the work goes on and the call may be
    /// retried.
    Timeout,
    /// A pool task ran longer than its `task_timeout` and its worker was killed.
    TaskTimedOut,
    /// A pool task's worker grew past the pool's `memory_limit_per_child` while it ran and
    /// was killed: `limit` and the `resident` bytes seen.
    MemoryExceeded {
        /// The pool's limit, in bytes.
        limit: u64,
        /// The worker's resident memory when it was seen past the limit, in bytes.
        resident: u64,
    },
    /// The target panicked in the child.
    Panicked(PanicReport),
    /// The process ended without returning a value: killed by a signal, or exited early.
    WorkerLost(LostReport),
    /// The pool was closed to new submissions.
    PoolClosed,
    /// A pool worker's initializer failed (the error says how); the pool runs nothing more.
    InitializerFailed(Box<Error>),
    /// The pool was terminated before the task finished.
    Terminated,
    /// The task was cancelled.
    Cancelled,
    /// The result is not ready yet (for `successful`).
    NotReady,
    /// A bounded queue is full, or a managed `Dict` or `List` is at its capacity.
    Full,
    /// A queue or connection is closed, or its peer is gone.
    Closed,
    /// A barrier is broken or was aborted.
    BrokenBarrier,
    /// An argument is out of range or a call came in the wrong state.
    InvalidArgument(String),
    /// A value could not be encoded or decoded.
    Codec(CodecReport),
    /// The child runs a different build of the executable and refused the function reference.
    ExecutableMismatch,
    /// Bytes on the wire were not a valid frame: malformed, truncated or oversized.
    Protocol(String),
    /// The operating system refused an operation.
    Os(OsReport),
    /// A remote pool's broker (the Redis server) failed, went away, or lost the pool's state
    /// (restarted without persistence); or a frame failed its authentication. Pending tasks
    /// fail with it rather than wait forever.
    Broker(String),
}

impl ErrorKind {
    /// The variant's name (`"Panicked"`, `"WorkerLost"`, ...): the key of
    /// [`PoolStats::errors`](crate::PoolStats::errors).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            ErrorKind::Timeout => "Timeout",
            ErrorKind::TaskTimedOut => "TaskTimedOut",
            ErrorKind::MemoryExceeded { .. } => "MemoryExceeded",
            ErrorKind::Panicked(_) => "Panicked",
            ErrorKind::WorkerLost(_) => "WorkerLost",
            ErrorKind::PoolClosed => "PoolClosed",
            ErrorKind::InitializerFailed(_) => "InitializerFailed",
            ErrorKind::Terminated => "Terminated",
            ErrorKind::Cancelled => "Cancelled",
            ErrorKind::NotReady => "NotReady",
            ErrorKind::Full => "Full",
            ErrorKind::Closed => "Closed",
            ErrorKind::BrokenBarrier => "BrokenBarrier",
            ErrorKind::InvalidArgument(_) => "InvalidArgument",
            ErrorKind::Codec(_) => "Codec",
            ErrorKind::ExecutableMismatch => "ExecutableMismatch",
            ErrorKind::Protocol(_) => "Protocol",
            ErrorKind::Os(_) => "Os",
            ErrorKind::Broker(_) => "Broker",
        }
    }
}

/// Where and how a target panicked.
///
/// ```
/// use mproc::{ErrorKind, Process};
///
/// fn boom() {
///     panic!("no more cheese");
/// }
/// let mut p = Process::new(boom, ()).with_name("cheese-shop");
/// p.start()?;
/// let e = p.join().unwrap_err();
/// let ErrorKind::Panicked(report) = e.kind() else { unreachable!() };
/// assert_eq!(report.message, "no more cheese");
/// assert_eq!(report.process, "cheese-shop");
/// assert!(report.location.as_deref().unwrap().contains(".rs:"));
/// # Ok::<(), mproc::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicReport {
    /// The panic message (its payload when that is a string).
    pub message: String,
    /// `file:line:column` of the panic, when known.
    pub location: Option<String>,
    /// The name of the process that panicked, such as `"Process-3"`.
    pub process: String,
    /// The backtrace, captured when `RUST_BACKTRACE` is set in the child. The error's
    /// alternate form (`{:#}`) prints it after the message.
    pub backtrace: Option<String>,
}

/// A process that ended without returning a value.
///
/// ```
/// use mproc::{ErrorKind, Process};
///
/// fn sleepy() {
///     std::thread::sleep(std::time::Duration::from_secs(60));
/// }
/// let mut p = Process::new(sleepy, ());
/// p.start()?;
/// p.kill()?;
/// let e = p.join().unwrap_err();
/// let ErrorKind::WorkerLost(lost) = e.kind() else { unreachable!() };
/// assert_eq!((lost.signal, lost.exit_code), (Some(9), None));
/// assert_eq!(Some(lost.pid), p.pid());
/// # Ok::<(), mproc::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostReport {
    /// Its name.
    pub process: String,
    /// Its process id.
    pub pid: u32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Its exit code, if it exited.
    pub exit_code: Option<i32>,
    /// How many times the task ran and was lost with its process: 1 for a local pool; for
    /// a remote pool, the runs lost with dead hosts (each re-run counts, up to
    /// `max_retries + 1`).
    pub attempts: u32,
}

/// Which value failed to encode or decode, on which side, and serde's message.
///
/// ```
/// use mproc::{ErrorKind, Process};
///
/// // A value whose Serialize fails on purpose:
/// struct Secret;
/// impl serde::Serialize for Secret {
///     fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
///         Err(serde::ser::Error::custom("secrets stay here"))
///     }
/// }
/// impl<'de> serde::Deserialize<'de> for Secret {
///     fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
///         Ok(Secret)
///     }
/// }
/// fn keep(_: Secret) {}
/// let mut p = Process::new(keep, (Secret,));
/// let e = p.start().unwrap_err();
/// let ErrorKind::Codec(c) = e.kind() else { unreachable!() };
/// assert_eq!(c.direction, "encode");
/// assert!(c.message.contains("secrets stay here"));
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecReport {
    /// What was being converted, such as "the arguments of `squarer`".
    pub value: String,
    /// `"encode"` or `"decode"`.
    pub direction: String,
    /// The process that failed, such as `"MainProcess"`.
    pub process: String,
    /// serde's message.
    pub message: String,
}

/// A failed system call.
///
/// ```
/// use mproc::{Error, ErrorKind};
///
/// let e: Error = std::io::Error::from_raw_os_error(24).into();
/// let ErrorKind::Os(os) = e.kind() else { unreachable!() };
/// assert_eq!(os.errno, Some(24)); // EMFILE: too many open files
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsReport {
    /// What mproc was doing, such as "starting the fork server".
    pub context: String,
    /// The OS error number, when there is one.
    pub errno: Option<i32>,
    /// The OS's description.
    pub message: String,
}

impl Error {
    /// `WorkerLost` for the process `name` (pid `pid`) that ended as `exit`.
    pub(crate) fn lost(name: &str, pid: u32, exit: crate::sys::proc::Exit) -> Error {
        use crate::sys::proc::Exit;
        ErrorKind::WorkerLost(LostReport {
            process: name.to_owned(),
            pid,
            signal: match exit {
                Exit::Signal(s) => Some(s),
                _ => None,
            },
            exit_code: match exit {
                Exit::Code(c) => Some(c),
                _ => None,
            },
            attempts: 1,
        })
        .into()
    }

    /// `WorkerLost` for a task whose remote host (`agent`) died running it, `attempts` times.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub(crate) fn lost_remotely(agent: &str, attempts: u32) -> Error {
        ErrorKind::WorkerLost(LostReport {
            process: format!("remote agent {agent}"),
            pid: 0,
            signal: None,
            exit_code: None,
            attempts,
        })
        .into()
    }

    /// What went wrong.
    ///
    /// ```
    /// let e = mproc::Error::from(mproc::ErrorKind::Closed);
    /// assert!(matches!(e.kind(), mproc::ErrorKind::Closed));
    /// ```
    pub fn kind(&self) -> &ErrorKind {
        &self.0
    }

    /// Whether a wait ran out of time: what every `_timeout` call answers when it does.
    ///
    /// ```
    /// # fn main() -> mproc::Result<()> {
    /// let event = mproc::Event::new()?;
    /// let e = event.wait_timeout(std::time::Duration::from_millis(1)).unwrap_err();
    /// assert!(e.is_timeout());
    /// # Ok(()) }
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(*self.0, ErrorKind::Timeout)
    }

    /// An OS error, with what mproc was doing when it happened: the one way an `io::Error`
    /// becomes an `Error`. A broken connection (`EPIPE`, `ECONNRESET`, `ENOTCONN`: the peer
    /// is gone) is `Closed`; an `InvalidData` without an errno, which the OS layer raises for
    /// shared memory or bytes a peer left malformed, is `Protocol`.
    pub(crate) fn os(context: impl Into<String>, e: io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN) => {
                return ErrorKind::Closed.into();
            }
            None if e.kind() == io::ErrorKind::InvalidData => {
                return Error::protocol(e.to_string());
            }
            _ => {}
        }
        ErrorKind::Os(OsReport {
            context: context.into(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        })
        .into()
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        ErrorKind::InvalidArgument(msg.into()).into()
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Error {
        ErrorKind::Protocol(msg.into()).into()
    }

    pub(crate) fn codec(
        value: impl Into<String>,
        direction: &str,
        message: impl fmt::Display,
    ) -> Error {
        ErrorKind::Codec(CodecReport {
            value: value.into(),
            direction: direction.into(),
            process: crate::current::identity().name().to_owned(),
            message: message.to_string(),
        })
        .into()
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error(Box::new(kind))
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::os("an I/O operation", e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        let kind = match e.kind() {
            ErrorKind::Timeout | ErrorKind::TaskTimedOut => io::ErrorKind::TimedOut,
            ErrorKind::Closed => io::ErrorKind::BrokenPipe,
            ErrorKind::MemoryExceeded { .. } => io::ErrorKind::OutOfMemory,
            ErrorKind::InvalidArgument(_) => io::ErrorKind::InvalidInput,
            ErrorKind::Codec(_) | ErrorKind::Protocol(_) => io::ErrorKind::InvalidData,
            ErrorKind::Os(OsReport { errno: Some(n), .. }) => {
                io::Error::from_raw_os_error(*n).kind()
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

impl std::error::Error for Error {}

/// The kind's name, then the `Display` sentence: what `fn main() -> Result<(), mproc::Error>`
/// prints on failure (`Error: WorkerLost: ...`), as anyhow does. `{:#?}` gives the whole
/// structure instead.
///
/// ```
/// let e = mproc::Error::from(mproc::ErrorKind::Cancelled);
/// assert_eq!(format!("{e:?}"), "Cancelled: the task was cancelled");
/// assert!(format!("{e:#?}").starts_with("Error("));
/// ```
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            return f.debug_tuple("Error").field(&self.0).finish();
        }
        write!(f, "{}: {}", self.0.name(), self)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            ErrorKind::Timeout => f.write_str(
                "timed out waiting for the result; the work goes on, and the wait may be retried",
            ),
            ErrorKind::TaskTimedOut => {
                f.write_str("the task ran past its task_timeout; its worker was killed")
            }
            ErrorKind::MemoryExceeded { limit, resident } => write!(
                f,
                "the task's worker grew to {} MiB resident, past the pool's \
                 memory_limit_per_child of {} MiB; the worker was killed",
                resident >> 20,
                limit >> 20
            ),
            ErrorKind::Panicked(p) => fmt::Display::fmt(p, f),
            ErrorKind::WorkerLost(l) => fmt::Display::fmt(l, f),
            ErrorKind::PoolClosed => f.write_str("the pool is closed to new work"),
            ErrorKind::InitializerFailed(e) => write!(
                f,
                "the pool's initializer failed, so the pool runs nothing more: {e}"
            ),
            ErrorKind::Terminated => {
                f.write_str("the pool was terminated before the task finished")
            }
            ErrorKind::Cancelled => f.write_str("the task was cancelled"),
            ErrorKind::NotReady => f.write_str("the result is not ready yet"),
            ErrorKind::Full => f.write_str(
                "full: a bounded queue, or a managed container at its capacity",
            ),
            ErrorKind::Closed => f.write_str("the channel is closed or its peer is gone"),
            ErrorKind::BrokenBarrier => f.write_str("the barrier is broken or was aborted"),
            ErrorKind::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            ErrorKind::Codec(c) => write!(
                f,
                "could not {} {} in {}: {}",
                c.direction, c.value, c.process, c.message
            ),
            ErrorKind::ExecutableMismatch => f.write_str(
                "the child runs a different build of this executable, so it refused the function \
                 reference; rebuild, then restart the program so parent and children match",
            ),
            ErrorKind::Protocol(m) => write!(f, "malformed message between processes: {m}"),
            ErrorKind::Broker(m) => write!(f, "remote pool broker: {m}"),
            ErrorKind::Os(o) => write!(f, "{} failed: {}", o.context, o.message),
        }
    }
}

impl fmt::Display for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {} panicked", self.process)?;
        if let Some(loc) = &self.location {
            write!(f, " at {loc}")?;
        }
        write!(f, ": {}", self.message)?;
        match &self.backtrace {
            Some(bt) if f.alternate() => write!(f, "\nstack backtrace of the child:\n{bt}"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for LostReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pid == 0 {
            // A remote host: no pid means anything here.
            return write!(
                f,
                "{} stopped answering (its heartbeat expired) while running the task; the task \
                 was lost {} time(s)",
                self.process, self.attempts
            );
        }
        write!(f, "process {} (pid {}) ", self.process, self.pid)?;
        match (self.signal, self.exit_code) {
            (Some(s), _) => write!(
                f,
                "was killed by signal {s} ({}) before returning a value",
                crate::sys::proc::signal_name(s)
            ),
            (None, Some(c)) => write!(f, "exited with code {c} without returning a value"),
            (None, None) => f.write_str("was lost without returning a value"),
        }
    }
}
