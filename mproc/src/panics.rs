//! Capturing a worker's panics: a panic hook records where a target panicked (message,
//! location, backtrace when asked), and [`catch`] turns the unwinding into that report.
//!
//! Payloads are forgotten rather than dropped: a payload's own `Drop` could panic. Below
//! everything that runs targets (a `Process`'s child, a pool worker's tasks): it imports only
//! the error types and the process's identity.

use std::panic::{self, AssertUnwindSafe};
use std::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::error::PanicReport;

/// Runs `f` in a worker, turning a panic into its report (message, location, process name,
/// backtrace when asked). The payload is forgotten, never dropped: its `Drop` could panic.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    let caught = catch_uncounted(f);
    if caught.is_err() {
        CAUGHT.fetch_add(1, Ordering::Relaxed);
    }
    caught
}

/// [`catch`], for a panic that is not a task's own (a pool worker's chunk that could not be
/// decoded): its chunk's result says it failed, and the statistics count it from there.
pub(crate) fn catch_uncounted<R>(f: impl FnOnce() -> R) -> Result<R, PanicReport> {
    // Numbered, so that a record the hook left of another catch's panic (one the target
    // caught itself, say) is never taken for this one's; cheaper than clearing the record
    // before each catch (two of them run per pool task).
    let me = LAST_CATCH.get() + 1;
    LAST_CATCH.set(me);
    let outer = CATCHING.replace(me);
    let outcome = panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.set(outer);
    match outcome {
        Ok(r) => Ok(r),
        Err(payload) => {
            let report = take_panic(&*payload, me);
            std::mem::forget(payload);
            if !QUIET.load(Ordering::Relaxed) {
                // The parent gets it as the target's error. Say so in one line naming the
                // process, as Python's traceback names it, instead of the default `thread
                // '<unnamed>' panicked` and a backtrace of mproc's machinery. Said here, not
                // in the hook: a panic the target catches itself goes nowhere.
                let pid = std::process::id();
                crate::sys::proc::write_stderr(&format!(
                    "{report} (pid {pid}; sent to the parent as its error)\n"
                ));
            }
            Err(report)
        }
    }
}

/// Panics [`catch`] has caught in this process (a pool worker publishes it for the pool's
/// statistics).
static CAUGHT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many panics [`catch`] has caught in this process.
pub(crate) fn caught() -> u64 {
    CAUGHT.load(Ordering::Relaxed)
}

thread_local! {
    /// The number of the innermost [`catch`] this thread is in, 0 outside any: a panic here
    /// reaches the parent.
    static CATCHING: Cell<u64> = const { Cell::new(0) };
    /// The number the last [`catch`] on this thread took.
    static LAST_CATCH: Cell<u64> = const { Cell::new(0) };
}

/// Whether a target's panic goes to the parent without a line on stderr: in a pool worker,
/// as in Python's pool (a task's panic is its result's error; a `map` of many failing items
/// would otherwise print a line for each).
static QUIET: AtomicBool = AtomicBool::new(false);

/// This process is a pool worker: its tasks' panics print nothing here.
pub(crate) fn quiet_in_this_process() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Whether this process is a worker, whose panics the hook records.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The last panic the hook saw on this thread under [`catch`], with the number of the
    /// catch it was in. Per thread, so a fork child never finds it locked by a thread it does
    /// not have.
    static LAST_PANIC: Cell<Option<(u64, PanicReport)>> = const { Cell::new(None) };
    /// The record [`record`] replaced last: when a panic while unwinding aborts the process,
    /// the panic that was unwinding.
    static EARLIER_PANIC: Cell<Option<(u64, PanicReport)>> = const { Cell::new(None) };
}

/// From now on this process is a worker: the hook (installed if it was not) records where its
/// panics happen, for [`catch`].
/// What the process it was forked from had set is forgotten: a pool worker's task that forks
/// a `Process` makes a child whose target's panics are told of, counted from zero, and a
/// thread that forked from inside a target is not running one in the child.
pub(crate) fn record_in_this_worker() {
    QUIET.store(false, Ordering::Relaxed);
    CAUGHT.store(0, Ordering::Relaxed);
    CATCHING.set(0);
    IN_WORKER.store(true, Ordering::Relaxed);
    ensure_hook();
}

/// Installs, once per process, a panic hook that records where a worker's target panicked and
/// then calls the hook that was there before. Called before forking, so a forked child never
/// has to take the hook lock, which another thread of the parent may have held at the fork.
pub(crate) fn ensure_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let catching = CATCHING.get();
            if IN_WORKER.load(Ordering::Relaxed) && catching != 0 {
                if aborts(info.payload()) {
                    // The process aborts once this hook returns: no `catch` will tell of the
                    // panics, and the parent learns only of a SIGABRT.
                    tell_before_abort(catching, info);
                    return;
                }
                // A target's panic: recorded for `catch`, which tells of it if it reaches
                // it. (One the target catches itself prints nothing, as a Python exception
                // caught in the target.)
                record(info, catching);
                return;
            }
            // Any other panic (a thread the target started, say) is the previous hook's,
            // std's by default, which captures a backtrace when asked: not if that would wait
            // forever for a lock left held at the fork.
            if BACKTRACE_LOCK.load(Ordering::Relaxed) != LOCK_FREE
                && backtraces_asked()
                && !backtrace_lock_free()
            {
                tell_without_backtrace(info);
                return;
            }
            previous(info);
        }));
    });
}

/// Whether std's backtrace lock can be taken here: [`LOCK_FREE`] in any process but a `Fork`
/// child, whose parent's other threads may have held it at the fork (capturing a backtrace,
/// or printing a panic's), [`LOCK_UNKNOWN`] there until [`backtrace_lock_free`] looks,
/// [`LOCK_ORPHANED`] once it found it held by nobody it could wait for. Inherited by the
/// children this process forks, each of which is told it is a `Fork` child itself.
static BACKTRACE_LOCK: AtomicU8 = AtomicU8::new(LOCK_FREE);
const LOCK_FREE: u8 = 0;
const LOCK_UNKNOWN: u8 = 1;
const LOCK_ORPHANED: u8 = 2;

/// How long [`backtrace_lock_free`] waits for a thread to take std's backtrace lock: free, it
/// takes microseconds; held by a thread the process does not have, forever.
const LOCK_PROBE: std::time::Duration = std::time::Duration::from_secs(1);

/// What a report says in place of the backtrace it could not capture.
const BACKTRACE_NOT_CAPTURED: &str = "(no backtrace: this process was forked while another \
    thread of its parent held std's backtrace lock, which it would wait for forever; children \
    started by spawn or forkserver capture theirs)\n";

/// In a `Fork` child: std's backtrace lock may have been held at the fork by another thread of
/// the parent; it is looked at before a panic's backtrace is captured.
pub(crate) fn forked() {
    if BACKTRACE_LOCK.load(Ordering::Relaxed) == LOCK_FREE {
        BACKTRACE_LOCK.store(LOCK_UNKNOWN, Ordering::Relaxed);
    }
}

/// Whether std's backtrace lock is free for a capture (see [`BACKTRACE_LOCK`]): in a `Fork`
/// child, a thread of its own captures a backtrace first, and is waited for [`LOCK_PROBE`] at
/// most (it never returns if the lock was held at the fork). Found free, the lock is never
/// looked at again: no thread that could leave it held is gone from this process since.
fn backtrace_lock_free() -> bool {
    match BACKTRACE_LOCK.load(Ordering::Relaxed) {
        LOCK_FREE => return true,
        LOCK_ORPHANED => return false,
        _ => {}
    }
    let (took, taken) = std::sync::mpsc::channel();
    let probe = std::thread::Builder::new()
        .name("mproc-backtrace-probe".into())
        .spawn(move || {
            drop(std::backtrace::Backtrace::force_capture());
            let _ = took.send(());
        });
    let free = probe.is_ok() && taken.recv_timeout(LOCK_PROBE).is_ok();
    let state = if free { LOCK_FREE } else { LOCK_ORPHANED };
    BACKTRACE_LOCK.store(state, Ordering::Relaxed);
    free
}

/// Whether backtraces are asked for, as std reads it: `RUST_LIB_BACKTRACE`, else
/// `RUST_BACKTRACE`, set and not `0` (std reads them once).
fn backtraces_asked() -> bool {
    std::env::var_os("RUST_LIB_BACKTRACE")
        .or_else(|| std::env::var_os("RUST_BACKTRACE"))
        .is_some_and(|v| v != "0")
}

/// Says on stderr what std's hook would of panic `info`, with why there is no backtrace (see
/// [`backtrace_lock_free`]); written directly: std's stderr lock may be left held at the fork
/// too.
fn tell_without_backtrace(info: &panic::PanicHookInfo<'_>) {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
    let message = payload_message(info.payload());
    crate::sys::proc::write_stderr(&format!(
        "thread '{name}' panicked{at}:\n{message}\n{BACKTRACE_NOT_CAPTURED}"
    ));
}

/// Records a target's panic for catch number `catch`.
fn record(info: &panic::PanicHookInfo<'_>, catch: u64) {
    let backtrace = if backtraces_asked() && !backtrace_lock_free() {
        Some(BACKTRACE_NOT_CAPTURED.to_owned())
    } else {
        let backtrace = std::backtrace::Backtrace::capture();
        (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| users_frames(&backtrace.to_string()))
    };
    let report = PanicReport {
        message: payload_message(info.payload()),
        location: info.location().map(|l| l.to_string()),
        process: crate::current::identity().name().to_owned(),
        backtrace,
    };
    let _ = LAST_PANIC.try_with(|l| {
        let replaced = l.replace(Some((catch, report)));
        let _ = EARLIER_PANIC.try_with(|e| e.set(replaced));
    });
}

/// Whether a panic with this payload aborts the process instead of unwinding: the panic core
/// raises when a destructor panics while unwinding from another panic, or when a panic reaches
/// a function that cannot unwind (an `extern "C"` one).
fn aborts(payload: &(dyn std::any::Any + Send)) -> bool {
    let message = payload_message(payload);
    message == "panic in a destructor during cleanup"
        || message == "panic in a function that cannot unwind"
}

/// Writes on stderr the recorded panics of catch number `catch` (the one being unwound from,
/// and the one it replaced) and the aborting one, `info`, just before the process aborts:
/// otherwise they would go nowhere. Written directly, not through the previous hook: std's
/// takes a lock that a fork child may have inherited held by a thread it does not have.
fn tell_before_abort(catch: u64, info: &panic::PanicHookInfo<'_>) {
    let pid = std::process::id();
    let mut told = String::new();
    for slot in [&EARLIER_PANIC, &LAST_PANIC] {
        if let Ok(Some((n, report))) = slot.try_with(Cell::take)
            && n == catch
        {
            told.push_str(&format!("{report} (pid {pid})\n"));
        }
    }
    let process = crate::current::identity().name().to_owned();
    let at = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
    let message = payload_message(info.payload());
    told.push_str(&format!("process {process} panicked{at}: {message} (pid {pid}; it aborts)\n"));
    crate::sys::proc::write_stderr(&told);
}

/// A backtrace down to the user's target: the frames from where mproc called it on
/// (`mproc::wire::target`, the trampoline, the worker's loop) are dropped, and said to be.
fn users_frames(backtrace: &str) -> String {
    let mut kept = String::new();
    for line in backtrace.lines() {
        let frame = line.trim_start();
        let is_header = frame.split_once(':').is_some_and(|(n, _)| {
            !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        });
        if is_header && frame.contains("mproc::wire::target") {
            kept.push_str("      ... (mproc's frames that called the target)\n");
            return kept;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

/// The report for the panic whose payload reached the `catch_unwind` of catch number `catch`:
/// the hook's record if it is this very panic (this thread's, in that catch, same message),
/// else what the payload alone tells.
fn take_panic(payload: &(dyn std::any::Any + Send), catch: u64) -> PanicReport {
    let message = payload_message(payload);
    match LAST_PANIC.try_with(|l| l.take()).ok().flatten() {
        Some((n, report)) if n == catch && report.message == message => report,
        _ => PanicReport {
            message,
            location: None,
            process: crate::current::identity().name().to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_its_report_and_a_value_passes_through() {
        record_in_this_worker();
        assert_eq!(catch(|| 7), Ok(7));
        let line = line!() + 1;
        let report = catch(|| panic!("out of {}", "cheese")).unwrap_err();
        assert_eq!(report.message, "out of cheese");
        assert_eq!(report.process, "MainProcess");
        let location = report.location.expect("the hook saw where");
        assert!(
            location.contains(&format!("panics.rs:{line}:")),
            "{location}"
        );
        // A payload that is no string, thrown past the hook's record.
        let report = catch(|| std::panic::resume_unwind(Box::new(3u8))).unwrap_err();
        assert_eq!(report.message, "Box<dyn Any>");
        assert_eq!(report.location, None);
    }

    /// The record of a panic a target caught itself is not taken for a later one's, nor is an
    /// inner catch's for its outer one's, even with the same words.
    #[test]
    fn a_record_is_only_its_own_catchs() {
        record_in_this_worker();
        let caught_inside = catch(|| std::panic::catch_unwind(|| panic!("same words")).is_err());
        assert_eq!(caught_inside, Ok(true));
        // Thrown past the hook: no record of its own.
        let report = catch(|| std::panic::resume_unwind(Box::new("same words"))).unwrap_err();
        assert_eq!(report.message, "same words");
        assert_eq!(report.location, None, "the record of the panic caught inside");
        let report = catch(|| {
            let inner = catch(|| panic!("inner words"));
            assert!(inner.is_err());
            let _ = catch(|| std::panic::catch_unwind(|| panic!("outer words")));
            std::panic::resume_unwind(Box::new("outer words"))
        })
        .unwrap_err();
        assert_eq!(report.location, None, "an inner catch's record");
        let line = line!() + 3;
        let report = catch(|| -> u8 {
            let _ = catch(|| 1);
            panic!("outer words")
        })
        .unwrap_err();
        let location = report.location.expect("its own record, after an inner catch");
        assert!(location.contains(&format!("panics.rs:{line}:")), "{location}");
    }
}
