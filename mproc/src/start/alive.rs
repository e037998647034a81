//! The liveness pipe: how a child learns that its parent has died, even by SIGKILL.
//!
//! Each process that starts children makes one pipe and keeps both ends for its whole life.
//! Children get a copy of the read end and never the write end, so when the parent dies for
//! any reason the kernel closes its write end and every child's read end hangs up. Spawned and
//! forked children watch it from a small thread and exit at once; the fork server watches it
//! in its event loop and exits. The fork server's children are tied to the same pipe, never to
//! the server (which may die alone, killed by hand or by the out-of-memory killer, while the
//! user's process still wants their work): each gets an open file description of the pipe of
//! its own, on which the kernel itself SIGKILLs it at the hang-up (see [`tie`]), at a fraction
//! of a thread's cost.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};

use crate::Error;
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc;

/// This process's liveness pipe. `owner` tells a forked child that the pipe it inherited is
/// its parent's (already closed in it by the fork launch), not its own.
pub(crate) struct AlivePipe {
    owner: u32,
    read: InternalFd,
    _write: InternalFd,
}

static ALIVE: Mutex<Option<AlivePipe>> = Mutex::new(None);

pub(crate) fn lock() -> MutexGuard<'static, Option<AlivePipe>> {
    ALIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new descriptor for the read end of this process's pipe, made on first use.
pub(crate) fn reader() -> Result<OwnedFd, Error> {
    let mut guard = lock();
    reader_locked(&mut guard)
}

pub(crate) fn reader_locked(slot: &mut Option<AlivePipe>) -> Result<OwnedFd, Error> {
    if slot.as_ref().is_some_and(|p| p.owner != proc::getpid()) {
        // Inherited through fork: its descriptors were closed by the fork launch.
        std::mem::forget(slot.take());
    }
    if slot.is_none() {
        let [read, write] = fd::create_internal(|| {
            let (r, w) = fd::pipe()?;
            Ok([r, w])
        })
        .map_err(|e| Error::os("creating the liveness pipe", e))?;
        *slot = Some(AlivePipe {
            owner: proc::getpid(),
            read,
            _write: write,
        });
    }
    let pipe = slot.as_ref().expect("just made");
    fd::dup_above(pipe.read.as_fd(), 3).map_err(|e| Error::os("duplicating the liveness pipe", e))
}

/// In a child: exits as soon as the parent's pipe hangs up. Runs on a small thread.
pub(crate) fn watch(read: OwnedFd) {
    let spawned = std::thread::Builder::new()
        .name("mproc-parent-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            proc::block_all_signals_in_this_thread();
            loop {
                match fd::poll_read(&[read.as_fd()], None) {
                    Ok(r) if r[0].readable || r[0].hangup => proc::exit_now(1),
                    Ok(_) => {}
                    Err(_) => proc::exit_now(1),
                }
            }
        });
    if spawned.is_err() {
        proc::write_stderr("mproc: could not start the parent watcher thread; exiting\n");
        proc::exit_now(1);
    }
}

/// In a child forked from a thread other than the main one: exits as soon as the parent's pipe
/// hangs up, the kernel SIGKILLing it (as [`tie`] does for a fork server's child). A watcher
/// thread only if the kernel refuses: a thread started in a fork child of a multi-threaded
/// process can wait forever for a lock of std's (its thread bookkeeping) that another thread
/// of the parent held at the fork, and then the child outlives its parent.
pub(crate) fn tie_forked(read: OwnedFd) {
    match proc::hangup_killer(read.as_fd()) {
        Ok(fd) => tie(Tie { fd, armed: true }, proc::getpid()),
        Err(_) => watch(read),
    }
}

/// What ties a fork server's child to the parent's pipe: a description of the pipe of the
/// child's own, armed to kill whoever claims it (the kernel then kills the child itself, see
/// [`tie`]), or failing that a plain copy of the read end (for a watcher thread).
pub(crate) struct Tie {
    fd: OwnedFd,
    armed: bool,
}

impl AsRawFd for Tie {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// A fork server's ties for its children. Making one costs an open(2) of `/proc/self/fd/N` and
/// three fcntl(2) calls, so the server makes one ahead and takes back the tie of every child it
/// reaps for a later child: in the steady state no start makes one. A description a dead child
/// claimed is safe to hand on: its owner names a process that no longer exists (the kernel
/// keeps the owner as a reference to that process, never as a number a new process could
/// reuse), and the server clears it before keeping the tie anyway. (A dead child's own children
/// may still hold its copy, inherited like any descriptor: holding one signals nobody; only
/// the claim of the child the server hands it to does.)
pub(crate) struct Ties {
    free: Vec<OwnedFd>,
}

/// At most this many ties are kept for later children (beyond what running children hold):
/// enough for a pool's workers to be replaced, not a descriptor per child of a past burst.
const SPARE_TIES: usize = 16;

impl Ties {
    /// A supply with one tie made ahead, so that the first child does not wait for it.
    pub(crate) fn new(read: BorrowedFd<'_>) -> Ties {
        Ties {
            free: proc::hangup_killer(read).ok().into_iter().collect(),
        }
    }

    /// The tie for the next child: a kept one, else a new one.
    pub(crate) fn take(&mut self, read: BorrowedFd<'_>) -> Option<Tie> {
        if let Some(fd) = self.free.pop() {
            return Some(Tie { fd, armed: true });
        }
        match proc::hangup_killer(read) {
            Ok(fd) => Some(Tie { fd, armed: true }),
            Err(_) => read
                .try_clone_to_owned()
                .ok()
                .map(|fd| Tie { fd, armed: false }),
        }
    }

    /// Takes back the tie of a child that has been reaped (or never ran), for a later child.
    pub(crate) fn give_back(&mut self, tie: Tie) {
        if tie.armed && self.free.len() < SPARE_TIES && proc::disown(tie.fd.as_fd()).is_ok() {
            self.free.push(tie.fd);
        }
    }
}

/// In a fork server's child, whose id is `me`: exits as soon as the parent's pipe hangs up.
/// With an armed tie the kernel delivers `SIGKILL` at the hang-up and no thread is needed;
/// otherwise, or if the kernel refuses, a watcher thread does it. The child's copy of the tie
/// stays open for its whole life, and no other process may claim the tie while it lives.
pub(crate) fn tie(tie: Tie, me: u32) {
    if tie.armed {
        match proc::kill_me_on_hangup(tie.fd.as_fd(), me) {
            Ok(false) => {
                // The kernel's watch lasts as long as the description stays open: for life.
                std::mem::forget(tie.fd);
                return;
            }
            Ok(true) => proc::exit_now(1), // the parent is already gone
            Err(_) => {}
        }
    }
    watch(tie.fd);
}
