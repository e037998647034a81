//! The `Spawn` start method: a fresh copy of the current executable.
//!
//! The child is started with posix_spawn(3) on `/proc/self/exe` (the very file this process
//! runs, even if its path has since been replaced), with the `MPROC_WORKER` marker added to
//! its environment and exactly two descriptors besides the standard streams: its control
//! socket at 3 and the parent's liveness pipe at 4. The bootstrap constructor takes over
//! before `main`.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStringExt;

use super::alive;
use super::child::{Child, Reaper};
use super::marker::{self, Role};
use crate::Error;
use crate::channel::Channel;
use crate::sys::fd;
use crate::sys::proc;

/// Where the control socket lands in the child.
const CTRL_FD: RawFd = 3;
/// Where the liveness pipe lands in the child.
const ALIVE_FD: RawFd = 4;

pub(crate) fn launch(start: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Child, Error> {
    let alive_read = alive::reader()?;
    let [parent_end, child_end] = super::socket_pair()?;
    let pid = spawn_executable(Role::Worker, child_end.as_fd(), alive_read.as_fd())?;
    let pidfd = super::pidfd_for_our_child(pid)?;
    Child::new(pid, pidfd, Channel::new(parent_end), Reaper::Us).send_start(start, fds)
}

/// Starts this executable in `role`, handing it `ctrl` and `alive`. Returns its pid.
pub(crate) fn spawn_executable(
    role: Role,
    ctrl: BorrowedFd<'_>,
    alive: BorrowedFd<'_>,
) -> Result<u32, Error> {
    let noun = match role {
        Role::Worker => "worker process",
        Role::ForkServer => "fork server",
        Role::Enter(_) => "helper process",
    };
    spawn_as(role, noun, ctrl, alive)
}

/// Starts this executable for the role whose entry record `entry` names (see [`super::role`]:
/// it claims a [`RoleFn::Spawned`](super::role::RoleFn::Spawned)), handing it `ctrl` and
/// `alive`; `noun` says what it is in errors. Returns its pid.
pub(crate) fn spawn_role(
    entry: i64,
    noun: &str,
    ctrl: BorrowedFd<'_>,
    alive: BorrowedFd<'_>,
) -> Result<u32, Error> {
    spawn_as(Role::Enter(entry), noun, ctrl, alive)
}

fn spawn_as(
    role: Role,
    noun: &str,
    ctrl: BorrowedFd<'_>,
    alive: BorrowedFd<'_>,
) -> Result<u32, Error> {
    // Move both above the target numbers first, so neither dup2 can clobber the other.
    let [ctrl_high, alive_high] =
        fd::create_internal(|| Ok([fd::dup_above(ctrl, 10)?, fd::dup_above(alive, 10)?]))
            .map_err(|e| Error::os("preparing descriptors for a spawned child", e))?;
    let argv0 = std::env::args_os()
        .next()
        .and_then(|a| CString::new(a.into_vec()).ok())
        .unwrap_or_else(|| c"mproc-worker".to_owned());
    let env = child_environment(&marker::marker(role, CTRL_FD, ALIVE_FD));
    proc::spawn(
        c"/proc/self/exe",
        &[argv0],
        &env,
        &[(ctrl_high.as_fd(), CTRL_FD), (alive_high.as_fd(), ALIVE_FD)],
    )
    .map_err(|e| Error::os(format!("starting a {noun} with posix_spawn"), e))
}

/// This process's environment with the worker marker set to `marker`.
fn child_environment(marker: &str) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != marker::MARKER)
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    env.extend(CString::new(format!("{}={marker}", marker::MARKER)));
    env
}
