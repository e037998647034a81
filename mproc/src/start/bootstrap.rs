//! The worker's entry, before `main`.
//!
//! # Mechanism
//!
//! A function pointer placed in the ELF `.init_array` section is called by the dynamic loader
//! (glibc's and musl's alike) before `main`, in every executable that links this crate:
//! ordinary binaries, examples, and `cargo test`/nextest harnesses, with no call in user code.
//! `#[used]` keeps the static through optimisation, and rustc keeps `#[used]` statics of every
//! linked crate in the final executable. This is the mechanism of the `ctor` crate, written out
//! here in a few lines because it is the one piece of life before `main` we need; no
//! dependency and no proc-macro are needed for it.
//!
//! The constructor looks for the `MPROC_WORKER` marker in the environment. Without it, it
//! returns and the program starts normally. With it, this process is a spawned worker or a
//! fork server: it removes the marker (so the worker's own children are ordinary), adopts the
//! descriptors the marker names, and never returns, so no user code past this point ever runs
//! in it. A marker that cannot be parsed ends the process with a message and
//! [`EXIT_BAD_MARKER`] instead of running `main` with a half-set-up environment.
//!
//! The marker's format is [`super::marker`]'s. A role of a module above `start` (the
//! shared-memory keeper) is entered through the entry record its marker names (see
//! [`super::role`]), so this file knows none of them.
//!
//! Constructors of other crates may run before or after this one (their order is unspecified);
//! they run in workers too, as they would in any process of the executable.

use std::os::fd::{OwnedFd, RawFd};

use super::marker::{MARKER, Marker, Role, parse};
use super::role::{self, RoleFn};
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc;

/// Exit code of a process whose worker marker is malformed.
pub(crate) const EXIT_BAD_MARKER: i32 = 121;

// The one unsafe attribute outside `sys/`: placing a function pointer in `.init_array` is
// sound because `bootstrap` has the signature the loader calls (no arguments are read).
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static BOOTSTRAP: extern "C" fn() = bootstrap;

extern "C" fn bootstrap() {
    // Fork handlers registered while the process has one thread: none can be registering
    // when some fork comes (see `fd::watch_forks`, `proc::fork_generation`).
    fd::watch_forks();
    proc::fork_generation();
    let Some(value) = std::env::var_os(MARKER) else {
        return;
    };
    // The process is single-threaded here: only the loader has run.
    proc::remove_env_before_main(MARKER);
    let marker = parse(&value).and_then(|m| adopt(&m).map(|fds| (m.role, fds)));
    match marker {
        Ok((role, (ctrl, alive))) => become_role(role, ctrl, alive),
        Err(why) => {
            proc::write_stderr(&format!(
                "mproc: this process was started as a worker but its {MARKER} value {value:?} \
                 is malformed ({why}); exiting without running main\n"
            ));
            proc::exit_now(EXIT_BAD_MARKER);
        }
    }
}

fn adopt(m: &Marker) -> Result<(OwnedFd, OwnedFd), String> {
    let take = |n: RawFd, what: &str| {
        fd::adopt_inherited(n).map_err(|e| format!("the {what} descriptor {n} is unusable: {e}"))
    };
    Ok((take(m.ctrl, "control")?, take(m.alive, "liveness")?))
}

fn become_role(role: Role, ctrl: OwnedFd, alive: OwnedFd) -> ! {
    proc::ignore_sigpipe();
    match role {
        Role::Worker => {
            super::alive::watch(alive);
            super::worker::run(InternalFd::new(ctrl))
        }
        Role::ForkServer => super::forkserver::serve(InternalFd::new(ctrl), alive),
        Role::Enter(offset) => match role::named_by(offset) {
            Ok(RoleFn::Spawned(serve)) => serve(ctrl, alive),
            claimed => {
                let why = claimed
                    .err()
                    .map_or("it is not a spawned role".into(), |e| e.to_string());
                proc::write_stderr(&format!(
                    "mproc: this process was started for a role that its {MARKER} value does not \
                     name ({why}); exiting without running main\n"
                ));
                proc::exit_now(EXIT_BAD_MARKER)
            }
        },
    }
}
