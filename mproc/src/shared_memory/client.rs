//! A process's side of its shared-memory keeper: the keeper it started (one per process), and
//! what it asks of it (see [`super::keeper`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::keeper::{Identity, Request};
use super::records::{record_dirs, record_entry};
use crate::error::{Error, ErrorKind};
use crate::start::{PATIENCE, alive, at_fork, spawn};
use crate::sys::fd::{self, InternalFd};
use crate::sys::{dir, proc, shm, socket};

/// This process's keeper: the socket its requests go to, and the fork generation that made
/// it (a fork child has its parent's closed, by the fork launch or its own `close_range`).
struct Keeper {
    generation: u64,
    request: InternalFd,
}

static KEEPER: Mutex<Option<Keeper>> = Mutex::new(None);

/// The keeper's slot; held only to start or replace a keeper (never across a request), and by
/// the `Fork` launch across `fork` ([`hold_across_fork`]).
fn lock() -> MutexGuard<'static, Option<Keeper>> {
    at_fork::ensure(at_fork::Rank::Keeper, hold_across_fork);
    KEEPER.lock().unwrap_or_else(|e| e.into_inner())
}

/// The keeper's hook around a `Fork` start (see `start::at_fork`): the child forgets its
/// parent's keeper, whose socket the fork launch has closed in it.
fn hold_across_fork(fork: at_fork::Fork<'_>) -> Result<proc::Forked, Error> {
    let mut slot = lock();
    let forked = fork();
    if let Ok(proc::Forked::Child) = forked {
        std::mem::forget(slot.take());
    }
    forked
}

/// Asks this process's keeper (started if there is none) to create the segment `name` of
/// `len` bytes. Returns its file, open for reading and writing.
pub(crate) fn create(name: &str, len: usize) -> Result<OwnedFd, Error> {
    let msg = Request::Create {
        len: len as u64,
        name,
    }
    .encode();
    let asking = || format!("asking the shared-memory keeper to create {name:?}");
    for attempt in 0.. {
        let request = request_socket()?;
        let deadline = fd::deadline_after(PATIENCE);
        match ask(request.as_fd(), &msg, deadline).map_err(|e| Error::os(asking(), e))? {
            Some((0, fds)) => {
                let [file] = <[InternalFd; 1]>::try_from(fds).map_err(|_| {
                    Error::protocol("the shared-memory keeper's answer lacked its file")
                })?;
                return Ok(file.into_owned());
            }
            Some((libc::ENOLCK, _)) => {
                return Err(Error::os(
                    format!(
                        "creating shared memory {name:?}: file leases are unavailable here \
                         (is /proc/sys/fs/leases-enable 0?), and the keeper needs them to tell \
                         when the last holder has let go"
                    ),
                    io::Error::from_raw_os_error(libc::ENOLCK),
                ));
            }
            Some((errno, _)) => {
                return Err(Error::os(
                    format!("creating shared memory {name:?}"),
                    io::Error::from_raw_os_error(errno),
                ));
            }
            // It died (someone killed it): replace it once.
            None if attempt == 0 => retire(&request),
            None => {
                retire(&request);
                return Err(Error::os(asking(), io::Error::other("the keeper ended")));
            }
        }
    }
    unreachable!("the loop returns")
}

/// Called when this process opens or drops the segment whose file is `identity`: if a keeper
/// recorded it and has died since, asks this process's keeper (starting one if need be) to
/// adopt it, so that its name goes once its last holder does. Best effort: a keeper that
/// starts later adopts it anyway.
pub(crate) fn look_after(identity: Identity) {
    if is_orphaned(identity) {
        let _ = adopt_orphans();
    }
}

/// Whether the segment `identity` has a record whose keeper is gone.
fn is_orphaned(identity: Identity) -> bool {
    let entry = record_entry(identity);
    record_dirs(false).iter().any(|d| {
        dir::open_file(d.as_fd(), &entry)
            .is_ok_and(|f| dir::is_locked(f.as_fd()).ok() == Some(false))
    })
}

/// Asks this process's keeper (started if there is none, which adopts when it starts) to
/// adopt the orphaned records.
fn adopt_orphans() -> Result<(), Error> {
    let context = "asking the shared-memory keeper to adopt orphaned names";
    for attempt in 0..2 {
        let request = request_socket()?;
        match socket::send(request.as_fd(), &[&Request::Adopt.encode()], &[]) {
            Ok(_) => return Ok(()),
            Err(e) if hung_up(&e) && attempt == 0 => retire(&request),
            Err(e) => return Err(Error::os(context, e)),
        }
    }
    Ok(())
}

/// A copy of the running keeper's request socket, starting a keeper if there is none (or
/// only the parent's, inherited by fork). Internal, as every socket of a request is: a child
/// another thread forks meanwhile does not keep it (nor the keeper alive with it).
fn request_socket() -> Result<InternalFd, Error> {
    let mut slot = lock();
    if slot
        .as_ref()
        .is_some_and(|k| k.generation != proc::fork_generation())
    {
        std::mem::forget(slot.take());
    }
    if slot.is_none() {
        *slot = Some(start()?);
    }
    let keeper = slot.as_ref().expect("just started");
    let [copy] = fd::create_internal(|| Ok([fd::dup_above(keeper.request.as_fd(), 0)?]))
        .map_err(|e| Error::os("duplicating the shared-memory keeper's socket", e))?;
    Ok(copy)
}

/// Forgets the keeper whose request socket is `request` (a copy of it), if it is still this
/// process's: closing its socket tells it to exit once the names it keeps are removed.
fn retire(request: &InternalFd) {
    let mut slot = lock();
    let same = slot.as_ref().is_some_and(|k| {
        k.generation == proc::fork_generation()
            && shm::file_identity(k.request.as_fd()).ok()
                == shm::file_identity(request.as_fd()).ok()
    });
    if same {
        slot.take();
    }
}

fn start() -> Result<Keeper, Error> {
    // The marker wants a liveness descriptor; the keeper closes it at once (it must outlive
    // its creator).
    let alive_read = alive::reader()?;
    let [request, keeper_end] = socket::internal_seqpacket_pair()
    .map_err(|e| Error::os("creating a socket pair", e))?;
    let pid = spawn::spawn_role(
        crate::start::role::offset_of(super::server::keeper_role),
        "shared-memory keeper",
        keeper_end.as_fd(),
        alive_read.as_fd(),
    )?;
    // It forks at once and its first process exits: reap that one (the keeper itself is
    // then nobody's child).
    let [pidfd] = fd::create_internal(|| Ok([proc::pidfd_open(pid)?]))
        .map_err(|e| Error::os("opening a pidfd for the shared-memory keeper", e))?;
    let _ = fd::poll_read(&[pidfd.as_fd()], fd::deadline_after(PATIENCE));
    let _ = proc::try_reap(pidfd.as_fd());
    Ok(Keeper {
        generation: proc::fork_generation(),
        request,
    })
}

/// Removes the name `name` of `file` now, if it still names `file` (`ENOENT` if not: removed
/// already, or made again as another file, which is left alone). The keeper of `file` sees
/// the name go and forgets it.
pub(crate) fn unlink(name: &str, file: BorrowedFd<'_>) -> Result<(), Error> {
    let context = || format!("unlinking shared memory {name:?}");
    let same = shm::shm_identity(name).ok()
        == Some(shm::file_identity(file).map_err(|e| Error::os(context(), e))?);
    if !same {
        return Err(Error::os(context(), io::Error::from_raw_os_error(libc::ENOENT)));
    }
    shm::shm_unlink(name).map_err(|e| Error::os(context(), e))
}

/// Sends `msg` on `sock` with a fresh reply socket and waits for the answer on it: its error
/// number and descriptors. `None` when the keeper has hung up (or dropped the request).
fn ask(
    sock: BorrowedFd<'_>,
    msg: &[u8],
    deadline: Option<Instant>,
) -> io::Result<Option<(i32, Vec<InternalFd>)>> {
    // Internal: a fork child of another thread that kept a copy of `theirs` would keep the
    // reply socket open after the keeper's death, and this wait would last to its deadline.
    let [reply, theirs] = socket::internal_seqpacket_pair()?;
    loop {
        match socket::send(sock, &[msg], &[theirs.as_fd()]) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !fd::poll_write(sock, deadline)? {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) if hung_up(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    drop(theirs);
    answer(reply.as_fd(), deadline)
}

/// Waits for the one answer on `sock` (see [`ask`]).
fn answer(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> io::Result<Option<(i32, Vec<InternalFd>)>> {
    loop {
        let ready = fd::poll_read(&[sock], deadline)?;
        if !ready[0].readable && !ready[0].hangup {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        match socket::recv(sock, &mut buf, &mut fds) {
            Ok(0) => return Ok(None),
            Ok(n) if n >= 4 => {
                let errno = i32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                return Ok(Some((errno, fds)));
            }
            Ok(_) => return Err(io::ErrorKind::InvalidData.into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if hung_up(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn hung_up(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPIPE | libc::ECONNRESET | libc::ENOTCONN)
    )
}

/// Whether `e` is the error an answer of `errno` makes.
pub(crate) fn is_errno(e: &Error, errno: i32) -> bool {
    matches!(e.kind(), ErrorKind::Os(os) if os.errno == Some(errno))
}
