//! Length-prefixed frames: a little-endian `u32` payload length, then the payload.
//!
//! The decoder is incremental: bytes are pushed as they arrive, in any split, and whole frames
//! come out. A length above the limit is an error before any of it is buffered, so a hostile
//! or corrupt peer cannot make us allocate.

use crate::Error;

/// Bytes in a frame header.
pub(crate) const HEADER_LEN: usize = 4;

/// The largest payload a frame may carry by default: 1 GiB.
pub(crate) const MAX_FRAME_LEN: usize = 1 << 30;

/// The header for a payload of `len` bytes.
pub(crate) fn header(len: usize) -> Result<[u8; HEADER_LEN], Error> {
    if len > MAX_FRAME_LEN {
        return Err(Error::invalid(format!(
            "a message of {len} bytes is larger than the {MAX_FRAME_LEN}-byte frame limit"
        )));
    }
    Ok((len as u32).to_le_bytes())
}

/// Frames at least this large are handed over in the decoder's own buffer instead of copied.
const HANDOVER_LEN: usize = 64 * 1024;

/// Reassembles frames from a byte stream.
///
/// `buf` is storage that stays initialised as it grows, so reads land in it without being
/// zeroed each time; `buf[start..end]` holds the bytes not yet returned as frames.
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::with_limit(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that rejects payloads longer than `limit`.
    pub(crate) fn with_limit(limit: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            limit,
        }
    }

    /// Appends bytes read from the stream.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.read_buf(bytes.len()).copy_from_slice(bytes);
        self.filled(bytes.len(), bytes.len());
    }

    /// A writable tail of `n` bytes for the next read to fill; then call [`Self::filled`].
    pub(crate) fn read_buf(&mut self, n: usize) -> &mut [u8] {
        if self.start > 0 && self.end + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end + n > self.buf.len() {
            self.buf.resize(self.end + n, 0);
        }
        &mut self.buf[self.end..self.end + n]
    }

    /// Records that the last [`Self::read_buf`] received `got` bytes (of the `_asked`).
    pub(crate) fn filled(&mut self, _asked: usize, got: usize) {
        self.end += got;
    }

    /// How many buffered bytes have not been returned as a frame yet.
    pub(crate) fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The payload length announced by a complete buffered header, if any.
    fn announced(&self) -> Option<usize> {
        let head = self.buf[self.start..self.end].get(..HEADER_LEN)?;
        Some(u32::from_le_bytes(head.try_into().ok()?) as usize)
    }

    /// How many more bytes the frame being assembled needs (at least one header's worth when
    /// nothing is buffered); used to size reads.
    pub(crate) fn wanted(&self) -> usize {
        match self.announced() {
            Some(len) => (HEADER_LEN + len).saturating_sub(self.buffered()).max(1),
            None => HEADER_LEN - self.buffered().min(HEADER_LEN),
        }
    }

    /// The next whole frame's payload, `Ok(None)` when more bytes are needed, or an error for
    /// a length over the limit (after which the stream is unusable).
    pub(crate) fn next_frame(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let Some(len) = self.announced() else {
            return Ok(None);
        };
        if len > self.limit {
            return Err(Error::protocol(format!(
                "a frame announces {len} bytes, more than the {}-byte limit",
                self.limit
            )));
        }
        if self.buffered() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.start + HEADER_LEN;
        if len >= HANDOVER_LEN && self.start == 0 && self.end == body + len {
            // A large frame alone in the buffer: hand the buffer itself over.
            let mut all = std::mem::take(&mut self.buf);
            all.truncate(body + len);
            all.drain(..HEADER_LEN);
            self.end = 0;
            return Ok(Some(all));
        }
        let payload = self.buf[body..body + len].to_vec();
        self.start = body + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(payload))
    }

    /// Whether a frame has been started but not finished.
    pub(crate) fn is_mid_frame(&self) -> bool {
        self.buffered() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            out.extend(header(p.len()).unwrap());
            out.extend(*p);
        }
        out
    }

    #[test]
    fn frames_come_out_whatever_the_split() {
        let stream = framed(&[b"hello", b"", b"a longer payload of bytes"]);
        for chunk in 1..stream.len() {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(
                got,
                vec![
                    b"hello".to_vec(),
                    vec![],
                    b"a longer payload of bytes".to_vec()
                ]
            );
            assert!(!d.is_mid_frame());
        }
    }

    #[test]
    fn truncated_frame_is_reported_as_mid_frame() {
        let stream = framed(&[b"hello"]);
        let mut d = FrameDecoder::default();
        d.push(&stream[..7]);
        assert_eq!(d.next_frame().unwrap(), None);
        assert!(d.is_mid_frame());
        assert_eq!(d.wanted(), 2);
    }

    #[test]
    fn oversized_frame_is_an_error_without_allocating() {
        let mut d = FrameDecoder::with_limit(16);
        d.push(&17u32.to_le_bytes());
        let e = d.next_frame().unwrap_err();
        assert!(matches!(e.kind(), crate::ErrorKind::Protocol(_)), "{e}");
        let mut d = FrameDecoder::default();
        d.push(&u32::MAX.to_le_bytes());
        assert!(d.next_frame().is_err());
        assert!(d.buf.capacity() < 1024);
    }

    #[test]
    fn header_refuses_payloads_over_the_limit() {
        assert!(header(MAX_FRAME_LEN + 1).is_err());
        assert_eq!(header(5).unwrap(), [5, 0, 0, 0]);
    }
}
