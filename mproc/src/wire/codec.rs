//! The serde codec for every message and value: postcard.
//!
//! Chosen by measurement on mproc's own payloads and on the values users send (benches/codec.rs,
//! figures and the reasons in BENCHMARKS.md): as fast as bincode 1 (which it replaced when
//! bincode became unmaintained) on messages, strings, floats and byte strings, smaller on the
//! wire. Both ends are the same build, so the format needs no self-description.
//!
//! Decoding is bounded by the input: a length prefix larger than the bytes that remain is an
//! error before anything is allocated (postcard takes byte and string lengths from the slice,
//! and hands serde no capacity hint larger than the input), so malformed input cannot
//! exhaust memory; a value must use every byte it is decoded from.
//!
//! postcard drops the message of a serde `custom` error (it is made for small devices). When an
//! encode fails that way, the value is walked once more by [`Reason`], which keeps it, so a
//! user still reads "this value refuses to be encoded". A decode error says what postcard
//! found wrong, or that the type's `Deserialize` refused the bytes, without that impl's words
//! (both ends are the same build: only damaged data, or a `Deserialize` that validates, gets
//! there).

use std::fmt;

use postcard::ser_flavors::Flavor;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a value did not encode or decode.
#[derive(Debug)]
pub(crate) struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        match e {
            // postcard's own words for it ("Serde Deserialization Error") say less than this.
            postcard::Error::SerdeDeCustom => Error(
                "the type's Deserialize refused these bytes (an enum variant out of range, \
                 a wrong length, or a check of its own)"
                    .into(),
            ),
            e => Error(e.to_string()),
        }
    }
}

/// The error of a failed encode of `value`, with its own message when postcard dropped it.
#[cold]
fn encode_error<T: Serialize + ?Sized>(value: &T, e: postcard::Error) -> Error {
    match (e, value.serialize(Reason)) {
        (postcard::Error::SerdeSerCustom, Err(reason)) => reason,
        (e, _) => e.into(),
    }
}

/// Encodes `value`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(encoded_len(value)?);
    encode_into(&mut out, value)?;
    Ok(out)
}

/// How many bytes [`encode`] would make of `value`.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, Error> {
    postcard::serialize_with_flavor(value, Count(0)).map_err(|e| encode_error(value, e))
}

/// Encodes `value` at the end of `out` (after a frame header, say), without a buffer of its own.
/// On an error `out` is as it was.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), Error> {
    let before = out.len();
    postcard::serialize_with_flavor(value, Append(out)).map_err(|e| {
        out.truncate(before);
        encode_error(value, e)
    })
}

/// Encodes `value` into exactly `out` (sized with [`encoded_len`]); an error if the value
/// does not fill it exactly (a `Serialize` that changed its mind between the two calls).
pub(crate) fn encode_to_slice<T: Serialize + ?Sized>(
    out: &mut [u8],
    value: &T,
) -> Result<(), Error> {
    let len = out.len();
    let used = postcard::to_slice(value, out).map_err(|e| encode_error(value, e))?;
    if used.len() != len {
        return Err(Error(
            "the value encoded to fewer bytes than it was sized at".into(),
        ));
    }
    Ok(())
}

/// Decodes a `T` that must use all of `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode_borrowed(bytes)
}

/// Decodes a `T` that must use all of `bytes` and may borrow from them (`&[u8]` fields).
pub(crate) fn decode_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Error> {
    match postcard::take_from_bytes(bytes)? {
        (value, []) => Ok(value),
        (_, rest) => Err(Error(format!(
            "{} bytes left over after the value",
            rest.len()
        ))),
    }
}

/// Counts the bytes of an encoding instead of writing them.
struct Count(usize);

impl Flavor for Count {
    type Output = usize;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0 += data.len();
        Ok(())
    }

    fn try_push(&mut self, _: u8) -> postcard::Result<()> {
        self.0 += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

/// Appends an encoding to a `Vec`, a slice at a time (postcard's `Extend` flavor goes byte by
/// byte, and its `alloc` one cannot append to a frame header).
struct Append<'a>(&'a mut Vec<u8>);

impl Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A serializer that writes nothing and keeps the message of the first `custom` error: the
/// second walk over a value whose encode failed, to tell the user why.
struct Reason;

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// The `serialize_*` methods of a primitive, all accepting and writing nothing.
macro_rules! accept {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(fn $method(self, _: $ty) -> Result<(), Error> {
            Ok(())
        })*
    };
}

impl serde::Serializer for Reason {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    accept!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_i128(i128),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_u128(u128),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_unit_struct(&'static str),
    );

    fn serialize_none(self) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        Ok(self)
    }
}

/// The compound halves of [`Reason`]: each element is walked the same way; `end` is a no-op.
macro_rules! walk {
    ($($trait:ident :: $method:ident($($name:ty)?)),* $(,)?) => {
        $(impl serde::ser::$trait for Reason {
            type Ok = ();
            type Error = Error;

            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_: $name,)?
                value: &T,
            ) -> Result<(), Error> {
                value.serialize(Reason)
            }

            fn end(self) -> Result<(), Error> {
                Ok(())
            }
        })*
    };
}

walk!(
    SerializeSeq::serialize_element(),
    SerializeTuple::serialize_element(),
    SerializeTupleStruct::serialize_field(),
    SerializeTupleVariant::serialize_field(),
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str),
);

impl serde::ser::SerializeMap for Reason {
    type Ok = ();
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        key.serialize(Reason)
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(Reason)
    }

    fn end(self) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let v = (7u64, String::from("seven"), vec![1u32, 2, 3]);
        let b = encode(&v).unwrap();
        assert_eq!(encoded_len(&v).unwrap(), b.len());
        assert_eq!(decode::<(u64, String, Vec<u32>)>(&b).unwrap(), v);
        for cut in 0..b.len() {
            assert!(decode::<(u64, String, Vec<u32>)>(&b[..cut]).is_err());
        }
        let mut trailing = encode(&5u32).unwrap();
        trailing.push(0);
        assert!(decode::<u32>(&trailing).is_err());
    }

    /// A length prefix of 2^60 (as a varint) followed by a few bytes.
    fn huge_length() -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, &(1u64 << 60)).unwrap();
        out.extend([0x01; 16]);
        out
    }

    #[test]
    fn a_corrupt_length_fails_before_allocating() {
        let bytes = huge_length();
        assert!(decode::<Vec<u64>>(&bytes).is_err());
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode::<serde_bytes::ByteBuf>(&bytes).is_err());
        assert!(decode_borrowed::<&[u8]>(&bytes).is_err());
        assert!(decode::<Vec<serde_bytes::ByteBuf>>(&bytes).is_err());
        // An over-long varint is an error too, not a wrap-around.
        assert!(decode::<u64>(&[0xff; 11]).is_err());
    }

    #[test]
    fn byte_strings_borrow_and_round_trip() {
        let payload: Vec<u8> = (0..=255).collect();
        let b = encode(&serde_bytes::Bytes::new(&payload)).unwrap();
        // A varint length of 2 bytes, then the bytes themselves.
        assert_eq!(b.len(), payload.len() + 2);
        let back: &[u8] = decode_borrowed::<&serde_bytes::Bytes>(&b).unwrap();
        assert_eq!(back, &payload[..]);
        assert!(
            std::ptr::eq(back.as_ptr(), b[2..].as_ptr()),
            "decoded without a copy"
        );
        assert_eq!(
            decode::<serde_bytes::ByteBuf>(&b).unwrap().into_vec(),
            payload
        );
    }

    #[test]
    fn appends_after_a_header_and_fills_slices_exactly() {
        let v = ("frame", 300u32, Some(-1i64));
        let mut framed = vec![0xaa; 4];
        encode_into(&mut framed, &v).unwrap();
        assert_eq!(&framed[..4], &[0xaa; 4]);
        assert_eq!(framed[4..], encode(&v).unwrap()[..]);

        let mut exact = vec![0; encoded_len(&v).unwrap()];
        encode_to_slice(&mut exact, &v).unwrap();
        assert_eq!(exact, framed[4..]);
        let mut roomy = vec![0; exact.len() + 1];
        assert!(encode_to_slice(&mut roomy, &v).is_err());
        assert!(encode_to_slice(&mut exact[1..], &v).is_err());
    }

    /// Fails to serialize with a message, after writing a little.
    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let mut st = s.serialize_struct("Refuses", 2)?;
            st.serialize_field("fine", &[1u8, 2, 3])?;
            st.serialize_field("bad", &Bad)?;
            st.end()
        }
    }
    struct Bad;
    impl Serialize for Bad {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom(
                "this value refuses to be encoded",
            ))
        }
    }

    #[test]
    fn encode_errors_keep_the_values_message() {
        let value = (1u8, vec![Some(Refuses)]);
        let expect = "this value refuses to be encoded";
        assert_eq!(encode(&value).unwrap_err().to_string(), expect);
        assert_eq!(encoded_len(&value).unwrap_err().to_string(), expect);
        let mut out = vec![9];
        assert_eq!(
            encode_into(&mut out, &value).unwrap_err().to_string(),
            expect
        );
        assert_eq!(out, [9], "a failed encode_into leaves the buffer as it was");
        let mut slice = [0; 64];
        let e = encode_to_slice(&mut slice, &value).unwrap_err();
        assert_eq!(e.to_string(), expect);
        // A codec error of its own is reported as postcard's.
        let e = encode_to_slice(&mut [0; 2], &"too long").unwrap_err();
        assert!(e.to_string().contains("buffer is full"), "{e}");
    }

    #[test]
    fn decode_errors_say_what_was_wrong() {
        let e = decode::<Option<bool>>(&[1, 7]).unwrap_err();
        assert!(e.to_string().contains("bool"), "postcard's own words: {e}");
        let e = decode::<std::num::NonZeroU8>(&[0]).unwrap_err();
        assert!(e.to_string().contains("Deserialize refused"), "{e}");
    }
}
