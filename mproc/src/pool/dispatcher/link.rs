//! [`Link`]: one worker as the dispatcher's loop reaches it, whatever kind of worker it is.
//!
//! The loop keeps the books (which chunks a worker holds, in order; its [`WorkerState`];
//! its pace) and makes every decision; a link only carries: chunks out, answers and notes
//! in, the worker's count of tasks taken and the claim on each, the sleep words that spare
//! wake-ups, and the worker's end. Today's one kind is [`LocalLink`]: a child process with
//! its lane. A remote kind implements the same trait, and the loop does not change.
//!
//! Every method is called on the dispatcher's thread or by a thread holding its state. The
//! loop is generic over the kind (static dispatch), so the local kind costs what its code did
//! before it was behind this trait. `dispatcher/tests.rs` drives the loop through a fake kind.
//!
//! [`WorkerState`]: super::state::WorkerState
//! [`LocalLink`]: super::local::LocalLink

use std::os::fd::RawFd;
use std::time::Instant;

use super::chunk::Chunk;
use super::config::Config;
pub(crate) use crate::pool::lane::Peer;
use crate::error::Error;
use crate::sys::fd;

/// One answer: the chunk's id and its outcome (the encoded values, or why it failed).
pub(crate) type Answer = (u64, Result<crate::pool::task::Answered, Error>);

/// What became of a chunk offered to a worker.
pub(crate) enum Sent {
    /// It is in the worker's order, behind those it holds.
    Placed,
    /// The worker has no room now: offer it later.
    Full,
    /// The chunk cannot be sent (its handles could not be passed): it fails with this.
    Refused(Error),
    /// The worker broke the protocol (its lane is corrupt): condemn it, offer the chunk
    /// elsewhere.
    Broken(Error),
}

/// What a worker said besides answers.
pub(crate) enum Note {
    /// Its initializer ran: it takes chunks.
    Ready,
    /// Its initializer failed: the pool is broken.
    InitFailed(Error),
    /// It can say nothing more: it is exiting.
    Closed,
    /// It broke the protocol: it cannot be trusted with more work.
    Garbage(Error),
}

/// What `poll` said of a worker's descriptors.
pub(crate) struct Polled {
    /// It has something to read (notes, answers).
    pub(crate) read: bool,
    /// It may have ended.
    pub(crate) exited: bool,
}

/// One worker, as the dispatcher's loop talks to it.
pub(crate) trait Link: Sized {
    /// A worker [`begin`](Link::begin) started, not waited for yet.
    type Launch;

    /// Starts a worker as `config` says, without waiting for it where its start method lets
    /// the caller go on.
    fn begin(config: &Config) -> Result<Self::Launch, Error>;

    /// The worker `launch` became, once started (`config`: what `begin` was given, to try
    /// again a start that failed before anything ran).
    fn finish(launch: Self::Launch, config: &Config) -> Result<Self, Error>;

    /// Starts `n` workers as `config` says, all begun before the first is waited for (a fork
    /// server then forks one while the others start).
    fn launch_many(config: &Config, n: usize) -> Vec<Result<Self, Error>> {
        let begun: Vec<_> = (0..n).map(|_| Self::begin(config)).collect();
        begun
            .into_iter()
            .map(|launch| launch.and_then(|launch| Self::finish(launch, config)))
            .collect()
    }

    /// Offers `chunk`, behind the ones the worker holds (`scratch`: a buffer to encode in).
    fn send(&mut self, chunk: &Chunk, scratch: &mut Vec<u8>) -> Sent;

    /// Offers a task given as its parts, before its chunk is made: chunk `id`, calling `entry`
    /// on `payload`, with no handles (a call's quick way, `Dispatcher::place_call`). `None`
    /// when it must go as a whole chunk ([`send`](Link::send)): too large for this way, or a
    /// kind of worker that takes only chunks. A worker asleep is not woken yet: the caller
    /// must call [`wake_if_asleep`](Link::wake_if_asleep) once it has put the chunk in its
    /// books, before it lets go (the look at the worker's word needs a fence, which, right
    /// after the push, waited for the frame's line to leave this CPU: some 40 ns of each
    /// call's way).
    ///
    /// With `asleep`, for a worker whose every answer has been read: the reader is marked
    /// asleep with the frame, so the worker wakes it after its answer to this chunk (as
    /// [`Link::prepare_sleep`], without looking for answers: none can come before the chunk).
    fn send_small(
        &mut self,
        id: u64,
        entry: i64,
        payload: &[u8],
        scratch: &mut Vec<u8>,
        asleep: bool,
    ) -> Option<Sent> {
        let _ = (id, entry, payload, scratch, asleep);
        None
    }

    /// Wakes the worker if it sleeps (after [`send_small`](Link::send_small)).
    fn wake_if_asleep(&mut self) {}

    /// Tells it to exit once it has answered what it holds.
    fn stop(&mut self);

    /// Writes what it can of what waits to be sent, without blocking.
    fn flush(&mut self);

    /// Whether something still waits to be sent (the loop then waits for room to write).
    fn queued(&self) -> bool;

    /// Its next answer, in the order its chunks were sent; `Ok(None)` when none is there yet;
    /// `Err` when it broke the protocol.
    fn next_answer(&mut self, scratch: &mut Vec<u8>) -> Result<Option<Answer>, Error>;

    /// Its next note, if it said one.
    fn next_note(&mut self) -> Option<Note>;

    /// How many chunks it has taken (each counted before it runs).
    fn started(&self) -> u64;

    /// Takes back its `task`-th chunk (counting from 1), unless it has claimed it: exactly
    /// one of the two wins. Returns whether the dispatcher won (the worker skips it).
    fn revoke(&self, task: u64) -> bool;

    /// Before the reader sleeps: marks it asleep, so the worker wakes it after its next
    /// answer, or, with `ahead` > 0, only at an answer after which at most `ahead` of the
    /// chunks it holds are left to start (or none is). `false` if an answer came meanwhile
    /// (read it first).
    fn prepare_sleep(&self, ahead: u64) -> bool;

    /// [`prepare_sleep`](Link::prepare_sleep)`(0)` for a worker whose every answer was read
    /// before it was handed the `held` chunks it holds now: the worker wakes the reader only
    /// at an answer to one of those, so that a worker still on its way from its last answer
    /// (read already) does not take the word for that answer's (see `Lane::push_asleep`).
    fn prepare_sleep_held(&self, held: u64) -> bool;

    /// The reader is awake: the worker publishes answers without waking anyone.
    fn awake(&self);

    /// Says that the thread reading it runs on `cpu`, and whether a worker on that CPU may
    /// move to another (`room`; `None`: as last said); where the worker last said it runs
    /// (`Unsaid` for a worker that is not a process of this host).
    fn say_cpu(&self, cpu: u32, room: Option<bool>) -> Peer {
        let _ = (cpu, room);
        Peer::Unsaid
    }

    /// Adds the descriptors to wait on for it to `fds` (`write`: wait for room to write what
    /// is queued, too); returns how many.
    fn watch(&self, fds: &mut Vec<(RawFd, bool)>, write: bool) -> usize;

    /// Takes what `poll` reported for the descriptors `watch` added (writing what it can).
    fn polled(&mut self, ready: &[fd::Ready]) -> Polled;

    /// Once it has ended: the error for chunks lost with it. After this, answers it sent
    /// before the end are still read, then nothing.
    fn exited(&mut self) -> Option<Error>;

    /// Kills it; its end is seen through [`exited`](Link::exited).
    fn kill(&mut self);

    /// Waits until it has ended, or `deadline`; whether it has.
    fn wait(&mut self, deadline: Option<Instant>) -> bool;

    /// Its process id, if it has one.
    fn pid(&self) -> Option<u32> {
        None
    }

    /// Its process name.
    fn name(&self) -> &str {
        ""
    }

    /// What it says of its work at `now_ns` (`CLOCK_MONOTONIC`): nanoseconds busy, and
    /// panics caught in its tasks. For the statistics only.
    fn work(&self, now_ns: u64) -> (u64, u64) {
        let _ = now_ns;
        (0, 0)
    }
}
