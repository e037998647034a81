//! The serde codec for every message and value: bincode 1 with fixed-width integers.
//!
//! Chosen by measurement on mproc's own payloads (benches/codec.rs, figures in BENCHMARKS.md).
//! Decoding is bounded by the input: a length prefix larger than the bytes that remain is an
//! error before anything is allocated, so malformed input cannot exhaust memory.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sys::layout::SharedReader;

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Encodes `value`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    options().serialize(value)
}

/// How many bytes [`encode`] would make of `value`.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, bincode::Error> {
    Ok(options().serialized_size(value)? as usize)
}

/// Encodes `value` at the end of `out` (after a frame header, say), without a buffer of its own.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), bincode::Error> {
    options().serialize_into(out, value)
}

/// Encodes `value` into exactly `out` (sized with [`encoded_len`]); an error if the value
/// does not fill it exactly (a `Serialize` that changed its mind between the two calls).
pub(crate) fn encode_to_slice<T: Serialize + ?Sized>(
    out: &mut [u8],
    value: &T,
) -> Result<(), bincode::Error> {
    let mut rest = &mut *out;
    options().serialize_into(&mut rest, value)?;
    if !rest.is_empty() {
        return Err(Box::new(bincode::ErrorKind::Custom(
            "the value encoded to fewer bytes than it was sized at".into(),
        )));
    }
    Ok(())
}

/// Decodes a `T` that must use all of `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    options().with_limit(bytes.len() as u64).deserialize(bytes)
}

/// Decodes a `T` that must use all of `bytes` and may borrow from them (`&[u8]` fields).
pub(crate) fn decode_borrowed<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
) -> Result<T, bincode::Error> {
    options().with_limit(bytes.len() as u64).deserialize(bytes)
}

/// Decodes a `T` that must use all of `from`: bytes in shared memory that a peer may write
/// meanwhile. Each byte is copied out once and decoded from the private copy, never read
/// twice from shared memory. A small message is copied whole into a reused buffer and decoded
/// as [`decode`] does; a large one is decoded as it is copied, so that a byte string or a
/// string in it (a 10 MiB `ByteBuf`) is copied once, straight into the value it becomes.
pub(crate) fn decode_shared<T: DeserializeOwned>(
    mut from: SharedReader<'_>,
) -> Result<T, bincode::Error> {
    /// Up to this size, a copy then a decode (a second copy of a small message costs less
    /// than reading it through the streaming path).
    const SMALL: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
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
            from.append_to(len, buf)?;
            decode(buf)
        });
    }
    let mut state = Streaming {
        from,
        buf: vec![0; 8 * 1024],
        pos: 0,
        filled: 0,
    };
    let value = options()
        .with_limit(len as u64)
        .deserialize_from_custom(StreamingRead(&mut state))?;
    if state.remaining() != 0 {
        return Err(Box::new(bincode::ErrorKind::Custom(
            "Slice had bytes remaining after deserialization".into(),
        )));
    }
    Ok(value)
}

/// A large message being decoded out of shared memory: small reads (integers, lengths) are
/// served from a private buffer filled a few KiB at a time; a byte string is copied straight
/// from shared memory into its own `Vec`.
struct Streaming<'m> {
    from: SharedReader<'m>,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl Streaming<'_> {
    fn remaining(&self) -> usize {
        self.filled - self.pos + self.from.remaining()
    }

    /// The next `len` bytes, in a `Vec` of their own (copied once from shared memory).
    fn take(&mut self, len: usize) -> Result<Vec<u8>, bincode::Error> {
        if len > self.remaining() {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        let buffered = (self.filled - self.pos).min(len);
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&self.buf[self.pos..self.pos + buffered]);
        self.pos += buffered;
        self.from.append_to(len - buffered, &mut out)?;
        Ok(out)
    }
}

/// [`Streaming`] as bincode reads it (by value, so the state stays with the caller).
struct StreamingRead<'s, 'm>(&'s mut Streaming<'m>);

impl std::io::Read for StreamingRead<'_, '_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let s = &mut *self.0;
        if s.pos == s.filled {
            if out.len() >= s.buf.len() {
                return std::io::Read::read(&mut s.from, out);
            }
            s.filled = std::io::Read::read(&mut s.from, &mut s.buf)?;
            s.pos = 0;
        }
        let n = out.len().min(s.filled - s.pos);
        out[..n].copy_from_slice(&s.buf[s.pos..s.pos + n]);
        s.pos += n;
        Ok(n)
    }
}

impl<'de> bincode::BincodeRead<'de> for StreamingRead<'_, '_> {
    fn forward_read_str<V: serde::de::Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> Result<V::Value, bincode::Error> {
        let bytes = self.0.take(length)?;
        match std::str::from_utf8(&bytes) {
            Ok(s) => visitor.visit_str(s),
            Err(e) => Err(Box::new(bincode::ErrorKind::InvalidUtf8Encoding(e))),
        }
    }

    fn get_byte_buffer(&mut self, length: usize) -> Result<Vec<u8>, bincode::Error> {
        self.0.take(length)
    }

    fn forward_read_bytes<V: serde::de::Visitor<'de>>(
        &mut self,
        length: usize,
        visitor: V,
    ) -> Result<V::Value, bincode::Error> {
        visitor.visit_bytes(&self.0.take(length)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let v = (7u64, String::from("seven"), vec![1u32, 2, 3]);
        let b = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String, Vec<u32>)>(&b).unwrap(), v);
        for cut in 0..b.len() {
            assert!(decode::<(u64, String, Vec<u32>)>(&b[..cut]).is_err());
        }
        // A length prefix of 2^60 elements must fail, not allocate.
        let mut huge = (1u64 << 60).to_le_bytes().to_vec();
        huge.extend([0; 16]);
        assert!(decode::<Vec<u64>>(&huge).is_err());
        let mut trailing = encode(&5u32).unwrap();
        trailing.push(0);
        assert!(decode::<u32>(&trailing).is_err());
    }

    /// `bytes` decoded out of shared memory, as a queue's get and a pipe's large message are.
    fn decode_from_shared<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
        let (map, _file) = crate::sys::shm::Mapping::create("mproc-test", bytes.len() + 64)
            .expect("a memory file");
        map.copy_in(64, bytes).unwrap();
        decode_shared(map.reader(64, bytes.len()).unwrap())
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
