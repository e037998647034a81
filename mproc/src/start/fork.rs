//! The `Fork` start method: the child is a copy of the calling process.
//!
//! Everything the child will touch after `fork` is made ready, and every lock of mproc's
//! that it will take is held by the forking thread across the call, so the child inherits them
//! in a known state (held by itself) instead of held by a thread that no longer exists. The
//! child then closes mproc's descriptors that belong to other children and the parent's
//! bookkeeping (the fork server socket, the write end of the liveness pipe), watches the
//! parent's liveness pipe, and runs the worker.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::child::{Child, Reaper};
use super::{alive, forkserver, keeper, worker};
use crate::Error;
use crate::channel::Channel;
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc::{self, Forked};

pub(crate) fn launch(start: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Child, Error> {
    crate::panics::ensure_hook();
    // Every lock the child will take is held across the fork, so the child inherits it held
    // by its own thread instead of by a thread that does not exist there. The order is the
    // crate's lock order: fork server, shared-memory keeper, liveness pipe, standard streams,
    // process identity, live queues, descriptor list (the slow ones first, so nothing else
    // waits behind a fork server or keeper start).
    let mut server = forkserver::lock();
    let mut keeper = keeper::lock();
    let mut alive_slot = alive::lock();
    let alive_read = alive::reader_locked(&mut alive_slot)?;
    // Reentrant, so the child can use them; flushed, so buffered output is not written twice.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.flush();
    let stderr = std::io::stderr().lock();
    let current = crate::current::lock();
    let [parent_end, child_end] = super::socket_pair()?;
    let parent = proc::getpid();
    let from_main_thread = proc::is_main_thread();
    let mut queues = crate::queue::live_queues();
    let internal = fd::lock_internal();
    match proc::fork().map_err(|e| Error::os("fork", e))? {
        Forked::Child => {
            internal.close_all_except(&[child_end.as_fd().as_raw_fd()]);
            // These were the parent's; their descriptors are closed now, so forget them
            // without running their destructors.
            std::mem::forget(parent_end);
            std::mem::forget(alive_slot.take());
            std::mem::forget(server.take());
            std::mem::forget(keeper.take());
            drop((queues, current, server, keeper, alive_slot, stdout, stderr));
            let ctrl = InternalFd::new(child_end.into_owned());
            watch_parent(parent, from_main_thread, alive_read);
            worker::run(ctrl)
        }
        Forked::Parent(pid) => {
            drop(internal);
            // The child inherited every queue this process holds.
            queues.count_fork_child(pid);
            drop((queues, current, server, keeper, alive_slot, stdout, stderr));
            drop(child_end);
            let pidfd = super::pidfd_for_our_child(pid)?;
            Child::new(pid, pidfd, Channel::new(parent_end), Reaper::Us).send_start(start, fds)
        }
    }
}

/// Makes the child die with its parent. When the parent forked from its main thread, whose end
/// is the process's end, the kernel does it (`PR_SET_PDEATHSIG`) at no cost; otherwise that
/// signal would fire when the forking thread ends, so a small thread watches the liveness pipe.
fn watch_parent(parent: u32, from_main_thread: bool, alive_read: OwnedFd) {
    if from_main_thread && proc::kill_me_with_parent().is_ok() {
        if proc::getppid() != parent {
            proc::exit_now(1); // the parent died before the signal was armed
        }
        drop(alive_read);
    } else {
        alive::watch(alive_read);
    }
}
