//! The seed's speed-up measurement: a CPU-bound job run sequentially, then on a `Pool` with
//! one worker per CPU; both times and the speed-up are printed.
//!
//! ```text
//! cargo run --release --example speedup
//! ```

use std::time::Instant;

use mproc::Pool;

/// Counts the primes below `limit` by trial division: about 10 ms of CPU for 60 000.
fn count_primes(limit: u64) -> u64 {
    (2..limit)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// Times the same jobs both ways.
pub(crate) fn main() -> mproc::Result<()> {
    let jobs = vec![60_000u64; 48];
    let began = Instant::now();
    let sequential: Vec<u64> = jobs.iter().map(|&n| count_primes(n)).collect();
    let alone = began.elapsed();

    let cpus = mproc::cpu_count();
    let pool = Pool::new(cpus)?;
    let began = Instant::now();
    let parallel = pool.chunksize(1).map(count_primes, jobs.iter().copied())?;
    let together = began.elapsed();
    assert_eq!(sequential, parallel);
    println!("sequential: {alone:>9.1?}");
    println!("{cpus} processes: {together:>9.1?}");
    println!(
        "speed-up:  {:>9.2}x on {cpus} CPUs",
        alone.as_secs_f64() / together.as_secs_f64()
    );
    Ok(())
}
