//! The shared-memory keeper: the helper process that removes a
//! [`SharedMemory`](crate::SharedMemory)'s name from `/dev/shm` once no process holds it, however
//! its holders end (`SIGKILL` included), and never while one still does.
//!
//! # Why a process, and how it counts
//!
//! A name in `/dev/shm` outlives every process unless someone removes it, and a process killed
//! with `SIGKILL` removes nothing; so the remover must be another process. Python's resource
//! tracker plays that part but counts per process that *registered* a name, and so removes a
//! segment when any process that merely opened it exits (cpython gh-82300). The keeper instead
//! lets the kernel count, with nothing to register and no address anyone could take first:
//!
//! - Every holder has the segment's file open: a descriptor, or a mapping made from one (a copy
//!   inherited by `fork`, passed to a child or in flight inside a message counts just the same).
//!   The keeper keeps one read-only opening of its own and asks the kernel for a *write lease*
//!   on it, which is granted only when no other opening of the file exists anywhere. Granted,
//!   the keeper removes the name, then gives the lease back. Anyone opening the name meanwhile
//!   waits for the lease (the kernel breaks it): if the keeper sees the break before it
//!   removes the name, it leaves the name to the opener (and asks again at its release);
//!   if the open came in the microseconds after, it gets the file whose name has just gone,
//!   and [`SharedMemory::open`](crate::SharedMemory::open) sees that and answers `ENOENT`, as
//!   if it had come just after. Refused, somebody holds the segment.
//! - The keeper asks again whenever an opening of the file is released in any process: it
//!   watches each file with inotify, which reports the release of an opening (its last close,
//!   last `munmap`, or the end of the message that carried it). inotify sends that report
//!   before the kernel has counted the opening released, so a lease refused just after a
//!   report is asked for again a moment later, and again at doubling waits for a while
//!   ([`RECHECK_FIRST`](super::server::RECHECK_FIRST)): otherwise the last holder's own
//!   release could refuse it, and no later report would come. Without inotify (out of
//!   instances or watches) it asks every
//!   [`POLL_EVERY`](super::server::POLL_EVERY).
//! - So `open(name)` only opens the file: no socket, no address (a derived abstract socket
//!   address was the old design, and any local user could bind the next ones first).
//!
//! # Records: names outlive a killed keeper
//!
//! A keeper can itself be `SIGKILL`ed (the out-of-memory killer). So that its names do not stay
//! in `/dev/shm` for ever, each keeper writes, before a name exists, a *record* of it (the
//! name, and its file's device and inode numbers and file handle: numbers alone come back in a
//! fresh tmpfs, after a reboot or a container's restart, while tmpfs gives each file's handle a
//! random generation) in a directory only this user can use
//! ([`record_dirs`](super::records::record_dirs): `$XDG_RUNTIME_DIR/mproc`, `/run/user/<uid>/mproc`, `/tmp/mproc-<uid>`,
//! each checked to be this user's, mode 0700, never a directory someone else made first), and
//! holds a lock on the record (`dir::try_lock`: it belongs to the keeper's opening of the
//! record, so it ends with the keeper however it dies). A record whose lock nobody holds is an
//! orphan. A keeper *adopts* orphans — takes the lock, checks that the name still names the
//! recorded file of this user, and keeps it like its own (so it removes the name once nobody
//! holds it, or right away if nobody does):
//!
//! - when it starts (the next `create` of this user, in any process);
//! - when a process that opens or drops a segment finds its record orphaned and asks it to
//!   (starting a keeper for that if it has none): holders notice their keeper's death.
//!
//! Only a name recorded by a keeper of this user, still naming the very file recorded, is ever
//! removed: never a name of another program's segment.
//!
//! Each process that creates shared memory starts one keeper, the first time, with the `Spawn`
//! machinery (a fresh copy of the executable), which forks once and lets its parent exit: the
//! keeper is nobody's child (never a zombie of its creator), runs in a session of its own with
//! its standard streams on `/dev/null`, and ignores `SIGINT`, `SIGTERM`, `SIGHUP` (so Ctrl-C
//! or a kill of the creator's process group leaves it to do its work) and `SIGIO` (what a lease
//! break sends). It exits once its creator has gone and every name it keeps has been removed.
//!
//! # Protocol
//!
//! One sequenced-packet socket pair joins a process to its keeper ([`Request`]):
//!
//! - `C`, the size (8 bytes, little-endian), the name; with a fresh *reply socket*, on which
//!   the keeper answers: an error number (0 for success) as 4 little-endian bytes, with the new
//!   file, open for reading and writing. The keeper creates the name (so no moment exists in
//!   which a named segment has no keeper).
//! - `A`: adopt the orphaned records now. No answer.
//!
//! # Files
//!
//! This file holds what every side shares (names, the request protocol); beside it,
//! [`records`](super::records) (the record format and directories),
//! [`lease`](super::lease) (one kept name, and removing it under a write lease),
//! [`server`](super::server) (the keeper process's loop) and [`client`](super::client) (a
//! process's side: its keeper, and its requests).



/// The longest name a segment may have (`NAME_MAX`).
pub(crate) const MAX_NAME: usize = 255;

/// Whether `name` may name a segment: 1 to [`MAX_NAME`] bytes, none of them `/` or NUL, and
/// not `.` or `..`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.contains(['/', '\0'])
        && name != "."
        && name != ".."
}

/// Which file a segment is: device and inode numbers.
pub(super) type Identity = (u64, u64);

/// What a process asks its keeper (see "Protocol" above).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Request<'a> {
    /// Create the segment `name` of `len` bytes.
    Create { len: u64, name: &'a str },
    /// Adopt the orphaned records now.
    Adopt,
}

/// The longest request: `C`, the size, the longest name.
pub(super) const MAX_REQUEST: usize = 1 + 8 + MAX_NAME;

impl Request<'_> {
    pub(super) fn encode(&self) -> Vec<u8> {
        match *self {
            Request::Create { len, name } => {
                let mut msg = Vec::with_capacity(9 + name.len());
                msg.push(b'C');
                msg.extend(len.to_le_bytes());
                msg.extend(name.as_bytes());
                msg
            }
            Request::Adopt => vec![b'A'],
        }
    }

    /// The request in `msg`, or the error number to answer it with.
    pub(super) fn parse(msg: &[u8]) -> Result<Request<'_>, i32> {
        match msg.split_first() {
            Some((b'C', rest)) if rest.len() > 8 => {
                let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
                let name = std::str::from_utf8(&rest[8..]).map_err(|_| libc::EINVAL)?;
                if len == 0 || !valid_name(name) {
                    return Err(libc::EINVAL);
                }
                Ok(Request::Create { len, name })
            }
            Some((b'A', [])) => Ok(Request::Adopt),
            _ => Err(libc::EINVAL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "psm_1234", "mproc_00ff", &"x".repeat(MAX_NAME)] {
            assert!(valid_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/a",
            "a\0b",
            &"x".repeat(MAX_NAME + 1),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let longest = "n".repeat(MAX_NAME);
        for r in [
            Request::Create { len: 1, name: "a" },
            Request::Create {
                len: u64::MAX,
                name: &longest,
            },
            Request::Adopt,
        ] {
            assert_eq!(Request::parse(&r.encode()), Ok(r));
            assert!(r.encode().len() <= MAX_REQUEST);
        }
        let too_long = Request::Create {
            len: 1,
            name: &"n".repeat(MAX_NAME + 1),
        };
        for bad in [
            &b""[..],
            b"C",
            b"C12345678",
            b"A!",
            b"U",
            &Request::Create { len: 0, name: "a" }.encode(),
            &Request::Create { len: 1, name: ".." }.encode(),
            &too_long.encode(),
            b"C\x01\0\0\0\0\0\0\0\xff",
        ] {
            assert_eq!(Request::parse(bad), Err(libc::EINVAL), "{bad:?}");
        }
    }
}
