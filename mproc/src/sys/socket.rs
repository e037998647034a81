//! Unix-domain stream sockets with descriptor passing (`SCM_RIGHTS`).

// PENDING
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

/// The most descriptors one `sendmsg` carries; more are an error, not a truncation.
pub(crate) const MAX_FDS: usize = 32;

/// A connected pair of Unix stream sockets, both close-on-exec.
///
/// See socketpair(2).
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    syscall!(socketpair(
        libc::AF_UNIX,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        0,
        fds.as_mut_ptr()
    ))?;
    // SAFETY: socketpair succeeded, so both numbers are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A connected pair of Unix sequenced-packet sockets (each send arrives whole, as one message,
/// whatever else is sent on the same socket), both close-on-exec.
///
/// See socketpair(2), unix(7).
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    syscall!(socketpair(
        libc::AF_UNIX,
        libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
        0,
        fds.as_mut_ptr()
    ))?;
    // SAFETY: socketpair succeeded, so both numbers are fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether `sock` is a Unix sequenced-packet socket (checked when one arrives from elsewhere).
pub(crate) fn is_seqpacket(sock: BorrowedFd<'_>) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `kind` and `len` are valid for writing one int and its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && kind == libc::SOCK_SEQPACKET
}

/// Shuts both directions of `sock` down, for every process that holds it: the peer reads end
/// of file (after what was already sent), and sends fail.
pub(crate) fn shutdown(sock: BorrowedFd<'_>) -> io::Result<()> {
    syscall!(shutdown(sock.as_raw_fd(), libc::SHUT_RDWR)).map(drop)
}

fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is a pure size computation.
    unsafe { libc::CMSG_SPACE((n * mem::size_of::<RawFd>()) as u32) as usize }
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
    let mut iov: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // u64 storage keeps the control buffer aligned for cmsghdr.
    let mut control = [0u64; 40];
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: msg_control points at `control`, which is larger than CMSG_SPACE(MAX_FDS),
        // so CMSG_FIRSTHDR is non-null and CMSG_DATA has room for `fds.len()` descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * mem::size_of::<RawFd>()) as u32) as _;
            let out = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                ptr::write_unaligned(out.add(i), fd.as_raw_fd());
            }
        }
    }
    loop {
        match syscall!(sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT
        )) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives into `buf`; descriptors that arrive are appended to `fds` (close-on-exec).
/// Returns the byte count, 0 at end of file. With `nonblocking`, `WouldBlock` when nothing is
/// there. Descriptors the kernel could not install (this process is at its descriptor limit,
/// or a message carried more than [`MAX_FDS`]) are dropped and the bytes still returned: a
/// receiver checks that it got the descriptors it expects.
///
/// See recvmsg(2), unix(7).
pub(crate) fn recv(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 40];
    // SAFETY: an all-zero msghdr is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space(MAX_FDS) as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    let n = loop {
        match syscall!(recvmsg(sock.as_raw_fd(), &mut msg, flags)) {
            Ok(n) => break n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    take_fds(&msg, fds);
    Ok(n)
}

fn take_fds(msg: &libc::msghdr, fds: &mut Vec<OwnedFd>) {
    // SAFETY: `msg` was filled by a successful recvmsg; the CMSG_* macros walk the control
    // buffer within msg_controllen, and each SCM_RIGHTS payload holds fresh descriptors that
    // the kernel installed for us, so adopting each exactly once is sound.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize - header) / mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
}
