//! The encoding half of the wire format (layout in [`super::format`]).

use serde::Serialize;
use serde::ser;

use super::format::Error;

/// Where an encoding goes: a byte count (the sizing pass), the end of a `Vec` (after a frame
/// header), or a slice sized for it.
pub(crate) trait Output {
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
pub(crate) fn serialize<O, T>(out: &mut O, value: &T) -> Result<(), Error>
where
    O: Output,
    T: Serialize + ?Sized,
{
    value.serialize(&mut Serializer { out })
}

/// The serde serializer of the wire format, over any [`Output`].
pub(crate) struct Serializer<'a, O> {
    out: &'a mut O,
}

impl<O: Output> Serializer<'_, O> {
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
        value.serialize(self)
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
        self.variant(index)
    }

    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        value.serialize(self)
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
        value.serialize(self)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Error> {
        self.len(len.ok_or_else(unknown_length)?)?;
        Ok(self)
    }

    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Self, Error> {
        Ok(self)
    }

    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
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
        Ok(self)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self, Error> {
        self.len(len.ok_or_else(unknown_length)?)?;
        Ok(self)
    }

    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, Error> {
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
        Ok(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
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

/// The elements of every compound, one after another; `end` writes nothing.
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
        Ok(())
    }
}
