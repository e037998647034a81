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
//! The marker's format is `mproc1:<role>:<control fd>:<liveness fd>`, with role `worker`,
//! `forkserver` or `shmkeeper`.
//!
//! Constructors of other crates may run before or after this one (their order is unspecified);
//! they run in workers too, as they would in any process of the executable.

use std::ffi::OsStr;
use std::os::fd::{OwnedFd, RawFd};

use crate::sys::fd::{self, InternalFd};
use crate::sys::proc;

/// The environment variable that marks a worker.
pub(crate) const MARKER: &str = "MPROC_WORKER";

/// The marker's version prefix.
const VERSION: &str = "mproc1";

/// Exit code of a process whose worker marker is malformed.
pub(crate) const EXIT_BAD_MARKER: i32 = 121;

/// What a marked process is to become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Worker,
    ForkServer,
    /// The keeper of this process's named shared memory (see [`super::keeper`]).
    Keeper,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::ForkServer => "forkserver",
            Role::Keeper => "shmkeeper",
        }
    }
}

/// The marker value for `role` with the control and liveness descriptors at these numbers.
pub(crate) fn marker(role: Role, ctrl: RawFd, alive: RawFd) -> String {
    format!("{VERSION}:{}:{ctrl}:{alive}", role.name())
}

/// A parsed marker.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) role: Role,
    pub(crate) ctrl: RawFd,
    pub(crate) alive: RawFd,
}

/// Parses a marker, saying what is wrong with it if it cannot.
pub(crate) fn parse(value: &OsStr) -> Result<Marker, String> {
    let s = value.to_str().ok_or("it is not UTF-8")?;
    let parts: Vec<&str> = s.split(':').collect();
    let [version, role, ctrl, alive] = parts[..] else {
        return Err(format!(
            "expected 4 fields separated by ':', found {}",
            parts.len()
        ));
    };
    if version != VERSION {
        return Err(format!("unknown version {version:?}, expected {VERSION:?}"));
    }
    let role = match role {
        "worker" => Role::Worker,
        "forkserver" => Role::ForkServer,
        "shmkeeper" => Role::Keeper,
        other => return Err(format!("unknown role {other:?}")),
    };
    let fd = |f: &str| -> Result<RawFd, String> {
        match f.parse::<RawFd>() {
            Ok(n) if n > 2 => Ok(n),
            _ => Err(format!("{f:?} is not a descriptor number above 2")),
        }
    };
    let (ctrl, alive) = (fd(ctrl)?, fd(alive)?);
    if ctrl == alive {
        return Err("the control and liveness descriptors are the same".into());
    }
    Ok(Marker { role, ctrl, alive })
}

// The one unsafe attribute outside `sys/`: placing a function pointer in `.init_array` is
// sound because `bootstrap` has the signature the loader calls (no arguments are read).
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
static BOOTSTRAP: extern "C" fn() = bootstrap;

extern "C" fn bootstrap() {
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
        Role::Keeper => super::keeper::serve(ctrl, alive),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip() {
        let m = marker(Role::ForkServer, 3, 4);
        assert_eq!(
            parse(OsStr::new(&m)).unwrap(),
            Marker {
                role: Role::ForkServer,
                ctrl: 3,
                alive: 4
            }
        );
    }

    #[test]
    fn malformed_markers_say_why() {
        for (bad, why) in [
            ("", "expected 4 fields"),
            ("mproc1:worker:3", "expected 4 fields"),
            ("mproc0:worker:3:4", "unknown version"),
            ("mproc1:boss:3:4", "unknown role"),
            ("mproc1:worker:x:4", "not a descriptor"),
            ("mproc1:worker:1:4", "not a descriptor"),
            ("mproc1:worker:5:5", "the same"),
        ] {
            let e = parse(OsStr::new(bad)).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
