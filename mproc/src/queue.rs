//! Queues between processes: [`Queue`], [`SimpleQueue`], [`JoinableQueue`].
//!
//! A queue lives in shared memory that every process holding it maps (see `queue/ring.rs`): a
//! put encodes the value straight into the ring and a get decodes straight out of it, with no
//! system call unless someone has to sleep, and no feeder thread: what `put` returned from is
//! in the queue, so a process's exit is never held up by data nobody read (Python's is,
//! gh-73983). Producers and consumers have a lock each, both robust: a process that dies in
//! the middle of a put or a get leaves the queue consistent, and every item is delivered
//! exactly once.
//!
//! A queue knows which processes hold it, and each process how many handles it has (handles
//! are `Send` but not `Sync`, so every thread that can use a queue holds a handle of its own
//! and the count is exact). When a get would wait forever because the queue was shared with
//! other processes and none of them holds it any more (they ended, were killed, or dropped
//! it), and the waiting handle is this process's only one, the get fails with `Closed`
//! instead of hanging (Python's hangs, gh-87971); likewise a put on a full bounded queue, and
//! a `join` with items no one is left to finish. A queue that never left its process waits
//! as Python's does.

mod holders;
mod joinable;
#[allow(
    clippy::module_inception,
    reason = "one file per queue type, named after its type, as in sync/"
)]
mod queue;
pub(crate) mod ring;
mod simple;
mod typed;

pub use joinable::JoinableQueue;
pub use queue::Queue;
pub use simple::SimpleQueue;

const KIND_QUEUE: u32 = 20;
const KIND_SIMPLE: u32 = 21;
const KIND_JOINABLE: u32 = 22;
