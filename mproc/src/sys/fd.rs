//! Descriptor helpers: close-on-exec flags, poll, pipes, and the list of mproc's internal
//! descriptors that a forked child must close.

// Descriptors taken by number (an inherited one, a parent's in a fork child, the pool's
// poll set, a library's socket found by peeking), which no owned or borrowed descriptor
// can stand for; and `ManuallyDrop`.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::{Errno, FdFlags};

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
            owner: super::pid::getpid(),
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
        if self.owner != super::pid::getpid() {
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
    let owner = super::pid::getpid();
    Ok(fds.map(|fd| InternalFd {
        fd: ManuallyDrop::new(fd),
        owner,
    }))
}

/// A copy of `fd` (close-on-exec), made and listed as internal in one step: no child forked by
/// another thread ever inherits it.
pub(crate) fn dup_internal(fd: BorrowedFd<'_>) -> io::Result<InternalFd> {
    let [copy] = create_internal(|| Ok([dup_above(fd, 0)?]))?;
    Ok(copy)
}

/// Receives that may bring descriptors, under way in this process (the low bits; see
/// [`receiving`]), and [`FORKING`] while a fork waits for them to end or runs.
///
/// The kernel puts a received descriptor in the process's table inside recvmsg(2), before mproc
/// can list it as internal: a child forked by another thread in between would inherit it
/// unlisted, and keep it (a buffer's memory, a queue's socket) for its whole life (13% of
/// `Fork` children started beside a thread receiving buffers, before this). So a receive and
/// the listing of what it brought are one step as a fork sees them: a fork waits for the
/// receives under way to end, and receives that begin meanwhile wait for it to be done
/// ([`lock_for_fork`]). A counter, not a lock: receives on different sockets never wait for
/// each other. Zero in every fork child, whoever forked ([`no_receives_in_a_fork_child`]).
static RECEIVES: AtomicU32 = AtomicU32::new(0);

/// A fork child's only thread is the one that forked, which was not receiving: none is under
/// way there. Registered with pthread_atfork(3) before `main` ([`watch_forks`]), so that a
/// child forked by the user's own fork(2) while another thread received does not keep a count
/// that would make its first `Fork` start wait for ever.
extern "C" fn no_receives_in_a_fork_child() {
    RECEIVES.store(0, Ordering::Relaxed);
}

/// Set in [`RECEIVES`] by a fork that is waiting for the receives under way, or running.
const FORKING: u32 = 1 << 31;

/// Registers [`no_receives_in_a_fork_child`] with pthread_atfork(3), once. Called before
/// `main` by the crate's constructor (`start::bootstrap`), while the process has one thread,
/// so that no fork can come between a first receive and the registration; and at every
/// receive, where it is one load (a program whose constructor did not run, registering late).
pub(crate) fn watch_forks() {
    // A flag, not a `Once`: a child forked while another thread registers would inherit a
    // `Once` running for ever.
    static AT_FORK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !AT_FORK.load(Ordering::Relaxed) && !AT_FORK.swap(true, Ordering::Relaxed) {
        // SAFETY: registers a child handler that only stores to an atomic
        // (async-signal-safe); it stays valid for the life of the process. A failure
        // (ENOMEM) leaves only `lock_for_fork`'s reset in our own fork children.
        unsafe { libc::pthread_atfork(None, None, Some(no_receives_in_a_fork_child)) };
    }
}

/// A receive under way (see [`RECEIVES`]): the descriptors it brings are listed as internal
/// ([`Receiving::list`]) before it is dropped.
pub(crate) struct Receiving(());

/// Enters a receive that may bring descriptors; waits first while a fork runs. The receive
/// must not block (a fork would wait for it).
pub(crate) fn receiving() -> Receiving {
    watch_forks();
    loop {
        let was = RECEIVES.fetch_add(1, Ordering::Acquire);
        if was & FORKING == 0 {
            return Receiving(());
        }
        // A fork waits for the receives under way: step back, and wait for it to be done.
        leave_receiving();
        loop {
            let now = RECEIVES.load(Ordering::Acquire);
            if now & FORKING == 0 {
                break;
            }
            let _ = super::futex::wait(&RECEIVES, now, None);
        }
    }
}

fn leave_receiving() {
    let was = RECEIVES.fetch_sub(1, Ordering::Release);
    if was == FORKING | 1 {
        // The last receive a fork waits for.
        super::futex::wake(&RECEIVES, u32::MAX);
    }
}

impl Receiving {
    /// Lists `fds`, just received, as internal, and appends them to `into`.
    pub(crate) fn list(&self, fds: impl Iterator<Item = OwnedFd>, into: &mut Vec<InternalFd>) {
        let owner = super::pid::getpid();
        let mut list = None;
        for fd in fds {
            list.get_or_insert_with(internal).insert(fd.as_raw_fd());
            into.push(InternalFd {
                fd: ManuallyDrop::new(fd),
                owner,
            });
        }
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        leave_receiving();
    }
}

/// Holds the internal list locked across a `fork`, so the child inherits it in a consistent
/// state and can rewrite it.
pub(crate) struct InternalSnapshot {
    list: MutexGuard<'static, BTreeSet<RawFd>>,
    /// Whether it holds receives off too ([`lock_for_fork`]).
    fork: bool,
}

/// Locks the internal list (a mapping made where a fork must not copy it, say).
pub(crate) fn lock_internal() -> InternalSnapshot {
    InternalSnapshot {
        list: internal(),
        fork: false,
    }
}

/// Locks the internal list for a fork: first waits for the receives under way to list what
/// they brought, and holds new ones off until the snapshot is dropped or consumed (see
/// [`RECEIVES`]). Forks are one at a time (the callers hold the fork server's slot).
pub(crate) fn lock_for_fork() -> InternalSnapshot {
    let was = RECEIVES.fetch_or(FORKING, Ordering::AcqRel);
    debug_assert_eq!(was & FORKING, 0, "one fork at a time");
    loop {
        let now = RECEIVES.load(Ordering::Acquire);
        if now == FORKING {
            break;
        }
        // Each receive under way is one nonblocking system call and a listing.
        let _ = super::futex::wait(&RECEIVES, now, None);
    }
    InternalSnapshot {
        list: internal(),
        fork: true,
    }
}

impl InternalSnapshot {
    /// In a freshly forked child: closes every internal descriptor except `keep`, and forgets
    /// them all (the child starts its own list, and has no receive under way).
    pub(crate) fn close_all_except(mut self, keep: &[RawFd]) {
        for &fd in self.list.iter() {
            if !keep.contains(&fd) {
                // SAFETY: `fd` was an internal descriptor of the parent; in the child its
                // owning `InternalFd` closes nothing when dropped (it belongs to another pid),
                // so adopting it here to close it is the only close in this process.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        self.list.clear();
        self.fork = false;
        RECEIVES.store(0, Ordering::Release);
    }

    /// In a fork server's child, whose inherited descriptors were all closed at once: forgets
    /// the list without closing anything again.
    pub(crate) fn forget_all(mut self) {
        self.list.clear();
    }
}

impl Drop for InternalSnapshot {
    fn drop(&mut self) {
        if self.fork {
            RECEIVES.fetch_and(!FORKING, Ordering::Release);
            super::futex::wake(&RECEIVES, u32::MAX);
        }
    }
}

/// Sets or clears `FD_CLOEXEC`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(fd)?;
    let mut new = flags;
    new.set(FdFlags::CLOEXEC, on);
    if new != flags {
        rustix::io::fcntl_setfd(fd, new)?;
    }
    Ok(())
}

/// Duplicates `fd` to a number at or above `min`, close-on-exec. A descriptor limit at or
/// below `min` (which fcntl(2) calls `EINVAL`) is `EMFILE`: no number is free there.
pub(crate) fn dup_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    match rustix::io::fcntl_dupfd_cloexec(fd, min) {
        Err(Errno::INVAL) => Err(Errno::MFILE.into()),
        r => Ok(r?),
    }
}

/// Whether `a` and `b` stand for the same file (the same device and inode): two descriptors
/// of one open file, or two openings of it. `false` if either cannot be examined.
pub(crate) fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    }
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
    // SAFETY: F_GETFD only reads the flags of whatever the number is; one that is not open is
    // EBADF. (By number, not through a `BorrowedFd`: it is not known to be open yet.)
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is open (F_GETFD succeeded) and the worker marker hands its
    // ownership to this process's bootstrap, which adopts each number once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd(), true)?;
    Ok(owned)
}

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
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

/// This process's open descriptors that are sockets, each with its socket's inode (from
/// `/proc/self/fd`). A snapshot: other threads may open and close descriptors meanwhile, and
/// a number closed and opened again names another inode.
#[cfg(feature = "remote")]
pub(crate) fn sockets() -> Vec<(RawFd, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let n: RawFd = e.file_name().to_str()?.parse().ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        let inode = target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
        Some((n, inode.parse().ok()?))
    })
    .collect()
}

/// Which of the sockets `among` has exactly `expect` waiting to be read, looked at without
/// taking anything from any of them (`MSG_PEEK`) and without blocking; waits for one until
/// `deadline`. `None` once every socket holds something else (bytes that differ from
/// `expect`, or its end), or at the deadline.
///
/// It finds the descriptor under a connection that a library keeps to itself: send on that
/// connection something whose answer no other socket can hold (a random token to be
/// echoed), then look for the answer (before it is read through the library). Pass only
/// sockets that appeared while that connection was made: a peek takes nothing, but on a
/// socket whose owner set `SO_PEEK_OFF` it would move that offset.
#[cfg(feature = "remote")]
pub(crate) fn peek_for(among: &[RawFd], expect: &[u8], deadline: Option<Instant>) -> Option<RawFd> {
    let mut buf = vec![0u8; expect.len()];
    // Numbers whose socket holds something else for good: a reply is never taken back.
    let mut other = vec![false; among.len()];
    loop {
        let open: Vec<usize> = (0..among.len()).filter(|&i| !other[i]).collect();
        if open.is_empty() {
            return None;
        }
        let wanted: Vec<(RawFd, bool)> = open.iter().map(|&i| (among[i], false)).collect();
        // A number closed meanwhile is reported hung up (POLLNVAL), never misread.
        let ready = poll_numbers(&wanted, deadline).ok()?;
        for (&at, r) in open.iter().zip(&ready) {
            let n = among[at];
            if !(r.readable || r.hangup) {
                continue;
            }
            // SAFETY: the borrow ends with this call, and whatever socket the number names
            // by then (another thread may have closed or reused it) is only peeked at:
            // MSG_PEEK takes nothing, MSG_DONTWAIT never waits, a closed number is an error.
            let fd = unsafe { BorrowedFd::borrow_raw(n) };
            let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
            match rustix::net::recv(fd, &mut buf[..], flags) {
                Ok((got, _)) if got == expect.len() && buf == expect => return Some(n),
                // The start of the answer: the rest is on its way.
                Ok((got, _)) if got > 0 && buf[..got] == expect[..got] => {}
                Err(Errno::AGAIN | Errno::INTR) => {}
                // Something else, the socket's end, or no socket at all.
                Ok(_) | Err(_) => other[at] = true,
            }
        }
        // A hung-up socket is always ready: the clock, not poll, ends the wait.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        // Part of the answer came; look again shortly.
        if ready.iter().any(|r| r.readable) {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Reads what socket `fd` holds into `buf`, without waiting (`WouldBlock` when nothing is
/// there; `Ok(0)` at its end; `EINTR` retried). For the socket under a connection object
/// that a library keeps (its number found with [`peek_for`]): the caller owns that object
/// for the call and the library closes the socket only when it is dropped, so the number
/// stays open, naming that socket, for the call. Were that promise broken, the bytes would
/// come from whatever the number names then (or the call fail): wrong I/O, never memory
/// unsafety, as `buf` is this side's own.
#[cfg(feature = "remote")]
pub(crate) fn recv_number(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the caller keeps `fd` open for this call (see above); the borrow ends with it.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    loop {
        match rustix::net::recv(fd, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((got, _)) => return Ok(got),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
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
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&(fd, write)| {
            // SAFETY: the caller keeps `fd` open for this call (see above), which is as long
            // as the borrow lives: it ends with `pfds`, before this function returns.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let write = if write {
                PollFlags::OUT
            } else {
                PollFlags::empty()
            };
            PollFd::from_borrowed_fd(fd, PollFlags::IN | write)
        })
        .collect();
    poll(&mut pfds, deadline)?;
    Ok(pfds.iter().map(ready).collect())
}

/// Waits until one of `fds` is readable or hung up, or until `deadline`. Retries on `EINTR`.
/// Returns one [`Ready`] per descriptor; all false on timeout.
pub(crate) fn poll_read(
    fds: &[BorrowedFd<'_>],
    deadline: Option<Instant>,
) -> io::Result<Vec<Ready>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    poll(&mut pfds, deadline)?;
    Ok(pfds.iter().map(ready).collect())
}

/// Waits until `fd` can be written to (or is hung up), or until `deadline`. Returns whether it
/// is ready.
pub(crate) fn poll_write(fd: BorrowedFd<'_>, deadline: Option<Instant>) -> io::Result<bool> {
    Ok(poll(
        &mut [PollFd::from_borrowed_fd(fd, PollFlags::OUT)],
        deadline,
    )? > 0)
}

/// Whether `fd` is hung up now (a socket shut down both ways, by this end or by its peer's
/// close or shutdown), without waiting.
pub(crate) fn hung_up(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = [PollFd::from_borrowed_fd(fd, PollFlags::empty())];
    poll(&mut pfd, Some(Instant::now()))?;
    Ok(ready(&pfd[0]).hangup)
}

/// Whether socket `fd` will receive nothing more: its peer closed it or shut it down (or
/// died), or this end was shut down (`POLLRDHUP`, `POLLHUP`). Without waiting. A receive of
/// 0 bytes on a sequenced-packet socket is either its end or an empty message: this tells
/// which.
pub(crate) fn receives_no_more(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = [PollFd::from_borrowed_fd(fd, PollFlags::RDHUP)];
    poll(&mut pfd, Some(Instant::now()))?;
    Ok(pfd[0]
        .revents()
        .intersects(PollFlags::RDHUP | PollFlags::HUP))
}

/// poll(2) until `deadline`, retrying on `EINTR`; how many descriptors are ready.
fn poll(fds: &mut [PollFd<'_>], deadline: Option<Instant>) -> io::Result<usize> {
    loop {
        let timeout = deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as _,
                tv_nsec: left.subsec_nanos() as _,
            }
        });
        match rustix::event::poll(fds, timeout.as_ref()) {
            Err(Errno::INTR) => continue,
            n => return Ok(n?),
        }
    }
}

fn ready(p: &PollFd<'_>) -> Ready {
    let got = p.revents();
    Ready {
        readable: got.contains(PollFlags::IN),
        hangup: got.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
        writable: got.contains(PollFlags::OUT),
    }
}

/// The deadline `timeout` from now, or `None` when it does not fit in an `Instant`.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// An eventfd(2): a counter one thread bumps to wake another out of `poll`.
#[derive(Debug)]
pub(crate) struct EventFd(InternalFd);

impl EventFd {
    /// A new eventfd, listed as internal from birth (a child forked by another thread has no
    /// use for it).
    pub(crate) fn new() -> io::Result<Self> {
        let [fd] = create_internal(|| Ok([eventfd()?]))?;
        Ok(EventFd(fd))
    }

    /// Makes the descriptor readable until the next [`EventFd::drain`].
    pub(crate) fn notify(&self) {
        notify(self.0.as_fd());
    }

    /// Resets the counter.
    pub(crate) fn drain(&self) {
        drain(self.0.as_fd());
    }
}

/// A new eventfd, close-on-exec and non-blocking, for [`notify`] and [`drain`] (an
/// [`EventFd`] keeps one, listed as internal).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    let flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
    Ok(rustix::event::eventfd(0, flags)?)
}

/// Makes the eventfd `fd` readable until the next [`drain`].
pub(crate) fn notify(fd: BorrowedFd<'_>) {
    // A full counter (EAGAIN) already means "readable": the result needs no handling.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets the eventfd `fd`'s counter.
pub(crate) fn drain(fd: BorrowedFd<'_>) {
    // EAGAIN (nothing pending) is fine.
    let _ = rustix::io::read(fd, &mut [0u8; 8]);
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(all(test, feature = "remote"))]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use super::{peek_for, sockets};

    fn soon(ms: u64) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(ms))
    }

    #[test]
    fn the_socket_holding_the_answer_is_found_and_keeps_it() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let (mut c, d) = UnixStream::pair().unwrap();
        let among = [d.as_raw_fd(), b.as_raw_fd()];
        assert!(sockets().iter().any(|s| s.0 == b.as_raw_fd()));
        // Another socket holding other bytes is passed over.
        c.write_all(b"$5\r\nother\r\n").unwrap();
        // The answer comes in two parts: the first is not taken for it.
        let writer = std::thread::spawn(move || {
            a.write_all(b"$5\r\nto").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            a.write_all(b"ken\r\n").unwrap();
            a
        });
        assert_eq!(
            peek_for(&among, b"$5\r\ntoken\r\n", soon(5000)),
            Some(b.as_raw_fd())
        );
        let _a = writer.join().unwrap();
        // Nothing was taken from either socket.
        let mut got = [0u8; 11];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"$5\r\ntoken\r\n");
        let mut d = d;
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"$5\r\nother\r\n");
    }

    #[test]
    fn sockets_holding_something_else_are_given_up_at_once() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"-NOPERM no\r\n").unwrap(); // the server refused the command
        let (c, d) = UnixStream::pair().unwrap();
        drop(c); // hung up: always ready, never the answer
        let t = Instant::now();
        let among = [b.as_raw_fd(), d.as_raw_fd()];
        assert_eq!(peek_for(&among, b"$5\r\ntoken\r\n", soon(5000)), None);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn a_silent_socket_is_waited_for_until_the_deadline() {
        let (_a, b) = UnixStream::pair().unwrap();
        let t = Instant::now();
        assert_eq!(peek_for(&[b.as_raw_fd()], b"$5\r\ntoken\r\n", soon(100)), None);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(5), "{took:?}");
    }
}

/// Tests of every build (`tests` needs the feature `remote`).
#[cfg(test)]
mod limits {
    use super::*;

    /// A number past the descriptor limit asked for is "too many open files", not the
    /// "invalid argument" fcntl(2) says: no number is free there.
    #[test]
    fn a_duplicate_past_the_limit_is_emfile() {
        let (read, _write) = pipe().unwrap();
        let e = dup_above(read.as_fd(), RawFd::MAX - 1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
        assert!(dup_above(read.as_fd(), 3).unwrap().as_raw_fd() >= 3);
    }
}

#[cfg(test)]
mod receives {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// A child forked by anyone (here a bare fork(2), as a user's own would be) while another
    /// thread receives starts with no receive under way: its first `Fork` start would
    /// otherwise wait for ever for a receive that does not exist there.
    #[test]
    fn a_fork_child_has_no_receive_under_way_whoever_forked() {
        let (entered, leave) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let receiver = {
            let (entered, leave) = (Arc::clone(&entered), Arc::clone(&leave));
            std::thread::spawn(move || {
                let receiving = receiving();
                entered.wait();
                leave.wait();
                drop(receiving);
            })
        };
        entered.wait();
        assert_ne!(RECEIVES.load(Ordering::Relaxed), 0);
        // SAFETY: fork(2); the child only reads an atomic and calls _exit(2), both
        // async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = i32::from(RECEIVES.load(Ordering::Relaxed) != 0);
            // SAFETY: ends the child at once, running nothing of the parent's.
            unsafe { libc::_exit(code) };
        }
        assert!(pid > 0, "fork failed");
        leave.wait();
        receiver.join().unwrap();
        // Reaped here, not through `proc` (which uses this module): no import cycle.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child `pid`, writing its status into `status`.
            let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            assert!(got >= 0, "waitpid: {}", io::Error::last_os_error());
            if got == pid {
                break;
            }
            assert!(Instant::now() < deadline, "the child did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(libc::WIFEXITED(status), "the child ended by a signal");
        assert_eq!(libc::WEXITSTATUS(status), 0, "the child counted a receive");
    }
}
