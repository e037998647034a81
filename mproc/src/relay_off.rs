//! The log relay's face in a build without the `tracing` feature (`relay.rs` is the real one):
//! no child is ever given a pipe, so its callers need no feature gates of their own.

use std::convert::Infallible;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Never made in this build.
pub(crate) struct LogPipe(Infallible);

/// No subscriber can want a child's events in this build.
pub(crate) fn log_pipe() -> Option<LogPipe> {
    None
}

impl LogPipe {
    pub(crate) fn level(&self) -> u8 {
        match self.0 {}
    }

    pub(crate) fn write(&self) -> BorrowedFd<'_> {
        match self.0 {}
    }

    pub(crate) fn relay(self, _name: &str, _pid: u32) {
        match self.0 {}
    }
}

/// In a child: a parent of another build asked for its events; its pipe is closed.
pub(crate) fn forward(pipe: OwnedFd, _level: u8) -> Option<()> {
    drop(pipe);
    None
}
