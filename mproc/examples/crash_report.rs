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

/// Shows the three reports.
pub(crate) fn main() -> mproc::Result<()> {
    let mut p = Process::new(divide, (10, 0)).with_name("divider");
    p.start()?;
    let e = p.join().unwrap_err();
    println!("panic:   {e}  [exitcode {:?}]", p.exitcode());
    if let ErrorKind::Panicked(report) = e.kind() {
        println!(
            "         message {:?} at {:?}",
            report.message, report.location
        );
    }

    let mut p = Process::new(sleepy, ());
    p.start()?;
    p.kill()?;
    let e = p.join().unwrap_err();
    println!("killed:  {e}  [exitcode {:?}]", p.exitcode());

    let mut p = Process::new(quitter, ());
    p.start()?;
    let e = p.join().unwrap_err();
    println!("exited:  {e}  [exitcode {:?}]", p.exitcode());

    let mut p = Process::new(divide, (10, 2));
    p.start()?;
    println!(
        "fine:    10 / 2 = {}  [exitcode {:?}]",
        p.join()?,
        p.exitcode()
    );
    Ok(())
}
