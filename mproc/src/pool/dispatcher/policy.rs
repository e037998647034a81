//! The dispatcher's scheduling rules, as pure functions of what it knows: how many chunks a
//! worker may hold (its window), which worker takes the next chunk, when the chunks waiting
//! behind a slow one are taken back and which, when a running chunk has overrun, when a worker
//! is retired, how many workers to start, and what a dead worker was running. Nothing here
//! reads a clock, touches a process or does I/O (the time is passed in), so every rule is
//! unit-tested below without a child process.

use std::ops::Range;
use std::time::{Duration, Instant};

/// Chunks a worker may hold at once when they are slow: the one it runs and the next, already
/// in its lane, so it never waits for the dispatcher between tasks.
pub(crate) const WINDOW: usize = 2;

/// The most chunks a worker whose chunks are quick may hold: enough that a stream of tiny
/// tasks (a microsecond each) keeps it busy for all of `DEPTH` while the dispatcher sleeps or
/// waits for a CPU (on a machine with fewer cores than threads it often does).
pub(crate) const MAX_WINDOW: usize = 1024;
// A claim slot must outlive every task a worker may hold.
const _: () = assert!(MAX_WINDOW <= crate::pool::lane::MARKS);

/// How much work (by the worker's running average) its window may hold: little enough that
/// few tasks wait behind one that turns out slow.
const DEPTH: Duration = Duration::from_millis(1);

/// Chunks faster than this (on average, in µs) count as quick; the units of the two below.
const QUICK_MICROS: u64 = 200;

/// A running chunk older than this is slow: the window stops growing, and the chunks waiting
/// behind it may be taken back.
const SLOW: Duration = Duration::from_micros(5 * QUICK_MICROS);

/// A new worker's running average: cautious, the window deepens once chunks prove quick.
pub(crate) const FIRST_AVERAGE: Duration = Duration::from_micros(2 * QUICK_MICROS);

/// How many chunks a worker may hold: [`WINDOW`] while the chunk it runs has run for `SLOW`
/// (`running_for`; `None` when it holds nothing), else as many as fit in `DEPTH` at its
/// `average` pace, between [`WINDOW`] and [`MAX_WINDOW`].
pub(crate) fn window(running_for: Option<Duration>, average: Duration) -> usize {
    if running_for.is_some_and(|age| age >= SLOW) {
        return WINDOW;
    }
    let each = (average.as_nanos() as u64).max(1);
    usize::try_from(DEPTH.as_nanos() as u64 / each)
        .unwrap_or(MAX_WINDOW)
        .clamp(WINDOW, MAX_WINDOW)
}

/// How many of the `held` chunks of a worker (no more than its window) may be left to start
/// when it wakes the sleeping dispatcher: none (it wakes it after its next answer) when it
/// holds few, or its running chunk has turned slow (its window is then `WINDOW`); half of them
/// when it holds many quick ones, so one wake-up reads half a window of answers and tops the
/// lane up while the other half runs, instead of a wake-up (and on a busy machine a CPU taken
/// from a worker) for every answer.
pub(crate) fn defer(held: usize) -> usize {
    if held >= DEFER_FROM { held / 2 } else { 0 }
}

/// Below this many chunks held, a worker wakes the dispatcher after each answer.
const DEFER_FROM: usize = 8;

/// How long the dispatcher thread sleeps at most while a worker defers waking it: an answer
/// published before the worker started a slow chunk (whose answer would wake it) is read
/// within about this long, later only if the dispatcher has to wait for a CPU.
pub(crate) const DEFERRED: Duration = Duration::from_micros(500);

/// The running average of a worker's chunk times after one took `took`.
pub(crate) fn next_average(average: Duration, took: Duration) -> Duration {
    // In whole nanoseconds (a `u64` holds 584 years): `Duration`'s own operators divide by
    // the number they are passed, several 64-bit divisions on every answer (a quick `apply`
    // read 376 ns against 386 without them).
    Duration::from_nanos(nanos(average).saturating_mul(7).saturating_add(nanos(took)) / 8)
}

/// `d` in nanoseconds, at most `u64::MAX`.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The running average after `chunks` chunks took `took` together (their answers read in one
/// go): each counts as an equal share. (Counting the first as all of it and the rest as
/// nothing would drive the average towards zero, and the window to its cap, whenever answers
/// are read in batches.)
pub(crate) fn average_after(average: Duration, took: Duration, chunks: u64) -> Duration {
    let each = match chunks {
        0 => return average,
        1 => took, // nearly always, and without a division
        _ => Duration::from_nanos(nanos(took) / chunks),
    };
    // Past 128 shares the old average weighs less than (7/8)^128, 4e-8.
    (0..chunks.min(128)).fold(average, |a, _| next_average(a, each))
}

/// Which worker takes the next chunk, given each one's `(held, limit)`: the least loaded of
/// those with room (the first of equals); `None` when every one is full.
pub(crate) fn least_loaded(loads: impl IntoIterator<Item = (usize, usize)>) -> Option<usize> {
    loads
        .into_iter()
        .enumerate()
        .filter(|&(_, (held, limit))| held < limit)
        .min_by_key(|&(_, (held, _))| held)
        .map(|(at, _)| at)
}

/// Whether a worker holding `held` chunks with this `window` could take one taken back from
/// another now (up to [`WINDOW`]: a rebalance never fills a deep window).
pub(crate) fn has_room(held: usize, window: usize) -> bool {
    held < window.min(WINDOW)
}

/// When the chunks waiting behind a running chunk (running since `since`) should be taken
/// back: once it is slow, if any wait behind it (`held > 1`) and they were not already taken
/// back for this one. A worker still `starting` (it has not said `Ready`) may give back even
/// its first, once it has held it that long.
pub(crate) fn rebalance_at(
    held: usize,
    since: Instant,
    done_for_this_one: bool,
    starting: bool,
) -> Option<Instant> {
    let waiting = if starting { held > 0 } else { held > 1 };
    (waiting && !done_for_this_one).then(|| since + SLOW)
}

/// The places in a worker's order (of `held` chunks) that may be taken back, given how many
/// of them it has taken (`taken`): those after the one it runs, or after its first if it has
/// taken none yet (that one is about to run; taking it back would gain nothing), unless it is
/// still `starting` (then its first may wait long).
pub(crate) fn untaken(taken: usize, held: usize, starting: bool) -> Range<usize> {
    if starting {
        taken..held
    } else {
        taken.max(1)..held
    }
}

/// When a chunk of `items` tasks, running since `since`, passes the per-task `timeout`.
pub(crate) fn deadline(since: Instant, timeout: Option<Duration>, items: usize) -> Option<Instant> {
    let allowed = timeout?.checked_mul(items.max(1) as u32)?;
    since.checked_add(allowed)
}

/// Whether a worker that has been given `given` chunks is retired (told to stop once done).
pub(crate) fn retire(given: usize, max_tasks_per_child: Option<usize>) -> bool {
    max_tasks_per_child.is_some_and(|max| given >= max)
}

/// How many workers to start when `occupied` of the pool's `processes` slots are taken.
pub(crate) fn to_start(occupied: usize, processes: usize) -> usize {
    processes.saturating_sub(occupied)
}

/// Whether a worker that died had taken a chunk it never answered (its oldest unanswered
/// one, which then fails; the ones behind it never started and are requeued).
pub(crate) fn was_running(started: u64, answered: u64) -> bool {
    started > answered
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_idle_or_quick_worker_gets_a_window_sized_by_its_pace() {
        // 1 ms of work at 10 µs a chunk: 100 chunks.
        assert_eq!(window(None, Duration::from_micros(10)), 100);
        assert_eq!(window(Some(Duration::ZERO), Duration::from_micros(10)), 100);
        // The first chunks of a new worker: cautious.
        assert_eq!(window(None, FIRST_AVERAGE), 2);
    }

    #[test]
    fn answers_read_together_share_the_time_they_took() {
        let ms = Duration::from_millis(1);
        // 500 chunks answered in 1 ms, read at once: 2 µs each, as if read one by one.
        let after = average_after(FIRST_AVERAGE, ms, 500);
        assert!(after.abs_diff(Duration::from_micros(2)) < Duration::from_nanos(5), "{after:?}");
        assert_eq!(window(None, after), 500);
        // One chunk: the same as `next_average`.
        assert_eq!(average_after(8 * ms, 16 * ms, 1), next_average(8 * ms, 16 * ms));
        // None read: unchanged.
        assert_eq!(average_after(ms, ms, 0), ms);
    }

    #[test]
    fn a_worker_holding_many_chunks_wakes_the_dispatcher_at_half_of_them() {
        assert_eq!(defer(0), 0);
        assert_eq!(defer(WINDOW), 0, "slow chunks: every answer is read at once");
        assert_eq!(defer(DEFER_FROM - 1), 0);
        assert_eq!(defer(DEFER_FROM), DEFER_FROM / 2);
        assert_eq!(defer(MAX_WINDOW), MAX_WINDOW / 2);
    }

    #[test]
    fn the_window_stays_within_its_limits() {
        // Growth stops at MAX_WINDOW, however quick (and at zero, where pace is unknown).
        assert_eq!(window(None, Duration::ZERO), MAX_WINDOW);
        assert_eq!(window(None, Duration::from_nanos(1)), MAX_WINDOW);
        assert_eq!(window(None, Duration::from_nanos(900)), MAX_WINDOW);
        assert_eq!(window(None, Duration::from_micros(1)), 1000);
        // Shrinking stops at WINDOW, however slow.
        assert_eq!(window(None, Duration::from_secs(3600)), WINDOW);
        assert_eq!(window(None, DEPTH), WINDOW);
    }

    #[test]
    fn a_slow_running_chunk_shrinks_the_window_at_once() {
        let quick = Duration::from_micros(5);
        assert_eq!(window(Some(SLOW - Duration::from_nanos(1)), quick), 200);
        assert_eq!(window(Some(SLOW), quick), WINDOW);
        assert_eq!(window(Some(Duration::from_secs(60)), quick), WINDOW);
    }

    #[test]
    fn the_average_moves_an_eighth_of_the_way() {
        assert_eq!(next_average(8 * MS, Duration::ZERO), 7 * MS);
        assert_eq!(next_average(Duration::ZERO, 8 * MS), MS);
        assert_eq!(next_average(MS, MS), MS);
        // A few quick chunks deepen a new worker's window.
        let mut average = FIRST_AVERAGE;
        for _ in 0..60 {
            average = next_average(average, Duration::from_micros(5));
        }
        assert!(window(None, average) > 100);
    }

    #[test]
    fn the_least_loaded_worker_with_room_takes_the_chunk() {
        assert_eq!(least_loaded([(3, 8), (1, 8), (2, 8)]), Some(1));
        // Equals: the first.
        assert_eq!(least_loaded([(2, 8), (1, 8), (1, 8)]), Some(1));
        // The least loaded is full (its limit is 0: retired, or its lane full): the next.
        assert_eq!(least_loaded([(0, 0), (5, 6)]), Some(1));
    }

    #[test]
    fn no_worker_or_all_busy_takes_nothing() {
        assert_eq!(least_loaded([]), None);
        assert_eq!(least_loaded([(2, 2), (256, 256), (0, 0)]), None);
        // One worker: it takes chunks until its window is full.
        assert_eq!(least_loaded([(0, 2)]), Some(0));
        assert_eq!(least_loaded([(1, 2)]), Some(0));
        assert_eq!(least_loaded([(2, 2)]), None);
    }

    #[test]
    fn room_for_taken_back_chunks_is_at_most_the_slow_window() {
        assert!(has_room(0, WINDOW));
        assert!(has_room(1, MAX_WINDOW));
        assert!(!has_room(2, MAX_WINDOW));
        assert!(!has_room(0, 0));
    }

    #[test]
    fn followers_of_a_slow_chunk_are_taken_back_once() {
        let t0 = Instant::now();
        assert_eq!(rebalance_at(2, t0, false, false), Some(t0 + SLOW));
        // Nothing waits behind it.
        assert_eq!(rebalance_at(1, t0, false, false), None);
        assert_eq!(rebalance_at(0, t0, false, false), None);
        // Already done for this running chunk.
        assert_eq!(rebalance_at(5, t0, true, false), None);
        // A worker still starting: its first waits too.
        assert_eq!(rebalance_at(1, t0, false, true), Some(t0 + SLOW));
        assert_eq!(rebalance_at(0, t0, false, true), None);
        assert_eq!(rebalance_at(1, t0, true, true), None);
    }

    #[test]
    fn only_chunks_not_taken_may_be_taken_back() {
        // Nothing taken: the first is about to run, the rest may go.
        assert_eq!(untaken(0, 4, false), 1..4);
        // It runs the first; the rest were not taken.
        assert_eq!(untaken(1, 4, false), 1..4);
        // It has taken three of four (a race with its claims): only the last.
        assert_eq!(untaken(3, 4, false), 3..4);
        assert!(untaken(4, 4, false).is_empty());
        assert!(untaken(0, 1, false).is_empty());
        assert!(untaken(0, 0, false).is_empty());
        // Still starting: nothing is about to run, all may go.
        assert_eq!(untaken(0, 1, true), 0..1);
        assert_eq!(untaken(1, 3, true), 1..3);
    }

    #[test]
    fn a_chunk_may_run_its_timeout_per_task() {
        let t0 = Instant::now();
        assert_eq!(deadline(t0, None, 3), None);
        assert_eq!(deadline(t0, Some(MS), 1), Some(t0 + MS));
        assert_eq!(deadline(t0, Some(MS), 3), Some(t0 + 3 * MS));
        // A chunk counts at least one task.
        assert_eq!(deadline(t0, Some(MS), 0), Some(t0 + MS));
        // Too far to represent: no deadline rather than a wrong one.
        assert_eq!(deadline(t0, Some(Duration::MAX), 2), None);
    }

    #[test]
    fn workers_retire_after_max_tasks_per_child() {
        assert!(!retire(1_000_000, None));
        assert!(!retire(0, Some(1)));
        assert!(retire(1, Some(1)));
        assert!(!retire(2, Some(3)));
        assert!(retire(3, Some(3)));
    }

    #[test]
    fn empty_slots_are_filled_up_to_the_pool_size() {
        assert_eq!(to_start(0, 4), 4);
        assert_eq!(to_start(3, 4), 1);
        assert_eq!(to_start(4, 4), 0);
        // A retired worker still finishing its chunks may briefly make it more than full.
        assert_eq!(to_start(5, 4), 0);
        assert_eq!(to_start(0, 1), 1);
    }

    #[test]
    fn a_worker_lost_mid_chunk_was_running_its_oldest() {
        // It took its third chunk and answered two: the third was running.
        assert!(was_running(3, 2));
        // It answered all it took: what it held had not started (requeued, not failed).
        assert!(!was_running(2, 2));
        assert!(!was_running(0, 0));
    }
}
