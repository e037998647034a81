//! [`Shared`] as a backend other than this dispatcher sees it (`pool/backend.rs`): it takes
//! the same commands and reports the same end.

use std::os::fd::{AsFd, BorrowedFd};

use super::{Command, Shared};

impl Shared {
    /// The commands posted since the last call (the wake-up descriptor is drained first, so
    /// a command posted after this call wakes it again).
    pub(crate) fn take_commands(&self) -> Vec<Command> {
        self.wake.drain();
        std::mem::take(&mut self.inbox().commands).into()
    }

    /// Readable when a command was posted.
    pub(crate) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Wakes whoever waits on [`wake_fd`](Self::wake_fd).
    pub(crate) fn nudge(&self) {
        self.wake.notify();
    }
}
