//! [`Buffer`]: plain data shared read-only between processes, passed without a copy.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::sys::fd::InternalFd;
use crate::sys::proc;
use crate::sys::shm::Frozen;

/// Where a buffer's memory file says what it holds: "mprocBuf", the size of one element, how
/// many there are, and where they start ([`data_at`] of the sender's type), as little-endian
/// `u64`s.
const HEADER: usize = 64;
const MAGIC: u64 = u64::from_le_bytes(*b"mprocBuf");

/// Where the elements start: after the header, aligned for `T` (the mapping is page-aligned).
fn data_at<T>() -> usize {
    HEADER.next_multiple_of(align_of::<T>())
}

/// Whether a page-aligned mapping is aligned enough for `T`: the kernel places a mapping on a
/// page boundary, no further, so elements aligned beyond a page could not be lent as `&[T]`.
fn aligned_enough<T>() -> bool {
    align_of::<T>() <= rustix::param::page_size()
}

/// A read-only array of plain data in shared memory, which crosses to other processes by
/// handing over its memory, never by copying it: what Python users do with a numpy array in
/// `SharedMemory` to stop it being pickled into every pool task.
///
/// Built once from a slice ([`Buffer::from_slice`]) or filled in place ([`Buffer::new_with`]),
/// then frozen: the memory file is sealed against writing (`F_SEAL_WRITE`), so the kernel
/// refuses any change to it from any process, and every holder reads it as a plain `&[T]`
/// (`Buffer<T>` derefs to `[T]`), with no lock. Passing a buffer of any size costs what passing
/// a small value does, and every process reads the same pages.
///
/// It travels wherever handles do: in the arguments of [`Process::new`](crate::Process::new)
/// and of pool tasks, in what a target or a pool task returns (a worker can build a large
/// result in a buffer and hand it back without a copy), and in values sent on a
/// [`Connection`](crate::Connection). A queue item cannot carry one (the error says so; send
/// it on a pipe instead), nor can a remote pool's tasks. A fork child that inherited a buffer
/// without being passed it can read it, but not pass it on. One message carries at most 253
/// descriptors (the kernel's limit): a pool chunk whose arguments, or whose results, hold more
/// distinct handles fails with a sentence that says so (a smaller `chunksize` fits). Each
/// buffer a task returns holds a descriptor in this process while its result is kept.
/// Clones share the memory, which is freed when the last holder in any process drops it.
///
/// `T` is [`Pod`](crate::Pod), not zero-sized, and aligned to at most a page (4096 bytes). A buffer received as a `Buffer<U>` whose
/// elements differ in size from the sender's is refused; one of the same size reads the
/// sender's elements as `U`s, or is refused where they are not aligned for a `U`.
///
/// ```
/// use mproc::{Buffer, Pool};
///
/// fn total(table: Buffer<u64>, from: usize) -> u64 {
///     table[from..from + 1000].iter().sum()
/// }
///
/// let table = Buffer::new_with(1 << 20, |t: &mut [u64]| {
///     for (i, x) in t.iter_mut().enumerate() {
///         *x = i as u64;
///     }
/// })?;
/// let pool = Pool::new(2)?;
/// // Each task gets the table by handle: 8 MiB shared, nothing copied.
/// let sums = pool.starmap(total, [(table.clone(), 0), (table.clone(), 1000)])?;
/// assert_eq!(sums, [499_500, 1_499_500]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Buffer<T> {
    shared: Arc<Shared>,
    /// Where the elements start in the mapping (the sender's [`data_at`]).
    at: usize,
    len: usize,
    _t: PhantomData<T>,
}

/// What clones of a buffer share in one process.
struct Shared {
    frozen: Frozen,
    file: InternalFd,
    /// The fork generation that holds `file` (a fork child that inherited the buffer has the
    /// mapping but not the descriptor).
    generation: u64,
}

impl<T: bytemuck::Pod> Buffer<T> {
    /// A buffer of `len` elements that `fill` writes in place, in shared memory (no copy):
    /// they start zeroed. `fill` runs in this process, before anyone else can see the buffer.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` for a zero-sized `T`, one aligned beyond a page, or a size over the
    /// address space; `Os` when the memory cannot be had.
    ///
    /// ```
    /// let squares = mproc::Buffer::new_with(4, |s: &mut [u32]| {
    ///     for (i, x) in s.iter_mut().enumerate() {
    ///         *x = (i * i) as u32;
    ///     }
    /// })?;
    /// assert_eq!(&squares[..], [0, 1, 4, 9]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new_with(len: usize, fill: impl FnOnce(&mut [T])) -> Result<Buffer<T>, Error> {
        if size_of::<T>() == 0 {
            return Err(Error::invalid("a Buffer cannot hold zero-sized elements"));
        }
        if !aligned_enough::<T>() {
            return Err(Error::invalid(format!(
                "a Buffer cannot hold elements aligned to {} bytes, more than a page ({})",
                align_of::<T>(),
                std::any::type_name::<T>()
            )));
        }
        let data = size_of::<T>()
            .checked_mul(len)
            .and_then(|n| n.checked_add(data_at::<T>()))
            .filter(|&n| isize::try_from(n).is_ok())
            .ok_or_else(|| Error::invalid(format!("a Buffer of {len} elements is too large")))?;
        let (frozen, file) = Frozen::create("mproc-buffer", data, |bytes| {
            bytes[..8].copy_from_slice(&MAGIC.to_le_bytes());
            bytes[8..16].copy_from_slice(&(size_of::<T>() as u64).to_le_bytes());
            bytes[16..24].copy_from_slice(&(len as u64).to_le_bytes());
            bytes[24..32].copy_from_slice(&(data_at::<T>() as u64).to_le_bytes());
            fill(bytemuck::cast_slice_mut(&mut bytes[data_at::<T>()..]));
        })
        .map_err(|e| Error::os("creating a shared buffer", e))?;
        Ok(Buffer::from_parts(frozen, file, data_at::<T>(), len))
    }

    /// A buffer holding a copy of `items` (one copy, into shared memory).
    ///
    /// # Errors
    ///
    /// As [`Buffer::new_with`].
    ///
    /// ```
    /// let b = mproc::Buffer::from_slice(&[1.5f64, 2.5])?;
    /// assert_eq!(b.iter().sum::<f64>(), 4.0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn from_slice(items: &[T]) -> Result<Buffer<T>, Error> {
        Buffer::new_with(items.len(), |b| b.copy_from_slice(items))
    }

    /// The elements, as `&[T]` (also what `*buffer` gives).
    ///
    /// ```
    /// let b = mproc::Buffer::from_slice(b"abc")?;
    /// assert_eq!(b.as_slice(), b"abc");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn as_slice(&self) -> &[T] {
        let at = self.at;
        bytemuck::cast_slice(&self.shared.frozen.bytes()[at..at + self.len * size_of::<T>()])
    }

    fn from_parts(frozen: Frozen, file: InternalFd, at: usize, len: usize) -> Buffer<T> {
        Buffer {
            shared: Arc::new(Shared {
                frozen,
                file,
                generation: proc::fork_generation(),
            }),
            at,
            len,
            _t: PhantomData,
        }
    }

    /// A received memory file as a buffer of `T`, after checking that it is frozen, says it
    /// holds `T`-sized elements, and is long enough for them.
    fn received(file: InternalFd) -> Result<Buffer<T>, String> {
        let frozen = Frozen::open(file.as_fd()).map_err(|e| format!("a received Buffer: {e}"))?;
        let bytes = frozen.bytes();
        let word = |at: usize| {
            bytes
                .get(at..at + 8)
                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
        };
        if !aligned_enough::<T>() {
            return Err(format!(
                "a Buffer cannot hold elements aligned to {} bytes, more than a page ({})",
                align_of::<T>(),
                std::any::type_name::<T>()
            ));
        }
        if word(0) != Some(MAGIC) {
            return Err("a received Buffer is not one".into());
        }
        let size = word(8).unwrap_or(0);
        if size != size_of::<T>() as u64 || size == 0 {
            return Err(format!(
                "a received Buffer holds {size}-byte elements, not {} ({})",
                size_of::<T>(),
                std::any::type_name::<T>()
            ));
        }
        // Where the sender's elements start (its type's alignment may differ from `T`'s:
        // reading at `T`'s own offset would shift every element).
        let at = word(24)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&at| at >= HEADER)
            .ok_or("a received Buffer does not say where its elements start")?;
        if !at.is_multiple_of(align_of::<T>()) {
            return Err(format!(
                "a received Buffer's elements are not aligned for {} (they start at byte {at})",
                std::any::type_name::<T>()
            ));
        }
        let len = word(16)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| {
                n.checked_mul(size_of::<T>())
                    .and_then(|b| b.checked_add(at))
                    .is_some_and(|end| end <= bytes.len())
            })
            .ok_or("a received Buffer is shorter than it says")?;
        Ok(Buffer::from_parts(frozen, file, at, len))
    }
}

impl<T> Buffer<T> {
    /// How many elements it holds.
    ///
    /// ```
    /// assert_eq!(mproc::Buffer::from_slice(&[0u16; 5])?.len(), 5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no elements.
    ///
    /// ```
    /// assert!(mproc::Buffer::<u8>::from_slice(&[])?.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: bytemuck::Pod> Deref for Buffer<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: bytemuck::Pod> AsRef<[T]> for Buffer<T> {
    fn as_ref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T> Clone for Buffer<T> {
    /// Another handle on the same memory (no copy).
    fn clone(&self) -> Self {
        Buffer {
            shared: Arc::clone(&self.shared),
            at: self.at,
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffer")
            .field("len", &self.len)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<T> Serialize for Buffer<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.shared.generation != proc::fork_generation() {
            return Err(serde::ser::Error::custom(
                "this Buffer was inherited through fork, not passed to this process: it can be \
                 read here but not passed on (pass it in the arguments of Process::new or of a \
                 pool task)",
            ));
        }
        let at = crate::handle::export(self.shared.file.as_fd()).map_err(serde::ser::Error::custom)?;
        s.serialize_u32(at)
    }
}

impl<'de, T: bytemuck::Pod> Deserialize<'de> for Buffer<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let at = u32::deserialize(d)?;
        let file = crate::handle::import(at).map_err(serde::de::Error::custom)?;
        Buffer::received(file).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of `fd`, as a received buffer's file is held.
    fn listed_dup(fd: std::os::fd::BorrowedFd<'_>, min: i32) -> Result<InternalFd, std::io::Error> {
        crate::sys::fd::dup_above(fd, min).map(InternalFd::new)
    }

    #[test]
    fn frozen_means_frozen() {
        let b = Buffer::from_slice(&[1u32, 2, 3]).unwrap();
        assert_eq!(&b[..], [1, 2, 3]);
        let fd = b.shared.file.as_fd();
        // No write, by descriptor or by a new shared mapping, from this process or another.
        let e = rustix::io::pwrite(fd, b"x", 0).unwrap_err();
        assert_eq!(e, rustix::io::Errno::PERM);
        assert!(crate::sys::shm::Mapping::open(fd).is_err(), "no writable mapping");
        assert!(rustix::fs::ftruncate(fd, 0).is_err());
        assert_eq!(&b[..], [1, 2, 3]);
    }

    /// Bytes aligned to 128 (a cache line), 128 of them.
    #[derive(Clone, Copy)]
    #[repr(C, align(128))]
    struct Line([u8; 128]);
    // A test's own Pod type (bytemuck's derive is not a dependency).
    #[allow(unsafe_code)]
    // SAFETY: plain bytes, no padding (size equals the array's), any bit pattern valid.
    unsafe impl bytemuck::Zeroable for Line {}
    #[allow(unsafe_code)]
    // SAFETY: as above.
    unsafe impl bytemuck::Pod for Line {}

    /// A buffer received as another type of the same size but another alignment reads the
    /// sender's elements (which start where the sender's type put them), or is refused where
    /// they are not aligned for the receiver's: never elements shifted by the difference.
    #[test]
    fn a_buffer_received_as_another_alignment_reads_the_senders_elements() {
        let lines = Buffer::new_with(3, |l: &mut [Line]| {
            for (i, line) in l.iter_mut().enumerate() {
                line.0 = [i as u8 + 1; 128];
            }
        })
        .unwrap();
        let dup = listed_dup(lines.shared.file.as_fd(), 0).unwrap();
        let bytes = Buffer::<[u8; 128]>::received(dup).unwrap();
        assert_eq!(bytes.len(), 3);
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(b, &[i as u8 + 1; 128], "element {i}");
        }
        // The other way: bytes start at 64, not aligned for a `Line`.
        let back = listed_dup(bytes.shared.file.as_fd(), 0).unwrap();
        assert_eq!(Buffer::<Line>::received(back).unwrap()[2].0, [3; 128]);
        let plain = Buffer::from_slice(&[[9u8; 128]; 2]).unwrap();
        let dup = listed_dup(plain.shared.file.as_fd(), 0).unwrap();
        let e = Buffer::<Line>::received(dup).unwrap_err();
        assert!(e.contains("not aligned"), "{e}");
    }

    /// What a hostile peer could send that is sealed, yet still written: a memory file sealed
    /// against future writes (`F_SEAL_FUTURE_WRITE`, which leaves its sender's writable
    /// mapping writable) against everything else too, with a true header; and files that are
    /// no memory file (a pipe, `/dev/zero`, a named file in `/dev/shm`). Each is refused.
    #[test]
    fn sealed_but_still_writable_files_are_refused() {
        use rustix::fs::SealFlags;
        let file = crate::sys::shm::testing::unsealed_memfd(4096);
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        let writer = crate::sys::shm::Mapping::open(file.as_fd()).unwrap();
        writer.write_at(0, &MAGIC.to_le_bytes()).unwrap();
        writer.write_at(8, &8u64.to_le_bytes()).unwrap();
        writer.write_at(16, &1u64.to_le_bytes()).unwrap();
        writer.write_at(24, &64u64.to_le_bytes()).unwrap();
        rustix::fs::fcntl_add_seals(&file, SealFlags::FUTURE_WRITE | SealFlags::SEAL).unwrap();
        // The sender's mapping still writes, after the seal.
        writer.write_at(64, &7u64.to_le_bytes()).unwrap();
        let dup = || listed_dup(file.as_fd(), 0).unwrap();
        let e = Buffer::<u64>::received(dup()).unwrap_err();
        assert!(e.contains("sealed against writing"), "{e}");
        let (pipe, _other) = crate::sys::fd::pipe().unwrap();
        assert!(Buffer::<u8>::received(InternalFd::new(pipe)).is_err());
        let zero = std::fs::File::open("/dev/zero").unwrap();
        assert!(Buffer::<u8>::received(InternalFd::new(zero.into())).is_err());
        if let Ok(named) = crate::sys::shm::shm_create_unnamed(4096) {
            assert!(Buffer::<u8>::received(InternalFd::new(named)).is_err());
        }
    }

    #[test]
    fn what_is_received_is_checked() {
        let b = Buffer::from_slice(&[7u64; 10]).unwrap();
        let dup = || listed_dup(b.shared.file.as_fd(), 0).unwrap();
        assert_eq!(&Buffer::<u64>::received(dup()).unwrap()[..], [7; 10]);
        assert_eq!(Buffer::<i64>::received(dup()).unwrap().len(), 10);
        let e = Buffer::<u32>::received(dup()).unwrap_err();
        assert!(e.contains("8-byte elements, not 4"), "{e}");
        // An ordinary memory file, one that could still be written, one that lies.
        let e = Buffer::<u8>::received(InternalFd::new(crate::sys::shm::testing::unsealed_memfd(4096))).unwrap_err();
        assert!(e.contains("sealed"), "{e}");
        let (_, open) = crate::sys::shm::Mapping::create("t", 4096).unwrap();
        assert!(Buffer::<u8>::received(open).is_err());
        for (size, len) in [(8u64, 1u64 << 60), (8, 505), (0, 1)] {
            let (_, liar) = Frozen::create("t", 4096, |b| {
                b[..8].copy_from_slice(&MAGIC.to_le_bytes());
                b[8..16].copy_from_slice(&size.to_le_bytes());
                b[16..24].copy_from_slice(&len.to_le_bytes());
                b[24..32].copy_from_slice(&64u64.to_le_bytes());
            })
            .unwrap();
            assert!(Buffer::<u64>::received(liar).is_err(), "{size} {len}");
        }
        // Elements said to start inside the header, where no `u64` is aligned, or past the end.
        for at in [0u64, 8, 60, 68, 4096, 1 << 62] {
            let (_, liar) = Frozen::create("t", 4096, |b| {
                b[..8].copy_from_slice(&MAGIC.to_le_bytes());
                b[8..16].copy_from_slice(&8u64.to_le_bytes());
                b[16..24].copy_from_slice(&1u64.to_le_bytes());
                b[24..32].copy_from_slice(&at.to_le_bytes());
            })
            .unwrap();
            assert!(Buffer::<u64>::received(liar).is_err(), "at {at}");
        }
        // Elements aligned beyond a page, as the sender's same-sized bytes: refused, where
        // casting the page-aligned bytes would panic.
        #[derive(Clone, Copy)]
        #[repr(C, align(65536))]
        struct Huge([u8; 65536]);
        // A test's own Pod type (bytemuck's derive is not a dependency).
        #[allow(unsafe_code)]
        // SAFETY: plain bytes, no padding, any bit pattern valid.
        unsafe impl bytemuck::Zeroable for Huge {}
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe impl bytemuck::Pod for Huge {}
        let (_, roomy) = Frozen::create("t", 3 << 16, |b| {
            b[..8].copy_from_slice(&MAGIC.to_le_bytes());
            b[8..16].copy_from_slice(&(1u64 << 16).to_le_bytes());
            b[16..24].copy_from_slice(&1u64.to_le_bytes());
        })
        .unwrap();
        let dup = || listed_dup(roomy.as_fd(), 0).unwrap();
        for _ in 0..4 {
            let e = Buffer::<Huge>::received(dup()).unwrap_err();
            assert!(e.contains("aligned to 65536 bytes"), "{e}");
        }
        assert!(Buffer::<()>::from_slice(&[(); 3]).is_err());
        assert!(Buffer::<u64>::new_with(usize::MAX / 4, |_| {}).is_err());
    }
}
