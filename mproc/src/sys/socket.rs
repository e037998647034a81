//! Unix-domain stream sockets with descriptor passing (`SCM_RIGHTS`).

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, Shutdown, SocketFlags, SocketType,
};

use super::fd::{self, InternalFd};

/// The most descriptors one `sendmsg` carries (the kernel's `SCM_MAX_FD`); more are an error,
/// not a truncation.
pub(crate) const MAX_FDS: usize = 253;

/// The most buffers one [`send`] gathers; the rest wait for the next call (a send may stop
/// short anyway). As many as the callers ever pass, so none of them sees a difference.
const MAX_BUFS: usize = 64;

/// Room for one `SCM_RIGHTS` message of [`MAX_FDS`] descriptors.
const CONTROL: usize = rustix::cmsg_space!(ScmRights(MAX_FDS));

/// A connected pair of Unix stream sockets, both close-on-exec, listed as internal as they
/// are made: a child forked by another thread meanwhile never holds them.
///
/// See socketpair(2).
pub(crate) fn internal_socketpair() -> io::Result<[InternalFd; 2]> {
    internal_pair(SocketType::STREAM)
}

/// A connected pair of Unix sequenced-packet sockets (each send arrives whole, as one message,
/// whatever else is sent on the same socket), both close-on-exec, listed as internal as they
/// are made.
///
/// See socketpair(2), unix(7).
pub(crate) fn internal_seqpacket_pair() -> io::Result<[InternalFd; 2]> {
    internal_pair(SocketType::SEQPACKET)
}

/// A stream pair not listed as internal, for tests that play a peer.
#[cfg(test)]
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    pair(SocketType::STREAM)
}

/// A sequenced-packet pair not listed as internal, for tests that play a peer.
#[cfg(test)]
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    pair(SocketType::SEQPACKET)
}

fn internal_pair(kind: SocketType) -> io::Result<[InternalFd; 2]> {
    fd::create_internal(|| {
        let (a, b) = pair(kind)?;
        Ok([a, b])
    })
}

fn pair(kind: SocketType) -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        kind,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Whether `sock` is a Unix sequenced-packet socket (checked when one arrives from elsewhere).
pub(crate) fn is_seqpacket(sock: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_type(sock) == Ok(SocketType::SEQPACKET)
}

/// How many bytes `sock` has sent that no receiver has taken yet (what the kernel still
/// holds for it: messages in the peer's queue, with their overhead); 0 once every message
/// sent was received, or dropped with a peer that closed.
///
/// See unix(7) (`SIOCOUTQ`).
#[allow(unsafe_code, reason = "one ioctl(2), SIOCOUTQ, which rustix has no safe call for")]
pub(crate) fn unreceived(sock: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, to a live local.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The size of `sock`'s send buffer, as the kernel reports it (SO_SNDBUF).
pub(crate) fn send_buffer(sock: BorrowedFd<'_>) -> io::Result<usize> {
    Ok(rustix::net::sockopt::socket_send_buffer_size(sock)?)
}

/// Shuts both directions of `sock` down, for every process that holds it: the peer reads end
/// of file (after what was already sent), and sends fail.
pub(crate) fn shutdown(sock: BorrowedFd<'_>) -> io::Result<()> {
    Ok(rustix::net::shutdown(sock, Shutdown::Both)?)
}

/// Sends as much of `bufs` (gathered in order) as one `sendmsg` takes without blocking, with
/// `fds` attached, and returns how many bytes went (`WouldBlock` when the buffer is full).
/// Never raises `SIGPIPE`: a closed peer is `EPIPE`.
///
/// See sendmsg(2), unix(7).
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    bufs: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message; at most {MAX_FDS}",
                fds.len()
            ),
        ));
    }
    // On the stack: this is every pipe's and queue feeder's send path.
    let mut iov = [IoSlice::new(&[]); MAX_BUFS];
    let n = bufs.len().min(MAX_BUFS);
    for (slot, buf) in iov.iter_mut().zip(bufs) {
        *slot = IoSlice::new(buf);
    }
    let mut space = [MaybeUninit::uninit(); CONTROL];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        let fit = control.push(SendAncillaryMessage::ScmRights(fds));
        debug_assert!(fit, "room for MAX_FDS descriptors");
    }
    let flags = SendFlags::NOSIGNAL | SendFlags::DONTWAIT;
    loop {
        match rustix::net::sendmsg(sock, &iov[..n], &mut control, flags) {
            Err(Errno::INTR) => continue,
            sent => return Ok(sent?),
        }
    }
}

/// Receives into `buf` without blocking; descriptors that arrive are appended to `fds`
/// (close-on-exec, and listed as internal at once, so no child forked meanwhile inherits them;
/// see [`fd::receiving`]). Returns the byte count, 0 at end of file; `WouldBlock` when nothing
/// is there. Descriptors the kernel could not install (this process is at its descriptor
/// limit, or a message carried more than [`MAX_FDS`]) are dropped and the bytes still
/// returned: a receiver checks that it got the descriptors it expects.
///
/// See recvmsg(2), unix(7).
pub(crate) fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<InternalFd>,
) -> io::Result<usize> {
    recv_message(sock, buf, fds).map(|got| got.bytes)
}

/// What one [`recv_message`] took.
pub(crate) struct Received {
    /// The bytes put in the buffer; 0 at end of file (or for an empty message).
    pub(crate) bytes: usize,
    /// Whether descriptors that came with it were dropped (`MSG_CTRUNC`).
    pub(crate) fds_dropped: bool,
    /// Whether it was longer than the buffer, and its end dropped (`MSG_TRUNC`: a message of
    /// a sequenced-packet socket).
    pub(crate) cut_short: bool,
}

/// [`recv`], saying also whether the kernel dropped descriptors or bytes of the message: a
/// receiver that cannot tell how many descriptors to expect says why they are missing.
///
/// See recvmsg(2), unix(7).
pub(crate) fn recv_message(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<InternalFd>,
) -> io::Result<Received> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = [MaybeUninit::uninit(); CONTROL];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // Never blocks: a fork waits for the receives under way.
    let flags = RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT;
    let receiving = fd::receiving();
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut iov, &mut control, flags) {
            Ok(msg) => break msg,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(arrived) = message {
            receiving.list(arrived, fds);
        }
    }
    drop(receiving);
    Ok(Received {
        bytes: msg.bytes,
        fds_dropped: msg.flags.contains(ReturnFlags::CTRUNC),
        cut_short: msg.flags.contains(ReturnFlags::TRUNC),
    })
}
