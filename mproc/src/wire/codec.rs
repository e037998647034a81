//! The serde codec for every message and value: bincode 1 with fixed-width integers.
//!
//! Chosen by measurement on mproc's own payloads (benches/codec.rs, figures in BENCHMARKS.md).
//! Decoding is bounded by the input: a length prefix larger than the bytes that remain is an
//! error before anything is allocated, so malformed input cannot exhaust memory.

use bincode::Options;
use serde::Serialize;
use serde::de::DeserializeOwned;

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
}
