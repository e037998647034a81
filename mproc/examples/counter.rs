//! N processes increment one shared `Value` under its lock, and the total is exact.
//!
//! Each increment reads the value, pauses, and writes it back: without the lock, processes
//! would overwrite each other's updates and the total would come up short.
//!
//! ```text
//! cargo run --release --example counter
//! ```

use mproc::{Process, Value};

const PROCESSES: usize = 4;
const EACH: u64 = 10_000;

/// Adds 1 to the counter `n` times, each under the counter's lock.
fn count(counter: Value<u64>, n: u64) {
    for _ in 0..n {
        let mut v = counter.lock().expect("the counter's lock");
        let seen = *v;
        std::hint::spin_loop();
        *v = seen + 1;
    }
}

/// Starts the processes, waits for them, and checks the total.
pub(crate) fn main() -> mproc::Result<()> {
    let counter = Value::new(0u64)?;
    let mut workers: Vec<_> = (0..PROCESSES)
        .map(|_| Process::new(count, (counter.clone(), EACH)))
        .collect();
    for p in &mut workers {
        p.start()?;
    }
    for p in &mut workers {
        p.join()?;
    }
    let total = counter.get()?;
    println!(
        "{PROCESSES} processes x {EACH} increments under one lock: total {total} (expected {})",
        PROCESSES as u64 * EACH
    );
    assert_eq!(total, PROCESSES as u64 * EACH, "an increment was lost");
    Ok(())
}
