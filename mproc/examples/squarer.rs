//! The seed's "multi-square" exercise: one process per number, each printing its square and
//! its own name, then all joined.
//!
//! ```text
//! cargo run --release --example squarer
//! ```

use mproc::{Process, current_process};

/// Squares `number` and says which process did it.
fn squarer(number: u64) -> u64 {
    let result = number * number;
    println!(
        "{number} squared to {result} by: {}",
        current_process().name()
    );
    result
}

/// Starts one process per number, then joins them all.
pub(crate) fn main() -> mproc::Result<()> {
    let numbers = [2, 3, 4, 5, 6];
    let mut procs = Vec::new();
    for number in numbers {
        let mut proc = Process::new(squarer, (number,));
        proc.start()?;
        procs.push(proc);
    }
    for proc in &mut procs {
        proc.join()?;
    }
    Ok(())
}
