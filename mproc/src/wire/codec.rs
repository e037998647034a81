//! The serde codec for every message and value: mproc's own wire format ([`super::format`]).
//!
//! Chosen by measurement on mproc's own payloads and on the values users send (benches/codec.rs,
//! figures and the reasons in BENCHMARKS.md): bincode 1's fixed-width layout, which it replaced
//! when bincode became unmaintained, kept by us in a few hundred lines. Both ends are the same
//! build, so the format needs no self-description.
//!
//! A value is encoded in two passes: one that only counts its bytes, so a frame is allocated
//! once at its final size, and one that writes them (at the end of a frame header, or into a
//! slice sized for them). Decoding is bounded by the input (see [`super::format`]), and a
//! value must use every byte it is decoded from. A `Serialize` or `Deserialize` impl's own
//! error message (serde's `Error::custom`) reaches the user word for word.

use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use super::format::Error;
use super::{de, ser};

/// Encodes `value`.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(encoded_len(value)?);
    ser::serialize(&mut out, value)?;
    Ok(out)
}

/// How many bytes [`encode`] would make of `value`.
pub(crate) fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, Error> {
    let mut count = ser::Count(0);
    ser::serialize(&mut count, value)?;
    Ok(count.0)
}

/// Encodes `value` at the end of `out` (after a frame header, say), without a buffer of its own.
/// On an error `out` is as it was.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
) -> Result<(), Error> {
    let before = out.len();
    ser::serialize(out, value).inspect_err(|_| out.truncate(before))
}

/// Encodes `value` into exactly `out` (sized with [`encoded_len`]); an error if the value
/// does not fill it exactly (a `Serialize` that changed its mind between the two calls).
pub(crate) fn encode_to_slice<T: Serialize + ?Sized>(
    out: &mut [u8],
    value: &T,
) -> Result<(), Error> {
    let mut fill = ser::Fill(out);
    ser::serialize(&mut fill, value)?;
    if !fill.0.is_empty() {
        return Err(Error::new(
            "the value encoded to fewer bytes than it was sized at",
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
    let mut de = de::Deserializer::new(bytes);
    let value = T::deserialize(&mut de)?;
    de.finish()?;
    Ok(value)
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

    /// A length prefix of 2^60 followed by a few bytes.
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
        // A length that does not fit a usize, or that is one more than the bytes left.
        assert!(decode::<String>(&u64::MAX.to_le_bytes()).is_err());
        let mut one_short = encode("four").unwrap();
        one_short.pop();
        assert!(decode::<String>(&one_short).is_err());
    }

    #[test]
    fn byte_strings_borrow_and_round_trip() {
        let payload: Vec<u8> = (0..=255).collect();
        let b = encode(&serde_bytes::Bytes::new(&payload)).unwrap();
        // A u64 length, then the bytes themselves.
        assert_eq!(b.len(), payload.len() + 8);
        let back: &[u8] = decode_borrowed::<&serde_bytes::Bytes>(&b).unwrap();
        assert_eq!(back, &payload[..]);
        assert!(
            std::ptr::eq(back.as_ptr(), b[8..].as_ptr()),
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
        // A codec error of its own says what went wrong.
        let e = encode_to_slice(&mut [0; 2], &"too long").unwrap_err();
        assert!(
            e.to_string().contains("more bytes than it was sized"),
            "{e}"
        );
        let e = encode(&Unsized).unwrap_err();
        assert!(e.to_string().contains("unknown length"), "{e}");
    }

    #[test]
    fn decode_errors_say_what_was_wrong() {
        let e = decode::<Option<bool>>(&[1, 7]).unwrap_err();
        assert_eq!(e.to_string(), "a bool is 0 or 1, not 7");
        // A Deserialize impl's own message is kept.
        let e = decode::<std::num::NonZeroU8>(&[0]).unwrap_err();
        assert!(e.to_string().contains("nonzero"), "{e}");
        let e = decode::<Shape>(&7u32.to_le_bytes()).unwrap_err();
        assert!(e.to_string().contains("variant index 0 <= i < 4"), "{e}");
    }

    /// A sequence that cannot say its length.
    struct Unsized;
    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq((0u8..3).filter(|_| true))
        }
    }

    use std::collections::{BTreeMap, HashMap};

    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Unit;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Newtype(u16);

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Pair(i8, String);

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Shape {
        Point,
        Circle(f64),
        Line(Box<Shape>, Box<Shape>),
        Rect {
            w: f32,
            h: f32,
            label: Option<String>,
        },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Everything {
        b: (bool, bool),
        ints: (i8, i16, i32, i64, i128),
        uints: (u8, u16, u32, u64, u128),
        floats: (f32, f64),
        c: (char, char),
        s: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        none: Option<u8>,
        some: Option<Option<()>>,
        unit: (),
        unit_struct: Unit,
        newtype: Newtype,
        pair: Pair,
        shapes: Vec<Shape>,
        map: BTreeMap<String, Vec<u32>>,
        hashed: HashMap<u8, Result<(), String>>,
        empty: Vec<Vec<()>>,
        units: Vec<()>,
    }

    fn everything() -> Everything {
        let line = Shape::Line(Box::new(Shape::Point), Box::new(Shape::Circle(-0.5)));
        Everything {
            b: (true, false),
            ints: (i8::MIN, -2, i32::MAX, i64::MIN, i128::MIN + 7),
            uints: (u8::MAX, 2, 3, u64::MAX, u128::MAX - 7),
            floats: (f32::MIN_POSITIVE, -f64::INFINITY),
            c: ('a', '\u{10ffff}'),
            s: "grüße, 世界".into(),
            bytes: vec![0, 255, 7],
            none: None,
            some: Some(None),
            unit: (),
            unit_struct: Unit,
            newtype: Newtype(0xbeef),
            pair: Pair(-1, String::new()),
            shapes: vec![
                Shape::Point,
                line.clone(),
                Shape::Line(Box::new(line), Box::new(Shape::Point)),
                Shape::Rect {
                    w: 1.5,
                    h: 2.0,
                    label: Some("door".into()),
                },
                Shape::Rect {
                    w: 0.0,
                    h: -0.0,
                    label: None,
                },
            ],
            map: [("a".into(), vec![1, 2]), ("".into(), vec![])].into(),
            hashed: [(1, Ok(())), (2, Err("no".into()))].into(),
            empty: vec![vec![], vec![(); 3]],
            units: vec![(); 1000],
        }
    }

    #[test]
    fn every_serde_type_round_trips() {
        let v = everything();
        let b = encode(&v).unwrap();
        assert_eq!(encoded_len(&v).unwrap(), b.len());
        assert_eq!(decode::<Everything>(&b).unwrap(), v);
        // Floats keep their bits, a NaN's payload and a negative zero included.
        let floats = (
            f32::from_bits(0x7fc0_1234),
            f64::from_bits(0xfff8_0000_dead_beef),
            -0.0f64,
        );
        let back: (f32, f64, f64) = decode(&encode(&floats).unwrap()).unwrap();
        assert_eq!(back.0.to_bits(), floats.0.to_bits());
        assert_eq!(back.1.to_bits(), floats.1.to_bits());
        assert_eq!(back.2.to_bits(), floats.2.to_bits());
        // Borrowed strings and bytes come back pointing into the input.
        let b = encode(&("borrowed", serde_bytes::Bytes::new(b"raw"))).unwrap();
        let (s, raw): (&str, &serde_bytes::Bytes) = decode_borrowed(&b).unwrap();
        assert_eq!((s, &raw[..]), ("borrowed", &b"raw"[..]));
        assert!(std::ptr::eq(s.as_ptr(), b[8..].as_ptr()));
        assert!(std::ptr::eq(raw.as_ptr(), b[24..].as_ptr()));
    }

    #[test]
    fn exact_byte_layouts() {
        assert_eq!(encode(&true).unwrap(), [1]);
        assert_eq!(encode(&0x0102_0304u32).unwrap(), [4, 3, 2, 1]);
        assert_eq!(encode(&-2i16).unwrap(), [0xfe, 0xff]);
        assert_eq!(encode(&1.0f64).unwrap(), 1.0f64.to_le_bytes());
        assert_eq!(encode(&'é').unwrap(), [0xe9, 0, 0, 0]);
        assert_eq!(encode("hi").unwrap(), [2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(encode(&Some(3u8)).unwrap(), [1, 3]);
        assert_eq!(encode(&None::<u64>).unwrap(), [0]);
        assert_eq!(encode(&((), Unit, Newtype(5))).unwrap(), [5, 0]);
        assert_eq!(
            encode(&vec![1u16, 2]).unwrap(),
            [2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2, 0]
        );
        assert_eq!(encode(&Shape::Point).unwrap(), [0, 0, 0, 0]);
        assert_eq!(
            encode(&Shape::Circle(0.0)).unwrap(),
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let rect = Shape::Rect {
            w: 0.0,
            h: 0.0,
            label: None,
        };
        assert_eq!(
            encode(&rect).unwrap(),
            [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let map: BTreeMap<u8, bool> = [(9, true)].into();
        assert_eq!(encode(&map).unwrap(), [1, 0, 0, 0, 0, 0, 0, 0, 9, 1]);
    }

    #[test]
    fn every_truncation_and_every_extra_byte_is_an_error() {
        let b = encode(&everything()).unwrap();
        for cut in 0..b.len() {
            assert!(decode::<Everything>(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        let e = decode::<Everything>(&longer).unwrap_err();
        assert_eq!(e.to_string(), "1 bytes left over after the value");
    }

    /// Serializes its slice one element at a time (through `serialize_seq`), as serde's default
    /// `collect_seq` does: the bytes the whole-copy path must reproduce.
    struct OneByOne<'a, T>(&'a [T]);
    impl<T: Serialize> Serialize for OneByOne<'_, T> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for x in self.0 {
                seq.serialize_element(x)?;
            }
            seq.end()
        }
    }

    fn copied_whole<T>(v: Vec<T>)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let b = encode(&v).unwrap();
        assert_eq!(b, encode(&OneByOne(&v)).unwrap(), "the same bytes");
        assert_eq!(encoded_len(&v).unwrap(), b.len());
        assert_eq!(encode(&v[..]).unwrap(), b, "a slice too");
        assert_eq!(decode::<Vec<T>>(&b).unwrap(), v);
        assert_eq!(decode::<Box<[T]>>(&b).unwrap()[..], v[..]);
        // Every truncation fails, whole element or not; so does a count one too high.
        for cut in [0, 7, 8, b.len() - 1].into_iter().filter(|&c| c < b.len()) {
            assert!(decode::<Vec<T>>(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut more = b.clone();
        more[..8].copy_from_slice(&(v.len() as u64 + 1).to_le_bytes());
        assert!(decode::<Vec<T>>(&more).is_err());
    }

    #[test]
    fn sequences_of_numbers_are_copied_whole_as_the_same_bytes() {
        copied_whole((0..=255u8).cycle().take(100_003).collect());
        copied_whole(vec![-1i8, 0, 1]);
        copied_whole((0..1000u16).collect());
        copied_whole((0..1000).map(|i| i * -7i32).collect());
        copied_whole((0..1000).map(|i: u64| i << 40).collect());
        copied_whole(vec![u128::MAX, 1]);
        copied_whole(vec![f64::NAN.to_bits(), 0]);
        copied_whole(vec![1.5f32, -0.0, f32::INFINITY]);
        copied_whole(vec![0.1f64, -2e300, f64::MIN_POSITIVE]);
        copied_whole(Vec::<f64>::new());
        // NaN's bits survive.
        let b = encode(&vec![f64::from_bits(0x7ff8_dead_beef_0001)]).unwrap();
        assert_eq!(
            decode::<Vec<f64>>(&b).unwrap()[0].to_bits(),
            0x7ff8_dead_beef_0001
        );
        // Inside other values, and after a partial iteration.
        let nested = (7u8, vec![vec![1u8, 2], vec![]], Some(vec![3.0f64]));
        assert_eq!(
            decode::<(u8, Vec<Vec<u8>>, Option<Vec<f64>>)>(&encode(&nested).unwrap()).unwrap(),
            nested
        );
        let v = [1u32, 2, 3];
        let mut it = v.iter();
        it.next();
        let mut via = Vec::new();
        super::ser::serialize(&mut via, &ViaIter(it)).unwrap();
        assert_eq!(decode::<Vec<u32>>(&via).unwrap(), [2, 3]);
    }

    /// A `Serialize` handing the serializer a partly walked `slice::Iter` of its own.
    struct ViaIter<'a>(std::slice::Iter<'a, u32>);
    impl Serialize for ViaIter<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.clone())
        }
    }

    /// Decodes a sequence of `u16`s into a `Vec<u8>` (keeping the low bytes): a visitor whose
    /// value is a `Vec<u8>` but is not serde's, so it must still see every element.
    fn low_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Low;
        impl<'de> serde::de::Visitor<'de> for Low {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("u16s")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(x) = a.next_element::<u16>()? {
                    out.push(x as u8);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(Low)
    }

    #[derive(Deserialize)]
    struct Low(#[serde(deserialize_with = "low_bytes")] Vec<u8>);

    #[test]
    fn another_visitor_of_a_vec_of_numbers_still_sees_each_element() {
        let b = encode(&vec![0x0102u16, 0x0304, 0x05ff]).unwrap();
        assert_eq!(decode::<Low>(&b).unwrap().0, [2, 4, 0xff]);
    }
}
