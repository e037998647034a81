//! Progress bars on stderr for the map family (feature `progress`, indicatif's): made by
//! [`Pool::progress`](crate::Pool::progress) or [`Chunked::progress`](crate::Chunked::progress).
//!
//! A bar shows the items done, the total, the rate and the ETA. It is drawn only when stderr
//! is a terminal (a log file or a pipe gets nothing). `map` and `starmap` draw it on the
//! calling thread while they wait; their `_async` forms on a thread of their own, until the
//! job is complete; `imap` and `imap_unordered` as their items are taken (a spinner when
//! the input's length is unknown).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::job::{JobInner, JobState};

/// How often a bar that follows a job is redrawn (indicatif draws at most 20 times a second).
const TICK: Duration = Duration::from_millis(100);

/// One bar on stderr, hidden unless stderr is a terminal.
pub(crate) struct Bar(ProgressBar);

impl Bar {
    /// A bar of `len` items, or a spinner counting them when `len` is unknown.
    pub(crate) fn new(len: Option<usize>) -> Bar {
        Bar::drawn_if(len, std::io::stderr().is_terminal())
    }

    /// The same, drawn on stderr only if `terminal`.
    fn drawn_if(len: Option<usize>, terminal: bool) -> Bar {
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(len.map(|n| n as u64), target);
        let template = match len {
            Some(_) => "{bar:40.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}, {per_sec}]",
            None => "{spinner} {pos} [{elapsed_precise}, {per_sec}]",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("##-"));
        }
        Bar(bar)
    }

    /// Whether it draws nothing (stderr is not a terminal).
    pub(crate) fn is_hidden(&self) -> bool {
        self.0.is_hidden()
    }

    /// One more item done.
    pub(crate) fn inc(&self) {
        self.0.inc(1);
    }

    /// The end: the bar stays on screen as it is.
    pub(crate) fn finish(&self) {
        self.0.abandon();
    }

    /// Follows `job` on this thread until it is complete, then leaves the bar as it ends.
    pub(crate) fn follow(&self, job: &JobState) {
        loop {
            let (done, total) = job.progress();
            self.0.set_length(total as u64);
            self.0.set_position(done as u64);
            let tick = Instant::now() + TICK;
            if job.wait_for(Some(tick), false, JobInner::complete).is_some() {
                break;
            }
        }
        let (done, total) = job.progress();
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
        self.finish();
    }
}

/// Follows `job` with a bar on a thread of its own (for the `_async` forms); nothing when
/// stderr is not a terminal.
pub(crate) fn follow_in_background(job: &Arc<JobState>) {
    let bar = Bar::new(Some(job.progress().1));
    if bar.is_hidden() {
        return;
    }
    let job = Arc::clone(job);
    // Without a thread, no bar: the job itself goes on regardless.
    let _ = std::thread::Builder::new()
        .name("mproc-progress".into())
        .spawn(move || bar.follow(&job));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bar_is_drawn_when_stderr_is_not_a_terminal() {
        assert!(Bar::drawn_if(Some(10), false).is_hidden());
        assert!(Bar::drawn_if(None, false).is_hidden());
    }

    #[test]
    fn a_bar_follows_a_job_to_its_end() {
        let job = JobState::new();
        job.add_chunk(1, 3);
        job.add_chunk(2, 2);
        job.seal();
        let bar = Bar::new(Some(5));
        let follower = {
            let job = Arc::clone(&job);
            std::thread::spawn(move || {
                bar.follow(&job);
                (bar.0.position(), bar.0.length())
            })
        };
        job.deliver(0, Ok(Vec::new().into()));
        assert_eq!(job.progress(), (3, 5));
        job.deliver(1, Err(crate::ErrorKind::Cancelled.into()));
        assert_eq!(follower.join().unwrap(), (5, Some(5)));
    }
}
