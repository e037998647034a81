//! `Process`, `current_process` and `cpu_count`.

use std::ffi::OsStr;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::channel;
use crate::current::{self, Identity};
use crate::error::{Error, ErrorKind};
use crate::start::setup::{Setup, Stdio};
use crate::start::{self, Child, StartMethod};
use crate::sys::exe;
use crate::sys::fd;
use crate::sys::proc::Exit;
use crate::wire::frame;
use crate::wire::message::{Outcome, Role, Start};
use crate::wire::target::{self, Target, TargetRef};

/// A function running in a child process, as Python's `multiprocessing.Process`.
///
/// Made with [`Process::new`], started with [`Process::start`], and joined with
/// [`Process::join`], which returns the target's value. `R` is the target's return type.
///
/// ```
/// use mproc::{Process, current_process};
///
/// fn squarer(n: u64) -> u64 {
///     println!("{n} squared to {} by: {}", n * n, current_process().name());
///     n * n
/// }
///
/// let mut p = Process::new(squarer, (3,));
/// p.start()?;
/// assert_eq!(p.join()?, 9);
/// assert_eq!(p.exitcode(), Some(0));
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// Dropping a started `Process` that was not joined neither blocks nor kills the child; it
/// runs to its end and is reaped in the background, so it never lingers as a zombie.
pub struct Process<R> {
    target: TargetRef,
    /// The encoded arguments and the descriptors of the handles among them.
    args: Result<target::EncodedArgs, Error>,
    name: String,
    lineage: Vec<u32>,
    method: Option<StartMethod>,
    /// Python's `daemon`: terminated, not waited for, when this program exits.
    daemon: bool,
    /// Its environment, working directory and standard streams.
    setup: Setup,
    pid: Option<u32>,
    state: Mutex<State>,
    _result: PhantomData<fn() -> R>,
}

enum State {
    New,
    Running(Box<Child>),
    Done {
        exit: Exit,
        /// The encoded value and the descriptors of the handles in it, or why there is none.
        outcome: Result<(Vec<u8>, Vec<crate::sys::fd::InternalFd>), Error>,
    },
}

impl<R> Process<R> {
    /// A process that will call `target` with `args` (a tuple: `()`, `(a,)`, `(a, b)`, ...)
    /// once started. Its name is `Process-N`, N counting up from 1 in this process.
    ///
    /// `target` is a `fn` item or a closure that captures nothing, taking 0 to 6 arguments;
    /// arguments and the return value must be serde-serializable. The arguments are encoded
    /// now; an encoding error is reported by [`start`](Process::start). A closure that
    /// captures is refused when the program is built, not by `cargo check` (see
    /// [`Target`]).
    ///
    /// ```
    /// fn add(a: i32, b: i32) -> i32 {
    ///     a + b
    /// }
    /// let p = mproc::Process::new(add, (2, 3));
    /// assert!(p.name().starts_with("Process-"));
    /// assert_eq!(p.pid(), None);
    /// ```
    pub fn new<F, A>(target: F, args: A) -> Process<R>
    where
        F: Target<A, Output = R>,
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let _ = target;
        let (_, lineage) = next_child();
        let name = format!(
            "Process-{}",
            lineage
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(":")
        );
        Process {
            target: target::target_ref::<F, A>(),
            args: target::encode_args::<F, A>(&args),
            name,
            lineage,
            method: None,
            daemon: current::identity().daemon(),
            setup: Setup::default(),
            pid: None,
            state: Mutex::new(State::New),
            _result: PhantomData,
        }
    }

    /// Gives the process a name of your choosing (`current_process().name()` in the child).
    ///
    /// ```
    /// fn work() {}
    /// let p = mproc::Process::new(work, ()).with_name("sq-3");
    /// assert_eq!(p.name(), "sq-3");
    /// ```
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Python's `daemon` flag, set before [`start`](Process::start); by default the creating
    /// process's own (`false` in the main process), as in Python. When
    /// this program ends normally (its `main` returns, or `std::process::exit` is called), it
    /// first waits for every non-daemonic child it started that is still running, joined or
    /// not, its handle dropped or not, and terminates (`SIGTERM`) its daemonic ones, as
    /// Python does at exit. A child process does the same for its own children before it
    /// leaves. Should the program die instead (a signal, `abort`), its children all end
    /// within a second, daemonic or not.
    ///
    /// ```
    /// fn work() {}
    /// let p = mproc::Process::new(work, ()).daemon(true);
    /// assert!(p.is_daemon());
    /// ```
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// Sets environment variable `key` to `value` in the child (after the changes asked
    /// before this one), as `std::process::Command::env`. Under every start method.
    ///
    /// A name that is empty or holds `=` or NUL, or a value that holds NUL, cannot be set:
    /// `start` is then an `InvalidArgument` error and no child is made.
    ///
    /// ```
    /// fn read() -> Option<String> {
    ///     std::env::var("GREETING").ok()
    /// }
    /// let mut p = mproc::Process::new(read, ()).env("GREETING", "hello");
    /// p.start()?;
    /// assert_eq!(p.join()?.as_deref(), Some("hello"));
    ///
    /// let mut bad = mproc::Process::new(read, ()).env("A=B", "x");
    /// let e = bad.start().unwrap_err();
    /// assert!(matches!(e.kind(), mproc::ErrorKind::InvalidArgument(_)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.setup.env(key.as_ref(), value.as_ref());
        self
    }

    /// Removes environment variable `key` in the child (a name as [`Process::env`] takes).
    ///
    /// ```
    /// fn home() -> bool {
    ///     std::env::var_os("HOME").is_some()
    /// }
    /// let mut p = mproc::Process::new(home, ()).env_remove("HOME");
    /// p.start()?;
    /// assert!(!p.join()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.setup.env_remove(key.as_ref());
        self
    }

    /// Clears the child's environment (the variables set after this call are its only ones).
    ///
    /// ```
    /// fn count() -> usize {
    ///     std::env::vars_os().count()
    /// }
    /// let mut p = mproc::Process::new(count, ()).env_clear().env("ONLY", "1");
    /// p.start()?;
    /// assert_eq!(p.join()?, 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn env_clear(mut self) -> Self {
        self.setup.env_clear();
        self
    }

    /// The child's working directory. A directory it cannot enter makes its `join` an `Err`
    /// that names it; the target does not run.
    ///
    /// ```
    /// fn here() -> std::path::PathBuf {
    ///     std::env::current_dir().unwrap()
    /// }
    /// let mut p = mproc::Process::new(here, ()).current_dir("/");
    /// p.start()?;
    /// assert_eq!(p.join()?, std::path::Path::new("/"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.setup.current_dir(dir.as_ref());
        self
    }

    /// Where the child's stdin comes from (default: the parent's).
    ///
    /// ```
    /// fn read_all() -> String {
    ///     std::io::read_to_string(std::io::stdin()).unwrap()
    /// }
    /// let mut p = mproc::Process::new(read_all, ()).stdin(mproc::Stdio::null());
    /// p.start()?;
    /// assert_eq!(p.join()?, "");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stdin(mut self, from: impl Into<Stdio>) -> Self {
        self.setup.stdio(0, from.into());
        self
    }

    /// Where the child's stdout goes (default: the parent's): `Stdio::null()`, or a file.
    ///
    /// Under `cargo test` without `--nocapture`, `print!` in a Fork child writes to the test
    /// harness's in-memory capture, inherited from the forking thread, and is lost with the
    /// child; write to `std::io::stdout()` to reach the redirected descriptor.
    ///
    /// ```
    /// fn chatty() {
    ///     println!("to the file");
    /// }
    /// let path = std::env::temp_dir().join(format!("mproc-doc-{}.out", std::process::id()));
    /// let file = std::fs::File::create(&path).unwrap();
    /// let mut p = mproc::Process::new(chatty, ()).stdout(file);
    /// p.start()?;
    /// p.join()?;
    /// assert_eq!(std::fs::read_to_string(&path).unwrap(), "to the file\n");
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stdout(mut self, to: impl Into<Stdio>) -> Self {
        self.setup.stdio(1, to.into());
        self
    }

    /// Where the child's stderr goes (default: the parent's): `Stdio::null()`, or a file.
    ///
    /// ```
    /// fn noisy() {
    ///     eprintln!("nobody hears this");
    /// }
    /// let mut p = mproc::Process::new(noisy, ()).stderr(mproc::Stdio::null());
    /// p.start()?;
    /// p.join()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stderr(mut self, to: impl Into<Stdio>) -> Self {
        self.setup.stdio(2, to.into());
        self
    }

    /// Whether it is daemonic (see [`daemon`](Process::daemon)).
    ///
    /// ```
    /// fn work() {}
    /// assert!(!mproc::Process::new(work, ()).is_daemon());
    /// ```
    pub fn is_daemon(&self) -> bool {
        self.daemon
    }

    /// Chooses how this process starts, instead of [`get_start_method`](crate::get_start_method).
    ///
    /// ```
    /// use mproc::{Process, StartMethod};
    ///
    /// fn work() -> u8 {
    ///     7
    /// }
    /// let mut p = Process::new(work, ()).start_method(StartMethod::Spawn);
    /// p.start()?;
    /// assert_eq!(p.join()?, 7);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.method = Some(method);
        self
    }

    /// Starts the child.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if it was started before; a `Codec` error if the arguments could not
    /// be encoded; `ExecutableMismatch` if a fork server runs another build; an `Os` error if
    /// the system refused to create the process.
    ///
    /// ```
    /// fn work() {}
    /// let mut p = mproc::Process::new(work, ());
    /// p.start()?;
    /// assert!(p.start().is_err()); // a process starts once
    /// p.join()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn start(&mut self) -> Result<(), Error> {
        self.start_as(exe::identity())
    }

    /// Starts the child, claiming to be the build `identity` (tests claim a wrong one).
    fn start_as(&mut self, identity: u64) -> Result<(), Error> {
        if self.pid.is_some() {
            return Err(Error::invalid(format!(
                "{} was already started; a process can be started only once",
                self.name
            )));
        }
        self.setup.check()?;
        let (args, fds) = match &mut self.args {
            Ok((args, fds)) => (std::mem::take(args), std::mem::take(fds)),
            Err(e) => return Err(e.clone()),
        };
        // The child's own `tracing` events come back through a pipe when they are wanted.
        let log_pipe = crate::relay::log_pipe();
        let log = log_pipe.as_ref().map(|p| p.level());
        let (env, cwd, stdio, files) = self.setup.message();
        let start = Start {
            env,
            cwd: cwd.map(serde_bytes::ByteBuf::from),
            stdio,
            identity,
            entry: self.target.entry,
            target: self.target.name.to_owned(),
            name: self.name.clone(),
            daemon: self.daemon,
            lineage: self.lineage.clone(),
            args,
            role: Role::Call,
            handles: fds.len() as u32,
            log,
        };
        // Encoded (and its size checked) before any process exists; the arguments stay here
        // for a retry if the start fails.
        let message = channel::encode_message(&start);
        self.args = Ok((start.args, fds));
        let message = message?;
        frame::header(message.len())?;
        let method = self.method.unwrap_or_else(start::get_start_method);
        let child = {
            let Ok((_, fds)) = &self.args else {
                unreachable!("set just above")
            };
            let mut fds: Vec<_> = fds.iter().map(std::os::fd::AsFd::as_fd).collect();
            fds.extend(files);
            fds.extend(log_pipe.as_ref().map(|p| p.write()));
            start::launch(method, &message, &fds)?
        };
        if let Some(pipe) = log_pipe {
            pipe.relay(&self.name, child.pid());
        }
        self.args = Ok((Vec::new(), Vec::new()));
        self.pid = Some(child.pid());
        start::children::started(child.pid(), child.pidfd(), self.daemon);
        event!(
            target: "mproc::process",
            tracing::Level::INFO,
            process = %self.name,
            pid = child.pid(),
            method = method.name(),
            function = self.target.name,
            "process started"
        );
        *self.lock() = State::Running(Box::new(child));
        Ok(())
    }

    /// Its name: `Process-N` unless set with [`with_name`](Process::with_name).
    ///
    /// ```
    /// fn work() {}
    /// let p = mproc::Process::new(work, ()).with_name("worker");
    /// assert_eq!(p.name(), "worker");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child's process id; `None` before it is started.
    ///
    /// ```
    /// fn work() {}
    /// let mut p = mproc::Process::new(work, ());
    /// assert_eq!(p.pid(), None);
    /// p.start()?;
    /// assert!(p.pid().is_some());
    /// # p.join()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Whether it has been started and has not ended yet. Never blocks.
    ///
    /// ```
    /// fn nap() {
    ///     std::thread::sleep(std::time::Duration::from_millis(200));
    /// }
    /// let mut p = mproc::Process::new(nap, ());
    /// assert!(!p.is_alive());
    /// p.start()?;
    /// assert!(p.is_alive());
    /// p.join()?;
    /// assert!(!p.is_alive());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_alive(&self) -> bool {
        self.pid.is_some() && matches!(self.wait(Some(Instant::now())), Ok(None))
    }

    /// Python's `exitcode`: `None` before it starts and while it runs; then its exit code,
    /// 0 after the target returned, 1 after a panic, or minus the signal number if a signal
    /// killed it. Never blocks. Also `None` after it ended if its status was lost because this
    /// process ignores `SIGCHLD` (the kernel then reaps children itself).
    ///
    /// A [`Forkserver`](crate::StartMethod::Forkserver) child whose fork server was killed
    /// while it ran is adopted by another process, which alone can reap it. Its code then
    /// comes from the kernel's record (Linux 6.15 and later, once the adopter reaped it), else
    /// from what it reported (0 after the target returned, 1 after a panic or error), else it
    /// is `None`.
    ///
    /// ```
    /// fn work() {}
    /// let mut p = mproc::Process::new(work, ());
    /// assert_eq!(p.exitcode(), None);
    /// p.start()?;
    /// p.join()?;
    /// assert_eq!(p.exitcode(), Some(0));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn exitcode(&self) -> Option<i32> {
        self.poll(Some(Instant::now())).and_then(Exit::python_code)
    }

    /// Asks the child to stop with `SIGTERM`. Does nothing if it has already ended.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if the process was not started.
    ///
    /// ```
    /// fn sleepy() {
    ///     std::thread::sleep(std::time::Duration::from_secs(60));
    /// }
    /// let mut p = mproc::Process::new(sleepy, ());
    /// p.start()?;
    /// p.terminate()?;
    /// assert!(p.join().is_err());
    /// assert_eq!(p.exitcode(), Some(-15));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn terminate(&self) -> Result<(), Error> {
        self.signal(libc::SIGTERM)
    }

    /// Kills the child with `SIGKILL`. Does nothing if it has already ended.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if the process was not started.
    ///
    /// ```
    /// fn sleepy() {
    ///     std::thread::sleep(std::time::Duration::from_secs(60));
    /// }
    /// let mut p = mproc::Process::new(sleepy, ());
    /// p.start()?;
    /// p.kill()?;
    /// assert!(p.join().is_err());
    /// assert_eq!(p.exitcode(), Some(-9));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn kill(&self) -> Result<(), Error> {
        self.signal(libc::SIGKILL)
    }

    fn signal(&self, sig: i32) -> Result<(), Error> {
        match &*self.lock() {
            State::New => Err(Error::invalid(format!(
                "{} was not started, so it cannot be signalled",
                self.name
            ))),
            State::Running(child) => child.signal(sig),
            State::Done { .. } => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until the child ends or `deadline`; its exit once it has ended.
    fn poll(&self, deadline: Option<Instant>) -> Option<Exit> {
        self.wait(deadline).ok().flatten()
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Option<Exit>, Error> {
        // A child started in a fork server's lent spare was not told to the server then.
        start::forkserver::tell_takes();
        let mut state = self.lock();
        let (exit, outcome) = match &mut *state {
            State::New => return Ok(None),
            State::Done { exit, .. } => return Ok(Some(*exit)),
            State::Running(child) => match child.wait(deadline)? {
                None => return Ok(None),
                Some(exit) => (exit, self.settle(child, exit)),
            },
        };
        #[cfg(feature = "tracing")]
        self.trace_end(exit, &outcome);
        if let Some(pid) = self.pid {
            start::children::ended(pid);
        }
        *state = State::Done { exit, outcome };
        drop(state);
        // The fork server's kits for its spares made now, not in a start.
        start::forkserver::top_up();
        Ok(Some(exit))
    }

    /// Says how the child ended: `info` when it returned, `warn` for a panic (with its
    /// report), `error` when it was lost.
    #[cfg(feature = "tracing")]
    fn trace_end(&self, exit: Exit, outcome: &Result<(Vec<u8>, Vec<crate::sys::fd::InternalFd>), Error>) {
        let pid = self.pid.unwrap_or(0);
        let code = exit.python_code();
        match outcome.as_ref().map_err(Error::kind) {
            Ok(_) => event!(target: "mproc::process", tracing::Level::INFO,
                process = %self.name, pid, exitcode = code, "process returned"),
            Err(ErrorKind::Panicked(report)) => event!(target: "mproc::process",
                tracing::Level::WARN, process = %self.name, pid, exitcode = code,
                report = %report, "process panicked"),
            Err(kind) => event!(target: "mproc::process", tracing::Level::ERROR,
                process = %self.name, pid, exitcode = code, error = %Error::from(kind.clone()),
                "process ended without returning"),
        }
    }

    /// What a finished child's outcome means for `join`.
    fn settle(
        &self,
        child: &mut Child,
        exit: Exit,
    ) -> Result<(Vec<u8>, Vec<crate::sys::fd::InternalFd>), Error> {
        match child.take_outcome() {
            Some(Ok(Outcome::Returned(bytes))) => Ok((bytes, child.take_returned())),
            Some(Ok(Outcome::Panicked(report))) => Err(ErrorKind::Panicked(report).into()),
            Some(Ok(Outcome::Failed(e))) => Err(e),
            Some(Ok(Outcome::Refused)) => Err(ErrorKind::ExecutableMismatch.into()),
            // A frame cut short by the child's death is the death's fault, not the wire's.
            Some(Err(e)) if exit == Exit::Code(0) => Err(e),
            Some(Err(_)) | None => Err(Error::lost(&self.name, child.pid(), exit)),
        }
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to end and returns the target's value.
    ///
    /// May be called again: it gives the same outcome each time (decoding the value again).
    ///
    /// # Errors
    ///
    /// `Panicked` (message, location, process name; backtrace when `RUST_BACKTRACE` is set in
    /// the child) if the target panicked; `WorkerLost` with the signal or exit code if the
    /// child was killed or exited without returning; `InvalidArgument` if it was not started.
    ///
    /// ```
    /// fn boom() {
    ///     panic!("out of cheese");
    /// }
    /// let mut p = mproc::Process::new(boom, ());
    /// p.start()?;
    /// let e = p.join().unwrap_err();
    /// assert!(e.to_string().contains("out of cheese"));
    /// assert_eq!(p.exitcode(), Some(1));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn join(&mut self) -> Result<R, Error> {
        self.join_until(None)
    }

    /// Like [`join`](Process::join), but gives up after `timeout` with `Err(Timeout)`; the
    /// child keeps running and the call may be repeated.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap() -> String {
    ///     std::thread::sleep(Duration::from_millis(300));
    ///     "rested".into()
    /// }
    /// let mut p = mproc::Process::new(nap, ());
    /// p.start()?;
    /// let e = p.join_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// assert_eq!(p.join_timeout(Duration::from_secs(30))?, "rested");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, Error> {
        self.join_until(fd::deadline_after(timeout))
    }

    fn join_until(&mut self, deadline: Option<Instant>) -> Result<R, Error> {
        if self.pid.is_none() {
            return Err(Error::invalid(format!(
                "{} was not started, so it cannot be joined",
                self.name
            )));
        }
        if self.wait(deadline)?.is_none() {
            return Err(ErrorKind::Timeout.into());
        }
        match &*self.lock() {
            State::Done { outcome, .. } => {
                let (bytes, handles) = outcome.as_ref().map_err(Clone::clone)?;
                target::decode_output(bytes, handles, self.target.name)
            }
            _ => unreachable!("wait returned an exit, so the state is Done"),
        }
    }
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("target", &self.target.name)
            .field("pid", &self.pid)
            .field("exitcode", &self.exitcode())
            .finish()
    }
}

/// The number and lineage of this process's next child, for children that are not `Process`
/// objects (pool workers).
pub(crate) use crate::current::next_child;

/// Who this process is: its name and pid, as Python's `current_process()`.
///
/// ```
/// let me = mproc::current_process();
/// assert_eq!(me.name(), "MainProcess");
/// assert_eq!(me.pid(), std::process::id());
/// ```
#[derive(Clone, Debug)]
pub struct CurrentProcess {
    identity: Arc<Identity>,
    pid: u32,
}

impl CurrentProcess {
    /// `"MainProcess"` in the program's own process; in a child, the child's name
    /// (`"Process-N"` unless it was given another).
    ///
    /// ```
    /// println!("I am {}", mproc::current_process().name());
    /// ```
    pub fn name(&self) -> &str {
        self.identity.name()
    }

    /// This process's id.
    ///
    /// ```
    /// assert_eq!(mproc::current_process().pid(), std::process::id());
    /// ```
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether this process was started as daemonic ([`Process::daemon`]); the default of
    /// the processes it starts. (Unlike Python, a daemonic process may start children: they
    /// are daemonic too unless told otherwise, and end with it.)
    ///
    /// ```
    /// fn am_i() -> bool {
    ///     mproc::current_process().daemon()
    /// }
    /// let mut p = mproc::Process::new(am_i, ()).daemon(true);
    /// p.start()?;
    /// assert!(p.join()?);
    /// assert!(!am_i(), "the main process is not");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn daemon(&self) -> bool {
        self.identity.daemon()
    }
}

/// The process this code runs in.
///
/// ```
/// fn who() -> String {
///     mproc::current_process().name().to_owned()
/// }
/// let mut p = mproc::Process::new(who, ()).with_name("helper");
/// p.start()?;
/// assert_eq!(p.join()?, "helper");
/// assert_eq!(who(), "MainProcess");
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn current_process() -> CurrentProcess {
    CurrentProcess {
        identity: current::identity(),
        pid: std::process::id(),
    }
}

/// How many CPUs this process may use: its CPU affinity mask, reduced by a cgroup CPU quota
/// when one is set (v1 or v2). At least 1. The default size of a pool.
///
/// ```
/// assert!(mproc::cpu_count() >= 1);
/// ```
pub fn cpu_count() -> usize {
    // std reads sched_getaffinity(2) and the cgroup quota (cpu.max, or cpu.cfs_quota_us and
    // cpu.cfs_period_us) of this process, which is exactly the rule we want.
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seven() -> u8 {
        7
    }

    #[test]
    fn a_child_of_another_build_refuses_the_function_reference() {
        for m in StartMethod::ALL {
            let mut p = Process::new(seven, ()).start_method(m);
            p.start_as(exe::identity() ^ 1).unwrap();
            let e = p.join_timeout(Duration::from_secs(20)).unwrap_err();
            assert_eq!(e.kind(), &ErrorKind::ExecutableMismatch, "{m}: {e}");
            assert!(e.to_string().contains("different build"), "{e}");
            assert_eq!(p.exitcode(), Some(1));
        }
    }

    #[test]
    fn a_child_sent_a_bogus_function_reference_refuses_it() {
        for m in StartMethod::ALL {
            let mut p = Process::new(seven, ()).start_method(m);
            // Past the record: the trampoline's own code, say, or any other bytes.
            p.target.entry = p.target.entry.wrapping_add(8);
            p.start().unwrap();
            let e = p.join_timeout(Duration::from_secs(20)).unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Protocol(_)), "{m}: {e}");
            assert!(e.to_string().contains("names no target"), "{e}");
            assert_eq!(p.exitcode(), Some(1), "{m}");
        }
    }
}
