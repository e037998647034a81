//! One name a keeper keeps, and the write lease that tells when nobody else holds its file
//! (see [`super::keeper`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;

use super::keeper::Identity;
use super::records::Record;
use crate::sys::shm;

/// One name the keeper keeps.
pub(super) struct Segment {
    pub(super) name: String,
    /// The keeper's own, read-only opening of the file: the one it asks leases on. It also
    /// keeps the inode from being reused while the name is kept.
    pub(super) file: OwnedFd,
    pub(super) identity: Identity,
    /// The inotify watch on the file, if it could be had.
    pub(super) watch: Option<i32>,
    /// Never read: held (locked) while the name is kept, removed when it is done.
    pub(super) _record: Option<Record>,
}

impl Segment {
    /// Removes the name if nobody else holds the file; returns whether the keeper is done with
    /// it (the name removed now, or by someone else before, or now naming another file).
    pub(super) fn release(&self) -> bool {
        if !self.named() {
            return true;
        }
        match shm::try_write_lease(self.file.as_fd()) {
            Ok(true) => self.remove_under_lease(),
            // Held; or no lease to be had, so nobody can be known not to hold it.
            Ok(false) | Err(_) => false,
        }
    }

    /// With the write lease taken (nobody else had the file open): removes the name unless an
    /// opener came meanwhile, then gives the lease back. Whether the keeper is done with it.
    pub(super) fn remove_under_lease(&self) -> bool {
        // An open of the name that came meanwhile is breaking the lease (it waits for us): it
        // will hold the file, so the name stays. So does one the kernel let through after the
        // lease-break time, had this keeper been stopped that long. Asked again at its release.
        let opener = !shm::holds_write_lease(self.file.as_fd());
        if !opener && self.named() {
            let _ = shm::shm_unlink(&self.name);
        }
        shm::release_lease(self.file.as_fd());
        !opener
    }

    /// Whether its name still names its file.
    pub(super) fn named(&self) -> bool {
        shm::shm_identity(&self.name).ok() == Some(self.identity)
    }
}

/// Creates segment `name` for a request, recorded in the first of `dirs` that takes it.
/// Returns it and its file open for reading and writing (for the requester).
pub(super) fn create_segment(
    name: &str,
    len: u64,
    dirs: &[Rc<OwnedFd>],
) -> io::Result<(Segment, OwnedFd)> {
    let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let shared = shm::shm_create_unnamed(len)?;
    // Leases are how the keeper will know: make sure they work here before anyone relies on
    // them (no other opening exists yet, so one must be granted).
    if shm::try_write_lease(shared.as_fd()).ok() != Some(true) {
        return Err(io::Error::from_raw_os_error(libc::ENOLCK));
    }
    shm::release_lease(shared.as_fd());
    let file = shm::reopen_read_only(shared.as_fd())?;
    let identity = shm::file_identity(file.as_fd())?;
    // Recorded before it has a name, so a name never exists unrecorded. No record (every
    // directory unusable, or full, or no file handles here) costs only recovery from this
    // keeper's death.
    let handle = shm::file_handle(file.as_fd());
    let record = handle.ok().and_then(|handle| {
        dirs.iter()
            .find_map(|d| Record::write(d, identity, &handle, name).ok())
    });
    shm::shm_link(shared.as_fd(), name)?;
    // The requester gets an opening made through the name, so that its descriptor and mapping
    // show the name (in /proc and lsof), not the unnamed file's "(deleted)".
    let shared = match shm::shm_open(name) {
        Ok(named) if shm::file_identity(named.as_fd()).ok() == Some(identity) => named,
        _ => shared,
    };
    let segment = Segment {
        name: name.to_owned(),
        file,
        identity,
        watch: None,
        _record: record,
    };
    Ok((segment, shared))
}
