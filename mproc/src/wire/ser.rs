//! The encoding half of the wire format (layout in [`super::format`]).
//!
//! The sizing pass ([`Count`]) also applies the decoder's limits (nesting depth, element
//! allowance), so a value that a receiver would refuse fails here, before anything is sent,
//! instead of there, after its frame was taken. Every encoding is sized first (to allocate its
//! frame once), so the writing passes skip the checks: they cost the hot path nothing.

use serde::Serialize;
use serde::ser;

use super::format::{Error, MAX_DEPTH, ZERO_SIZE_ELEMENTS};
use crate::sys::cast;

/// Where an encoding goes: a byte count (the sizing pass), the end of a `Vec` (after a frame
/// header), or a slice sized for it.
pub(crate) trait Output {
    /// What this pass keeps to apply the decoder's limits: [`Checked`] in the sizing pass,
    /// nothing (`()`) in the writing ones (the module docs say why), whose serializer is then
    /// the same as without limits.
    type Limits: Limits;

    /// The bytes taken so far; only the sizing pass, which applies the limits, needs it.
    #[inline]
    fn taken(&self) -> usize {
        0
    }

    /// Takes the next bytes of the encoding.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error>;

    /// Takes the bytes of a fixed-width value.
    #[inline]
    fn put_fixed<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), Error> {
        self.put(&bytes)
    }
}

/// Counts the bytes of an encoding instead of writing them.
pub(crate) struct Count(pub(crate) usize);

impl Output for Count {
    type Limits = Checked;

    #[inline]
    fn taken(&self) -> usize {
        self.0
    }

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        // Wrapping, not saturating: a plain add lets a sequence of fixed-width elements be
        // counted in one multiplication. No value in memory reaches 2^64 bytes; if a lying
        // `Serialize` did, the writing pass finds the count wrong (`Fill`) or grows its `Vec`.
        self.0 = self.0.wrapping_add(bytes.len());
        Ok(())
    }
}

impl Output for Vec<u8> {
    type Limits = ();

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.extend_from_slice(bytes);
        Ok(())
    }

    #[inline]
    fn put_fixed<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), Error> {
        // Growing apart from the copy keeps the value in its register on the way in, and
        // extending from an array keeps the length in one while writing: through
        // `extend_from_slice` alone the value went through the stack and the length was read
        // back after the copy (which may alias it), 1.3-1.5 times slower on a `Vec<f64>`.
        if self.capacity() - self.len() < N {
            grow(self, N);
        }
        self.extend(bytes);
        Ok(())
    }
}

#[cold]
#[inline(never)]
fn grow(out: &mut Vec<u8>, more: usize) {
    out.reserve(more);
}

/// Fills a slice from the front; what is left of it is still `.0`.
pub(crate) struct Fill<'a>(pub(crate) &'a mut [u8]);

impl Output for Fill<'_> {
    type Limits = ();

    #[inline]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let Some((head, tail)) = std::mem::take(&mut self.0).split_at_mut_checked(bytes.len())
        else {
            return Err(Error::new(
                "the value encoded to more bytes than it was sized at",
            ));
        };
        head.copy_from_slice(bytes);
        self.0 = tail;
        Ok(())
    }
}

/// Encodes `value` into `out`. On an error `out` may hold part of the encoding.
///
/// Always inlined: the limits' state and final check made it just big enough to stay a call,
/// and the sizing pass of a small value then no longer folds to a constant (a `(String,)`
/// encoded in 21 ns instead of 12).
#[inline(always)]
pub(crate) fn serialize<O, T>(out: &mut O, value: &T) -> Result<(), Error>
where
    O: Output,
    T: Serialize + ?Sized,
{
    let mut ser = Serializer {
        out,
        limits: O::Limits::default(),
    };
    value.serialize(&mut ser)?;
    ser.limits.finish(ser.out.taken())
}

/// The serde serializer of the wire format, over any [`Output`].
pub(crate) struct Serializer<'a, O: Output> {
    out: &'a mut O,
    limits: O::Limits,
}

/// The decoder's limits, applied as a value is encoded (see [`Output::Limits`]).
pub(crate) trait Limits: Default {
    /// Enters a level where the decoder does (an `Option`'s value, a newtype struct's, an enum
    /// variant's data, a compound's elements): an error past [`MAX_DEPTH`], as it decides.
    fn enter(&mut self) -> Result<(), Error>;
    /// Leaves the level last entered.
    fn leave(&mut self);
    /// Charges a sequence's element count or a map's entry count to the allowance.
    fn count(&mut self, n: usize);
    /// After the whole value, of `len` bytes: an error if it declared more elements than a
    /// decoder of those bytes allows.
    fn finish(&self, len: usize) -> Result<(), Error>;
}

/// No limits: the writing passes, after the sizing pass applied them.
impl Limits for () {
    #[inline(always)]
    fn enter(&mut self) -> Result<(), Error> {
        Ok(())
    }
    #[inline(always)]
    fn leave(&mut self) {}
    #[inline(always)]
    fn count(&mut self, _: usize) {}
    #[inline(always)]
    fn finish(&self, _: usize) -> Result<(), Error> {
        Ok(())
    }
}

/// The decoder's limits, counted as it counts them (`de.rs`).
#[derive(Default)]
pub(crate) struct Checked {
    /// Levels entered.
    depth: u32,
    /// Sequence elements and map entries declared so far.
    elements: usize,
}

impl Limits for Checked {
    #[inline]
    fn enter(&mut self) -> Result<(), Error> {
        if self.depth >= MAX_DEPTH {
            return Err(too_deep());
        }
        self.depth += 1;
        Ok(())
    }

    #[inline]
    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    #[inline]
    fn count(&mut self, n: usize) {
        self.elements = self.elements.saturating_add(n);
    }

    /// The decoder allows an input's length plus [`ZERO_SIZE_ELEMENTS`] elements in all.
    #[inline]
    fn finish(&self, len: usize) -> Result<(), Error> {
        if self.elements > len.saturating_add(ZERO_SIZE_ELEMENTS) {
            return Err(too_many_elements(self.elements, len));
        }
        Ok(())
    }
}

#[cold]
fn too_deep() -> Error {
    Error::new(format!(
        "values nest deeper than {MAX_DEPTH} levels, the most the wire format allows \
         (a receiver would refuse the value)"
    ))
}

#[cold]
fn too_many_elements(elements: usize, len: usize) -> Error {
    Error::new(format!(
        "the value declares {elements} sequence elements and map entries in {len} bytes, more \
         than the wire format allows (its length in bytes plus {ZERO_SIZE_ELEMENTS}, for \
         zero-sized elements): a receiver would refuse it"
    ))
}

impl<O: Output> Serializer<'_, O> {
    #[inline]
    fn enter(&mut self) -> Result<(), Error> {
        self.limits.enter()
    }

    #[inline]
    fn leave(&mut self) {
        self.limits.leave();
    }

    /// Serializes `value` one level deeper.
    #[inline]
    fn nested<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.enter()?;
        let r = value.serialize(&mut *self);
        self.leave();
        r
    }

    /// A sequence's element count or a map's entry count, charged to the allowance.
    #[inline]
    fn count(&mut self, len: Option<usize>) -> Result<(), Error> {
        let len = len.ok_or_else(unknown_length)?;
        self.limits.count(len);
        self.len(len)
    }

    #[inline]
    fn len(&mut self, len: usize) -> Result<(), Error> {
        let len = u64::try_from(len).map_err(|_| Error::new("a length over 2^64"))?;
        self.out.put_fixed(len.to_le_bytes())
    }

    #[inline]
    fn variant(&mut self, index: u32) -> Result<(), Error> {
        self.out.put_fixed(index.to_le_bytes())
    }
}

/// `serialize_*` of the fixed-width primitives: their little-endian bytes.
macro_rules! fixed {
    ($($method:ident($ty:ty)),* $(,)?) => {
        $(#[inline]
        fn $method(self, v: $ty) -> Result<(), Error> {
            self.out.put_fixed(v.to_le_bytes())
        })*
    };
}

impl<'a, O: Output> ser::Serializer for &mut Serializer<'a, O> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fixed!(
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
    );

    #[inline]
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.put_fixed([u8::from(v)])
    }

    #[inline]
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.out.put_fixed(u32::from(v).to_le_bytes())
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.serialize_bytes(v.as_bytes())
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.len(v.len())?;
        self.out.put(v)
    }

    #[inline]
    fn serialize_none(self) -> Result<(), Error> {
        self.out.put_fixed([0])
    }

    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.out.put_fixed([1])?;
        self.nested(value)
    }

    #[inline]
    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), Error> {
        // The decoder enters the enum's level even for a variant without data.
        self.enter()?;
        self.leave();
        self.variant(index)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.nested(value)
    }

    #[inline]
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.variant(index)?;
        self.nested(value)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Error> {
        self.count(len)?;
        self.enter()?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self, Error> {
        self.enter()?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        self.enter()?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.variant(index)?;
        self.enter()?;
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Error> {
        self.count(len)?;
        self.enter()?;
        Ok(self)
    }

    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
        self.enter()?;
        Ok(self)
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self, Error> {
        self.variant(index)?;
        self.enter()?;
        Ok(self)
    }

    /// A slice of numbers (`Vec<u8>`, `Vec<f64>`, `&[i32]`: serde hands all of them over as
    /// a `slice::Iter`) is its own encoding on a little-endian machine, so it is written with
    /// one copy; anything else element by element, as serde's default does. The bytes are the
    /// same either way.
    #[inline]
    fn collect_seq<I>(self, iter: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let iter = iter.into_iter();
        if let Some((len, bytes)) = numbers(&iter) {
            self.count(Some(len))?;
            self.enter()?;
            self.out.put(bytes)?;
            self.leave();
            return Ok(());
        }
        let len = match iter.size_hint() {
            (lo, Some(hi)) if lo == hi => Some(lo),
            _ => None,
        };
        let mut seq = ser::Serializer::serialize_seq(self, len)?;
        for item in iter {
            ser::SerializeSeq::serialize_element(&mut seq, &item)?;
        }
        ser::SerializeSeq::end(seq)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The element count and the bytes of the numbers `it` walks, when it walks a slice of them and
/// this machine's byte order is the wire format's.
#[inline]
fn numbers<It>(it: &It) -> Option<(usize, &[u8])> {
    if cfg!(target_endian = "big") {
        return None;
    }
    macro_rules! slice_of {
        ($($t:ty),*) => {$(
            if let Some(s) = cast::slice_iter::<It, $t>(it) {
                return Some((s.len(), bytemuck::cast_slice(s)));
            }
        )*};
    }
    cast::each_number!(slice_of);
    None
}

/// The count comes first on the wire, and the sizing pass must see the same bytes as the
/// writing one, so a sequence whose `Serialize` cannot say its length is refused (as bincode
/// and postcard refuse it).
#[cold]
fn unknown_length() -> Error {
    Error::new(
        "a sequence or map of unknown length cannot be encoded: its Serialize must give the length",
    )
}

/// The elements of every compound, one after another; `end` writes nothing and leaves the
/// compound's level.
macro_rules! compound {
    ($($trait:ident :: $method:ident($($name:ty)?)),* $(,)?) => {
        $(impl<O: Output> ser::$trait for &mut Serializer<'_, O> {
            type Ok = ();
            type Error = Error;

            #[inline]
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_: $name,)?
                value: &T,
            ) -> Result<(), Error> {
                value.serialize(&mut **self)
            }

            #[inline]
            fn end(self) -> Result<(), Error> {
                self.leave();
                Ok(())
            }
        })*
    };
}

compound!(
    SerializeSeq::serialize_element(),
    SerializeTuple::serialize_element(),
    SerializeTupleStruct::serialize_field(),
    SerializeTupleVariant::serialize_field(),
    SerializeStruct::serialize_field(&'static str),
    SerializeStructVariant::serialize_field(&'static str),
);

impl<O: Output> ser::SerializeMap for &mut Serializer<'_, O> {
    type Ok = ();
    type Error = Error;

    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        key.serialize(&mut **self)
    }

    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        value.serialize(&mut **self)
    }

    #[inline]
    fn end(self) -> Result<(), Error> {
        self.leave();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};

    use super::super::codec::{decode, encode, encoded_len};
    use super::*;

    /// The bytes of `v` from the writing pass alone, which applies no limits: what a sender
    /// would have sent before the sizing pass applied them.
    fn unchecked<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        serialize(&mut out, v).unwrap();
        out
    }

    /// Whether the encoder and the decoder agree on `v`: both accept it or both refuse it.
    /// Returns whether it was accepted.
    fn agree<T>(v: &T) -> bool
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let decoded = decode::<T>(&unchecked(v));
        match (encoded_len(v), &decoded) {
            (Ok(_), Ok(back)) => {
                assert_eq!(back, v);
                assert!(encode(v).is_ok());
                true
            }
            (Err(_), Err(_)) => {
                assert!(encode(v).is_err());
                false
            }
            (len, _) => panic!("encoder says {len:?}, decoder says {decoded:?}, of {v:?}"),
        }
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum List {
        Cons(u8, Box<List>),
        Nil,
    }

    fn list(n: usize) -> List {
        (0..n).fold(List::Nil, |tail, i| List::Cons(i as u8, Box::new(tail)))
    }

    #[test]
    fn nesting_is_limited_exactly_where_the_decoder_limits_it() {
        // Each node is one level (its enum); the `Nil` at the end is one more.
        assert!(agree(&list(MAX_DEPTH as usize - 1)));
        assert!(!agree(&list(MAX_DEPTH as usize)));
        let e = encoded_len(&list(200)).unwrap_err().to_string();
        assert!(e.contains("deeper than 128 levels"), "{e}");
        // The writing passes do not check (the sizing pass before them did).
        assert!(decode::<List>(&unchecked(&list(200))).is_err());
    }

    /// Every kind of level the decoder counts.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Deep {
        End,
        Opt(Option<Box<Deep>>),
        Seq(Vec<Deep>),
        Map(BTreeMap<u8, Deep>),
        Tuple(u8, Box<Deep>),
        Struct { d: Box<Deep> },
        Wrapped(Wrap),
        Pair((Box<Deep>, u8)),
        Unit(Option<()>, Box<Deep>),
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Wrap(Inner);

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Inner {
        d: Box<Deep>,
    }

    fn node(kind: usize, d: Deep) -> Deep {
        match kind % 8 {
            0 => Deep::Opt(Some(Box::new(d))),
            1 => Deep::Seq(vec![d]),
            2 => Deep::Map([(1, d)].into()),
            3 => Deep::Tuple(3, Box::new(d)),
            4 => Deep::Struct { d: Box::new(d) },
            5 => Deep::Wrapped(Wrap(Inner { d: Box::new(d) })),
            6 => Deep::Pair((Box::new(d), 6)),
            _ => Deep::Unit(Some(()), Box::new(d)),
        }
    }

    #[test]
    fn every_kind_of_level_counts_as_the_decoder_counts_it() {
        for kind in 0..8 {
            let (mut accepted, mut refused) = (0, 0);
            for n in 20..=130 {
                let v = (0..n).fold(Deep::End, |d, i| node(kind + i * (kind + 1), d));
                if agree(&v) {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
            // Some straddle the limit, whatever the mix of levels.
            assert!(accepted > 0 && refused > 0, "kind {kind}");
        }
        // A value with no levels of its own nests nowhere.
        assert!(agree(&(1u8, "text".to_owned(), ())));
        // A `None` or an empty compound at the deepest level is still a level.
        for n in 124..130 {
            agree(&(0..n).fold(Deep::Opt(None), |d, i| node(i, d)));
            agree(&(0..n).fold(Deep::Seq(vec![]), |d, i| node(i, d)));
        }
    }

    #[test]
    fn the_element_allowance_is_the_decoders() {
        // `Vec<()>`: 8 bytes, so 8 more elements than ZERO_SIZE_ELEMENTS.
        assert!(agree(&vec![(); ZERO_SIZE_ELEMENTS + 8]));
        assert!(!agree(&vec![(); ZERO_SIZE_ELEMENTS + 9]));
        let e = encoded_len(&vec![(); ZERO_SIZE_ELEMENTS + 9]).unwrap_err();
        assert!(e.to_string().contains("1048576"), "{e}");
        // Counts add up across a value: 1 + k elements in 16 bytes.
        assert!(agree(&vec![vec![(); ZERO_SIZE_ELEMENTS + 15]]));
        assert!(!agree(&vec![vec![(); ZERO_SIZE_ELEMENTS + 16]]));
        assert!(!agree(&vec![vec![(); ZERO_SIZE_ELEMENTS]; 2]));
        // Map entries count too.
        let map: BTreeMap<(), Vec<()>> = [((), vec![(); ZERO_SIZE_ELEMENTS + 15])].into();
        assert!(agree(&map));
        let map: BTreeMap<(), Vec<()>> = [((), vec![(); ZERO_SIZE_ELEMENTS + 16])].into();
        assert!(!agree(&map));
        // Elements of a byte or more always fit, however many.
        assert!(agree(&vec![7u8; 3 * ZERO_SIZE_ELEMENTS]));
    }
}
