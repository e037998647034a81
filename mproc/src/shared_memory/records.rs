//! The keeper's records: what each says (the name, and which file it is), where they live,
//! and how one is written and locked (see [`super::keeper`]'s "Records").

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use super::keeper::{Identity, MAX_NAME, valid_name};
use crate::sys::{dir, proc, shm};

/// What a record holds: a tag, the file's device and inode (8 bytes each, little-endian), the
/// length of its file handle (1 byte, 1 to [`shm::MAX_FILE_HANDLE`]) and the handle, then its
/// name. The handle tells the recorded file from a later one with the same numbers.
const RECORD_TAG: &[u8] = b"mproc shared-memory record 2\n";
pub(super) const MAX_RECORD: usize = RECORD_TAG.len() + 16 + 1 + shm::MAX_FILE_HANDLE + MAX_NAME;

/// What a record says: which file (numbers and handle), and its name.
pub(super) type Recorded<'a> = (Identity, &'a [u8], &'a str);

pub(super) fn encode_record(((dev, ino), handle, name): Recorded<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_RECORD);
    out.extend(RECORD_TAG);
    out.extend(dev.to_le_bytes());
    out.extend(ino.to_le_bytes());
    out.push(handle.len() as u8);
    out.extend(handle);
    out.extend(name.as_bytes());
    out
}

/// What a record's bytes say; `None` unless they are exactly a record.
pub(super) fn parse_record(bytes: &[u8]) -> Option<Recorded<'_>> {
    let rest = bytes.strip_prefix(RECORD_TAG)?;
    let (numbers, rest) = rest.split_at_checked(16)?;
    let dev = u64::from_le_bytes(numbers[..8].try_into().ok()?);
    let ino = u64::from_le_bytes(numbers[8..].try_into().ok()?);
    let (&handle_len, rest) = rest.split_first()?;
    let handle_len = usize::from(handle_len);
    if handle_len == 0 || handle_len > shm::MAX_FILE_HANDLE {
        return None;
    }
    let (handle, name) = rest.split_at_checked(handle_len)?;
    let name = std::str::from_utf8(name).ok().filter(|n| valid_name(n))?;
    Some(((dev, ino), handle, name))
}

/// The file name of the record of the segment whose file is `identity`: a process that has
/// the file finds its record from it alone.
pub(super) fn record_entry((dev, ino): Identity) -> String {
    format!("r-{dev:x}-{ino:x}")
}

/// The identity a record's file name stands for (only in the exact form [`record_entry`]
/// writes).
pub(super) fn parse_record_entry(entry: &str) -> Option<Identity> {
    let (dev, ino) = entry.strip_prefix("r-")?.split_once('-')?;
    let id = (
        u64::from_str_radix(dev, 16).ok()?,
        u64::from_str_radix(ino, 16).ok()?,
    );
    (record_entry(id) == entry).then_some(id)
}

/// The directories this user's keepers may keep records in, by preference. The same for every
/// process of the user that has the same `$XDG_RUNTIME_DIR` (or none): a keeper writes in the
/// first it can use, and looks for orphans in all of them.
fn record_dir_paths() -> Vec<PathBuf> {
    let uid = proc::geteuid();
    let mut paths = Vec::new();
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && runtime.is_absolute() {
            paths.push(runtime.join("mproc"));
        }
    paths.push(PathBuf::from(format!("/run/user/{uid}/mproc")));
    paths.push(PathBuf::from(format!("/tmp/mproc-{uid}")));
    paths
}

/// The record directories that exist and are this user's alone, each once; with `create`,
/// the first that can be had is made if need be (the others are only looked in). One made by
/// someone else first (in `/tmp`, anyone may) is left out: the keeper then records in another,
/// or nowhere (its names then live as long as it does).
pub(super) fn record_dirs(create: bool) -> Vec<OwnedFd> {
    let mut seen = Vec::new();
    let mut dirs = Vec::new();
    for path in record_dir_paths() {
        let Ok(d) = dir::open_private(&path, create && dirs.is_empty()) else {
            continue;
        };
        if let Ok(id) = dir::identity(d.as_fd())
            && !seen.contains(&id) {
                seen.push(id);
                dirs.push(d);
            }
    }
    dirs
}

/// A record a keeper holds: its directory, its file name there, and the opening of it that
/// holds the lock. Dropping it removes the record (before its lock goes with the descriptor,
/// so a record found unlocked is one whose keeper died).
pub(super) struct Record {
    pub(super) dir: Rc<OwnedFd>,
    pub(super) entry: String,
    /// Never read: held for the lock.
    pub(super) _lock: OwnedFd,
}

impl Drop for Record {
    fn drop(&mut self) {
        let _ = dir::remove(self.dir.as_fd(), &self.entry);
    }
}

impl Record {
    /// Records segment `name`, whose file is `identity` with file handle `handle`, in `dir`:
    /// written and locked under a staging name, then given its real one, so a record is never
    /// seen half-written or unlocked while its keeper lives.
    pub(super) fn write(
        dir: &Rc<OwnedFd>,
        identity: Identity,
        handle: &[u8],
        name: &str,
    ) -> io::Result<Record> {
        let staging = format!("t-{:016x}", proc::random_u64()?);
        let file = dir::create_file(dir.as_fd(), &staging)?;
        let written = dir::try_lock(file.as_fd()).and_then(|locked| {
            if !locked {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            dir::write_start(file.as_fd(), &encode_record((identity, handle, name)))?;
            claim_entry(dir.as_fd(), &staging, &record_entry(identity))
        });
        let _ = dir::remove(dir.as_fd(), &staging);
        written?;
        Ok(Record {
            dir: dir.clone(),
            entry: record_entry(identity),
            _lock: file,
        })
    }
}

/// Gives the staged record `staging` the name `entry`. A record already there is a stale one,
/// of a file that had the same identity before (inode numbers come back only after billions of
/// files): it is removed once its lock can be had (an adopter may be deciding about it).
fn claim_entry(dir: BorrowedFd<'_>, staging: &str, entry: &str) -> io::Result<()> {
    for _ in 0..100 {
        match dir::link(dir, staging, entry) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if let Ok(old) = dir::open_file(dir, entry)
                    && dir::try_lock(old.as_fd())? {
                        let _ = dir::remove(dir, entry);
                        continue;
                    }
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
    Err(io::ErrorKind::AlreadyExists.into())
}

/// Removes the staging file `entry` of a keeper that died while writing a record (unlocked, and
/// old: a live keeper locks it right after making it).
pub(super) fn remove_stale_staging(d: BorrowedFd<'_>, entry: &str) {
    let Ok(file) = dir::open_file(d, entry) else {
        return;
    };
    let stale = dir::age(file.as_fd()).is_ok_and(|a| a > Duration::from_secs(60))
        && dir::try_lock(file.as_fd()).ok() == Some(true)
        && dir::identity_at(d, entry).ok() == dir::identity(file.as_fd()).ok();
    if stale {
        let _ = dir::remove(d, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let handle = [1, 0, 0, 0, 9, 9, 9, 9, 2, 0, 0, 0];
        let bytes = encode_record(((7, u64::MAX), &handle, "mproc_1"));
        assert_eq!(
            parse_record(&bytes),
            Some(((7, u64::MAX), &handle[..], "mproc_1"))
        );
        assert!(bytes.len() <= MAX_RECORD);
        assert_eq!(parse_record(&bytes[..bytes.len() - 7]), None, "no name");
        assert_eq!(parse_record(&encode_record(((1, 2), &handle, "a/b"))), None);
        assert_eq!(parse_record(&encode_record(((1, 2), &[], "a"))), None);
        let too_long = [0; shm::MAX_FILE_HANDLE + 1];
        assert_eq!(parse_record(&encode_record(((1, 2), &too_long, "a"))), None);
        assert_eq!(parse_record(&bytes[1..]), None);
        assert_eq!(record_entry((0x10, 0xab)), "r-10-ab");
        assert_eq!(parse_record_entry("r-10-ab"), Some((0x10, 0xab)));
        for bad in [
            "r-010-ab",
            "r-10-AB",
            "r-10",
            "t-10-ab",
            "r-10-ab-1",
            "r--1-2",
        ] {
            assert_eq!(parse_record_entry(bad), None, "{bad:?}");
        }
    }
}
