//! A 200 MB table shared once with every pool task: built in place in a `Buffer` (read-only
//! shared memory), then 64 tasks each sum a 64th of it. Each task gets the table by handle, so
//! nothing is copied however large it is; Python would pickle it into every task (or need
//! `SharedMemory`, names and a numpy view by hand).
//!
//! ```text
//! cargo run --release --example shared_table
//! ```

use std::time::Instant;

use mproc::{Buffer, Pool};

/// The sum of part `part` of `parts` of the table.
fn sum_part(table: Buffer<u64>, part: usize, parts: usize) -> u64 {
    let n = table.len() / parts;
    table[part * n..(part + 1) * n].iter().sum()
}

/// Builds the table, then sums it across a pool.
pub(crate) fn main() -> mproc::Result<()> {
    let len = 25_000_000; // 200 MB of u64
    let began = Instant::now();
    let table = Buffer::new_with(len, |t: &mut [u64]| {
        for (i, x) in t.iter_mut().enumerate() {
            *x = i as u64;
        }
    })?;
    println!(
        "table of {len} u64 ({} MB) built in {:.1?}",
        len * 8 / 1_000_000,
        began.elapsed()
    );

    let pool = Pool::new(mproc::cpu_count())?;
    let parts = 64;
    let began = Instant::now();
    let sums = pool.starmap(sum_part, (0..parts).map(|p| (table.clone(), p, parts)))?;
    let total: u64 = sums.iter().sum();
    println!(
        "{parts} tasks summed it in {:.1?}: {total}",
        began.elapsed()
    );
    assert_eq!(total, (len as u64 - 1) * len as u64 / 2);
    Ok(())
}
