//! A chunk of one job as the dispatcher moves it: queued, in a worker's order, taken back,
//! answered. Dropped unanswered (the pool is going away), it answers `Terminated`, so no
//! waiter is ever left without an answer.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::memfile::Payload;
use crate::pool::job::{ChunkOutcome, JobState};
use crate::sys::fd::InternalFd;

/// One chunk: its arguments (encoded) and where its answer goes.
pub(crate) struct Chunk {
    pub(crate) id: u64,
    pub(crate) entry: i64,
    /// Its arguments, encoded (dropped as soon as it is answered: a large one's memory file
    /// is then free for the caller's next large task).
    pub(crate) payload: Payload,
    pub(crate) job: Arc<JobState>,
    pub(crate) index: usize,
    pub(crate) items: usize,
    answered: bool,
    /// Taken back from a worker that holds it but had not taken it (it will skip it): this is
    /// the inert entry left in that worker's order; a copy went back to the queue.
    pub(super) revoked: bool,
    /// Descriptors of the handles among its arguments: such a chunk goes on the socket.
    pub(super) handles: Vec<InternalFd>,
    /// Asked when a worker is picked for it, until it says `Go` or `Drop`.
    pub(super) on_start: Option<OnStart>,
    /// Its own time limit per task (`pool.timeout(d)`), instead of the pool's `task_timeout`.
    pub(crate) timeout: Option<Duration>,
}

/// A call (`apply_async`) on its way in: one chunk of one item, in parts, so that its task
/// can go to a worker before its job and chunk are made (`Dispatcher::place_call`).
pub(crate) struct Call {
    pub(crate) id: u64,
    pub(crate) entry: i64,
    /// Its arguments, encoded.
    pub(crate) payload: Payload,
    /// Descriptors of the handles among its arguments.
    pub(crate) handles: Vec<InternalFd>,
    /// Its own time limit (`pool.timeout(d)`).
    pub(crate) timeout: Option<Duration>,
}

impl Call {
    /// Its chunk, and the job that chunk answers.
    pub(crate) fn into_chunk(self) -> (Chunk, Arc<JobState>) {
        let job = JobState::single(self.id, 1);
        let chunk = Chunk::new(self.id, self.entry, self.payload, Arc::clone(&job), 0, 1)
            .with_handles(self.handles)
            .with_timeout(self.timeout);
        (chunk, job)
    }
}

/// Chunks submitted together: one (every `apply`) without a `Vec` to hold it, or many.
pub(crate) enum Chunks {
    One(Chunk),
    Many(Vec<Chunk>),
}

impl Chunks {
    pub(crate) fn as_slice(&self) -> &[Chunk] {
        match self {
            Chunks::One(c) => std::slice::from_ref(c),
            Chunks::Many(v) => v,
        }
    }

    pub(crate) fn into_vec(self) -> Vec<Chunk> {
        match self {
            Chunks::One(c) => vec![c],
            Chunks::Many(v) => v,
        }
    }

    /// Answers every one of them with `e`.
    pub(crate) fn fail(self, e: &Error) {
        match self {
            Chunks::One(c) => c.fail(e.clone()),
            Chunks::Many(v) => v.into_iter().for_each(|c| c.fail(e.clone())),
        }
    }
}

impl From<Chunk> for Chunks {
    fn from(c: Chunk) -> Chunks {
        Chunks::One(c)
    }
}

impl From<Vec<Chunk>> for Chunks {
    fn from(v: Vec<Chunk>) -> Chunks {
        Chunks::Many(v)
    }
}

/// See [`Chunk::on_start`].
pub(crate) type OnStart = Box<dyn FnMut() -> Verdict + Send>;

/// What a chunk's `on_start` says when a worker is picked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(feature = "remote"),
    expect(dead_code, reason = "only a remote agent's chunks have an on_start")
)]
pub(crate) enum Verdict {
    /// It goes to the worker.
    Go,
    /// It is dropped unrun (answered `Cancelled`).
    Drop,
    /// Not now: it stays first in the queue, and the pool hands out nothing more until it is
    /// woken (whoever said `Later` wakes it).
    Later,
}

impl Chunk {
    pub(crate) fn new(
        id: u64,
        entry: i64,
        payload: Payload,
        job: Arc<JobState>,
        index: usize,
        items: usize,
    ) -> Chunk {
        Chunk {
            id,
            entry,
            payload,
            job,
            index,
            items,
            answered: false,
            revoked: false,
            handles: Vec::new(),
            on_start: None,
            timeout: None,
        }
    }

    /// Its own time limit per task, if any (else the pool's `task_timeout` holds).
    pub(crate) fn with_timeout(mut self, timeout: Option<Duration>) -> Chunk {
        self.timeout = timeout;
        self
    }

    /// Asks `on_start` before a worker first gets it (a remote agent's entry, to mark running).
    #[cfg(feature = "remote")]
    pub(crate) fn with_on_start(mut self, on_start: OnStart) -> Chunk {
        self.on_start = Some(on_start);
        self
    }

    /// Asks its `on_start` (until it has said `Go` or `Drop`) whether it may go to a worker.
    pub(super) fn may_start(&mut self) -> Verdict {
        let Some(ask) = &mut self.on_start else {
            return Verdict::Go;
        };
        let verdict = ask();
        if verdict != Verdict::Later {
            self.on_start = None;
        }
        verdict
    }

    /// The descriptors of the handles among its arguments.
    pub(crate) fn with_handles(mut self, handles: Vec<InternalFd>) -> Chunk {
        self.handles = handles;
        self
    }

    /// Whether handles ride among its arguments (descriptors that cannot leave this host).
    #[cfg(feature = "remote")]
    pub(crate) fn has_handles(&self) -> bool {
        !self.handles.is_empty()
    }

    /// Gives the job this chunk's answer (an inert revoked entry has none to give: its copy
    /// answers).
    pub(crate) fn finish(mut self, outcome: ChunkOutcome) {
        // Its payload goes first: a large one's file is free before the caller, woken by the
        // answer, encodes its next task, and a small one's buffer is this thread's for the
        // next (a caller that reads its answer itself). (Answered by its worker, which
        // decoded it first.)
        if let Payload::Bytes(bytes) = std::mem::take(&mut self.payload) {
            crate::memfile::give_back_buffer(bytes);
        }
        if !self.revoked {
            self.job.deliver(self.index, outcome);
        }
        self.answered = true;
    }

    /// Leaves an inert entry here and returns the live copy (same id, same slot).
    /// The payload goes with the copy.
    pub(super) fn revoke(&mut self) -> Chunk {
        self.revoked = true;
        self.answered = true;
        Chunk::new(
            self.id,
            self.entry,
            std::mem::take(&mut self.payload),
            Arc::clone(&self.job),
            self.index,
            self.items,
        )
        .with_handles(std::mem::take(&mut self.handles))
        .with_gate(self.on_start.take())
        .with_timeout(self.timeout)
    }

    fn with_gate(mut self, on_start: Option<OnStart>) -> Chunk {
        self.on_start = on_start;
        self
    }

    /// Answers it with `err`, not from a worker: a memory file its arguments are in is let go,
    /// not written again, as a worker given it may not have finished reading it.
    pub(crate) fn fail(mut self, err: Error) {
        self.payload.discard();
        self.finish(Err(err));
    }

    /// Whether the job already has an answer for it (it was cancelled).
    pub(crate) fn answered(&self) -> bool {
        self.job.is_answered(self.index)
    }
}

impl Drop for Chunk {
    /// A chunk never answered fails `Terminated` (its payload let go first, as in
    /// [`Chunk::fail`]).
    fn drop(&mut self) {
        if !self.answered {
            self.payload.discard();
            self.payload = Payload::default();
            self.job
                .deliver(self.index, Err(ErrorKind::Terminated.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small payload's buffer, once its chunk is answered on this thread, is the one the
    /// next payload encoded here goes into (a caller that reads its own answers allocates
    /// none for its next call).
    #[test]
    fn an_answered_chunks_small_payload_buffer_is_the_next_ones() {
        let payload = Payload::encode(&[7u64; 4][..], true).unwrap();
        let Payload::Bytes(bytes) = &payload else {
            panic!("a small payload is bytes");
        };
        let at = bytes.as_ptr();
        let job = JobState::new();
        let index = job.add_chunk(1, 1);
        Chunk::new(1, 0, payload, job, index, 1).finish(Ok(Vec::new().into()));
        let Payload::Bytes(next) = Payload::encode(&1u8, true).unwrap() else {
            panic!("a small payload is bytes");
        };
        assert_eq!(next.as_ptr(), at, "the answered chunk's buffer");
    }

    #[test]
    fn a_chunk_taken_back_keeps_its_time_limit_in_its_copy() {
        let job = JobState::new();
        let index = job.add_chunk(1, 2);
        let limit = Some(Duration::from_millis(300));
        let mut held = Chunk::new(1, 0, vec![1, 2].into(), job, index, 2).with_timeout(limit);
        let copy = held.revoke();
        assert_eq!(copy.timeout, limit);
        assert!(matches!(&copy.payload, Payload::Bytes(b) if b[..] == [1, 2]));
        assert_eq!((copy.id, copy.items), (1, 2));
        assert!(held.revoked && !copy.revoked);
    }

    #[test]
    fn a_failed_chunks_file_is_let_go_an_answered_ones_reused() {
        use crate::memfile::{self, Payload, WORTH_A_FILE};
        let _alone = memfile::TASK_FILE_TESTS
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let large = || Payload::encode(&vec![5u8; WORTH_A_FILE + 1], true).unwrap();
        let chunk = |payload: Payload| {
            let job = JobState::new();
            let index = job.add_chunk(1, 1);
            Chunk::new(1, 0, payload, job, index, 1)
        };
        // Nothing kept: the next file is a new one unless this one is given back.
        memfile::forget_files();
        let (answered, failed, dropped) = (large(), large(), large());
        let ids = [Payload::file_identity(&answered), Payload::file_identity(&failed), Payload::file_identity(&dropped)];
        chunk(failed).fail(ErrorKind::Terminated.into());
        drop(chunk(dropped));
        chunk(answered).finish(Ok(Vec::<u8>::new().into()));
        let next = large();
        assert_eq!(Payload::file_identity(&next), ids[0], "the answered chunk's file is reused");
        let after = large();
        assert!(!ids[1..].contains(&Payload::file_identity(&after)), "a failed chunk's file was reused");
        memfile::forget_files();
    }
}
