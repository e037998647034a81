//! A long map with a progress bar on stderr (feature `progress`): items done of all, rate and
//! ETA, drawn only when stderr is a terminal (redirect it and nothing is drawn). Then the same
//! work as it finishes, with `as_completed`, counting with `AsyncResult::progress`.
//!
//! ```text
//! cargo run -p mproc --example progress --features progress
//! ```

use std::time::Duration;

/// A task of about 20 ms.
fn work(n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    n * n
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn main() -> Result<(), mproc::Error> {
    let pool = mproc::Pool::new(4)?;
    println!("400 tasks of 20 ms on 4 workers, about 2 s, with a bar:");
    let squares = pool.chunksize(1).progress().map(work, 0..400)?;
    println!("sum of squares: {}", squares.iter().sum::<u64>());

    println!("the same as a background job, its progress read by hand:");
    let r = pool.chunksize(10).map_async(work, 0..400)?;
    while r.wait_timeout(Duration::from_millis(500)).is_err() {
        println!("  {} items done", r.progress());
    }
    println!(
        "  {} items done: sum {}",
        r.progress(),
        r.get()?.iter().sum::<u64>()
    );

    println!("four naps of different lengths, in the order they finish:");
    let naps = [800, 100, 500, 300]
        .into_iter()
        .map(|ms| pool.apply_async(nap, (ms,)))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, r) in mproc::as_completed(&naps) {
        println!("  nap {i}: {} ms", r.get()?);
    }
    Ok(())
}
