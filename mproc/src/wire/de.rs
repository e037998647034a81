//! The decoding half of the wire format (layout and the checks on hostile input in
//! [`super::format`]).

use std::any::TypeId;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::format::{Error, MAX_DEPTH, ZERO_SIZE_ELEMENTS};
use crate::sys::cast::{self, Number};

/// Where a [`Deserializer`] reads from: a slice (whose strings and byte strings may be
/// borrowed), or a stream that hands each string out in a `Vec` of its own (bytes in shared
/// memory, copied once, see `wire::shared::decode_shared`).
pub(crate) trait Input<'de> {
    /// Bytes not read yet.
    fn remaining(&self) -> usize;
    /// The next `N` bytes.
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error>;
    /// The next byte.
    fn byte(&mut self) -> Result<u8, Error>;
    /// Visits the next `len` bytes as a byte string.
    fn bytes<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error>;
    /// Visits the next `len` bytes as a string (UTF-8 checked).
    fn str<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error>;
    /// The next `n` numbers, copied whole (the machine is little-endian, as the format is).
    fn numbers<T: Number>(&mut self, n: usize) -> Result<Vec<T>, Error>;
}

/// The bytes that `n` numbers of type `T` take, when no more than `remaining`.
#[inline]
pub(crate) fn numbers_len<T: Number>(n: usize, remaining: usize) -> Result<usize, Error> {
    match n.checked_mul(size_of::<T>()) {
        Some(len) if len <= remaining => Ok(len),
        _ => Err(truncated()),
    }
}

impl<'de> Input<'de> for &'de [u8] {
    #[inline]
    fn remaining(&self) -> usize {
        self.len()
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (head, rest) = self.split_first_chunk::<N>().ok_or_else(truncated)?;
        *self = rest;
        Ok(*head)
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Error> {
        let (&head, rest) = self.split_first().ok_or_else(truncated)?;
        *self = rest;
        Ok(head)
    }

    #[inline]
    fn bytes<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let (head, rest) = self.split_at_checked(len).ok_or_else(truncated)?;
        *self = rest;
        visitor.visit_borrowed_bytes(head)
    }

    #[inline]
    fn str<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        let (head, rest) = self.split_at_checked(len).ok_or_else(truncated)?;
        *self = rest;
        visitor.visit_borrowed_str(std::str::from_utf8(head).map_err(not_utf8)?)
    }

    #[inline]
    fn numbers<T: Number>(&mut self, n: usize) -> Result<Vec<T>, Error> {
        let (head, rest) = self.split_at(numbers_len::<T>(n, self.len())?);
        *self = rest;
        let mut out = Vec::new();
        cast::extend_from_le(&mut out, head);
        Ok(out)
    }
}

/// Decodes one value from the front of its input; [`Deserializer::finish`] then checks that the
/// value used every byte.
pub(crate) struct Deserializer<'de, I: Input<'de> = &'de [u8]> {
    input: I,
    depth: u32,
    /// Sequence elements and map entries this input may still declare.
    elements: usize,
    _input: std::marker::PhantomData<&'de ()>,
}

impl<'de, I: Input<'de>> Deserializer<'de, I> {
    pub(crate) fn new(input: I) -> Self {
        Deserializer {
            elements: input.remaining().saturating_add(ZERO_SIZE_ELEMENTS),
            input,
            depth: 0,
            _input: std::marker::PhantomData,
        }
    }

    /// An error unless the value used every byte of the input.
    pub(crate) fn finish(self) -> Result<(), Error> {
        match self.input.remaining() {
            0 => Ok(()),
            n => Err(Error::new(format!("{n} bytes left over after the value"))),
        }
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        self.input.array()
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, Error> {
        self.input.byte()
    }

    /// A byte or string length (checked against the input before anything is taken).
    #[inline]
    fn len(&mut self) -> Result<usize, Error> {
        let len = u64::from_le_bytes(self.array()?);
        match usize::try_from(len) {
            Ok(n) if n <= self.input.remaining() => Ok(n),
            _ => Err(too_many(len)),
        }
    }

    /// A sequence's element count or a map's entry count, charged to this input's allowance.
    #[inline]
    fn count(&mut self) -> Result<usize, Error> {
        let count = u64::from_le_bytes(self.array()?);
        match usize::try_from(count) {
            Ok(n) if n <= self.elements => {
                self.elements -= n;
                Ok(n)
            }
            _ => Err(too_many(count)),
        }
    }

    /// Runs `f` one level deeper, or fails when that is deeper than [`MAX_DEPTH`].
    #[inline]
    fn nested<R>(&mut self, f: impl FnOnce(&mut Self) -> Result<R, Error>) -> Result<R, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(too_deep());
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    /// Visits `len` elements (or entries) that follow, one level deeper.
    #[inline]
    fn elements<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.nested(|de| visitor.visit_seq(Elements { de, left: len }))
    }
}

#[cold]
pub(crate) fn not_utf8(e: std::str::Utf8Error) -> Error {
    Error::new(format!("a string is not UTF-8: {e}"))
}

#[cold]
pub(crate) fn truncated() -> Error {
    Error::new("the input ends inside a value (truncated or corrupt)")
}

#[cold]
fn too_many(len: u64) -> Error {
    Error::new(format!("a length of {len} is more than the input holds"))
}

#[cold]
fn too_deep() -> Error {
    Error::new(format!("values nest deeper than {MAX_DEPTH} levels"))
}

#[cold]
fn not_self_describing() -> Error {
    Error::new(
        "mproc's wire format does not describe itself: a type that decodes by what it finds \
         (serde's deserialize_any: untagged or internally tagged enums, flatten) cannot use it",
    )
}

/// `deserialize_*` of the fixed-width primitives: their little-endian bytes.
macro_rules! fixed {
    ($($method:ident $visit:ident $ty:ty),* $(,)?) => {
        $(#[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit(<$ty>::from_le_bytes(self.array()?))
        })*
    };
}

impl<'de, I: Input<'de>> de::Deserializer<'de> for &mut Deserializer<'de, I> {
    type Error = Error;

    fixed!(
        deserialize_i8 visit_i8 i8,
        deserialize_i16 visit_i16 i16,
        deserialize_i32 visit_i32 i32,
        deserialize_i64 visit_i64 i64,
        deserialize_i128 visit_i128 i128,
        deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32,
        deserialize_u64 visit_u64 u64,
        deserialize_u128 visit_u128 u128,
        deserialize_f32 visit_f32 f32,
        deserialize_f64 visit_f64 f64,
    );

    #[inline]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u8(self.byte()?)
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(not_self_describing())
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(not_self_describing())
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(not_self_describing())
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            b => Err(Error::new(format!("a bool is 0 or 1, not {b}"))),
        }
    }

    #[inline]
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let c = u32::from_le_bytes(self.array()?);
        match char::from_u32(c) {
            Some(c) => visitor.visit_char(c),
            None => Err(Error::new(format!("{c:#x} is not a char"))),
        }
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        self.input.str(len, visitor)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        self.input.str(len, visitor)
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        self.input.bytes(len, visitor)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.len()?;
        self.input.bytes(len, visitor)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => self.nested(|de| visitor.visit_some(de)),
            t => Err(Error::new(format!("an Option's tag is 0 or 1, not {t}"))),
        }
    }

    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.nested(|de| visitor.visit_newtype_struct(de))
    }

    /// A `Vec` of numbers (serde's own visitor for `Vec<u8>`, `Vec<f64>`, ...; also behind
    /// `Box<[T]>`) is copied whole; anything else is visited element by element.
    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let len = self.count()?;
        if cfg!(target_endian = "little") {
            macro_rules! vec_of {
                ($($t:ty),*) => {$(
                    if is_vec_visitor::<V, $t>() {
                        let numbers = self.nested(|de| de.input.numbers::<$t>(len))?;
                        // Never `Err`: `is_vec_visitor` checked that `V::Value` is `Vec<$t>`.
                        return cast::vec_as(numbers).map_err(|_| Error::new("a Vec of numbers"));
                    }
                )*};
            }
            cast::each_number!(vec_of);
        }
        self.elements(len, visitor)
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.elements(len, visitor)
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.elements(len, visitor)
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let left = self.count()?;
        self.nested(|de| visitor.visit_map(Elements { de, left }))
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.elements(fields.len(), visitor)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.nested(|de| visitor.visit_enum(de))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Whether `V` is the visitor serde's `Vec<T>: Deserialize` hands a deserializer, so that copying
/// the numbers whole makes exactly the `Vec` it would have built. Another visitor whose value is a
/// `Vec<T>` (a `deserialize_with` that reads other elements, say) must still see every element.
#[inline]
fn is_vec_visitor<'de, V: Visitor<'de>, T: Number + Deserialize<'de>>() -> bool {
    // Cheap and false for nearly every sequence: a value that is not a `Vec<T>` at all.
    if typeid::of::<V::Value>() != TypeId::of::<Vec<T>>() {
        return false;
    }
    let mut probe = Probe(None);
    let _ = Vec::<T>::deserialize(&mut probe);
    probe.0 == Some(typeid::of::<V>())
}

/// A deserializer that only notes the type of the visitor `deserialize_seq` is given.
struct Probe(Option<TypeId>);

/// [`Probe`]'s refusal of everything (it has no data).
#[derive(Debug)]
struct Probed;

impl std::fmt::Display for Probed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probed")
    }
}

impl std::error::Error for Probed {}

impl de::Error for Probed {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Probed
    }
}

impl<'de> de::Deserializer<'de> for &mut Probe {
    type Error = Probed;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        Err(Probed)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probed> {
        self.0 = Some(typeid::of::<V>());
        Err(Probed)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

/// The elements of a sequence, tuple or struct, or the entries of a map.
struct Elements<'a, 'de, I: Input<'de>> {
    de: &'a mut Deserializer<'de, I>,
    left: usize,
}

impl<'de, I: Input<'de>> de::SeqAccess<'de> for Elements<'_, 'de, I> {
    type Error = Error;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    /// Never more than the bytes left: serde reserves by this hint, and the count is untrusted.
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.remaining()))
    }
}

impl<'de, I: Input<'de>> de::MapAccess<'de> for Elements<'_, 'de, I> {
    type Error = Error;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(&mut *self.de)
    }

    #[inline]
    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.remaining()))
    }
}

impl<'de, I: Input<'de>> de::EnumAccess<'de> for &mut Deserializer<'de, I> {
    type Error = Error;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index = u32::from_le_bytes(self.array()?);
        let variant = seed.deserialize(index.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de, I: Input<'de>> de::VariantAccess<'de> for &mut Deserializer<'de, I> {
    type Error = Error;

    #[inline]
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements {
            de: self,
            left: len,
        })
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_seq(Elements {
            de: self,
            left: fields.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::*;

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
        let mut de = Deserializer::new(bytes);
        let v = T::deserialize(&mut de)?;
        de.finish()?;
        Ok(v)
    }

    /// A slice input that counts the reads of single fixed-width values.
    struct Counting<'de> {
        input: &'de [u8],
        small_reads: usize,
    }

    impl<'de> Input<'de> for Counting<'de> {
        fn remaining(&self) -> usize {
            self.input.len()
        }
        fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
            self.small_reads += 1;
            self.input.array()
        }
        fn byte(&mut self) -> Result<u8, Error> {
            self.small_reads += 1;
            self.input.byte()
        }
        fn bytes<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
            self.input.bytes(len, visitor)
        }
        fn str<V: Visitor<'de>>(&mut self, len: usize, visitor: V) -> Result<V::Value, Error> {
            self.input.str(len, visitor)
        }
        fn numbers<T: Number>(&mut self, n: usize) -> Result<Vec<T>, Error> {
            self.input.numbers(n)
        }
    }

    /// How many single values decoding a `T` from `bytes` read.
    fn small_reads<T: DeserializeOwned + PartialEq + std::fmt::Debug>(
        bytes: &[u8],
        want: &T,
    ) -> usize {
        let mut de = Deserializer::new(Counting {
            input: bytes,
            small_reads: 0,
        });
        assert_eq!(&T::deserialize(&mut de).unwrap(), want);
        de.input.small_reads
    }

    /// serde's own `Vec<T>` visitor is recognised: the count is the only single value read.
    #[test]
    fn a_vec_of_numbers_takes_the_whole_copy_path() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(small_reads(&encode(&bytes), &bytes), 1);
        let floats: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(small_reads(&encode(&floats), &floats), 1);
        let boxed: Box<[i16]> = (0..100).collect();
        assert_eq!(small_reads(&encode(&boxed), &boxed), 1);
        // Not a Vec of numbers: element by element.
        let flags = vec![true; 100];
        assert_eq!(small_reads(&encode(&flags), &flags), 101);
    }

    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        super::super::ser::serialize(&mut out, v).unwrap();
        out
    }

    fn err<T: DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) -> String {
        decode::<T>(bytes).unwrap_err().to_string()
    }

    #[test]
    fn bad_tags_and_scalars_are_errors() {
        assert_eq!(err::<bool>(&[2]), "a bool is 0 or 1, not 2");
        assert_eq!(
            err::<Option<u8>>(&[2, 0]),
            "an Option's tag is 0 or 1, not 2"
        );
        assert!(err::<char>(&0xd800u32.to_le_bytes()).contains("not a char"));
        assert!(err::<char>(&0x11_0000u32.to_le_bytes()).contains("not a char"));
        let mut bad_utf8 = encode(&"ab");
        bad_utf8[9] = 0xff;
        assert!(err::<String>(&bad_utf8).contains("not UTF-8"));
        assert!(<&str>::deserialize(&mut Deserializer::new(&bad_utf8[..])).is_err());
        #[derive(Deserialize, Debug)]
        enum Two {
            A,
            B(u8),
        }
        assert!(err::<Two>(&2u32.to_le_bytes()).contains("variant index"));
        assert!(err::<Two>(&u32::MAX.to_le_bytes()).contains("variant index"));
        assert!(matches!(decode::<Two>(&[1, 0, 0, 0, 9]), Ok(Two::B(9))));
        assert!(matches!(decode::<Two>(&[0, 0, 0, 0]), Ok(Two::A)));
    }

    #[test]
    fn huge_lengths_fail_before_reserving() {
        for len in [9u64, 1 << 32, 1 << 60, u64::MAX] {
            let mut b = len.to_le_bytes().to_vec();
            b.extend([1; 8]);
            assert!(decode::<String>(&b).is_err(), "{len}");
            assert!(decode::<serde_bytes::ByteBuf>(&b).is_err(), "{len}");
            assert!(decode::<Vec<u64>>(&b).is_err(), "{len}");
            assert!(decode::<Vec<u8>>(&b).is_err(), "{len}");
            assert!(
                decode::<std::collections::HashMap<u8, u8>>(&b).is_err(),
                "{len}"
            );
        }
        // A count the input could hold, of elements it cannot: serde reserves by our hint,
        // which never exceeds the bytes left, and the elements then run out.
        let mut b = 1_000u64.to_le_bytes().to_vec();
        b.extend([0; 16]);
        let mut de = Deserializer::new(&b[..]);
        de.array::<8>().unwrap();
        let seq = Elements {
            left: 1000,
            de: &mut de,
        };
        assert_eq!(de::SeqAccess::size_hint(&seq), Some(16));
        assert!(decode::<Vec<u64>>(&b).is_err());
    }

    #[test]
    fn zero_sized_elements_are_bounded() {
        // The allowance is the input's length plus ZERO_SIZE_ELEMENTS.
        let fine = (ZERO_SIZE_ELEMENTS as u64 + 8).to_le_bytes();
        assert_eq!(
            decode::<Vec<()>>(&fine).unwrap().len(),
            ZERO_SIZE_ELEMENTS + 8
        );
        let one_more = (ZERO_SIZE_ELEMENTS as u64 + 9).to_le_bytes();
        assert!(decode::<Vec<()>>(&one_more).is_err());
        let spin = u64::MAX.to_le_bytes();
        assert!(err::<Vec<()>>(&spin).contains("more than the input holds"));
        // Nested counts draw on one allowance, so they cannot multiply.
        let mut nested = 2u64.to_le_bytes().to_vec();
        nested.extend((ZERO_SIZE_ELEMENTS as u64).to_le_bytes());
        nested.extend((ZERO_SIZE_ELEMENTS as u64).to_le_bytes());
        assert!(decode::<Vec<Vec<()>>>(&nested).is_err());
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Nest {
        Leaf,
        In(Box<Nest>),
    }

    fn nest(depth: usize) -> Nest {
        (0..depth).fold(Nest::Leaf, |n, _| Nest::In(Box::new(n)))
    }

    #[test]
    fn nesting_is_limited() {
        let deepest = nest(MAX_DEPTH as usize - 1);
        assert_eq!(decode::<Nest>(&encode(&deepest)).unwrap(), deepest);
        let too_deep = encode(&nest(MAX_DEPTH as usize));
        assert_eq!(err::<Nest>(&too_deep), "values nest deeper than 128 levels");
        // A hostile input nests without end in a few bytes per level.
        let hostile: Vec<u8> = [1u8, 0, 0, 0].repeat(1_000_000);
        assert!(err::<Nest>(&hostile).contains("deeper"));
        #[derive(Deserialize, Debug)]
        struct Chain(#[allow(dead_code)] Option<Box<Chain>>);
        assert!(err::<Chain>(&vec![1u8; 1_000_000]).contains("deeper"));
    }

    #[test]
    fn not_self_describing() {
        #[derive(Deserialize, Debug)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Untagged {
            A(u8),
        }
        assert!(err::<Untagged>(&[1]).contains("does not describe itself"));
        assert!(err::<serde::de::IgnoredAny>(&[1]).contains("does not describe itself"));
    }

    #[test]
    fn borrows_from_the_input() {
        let b = encode(&(serde_bytes::Bytes::new(&[1, 2, 3]), "text"));
        let mut de = Deserializer::new(&b[..]);
        let (bytes, text): (&serde_bytes::Bytes, &str) = Deserialize::deserialize(&mut de).unwrap();
        de.finish().unwrap();
        assert!(std::ptr::eq(bytes.as_ptr(), b[8..].as_ptr()));
        assert!(std::ptr::eq(text.as_ptr(), b[19..].as_ptr()));
    }
}
