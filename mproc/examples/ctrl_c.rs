//! A long map that stops cleanly on Ctrl-C (or a service manager's SIGTERM) and reports how
//! far it got. The program installs its own handler (the `ctrlc` crate): the terminal's
//! SIGINT reaches the pool's workers too, but they are only the pool's to stop, so none dies
//! behind the program's back; it stops taking results, says how far it got, and ends the
//! pool itself. Without a handler, Ctrl-C would end the program at once, workers included,
//! with nothing printed.
//!
//! ```text
//! cargo run --release --example ctrl_c        # press Ctrl-C after a second or two
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mproc::Pool;

static STOP: AtomicBool = AtomicBool::new(false);

/// A tenth of a second of work per number.
fn slow_square(n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    n * n
}

fn main() -> mproc::Result<()> {
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).expect("a Ctrl-C handler");
    let pool = Pool::new(2)?;
    let total = 100u64;
    println!("squaring {total} numbers, 0.1 s each, on 2 workers; press Ctrl-C to stop early");
    let (mut done, mut sum) = (0u64, 0u64);
    for r in pool.chunksize(1).imap(slow_square, 0..total)? {
        sum += r?;
        done += 1;
        if STOP.load(Ordering::SeqCst) {
            break;
        }
    }
    if done < total {
        println!("stopped by the signal after {done} of {total} (sum so far {sum})");
    } else {
        println!("all {total} done: sum {sum}");
    }
    // The workers were not touched by the signal: the pool says so, then ends.
    println!("worker restarts: {}", pool.stats().restarts.total());
    pool.terminate();
    pool.join()
}
