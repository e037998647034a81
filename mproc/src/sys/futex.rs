//! futex(2) on words that may live in memory shared between processes (no `FUTEX_PRIVATE`).

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

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
            Some(libc::timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            })
        }
    };
    let ts = timeout
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call; the timeout, if
    // any, is a valid timespec on this stack frame; FUTEX_WAIT reads nothing else.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(true),
        Some(libc::ETIMEDOUT) => Ok(deadline.is_none_or(|d| Instant::now() < d)),
        _ => Err(e),
    }
}

/// Wakes up to `n` sleepers on `word`; returns how many were woken.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE only uses its address as a key.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    usize::try_from(rc).unwrap_or(0)
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
