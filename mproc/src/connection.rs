//! Pipes: [`pipe`] makes two connected, duplex [`Connection`]s.
//!
//! A connection is one end of a Unix sequenced-packet socket pair: each `send` arrives whole
//! as one message, so processes and threads sharing an end never interleave. A value up to
//! [`INLINE`] bytes encoded travels in the message; a larger one is encoded straight into a
//! memory file that travels with the message (`SCM_RIGHTS`) and is decoded straight out of it,
//! so big payloads are never copied through the socket. The receiver marks the file done when
//! it has decoded it, and the sender writes its next large message into it again (a few files
//! kept per end), so its pages are allocated once. A sender with 16 such messages, or 64 MiB
//! of files, not yet read waits, as a full pipe makes it: its memory stays bounded. Handles
//! (locks, queues, other connections) may ride inside a sent value: their descriptors go with
//! the message.
//!
//! End of file is the kernel's: once every process holding the other end has closed it (by
//! dropping it, exiting or dying), `recv` fails with `Closed` at once.

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, ErrorKind};
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc;
use crate::memfile::{self, FILE_HEADER, Mapped, Spares};
use crate::sys::socket;
use crate::wire::codec;

/// The largest encoded value sent inside the message itself; larger ones go in a memory file.
pub(crate) const INLINE: usize = 64 * 1024;
const TAG_INLINE: u8 = 0;
const TAG_FILE: u8 = 1;
/// A receiving end's buffer, and its mappings of the memory files large messages came in.
#[derive(Default)]
struct Receiving {
    buf: Vec<u8>,
    files: Mapped,
}

struct End {
    /// Listed as internal: a child made with fork closes it (unless it is passed to the child),
    /// so end of file never depends on who forked when.
    sock: InternalFd,
    /// The fork generation it belongs to; a fork child that inherited it without being
    /// passed it has no such descriptor.
    generation: u64,
    /// One sender at a time in this process (a message is whole anyway; this orders the
    /// waits for room).
    sending: Mutex<()>,
    /// One receiver at a time in this process, so a message and its descriptors stay
    /// together; and its state.
    receiving: Mutex<Receiving>,
    /// Memory files sent for large messages, kept for reuse.
    spares: Mutex<Spares>,
}

/// One end of a [`pipe`]: Python's `multiprocessing.connection.Connection`, for values of `T`.
///
/// Both ends send and receive. A `Connection` is a cheap `Clone` (clones share the end),
/// `Send + Sync`, and travels as an argument of [`Process::new`](crate::Process::new), of pool
/// tasks, or inside a value sent over another connection.
///
/// A child started with [`StartMethod::Fork`](crate::StartMethod::Fork) holds only the
/// connections passed to it: the ones it inherited otherwise are closed in it, so an end's
/// peer sees end of file when the processes it was passed to are gone, whoever forked when
/// (Python's inherited ends keep pipes open by surprise). Using such an inherited handle is
/// an `InvalidArgument` error that says so.
///
/// ```
/// use mproc::{Connection, Process};
///
/// fn echo_twice(conn: Connection<String>) {
///     let s = conn.recv().unwrap();
///     conn.send(format!("{s} {s}")).unwrap();
/// }
///
/// let (here, there) = mproc::pipe()?;
/// let mut p = Process::new(echo_twice, (there,));
/// p.start()?;
/// here.send("hi".to_string())?;
/// assert_eq!(here.recv()?, "hi hi");
/// p.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Connection<T> {
    end: Arc<End>,
    _values: PhantomData<fn(T) -> T>,
}

/// Two connected ends, each of which sends to the other: Python's `Pipe()`.
///
/// ```
/// let (a, b) = mproc::pipe::<u32>()?;
/// a.send(1)?;
/// b.send(2)?;
/// assert_eq!((b.recv()?, a.recv()?), (1, 2));
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn pipe<T>() -> Result<(Connection<T>, Connection<T>), Error> {
    // Listed as internal as they are made: a child forked by another thread meanwhile would
    // otherwise keep both ends open for its life (and a reader would not see end of file).
    let [a, b] = socket::internal_seqpacket_pair()
        .map_err(|e| Error::os("creating a pipe", e))?;
    Ok((Connection::from_sock(a), Connection::from_sock(b)))
}

impl<T> Clone for Connection<T> {
    fn clone(&self) -> Self {
        Connection {
            end: self.end.clone(),
            _values: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("fd", &self.end.sock)
            .finish()
    }
}

impl End {
    /// The socket, unless this process is a fork child that inherited the handle without
    /// being passed it.
    fn sock(&self) -> Result<BorrowedFd<'_>, Error> {
        if self.generation != proc::fork_generation() {
            return Err(Error::invalid(
                "this connection was inherited through fork, not passed to this process: \
                 pass it in the arguments of Process::new or of a pool task",
            ));
        }
        Ok(self.sock.as_fd())
    }
}

impl<T> Connection<T> {
    fn from_sock(sock: InternalFd) -> Self {
        Connection {
            end: Arc::new(End {
                sock,
                generation: proc::fork_generation(),
                sending: Mutex::new(()),
                receiving: Mutex::new(Receiving::default()),
                spares: Mutex::new(Spares::paced()),
            }),
            _values: PhantomData,
        }
    }

    /// Whether a message (or the end of file) is there to receive, waiting up to `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let (a, b) = mproc::pipe::<u8>()?;
    /// assert!(!b.poll(Duration::ZERO)?);
    /// a.send(1)?;
    /// assert!(b.poll(Duration::from_secs(1))?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn poll(&self, timeout: Duration) -> Result<bool, Error> {
        let ready = fd::poll_read(&[self.end.sock()?], fd::deadline_after(timeout))
            .map_err(|e| Error::os("waiting on a pipe", e))?;
        Ok(ready[0].readable || ready[0].hangup)
    }

    /// Shuts the connection down in both directions, for every process: the other end reads
    /// what was already sent and then fails with `Closed`; sends from either end fail.
    ///
    /// ```
    /// let (a, b) = mproc::pipe::<u8>()?;
    /// a.send(1)?;
    /// a.close();
    /// assert_eq!(b.recv()?, 1);
    /// assert_eq!(b.recv().unwrap_err().kind(), &mproc::ErrorKind::Closed);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn close(&self) {
        if let Ok(sock) = self.end.sock() {
            let _ = socket::shutdown(sock);
        }
    }
}

impl<T: Serialize + DeserializeOwned> Connection<T> {
    /// Sends `value` (a `T` or a `&T`) to the other end, waiting while the pipe is full: while
    /// the socket's buffer is (a couple of hundred KiB, as in Python), or, for values over 64
    /// KiB encoded (which travel in memory files), while this end (in this process) has 16 of
    /// them, or 64 MiB of files, sent and not yet read; a value over 64 MiB waits until every
    /// earlier one is read. So a thread that reads its own pipe must read before that much is
    /// outstanding, and two processes that each send a lot before reading can wait for each
    /// other, as with any pipe. A value taken by a receiver that then died no longer counts,
    /// nor do values left unread when every process holding the other end is gone.
    ///
    /// # Errors
    ///
    /// `Closed` when the other end is closed or every process holding it is gone; `Codec` when
    /// the value does not encode.
    ///
    /// ```
    /// let (a, b) = mproc::pipe::<Vec<u64>>()?;
    /// let v = vec![1, 2, 3];
    /// a.send(&v)?; // by reference
    /// assert_eq!(b.recv()?, v);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn send(&self, value: impl Borrow<T>) -> Result<(), Error> {
        let value = value.borrow();
        let sock = self.end.sock()?;
        let encode_err = |e| Error::codec(std::any::type_name::<T>(), "encode", e);
        // A large value's spares, held until its file is sent: another thread of this process
        // never sees it in flight before it is in the socket.
        let mut paced = None;
        let (message, handles) = crate::handle::collecting(|| -> Result<_, Error> {
            let len = codec::encoded_len(value).map_err(encode_err)?;
            if len <= INLINE {
                let mut bytes = Vec::with_capacity(1 + len);
                bytes.push(TAG_INLINE);
                codec::encode_into(&mut bytes, value).map_err(encode_err)?;
                return Ok((bytes, None));
            }
            let mut spares = self.end.spares.lock().unwrap_or_else(|e| e.into_inner());
            let file = spares.write_paced(len, sock, |body| {
                codec::encode_to_slice(body, value).map_err(encode_err)
            })?;
            paced = Some(spares);
            let mut bytes = vec![TAG_FILE];
            bytes.extend((len as u64).to_le_bytes());
            Ok((bytes, Some(file)))
        });
        let (bytes, file) = message?;
        let mut fds: Vec<_> = file.iter().map(|f| f.as_fd()).collect();
        fds.extend(handles.iter().map(|f| f.as_fd()));
        let _one = self.end.sending.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match socket::send(sock, &[&bytes], &fds) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    fd::poll_write(sock, None)
                        .map_err(|e| Error::os("waiting to send on a pipe", e))?;
                }
                Err(e) => return Err(Error::os("sending on a pipe", e)),
            }
        }
    }

    /// Receives the next value, waiting for it.
    ///
    /// # Errors
    ///
    /// `Closed` at once when the other end is closed, or every process holding it has dropped
    /// it or died; `Codec` when the message does not decode as a `T` (it is consumed);
    /// `Protocol` for a message no `send` makes (empty, too long, malformed), `Os` for one
    /// whose descriptors this process could not take (at its descriptor limit): consumed too.
    ///
    /// ```
    /// let (a, b) = mproc::pipe::<String>()?;
    /// a.send("ping".to_string())?;
    /// assert_eq!(b.recv()?, "ping");
    /// drop(a);
    /// assert_eq!(b.recv().unwrap_err().kind(), &mproc::ErrorKind::Closed);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn recv(&self) -> Result<T, Error> {
        self.recv_until(None)
    }

    /// Like [`recv`](Connection::recv), giving up with `Err(Timeout)` after `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let (_a, b) = mproc::pipe::<u8>()?;
    /// let e = b.recv_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert_eq!(e.kind(), &mproc::ErrorKind::Timeout);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, Error> {
        self.recv_until(fd::deadline_after(timeout))
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<T, Error> {
        let sock = self.end.sock()?;
        let mut fds = Vec::new();
        // Waits happen without the buffer's lock, so each receiver keeps its own deadline; a
        // message (and its descriptors) is taken whole by one nonblocking receive under it.
        let (mut state, got) = loop {
            let mut state = self.end.receiving.lock().unwrap_or_else(|e| e.into_inner());
            state.buf.resize(1 + INLINE, 0);
            match socket::recv_message(sock, &mut state.buf, &mut fds) {
                Ok(got) => break (state, got),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    drop(state);
                    let ready = fd::poll_read(&[sock], deadline)
                        .map_err(|e| Error::os("waiting on a pipe", e))?;
                    if !ready[0].readable && !ready[0].hangup {
                        return Err(ErrorKind::Timeout.into());
                    }
                }
                Err(e) => return Err(Error::os("receiving on a pipe", e)),
            }
        };
        // Whole or not at all: without all its descriptors, a message's handles (or its file)
        // would be missing, or stand for the wrong ones.
        if got.fds_dropped {
            return Err(Error::os(
                "receiving on a pipe",
                std::io::Error::other(
                    "the descriptors that came with a message could not be received (at the \
                     descriptor limit?); the message is dropped",
                ),
            ));
        }
        // End of file, or an empty message (mproc sends none; a peer that means harm could,
        // to make this end think the pipe closed).
        if got.bytes == 0 {
            let done = fd::receives_no_more(sock).map_err(|e| Error::os("receiving on a pipe", e))?;
            if !done {
                return Err(Error::protocol("an empty message on a pipe (mproc sends none)"));
            }
        }
        if got.cut_short {
            return Err(Error::protocol(
                "a message on a pipe longer than any mproc sends (dropped)",
            ));
        }
        let state = &mut *state;
        let buf = std::mem::take(&mut state.buf);
        let value = self.decode_received(state, &buf, got.bytes, fds);
        state.buf = buf;
        value
    }

    /// Decodes the message of `n` bytes at the front of `buf`, with `fds`, received under the
    /// receiving lock (`state`).
    fn decode_received(
        &self,
        state: &mut Receiving,
        buf: &[u8],
        n: usize,
        mut fds: Vec<InternalFd>,
    ) -> Result<T, Error> {
        if n == 0 {
            return Err(ErrorKind::Closed.into());
        }
        let decode_err = |e| Error::codec(std::any::type_name::<T>(), "decode", e);
        match buf[0] {
            TAG_INLINE => {
                crate::handle::providing(fds, || codec::decode(&buf[1..n]).map_err(decode_err))
            }
            TAG_FILE if n == 9 && !fds.is_empty() => {
                let len = u64::from_le_bytes(buf[1..9].try_into().expect("8 bytes"));
                let file = fds.remove(0);
                let map = state.files.map(file.as_fd(), len)?;
                // Said before it is read (its sender then waits for it only while we run), and
                // done with however reading ends: the sender may write its next message there.
                let reading = memfile::taken(map);
                // Copied out as it is decoded: the sender can still write the file.
                let body = map
                    .reader(FILE_HEADER, len as usize)
                    .map_err(|e| Error::protocol(format!("a message in a bad memory file: {e}")))?;
                let value = crate::handle::providing(fds, || {
                    crate::wire::shared::decode_shared(body).map_err(decode_err)
                });
                reading.read(file.as_fd());
                state.files.release();
                value
            }
            _ => Err(Error::protocol("a malformed message on a pipe")),
        }
    }
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sock = self.end.sock().map_err(serde::ser::Error::custom)?;
        let at = crate::handle::export(sock).map_err(serde::ser::Error::custom)?;
        s.serialize_u32(at)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let at = u32::deserialize(d)?;
        // Kept listed as internal from its arrival on (see `pipe`).
        let sock = crate::handle::import(at).map_err(serde::de::Error::custom)?;
        if !socket::is_seqpacket(sock.as_fd()) {
            return Err(serde::de::Error::custom("not an mproc pipe"));
        }
        Ok(Connection::from_sock(sock))
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::sys::shm::testing;

    /// A value larger than a sender keeps files for (64 MiB) holds memory until it is read,
    /// and none after, though its sender keeps the file (to count it) until its next large
    /// value.
    #[test]
    fn a_value_larger_than_a_sender_keeps_holds_no_memory_once_read() {
        let (a, b) = pipe::<serde_bytes::ByteBuf>().unwrap();
        let big = serde_bytes::ByteBuf::from(vec![7u8; 65 << 20]);
        a.send(&big).unwrap();
        let spares = |c: &Connection<serde_bytes::ByteBuf>| {
            c.end.spares.lock().unwrap().allocated_bytes()
        };
        assert!(spares(&a) >= 65 << 20, "{} bytes while unread", spares(&a));
        assert!(b.recv().unwrap() == big);
        a.send(serde_bytes::ByteBuf::from(vec![1u8; 10])).unwrap();
        assert!(spares(&a) < 1 << 20, "{} bytes once read", spares(&a));
    }

    /// The memory file a [`Shrinking`] value cuts short as it is decoded.
    static VICTIM: Mutex<Option<File>> = Mutex::new(None);

    /// Bytes that, as they are decoded, first shorten the file they come from: what a sender
    /// that meant harm would do while its receiver reads the message.
    struct Shrinking;

    impl Serialize for Shrinking {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&[])
        }
    }

    impl<'de> Deserialize<'de> for Shrinking {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            if let Some(file) = VICTIM.lock().unwrap().as_ref() {
                file.set_len(0).unwrap();
            }
            Vec::<u8>::deserialize(d).map(|_| Shrinking)
        }
    }

    /// Receives a large message whose memory file its sender did not seal, and shrinks under
    /// the receiver.
    fn receive_from_a_sender_that_shrinks_the_file() -> Result<(), String> {
        let (a, b) = socket::seqpacket_pair().map_err(|e| e.to_string())?;
        let conn = Connection::<Shrinking>::from_sock(InternalFd::new(b));
        let body = codec::encode(&vec![7u8; 1 << 20]).map_err(|e| e.to_string())?;
        let file = testing::unsealed_memfd(FILE_HEADER + body.len());
        let writer = File::from(file.try_clone().map_err(|e| e.to_string())?);
        writer
            .write_all_at(&body, FILE_HEADER as u64)
            .map_err(|e| e.to_string())?;
        *VICTIM.lock().unwrap() = Some(writer);
        let mut message = vec![TAG_FILE];
        message.extend((body.len() as u64).to_le_bytes());
        socket::send(a.as_fd(), &[&message], &[file.as_fd()]).map_err(|e| e.to_string())?;
        match conn.recv() {
            Ok(_) => Err("a message in a file that could shrink was decoded".into()),
            Err(e) if matches!(e.kind(), ErrorKind::Protocol(_)) => {
                if e.to_string().contains("could shrink") {
                    Ok(())
                } else {
                    Err(format!("the wrong error: {e}"))
                }
            }
            Err(e) => Err(format!("the wrong kind of error: {e}")),
        }
    }

    /// What a peer that means harm (or a broken one) sends on the socket of a pipe: each is
    /// an error of its own, no descriptor that came with it stays open, and the pipe goes on.
    #[test]
    fn malformed_messages_are_errors_and_the_pipe_goes_on() {
        let (raw, b) = socket::seqpacket_pair().unwrap();
        let conn = Connection::<Vec<u64>>::from_sock(InternalFd::new(b));
        let (stray, stray_peer) = socket::seqpacket_pair().unwrap();
        let (_map, small) = crate::sys::shm::Mapping::create_inherited("mproc-test", 4096).unwrap();
        let file = |len: u64| [&[TAG_FILE][..], &len.to_le_bytes()].concat();
        // A whole value in the first 1 + INLINE bytes, then more: cut where the buffer ends,
        // it decoded as that value.
        let value = codec::encode(&vec![5u64; (INLINE - 8) / 8]).unwrap();
        assert_eq!(value.len(), INLINE);
        let long = [&[TAG_INLINE][..], &value, &[1; 100]].concat();
        let cases: [(&str, Vec<u8>, Vec<BorrowedFd<'_>>); 9] = [
            ("an unknown tag", vec![9, 1, 2], vec![]),
            ("a file message without its file", file(100), vec![]),
            ("a file message of 4 bytes", vec![TAG_FILE, 0, 0, 0, 0], vec![small.as_fd()]),
            ("a socket for a file", file(1 << 30), vec![stray.as_fd()]),
            ("a file shorter than said", file(1 << 30), vec![small.as_fd()]),
            ("a length past memory", file(u64::MAX), vec![small.as_fd()]),
            ("a vector of 2^64 items", [&[TAG_INLINE][..], &[0xff; 8]].concat(), vec![]),
            ("a message longer than any", long, vec![]),
            ("an empty message", vec![], vec![]),
        ];
        for (what, bytes, fds) in cases {
            socket::send(raw.as_fd(), &[&bytes], &fds).unwrap();
            let Err(e) = conn.recv_timeout(Duration::from_secs(5)) else {
                panic!("{what}: taken as a value");
            };
            assert!(
                matches!(e.kind(), ErrorKind::Protocol(_) | ErrorKind::Codec(_)),
                "{what}: {e}"
            );
            if what == "an empty message" {
                assert!(e.to_string().contains("empty message"), "{what}: {e}");
            }
            if what == "a message longer than any" {
                assert!(e.to_string().contains("longer than any"), "{what}: {e}");
            }
        }
        // The message held the stray socket's only other copy: the receiver let it go.
        drop(stray);
        assert!(fd::hung_up(stray_peer.as_fd()).unwrap(), "a descriptor kept");
        let ok = [&[TAG_INLINE][..], &codec::encode(&vec![7u64]).unwrap()].concat();
        socket::send(raw.as_fd(), &[&ok], &[]).unwrap();
        assert_eq!(conn.recv_timeout(Duration::from_secs(5)).unwrap(), [7]);
    }

    #[test]
    fn a_message_file_its_sender_could_shrink_is_refused_not_a_crash() {
        testing::in_children(receive_from_a_sender_that_shrinks_the_file);
    }
}
