//! What the parent hears when a child goes wrong: a panic (message, location, process name),
//! a kill by signal, an early exit. Python's `multiprocessing` reports only an exit code.
//!
//! ```text
//! cargo run --release --example crash_report
//! ```

use std::time::Duration;

use mproc::{ErrorKind, Process};

/// Panics with a message.
fn divide(a: u32, b: u32) -> u32 {
    if b == 0 {
        panic!("cannot divide {a} by zero");
    }
    a / b
}

/// Sleeps for a minute, unless killed first.
fn sleepy() {
    std::thread::sleep(Duration::from_secs(60));
}

/// Leaves without returning a value.
fn quitter() -> u32 {
    std::process::exit(3)
}

/// An exit code as Python's `Process.exitcode` gives it (`-N` for signal N).
fn code<R>(p: &Process<R>) -> String {
    p.exitcode()
        .map_or_else(|| "none".to_owned(), |c| c.to_string())
}

/// Shows the three reports, and a child that returns.
pub(crate) fn main() -> mproc::Result<()> {
    println!("a child that panics (the line after this one is its own, on its stderr):");
    let mut p = Process::new(divide, (10, 0)).with_name("divider");
    p.start()?;
    let e = p.join().unwrap_err();
    println!("  join() -> Err: {e}");
    if let ErrorKind::Panicked(report) = e.kind() {
        println!(
            "  its report: message \"{}\", location {}; exit code {}",
            report.message,
            report.location.as_deref().unwrap_or("unknown"),
            code(&p)
        );
    }

    println!("a child killed with SIGKILL:");
    let mut p = Process::new(sleepy, ());
    p.start()?;
    p.kill()?;
    let e = p.join().unwrap_err();
    println!("  join() -> Err: {e}; exit code {}", code(&p));

    println!("a child that calls exit(3) before returning:");
    let mut q = Process::new(quitter, ());
    q.start()?;
    let e = q.join().unwrap_err();
    println!("  join() -> Err: {e}; exit code {}", code(&q));

    println!("a child that returns:");
    let mut p = Process::new(divide, (10, 2));
    p.start()?;
    let v = p.join()?;
    println!("  join() -> Ok({v}): 10 / 2 = {v}; exit code {}", code(&p));
    Ok(())
}
