//! The parent's handle on one started child.
//!
//! A child is done when it has ended (its exit status is known) and its outcome frame, if it
//! sent one, has been read. Both are watched at once: the control socket is drained while
//! waiting, so a child writing a result larger than the socket buffer is never stuck, and the
//! end of the process is seen through its pidfd (or, for a fork server child, through the
//! server's status report), never through end-of-file, which a leaked descriptor could delay.
//!
//! A fork server child outlives a server that is killed (a spare the server's death finds
//! taken lives on; see `forkserver`): the server's status channel then closes without a
//! report, and the child's end is watched on its pidfd instead (see [`Reaper::Adopted`]).

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use crate::channel::{self, Channel};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc::{self, Exit};
use crate::wire::message::Outcome;

/// Who learns how the child ended.
#[derive(Debug)]
pub(crate) enum Reaper {
    /// This process is the real parent: it reaps through the pidfd.
    Us,
    /// The fork server is the real parent and reports the exit status on this channel.
    Server(Channel),
    /// The fork server died before reporting, so another process adopted the child: the
    /// nearest subreaper among the server's ancestors, else init. If that is this process
    /// (it is a subreaper, or a container's init), it reaps the child as its parent and knows
    /// how it ended. Otherwise the adopter reaps it, and only the adopter learns its status
    /// from `wait`: the end is seen on the pidfd, and how it ended comes from the kernel's
    /// record ([`proc::exit_record`], Linux 6.15 and later, once the adopter has reaped it);
    /// failing that, from the outcome the child sent (a worker exits 0 after reporting a value
    /// and 1 after any other outcome); failing that, it is [`Exit::Unknown`].
    Adopted,
}

/// A started child.
#[derive(Debug)]
pub(crate) struct Child {
    pid: u32,
    pidfd: InternalFd,
    ctrl: Channel,
    reaper: Reaper,
    outcome: Option<Result<Outcome, Error>>,
    /// The descriptors that came with the outcome (of handles in the returned value).
    /// Listed as internal (kept while the outcome is): a child forked meanwhile does not
    /// inherit them.
    returned: Vec<InternalFd>,
    exit: Option<Exit>,
}

impl Child {
    pub(crate) fn new(pid: u32, pidfd: InternalFd, ctrl: Channel, reaper: Reaper) -> Child {
        Child {
            pid,
            pidfd,
            ctrl,
            reaper,
            outcome: None,
            returned: Vec::new(),
            exit: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends the child its encoded start message, giving it [`super::PATIENCE`] to read it.
    /// On failure the child is killed, and reaped like any dropped child.
    pub(crate) fn send_start(self, start: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Child, Error> {
        let deadline = fd::deadline_after(super::PATIENCE);
        match self.ctrl.send_frame_until(start, fds, deadline) {
            Ok(()) => Ok(self),
            Err(e) => {
                let _ = self.signal(libc::SIGKILL);
                Err(start_unsent(e))
            }
        }
    }

    /// Waits until the child has ended or `deadline` passes (`Ok(None)` then).
    pub(crate) fn wait(&mut self, deadline: Option<Instant>) -> Result<Option<Exit>, Error> {
        loop {
            self.pump_ctrl();
            if self.exit.is_none() {
                self.exit = self.check_exit()?;
            }
            if let Some(exit) = self.exit {
                // Everything it wrote before ending is in the socket buffer now.
                self.pump_ctrl();
                if exit == Exit::Unknown && matches!(self.reaper, Reaper::Adopted)
                    && let Some(Ok(outcome)) = &self.outcome {
                        self.exit = Some(Exit::Code(super::worker::exit_code_after(outcome)));
                    }
                return Ok(self.exit);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            let mut fds = vec![self.exit_fd()];
            if self.outcome.is_none() && !self.ctrl.at_eof() {
                fds.push(self.ctrl.fd());
            }
            fd::poll_read(&fds, deadline).map_err(|e| Error::os("waiting for a child", e))?;
        }
    }

    /// Reads whatever the child has sent, without blocking.
    fn pump_ctrl(&mut self) {
        if self.outcome.is_some() || self.ctrl.at_eof() {
            return;
        }
        match self.ctrl.try_recv_frame() {
            Ok(Some(frame)) => {
                self.outcome = Some(channel::decode_message(&frame));
                self.returned = self.ctrl.take_fds();
            }
            Ok(None) => {}
            // The peer closed without a frame: no outcome; the exit status tells why.
            Err(e) if *e.kind() == ErrorKind::Closed => {}
            Err(e) => self.outcome = Some(Err(e)),
        }
    }

    fn check_exit(&mut self) -> Result<Option<Exit>, Error> {
        match &mut self.reaper {
            Reaper::Us => {
                proc::try_reap(self.pidfd.as_fd()).map_err(|e| Error::os("reaping a child", e))
            }
            Reaper::Server(status) => match status.try_recv_frame() {
                Ok(Some(frame)) => channel::decode_message(&frame).map(Some),
                Ok(None) => Ok(None),
                // The server died before reporting; the child lives on, or ended unreported.
                Err(e) if *e.kind() == ErrorKind::Closed => {
                    self.reaper = Reaper::Adopted;
                    self.adopted_exit()
                }
                Err(e) => Err(e),
            },
            Reaper::Adopted => self.adopted_exit(),
        }
    }

    /// How an adopted child ended, once it has: reaped by this process if it adopted it, else
    /// the kernel's record, else `Unknown` (which [`Child::wait`] may refine from the outcome).
    fn adopted_exit(&self) -> Result<Option<Exit>, Error> {
        let pidfd = self.pidfd.as_fd();
        // Not our child: `try_reap` only looks (Unknown once it has ended).
        let exit = proc::try_reap(pidfd).map_err(|e| Error::os("reaping a child", e))?;
        Ok(exit.map(|exit| match exit {
            Exit::Unknown => proc::exit_record(pidfd).unwrap_or(Exit::Unknown),
            known => known,
        }))
    }

    /// Its control socket, to send on.
    pub(crate) fn channel_ref(&self) -> &Channel {
        &self.ctrl
    }

    /// The control channel, for a child that speaks more than one message (a pool worker).
    pub(crate) fn channel(&mut self) -> &mut Channel {
        &mut self.ctrl
    }

    /// The child's own pidfd (whoever reaps it).
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// The control channel's descriptor, for polling.
    pub(crate) fn channel_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ctrl.fd()
    }

    /// The descriptor that becomes readable when the child ends (or the fork server reports,
    /// or dies).
    pub(crate) fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match &self.reaper {
            Reaper::Us | Reaper::Adopted => self.pidfd.as_fd(),
            Reaper::Server(status) => status.fd(),
        }
    }

    /// How it ended, once it has, without reading the control channel. Never blocks.
    pub(crate) fn poll_exit(&mut self) -> Result<Option<Exit>, Error> {
        if self.exit.is_none() {
            self.exit = self.check_exit()?;
        }
        Ok(self.exit)
    }

    /// Takes the outcome the child sent, once it has ended (`None` if it sent none).
    pub(crate) fn take_outcome(&mut self) -> Option<Result<Outcome, Error>> {
        self.outcome.take()
    }

    /// Takes the descriptors that came with the outcome.
    pub(crate) fn take_returned(&mut self) -> Vec<InternalFd> {
        std::mem::take(&mut self.returned)
    }

    /// Sends a signal, through the pidfd so it can never reach a recycled pid.
    pub(crate) fn signal(&self, sig: i32) -> Result<(), Error> {
        if self.exit.is_some() {
            return Ok(());
        }
        proc::pidfd_signal(self.pidfd.as_fd(), sig).map_err(|e| Error::os("signalling a child", e))
    }
}

/// What a failed send of a new child's start message says: its socket closed means that the
/// child ended (killed as it started) before it read the whole message, so nothing ran; a
/// bare "the channel is closed" said nothing of that.
pub(crate) fn start_unsent(e: Error) -> Error {
    if *e.kind() == ErrorKind::Closed {
        Error::os(
            "sending a new child its start message",
            std::io::Error::other("the child ended before it read it (killed?); nothing ran"),
        )
    } else {
        e
    }
}

impl Drop for Child {
    /// A child dropped before it ended is left running; if we are (or may have become, by
    /// adoption) its real parent, a small thread waits to reap it so it never lingers as a
    /// zombie.
    fn drop(&mut self) {
        if self.exit.is_some() || matches!(self.reaper, Reaper::Server(_)) {
            return;
        }
        // Listed as it is made: a child forked by another thread meanwhile does not keep it.
        let pidfd = self.pidfd.as_fd();
        let Ok([pidfd]) = fd::create_internal(|| Ok([fd::dup_above(pidfd, 3)?])) else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("mproc-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = fd::poll_read(&[pidfd.as_fd()], None);
                let _ = proc::try_reap(pidfd.as_fd());
            });
    }
}
