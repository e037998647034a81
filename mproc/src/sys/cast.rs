//! Two casts that let the codec move a sequence of numbers with one copy instead of one call per
//! element: serde gives a `Vec<u8>` to a serializer as an iterator of `u8`s and asks a
//! deserializer for its elements one by one, so a 10 MiB `Vec<u8>` took ten million calls each
//! way (issue 15). Not a system call, but the crate's `unsafe` lives under `sys/`.
//!
//! Both casts are guarded by a type check ([`typeid::of`], which ignores lifetimes) against
//! types built from [`Number`]s alone: those have no lifetime parameters, so "the same id" means
//! "the same type".

#![allow(unsafe_code)] // Reinterpreting a generic value as the concrete type its id proves it is.

use std::any::TypeId;
use std::mem::ManuallyDrop;

/// The primitive numbers: plain old data with a fixed-width little-endian encoding in the wire
/// format, so a slice of them is its encoding on a little-endian machine. Sealed: the casts
/// below rely on these types having no lifetimes.
pub(crate) trait Number: bytemuck::Pod + sealed::Sealed {}

mod sealed {
    pub(crate) trait Sealed {}
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Number for $t {}
    )*};
}

/// Invokes the macro `$m` with every [`Number`] type: the one list the codec's fast paths
/// and the impls above share.
macro_rules! each_number {
    ($m:ident) => {
        $m! { u8, i8, u16, i16, u32, i32, u64, i64, u128, i128, f32, f64 }
    };
}
pub(crate) use each_number;

each_number!(numbers);

/// The slice an iterator walks, when the iterator is a `std::slice::Iter` over `T`s.
#[inline]
pub(crate) fn slice_iter<'i, It, T: Number>(it: &'i It) -> Option<&'i [T]> {
    if typeid::of::<It>() != TypeId::of::<std::slice::Iter<'static, T>>() {
        return None;
    }
    // SAFETY: equal ids mean `It` is `slice::Iter<'a, T>` for some `'a` (an id leaves out only
    // lifetimes, and `T` has none). `&'i It` is well-formed, so `'a: 'i`, and `Iter` is
    // covariant in `'a`: reading it as an `Iter<'i, T>` only shortens the borrow.
    let it = unsafe { &*std::ptr::from_ref(it).cast::<std::slice::Iter<'i, T>>() };
    Some(it.as_slice())
}

/// `value` as an `A`, when `A` is `Vec<T>`; `value` back otherwise.
#[inline]
pub(crate) fn vec_as<A, T: Number>(value: Vec<T>) -> Result<A, Vec<T>> {
    if typeid::of::<A>() != TypeId::of::<Vec<T>>() {
        return Err(value);
    }
    let value = ManuallyDrop::new(value);
    // SAFETY: equal ids mean `A` is `Vec<T>` up to lifetimes, and `Vec<T>` has none (`T` is a
    // number): the same type. `value` is not dropped here, so ownership moves to the copy.
    Ok(unsafe { std::ptr::from_ref::<Vec<T>>(&value).cast::<A>().read() })
}

/// Appends the numbers whose little-endian bytes are `bytes` (whole numbers only: a trailing
/// part of one is left out) to `out`, copied straight into its spare capacity.
#[inline]
pub(crate) fn extend_from_le<T: Number>(out: &mut Vec<T>, bytes: &[u8]) {
    let n = bytes.len() / size_of::<T>();
    out.reserve(n);
    let old = out.len();
    // SAFETY: `n` numbers' bytes are read from `bytes` and written into the spare capacity
    // reserved above (raw pointers; the two cannot overlap, `out` is borrowed mutably), which
    // they then initialise: any bytes are a valid `T` (`Pod`), so `set_len` is sound.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            out.as_mut_ptr().add(old).cast::<u8>(),
            n * size_of::<T>(),
        );
        out.set_len(old + n);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_exact_types_pass() {
        use super::{extend_from_le, slice_iter, vec_as};

        let v = vec![1u32, 2, 3];
        assert_eq!(slice_iter::<_, u32>(&v.iter()), Some(&v[..]));
        assert_eq!(slice_iter::<_, i32>(&v.iter()), None);
        assert_eq!(slice_iter::<_, u32>(&v.iter().skip(1)), None);
        assert_eq!(slice_iter::<_, u32>(&v.iter().map(|x| x + 1)), None);
        let mut it = v.iter();
        it.next();
        assert_eq!(slice_iter::<_, u32>(&it), Some(&v[1..]));

        let back: Vec<u32> = vec_as(v.clone()).unwrap();
        assert_eq!(back, v);
        assert!(vec_as::<Vec<i32>, u32>(v.clone()).is_err());
        assert!(vec_as::<Box<[u32]>, u32>(v).is_err());

        let mut out = vec![1u16];
        extend_from_le(&mut out, &[2, 0, 3, 1, 9]);
        assert_eq!(out, [1, 2, 0x103], "the odd byte left out");
    }
}
