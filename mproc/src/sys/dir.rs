//! A private directory and the small files in it: checked ownership, operations relative to an
//! open directory (so a path swapped after the check changes nothing), and open-file-description
//! locks that say whether the process that wrote a file still lives (or whether a message
//! that carries a file still exists, see `queue::ring`).

// Open-file-description locks (F_OFD_SETLK, F_OFD_GETLK), which rustix does not wrap (its
// `fcntl_lock` takes process-associated locks).
#![allow(unsafe_code)]

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

fn stat_of(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(fd)?)
}

fn is(st: &Stat, kind: FileType) -> bool {
    FileType::from_raw_mode(st.st_mode) == kind
}

/// Opens the directory `path`, first making it (mode 0700) when `create` is set and it does not
/// exist, and checks that only this process's user can use it: it is a directory, not a
/// symbolic link, owned by this user, and nobody else may read, write or enter it. A directory
/// in a shared place such as `/tmp` may have been made by someone else first: that one is
/// refused (`PermissionDenied`), never used.
///
/// See mkdir(2), open(2), fstat(2).
pub(crate) fn open_private(path: &Path, create: bool) -> io::Result<OwnedFd> {
    if create {
        match rustix::fs::mkdir(path, Mode::RWXU) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::open(path, flags, Mode::empty())?;
    let st = stat_of(dir.as_fd())?;
    if !is(&st, FileType::Directory)
        || st.st_uid != super::proc::geteuid()
        || st.st_mode & 0o077 != 0
    {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of this user's alone (owner {}, mode {:o})",
                path.display(),
                st.st_uid,
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// Which file `dir` is (device and inode), to tell two paths to one directory apart.
pub(crate) fn identity(file: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = stat_of(file)?;
    Ok((st.st_dev, st.st_ino))
}

/// Creates the file `name` in `dir` (it must not exist), readable and writable by this user
/// only. Never follows a symbolic link.
///
/// See openat(2).
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW,
    )
}

/// Opens the existing regular file `name` in `dir` for reading and writing, without following
/// a symbolic link or blocking (on a FIFO someone left there). `InvalidData` if it is not a
/// regular file of this user's.
pub(crate) fn open_file(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let file = open_at(
        dir,
        name,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK,
    )?;
    let st = stat_of(file.as_fd())?;
    if !is(&st, FileType::RegularFile) || st.st_uid != super::proc::geteuid() {
        return Err(io::ErrorKind::InvalidData.into());
    }
    Ok(file)
}

fn open_at(dir: BorrowedFd<'_>, name: &str, flags: OFlags) -> io::Result<OwnedFd> {
    let mode = Mode::RUSR | Mode::WUSR;
    Ok(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::CLOEXEC,
        mode,
    )?)
}

/// Gives the file `from` in `dir` the second name `to` (which must not exist: `AlreadyExists`).
///
/// See linkat(2).
pub(crate) fn link(dir: BorrowedFd<'_>, from: &str, to: &str) -> io::Result<()> {
    Ok(rustix::fs::linkat(dir, from, dir, to, AtFlags::empty())?)
}

/// Removes the name `name` from `dir`.
///
/// See unlinkat(2).
pub(crate) fn remove(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
}

/// Which file `name` in `dir` is now (device and inode), without following a symbolic link.
///
/// See fstatat(2).
pub(crate) fn identity_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<(u64, u64)> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok((st.st_dev, st.st_ino))
}

/// How long ago `file` was last modified; zero if its clock is ahead of ours.
pub(crate) fn age(file: BorrowedFd<'_>) -> io::Result<std::time::Duration> {
    let st = stat_of(file)?;
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
    Ok(std::time::SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default())
}

/// The names in `dir` (without `.` and `..`); names that are not UTF-8 are left out.
pub(crate) fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<String>> {
    // Through the descriptor's own entry, so the directory read is the one that was checked.
    let entries = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name: &OsStr = name.as_ref();
            name.to_str().map(str::to_owned)
        })
        .collect())
}

/// Reads `file` from its start: at most `max` bytes.
pub(crate) fn read_start(file: BorrowedFd<'_>, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut filled = 0;
    while filled < max {
        match rustix::io::pread(file, &mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

/// Writes all of `data` at the start of `file`.
pub(crate) fn write_start(file: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        match rustix::io::pwrite(file, &data[done..], done as u64) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A whole-file lock (the write lock or a shared one, as `kind` says), of the kind that belongs
/// to an open file description: it is held until the last descriptor of that description
/// closes (however its process ends), other descriptions conflict with it even in the same
/// process, and a `fork` child shares it.
fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: an all-zero flock is a valid value (start 0, length 0: the whole file; pid 0, as
    // open-file-description locks require).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

/// Takes the lock on `file` (see [`whole_file`]) without waiting: false if another open file
/// description holds it.
///
/// See fcntl(2), "Open file description locks".
pub(crate) fn try_lock(file: BorrowedFd<'_>) -> io::Result<bool> {
    let fl = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl on a borrowed, open descriptor, with a valid `flock` that it only reads.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } != -1 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        e => Err(e),
    }
}

/// Takes a shared lock on the whole of `file` for its open file description (see
/// [`whole_file`]): other descriptions may hold one too, none may take the write lock, and
/// [`is_locked`] sees it. It lasts until the description's last descriptor closes, wherever
/// that is (in another process, in a message queued on a socket).
///
/// See fcntl(2), "Open file description locks".
pub(crate) fn lock_shared(file: BorrowedFd<'_>) -> io::Result<()> {
    let fl = whole_file(libc::F_RDLCK);
    // SAFETY: fcntl on a borrowed, open descriptor, with a valid `flock` that it only reads.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Takes off the lock the open file description of `file` holds, if any.
///
/// See fcntl(2), "Open file description locks".
pub(crate) fn unlock(file: BorrowedFd<'_>) -> io::Result<()> {
    let fl = whole_file(libc::F_UNLCK);
    // SAFETY: fcntl on a borrowed, open descriptor, with a valid `flock` that it only reads.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `file` (the write lock, or a
/// shared one), without taking one.
///
/// See fcntl(2), `F_OFD_GETLK`.
pub(crate) fn is_locked(file: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fl = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl on a borrowed, open descriptor, with a valid, writable `flock`.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("mproc-test-dir-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_private_directory_is_made_and_checked() {
        let p = scratch("made");
        let dir = open_private(&p, true).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Opening it again finds the same directory.
        let again = open_private(&p, true).unwrap();
        assert_eq!(
            identity(dir.as_fd()).unwrap(),
            identity(again.as_fd()).unwrap()
        );
        std::fs::remove_dir(&p).unwrap();
    }

    /// What someone else may have left at the path first is never used.
    #[test]
    fn a_squatted_directory_is_refused() {
        // Open to others.
        let p = scratch("open");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = open_private(&p, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        std::fs::remove_dir(&p).unwrap();
        // A symbolic link to a directory, even a good one.
        let (target, link) = (scratch("target"), scratch("link"));
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_private(&link, true).is_err());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir(&target).unwrap();
        // A plain file.
        let p = scratch("file");
        std::fs::write(&p, b"").unwrap();
        assert!(open_private(&p, true).is_err());
        std::fs::remove_file(&p).unwrap();
        // Another user's directory (only root can make one to try).
        if super::super::proc::geteuid() == 0 {
            let p = scratch("other");
            std::fs::create_dir(&p).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
            let e = open_private(&p, true).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            std::fs::remove_dir(&p).unwrap();
        }
    }

    #[test]
    fn a_lock_is_seen_by_other_descriptions_and_ends_with_its_own() {
        let p = scratch("locks");
        let dir = open_private(&p, true).unwrap();
        let a = create_file(dir.as_fd(), "f").unwrap();
        assert!(create_file(dir.as_fd(), "f").is_err(), "it exists");
        let b = open_file(dir.as_fd(), "f").unwrap();
        assert!(!is_locked(b.as_fd()).unwrap());
        assert!(try_lock(a.as_fd()).unwrap());
        assert!(is_locked(b.as_fd()).unwrap());
        assert!(!try_lock(b.as_fd()).unwrap(), "one holder at a time");
        drop(a);
        assert!(
            !is_locked(b.as_fd()).unwrap(),
            "the lock ends with its description"
        );
        assert!(try_lock(b.as_fd()).unwrap());
        write_start(b.as_fd(), b"hello").unwrap();
        assert_eq!(read_start(b.as_fd(), 3).unwrap(), b"hel");
        assert_eq!(read_start(b.as_fd(), 64).unwrap(), b"hello");
        link(dir.as_fd(), "f", "g").unwrap();
        assert_eq!(
            link(dir.as_fd(), "f", "g").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(
            identity_at(dir.as_fd(), "g").unwrap(),
            identity(b.as_fd()).unwrap()
        );
        let mut names = list(dir.as_fd()).unwrap();
        names.sort();
        assert_eq!(names, ["f", "g"]);
        remove(dir.as_fd(), "f").unwrap();
        remove(dir.as_fd(), "g").unwrap();
        std::fs::remove_dir(&p).unwrap();
    }

    /// Shared locks, as a queue's handles in flight hold them: several at once, each seen by
    /// the other descriptions (not by its own), each ended by its unlock or its last close.
    #[test]
    fn shared_locks_are_seen_by_other_descriptions() {
        let p = scratch("shared");
        let dir = open_private(&p, true).unwrap();
        let own = create_file(dir.as_fd(), "f").unwrap();
        let (a, b) = (open_file(dir.as_fd(), "f"), open_file(dir.as_fd(), "f"));
        let (a, b) = (a.unwrap(), b.unwrap());
        lock_shared(a.as_fd()).unwrap();
        lock_shared(b.as_fd()).unwrap();
        assert!(is_locked(own.as_fd()).unwrap());
        assert!(is_locked(a.as_fd()).unwrap(), "b's, seen from a");
        assert!(!try_lock(own.as_fd()).unwrap());
        unlock(a.as_fd()).unwrap();
        assert!(is_locked(own.as_fd()).unwrap(), "b's still");
        assert!(!is_locked(b.as_fd()).unwrap(), "its own is not seen");
        let copy = b.try_clone().unwrap();
        drop(b);
        assert!(is_locked(own.as_fd()).unwrap(), "a descriptor of b's is left");
        drop(copy);
        assert!(!is_locked(own.as_fd()).unwrap());
        remove(dir.as_fd(), "f").unwrap();
        std::fs::remove_dir(&p).unwrap();
    }
}
