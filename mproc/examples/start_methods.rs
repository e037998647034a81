//! The three start methods side by side: each starts and joins a few processes, and the time
//! per process is printed.
//!
//! ```text
//! cargo run --release --example start_methods
//! ```

use std::time::Instant;

use mproc::{Process, StartMethod, current_process};

/// Says who ran it.
fn hello(n: u32) -> String {
    format!(
        "{n} from {} (pid {})",
        current_process().name(),
        current_process().pid()
    )
}

/// Runs `hello` under each start method.
pub(crate) fn main() -> mproc::Result<()> {
    for method in StartMethod::ALL {
        let began = Instant::now();
        let mut last = String::new();
        const N: u32 = 20;
        for n in 0..N {
            let mut p = Process::new(hello, (n,)).start_method(method);
            p.start()?;
            last = p.join()?;
        }
        let each = began.elapsed() / N;
        println!(
            "{:<10} {:>8.0?} per start+join of {N} children; the last, hello({}), returned \"{last}\"",
            method.name(),
            each,
            N - 1
        );
    }
    Ok(())
}
