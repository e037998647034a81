//! mproc's own wire format: the serde data format of every message and value.
//!
//! Both ends of a connection are the same build, so the format describes nothing about itself
//! (no field names, no type tags) and can be as plain as the data: bincode 1's fixed-width
//! layout, kept by us once bincode became unmaintained (RUSTSEC-2025-0141). Chosen by
//! measurement over postcard, MessagePack and bitcode (benches/codec.rs, BENCHMARKS.md).
//!
//! | serde type | bytes |
//! | --- | --- |
//! | `bool` | one byte, 0 or 1 (anything else is an error) |
//! | integers, `f32`, `f64` | fixed width, little-endian (floats bit for bit, NaN included) |
//! | `char` | its scalar value as a little-endian `u32` (checked on decode) |
//! | `str`, bytes | length as a little-endian `u64`, then the bytes (UTF-8 checked) |
//! | `Option` | 0 for `None`; 1, then the value, for `Some` |
//! | unit, unit struct | nothing |
//! | newtype struct | its value |
//! | tuple, tuple struct, struct | the fields in order |
//! | sequence, map | the element (entry) count as a `u64`, then the elements (key, value) |
//! | enum variant | its index as a little-endian `u32`, then its data as above |
//!
//! Decoding trusts nothing it reads (the input may come from a damaged or hostile peer): a
//! length is checked against the bytes that remain before anything is taken or reserved, a
//! sequence's reserve is capped by them, nesting is limited to [`MAX_DEPTH`], the element
//! counts of one input together to its length plus [`ZERO_SIZE_ELEMENTS`] (so a corrupt count
//! of zero-sized elements cannot spin for 2^64 rounds), and a value must use every byte it is
//! decoded from. `str` and byte fields may borrow from the input without a copy.
//!
//! Encoding applies the same two limits (depth and element allowance, counted as the decoder
//! counts them), in the pass that sizes a value before it is written: a value a receiver would
//! refuse is refused by its sender, with nothing sent, rather than lost after its frame was
//! taken off a queue or a pipe.

use std::fmt;

/// How deep values may nest (a struct in an `Option` in a `Vec` is three levels) before decoding
/// stops with an error instead of recursing on: serde's visitors recurse on the stack.
pub(crate) const MAX_DEPTH: u32 = 128;

/// How many sequence elements or map entries one input may declare beyond its length in bytes.
/// Every element but a zero-sized one takes at least a byte; these are for `Vec<()>` and the like.
pub(crate) const ZERO_SIZE_ELEMENTS: usize = 1 << 20;

/// Why a value did not encode or decode; a `Serialize` or `Deserialize` impl's own message
/// (serde's `Error::custom`) is kept word for word.
///
/// One thin pointer, so that the `Result<u64, Error>` of every field and the
/// `Result<Option<T>, Error>` of every element stay in registers: a fat `Box<str>` made a
/// `Vec<u64>` decode 1.6 times slower.
#[derive(Debug)]
#[allow(clippy::box_collection)]
pub(crate) struct Error(Box<String>);

impl Error {
    #[cold]
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Error(Box::new(msg.into()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(msg.to_string())
    }
}
