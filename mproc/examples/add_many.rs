//! Two children each add up half a million random numbers and put their sums on one shared
//! `Queue`; the parent gets both and prints the total (the seed's `addManyPar`).
//!
//! Which child's sum comes first is not determined: whichever finishes first. Addition does
//! not care.
//!
//! ```text
//! cargo run --release --example add_many
//! ```

use mproc::{Process, Queue};

const TOTAL_NUMBERS: u64 = 1_000_000;

/// A small xorshift generator, seeded differently in each process.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Random((nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    /// A number from 1 to 100, like Python's `randint(1, 100)`.
    fn one_to_hundred(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 100 + 1
    }
}

/// Adds `n` random numbers and puts the sum on the queue.
fn add_many_numbers(n: u64, q: Queue<u64>) {
    let mut random = Random::seeded();
    let sum = (0..n).map(|_| random.one_to_hundred()).sum::<u64>();
    q.put(sum).expect("the parent holds the queue");
}

/// Starts both children and adds up what they put on the queue.
pub(crate) fn main() -> mproc::Result<()> {
    let q = Queue::new()?;
    let mut p1 = Process::new(add_many_numbers, (TOTAL_NUMBERS / 2, q.clone()));
    let mut p2 = Process::new(add_many_numbers, (TOTAL_NUMBERS / 2, q.clone()));
    p1.start()?;
    p2.start()?;

    let answer_a = q.get()?;
    let answer_b = q.get()?;
    println!(
        "Sum: {} = {answer_a} + {answer_b}, one sum from each child (expected about {}: \
         {TOTAL_NUMBERS} numbers from 1 to 100 average 50.5)",
        answer_a + answer_b,
        TOTAL_NUMBERS * 101 / 2
    );
    p1.join()?;
    p2.join()?;

    let total = answer_a + answer_b;
    assert!(
        (TOTAL_NUMBERS..=100 * TOTAL_NUMBERS).contains(&total),
        "each of {TOTAL_NUMBERS} numbers is between 1 and 100"
    );
    let mean = total as f64 / TOTAL_NUMBERS as f64;
    assert!(
        (mean - 50.5).abs() < 1.0,
        "the mean of 1..=100 is 50.5, got {mean}"
    );
    Ok(())
}
