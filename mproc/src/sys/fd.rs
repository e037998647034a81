//! Descriptor helpers: close-on-exec flags, poll, pipes, and the list of mproc's internal
//! descriptors that a forked child must close.

// PENDING
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Descriptors that belong to mproc's bookkeeping in this process (sockets to children, the
/// fork server, the liveness pipe). A child made with `fork` closes all of them except the
/// ones meant for it, so end-of-file and death detection never depend on who forked when.
static INTERNAL: Mutex<BTreeSet<RawFd>> = Mutex::new(BTreeSet::new());

fn internal() -> MutexGuard<'static, BTreeSet<RawFd>> {
    INTERNAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// An [`OwnedFd`] that is listed as internal for as long as it lives.
///
/// It remembers which process made it: in a forked child that still holds one of its
/// parent's (the fork launch closed the number, which may since have been reused), dropping
/// it closes nothing.
#[derive(Debug)]
pub(crate) struct InternalFd {
    fd: ManuallyDrop<OwnedFd>,
    owner: u32,
}

impl InternalFd {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        let mut list = internal();
        list.insert(fd.as_raw_fd());
        drop(list);
        InternalFd {
            fd: ManuallyDrop::new(fd),
            owner: std::process::id(),
        }
    }

    /// Gives the descriptor back without closing it, no longer listed as internal.
    pub(crate) fn into_owned(self) -> OwnedFd {
        let mut this = ManuallyDrop::new(self);
        internal().remove(&this.fd.as_raw_fd());
        // SAFETY: `this` is never dropped, so the descriptor is moved out exactly once.
        unsafe { ManuallyDrop::take(&mut this.fd) }
    }
}

impl Drop for InternalFd {
    fn drop(&mut self) {
        if self.owner != std::process::id() {
            return; // the parent's, inherited through fork: already closed here
        }
        // Unlist and close under the list's lock, so a concurrent fork sees either both or
        // neither.
        let mut list = internal();
        list.remove(&self.fd.as_raw_fd());
        // SAFETY: dropped exactly once, here; `self.fd` is not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.fd) };
        drop(list);
    }
}

impl AsFd for InternalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Creates descriptors with `make` and lists them as internal in one step, under the list's
/// lock, so a concurrent fork never sees them unlisted.
pub(crate) fn create_internal<const N: usize>(
    make: impl FnOnce() -> io::Result<[OwnedFd; N]>,
) -> io::Result<[InternalFd; N]> {
    let mut list = internal();
    let fds = make()?;
    for f in &fds {
        list.insert(f.as_raw_fd());
    }
    drop(list);
    let owner = std::process::id();
    Ok(fds.map(|fd| InternalFd {
        fd: ManuallyDrop::new(fd),
        owner,
    }))
}

/// Holds the internal list locked across a `fork`, so the child inherits it in a consistent
/// state and can rewrite it.
pub(crate) struct InternalSnapshot(MutexGuard<'static, BTreeSet<RawFd>>);

pub(crate) fn lock_internal() -> InternalSnapshot {
    InternalSnapshot(internal())
}

impl InternalSnapshot {
    /// In a freshly forked child: closes every internal descriptor except `keep`, and forgets
    /// them all (the child starts its own list).
    pub(crate) fn close_all_except(mut self, keep: &[RawFd]) {
        for &fd in self.0.iter() {
            if !keep.contains(&fd) {
                // SAFETY: `fd` was an internal descriptor of the parent; in the child its
                // owning `InternalFd` closes nothing when dropped (it belongs to another pid),
                // so closing it here is the only close in this process.
                unsafe { libc::close(fd) };
            }
        }
        self.0.clear();
    }

    /// In a fork server's child, whose inherited descriptors were all closed at once: forgets
    /// the list without closing anything again.
    pub(crate) fn forget_all(mut self) {
        self.0.clear();
    }
}

/// Sets or clears `FD_CLOEXEC`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFD))?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    if new != flags {
        syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, new))?;
    }
    Ok(())
}

/// Duplicates `fd` to a number at or above `min`, close-on-exec.
pub(crate) fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    let new = syscall!(fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min))?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Takes ownership of a descriptor number inherited from the parent, after checking that it
/// is open. Used only by the worker bootstrap, with numbers read from the worker marker.
pub(crate) fn adopt_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is a standard stream"),
        ));
    }
    syscall!(fcntl(fd, libc::F_GETFD))?;
    // SAFETY: the descriptor is open (F_GETFD succeeded) and the worker marker hands its
    // ownership to this process's bootstrap, which adopts each number once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd(), true)?;
    Ok(owned)
}

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    // SAFETY: pipe2 succeeded, so both numbers are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What `poll` said about one descriptor.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    /// Data (or end of file) can be read.
    pub(crate) readable: bool,
    /// The peer hung up or the descriptor is in error.
    pub(crate) hangup: bool,
    /// It can be written to (only when asked for).
    pub(crate) writable: bool,
}

/// Waits until one descriptor is readable (or hung up), or writable where asked, or until
/// `deadline`; retries on `EINTR`; one [`Ready`] per descriptor, all false on timeout.
///
/// It takes descriptor numbers, for a thread that waits while another may use the same
/// descriptors (the pool's dispatcher). The caller guarantees the numbers stay open for the
/// call; a number that does not is reported as hung up (`POLLNVAL`), never misread.
pub(crate) fn poll_numbers(
    fds: &[(RawFd, bool)],
    deadline: Option<Instant>,
) -> io::Result<Vec<Ready>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, write)| libc::pollfd {
            fd,
            events: libc::POLLIN | if write { libc::POLLOUT } else { 0 },
            revents: 0,
        })
        .collect();
    loop {
        match syscall!(poll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            poll_timeout_ms(deadline)
        )) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(pfds
        .iter()
        .map(|p| Ready {
            readable: p.revents & libc::POLLIN != 0,
            hangup: p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0,
            writable: p.revents & libc::POLLOUT != 0,
        })
        .collect())
}

/// Waits until one of `fds` is readable or hung up, or until `deadline`. Retries on `EINTR`.
/// Returns one [`Ready`] per descriptor; all false on timeout.
pub(crate) fn poll_read(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<Ready>> {
    let numbers: Vec<(RawFd, bool)> = fds.iter().map(|fd| (fd.as_raw_fd(), false)).collect();
    poll_numbers(&numbers, deadline)
}

/// Waits until `fd` can be written to (or is hung up), or until `deadline`. Returns whether it
/// is ready.
pub(crate) fn poll_write(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    loop {
        match syscall!(poll(&mut p, 1, poll_timeout_ms(deadline))) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn poll_timeout_ms(deadline: Option<Instant>) -> libc::c_int {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            // Round up so a wait never returns before its deadline.
            let ms = left.as_nanos().div_ceil(1_000_000);
            ms.min(i32::MAX as u128) as libc::c_int
        }
    }
}

/// The deadline `timeout` from now, or `None` when it does not fit in an `Instant`.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// An eventfd(2): a counter one thread bumps to wake another out of `poll`.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        let fd = syscall!(eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        // SAFETY: eventfd returned a fresh descriptor owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable until the next [`EventFd::drain`].
    pub(crate) fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64; a full counter (EAGAIN) already means
        // "readable", so the result needs no handling.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter.
    pub(crate) fn drain(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
