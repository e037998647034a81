//! Typed views of shared memory, and copies out of it: the only way code above `sys/` touches
//! the bytes of a [`Mapping`].
//!
//! A layout in shared memory (a queue's header, a lane's words, a shared block's header) is a
//! `#[repr(C)]` struct made only of atomics, declared with [`shared_layout!`] beside the code
//! that uses it. [`Mapping::view`] is the one checked cast from a mapping and an offset to a
//! `&T` of such a type: in bounds, aligned, and of a type any bit pattern is valid for and
//! that every process touches only atomically, so another process's writes, even a hostile
//! one's, are never undefined behaviour here.
//!
//! Bytes that are not words (a frame's body, a message) are never lent as `&[u8]` while a
//! peer may write them: they are copied into private memory ([`Mapping::copy_out`],
//! [`SharedReader`]) and checked there, once, by whoever decodes them.
//!
//! [`Mapping`]: super::shm::Mapping

// The one cast from shared memory to typed views, and the raw copies out of it.
#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};

use super::cast::Number;
use super::shm::Mapping;

/// A type that may be laid over shared memory and read through `&Self` while other processes
/// write it.
///
/// # Safety
///
/// Every bit pattern is a valid value; every byte that is not padding is inside an atomic (or
/// an `UnsafeCell` that is only touched atomically, as a robust mutex is by glibc); the type
/// has no `Drop` glue and holds no pointer. Implement it with [`shared_layout!`], which checks
/// the fields, or by hand in `sys/` with a `SAFETY` line.
pub(crate) unsafe trait SharedLayout: Sync + Sized {}

// SAFETY: atomics of plain integers: any bit pattern, only ever accessed atomically.
unsafe impl SharedLayout for AtomicU8 {}
// SAFETY: as above.
unsafe impl SharedLayout for AtomicU32 {}
// SAFETY: as above.
unsafe impl SharedLayout for AtomicU64 {}
// SAFETY: an array of such values, with no padding of its own.
unsafe impl<T: SharedLayout, const N: usize> SharedLayout for [T; N] {}

/// `T` on a 64-byte cache line of its own (at a multiple of 64 and padded to one): the same
/// idea as crossbeam-utils' `CachePadded`, whose alignment is 128 bytes on x86-64 and would
/// move every offset of the layouts mproc already uses.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct Line<T>(pub(crate) T);

// SAFETY: `T` is a shared layout; the alignment adds padding only.
unsafe impl<T: SharedLayout> SharedLayout for Line<T> {}

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Declares a `#[repr(C)]` struct that is a [`SharedLayout`], checking at compile time that
/// each of its fields is one. Attributes (doc comments, `#[repr(align(64))]`) pass through.
///
/// ```ignore
/// shared_layout! {
///     /// The header of a thing.
///     pub(crate) struct Header {
///         pub(crate) magic: AtomicU32,
///         pub(crate) len: AtomicU64,
///     }
/// }
/// ```
macro_rules! shared_layout {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fattr:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$attr])*
        #[repr(C)]
        #[derive(Debug)]
        $vis struct $name {
            $( $(#[$fattr])* $fvis $field: $ty ),*
        }

        // SAFETY: `#[repr(C)]` and every field is a `SharedLayout` (checked just below): so is
        // the struct, whose only other bytes are padding. No `Drop`: a view is only borrowed.
        #[allow(unsafe_code)]
        unsafe impl $crate::sys::layout::SharedLayout for $name {}

        const _: () = {
            const fn field_is_shared<T: $crate::sys::layout::SharedLayout>() {}
            $( field_is_shared::<$ty>(); )*
        };
    };
}
pub(crate) use shared_layout;

/// A mapping that starts with an `H`, checked once when it is made: [`Mapped::header`] is then
/// a plain field access, for the hot paths (a queue's put and get read a dozen words).
#[derive(Debug)]
pub(crate) struct Mapped<H> {
    map: Mapping,
    _header: PhantomData<fn() -> H>,
}

impl<H: SharedLayout> Mapped<H> {
    /// `map`, which must have room for an `H` at its start (`InvalidInput` if not).
    pub(crate) fn new(map: Mapping) -> io::Result<Mapped<H>> {
        map.view::<H>(0)?;
        Ok(Mapped {
            map,
            _header: PhantomData,
        })
    }

    /// The header.
    pub(crate) fn header(&self) -> &H {
        // SAFETY: `new` checked (through `view`) that an `H` fits at the mapping's start,
        // aligned; the mapping is never replaced (no `&mut Mapping` is lent) and lives as long
        // as `self`; `H: SharedLayout`, as in `view`.
        unsafe { &*self.map.as_ptr().cast::<H>() }
    }

    /// The whole mapping, for what lies past the header.
    pub(crate) fn map(&self) -> &Mapping {
        &self.map
    }

    /// See [`Mapping::keep_mapped`].
    pub(crate) fn keep_mapped(&mut self) {
        self.map.keep_mapped();
    }
}

impl Mapping {
    /// The one checked cast: the `T` at `offset`. `InvalidInput` when it does not lie inside
    /// the mapping or is not aligned for `T`.
    ///
    /// Bytes of the mapping past the end of its file (a growable mapping) fault when touched:
    /// callers view only what their file is known to hold.
    pub(crate) fn view<T: SharedLayout>(&self, offset: usize) -> io::Result<&T> {
        let fits = offset
            .checked_add(std::mem::size_of::<T>())
            .is_some_and(|end| end <= self.len());
        let at = (self.as_ptr() as usize).wrapping_add(offset);
        if !fits || !at.is_multiple_of(std::mem::align_of::<T>()) {
            return Err(misplaced(offset));
        }
        // SAFETY: in bounds and aligned (checked above); the mapping lives as long as the
        // borrow of `self`; `T: SharedLayout` is valid for any bytes and only touched through
        // atomics, so other processes' writes are no data race on it.
        Ok(unsafe { &*self.as_ptr().add(offset).cast::<T>() })
    }

    /// Copies `out.len()` bytes at `offset` into private memory (`out`). `InvalidInput` if
    /// they are not all inside the mapping.
    ///
    /// A raw copy (`memcpy`), no reference to the shared bytes is made: a peer that writes
    /// them meanwhile changes what is copied, which the caller checks in `out`, never in the
    /// mapping. Where the protocol gives the caller these bytes (a lock, a published frame),
    /// nobody honest writes them.
    pub(crate) fn copy_out(&self, offset: usize, out: &mut [u8]) -> io::Result<()> {
        self.check_bytes(offset, out.len())?;
        // SAFETY: the source lies inside the mapping (checked) and is read through a raw
        // pointer only; the destination is borrowed mutably. `ptr::copy` (a `memmove`), since
        // `out` could itself be bytes of this mapping lent by `locked_bytes`.
        unsafe { std::ptr::copy(self.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Appends `len` bytes at `offset` to `out`, copied straight into its spare capacity
    /// (not zeroed first). As [`Mapping::copy_out`].
    pub(crate) fn append_to(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        self.append_numbers(offset, len, out)
    }

    /// Appends the `n` numbers whose little-endian bytes are at `offset` to `out`, copied
    /// straight into its spare capacity (not zeroed first). As [`Mapping::copy_out`].
    pub(crate) fn append_numbers<T: Number>(
        &self,
        offset: usize,
        n: usize,
        out: &mut Vec<T>,
    ) -> io::Result<()> {
        let len = n
            .checked_mul(size_of::<T>())
            .ok_or(io::ErrorKind::InvalidInput)?;
        self.check_bytes(offset, len)?;
        out.reserve(n);
        let old = out.len();
        // SAFETY: `len` bytes inside the mapping (checked) copied through raw pointers into
        // the spare capacity reserved above for `n` numbers, which they then initialise (any
        // bytes are a valid `T`: `Pod`), so `set_len` is sound.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.as_ptr().add(offset),
                out.as_mut_ptr().add(old).cast::<u8>(),
                len,
            );
            out.set_len(old + n);
        }
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`. `InvalidInput` if it does not fit.
    pub(crate) fn copy_in(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        self.check_bytes(offset, data.len())?;
        // SAFETY: the destination lies inside the (writable) mapping (checked) and is written
        // through a raw pointer only. `ptr::copy` (a `memmove`), since `data` could itself be
        // bytes of this mapping lent by `locked_bytes`.
        unsafe { std::ptr::copy(data.as_ptr(), self.as_ptr().add(offset), data.len()) };
        Ok(())
    }

    /// Copies `len` bytes from `from` to `to` inside the mapping (`InvalidInput` if either
    /// range is not all inside it).
    pub(crate) fn copy_within(&self, from: usize, to: usize, len: usize) -> io::Result<()> {
        self.check_bytes(from, len)?;
        self.check_bytes(to, len)?;
        // SAFETY: both ranges lie inside the mapping (checked); raw pointers only, and
        // `ptr::copy` (a `memmove`) allows them to overlap.
        unsafe { std::ptr::copy(self.as_ptr().add(from), self.as_ptr().add(to), len) };
        Ok(())
    }

    /// A reader of the bytes `offset..offset + len`, which it copies out as it goes.
    /// `InvalidInput` if they are not all inside the mapping.
    pub(crate) fn reader(&self, offset: usize, len: usize) -> io::Result<SharedReader<'_>> {
        self.check_bytes(offset, len)?;
        Ok(SharedReader {
            map: self,
            at: offset,
            end: offset + len,
        })
    }

    /// `InvalidInput` unless the bytes `offset..offset + len` all lie inside the mapping.
    pub(crate) fn check_bytes(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {offset} outside a mapping of {}",
                    self.len()
                ),
            )),
        }
    }
}

/// A view that does not fit its mapping: out of line, so that [`Mapping::view`] stays a few
/// compares on the lock and queue paths.
#[cold]
#[inline(never)]
fn misplaced(offset: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("a shared layout outside its mapping or misaligned (offset {offset})"),
    )
}

/// A range of shared memory a peer may write, read front to back by copying into private
/// memory: what a decoder reads shared bytes through, so that each byte is read from the
/// mapping once and checked only in its private copy.
#[derive(Debug)]
pub(crate) struct SharedReader<'a> {
    map: &'a Mapping,
    at: usize,
    end: usize,
}

impl SharedReader<'_> {
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.end - self.at
    }

    /// The next `len` bytes, copied once, straight into a new `Vec` (for a byte string or a
    /// string the decoder hands on as it is). `UnexpectedEof` if fewer remain.
    pub(crate) fn take_vec(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.append_to(len, &mut out)?;
        Ok(out)
    }

    /// Appends the next `len` bytes to `out`. `UnexpectedEof` if fewer remain.
    pub(crate) fn append_to(&mut self, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if len > self.remaining() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.map.append_to(self.at, len, out)?;
        self.at += len;
        Ok(())
    }

    /// Appends the next `n` numbers (little-endian) to `out`. `UnexpectedEof` if fewer remain.
    pub(crate) fn append_numbers<T: Number>(&mut self, n: usize, out: &mut Vec<T>) -> io::Result<()> {
        match n.checked_mul(size_of::<T>()) {
            Some(len) if len <= self.remaining() => {
                self.map.append_numbers(self.at, n, out)?;
                self.at += len;
                Ok(())
            }
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// All that remains, copied into a new `Vec`.
    pub(crate) fn into_vec(mut self) -> io::Result<Vec<u8>> {
        self.take_vec(self.remaining())
    }
}

impl io::Read for SharedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.remaining());
        self.map.copy_out(self.at, &mut buf[..n])?;
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::atomic::Ordering;

    use super::*;

    shared_layout! {
        /// A layout with a word on a line of its own.
        struct Probe {
            first: AtomicU32,
            second: AtomicU64,
            line: Line<AtomicU32>,
        }
    }
    const _: () = assert!(std::mem::offset_of!(Probe, second) == 8);
    const _: () = assert!(std::mem::offset_of!(Probe, line) == 64);
    const _: () = assert!(std::mem::size_of::<Probe>() == 128);

    #[test]
    fn views_are_checked_for_bounds_and_alignment() {
        let (map, _file) = Mapping::create("mproc-test", 4096).unwrap();
        let probe = map.view::<Probe>(0).unwrap();
        probe.second.store(7, Ordering::Relaxed);
        probe.line.store(9, Ordering::Relaxed);
        assert_eq!(map.view::<AtomicU64>(8).unwrap().load(Ordering::Relaxed), 7);
        assert_eq!(
            map.view::<AtomicU32>(64).unwrap().load(Ordering::Relaxed),
            9
        );
        assert!(map.view::<Probe>(4096 - 64).is_err(), "past the end");
        assert!(map.view::<AtomicU64>(4).is_err(), "misaligned");
        assert!(
            map.view::<AtomicU64>(usize::MAX - 3).is_err(),
            "overflowing"
        );
        assert!(map.view::<AtomicU32>(4092).is_ok());
    }

    #[test]
    fn copies_stay_inside_the_mapping() {
        let (map, _file) = Mapping::create("mproc-test", 4096).unwrap();
        map.copy_in(100, b"hello").unwrap();
        let mut out = [0; 5];
        map.copy_out(100, &mut out).unwrap();
        assert_eq!(&out, b"hello");
        map.copy_within(100, 200, 5).unwrap();
        assert!(map.copy_within(100, 4092, 5).is_err(), "past the end");
        assert!(map.copy_in(4094, b"abc").is_err());
        assert!(map.copy_out(usize::MAX, &mut out).is_err());
        let mut r = map.reader(200, 5).unwrap();
        let mut two = [0; 2];
        r.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"he");
        assert_eq!(r.remaining(), 3);
        assert!(r.take_vec(4).is_err(), "past the range");
        assert_eq!(r.into_vec().unwrap(), b"llo");
        assert!(map.reader(4000, 97).is_err());
    }
}
