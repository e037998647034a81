//! The messages of the start-up and result protocol.
//!
//! Parent to child, on the child's control socket: one [`Start`]. Child to parent: one
//! [`Outcome`], then the child exits. Parent to fork server: one [`Hello`], answered by one
//! [`Welcome`]; then one [`ForkRequest`] per child, carrying the child's control socket and a
//! status socket; on the status socket the server answers [`Forked`] (with a pidfd attached)
//! and later the child's [`crate::sys::proc::Exit`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, PanicReport};

/// Everything a child needs to run its target.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Start {
    /// The parent's build identity; the child refuses to run if its own differs.
    pub(crate) identity: u64,
    /// The trampoline's offset from the anchor symbol.
    pub(crate) entry: i64,
    /// The target's name, for messages.
    pub(crate) target: String,
    /// The child's process name.
    pub(crate) name: String,
    /// Python's `_identity`: the counters from the main process down to this child.
    pub(crate) lineage: Vec<u32>,
    /// The encoded argument tuple.
    #[serde(with = "serde_bytes")]
    pub(crate) args: Vec<u8>,
}

/// How a target ended, sent by the child just before it exits.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// It returned; the encoded value.
    Returned(#[serde(with = "serde_bytes")] Vec<u8>),
    /// It panicked.
    Panicked(PanicReport),
    /// Its arguments or result could not be converted.
    Failed(Error),
    /// The child runs a different build and did not call anything.
    Refused,
}

/// The first message to a new fork server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) identity: u64,
}

/// The fork server's answer to [`Hello`]: whether the builds match.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Welcome {
    pub(crate) accepted: bool,
}

/// Asks the fork server for a child; the child's control socket and the status socket ride
/// along as descriptors.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ForkRequest;

/// The fork server's first answer on a status socket: the child's pid (a pidfd is attached).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Forked {
    pub(crate) pid: u32,
}
