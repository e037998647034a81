//! A child's surroundings, as `std::process::Command` offers them: environment variables (set,
//! removed, cleared), working directory, and where its stdin, stdout and stderr go. The parent
//! records them ([`Setup`]); they ride in the start message (the files as descriptors after the
//! handles'); the child applies them itself before its target or its pool work begins, so every
//! start method honours all of them, fork included.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use crate::error::Error;
use crate::sys::proc;
use crate::wire::message::{EnvChange, Redirect};

/// Where one of a child's standard streams goes: its parent's (the default), `/dev/null`, or
/// a file. For [`Process::stdin`](crate::Process::stdin) and its kin, and the pool builder's.
///
/// ```
/// use mproc::Stdio;
///
/// let quiet = Stdio::null();
/// let log: Stdio = std::fs::File::create(std::env::temp_dir().join("mproc-doc.log"))?.into();
/// let _ = (quiet, log, Stdio::inherit());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Stdio(Kind);

#[derive(Clone, Debug, Default)]
enum Kind {
    #[default]
    Inherit,
    Null,
    File(Arc<OwnedFd>),
}

impl Stdio {
    /// The parent's stream, as it is (the default).
    ///
    /// ```
    /// let _ = mproc::Stdio::inherit();
    /// ```
    pub fn inherit() -> Stdio {
        Stdio(Kind::Inherit)
    }

    /// `/dev/null`: reading gives end of file, writing goes nowhere.
    ///
    /// ```
    /// let _ = mproc::Stdio::null();
    /// ```
    pub fn null() -> Stdio {
        Stdio(Kind::Null)
    }
}

impl From<std::fs::File> for Stdio {
    fn from(file: std::fs::File) -> Stdio {
        Stdio(Kind::File(Arc::new(file.into())))
    }
}

/// What a parent asks of its children's surroundings.
#[derive(Clone, Debug, Default)]
pub(crate) struct Setup {
    env: Vec<EnvChange>,
    cwd: Option<Vec<u8>>,
    stdio: [Stdio; 3],
}

impl Setup {
    /// Whether it asks for nothing (the child's surroundings are its parent's).
    pub(crate) fn is_default(&self) -> bool {
        self.env.is_empty()
            && self.cwd.is_none()
            && self.stdio.iter().all(|s| matches!(s.0, Kind::Inherit))
    }

    pub(crate) fn env(&mut self, key: &OsStr, value: &OsStr) {
        let (k, v) = (key.as_bytes().to_vec(), value.as_bytes().to_vec());
        self.env.push(EnvChange::Set(k.into(), v.into()));
    }

    pub(crate) fn env_remove(&mut self, key: &OsStr) {
        self.env
            .push(EnvChange::Remove(key.as_bytes().to_vec().into()));
    }

    pub(crate) fn env_clear(&mut self) {
        self.env.clear();
        self.env.push(EnvChange::Clear);
    }

    pub(crate) fn current_dir(&mut self, dir: &Path) {
        self.cwd = Some(dir.as_os_str().as_bytes().to_vec());
    }

    /// Stream `n` (0 stdin, 1 stdout, 2 stderr).
    pub(crate) fn stdio(&mut self, n: usize, to: Stdio) {
        self.stdio[n] = to;
    }

    /// Whether every change can be made: `std::env::set_var` refuses (panics on) an empty
    /// name, a name with `=` or NUL, and a value with NUL, and no child could start with them.
    pub(crate) fn check(&self) -> Result<(), Error> {
        self.env.iter().try_for_each(check_change)
    }

    /// The files to send after the handles' descriptors, in stream order.
    pub(crate) fn files(&self) -> Vec<BorrowedFd<'_>> {
        self.stdio
            .iter()
            .filter_map(|s| match &s.0 {
                Kind::File(f) => Some(f.as_fd()),
                Kind::Inherit | Kind::Null => None,
            })
            .collect()
    }

    /// What the start message says: the changes, the directory, the streams; and the files to
    /// send after the handles' descriptors ([`files`](Setup::files)).
    pub(crate) fn message(
        &self,
    ) -> (Vec<EnvChange>, Option<Vec<u8>>, [Redirect; 3], Vec<BorrowedFd<'_>>) {
        let redirect = |s: &Stdio| match &s.0 {
            Kind::Inherit => Redirect::Inherit,
            Kind::Null => Redirect::Null,
            Kind::File(_) => Redirect::File,
        };
        let fds = self.files();
        (
            self.env.clone(),
            self.cwd.clone(),
            [
                redirect(&self.stdio[0]),
                redirect(&self.stdio[1]),
                redirect(&self.stdio[2]),
            ],
            fds,
        )
    }
}

/// Refuses what the environment cannot hold (see [`Setup::check`]).
fn check_change(change: &EnvChange) -> Result<(), Error> {
    let shown = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let name = |k: &[u8]| {
        if k.is_empty() {
            Err(Error::invalid("an environment variable's name cannot be empty"))
        } else if k.contains(&b'=') || k.contains(&0) {
            Err(Error::invalid(format!(
                "an environment variable's name cannot contain '=' or NUL: {:?}",
                shown(k)
            )))
        } else {
            Ok(())
        }
    };
    match change {
        EnvChange::Set(k, v) => {
            name(k)?;
            if v.contains(&0) {
                return Err(Error::invalid(format!(
                    "the value of environment variable {:?} cannot contain NUL",
                    shown(k)
                )));
            }
            Ok(())
        }
        EnvChange::Remove(k) => name(k),
        EnvChange::Clear => Ok(()),
    }
}

/// In the child, before anything else runs: applies what the start message asks. `files` are
/// the descriptors of the streams sent as files, in stream order. A change the environment
/// cannot hold is an error here too (a parent of another build may have sent it), never a
/// panic.
pub(crate) fn apply(
    env: &[EnvChange],
    cwd: Option<&[u8]>,
    stdio: &[Redirect; 3],
    files: Vec<OwnedFd>,
) -> Result<(), Error> {
    env.iter().try_for_each(check_change)?;
    for change in env {
        match change {
            EnvChange::Set(k, v) => proc::set_env(OsStr::from_bytes(k), OsStr::from_bytes(v)),
            EnvChange::Remove(k) => proc::remove_env(OsStr::from_bytes(k)),
            EnvChange::Clear => proc::clear_env(),
        }
    }
    if let Some(dir) = cwd {
        std::env::set_current_dir(OsStr::from_bytes(dir)).map_err(|e| {
            Error::os(
                format!(
                    "changing the child's working directory to {}",
                    Path::new(OsStr::from_bytes(dir)).display()
                ),
                e,
            )
        })?;
    }
    let mut files = files.into_iter();
    for (n, r) in stdio.iter().enumerate() {
        let fd = match r {
            Redirect::Inherit => continue,
            Redirect::Null => proc::open_dev_null(n == 0)
                .map_err(|e| Error::os("opening /dev/null for the child", e))?,
            Redirect::File => files
                .next()
                .ok_or_else(|| Error::protocol("a child's stream file did not come"))?,
        };
        proc::replace_stdio(n, fd.as_fd())
            .map_err(|e| Error::os("redirecting the child's standard streams", e))?;
    }
    Ok(())
}
