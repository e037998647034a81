//! A framed, descriptor-carrying connection over one Unix stream socket.
//!
//! Sending writes the whole frame, however large, with blocking writes: the peer reads as it
//! goes, so a frame bigger than the socket buffer cannot deadlock. Receiving never blocks
//! inside a frame: bytes are pulled as they are available and [`Channel::recv_frame`] waits with
//! poll(2) against a deadline, so a wait can always time out and be retried without losing
//! the part of a frame already read.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sys::fd::{self, InternalFd};
use crate::sys::socket;
use crate::wire::codec;
use crate::wire::frame::{self, FrameDecoder};
use crate::{Error, ErrorKind};

/// The smallest read: enough for a header and a small message in one system call.
const MIN_READ: usize = 4096;
/// The largest read: about what a Unix socket buffers, so storage grows with the data that
/// actually arrived, not with what a header announced.
const MAX_READ: usize = 256 * 1024;

/// One end of a framed connection.
#[derive(Debug)]
pub(crate) struct Channel {
    sock: InternalFd,
    decoder: FrameDecoder,
    /// Received, not taken yet; listed as internal from their arrival.
    fds: Vec<InternalFd>,
    /// Whether the kernel dropped descriptors that came with a message (see
    /// [`Channel::take_fds_dropped`]).
    fds_dropped: bool,
    eof: bool,
}

impl Channel {
    pub(crate) fn new(sock: InternalFd) -> Self {
        Channel {
            sock,
            decoder: FrameDecoder::default(),
            fds: Vec::new(),
            fds_dropped: false,
            eof: false,
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Whether the peer has closed its end (seen while reading).
    pub(crate) fn at_eof(&self) -> bool {
        self.eof
    }

    /// Sends one frame with `fds` attached to its first byte, waiting as long as the peer
    /// takes to read it.
    pub(crate) fn send_frame(&self, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        self.send_frame_until(payload, fds, None)
    }

    /// Sends one frame, or gives up with `Err(Timeout)` at `deadline`, after which the stream
    /// holds a partial frame and the connection must be abandoned.
    pub(crate) fn send_frame_until(
        &self,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let head = frame::header(payload.len())?;
        let total = head.len() + payload.len();
        let mut sent = 0;
        while sent < total {
            let attempt = if sent < head.len() {
                let fds = if sent == 0 { fds } else { &[] };
                socket::send(self.fd(), &[&head[sent..], payload], fds)
            } else {
                socket::send(self.fd(), &[&payload[sent - head.len()..]], &[])
            };
            match attempt {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let ready = fd::poll_write(self.fd(), deadline)
                        .map_err(|e| Error::os("waiting to write to a process's socket", e))?;
                    if !ready {
                        return Err(ErrorKind::Timeout.into());
                    }
                }
                Err(e) => return Err(Error::os("writing to a process's socket", e)),
            }
        }
        Ok(())
    }

    /// Encodes and sends one message.
    pub(crate) fn send<T: Serialize>(&self, msg: &T, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        self.send_frame(&encode_message(msg)?, fds)
    }

    /// A whole frame if one can be completed from what is already available, without
    /// blocking. `Err(Closed)` once the peer has closed at a frame boundary.
    pub(crate) fn try_recv_frame(&mut self) -> Result<Option<Vec<u8>>, Error> {
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                return Ok(Some(f));
            }
            if self.eof {
                return Err(self.eof_error());
            }
            let want = self.decoder.wanted().clamp(MIN_READ, MAX_READ);
            let buf = self.decoder.read_buf(want);
            let got = socket::recv_message(self.sock.as_fd(), buf, &mut self.fds);
            let got = got.map(|got| {
                self.fds_dropped |= got.fds_dropped;
                got.bytes
            });
            self.decoder.filled(want, *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => self.eof = true,
                Err(e) => return Err(Error::os("reading from a process's socket", e)),
            }
        }
    }

    fn eof_error(&self) -> Error {
        if self.decoder.is_mid_frame() {
            Error::protocol(format!(
                "the connection closed in the middle of a frame ({} bytes received, {} more \
                 expected)",
                self.decoder.buffered(),
                self.decoder.wanted()
            ))
        } else {
            ErrorKind::Closed.into()
        }
    }

    /// Waits for a whole frame until `deadline` (`Err(Timeout)` then; the partial frame is
    /// kept for the next call).
    pub(crate) fn recv_frame(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, Error> {
        loop {
            if let Some(f) = self.try_recv_frame()? {
                return Ok(f);
            }
            let ready = fd::poll_read(&[self.fd()], deadline)
                .map_err(|e| Error::os("waiting on a process's socket", e))?;
            if !ready[0].readable && !ready[0].hangup {
                return Err(ErrorKind::Timeout.into());
            }
        }
    }

    /// Waits for and decodes one message.
    pub(crate) fn recv<T: DeserializeOwned>(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<T, Error> {
        let bytes = self.recv_frame(deadline)?;
        decode_message(&bytes)
    }

    /// The first `n` descriptors received (those of the message just read; later messages'
    /// may have arrived in the same read and stay for them).
    pub(crate) fn take_fds_n(&mut self, n: usize) -> Vec<InternalFd> {
        let n = n.min(self.fds.len());
        self.fds.drain(..n).collect()
    }

    /// Whether the kernel dropped descriptors that came with a message since this was last
    /// asked (this process was at its descriptor limit when they arrived): a message that has
    /// fewer than it announced then lost them here, through no fault of its sender.
    pub(crate) fn take_fds_dropped(&mut self) -> bool {
        std::mem::take(&mut self.fds_dropped)
    }

    /// How many received descriptors no message has taken yet.
    pub(crate) fn pending_fds(&self) -> usize {
        self.fds.len()
    }

    /// Descriptors received so far, in arrival order.
    pub(crate) fn take_fds(&mut self) -> Vec<InternalFd> {
        std::mem::take(&mut self.fds)
    }
}

/// Why a message came without all its descriptors when the kernel dropped them here
/// ([`Channel::take_fds_dropped`]): `what` was being received.
pub(crate) fn fds_dropped_error(what: &str) -> Error {
    Error::os(
        what,
        io::Error::other(
            "the descriptors that came with it could not be received (this process is at its \
             descriptor limit?)",
        ),
    )
}

/// Frames waiting to be written to a peer that reads at its own pace: nothing blocks, and a
/// frame is never interleaved with another. For the pool's dispatcher, which serves many
/// workers from one thread.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Each frame: its bytes, how many are written, and descriptors to attach to its first
    /// byte.
    frames: std::collections::VecDeque<(Vec<u8>, usize, Vec<InternalFd>)>,
}

impl Outbox {
    /// Queues one message (encoded with its frame header).
    pub(crate) fn push<T: Serialize>(&mut self, msg: &T) -> Result<(), Error> {
        self.push_with_fds(msg, Vec::new())
    }

    /// Queues one message with descriptors attached (sent with `SCM_RIGHTS`).
    pub(crate) fn push_with_fds<T: Serialize>(
        &mut self,
        msg: &T,
        fds: Vec<InternalFd>,
    ) -> Result<(), Error> {
        let failed = |e| {
            Error::codec(
                format!("a `{}` message", std::any::type_name::<T>()),
                "encode",
                e,
            )
        };
        // Refused now, not when it is written: a frame the socket refuses would stay at the
        // front of the queue for good.
        if fds.len() > socket::MAX_FDS {
            return Err(Error::invalid(format!(
                "{} handles in one message; at most {} can travel together",
                fds.len(),
                socket::MAX_FDS
            )));
        }
        // Header and body in one buffer, encoded in place: no copy of the body.
        let len = codec::encoded_len(msg).map_err(failed)?;
        let mut framed = Vec::with_capacity(frame::HEADER_LEN + len);
        framed.extend_from_slice(&frame::header(len)?);
        codec::encode_into(&mut framed, msg).map_err(failed)?;
        self.frames.push_back((framed, 0, fds));
        Ok(())
    }

    /// Whether everything queued has been written.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes as much as the socket takes now, many frames per system call; `Ok(true)` once
    /// everything is written.
    pub(crate) fn flush(&mut self, ch: &Channel) -> Result<bool, Error> {
        const GATHER: usize = 64;
        while !self.frames.is_empty() {
            // Descriptors ride with their frame's first byte: a frame that carries some starts
            // a send of its own, and ends the gathering of the frames before it.
            let carried: Vec<BorrowedFd<'_>> = match self.frames.front() {
                Some((_, 0, fds)) => fds.iter().map(AsFd::as_fd).collect(),
                _ => Vec::new(),
            };
            let bufs: Vec<&[u8]> = self
                .frames
                .iter()
                .enumerate()
                .take_while(|(at, (_, _, fds))| *at == 0 || fds.is_empty())
                .take(GATHER)
                .map(|(_, (bytes, sent, _))| &bytes[*sent..])
                .collect();
            match socket::send(ch.fd(), &bufs, &carried) {
                Ok(n) => self.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(Error::os("writing to a process's socket", e)),
            }
        }
        Ok(true)
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some((bytes, sent, fds)) = self.frames.front_mut() else {
                return;
            };
            // Sent with the first byte: the peer has its own copies now.
            fds.clear();
            let left = bytes.len() - *sent;
            if n >= left {
                n -= left;
                self.frames.pop_front();
            } else {
                *sent += n;
                n = 0;
            }
        }
    }
}

/// Encodes a message for [`Channel::send_frame`].
pub(crate) fn encode_message<T: Serialize>(msg: &T) -> Result<Vec<u8>, Error> {
    codec::encode(msg).map_err(|e| {
        Error::codec(
            format!("a `{}` message", std::any::type_name::<T>()),
            "encode",
            e,
        )
    })
}

/// Decodes a message received as a frame.
pub(crate) fn decode_message<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    codec::decode(bytes).map_err(|e| {
        Error::protocol(format!(
            "a `{}` message could not be decoded: {e}",
            std::any::type_name::<T>()
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::sys::socket::socketpair;

    fn pair() -> (Channel, std::os::unix::net::UnixStream) {
        let (a, b) = socketpair().unwrap();
        (
            Channel::new(InternalFd::new(a)),
            std::os::unix::net::UnixStream::from(b),
        )
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(5))
    }

    #[test]
    fn an_oversized_announcement_is_a_protocol_error() {
        let (mut ch, mut raw) = pair();
        raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let e = ch.recv_frame(soon()).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Protocol(_)), "{e}");
    }

    #[test]
    fn a_truncated_frame_is_a_protocol_error_and_a_clean_close_is_closed() {
        let (mut ch, mut raw) = pair();
        raw.write_all(&10u32.to_le_bytes()).unwrap();
        raw.write_all(b"abc").unwrap();
        drop(raw);
        let e = ch.recv_frame(soon()).unwrap_err();
        assert!(e.to_string().contains("middle of a frame"), "{e}");

        let (mut ch, raw) = pair();
        drop(raw);
        assert_eq!(
            ch.recv_frame(soon()).unwrap_err().kind(),
            &ErrorKind::Closed
        );
    }

    #[test]
    fn garbage_inside_a_frame_is_a_protocol_error_not_a_panic() {
        let (mut ch, mut raw) = pair();
        raw.write_all(&4u32.to_le_bytes()).unwrap();
        raw.write_all(&[0xff; 4]).unwrap();
        let e = ch
            .recv::<crate::wire::message::Outcome>(soon())
            .unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Protocol(_)), "{e}");
    }

    #[test]
    fn a_partial_frame_survives_a_timeout() {
        let (mut ch, mut raw) = pair();
        raw.write_all(&3u32.to_le_bytes()).unwrap();
        raw.write_all(b"a").unwrap();
        let e = ch
            .recv_frame(Some(Instant::now() + Duration::from_millis(20)))
            .unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Timeout);
        raw.write_all(b"bc").unwrap();
        assert_eq!(ch.recv_frame(soon()).unwrap(), b"abc");
    }

    #[test]
    fn descriptors_travel_with_a_frame_and_big_frames_do_not_deadlock() {
        let (a, b) = socketpair().unwrap();
        let (tx, mut rx) = (
            Channel::new(InternalFd::new(a)),
            Channel::new(InternalFd::new(b)),
        );
        let (r, w) = crate::sys::fd::pipe().unwrap();
        let big = vec![42u8; 8 << 20];
        let sender = std::thread::spawn(move || {
            tx.send_frame(&big, &[w.as_fd()]).unwrap();
            tx
        });
        let got = rx.recv_frame(soon()).unwrap();
        let _tx = sender.join().unwrap();
        assert_eq!(got.len(), 8 << 20);
        assert!(got.iter().all(|&b| b == 42));
        let fds = rx.take_fds();
        assert_eq!(fds.len(), 1);
        let mut w = std::fs::File::from(fds.into_iter().next().unwrap().into_owned());
        w.write_all(b"through").unwrap();
        drop(w);
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "through");
    }

    #[test]
    fn sending_to_a_closed_peer_is_closed_not_sigpipe() {
        let (ch, raw) = pair();
        drop(raw);
        let e = ch.send_frame(&[0; 1 << 20], &[]).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::Closed);
    }
}
