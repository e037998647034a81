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
//!   last `munmap`, or the end of the message that carried it). Without inotify (out of
//!   instances or watches) it asks every [`POLL_EVERY`].
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
//! ([`record_dirs`]: `$XDG_RUNTIME_DIR/mproc`, `/run/user/<uid>/mproc`, `/tmp/mproc-<uid>`,
//! each checked to be this user's, mode 0700, never a directory someone else made first), and
//! holds a lock on the record ([`dir::try_lock`]: it belongs to the keeper's opening of the
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

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};
use crate::start::role::{self, RoleFn};
use crate::start::{PATIENCE, alive, at_fork, spawn};
use crate::sys::fd::{self, InternalFd};
use crate::sys::watch::{Event, Watcher};
use crate::sys::{dir, proc, shm, socket};

/// The longest name a segment may have (`NAME_MAX`).
pub(crate) const MAX_NAME: usize = 255;

/// How often a keeper without inotify asks whether its segments are still held.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Whether `name` may name a segment: 1 to [`MAX_NAME`] bytes, none of them `/` or NUL, and
/// not `.` or `..`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.contains(['/', '\0'])
        && name != "."
        && name != ".."
}

fn os(context: impl Into<String>, e: io::Error) -> Error {
    Error::os(context, e)
}

/// Which file a segment is: device and inode numbers.
type Identity = (u64, u64);

// ----------------------------------------------------------------------------------------
// What travels and what is written: pure code, driven by the fuzz target.

/// What a process asks its keeper (see the module's protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request<'a> {
    /// Create the segment `name` of `len` bytes.
    Create { len: u64, name: &'a str },
    /// Adopt the orphaned records now.
    Adopt,
}

/// The longest request: `C`, the size, the longest name.
const MAX_REQUEST: usize = 1 + 8 + MAX_NAME;

impl Request<'_> {
    fn encode(&self) -> Vec<u8> {
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
    fn parse(msg: &[u8]) -> Result<Request<'_>, i32> {
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

/// What a record holds: a tag, the file's device and inode (8 bytes each, little-endian), the
/// length of its file handle (1 byte, 1 to [`shm::MAX_FILE_HANDLE`]) and the handle, then its
/// name. The handle tells the recorded file from a later one with the same numbers.
const RECORD_TAG: &[u8] = b"mproc shared-memory record 2\n";
const MAX_RECORD: usize = RECORD_TAG.len() + 16 + 1 + shm::MAX_FILE_HANDLE + MAX_NAME;

/// What a record says: which file (numbers and handle), and its name.
type Recorded<'a> = (Identity, &'a [u8], &'a str);

fn encode_record(((dev, ino), handle, name): Recorded<'_>) -> Vec<u8> {
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
fn parse_record(bytes: &[u8]) -> Option<Recorded<'_>> {
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
fn record_entry((dev, ino): Identity) -> String {
    format!("r-{dev:x}-{ino:x}")
}

/// The identity a record's file name stands for (only in the exact form [`record_entry`]
/// writes).
fn parse_record_entry(entry: &str) -> Option<Identity> {
    let (dev, ino) = entry.strip_prefix("r-")?.split_once('-')?;
    let id = (
        u64::from_str_radix(dev, 16).ok()?,
        u64::from_str_radix(ino, 16).ok()?,
    );
    (record_entry(id) == entry).then_some(id)
}

/// Checks every parser above against `data`: none may panic, and whatever one accepts must
/// encode back to exactly `data`.
pub(crate) fn fuzz(data: &[u8]) {
    if let Ok(request) = Request::parse(data) {
        assert_eq!(request.encode(), data, "{request:?}");
        assert!(data.len() <= MAX_REQUEST);
    }
    if let Some(recorded) = parse_record(data) {
        assert_eq!(encode_record(recorded), data);
        assert!(data.len() <= MAX_RECORD);
    }
    if let Some(identity) = std::str::from_utf8(data).ok().and_then(parse_record_entry) {
        assert_eq!(record_entry(identity).as_bytes(), data);
    }
    let _ = crate::sys::watch::parse_events(data);
}

// ----------------------------------------------------------------------------------------
// Where records live.

/// The directories this user's keepers may keep records in, by preference. The same for every
/// process of the user that has the same `$XDG_RUNTIME_DIR` (or none): a keeper writes in the
/// first it can use, and looks for orphans in all of them.
fn record_dir_paths() -> Vec<PathBuf> {
    let uid = proc::geteuid();
    let mut paths = Vec::new();
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if runtime.is_absolute() {
            paths.push(runtime.join("mproc"));
        }
    }
    paths.push(PathBuf::from(format!("/run/user/{uid}/mproc")));
    paths.push(PathBuf::from(format!("/tmp/mproc-{uid}")));
    paths
}

/// The record directories that exist and are this user's alone, each once; with `create`,
/// the first that can be had is made if need be (the others are only looked in). One made by
/// someone else first (in `/tmp`, anyone may) is left out: the keeper then records in another,
/// or nowhere (its names then live as long as it does).
fn record_dirs(create: bool) -> Vec<OwnedFd> {
    let mut seen = Vec::new();
    let mut dirs = Vec::new();
    for path in record_dir_paths() {
        let Ok(d) = dir::open_private(&path, create && dirs.is_empty()) else {
            continue;
        };
        if let Ok(id) = dir::identity(d.as_fd()) {
            if !seen.contains(&id) {
                seen.push(id);
                dirs.push(d);
            }
        }
    }
    dirs
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
        match ask(request.as_fd(), &msg, deadline).map_err(|e| os(asking(), e))? {
            Some((0, fds)) => {
                let [file] = <[OwnedFd; 1]>::try_from(fds).map_err(|_| {
                    Error::protocol("the shared-memory keeper's answer lacked its file")
                })?;
                return Ok(file);
            }
            Some((libc::ENOLCK, _)) => {
                return Err(os(
                    format!(
                        "creating shared memory {name:?}: file leases are unavailable here \
                         (is /proc/sys/fs/leases-enable 0?), and the keeper needs them to tell \
                         when the last holder has let go"
                    ),
                    io::Error::from_raw_os_error(libc::ENOLCK),
                ));
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
            Err(e) => return Err(os(context, e)),
        }
    }
    Ok(())
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
    let pid = spawn::spawn_role(
        role::offset_of(keeper_role),
        "shared-memory keeper",
        keeper_end.as_fd(),
        alive_read.as_fd(),
    )?;
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

/// Removes the name `name` of `file` now, if it still names `file` (`ENOENT` if not: removed
/// already, or made again as another file, which is left alone). The keeper of `file` sees
/// the name go and forgets it.
pub(crate) fn unlink(name: &str, file: BorrowedFd<'_>) -> Result<(), Error> {
    let context = || format!("unlinking shared memory {name:?}");
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

/// A record a keeper holds: its directory, its file name there, and the opening of it that
/// holds the lock. Dropping it removes the record (before its lock goes with the descriptor,
/// so a record found unlocked is one whose keeper died).
struct Record {
    dir: Rc<OwnedFd>,
    entry: String,
    /// Never read: held for the lock.
    _lock: OwnedFd,
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
    fn write(
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
                if let Ok(old) = dir::open_file(dir, entry) {
                    if dir::try_lock(old.as_fd())? {
                        let _ = dir::remove(dir, entry);
                        continue;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
    Err(io::ErrorKind::AlreadyExists.into())
}

/// One name the keeper keeps.
struct Segment {
    name: String,
    /// The keeper's own, read-only opening of the file: the one it asks leases on. It also
    /// keeps the inode from being reused while the name is kept.
    file: OwnedFd,
    identity: Identity,
    /// The inotify watch on the file, if it could be had.
    watch: Option<i32>,
    /// Never read: held (locked) while the name is kept, removed when it is done.
    _record: Option<Record>,
}

impl Segment {
    /// Removes the name if nobody else holds the file; returns whether the keeper is done with
    /// it (the name removed now, or by someone else before, or now naming another file).
    fn release(&self) -> bool {
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
    fn remove_under_lease(&self) -> bool {
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
    fn named(&self) -> bool {
        shm::shm_identity(&self.name).ok() == Some(self.identity)
    }
}

/// Creates segment `name` for a request, recorded in the first of `dirs` that takes it.
/// Returns it and its file open for reading and writing (for the requester).
fn create_segment(name: &str, len: u64, dirs: &[Rc<OwnedFd>]) -> io::Result<(Segment, OwnedFd)> {
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

/// A keeper's state.
struct Server {
    /// The creator's request socket; `None` once the creator has gone.
    request: Option<OwnedFd>,
    watcher: Option<Watcher>,
    segments: HashMap<u64, Segment>,
    by_watch: HashMap<i32, u64>,
    next_id: u64,
    /// Where new records go (and where orphans were looked for last).
    dirs: Vec<Rc<OwnedFd>>,
    /// Orphans are to be looked for before the next wait.
    adopt: bool,
    last_poll: Instant,
}

impl Server {
    fn new(request: OwnedFd) -> Server {
        Server {
            request: Some(request),
            watcher: Watcher::new().ok(),
            segments: HashMap::new(),
            by_watch: HashMap::new(),
            next_id: 0,
            dirs: Vec::new(),
            adopt: true,
            last_poll: Instant::now(),
        }
    }

    fn run(mut self) -> ! {
        loop {
            if self.adopt {
                self.adopt = false;
                self.adopt_orphans();
            }
            if self.request.is_none() && self.segments.is_empty() {
                proc::exit_now(0);
            }
            let polling = self.segments.values().any(|s| s.watch.is_none());
            let deadline = polling.then(|| self.last_poll + POLL_EVERY);
            let fds: Vec<BorrowedFd<'_>> = [
                self.request.as_ref().map(|r| r.as_fd()),
                self.watcher.as_ref().map(|w| w.as_fd()),
            ]
            .into_iter()
            .flatten()
            .collect();
            let Ok(ready) = fd::poll_read(&fds, deadline) else {
                // Out of memory for poll itself: try again shortly.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let mut ready = ready.into_iter();
            if self.request.is_some() {
                let r = ready.next().unwrap_or_default();
                if r.readable || r.hangup {
                    self.serve_requests(r.hangup);
                }
            }
            if ready.next().is_some_and(|r| r.readable) {
                self.on_events();
            }
            if polling && Instant::now() >= self.last_poll + POLL_EVERY {
                self.last_poll = Instant::now();
                let unwatched: Vec<u64> = self
                    .segments
                    .iter()
                    .filter(|(_, s)| s.watch.is_none())
                    .map(|(&id, _)| id)
                    .collect();
                unwatched.into_iter().for_each(|id| self.check(id));
            }
        }
    }

    /// Serves what the creator sent; drops the request socket once the creator has gone.
    fn serve_requests(&mut self, hung_up: bool) {
        loop {
            let Some(request) = &self.request else {
                return;
            };
            let mut buf = [0u8; MAX_REQUEST + 1];
            let mut fds = Vec::new();
            let n = match socket::recv(request.as_fd(), &mut buf, &mut fds, true) {
                Ok(0) if hung_up => 0,
                // An empty message, or an end of file that the next poll will report.
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                self.request = None;
                return;
            }
            let answer = match Request::parse(&buf[..n]) {
                Ok(Request::Adopt) => {
                    self.adopt = true;
                    continue;
                }
                Ok(Request::Create { len, name }) => self.create(name, len),
                Err(errno) => Err(io::Error::from_raw_os_error(errno)),
            };
            let Ok([reply]) = <[OwnedFd; 1]>::try_from(fds) else {
                continue; // nowhere to answer
            };
            // If the creator is gone, the file closes with the message, and its release is
            // reported like any other: the name goes.
            let _ = match answer {
                Ok(file) => socket::send(reply.as_fd(), &[&0i32.to_le_bytes()], &[file.as_fd()]),
                Err(e) => {
                    let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
                    socket::send(reply.as_fd(), &[&errno.to_le_bytes()], &[])
                }
            };
        }
    }

    /// Creates and keeps segment `name`; returns the requester's opening of it.
    fn create(&mut self, name: &str, len: u64) -> io::Result<OwnedFd> {
        if self.dirs.is_empty() {
            self.dirs = record_dirs(true).into_iter().map(Rc::new).collect();
        }
        let (segment, shared) = create_segment(name, len, &self.dirs)?;
        self.keep(segment);
        Ok(shared)
    }

    /// Keeps `segment`, watched if possible (it has its name by now: a watch ends when the
    /// file loses its last name). Returns its number.
    fn keep(&mut self, mut segment: Segment) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(w) = &self.watcher {
            segment.watch = w.watch_closes(segment.file.as_fd()).ok();
        }
        if let Some(wd) = segment.watch {
            self.by_watch.insert(wd, id);
        }
        self.segments.insert(id, segment);
        id
    }

    /// Asks whether segment `id` is still held, and forgets it once the keeper is done with it.
    fn check(&mut self, id: u64) {
        if !self.segments.get(&id).is_some_and(Segment::release) {
            return;
        }
        if let Some(segment) = self.segments.remove(&id) {
            if let Some(wd) = segment.watch {
                self.by_watch.remove(&wd);
                if let Some(w) = &self.watcher {
                    w.unwatch(wd);
                }
            }
        }
    }

    fn on_events(&mut self) {
        let Some(watcher) = &self.watcher else {
            return;
        };
        let events = watcher.events().unwrap_or_else(|_| vec![Event::Lost]);
        let mut due = BTreeSet::new();
        for event in events {
            match event {
                Event::Closed(wd) => due.extend(self.by_watch.get(&wd).copied()),
                Event::Ended(wd) => {
                    if let Some(id) = self.by_watch.remove(&wd) {
                        if let Some(s) = self.segments.get_mut(&id) {
                            s.watch = None;
                        }
                        due.insert(id);
                    }
                }
                Event::Lost => due.extend(self.segments.keys().copied()),
            }
        }
        due.into_iter().for_each(|id| self.check(id));
    }

    /// Adopts every orphaned record of this user's keepers (see the module's docs).
    fn adopt_orphans(&mut self) {
        self.dirs = record_dirs(true).into_iter().map(Rc::new).collect();
        self.adopt_from(self.dirs.clone());
    }

    /// Adopts the orphaned records in `dirs`.
    fn adopt_from(&mut self, dirs: Vec<Rc<OwnedFd>>) {
        for d in dirs {
            let Ok(entries) = dir::list(d.as_fd()) else {
                continue;
            };
            for entry in entries {
                if entry.starts_with("t-") {
                    remove_stale_staging(d.as_fd(), &entry);
                } else if let Some(identity) = parse_record_entry(&entry) {
                    if let Some(id) = self.adopt_one(&d, &entry, identity) {
                        self.check(id);
                    }
                }
            }
        }
    }

    /// Adopts the record `entry` of `dir` if its keeper is gone and its name still names the
    /// recorded file of this user; removes it if it is an orphan of a name that does not.
    fn adopt_one(&mut self, d: &Rc<OwnedFd>, entry: &str, identity: Identity) -> Option<u64> {
        let file = dir::open_file(d.as_fd(), entry).ok()?;
        // Its keeper lives, or another keeper is adopting it.
        if !dir::try_lock(file.as_fd()).ok()? {
            return None;
        }
        // Removed (or replaced) since it was opened: not the record there now.
        if dir::identity_at(d.as_fd(), entry).ok()? != dir::identity(file.as_fd()).ok()? {
            return None;
        }
        let bytes = dir::read_start(file.as_fd(), MAX_RECORD + 1).ok()?;
        // Removed while its lock is held, so no other keeper takes it meanwhile.
        let not_ours = || {
            let _ = dir::remove(d.as_fd(), entry);
            None
        };
        let Some((recorded, handle, name)) =
            parse_record(&bytes).filter(|(id, _, _)| *id == identity)
        else {
            return not_ours();
        };
        let segment_file = match shm::shm_open_read_only(name) {
            Ok((f, owner))
                if owner == proc::geteuid()
                    && shm::file_identity(f.as_fd()).ok() == Some(recorded) =>
            {
                f
            }
            Ok(_) => return not_ours(),
            Err(e) if gone(&e) => return not_ours(),
            // Out of descriptors or memory: left (unlocked again) for a later look.
            Err(_) => return None,
        };
        // The same numbers, but maybe a later file (of another program, after /dev/shm was made
        // anew): its handle tells.
        match shm::file_handle(segment_file.as_fd()) {
            Ok(h) if h == handle => {}
            Ok(_) => return not_ours(),
            Err(_) => return None,
        }
        let record = Record {
            dir: d.clone(),
            entry: entry.to_owned(),
            _lock: file,
        };
        Some(self.keep(Segment {
            name: name.to_owned(),
            file: segment_file,
            identity,
            watch: None,
            _record: Some(record),
        }))
    }
}

/// Whether opening a recorded name failed because it no longer names a file of ours.
fn gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOENT | libc::ELOOP | libc::EACCES | libc::ENXIO)
        )
}

/// Removes the staging file `entry` of a keeper that died while writing a record (unlocked, and
/// old: a live keeper locks it right after making it).
fn remove_stale_staging(d: BorrowedFd<'_>, entry: &str) {
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

/// The keeper's role entry (see `start::role`): names [`serve`] to the spawned process.
fn keeper_role(_: &[u8]) -> Result<Vec<u8>, Error> {
    role::claim(RoleFn::Spawned(serve))
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
    proc::ignore_lease_breaks();
    Server::new(request).run()
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
            fuzz(&r.encode());
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

    /// The fuzz target's checks, on its seeds and mutations of them (the 5-minute fuzz run is
    /// in fuzz/README.md).
    #[test]
    fn fuzz_seeds_and_their_mutations_never_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds");
        let mut next = crate::sys::shm::testing::xorshift(0x2545_f491_4f6c_dd1d);
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("fuzz/seeds exists") {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("keeper-")
            {
                continue;
            }
            let seed = std::fs::read(path).unwrap();
            seeds += 1;
            fuzz(&seed);
            for _ in 0..2000 {
                fuzz(&crate::sys::shm::testing::mutate(&seed, &mut next));
            }
        }
        assert_eq!(seeds, 5, "the keeper's fuzz seeds are missing");
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let handle = [1, 0, 0, 0, 9, 9, 9, 9, 2, 0, 0, 0];
        let bytes = encode_record(((7, u64::MAX), &handle, "mproc_1"));
        assert_eq!(
            parse_record(&bytes),
            Some(((7, u64::MAX), &handle[..], "mproc_1"))
        );
        fuzz(&bytes);
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

    /// Removes a scratch directory when the test ends, passed or not.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A scratch record directory, and a name in /dev/shm, both for this test alone.
    fn scratch(tag: &str) -> (Rc<OwnedFd>, String, Scratch) {
        let path =
            std::env::temp_dir().join(format!("mproc-test-records-{}-{tag}", proc::getpid()));
        let _ = std::fs::remove_dir_all(&path);
        let d = dir::open_private(&path, true).unwrap();
        let name = format!("mproc-test-{}-{tag}", proc::getpid());
        (Rc::new(d), name, Scratch(path))
    }

    fn exists(name: &str) -> bool {
        std::path::Path::new("/dev/shm").join(name).exists()
    }

    /// Whether `entry` is in `d`, and whether someone holds its lock.
    fn record_state(d: &OwnedFd, entry: &str) -> Option<bool> {
        let f = dir::open_file(d.as_fd(), entry).ok()?;
        Some(dir::is_locked(f.as_fd()).unwrap())
    }

    /// Without inotify (the keeper then asks every `POLL_EVERY`): the name stays while any other
    /// opening of the file exists, a mapping alone included, and goes with the last one; the
    /// record is there, locked, until then.
    #[test]
    fn a_segment_is_released_with_the_last_other_opening() {
        let (d, name, _scratch) = scratch("release");
        let (segment, shared) = create_segment(&name, 4096, std::slice::from_ref(&d)).unwrap();
        let entry = record_entry(segment.identity);
        assert_eq!(record_state(&d, &entry), Some(true), "recorded and locked");
        assert!(exists(&name));
        let map = shm::Mapping::open_named(shared.as_fd()).unwrap();
        let opened = shm::shm_open(&name).unwrap();
        drop(shared);
        assert!(!segment.release(), "a descriptor and a mapping hold it");
        drop(opened);
        assert!(!segment.release(), "a mapping holds it");
        assert!(exists(&name));
        drop(map);
        assert!(segment.release());
        assert!(!exists(&name));
        drop(segment);
        assert_eq!(record_state(&d, &entry), None, "the record goes with it");
    }

    /// An open of the name that comes while the keeper holds its lease waits for the lease
    /// (the kernel breaks it) and will hold the file: the keeper leaves the name, and asks
    /// again later.
    #[test]
    fn an_opener_waiting_on_the_lease_keeps_the_name() {
        let (d, name, _scratch) = scratch("opener");
        let (segment, shared) = create_segment(&name, 64, &[d]).unwrap();
        drop(shared);
        // The break is signalled to the lease's holder, this test: as in a keeper.
        proc::ignore_lease_breaks();
        assert!(shm::try_write_lease(segment.file.as_fd()).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let opener = {
            let name = name.clone();
            std::thread::spawn(move || tx.send(shm::shm_open(&name)).unwrap())
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while shm::holds_write_lease(segment.file.as_fd()) {
            assert!(
                Instant::now() < deadline,
                "the opener never waited for the lease"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(!segment.remove_under_lease(), "an opener came: not done");
        let opened = rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap();
        opener.join().unwrap();
        assert!(exists(&name), "the name was removed under its opener");
        drop(opened);
        assert!(segment.release(), "nobody holds it now");
        assert!(!exists(&name));
    }

    /// A name that someone else removed, or made again as another file, is done with: the
    /// keeper never removes the new one.
    #[test]
    fn a_name_removed_or_replaced_is_left_alone() {
        let (d, name, _scratch) = scratch("replaced");
        let (segment, shared) = create_segment(&name, 64, &[d]).unwrap();
        shm::shm_unlink(&name).unwrap();
        let other = shm::shm_create_unnamed(64).unwrap();
        shm::shm_link(other.as_fd(), &name).unwrap();
        assert!(segment.release(), "nothing left to keep");
        assert!(exists(&name), "the new file's name was removed");
        drop((shared, other));
        shm::shm_unlink(&name).unwrap();
    }

    /// Writes a record of `name` as `identity` with file handle `handle` in `d`, as a keeper
    /// that then died would have.
    fn orphan(d: &OwnedFd, identity: Identity, handle: &[u8], name: &str) -> String {
        let entry = record_entry(identity);
        let f = dir::create_file(d.as_fd(), &entry).unwrap();
        dir::write_start(f.as_fd(), &encode_record((identity, handle, name))).unwrap();
        entry
    }

    fn identity_of(f: &OwnedFd) -> Identity {
        shm::file_identity(f.as_fd()).unwrap()
    }

    fn handle_of(f: &OwnedFd) -> Vec<u8> {
        shm::file_handle(f.as_fd()).unwrap()
    }

    /// A record left before `/dev/shm` was made anew (a reboot, a container's restart: a fresh
    /// tmpfs numbers its files from the same start, on the same device number) may carry the
    /// device and inode numbers of another program's file that now has the recorded name: it
    /// is never adopted (that file's name would be removed once nobody held it).
    #[test]
    fn a_stale_record_never_adopts_a_new_file_with_its_numbers() {
        let (d, name, _scratch) = scratch("stale");
        let (request, _creator) = socket::seqpacket_pair().unwrap();
        let mut server = Server::new(request);
        // Another program's segment, which nobody holds now (kept for a later reader).
        std::fs::write(std::path::Path::new("/dev/shm").join(&name), b"for later").unwrap();
        let file = shm::shm_open(&name).unwrap();
        let identity = shm::file_identity(file.as_fd()).unwrap();
        // The earlier file's handle: the same but for its generation (tmpfs: bytes 4 to 7).
        let mut handle = shm::file_handle(file.as_fd()).unwrap();
        handle[4] ^= 1;
        drop(file);
        let entry = orphan(&d, identity, &handle, &name);
        server.adopt_from(vec![d.clone()]);
        assert!(exists(&name), "another program's segment was removed");
        assert_eq!(record_state(&d, &entry), None, "the stale record stayed");
        shm::shm_unlink(&name).unwrap();
    }

    /// Orphaned records are adopted when their name still names the recorded file (and the name
    /// goes once nobody holds it); records whose keeper lives, and names that are not the
    /// recorded file, are never touched.
    #[test]
    fn orphans_are_adopted_and_nothing_else() {
        let (d, name, _scratch) = scratch("adopt");
        let (request, _creator) = socket::seqpacket_pair().unwrap();
        let mut server = Server::new(request);
        // An orphan still held by this test, and one nobody holds.
        let held = shm::shm_create_unnamed(64).unwrap();
        shm::shm_link(held.as_fd(), &name).unwrap();
        let held_entry = orphan(&d, identity_of(&held), &handle_of(&held), &name);
        let free_name = format!("{name}-free");
        let free = shm::shm_create_unnamed(64).unwrap();
        shm::shm_link(free.as_fd(), &free_name).unwrap();
        orphan(&d, identity_of(&free), &handle_of(&free), &free_name);
        drop(free);
        // A record whose name now names another file, and one naming nothing.
        let foreign_name = format!("{name}-foreign");
        std::fs::write(std::path::Path::new("/dev/shm").join(&foreign_name), b"x").unwrap();
        let foreign_entry = orphan(&d, (1, 2), &[1; 12], &foreign_name);
        let nothing_entry = orphan(&d, (1, 3), &[1; 12], &format!("{name}-nothing"));
        // A live keeper's record: locked.
        let live_name = format!("{name}-live");
        let live = shm::shm_create_unnamed(64).unwrap();
        shm::shm_link(live.as_fd(), &live_name).unwrap();
        let live_identity = shm::file_identity(live.as_fd()).unwrap();
        let live_entry = orphan(&d, live_identity, &handle_of(&live), &live_name);
        let live_lock = dir::open_file(d.as_fd(), &live_entry).unwrap();
        assert!(dir::try_lock(live_lock.as_fd()).unwrap());
        drop(live);

        server.adopt_from(vec![d.clone()]);
        assert!(
            !exists(&free_name),
            "an orphan nobody holds is removed at once"
        );
        assert!(exists(&name), "removed under a holder");
        assert_eq!(
            record_state(&d, &held_entry),
            Some(true),
            "adopted: locked again"
        );
        assert!(exists(&foreign_name), "another file's name was removed");
        assert_eq!(record_state(&d, &foreign_entry), None);
        assert_eq!(record_state(&d, &nothing_entry), None);
        assert!(exists(&live_name), "a live keeper's name was taken");
        assert_eq!(server.segments.len(), 1);

        // Its holder lets go: the keeper removes the name when inotify says so (or when it
        // next polls, where there is no inotify).
        let watched = server.watcher.is_some();
        assert_eq!(server.segments.values().all(|s| s.watch.is_some()), watched);
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while exists(&name) {
            assert!(Instant::now() < deadline, "the adopted name stayed");
            if watched {
                server.on_events();
            } else {
                let ids: Vec<u64> = server.segments.keys().copied().collect();
                ids.into_iter().for_each(|id| server.check(id));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(record_state(&d, &held_entry), None);
        assert!(server.segments.is_empty());
        for n in [&foreign_name, &live_name] {
            shm::shm_unlink(n).unwrap();
        }
    }
}
