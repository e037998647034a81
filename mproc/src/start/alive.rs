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

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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

/// In a fork server, before forking a child: what the child will tie itself to the parent's
/// pipe `read` with. A description of the pipe of its own if one can be opened (the kernel
/// then kills the child itself, see [`tie`]), else a plain copy (for a watcher thread).
pub(crate) fn tie_for_child(read: BorrowedFd<'_>) -> Option<(OwnedFd, bool)> {
    match proc::reopen_pipe_reader(read) {
        Ok(own) => Some((own, true)),
        Err(_) => read.try_clone_to_owned().ok().map(|copy| (copy, false)),
    }
}

/// In a fork server's child: exits as soon as the parent's pipe hangs up. `own` says whether
/// `read` is a description of the child's own ([`tie_for_child`]): then the kernel delivers
/// `SIGKILL` at the hang-up and no thread is needed; otherwise, or if the kernel refuses, a
/// watcher thread does it.
pub(crate) fn tie(read: OwnedFd, own: bool) {
    if own {
        match proc::kill_me_on_hangup(read.as_fd()) {
            Ok(false) => {
                // The kernel's watch lasts as long as the description stays open: for life.
                std::mem::forget(read);
                return;
            }
            Ok(true) => proc::exit_now(1), // the parent is already gone
            Err(_) => {}
        }
    }
    watch(read);
}
