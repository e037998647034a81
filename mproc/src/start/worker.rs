//! What a child does, whatever started it: read its `Start`, check the build, run the target
//! with panics caught, send the outcome, and leave with `_exit`.
//!
//! The child never returns into the code that started it: after a fork that code's stack and
//! the parent's statics are still there, and unwinding into them or running their destructors
//! would act on the parent's behalf. So everything here runs under `catch_unwind`, and panic
//! payloads are forgotten rather than dropped (a payload's own `Drop` could panic).

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::thread::{self, ThreadId};

use crate::channel::Channel;
use crate::error::{ErrorKind, PanicReport};
use crate::process;
use crate::sys::fd::InternalFd;
use crate::sys::image::{self, Entry};
use crate::sys::proc;
use crate::wire::message::{FromWorker, Outcome, Role, Start};

/// Exit code of a child that could not read its start message (its parent is gone).
const EXIT_NO_START: i32 = 3;

/// Runs the target described by the first message on `ctrl`, reports, and exits.
pub(crate) fn run(ctrl: InternalFd) -> ! {
    let code = match panic::catch_unwind(AssertUnwindSafe(|| serve(ctrl))) {
        Ok(code) => code,
        Err(payload) => {
            std::mem::forget(payload);
            1
        }
    };
    proc::exit_now(code)
}

fn serve(ctrl: InternalFd) -> i32 {
    // Whatever the starting thread had blocked or ignored, a worker starts clean, and it needs
    // SIGCHLD to reap children of its own.
    proc::unblock_all_signals();
    proc::default_sigchld();
    IN_WORKER.store(true, Ordering::Relaxed);
    ensure_panic_hook();
    let mut ctrl = Channel::new(ctrl);
    let start: Start = match ctrl.recv(None) {
        Ok(s) => s,
        Err(_) => return EXIT_NO_START,
    };
    // The descriptors of the handles among the arguments came with the start message.
    let handles = ctrl.take_fds_n(start.handles as usize);
    let entry = match image::entry_for(start.identity, start.entry) {
        Ok(entry) => entry,
        Err(e) => {
            let other_build = *e.kind() == ErrorKind::ExecutableMismatch;
            let _ = match start.role {
                Role::Call if other_build => ctrl.send(&Outcome::Refused, &[]),
                Role::Call => ctrl.send(&Outcome::Failed(e), &[]),
                Role::PoolWorker(_) => ctrl.send(&FromWorker::InitFailed(e), &[]),
            };
            proc::write_stderr(if other_build {
                "mproc: this worker runs a different build of the executable than its parent; \
                 refusing the function reference\n"
            } else {
                "mproc: this worker was sent a function reference that names no target; \
                 refusing it\n"
            });
            return 1;
        }
    };
    process::set_current(start.name, start.lineage);
    if let Role::PoolWorker(spec) = start.role {
        let code = crate::pool::worker::serve(&mut ctrl, start.identity, spec, handles);
        let _ = std::io::stdout().flush();
        return code;
    }
    let outcome = crate::handle::providing(handles, || call(entry, &start.args));
    let code = report(&ctrl, outcome);
    // Rust's stdout is line-buffered: a last line without a newline would be lost by _exit.
    let _ = std::io::stdout().flush();
    code
}

/// Sends the outcome; the exit code says what the parent will have received.
fn report(ctrl: &Channel, outcome: Outcome) -> i32 {
    match ctrl.send(&outcome, &[]) {
        Ok(()) => exit_code_after(&outcome),
        Err(e) if *e.kind() == ErrorKind::Closed => 1, // nobody is listening any more
        Err(e) => {
            // The value could not be sent (over the frame limit, say): say so instead.
            let _ = ctrl.send(&Outcome::Failed(e), &[]);
            1
        }
    }
}

/// The code a worker exits with once `outcome` has reached its parent: 0 after a value, 1
/// after anything else. A parent that cannot learn the real status (its fork server died, see
/// [`super::child::Reaper::Adopted`]) relies on it.
pub(crate) fn exit_code_after(outcome: &Outcome) -> i32 {
    match outcome {
        Outcome::Returned(_) => 0,
        _ => 1,
    }
}

fn call(entry: Entry, args: &[u8]) -> Outcome {
    match catch(|| entry(args)) {
        Ok(Ok(bytes)) => Outcome::Returned(bytes),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(report) => Outcome::Panicked(report),
    }
}

/// Runs `f` in a worker, turning a panic into its report (message, location, process name,
/// backtrace when asked). The payload is forgotten, never dropped: its `Drop` could panic.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    // A plain load first: this runs once per item of a chunk, and a swap is a locked
    // instruction.
    if RECORDED.load(Ordering::Relaxed) && RECORDED.swap(false, Ordering::Relaxed) {
        *last_panic() = None;
    }
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(payload) => {
            let report = take_panic(&*payload);
            std::mem::forget(payload);
            Err(report)
        }
    }
}

/// Whether this process is a worker, whose panics the hook records.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// Whether `LAST_PANIC` may hold a record (so `catch` clears it only then: it runs per item).
static RECORDED: AtomicBool = AtomicBool::new(false);

/// The last panic the hook saw in this worker, with the thread it happened on.
static LAST_PANIC: Mutex<Option<(ThreadId, PanicReport)>> = Mutex::new(None);

fn last_panic() -> std::sync::MutexGuard<'static, Option<(ThreadId, PanicReport)>> {
    LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs, once per process, a panic hook that records where a worker's target panicked and
/// then calls the hook that was there before. Called before forking, so a forked child never
/// has to take the hook lock, which another thread of the parent may have held at the fork.
pub(crate) fn ensure_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_WORKER.load(Ordering::Relaxed) {
                record(info);
            }
            previous(info);
        }));
    });
}

fn record(info: &panic::PanicHookInfo<'_>) {
    let backtrace = std::backtrace::Backtrace::capture();
    let report = PanicReport {
        message: payload_message(info.payload()),
        location: info.location().map(|l| l.to_string()),
        process: process::current_process().name().to_owned(),
        backtrace: (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| backtrace.to_string()),
    };
    *last_panic() = Some((thread::current().id(), report));
    RECORDED.store(true, Ordering::Relaxed);
}

/// The report for the panic whose payload reached `catch_unwind`: the hook's record if it is
/// this very panic (same thread, same message), else what the payload alone tells.
fn take_panic(payload: &(dyn std::any::Any + Send)) -> PanicReport {
    let message = payload_message(payload);
    match last_panic().take() {
        Some((thread, report)) if thread == thread::current().id() && report.message == message => {
            report
        }
        _ => PanicReport {
            message,
            location: None,
            process: process::current_process().name().to_owned(),
            backtrace: None,
        },
    }
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
