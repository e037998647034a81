//! The seed's "do_math" exercise: a pool of 4, one `apply_async` per block of a range, each
//! returning the block's average; the results are printed in submission order, with
//! `ready()`, `successful()` and `get()`.
//!
//! ```text
//! cargo run --release --example do_math
//! ```

use mproc::Pool;

/// The (integer) average of the squares of `start..end`: some work to do per block.
fn do_math(start: u64, end: u64) -> u64 {
    let mut average = 0;
    for value in start..end {
        average += value * value / (end - start);
    }
    average
}

/// Submits one block per task, then prints each result in submission order.
pub(crate) fn main() -> mproc::Result<()> {
    let pool = Pool::new(4)?;
    let blocks: Vec<(u64, u64)> = (0..4).map(|i| (i * 100_000, (i + 1) * 100_000)).collect();
    let tasks: Vec<_> = blocks
        .iter()
        .map(|&(start, end)| pool.apply_async(do_math, (start, end)))
        .collect::<Result<_, _>>()?;
    pool.close();
    pool.join()?;
    println!("each task returns the average of n² over its block of n (integer arithmetic):");
    for ((start, end), task) in blocks.iter().zip(&tasks) {
        println!(
            "block {start:>6}..{end:<6} ready: {}  successful: {}  average of n²: {}",
            task.ready(),
            task.successful()?,
            task.get()?
        );
    }
    Ok(())
}
