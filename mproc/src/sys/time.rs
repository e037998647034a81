//! The system's monotonic clock as a plain number, so that two processes of one host can
//! compare their readings (a pool worker publishes when its current run of tasks began;
//! `Instant` cannot cross a process boundary).

use rustix::time::{ClockId, clock_gettime};

/// Nanoseconds on `CLOCK_MONOTONIC` (since boot, the same in every process of the host).
pub(crate) fn monotonic_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}
