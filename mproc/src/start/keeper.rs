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
//! that it still names the same file (so a name someone else reused is never removed).
//!
//! Each process that creates shared memory starts one keeper, the first time, with the `Spawn`
//! machinery (a fresh copy of the executable), which forks once and lets its parent exit: the
//! keeper is nobody's child (never a zombie of its creator), runs in a session of its own with
//! its standard streams on `/dev/null`, and ignores `SIGINT`, `SIGTERM` and `SIGHUP`, so Ctrl-C
//! or a kill of the creator's process group leaves it to do its work. It exits once its creator
//! has gone and every name it keeps has been removed.
//!
//! # Protocol
//!
//! All sockets are sequenced-packet (each send is one message). A request carries a fresh
//! *reply socket*, on which the keeper answers: an error number, 0 for success, as 4
//! little-endian bytes, with descriptors where said. Nobody else can read that answer.
//!
//! - The *request socket*, from the creator to its keeper: `C`, the size (8 bytes), the name.
//!   The keeper creates the name (so no moment exists in which a named segment has no keeper)
//!   and answers with the file and a holder socket.
//! - A *listening socket* per segment, at the abstract address `mproc-shm:<dev>:<inode>` of its
//!   file (no file system entry; it vanishes with the socket). A process that opens the name
//!   opens the file itself, then connects to the address of the file it got; the keeper checks
//!   the caller's user, answers 0 on the connection, and keeps it as one more holder socket.
//!   Every holder socket, the creator's too, is such a connection, so a holder socket proves
//!   which file it holds (its peer's address).
//! - A *holder socket*: `U` with a reply socket asks to remove the name now (`ENOENT` if it was
//!   removed already).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::bootstrap::Role;
use super::{PATIENCE, alive, spawn};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::{self, InternalFd};
use crate::sys::{proc, shm, socket};

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

/// The abstract socket address of the keeper of the file with this identity.
fn address((dev, ino): (u64, u64)) -> Vec<u8> {
    format!("mproc-shm:{dev:x}:{ino:x}").into_bytes()
}

fn os(context: impl Into<String>, e: io::Error) -> Error {
    Error::os(context, e)
}

// ----------------------------------------------------------------------------------------
// Client side.

/// This process's keeper: the socket its requests go to, and the fork generation that made
/// it (a fork child has its parent's closed, by the fork launch or its own `close_range`).
pub(crate) struct Keeper {
    generation: u64,
    request: InternalFd,
}

static KEEPER: Mutex<Option<Keeper>> = Mutex::new(None);

/// The keeper's slot; held only to start or replace a keeper (never across a request), and by
/// the `Fork` launch across `fork`.
pub(crate) fn lock() -> MutexGuard<'static, Option<Keeper>> {
    KEEPER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks this process's keeper (started if there is none) to create the segment `name` of
/// `len` bytes. Returns its file and a holder socket.
pub(crate) fn create(name: &str, len: usize) -> Result<(OwnedFd, OwnedFd), Error> {
    let mut msg = Vec::with_capacity(9 + name.len());
    msg.push(b'C');
    msg.extend((len as u64).to_le_bytes());
    msg.extend(name.as_bytes());
    let asking = || format!("asking the shared-memory keeper to create {name:?}");
    for attempt in 0.. {
        let request = request_socket()?;
        let deadline = fd::deadline_after(PATIENCE);
        match ask(request.as_fd(), &msg, deadline).map_err(|e| os(asking(), e))? {
            Some((0, fds)) => {
                let [file, holder] = <[OwnedFd; 2]>::try_from(fds).map_err(|_| {
                    Error::protocol("the shared-memory keeper's answer lacked its descriptors")
                })?;
                return Ok((file, holder));
            }
            Some((errno, _)) => {
                return Err(os(
                    format!("creating shared memory {name:?}"),
                    io::Error::from_raw_os_error(errno),
                ));
            }
            // It died (someone killed it): replace it once.
            None if attempt == 0 => retire(&request),
            None => {
                retire(&request);
                return Err(os(asking(), io::Error::other("the keeper ended")));
            }
        }
    }
    unreachable!("the loop returns")
}

/// A copy of the running keeper's request socket, starting a keeper if there is none (or
/// only the parent's, inherited by fork).
fn request_socket() -> Result<OwnedFd, Error> {
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
    fd::dup_above(keeper.request.as_fd(), 0)
        .map_err(|e| os("duplicating the shared-memory keeper's socket", e))
}

/// Forgets the keeper whose request socket is `request` (a copy of it), if it is still this
/// process's: closing its socket tells it to exit once the names it keeps are removed.
fn retire(request: &OwnedFd) {
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
    let [request, keeper_end] = fd::create_internal(|| {
        let (a, b) = socket::seqpacket_pair()?;
        Ok([a, b])
    })
    .map_err(|e| os("creating a socket pair", e))?;
    let pid = spawn::spawn_executable(Role::Keeper, keeper_end.as_fd(), alive_read.as_fd())?;
    // It forks at once and its first process exits: reap that one (the keeper itself is
    // then nobody's child).
    let [pidfd] = fd::create_internal(|| Ok([proc::pidfd_open(pid)?]))
        .map_err(|e| os("opening a pidfd for the shared-memory keeper", e))?;
    let _ = fd::poll_read(&[pidfd.as_fd()], fd::deadline_after(PATIENCE));
    let _ = proc::try_reap(pidfd.as_fd());
    Ok(Keeper {
        generation: proc::fork_generation(),
        request,
    })
}

/// Joins the keeper of `file`, which this process opened by its name: returns a new holder
/// socket, or `None` when no keeper answers for that file (it is not mproc's, or its name is
/// being removed).
pub(crate) fn join(name: &str, file: BorrowedFd<'_>) -> Result<Option<OwnedFd>, Error> {
    let context = || format!("joining the keeper of shared memory {name:?}");
    let identity = shm::file_identity(file).map_err(|e| os(context(), e))?;
    let deadline = fd::deadline_after(PATIENCE);
    let mut pause = Duration::from_micros(100);
    let sock = loop {
        match socket::connect_abstract(&address(identity)) {
            Ok(sock) => break sock,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => return Ok(None),
            // Its backlog is full: the keeper is busy; wait for it, within the deadline.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if deadline.is_some_and(|d| Instant::now() + pause > d) {
                    return Err(os(context(), io::ErrorKind::TimedOut.into()));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(os(context(), e)),
        }
    };
    // Anyone may listen at an abstract address: count on our own user's keeper only.
    let uid = socket::peer_uid(sock.as_fd()).map_err(|e| os(context(), e))?;
    if uid != proc::geteuid() {
        return Err(os(
            format!(
                "{}: a process of user {uid} listens in its place",
                context()
            ),
            io::ErrorKind::PermissionDenied.into(),
        ));
    }
    match answer(sock.as_fd(), deadline).map_err(|e| os(context(), e))? {
        Some((0, _)) => Ok(Some(sock)),
        Some((errno, _)) => Err(os(context(), io::Error::from_raw_os_error(errno))),
        None => Ok(None), // it is removing the name: the file is ours to map, untracked
    }
}

/// Whether `holder` is a holder socket of the keeper of `file` (its peer's address says so).
pub(crate) fn holds(holder: BorrowedFd<'_>, file: BorrowedFd<'_>) -> bool {
    match (
        shm::file_identity(file),
        socket::peer_abstract_address(holder),
    ) {
        (Ok(identity), Ok(peer)) => peer == address(identity),
        _ => false,
    }
}

/// Removes the name `name` of `file` now: through its keeper when `holder` is given, else
/// directly, if the name still names `file`.
pub(crate) fn unlink(
    holder: Option<BorrowedFd<'_>>,
    name: &str,
    file: BorrowedFd<'_>,
) -> Result<(), Error> {
    let context = || format!("unlinking shared memory {name:?}");
    if let Some(holder) = holder {
        match ask(holder, b"U", fd::deadline_after(PATIENCE)).map_err(|e| os(context(), e))? {
            Some((0, _)) => return Ok(()),
            Some((errno, _)) => return Err(os(context(), io::Error::from_raw_os_error(errno))),
            // The keeper is gone (killed): nobody else will remove the name, so do it here.
            None => {}
        }
    }
    let same = shm::shm_identity(name).ok()
        == Some(shm::file_identity(file).map_err(|e| os(context(), e))?);
    if !same {
        return Err(os(context(), io::Error::from_raw_os_error(libc::ENOENT)));
    }
    shm::shm_unlink(name).map_err(|e| os(context(), e))
}

/// Sends `msg` on `sock` with a fresh reply socket and waits for the answer on it: its error
/// number and descriptors. `None` when the keeper has hung up (or dropped the request).
fn ask(
    sock: BorrowedFd<'_>,
    msg: &[u8],
    deadline: Option<Instant>,
) -> io::Result<Option<(i32, Vec<OwnedFd>)>> {
    let (reply, theirs) = socket::seqpacket_pair()?;
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

// ----------------------------------------------------------------------------------------
// Server side.

/// One name the keeper keeps.
struct Segment {
    name: String,
    /// Its file: held so that its inode cannot be reused while the name is kept, and so that
    /// the name is removed only while it still names this file.
    file: OwnedFd,
    identity: (u64, u64),
    /// Where holders connect; closed once the name is removed.
    listener: Option<OwnedFd>,
    /// The keeper's ends of the holder sockets; the name goes when the last one hangs up.
    holders: Vec<OwnedFd>,
    removed: bool,
}

/// A descriptor kept open to be closed when the keeper runs out of them, so that it can still
/// take a connection and refuse it with `EMFILE` instead of leaving it waiting.
struct Spare(Option<std::fs::File>);

impl Spare {
    fn new() -> Spare {
        Spare(std::fs::File::open("/dev/null").ok())
    }

    /// Refuses one waiting connection on `listener` with `EMFILE`; false if none could be
    /// taken even so.
    fn refuse_one(&mut self, listener: BorrowedFd<'_>) -> bool {
        self.0 = None;
        let refused = match socket::accept(listener) {
            Ok(Some(conn)) => {
                let _ = socket::send(conn.as_fd(), &[&libc::EMFILE.to_le_bytes()], &[]);
                true
            }
            _ => false,
        };
        *self = Spare::new();
        refused
    }
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
    /// user) and answers it. Returns false if it ran out of descriptors and could not even
    /// refuse one (the listener then rests a while).
    fn admit(&mut self, uid: u32, spare: &mut Spare) -> bool {
        let Some(listener) = &self.listener else {
            return true;
        };
        loop {
            match socket::accept(listener.as_fd()) {
                Ok(Some(conn)) => admit_one(&mut self.holders, conn, uid),
                Ok(None) => return true,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    if !spare.refuse_one(listener.as_fd()) {
                        return false;
                    }
                }
                Err(_) => return true,
            }
        }
    }

    /// Serves what holder `h` sent; returns whether it is still there. A zero-length read is
    /// the end only when poll said the peer hung up (else it is an empty message).
    fn serve_holder(&mut self, h: usize, hung_up: bool) -> bool {
        loop {
            let mut buf = [0u8; 8];
            let mut fds = Vec::new();
            match socket::recv(self.holders[h].as_fd(), &mut buf, &mut fds, true) {
                Ok(0) => return !hung_up,
                Ok(_) if buf[0] == b'U' && fds.len() == 1 => {
                    let errno = self.remove_name();
                    let _ = socket::send(fds[0].as_fd(), &[&errno.to_le_bytes()], &[]);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// Counts the connection `conn` among `holders` and tells it so, if its process runs as `uid`
/// (another user's is refused by dropping the connection).
fn admit_one(holders: &mut Vec<OwnedFd>, conn: OwnedFd, uid: u32) {
    if socket::peer_uid(conn.as_fd()).ok() == Some(uid)
        && socket::send(conn.as_fd(), &[&0i32.to_le_bytes()], &[]).is_ok()
    {
        holders.push(conn);
    }
}

/// Creates segment `name` for a request; returns it and the requester's holder socket.
fn create_segment(name: &str, len: usize, uid: u32) -> io::Result<(Segment, OwnedFd)> {
    if !valid_name(name) || len == 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let undo = |e: io::Error| {
        let _ = shm::shm_unlink(name);
        e
    };
    // Anyone may bind an abstract address first (inode numbers are guessable): then the name
    // is made again, as a new file with a new address.
    let mut tries = 0;
    let (file, identity, listener) = loop {
        let file = shm::shm_create(name, len)?;
        let identity = shm::file_identity(file.as_fd()).map_err(undo)?;
        match socket::listen_abstract(&address(identity)) {
            Ok(listener) => break (file, identity, listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 8 => {
                tries += 1;
                drop(file);
                let _ = shm::shm_unlink(name);
            }
            Err(e) => return Err(undo(e)),
        }
    };
    let mut segment = Segment {
        name: name.to_owned(),
        file,
        identity,
        listener: Some(listener),
        holders: Vec::new(),
        removed: false,
    };
    // The creator's holder socket is a connection like any opener's, so it names its file.
    let theirs = socket::connect_abstract(&address(identity)).map_err(undo)?;
    // Another process may have connected first (the address can be computed from the name):
    // ours is the connection whose peer is this process; the others are admitted as openers.
    let me = proc::getpid();
    loop {
        let listener = segment.listener.as_ref().expect("just made");
        let Some(conn) = socket::accept(listener.as_fd()).map_err(undo)? else {
            return Err(undo(io::ErrorKind::WouldBlock.into()));
        };
        if socket::peer_pid(conn.as_fd()).ok() == Some(me) {
            segment.holders.push(conn);
            return Ok((segment, theirs));
        }
        admit_one(&mut segment.holders, conn, uid);
    }
}

/// Serves what the creator sent; returns whether its request socket is still open.
fn serve_requests(
    request: BorrowedFd<'_>,
    hung_up: bool,
    uid: u32,
    segments: &mut Vec<Segment>,
) -> bool {
    loop {
        let mut buf = [0u8; 16 + MAX_NAME];
        let mut fds = Vec::new();
        let n = match socket::recv(request, &mut buf, &mut fds, true) {
            Ok(0) => return !hung_up,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let Ok([reply]) = <[OwnedFd; 1]>::try_from(fds) else {
            continue; // nowhere to answer
        };
        let created = if buf[0] == b'C' && n > 9 && n < buf.len() {
            let len = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
            std::str::from_utf8(&buf[9..n])
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
                .and_then(|name| {
                    let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
                    create_segment(name, len, uid)
                })
        } else {
            Err(io::ErrorKind::InvalidInput.into())
        };
        match created {
            Ok((segment, theirs)) => {
                let fds = [segment.file.as_fd(), theirs.as_fd()];
                // If the creator is gone, `theirs` closes here and the segment's only holder
                // hangs up: its name is removed on the next turn.
                let _ = socket::send(reply.as_fd(), &[&0i32.to_le_bytes()], &fds);
                segments.push(segment);
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
                let _ = socket::send(reply.as_fd(), &[&errno.to_le_bytes()], &[]);
            }
        }
    }
}

/// The keeper's life: never returns.
pub(crate) fn serve(request: OwnedFd, alive: OwnedFd) -> ! {
    drop(alive);
    // Leave the creator: it reaps this first process, and the keeper is nobody's child.
    match proc::fork() {
        Ok(proc::Forked::Child) => {}
        Ok(proc::Forked::Parent(_)) => proc::exit_now(0),
        Err(_) => proc::exit_now(1),
    }
    proc::detach();
    proc::ignore_stop_signals();
    let uid = proc::geteuid();
    let mut spare = Spare::new();
    let mut request = Some(request);
    let mut segments: Vec<Segment> = Vec::new();
    // Listeners that ran out of descriptors rest until then.
    let mut resting: Option<Instant> = None;
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
        if resting.is_some_and(|until| Instant::now() >= until) {
            resting = None;
        }
        let mut who = Vec::new();
        let mut fds = Vec::new();
        if let Some(r) = &request {
            who.push(Who::Request);
            fds.push(r.as_fd());
        }
        for (s, seg) in segments.iter().enumerate() {
            if let (Some(l), None) = (&seg.listener, resting) {
                who.push(Who::Listener(s));
                fds.push(l.as_fd());
            }
            for (h, holder) in seg.holders.iter().enumerate() {
                who.push(Who::Holder(s, h));
                fds.push(holder.as_fd());
            }
        }
        let Ok(ready) = fd::poll_read(&fds, resting) else {
            // Out of memory for poll itself: try again shortly.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let events: Vec<(Who, bool)> = who
            .iter()
            .zip(&ready)
            .filter(|(_, r)| r.readable || r.hangup)
            .map(|(w, r)| (*w, r.hangup))
            .collect();
        drop(fds);
        // New segments and holders are pushed at the ends, so the indices in `events` stay
        // valid until the holders that hung up are removed, below.
        let mut gone = Vec::new();
        for (w, hung_up) in events {
            match w {
                Who::Request => {
                    let open = request
                        .as_ref()
                        .is_some_and(|r| serve_requests(r.as_fd(), hung_up, uid, &mut segments));
                    if !open {
                        request = None;
                    }
                }
                Who::Listener(s) => {
                    if !segments[s].admit(uid, &mut spare) {
                        resting = Some(Instant::now() + Duration::from_millis(100));
                    }
                }
                Who::Holder(s, h) => {
                    if !segments[s].serve_holder(h, hung_up) {
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
                seg.admit(uid, &mut spare);
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
