//! Chunks submitted as bytes: an entry and its encoded arguments in, the encoded answer out,
//! as a remote agent hands the chunks it reads to its local pool without knowing their types.

use std::sync::Arc;

use super::Pool;
use super::dispatcher::{Chunk, Shared, Verdict};
use super::job::{ChunkOutcome, JobState};
use crate::error::{Error, ErrorKind};

/// One chunk submitted with [`Pool::submit_raw`]: cancel it while it waits or runs.
#[derive(Clone)]
pub(crate) struct RawTask {
    job: Arc<JobState>,
    shared: Arc<Shared>,
}

impl RawTask {
    /// Cancels it: skipped if not started, its worker killed if running. Its callback gets
    /// `Cancelled` (once, as always).
    pub(crate) fn cancel(&self) {
        let ids = self.job.fail_waiting(&ErrorKind::Cancelled.into());
        if !ids.is_empty() {
            self.shared.cancel(ids);
        }
    }
}

/// Wakes a pool's dispatcher: a chunk's `on_start` said [`Verdict::Later`], and now it may go.
#[derive(Clone)]
pub(crate) struct Waker(Arc<Shared>);

impl Waker {
    pub(crate) fn wake(&self) {
        self.0.nudge();
    }
}

impl Pool {
    /// What wakes this pool's dispatcher (see [`Waker`]).
    pub(crate) fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.shared))
    }

    /// Submits one chunk of `items` items already encoded for the trampoline at `entry`
    /// (a chunk entry of this build, or an offset a worker refuses with an error);
    /// `on_start` is asked just before a worker gets it (see [`Verdict`]: dropped unrun, it is
    /// answered `Cancelled`); `done` gets its answer, once, on whichever thread sees it first.
    pub(crate) fn submit_raw(
        &self,
        entry: i64,
        payload: Vec<u8>,
        items: usize,
        timeout: Option<std::time::Duration>,
        on_start: impl FnMut() -> Verdict + Send + 'static,
        done: impl FnOnce(ChunkOutcome) + Send + 'static,
    ) -> Result<RawTask, Error> {
        self.shared.check_open()?;
        let id = self.shared.chunk_id();
        let job = JobState::single(id, items);
        let index = 0;
        let chunk = Chunk::new(id, entry, payload.into(), Arc::clone(&job), index, items)
            .with_on_start(Box::new(on_start))
            .with_timeout(timeout);
        let answered = Arc::clone(&job);
        job.on_complete(Box::new(move || {
            let outcome = answered
                .lock()
                .slot_mut(index)
                .and_then(|s| s.outcome.take())
                .unwrap_or_else(|| Err(ErrorKind::Terminated.into()));
            done(outcome);
        }));
        self.shared.submit(chunk, true)?;
        Ok(RawTask {
            job,
            shared: Arc::clone(&self.shared),
        })
    }
}
