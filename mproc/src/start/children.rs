//! Python's exit behaviour for the `Process`es a program starts: when it ends normally (its
//! `main` returns, or `std::process::exit`), it waits for its non-daemonic children to end and
//! terminates (`SIGTERM`) its daemonic ones, as Python does at interpreter exit. A child (a
//! target) does the same for its own children before it leaves. `abort`, a signal or `_exit`
//! skip it: then the children still end within a second (`alive.rs`).
//!
//! Each started child is kept here as a pidfd (readable once the child has ended, whoever
//! reaps it), whether or not its `Process` handle still exists: a dropped, un-joined
//! `Process` is waited for too, as in Python.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::at_fork;
use crate::error::Error;
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc::{self, Forked};

struct Entry {
    pid: u32,
    pidfd: InternalFd,
    daemon: bool,
}

struct Children {
    /// The process the list belongs to: a process forked by other means than a `Fork`
    /// start (which clears it) inherits its parent's list, and must not wait for its
    /// parent's children.
    owner: u32,
    /// Whether the exit handler is registered (a fork child inherits it with the flag).
    hooked: bool,
    list: Vec<Entry>,
}

/// The children started by this process.
static CHILDREN: Mutex<Children> = Mutex::new(Children {
    owner: 0,
    hooked: false,
    list: Vec::new(),
});

/// The process that has started children, checked before any lock: a process forked by
/// other means than a `Fork` start (a plain `fork`) inherits the exit handler, and maybe the
/// list's lock held by a thread it does not have; having started no child, it takes nothing.
static OWNER: AtomicU32 = AtomicU32::new(0);

/// Whether this process has started children of its own (else nothing to wait for).
fn mine() -> bool {
    OWNER.load(Ordering::Acquire) == proc::getpid()
}

/// Kept children ended are dropped once the list is this long.
const PRUNE_AT: usize = 64;

/// The list, locked. A `Fork` start holds it across the fork (see `at_fork.rs`), so a fork
/// child never inherits it locked by a thread it does not have.
fn children() -> MutexGuard<'static, Children> {
    at_fork::ensure(at_fork::Rank::Children, hold_across_fork);
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let me = proc::getpid();
    if children.owner != me {
        // A copy of another process's list: not this one's children. (Their descriptors
        // were closed here already; dropping an inherited `InternalFd` closes nothing.)
        children.list.clear();
        children.owner = me;
    }
    children
}

fn hold_across_fork(fork: at_fork::Fork<'_>) -> Result<Forked, Error> {
    let mut children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    let forked = fork();
    if let Ok(Forked::Child) = forked {
        children.list.clear();
        children.owner = proc::getpid();
    }
    forked
}

/// Child `pid`, whose pidfd is `pidfd`, has started; `daemon`: terminated rather than waited
/// for at exit. (The child's own pidfd, duplicated: one opened by pid now could name another
/// process, were the child gone and its pid reused.)
pub(crate) fn started(pid: u32, pidfd: BorrowedFd<'_>, daemon: bool) {
    let Ok([pidfd]) = fd::create_internal(|| Ok([pidfd.try_clone_to_owned()?])) else {
        return; // out of descriptors: it is not waited for, and still ends with this process
    };
    let mut children = children();
    if !children.hooked {
        // Without the hook, children still end with this process (within a second).
        children.hooked = proc::at_exit(at_exit).is_ok();
    }
    if children.list.len() >= PRUNE_AT {
        children
            .list
            .retain(|e| !proc::has_ended(e.pidfd.as_fd()).unwrap_or(true));
    }
    children.list.push(Entry { pid, pidfd, daemon });
    OWNER.store(proc::getpid(), Ordering::Release);
}

/// Child `pid` has been seen to end (joined): nothing to wait for at exit.
pub(crate) fn ended(pid: u32) {
    if mine() {
        children().list.retain(|e| e.pid != pid);
    }
}

/// Terminates this process's daemonic children and waits for the others to end.
pub(crate) fn settle() {
    if !mine() {
        return;
    }
    let list = std::mem::take(&mut children().list);
    for e in list.iter().filter(|e| e.daemon) {
        let _ = proc::pidfd_signal(e.pidfd.as_fd(), libc::SIGTERM);
    }
    for e in list.iter().filter(|e| !e.daemon) {
        // Readable once it has ended; an error means it cannot be waited for.
        while !proc::has_ended(e.pidfd.as_fd()).unwrap_or(true) {
            let _ = fd::poll_read(&[e.pidfd.as_fd()], None);
        }
    }
}

extern "C" fn at_exit() {
    // Nothing may unwind out of an exit handler.
    let _ = std::panic::catch_unwind(settle);
}
