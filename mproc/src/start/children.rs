//! Python's exit behaviour for the `Process`es a program starts: when it ends normally (its
//! `main` returns, or `std::process::exit`), it waits for its non-daemonic children to end and
//! terminates (`SIGTERM`) its daemonic ones, as Python does at interpreter exit. A child (a
//! target) does the same for its own children before it leaves. `abort`, a signal or `_exit`
//! skip it: then the children still end within a second (`alive.rs`).
//!
//! Each started child is kept here as a pidfd (readable once the child has ended, whoever
//! reaps it), whether or not its `Process` handle still exists: a dropped, un-joined
//! `Process` is waited for too, as in Python.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use crate::sys::fd::{self, InternalFd};
use crate::sys::proc;

struct Entry {
    pid: u32,
    pidfd: InternalFd,
    daemon: bool,
}

/// The children started by this process (see [`OWNER`]).
static CHILDREN: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The process the list belongs to: a fork child inherits its parent's list, and must not
/// wait for its parent's children.
static OWNER: AtomicU32 = AtomicU32::new(0);

/// Kept children ended are dropped once the list is this long.
const PRUNE_AT: usize = 64;

fn children() -> MutexGuard<'static, Vec<Entry>> {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Child `pid` has started; `daemon`: terminated rather than waited for at exit.
pub(crate) fn started(pid: u32, daemon: bool) {
    static HOOKED: Once = Once::new();
    HOOKED.call_once(|| {
        // Without the hook, children still end with this process (within a second).
        let _ = proc::at_exit(at_exit);
    });
    let Ok([pidfd]) = fd::create_internal(|| Ok([proc::pidfd_open(pid)?])) else {
        return; // it has ended already
    };
    let me = std::process::id();
    let mut list = children();
    if OWNER.swap(me, Ordering::Relaxed) != me {
        // A fork child's copy of its parent's list: not its children. (Their descriptors
        // were closed in it already; dropping an inherited `InternalFd` closes nothing.)
        list.clear();
    }
    if list.len() >= PRUNE_AT {
        list.retain(|e| !proc::has_ended(e.pidfd.as_fd()).unwrap_or(true));
    }
    list.push(Entry { pid, pidfd, daemon });
}

/// Child `pid` has been seen to end (joined): nothing to wait for at exit.
pub(crate) fn ended(pid: u32) {
    if OWNER.load(Ordering::Relaxed) != std::process::id() {
        return;
    }
    children().retain(|e| e.pid != pid);
}

/// Terminates this process's daemonic children and waits for the others to end.
pub(crate) fn settle() {
    if OWNER.load(Ordering::Relaxed) != std::process::id() {
        return;
    }
    let list = std::mem::take(&mut *children());
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
