//! futex(2) on words that may live in memory shared between processes (no `FUTEX_PRIVATE`).

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use rustix::io::Errno;
use rustix::thread::futex::{self, Flags, Timespec};

/// Sleeps while `*word == expected`, until woken or `deadline`. Returns `false` only when the
/// deadline passed; a wake-up, a changed value or a signal all return `true` (callers re-check
/// their condition in a loop, as with any futex).
pub(crate) fn wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> io::Result<bool> {
    let timeout = match deadline {
        None => None,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            Some(Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as i64,
                tv_nsec: left.subsec_nanos() as _,
            })
        }
    };
    // No `Flags::PRIVATE`: the word may be shared with other processes.
    match futex::wait(word, Flags::empty(), expected, timeout.as_ref()) {
        Ok(()) | Err(Errno::AGAIN | Errno::INTR) => Ok(true),
        Err(Errno::TIMEDOUT) => Ok(deadline.is_none_or(|d| Instant::now() < d)),
        Err(e) => Err(e.into()),
    }
}

/// Wakes up to `n` sleepers on `word`; returns how many were woken.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, Flags::empty(), n.min(i32::MAX as u32)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    #[test]
    fn wait_times_out_and_returns_on_a_changed_value() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        assert!(!wait(&w, 0, Some(t + Duration::from_millis(30))).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert!(wait(&w, 1, None).unwrap(), "the value differs: no sleep");
    }

    #[test]
    fn wake_reaches_a_sleeper() {
        let w = Arc::new(AtomicU32::new(0));
        let sleeper = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while w.load(Ordering::Acquire) == 0 {
                    assert!(wait(&w, 0, Some(deadline)).unwrap(), "never woken");
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        w.store(1, Ordering::Release);
        wake(&w, 1);
        sleeper.join().unwrap();
    }
}
