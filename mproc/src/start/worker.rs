//! What a child does, whatever started it: read its `Start`, check the build, run the target
//! with panics caught, send the outcome, and leave with `_exit`.
//!
//! The child never returns into the code that started it: after a fork that code's stack and
//! the parent's statics are still there, and unwinding into them or running their destructors
//! would act on the parent's behalf. So everything here runs under `catch_unwind`, and panic
//! payloads are forgotten rather than dropped (a payload's own `Drop` could panic; see
//! [`crate::panics`]).

use std::io::Write;
use std::panic::{self, AssertUnwindSafe};

use crate::channel::Channel;
use crate::error::{Error, ErrorKind};
use crate::panics::{self, catch};
use crate::sys::fd::InternalFd;
use crate::sys::image::{self, Entry};
use crate::sys::proc;
use crate::wire::message::{FromWorker, Outcome, Redirect, Role, Start, ToWorker};

use super::role::{self, RoleFn};

/// Exit code of a child that could not read its start message (its parent is gone).
const EXIT_NO_START: i32 = 3;

/// How much freed heap a pool worker keeps for its next tasks (see `proc::keep_freed_memory`).
const POOL_WORKER_KEEPS: usize = 64 << 20;

/// Does now, in this process, what every child forked from it would otherwise do for itself,
/// the same way each time, on its way to its target: it finds where the executable lies in
/// memory ([`image::prepare`]), sets up the calling thread's slots for the descriptors of
/// handles ([`crate::handle::prepare`]) and makes `stdout` (flushed as a child leaves). A child
/// forked afterwards inherits all of it, and is spared the page faults of doing it (the fork
/// server's children took 23 faults between their start and their exit, 10 with this done in
/// the server: BENCHMARKS.md, "What every child did for itself").
pub(crate) fn prepare_inherited() {
    image::prepare();
    crate::handle::prepare();
    let _ = std::io::stdout();
}

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
    panics::record_in_this_worker();
    crate::handle::forget_inherited_scopes();
    let mut ctrl = Channel::new(ctrl);
    let start: Start = match ctrl.recv(None) {
        Ok(s) => s,
        Err(_) => return EXIT_NO_START,
    };
    if matches!(start.role, Role::PoolWorker(_)) {
        // Only its pool stops a pool worker: a terminal's Ctrl-C or a service manager's
        // SIGTERM reaches the whole process group, and the program decides what to do about
        // it (with no handler it dies, and its workers with it; with one, the pool works on).
        proc::block_stop_signals();
        // A task that moves megabytes (its arguments, its result, the frames around them)
        // frees and allocates them again at every task: kept, not returned to the system each
        // time, they are not faulted in and zeroed again (a 10 MiB echo ran 2.3x faster).
        proc::keep_freed_memory(POOL_WORKER_KEEPS);
    }
    // The descriptors of the handles among the arguments came with the start message; then
    // the pipe for this child's `tracing` events, if the parent wants them.
    let handles = ctrl.take_fds_n(start.handles as usize);
    let files = ctrl.take_fds_n(
        start
            .stdio
            .iter()
            .filter(|r| matches!(r, Redirect::File))
            .count(),
    );
    let files = files.into_iter().map(InternalFd::into_owned).collect();
    let _forwarding = start.log.and_then(|level| {
        let pipe = ctrl.take_fds_n(1).into_iter().next()?;
        crate::relay::forward(pipe.into_owned(), level)
    });
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
    // Its environment, working directory and streams, as its parent asked.
    let cwd = start.cwd.as_ref().map(|b| b.as_slice());
    if let Err(e) = super::setup::apply(&start.env, cwd, &start.stdio, files) {
        let _ = match start.role {
            Role::Call => ctrl.send(&Outcome::Failed(e), &[]),
            Role::PoolWorker(_) => {
                // Its pool sends the lane next and reads notes only after: take the lane
                // first, so that the pool hears why, not that the worker was gone.
                let _ = ctrl.recv::<ToWorker<Vec<u8>>>(crate::sys::fd::deadline_after(super::PATIENCE));
                ctrl.send(&FromWorker::InitFailed(e), &[])
            }
        };
        return 1;
    }
    crate::current::set(start.name, start.lineage, start.daemon);
    if let Role::PoolWorker(spec) = start.role {
        // The entry names the role's record (see `super::role`), not a target.
        let code = match role::claimed_by(entry) {
            Ok(RoleFn::Worker(serve)) => serve(&mut ctrl, start.identity, spec, handles),
            claimed => {
                let e = claimed.err().unwrap_or_else(|| {
                    Error::protocol("a pool worker's role reference names another kind of role")
                });
                let _ = ctrl.send(&FromWorker::InitFailed(e), &[]);
                1
            }
        };
        let _ = std::io::stdout().flush();
        // As a target's process does (below), and Python's pool worker at its exit.
        super::children::settle();
        return code;
    }
    let outcome = crate::handle::providing(handles, || call(entry, &start.args));
    let returned = crate::handle::take_returned();
    let code = report(&ctrl, outcome, &returned);
    // Rust's stdout is line-buffered: a last line without a newline would be lost by _exit.
    let _ = std::io::stdout().flush();
    // As Python's child does before it leaves: its own non-daemonic children are waited for,
    // its daemonic ones terminated (it leaves with `_exit`, which runs no exit handler).
    super::children::settle();
    code
}

/// Sends the outcome, with the descriptors of the handles in its value; the exit code says
/// what the parent will have received.
fn report(ctrl: &Channel, outcome: Outcome, handles: &[crate::sys::fd::InternalFd]) -> i32 {
    let fds: Vec<_> = handles.iter().map(std::os::fd::AsFd::as_fd).collect();
    match ctrl.send(&outcome, &fds) {
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
