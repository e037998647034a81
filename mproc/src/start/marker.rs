//! The marker that tells a process started from this executable what it is to become, read
//! by the constructor before `main` (see [`super::bootstrap`]).
//!
//! Its format is `mproc1:<role>:<control fd>:<liveness fd>`, with role `worker`,
//! `forkserver`, or `enter=<offset>` for a role of a module above `start` (the offset names the
//! role's entry record; see [`super::role`]).

use std::ffi::OsStr;
use std::os::fd::RawFd;

/// The environment variable that marks a worker.
pub(crate) const MARKER: &str = "MPROC_WORKER";

/// The marker's version prefix.
const VERSION: &str = "mproc1";

/// What a marked process is to become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Worker,
    ForkServer,
    /// The role whose entry record this offset names (the shared-memory keeper, say).
    Enter(i64),
}

impl Role {
    fn name(self) -> String {
        match self {
            Role::Worker => "worker".into(),
            Role::ForkServer => "forkserver".into(),
            Role::Enter(offset) => format!("enter={offset}"),
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
        other => match other.strip_prefix("enter=").map(str::parse) {
            Some(Ok(offset)) => Role::Enter(offset),
            _ => return Err(format!("unknown role {other:?}")),
        },
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
    fn entered_roles_round_trip() {
        for offset in [-4096, 0, i64::MAX] {
            let m = marker(Role::Enter(offset), 5, 6);
            assert_eq!(parse(OsStr::new(&m)).unwrap().role, Role::Enter(offset));
        }
    }

    #[test]
    fn malformed_markers_say_why() {
        for (bad, why) in [
            ("", "expected 4 fields"),
            ("mproc1:worker:3", "expected 4 fields"),
            ("mproc0:worker:3:4", "unknown version"),
            ("mproc1:boss:3:4", "unknown role"),
            ("mproc1:enter=x:3:4", "unknown role"),
            ("mproc1:enter:3:4", "unknown role"),
            ("mproc1:worker:x:4", "not a descriptor"),
            ("mproc1:worker:1:4", "not a descriptor"),
            ("mproc1:worker:5:5", "the same"),
        ] {
            let e = parse(OsStr::new(bad)).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
