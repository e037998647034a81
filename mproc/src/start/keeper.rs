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
//! lets the kernel count: each handle holds one end of a *holder socket* whose other end the
//! keeper holds. A socket closes only when its last copy is closed, in every process, including
//! copies inside messages still in flight, so a copy that is inherited by `fork`, passed to a
//! child or sent through a [`Connection`](crate::Connection) counts with no bookkeeping at all.
//! When every holder socket of a segment has hung up, the keeper removes the name, after checking
//! that it still names the same file (so a name someone reused is never removed).
//!
//! Each process that creates shared memory starts one keeper, the first time, with the `Spawn`
//! machinery (a fresh copy of the executable). It runs in a session of its own with its standard
//! streams on `/dev/null`, so Ctrl-C in the terminal and a kill of the creator's process group
//! leave it to do its work; it exits once its creator has gone and every name it keeps has been
//! removed.
//!
//! # Protocol
//!
//! All sockets are sequenced-packet (each send is one message); every answer starts with an
//! error number, 0 for success, as 4 little-endian bytes.
//!
//! - The *request socket*, between the creator and its keeper: `C`, the size (8 bytes), the
//!   name. The keeper creates the name (so no window exists in which a named segment has no
//!   keeper) and answers with the file and the creator's end of a new holder socket.
//! - A *listening socket* per segment, at the abstract address `mproc-shm:<name>` (no file; it
//!   vanishes with the socket): a process that opens the segment by name connects there. The
//!   keeper checks that the caller runs as the same user, answers with the file, and keeps the
//!   connection as one more holder socket. The caller checks the keeper's user too.
//! - A *holder socket*: `U` asks to remove the name now (`ENOENT` if it was already removed).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::bootstrap::Role;
use super::{PATIENCE, alive, spawn};
use crate::error::Error;
use crate::sys::fd::{self, InternalFd};
use crate::sys::{proc, shm, socket};

/// The abstract socket address of a segment is this prefix and its name.
const PREFIX: &str = "mproc-shm:";

/// The longest name a segment made by mproc may have (its address must fit in 107 bytes).
pub(crate) const MAX_NAME: usize = 96;

/// Whether `name` may name a segment that mproc creates: 1 to [`MAX_NAME`] bytes, none of them
/// `/` or NUL, and not `.` or `..`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.contains(['/', '\0'])
        && name != "."
        && name != ".."
}

fn address(name: &str) -> Vec<u8> {
    format!("{PREFIX}{name}").into_bytes()
}

// ----------------------------------------------------------------------------------------
// Client side.

/// This process's keeper. `owner` tells a forked child that the keeper it inherited is its
/// parent's (its request socket already closed by the fork launch).
struct Keeper {
    owner: u32,
    pidfd: InternalFd,
    request: InternalFd,
}

static KEEPER: Mutex<Option<Keeper>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Keeper>> {
    KEEPER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks this process's keeper (started if there is none) to create the segment `name` of
/// `len` bytes. Returns its file and a holder socket.
pub(crate) fn create(name: &str, len: usize) -> Result<(OwnedFd, OwnedFd), Error> {
    let mut msg = Vec::with_capacity(9 + name.len());
    msg.push(b'C');
    msg.extend((len as u64).to_le_bytes());
    msg.extend(name.as_bytes());
    let deadline = fd::deadline_after(PATIENCE);
    let asking = || format!("asking the shared-memory keeper to create {name:?}");
    let mut slot = lock();
    for attempt in 0.. {
        let keeper = running(&mut slot)?;
        match ask(keeper.request.as_fd(), &msg, deadline) {
            Ok(Some((0, fds))) => {
                let [file, holder] = <[OwnedFd; 2]>::try_from(fds).map_err(|_| {
                    Error::protocol("the shared-memory keeper's answer lacked its descriptors")
                })?;
                return Ok((file, holder));
            }
            Ok(Some((errno, _))) => {
                return Err(Error::os(
                    format!("creating shared memory {name:?}"),
                    io::Error::from_raw_os_error(errno),
                ));
            }
            // It died (someone killed it): replace it once.
            Ok(None) if attempt == 0 => retire(&mut slot),
            Ok(None) => {
                retire(&mut slot);
                return Err(Error::os(asking(), io::Error::other("the keeper ended")));
            }
            Err(e) => {
                // It may still answer later; a new keeper keeps requests and answers paired.
                retire(&mut slot);
                return Err(Error::os(asking(), e));
            }
        }
    }
    unreachable!("the loop returns")
}

/// Joins the keeper of segment `name`, if one keeps it: returns the segment's file and a new
/// holder socket. `None` when no keeper of this user answers for that name (it is not
/// mproc's, or it is being removed).
pub(crate) fn join(name: &str) -> Option<(OwnedFd, OwnedFd)> {
    if !valid_name(name) {
        return None;
    }
    let sock = socket::connect_abstract(&address(name)).ok()?;
    // Anyone may listen at an abstract address: take a file only from our own user.
    if socket::peer_uid(sock.as_fd()).ok()? != proc::getuid() {
        return None;
    }
    let (errno, fds) = answer(sock.as_fd(), fd::deadline_after(PATIENCE))
        .ok()
        .flatten()?;
    let [file] = <[OwnedFd; 1]>::try_from(fds).ok()?;
    (errno == 0).then_some((file, sock))
}

/// Asks the keeper behind `holder` to remove the name `name` now.
pub(crate) fn unlink(holder: BorrowedFd<'_>, name: &str) -> Result<(), Error> {
    let context = || format!("unlinking shared memory {name:?}");
    match ask(holder, b"U", fd::deadline_after(PATIENCE)) {
        Ok(Some((0, _))) => Ok(()),
        Ok(Some((errno, _))) => Err(Error::os(context(), io::Error::from_raw_os_error(errno))),
        // The keeper is gone (killed): nobody else will remove the name, so remove it here.
        Ok(None) => shm::shm_unlink(name).map_err(|e| Error::os(context(), e)),
        Err(e) => Err(Error::os(context(), e)),
    }
}

/// The running keeper, started if there is none (or only the parent's, inherited by fork).
fn running(slot: &mut Option<Keeper>) -> Result<&mut Keeper, Error> {
    if slot.as_ref().is_some_and(|k| k.owner != proc::getpid()) {
        std::mem::forget(slot.take());
    }
    if slot.is_none() {
        *slot = Some(start()?);
    }
    Ok(slot.as_mut().expect("just started"))
}

fn start() -> Result<Keeper, Error> {
    // The marker wants a liveness descriptor; the keeper closes it at once (it must outlive
    // its creator).
    let alive_read = alive::reader()?;
    let [request, keeper_end] = fd::create_internal(|| {
        let (a, b) = socket::seqpacket_pair()?;
        Ok([a, b])
    })
    .map_err(|e| Error::os("creating a socket pair", e))?;
    let pid = spawn::spawn_executable(Role::Keeper, keeper_end.as_fd(), alive_read.as_fd())?;
    let [pidfd] = fd::create_internal(|| Ok([proc::pidfd_open(pid)?]))
        .map_err(|e| Error::os("opening a pidfd for the shared-memory keeper", e))?;
    Ok(Keeper {
        owner: proc::getpid(),
        pidfd,
        request,
    })
}

/// Lets go of a keeper that stopped answering. Closing its request socket tells it to exit
/// once the names it keeps are removed; it is reaped if it has already ended, never killed
/// (it may still keep names that processes hold).
fn retire(slot: &mut Option<Keeper>) {
    if let Some(keeper) = slot.take() {
        drop(keeper.request);
        let _ = proc::try_reap(keeper.pidfd.as_fd());
    }
}

/// Sends `msg` on `sock` and waits for the answer: its error number and descriptors. `None`
/// when the other side has hung up.
fn ask(
    sock: BorrowedFd<'_>,
    msg: &[u8],
    deadline: Option<Instant>,
) -> io::Result<Option<(i32, Vec<OwnedFd>)>> {
    loop {
        match socket::send(sock, &[msg], &[]) {
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
    answer(sock, deadline)
}

/// Waits for one answer on `sock` (see [`ask`]).
fn answer(
    sock: BorrowedFd<'_>,
    deadline: Option<Instant>,
) -> io::Result<Option<(i32, Vec<OwnedFd>)>> {
    loop {
        let ready = fd::poll_read(&[sock], deadline)?;
        if !ready[0].readable && !ready[0].hangup {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        match socket::recv(sock, &mut buf, &mut fds, true) {
            Ok(0) => return Ok(None),
            Ok(n) if n >= 4 => {
                let errno = i32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
                return Ok(Some((errno, fds)));
            }
            Ok(_) => return Err(io::ErrorKind::InvalidData.into()),
            // Another process that shares this holder socket took the answer that woke us:
            // ours is still to come.
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

// ----------------------------------------------------------------------------------------
// Server side.

/// One name the keeper keeps.
struct Segment {
    name: String,
    /// Its file, to tell openers' requests and to check the name still names it.
    file: OwnedFd,
    identity: (u64, u64),
    /// Where openers connect; closed once the name is removed.
    listener: Option<OwnedFd>,
    /// The keeper's ends of the holder sockets; the name goes when the last one hangs up.
    holders: Vec<OwnedFd>,
    removed: bool,
}

impl Segment {
    /// Removes the name, once; returns 0 or an error number (`ENOENT` if it was removed
    /// already, or now names another file, which is then left alone).
    fn remove_name(&mut self) -> i32 {
        if self.removed {
            return libc::ENOENT;
        }
        self.removed = true;
        self.listener = None;
        match shm::shm_identity(&self.name) {
            Ok(id) if id == self.identity => match shm::shm_unlink(&self.name) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            },
            _ => libc::ENOENT,
        }
    }

    /// Takes every connection waiting on the listening socket as a holder (after checking its
    /// user) and answers it with the file.
    fn admit(&mut self, uid: u32) {
        let Some(listener) = &self.listener else {
            return;
        };
        while let Ok(Some(conn)) = socket::accept(listener.as_fd()) {
            if socket::peer_uid(conn.as_fd()).ok() != Some(uid) {
                continue; // another user's process: dropping the connection refuses it
            }
            let sent = socket::send(conn.as_fd(), &[&0i32.to_le_bytes()], &[self.file.as_fd()]);
            if sent.is_ok() {
                self.holders.push(conn);
            }
        }
    }

    /// Serves what holder `h` sent; returns whether it is still there.
    fn serve_holder(&mut self, h: usize) -> bool {
        loop {
            let mut buf = [0u8; 8];
            let mut fds = Vec::new();
            match socket::recv(self.holders[h].as_fd(), &mut buf, &mut fds, true) {
                Ok(0) => return false,
                Ok(_) if buf[0] == b'U' => {
                    let errno = self.remove_name();
                    let _ = socket::send(self.holders[h].as_fd(), &[&errno.to_le_bytes()], &[]);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// Creates segment `name` for a request; returns it and the requester's holder socket.
fn create_segment(name: &str, len: usize) -> io::Result<(Segment, OwnedFd)> {
    if !valid_name(name) || len == 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let file = shm::shm_create(name, len)?;
    let undo = |e: io::Error| {
        let _ = shm::shm_unlink(name);
        e
    };
    let identity = shm::file_identity(file.as_fd()).map_err(undo)?;
    let listener = socket::listen_abstract(&address(name)).map_err(undo)?;
    let (mine, theirs) = socket::seqpacket_pair().map_err(undo)?;
    let segment = Segment {
        name: name.to_owned(),
        file,
        identity,
        listener: Some(listener),
        holders: vec![mine],
        removed: false,
    };
    Ok((segment, theirs))
}

/// Serves what the creator sent; returns whether its request socket is still open.
fn serve_requests(request: BorrowedFd<'_>, segments: &mut Vec<Segment>) -> bool {
    loop {
        let mut buf = [0u8; 9 + MAX_NAME];
        let mut fds = Vec::new();
        match socket::recv(request, &mut buf, &mut fds, true) {
            Ok(0) => return false,
            Ok(n) if n > 9 && buf[0] == b'C' => {
                let len = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
                let created = std::str::from_utf8(&buf[9..n])
                    .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
                    .and_then(|name| {
                        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
                        create_segment(name, len)
                    });
                match created {
                    Ok((segment, theirs)) => {
                        let fds = [segment.file.as_fd(), theirs.as_fd()];
                        // If the creator is gone, `theirs` closes here and the segment's
                        // only holder hangs up: its name is removed on the next turn.
                        let _ = socket::send(request, &[&0i32.to_le_bytes()], &fds);
                        segments.push(segment);
                    }
                    Err(e) => {
                        let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
                        let _ = socket::send(request, &[&errno.to_le_bytes()], &[]);
                    }
                }
            }
            Ok(_) => {
                let _ = socket::send(request, &[&libc::EINVAL.to_le_bytes()], &[]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// The keeper's life: never returns.
pub(crate) fn serve(request: OwnedFd, alive: OwnedFd) -> ! {
    drop(alive);
    proc::detach();
    let uid = proc::getuid();
    let mut request = Some(request);
    let mut segments: Vec<Segment> = Vec::new();
    #[derive(Clone, Copy)]
    enum Who {
        Request,
        Listener(usize),
        Holder(usize, usize),
    }
    loop {
        if request.is_none() && segments.is_empty() {
            proc::exit_now(0);
        }
        let mut who = Vec::new();
        let mut fds = Vec::new();
        if let Some(r) = &request {
            who.push(Who::Request);
            fds.push(r.as_fd());
        }
        for (s, seg) in segments.iter().enumerate() {
            if let Some(l) = &seg.listener {
                who.push(Who::Listener(s));
                fds.push(l.as_fd());
            }
            for (h, holder) in seg.holders.iter().enumerate() {
                who.push(Who::Holder(s, h));
                fds.push(holder.as_fd());
            }
        }
        let Ok(ready) = fd::poll_read(&fds, None) else {
            // Out of memory or descriptors for poll itself: try again shortly.
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        let events: Vec<Who> = who
            .iter()
            .zip(&ready)
            .filter(|(_, r)| r.readable || r.hangup)
            .map(|(w, _)| *w)
            .collect();
        drop(fds);
        // New segments and holders are pushed at the ends, so the indices in `events` stay
        // valid until the holders that hung up are removed, below.
        let mut gone = Vec::new();
        for w in events {
            match w {
                Who::Request => {
                    let open = request
                        .as_ref()
                        .is_some_and(|r| serve_requests(r.as_fd(), &mut segments));
                    if !open {
                        request = None;
                    }
                }
                Who::Listener(s) => segments[s].admit(uid),
                Who::Holder(s, h) => {
                    if !segments[s].serve_holder(h) {
                        gone.push((s, h));
                    }
                }
            }
        }
        for &(s, h) in gone.iter().rev() {
            segments[s].holders.remove(h);
        }
        segments.retain_mut(|seg| {
            if seg.holders.is_empty() {
                // A connection still waiting to be taken holds the name too.
                seg.admit(uid);
            }
            if !seg.holders.is_empty() {
                return true;
            }
            seg.remove_name();
            false
        });
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
}
