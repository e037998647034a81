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
use super::{alive, at_fork, forkserver, worker};
use crate::Error;
use crate::channel::Channel;
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc::{self, Forked};

pub(crate) fn launch(start: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Child, Error> {
    crate::panics::ensure_hook();
    // Done once here (for this thread) rather than in every child.
    worker::prepare_inherited();
    // Every lock the child will take is held across the fork, so the child inherits it held
    // by its own thread instead of by a thread that does not exist there, in the crate's lock
    // order (see `at_fork`): the standard streams, the fork server's slot, the hooks of the
    // modules above `start`, then this module's own.
    // The streams first: user code holds them around anything (making a queue, starting a
    // process), so a fork that waited for them holding another lock could deadlock with it.
    // Reentrant, so the child can use them; flushed, so buffered output is not written twice.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.flush();
    let stderr = std::io::stderr().lock();
    let mut server = forkserver::lock();
    let mut sides = None;
    let forked = at_fork::around(&mut || fork_holding_the_rest(&mut server, &mut sides));
    drop(server);
    drop((stdout, stderr));
    match (forked?, sides.expect("set by every fork that did not fail")) {
        (Forked::Child, Sides::Child(child)) => child.run(),
        (Forked::Parent(pid), Sides::Parent(parent_end)) => {
            let pidfd = super::pidfd_for_our_child(pid)?;
            Child::new(pid, pidfd, Channel::new(parent_end), Reaper::Us).send_start(start, fds)
        }
        _ => unreachable!("each side sets its own"),
    }
}

/// What each side keeps of a fork.
enum Sides {
    Child(ForkChild),
    Parent(InternalFd),
}

/// What the child needs once the locks are released: its end of the control socket, and what
/// it watches its parent with.
struct ForkChild {
    ctrl: InternalFd,
    parent: u32,
    from_main_thread: bool,
    alive_read: OwnedFd,
}

impl ForkChild {
    fn run(self) -> ! {
        watch_parent(self.parent, self.from_main_thread, self.alive_read);
        worker::run(self.ctrl)
    }
}

/// Forks, holding this module's locks (the standard streams and the fork server's slot,
/// `server`, are taken by the caller); the child closes mproc's descriptors that are not its own and forgets the parent's
/// bookkeeping before it lets go of them.
fn fork_holding_the_rest(
    server: &mut Option<forkserver::Server>,
    sides: &mut Option<Sides>,
) -> Result<Forked, Error> {
    let mut alive_slot = alive::lock();
    let alive_read = alive::reader_locked(&mut alive_slot)?;
    let current = crate::current::lock();
    let [parent_end, child_end] = super::socket_pair()?;
    let parent = proc::getpid();
    let from_main_thread = proc::is_main_thread();
    // Last: it holds off other threads' receives of descriptors until the fork is done.
    let internal = fd::lock_for_fork();
    let forked = proc::fork().map_err(|e| Error::os("fork", e))?;
    match forked {
        Forked::Child => {
            internal.close_all_except(&[child_end.as_fd().as_raw_fd()]);
            // These were the parent's; their descriptors are closed now, so forget them
            // without running their destructors.
            std::mem::forget(parent_end);
            std::mem::forget(alive_slot.take());
            std::mem::forget(server.take());
            // Another thread of the parent may have held std's backtrace lock at the fork.
            crate::panics::forked();
            *sides = Some(Sides::Child(ForkChild {
                ctrl: InternalFd::new(child_end.into_owned()),
                parent,
                from_main_thread,
                alive_read,
            }));
        }
        Forked::Parent(_) => {
            drop(internal);
            drop(child_end);
            *sides = Some(Sides::Parent(parent_end));
        }
    }
    drop((current, alive_slot));
    Ok(forked)
}

/// Makes the child die with its parent. When the parent forked from its main thread, whose end
/// is the process's end, the kernel does it (`PR_SET_PDEATHSIG`) at no cost; otherwise that
/// signal would fire when the forking thread ends, so the kernel kills it when the liveness pipe
/// hangs up (see [`alive::tie_forked`]).
fn watch_parent(parent: u32, from_main_thread: bool, alive_read: OwnedFd) {
    if from_main_thread && proc::kill_me_with_parent().is_ok() {
        if proc::getppid() != parent {
            proc::exit_now(1); // the parent died before the signal was armed
        }
        drop(alive_read);
    } else {
        alive::tie_forked(alive_read);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    /// A fork's hold on the list of internal descriptors waits for a receive under way (it may
    /// have descriptors the kernel put in the table and nobody listed yet), and a receive that
    /// starts while a fork holds it waits for the fork to be done.
    #[test]
    fn a_fork_and_the_receives_of_descriptors_wait_for_each_other() {
        // Forks are one at a time: as `launch` does, under the fork server's slot.
        let slot = forkserver::lock();
        let (entered, left) = (Arc::new(Barrier::new(2)), Arc::new(AtomicBool::new(false)));
        let receiver = {
            let (entered, left) = (Arc::clone(&entered), Arc::clone(&left));
            std::thread::spawn(move || {
                let receiving = fd::receiving();
                entered.wait();
                std::thread::sleep(Duration::from_millis(50));
                left.store(true, Ordering::SeqCst);
                drop(receiving);
            })
        };
        entered.wait();
        let snapshot = fd::lock_for_fork();
        assert!(left.load(Ordering::SeqCst), "the fork went ahead of a receive under way");
        receiver.join().unwrap();
        let (started, received) = (Arc::new(Barrier::new(2)), Arc::new(AtomicBool::new(false)));
        let late = {
            let (started, received) = (Arc::clone(&started), Arc::clone(&received));
            std::thread::spawn(move || {
                started.wait();
                let receiving = fd::receiving();
                received.store(true, Ordering::SeqCst);
                drop(receiving);
            })
        };
        started.wait();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!received.load(Ordering::SeqCst), "a receive began during the fork");
        drop(snapshot);
        late.join().unwrap();
        assert!(received.load(Ordering::SeqCst));
        drop(slot);
    }
}
