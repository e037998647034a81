//! Decoding out of shared memory that a peer may write meanwhile (a queue's ring, a large
//! message's memory file): every byte is copied into private memory once, and only the copy is
//! decoded and checked.

use serde::de::{DeserializeOwned, Visitor};

use super::codec::{Error, decode};
use super::de;
use crate::sys::cast::{self, Number};
use crate::sys::layout::SharedReader;

/// Decodes a `T` that must use all of `from`: bytes in shared memory that a peer may write
/// meanwhile. Each byte is copied out once and decoded from the private copy, never read
/// twice from shared memory. A small message is copied whole into a reused buffer and decoded
/// as [`decode`] does; a large one is decoded as it is copied, so that a byte string or a
/// string in it (a 10 MiB `ByteBuf`) is copied once, straight into the value it becomes.
pub(crate) fn decode_shared<T: DeserializeOwned>(from: SharedReader<'_>) -> Result<T, Error> {
    /// Up to this size, a copy then a decode (a second copy of a small message costs less
    /// than reading it through the streaming path).
    const SMALL: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut from = from;
    let len = from.remaining();
    if len <= SMALL {
        return SCRATCH.with(|scratch| {
            // A decode that decodes another message (none does today) gets its own buffer.
            let mut fresh = Vec::new();
            let mut borrowed = scratch.try_borrow_mut();
            let buf = match borrowed.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut fresh,
            };
            buf.clear();
            from.append_to(len, buf).map_err(shared_err)?;
            decode(buf)
        });
    }
    let mut de = de::Deserializer::new(Streaming {
        from,
        buf: vec![0; 8 * 1024],
        pos: 0,
        filled: 0,
    });
    let value = T::deserialize(&mut de)?;
    de.finish()?;
    Ok(value)
}

#[cold]
fn shared_err(e: std::io::Error) -> Error {
    Error::new(format!("reading a message out of shared memory: {e}"))
}

/// A large message being decoded out of shared memory: small reads (integers, lengths) are
/// served from a private buffer filled a few KiB at a time; a byte string or a string is
/// copied straight from shared memory into its own `Vec`.
struct Streaming<'m> {
    from: SharedReader<'m>,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl Streaming<'_> {
    /// Makes at least `n` (at most the buffer's size) bytes ready in the buffer.
    #[inline]
    fn ready(&mut self, n: usize) -> Result<(), Error> {
        if self.filled - self.pos >= n {
            return Ok(());
        }
        self.refill(n)
    }

    #[cold]
    fn refill(&mut self, n: usize) -> Result<(), Error> {
        self.buf.copy_within(self.pos..self.filled, 0);
        self.filled -= self.pos;
        self.pos = 0;
        let want = (self.buf.len() - self.filled).min(self.from.remaining());
        if self.filled + want < n {
            return Err(de::truncated());
        }
        let at = self.filled;
        std::io::Read::read_exact(&mut self.from, &mut self.buf[at..at + want])
            .map_err(shared_err)?;
        self.filled += want;
        Ok(())
    }

    /// The next `len` bytes, in a `Vec` of their own (copied once from shared memory).
    fn take(&mut self, len: usize) -> Result<Vec<u8>, Error> {
        if len > de::Input::remaining(self) {
            return Err(de::truncated());
        }
        let buffered = (self.filled - self.pos).min(len);
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.buf[self.pos..self.pos + buffered]);
        self.pos += buffered;
        self.from
            .append_to(len - buffered, &mut out)
            .map_err(shared_err)?;
        Ok(out)
    }
}

impl<'de> de::Input<'de> for Streaming<'_> {
    fn remaining(&self) -> usize {
        self.filled - self.pos + self.from.remaining()
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        self.ready(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Error> {
        self.ready(1)?;
        self.pos += 1;
        Ok(self.buf[self.pos - 1])
    }

    fn bytes<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_byte_buf(self.take(len)?)
    }

    /// The whole numbers in the buffer first, then one straddling its end (if any), then the
    /// rest straight out of shared memory: one copy of each byte, none through the buffer.
    fn numbers<T: Number>(&mut self, n: usize) -> Result<Vec<T>, Error> {
        de::numbers_len::<T>(n, de::Input::remaining(self))?;
        let size = size_of::<T>();
        let mut out = Vec::with_capacity(n);
        let whole = ((self.filled - self.pos) / size).min(n);
        cast::extend_from_le(&mut out, &self.buf[self.pos..self.pos + whole * size]);
        self.pos += whole * size;
        if out.len() < n {
            let part = self.filled - self.pos;
            if part > 0 {
                let mut one = [0; 16];
                one[..part].copy_from_slice(&self.buf[self.pos..self.filled]);
                self.pos = self.filled;
                std::io::Read::read_exact(&mut self.from, &mut one[part..size])
                    .map_err(shared_err)?;
                cast::extend_from_le(&mut out, &one[..size]);
            }
            self.from
                .append_numbers(n - out.len(), &mut out)
                .map_err(shared_err)?;
        }
        Ok(out)
    }

    fn str<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        match String::from_utf8(self.take(len)?) {
            Ok(s) => visitor.visit_string(s),
            Err(e) => Err(de::not_utf8(e.utf8_error())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::encode;

    /// `bytes` decoded out of shared memory, as a queue's get and a pipe's large message are.
    fn decode_from_shared<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
        let (map, _file) = crate::sys::shm::Mapping::create("mproc-test", bytes.len() + 64)
            .expect("a memory file");
        map.copy_in(64, bytes).unwrap();
        decode_shared(map.reader(64, bytes.len()).unwrap())
    }

    #[test]
    fn fixed_width_values_straddling_the_stream_buffer_decode_whole() {
        // One byte first, so every u64 after it straddles the 8 KiB buffer's refills.
        type Odd = (u8, Vec<u64>, Vec<(u16, char, f64)>);
        let v: Odd = (
            9,
            (0..20_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect(),
            (0..5_000u16).map(|i| (i, 'é', f64::from(i) / 3.0)).collect(),
        );
        let b = encode(&v).unwrap();
        assert!(b.len() > 64 * 1024, "takes the streaming path");
        assert_eq!(decode_from_shared::<Odd>(&b).unwrap(), v);
    }

    #[test]
    fn numbers_straddling_the_stream_buffer_at_every_offset_decode_whole() {
        type Odd = (Vec<u8>, Vec<u128>, Vec<f64>, Vec<u8>);
        for skew in 0..17 {
            let v: Odd = (
                vec![7; skew],
                (0..5_000u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)).collect(),
                (0..3_000).map(|i| f64::from(i) / 7.0).collect(),
                (0..70_001u32).map(|i| i as u8).collect(),
            );
            let b = encode(&v).unwrap();
            assert_eq!(decode_from_shared::<Odd>(&b).unwrap(), v, "skew {skew}");
            assert!(decode_from_shared::<Odd>(&b[..b.len() - 1]).is_err());
        }
    }

    #[test]
    fn shared_bytes_decode_as_private_ones_do_small_or_large() {
        type Mixed = (u64, String, serde_bytes::ByteBuf, Vec<u8>, Vec<String>);
        for size in [10, 40_000, 300_000] {
            let v: Mixed = (
                7,
                "é".repeat(size / 7),
                serde_bytes::ByteBuf::from(vec![3u8; size]),
                (0..size / 3).map(|i| i as u8).collect(),
                vec!["x".repeat(size / 100); 3],
            );
            let b = encode(&v).unwrap();
            assert_eq!(decode_from_shared::<Mixed>(&b).unwrap(), v, "{size}");
            // Cut anywhere (a few places, it is slow), or with a byte too many: an error.
            for cut in [0, 1, 8, 9, b.len() / 2, b.len() - 1] {
                assert!(
                    decode_from_shared::<Mixed>(&b[..cut]).is_err(),
                    "{size} cut {cut}"
                );
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(
                decode_from_shared::<Mixed>(&longer).is_err(),
                "{size} trailing"
            );
            // A string that is not UTF-8.
            let mut bad = b.clone();
            bad[16] = 0xff;
            assert!(
                decode_from_shared::<Mixed>(&bad).is_err(),
                "{size} bad UTF-8"
            );
        }
        // A length prefix past the end fails without allocating it.
        let mut huge = (1u64 << 60).to_le_bytes().to_vec();
        huge.extend([0; 70_000]);
        assert!(decode_from_shared::<serde_bytes::ByteBuf>(&huge).is_err());
        assert!(decode_from_shared::<String>(&huge).is_err());
    }
}
