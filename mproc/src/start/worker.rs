//! What a child does, whatever started it: read its `Start`, check the build, run the target
//! with panics caught, send the outcome, and leave with `_exit`.
//!
//! The child never returns into the code that started it: after a fork that code's stack and
//! the parent's statics are still there, and unwinding into them or running their destructors
//! would act on the parent's behalf.

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;

use crate::channel::Channel;
use crate::error::PanicReport;
use crate::process;
use crate::sys::fd::InternalFd;
use crate::sys::image::{self, Entry};
use crate::sys::proc;
use crate::wire::message::{Outcome, Start};

/// Exit code of a child that could not read its start message (its parent is gone).
const EXIT_NO_START: i32 = 3;

/// Runs the target described by the first message on `ctrl`, reports, and exits.
pub(crate) fn run(ctrl: InternalFd) -> ! {
    let mut ctrl = Channel::new(ctrl);
    let start: Start = match ctrl.recv(None) {
        Ok(s) => s,
        Err(_) => proc::exit_now(EXIT_NO_START),
    };
    let Some(entry) = image::entry_for(start.identity, start.entry) else {
        let _ = ctrl.send(&Outcome::Refused, &[]);
        proc::write_stderr(
            "mproc: this worker runs a different build of the executable than its parent; \
             refusing the function reference\n",
        );
        proc::exit_now(1);
    };
    process::set_current(start.name.clone(), start.lineage.clone());
    let outcome = call(entry, &start.args);
    let code = match outcome {
        Outcome::Returned(_) => 0,
        _ => 1,
    };
    let _ = ctrl.send(&outcome, &[]);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    proc::exit_now(code)
}

fn call(entry: Entry, args: &[u8]) -> Outcome {
    install_panic_hook();
    match panic::catch_unwind(AssertUnwindSafe(|| entry(args))) {
        Ok(Ok(bytes)) => Outcome::Returned(bytes),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(payload) => Outcome::Panicked(take_panic(payload)),
    }
}

/// The last panic seen by the hook in this process: message, location, backtrace.
static LAST_PANIC: Mutex<Option<PanicReport>> = Mutex::new(None);

fn install_panic_hook() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let backtrace = std::backtrace::Backtrace::capture();
        let report = PanicReport {
            message: payload_message(info.payload()),
            location: info.location().map(|l| l.to_string()),
            process: process::current_process().name().to_owned(),
            backtrace: (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
                .then(|| backtrace.to_string()),
        };
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        previous(info);
    }));
}

fn take_panic(payload: Box<dyn std::any::Any + Send>) -> PanicReport {
    let recorded = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
    recorded.unwrap_or_else(|| PanicReport {
        message: payload_message(&*payload),
        location: None,
        process: process::current_process().name().to_owned(),
        backtrace: None,
    })
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}
