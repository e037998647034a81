//! The seed's patience test: `apply_async(std::thread::sleep, (10 s,))`, then `get_timeout(1 s)`
//! gives a timeout error after about a second, and the program exits at once: dropping the
//! pool terminates the sleeping worker, as Python's `with Pool() as pool:` does.
//!
//! ```text
//! cargo run --release --example apply_timeout
//! ```

use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool};

/// Waits one second for a ten-second task, then leaves.
pub(crate) fn main() -> mproc::Result<()> {
    let pool = Pool::new(1)?;
    let began = Instant::now();
    let res = pool.apply_async(std::thread::sleep, (Duration::from_secs(10),))?;
    match res.get_timeout(Duration::from_secs(1)) {
        Err(e) if *e.kind() == ErrorKind::Timeout => {
            println!("We lacked patience and got a timeout: {e}");
        }
        other => println!("unexpected: {other:?}"),
    }
    drop(pool);
    println!(
        "done after {:.1?} (the pool was terminated on drop)",
        began.elapsed()
    );
    Ok(())
}
