//! Plain data in shared memory: [`Value<T>`] and [`Array<T>`], each with its own robust lock
//! (Python's `multiprocessing.Value` and `Array`).
//!
//! `T` is [`Pod`] (bytemuck's "plain old data"): any bit pattern is a valid `T`
//! and it holds no pointers, so its bytes mean the same in every process. It is not
//! zero-sized and is aligned to at most a page (4096 bytes): `new` refuses others with
//! `InvalidArgument`.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::sync::{Head, MUTEX_AT, deserialize_block, new_mutex_block, serialize_block};
use crate::sys::layout::shared_layout;
use crate::sys::shared::{Block, Held, Taken};

const KIND_VALUE: u32 = 7;
const KIND_ARRAY: u32 = 8;
/// Where the data starts (after the mutex and its words).
const DATA_AT: usize = 192;

shared_layout! {
    /// A value's or an array's header, in the block's first 64 bytes; its lock follows at
    /// `sync::MUTEX_AT`.
    struct Header {
        /// The block's header and its lock's identity, as every lock's block has them.
        _head: Head,
        /// How many elements.
        len: AtomicU64,
        /// The size of one element: a handle received for another type is refused.
        size: AtomicU64,
    }
}
// The layout every process of every build agrees on: checked, not just described.
const _: () = assert!(std::mem::offset_of!(Header, len) == 24);
const _: () = assert!(std::mem::offset_of!(Header, size) == 32);
const _: () = assert!(std::mem::size_of::<Header>() <= MUTEX_AT);

fn data_at<T>() -> usize {
    DATA_AT.next_multiple_of(std::mem::align_of::<T>())
}

/// Whether shared memory can lend `T`s as `&[T]`: not zero-sized (a `Value` of one would
/// have no element to lend), and aligned to at most a page, as a mapping is (the kernel places
/// it on a page boundary, no further).
fn lendable<T>() -> bool {
    std::mem::size_of::<T>() != 0 && std::mem::align_of::<T>() <= rustix::param::page_size()
}

fn block_for<T>(kind: u32, len: usize) -> Result<Arc<Block>, Error> {
    if !lendable::<T>() {
        return Err(Error::invalid(format!(
            "shared memory cannot hold elements of {} (zero-sized, or aligned to {} bytes, \
             more than a page)",
            std::any::type_name::<T>(),
            std::mem::align_of::<T>(),
        )));
    }
    let bytes = std::mem::size_of::<T>()
        .checked_mul(len)
        .and_then(|b| b.checked_add(data_at::<T>()))
        .ok_or_else(|| Error::invalid("the shared array is too large"))?;
    let block = new_mutex_block(kind, bytes, false)?;
    let header = block.view::<Header>(0);
    header.len.store(len as u64, Ordering::Relaxed);
    header
        .size
        .store(std::mem::size_of::<T>() as u64, Ordering::Release);
    Ok(block)
}

/// Checks that a block received from another process holds `T`s.
fn check_block<T, E: serde::de::Error>(block: &Block) -> Result<usize, E> {
    let header = block.view::<Header>(0);
    let len = header.len.load(Ordering::Relaxed) as usize;
    let size = header.size.load(Ordering::Acquire) as usize;
    let fits = len
        .checked_mul(size)
        .and_then(|b| b.checked_add(data_at::<T>()))
        .is_some_and(|end| end <= block.len());
    if size != std::mem::size_of::<T>() || !fits || !lendable::<T>() {
        return Err(E::custom(
            "the shared value holds another type than this one",
        ));
    }
    Ok(len)
}

fn take(block: &Block) -> Result<(Held<'_>, bool), Error> {
    match block.mutex_at(MUTEX_AT).lock(None) {
        Ok(Some((held, taken))) => Ok((held, taken == Taken::OwnerDied)),
        Ok(None) => unreachable!("no deadline"),
        Err(e) if e.raw_os_error() == Some(libc::EDEADLK) => Err(Error::invalid(
            "this thread already holds this shared value's lock",
        )),
        Err(e) => Err(Error::os("taking a shared value's lock", e)),
    }
}

// ----------------------------------------------------------------------------------------

/// One `T` in shared memory, with a lock: Python's `multiprocessing.Value`.
///
/// ```
/// use mproc::{Process, Value};
///
/// fn add_one(v: Value<u64>) {
///     *v.lock().unwrap() += 1;
/// }
/// let v = Value::new(41u64)?;
/// let mut p = Process::new(add_one, (v.clone(),));
/// p.start()?;
/// p.join()?;
/// assert_eq!(v.get()?, 42);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Value<T> {
    /// One element, in a block of its own kind.
    cell: Array<T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            cell: self.cell.clone(),
        }
    }
}

impl<T: Pod> Value<T> {
    /// A shared `T` holding `value`.
    ///
    /// ```
    /// let v = mproc::Value::new(1.5f64)?;
    /// assert_eq!(v.get()?, 1.5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(value: T) -> Result<Value<T>, Error> {
        let v = Value {
            cell: Array::of_kind(KIND_VALUE, 1)?,
        };
        v.set(value)?;
        Ok(v)
    }

    /// A copy of the value (taken under its lock).
    ///
    /// ```
    /// assert_eq!(mproc::Value::new(3i32)?.get()?, 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get(&self) -> Result<T, Error> {
        Ok(*self.lock()?)
    }

    /// Replaces the value (under its lock).
    ///
    /// ```
    /// let v = mproc::Value::new(0u8)?;
    /// v.set(9)?;
    /// assert_eq!(v.get()?, 9);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn set(&self, value: T) -> Result<(), Error> {
        *self.lock()? = value;
        Ok(())
    }

    /// Takes the value's lock; the guard reads and writes the value in place.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if this thread already holds it.
    ///
    /// ```
    /// let v = mproc::Value::new(10u32)?;
    /// {
    ///     let mut g = v.lock()?;
    ///     *g *= 2;
    ///     assert!(!g.owner_died());
    /// }
    /// assert_eq!(v.get()?, 20);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn lock(&self) -> Result<ValueGuard<'_, T>, Error> {
        Ok(ValueGuard(self.cell.lock()?))
    }
}

impl<T: Pod> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.cell.serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let cell = Array::deserialize_kind(d, KIND_VALUE)?;
        if cell.len() != 1 {
            return Err(serde::de::Error::custom("not a single shared value"));
        }
        Ok(Value { cell })
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value").finish_non_exhaustive()
    }
}

/// A [`Value`]'s lock, held; derefs to the value. Released on drop. (Forgotten, it holds the
/// lock as a forgotten [`LockGuard`](crate::LockGuard) does.)
///
/// ```
/// let v = mproc::Value::new(1u16)?;
/// let g = v.lock()?;
/// assert_eq!(*g, 1);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct ValueGuard<'a, T>(ArrayGuard<'a, T>);

impl<T> ValueGuard<'_, T> {
    /// Whether the previous holder died holding the lock (the value may be half-written).
    ///
    /// ```
    /// assert!(!mproc::Value::new(0u8)?.lock()?.owner_died());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn owner_died(&self) -> bool {
        self.0.owner_died()
    }
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0[0]
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0[0]
    }
}

// ----------------------------------------------------------------------------------------

/// A fixed-length array of `T` in shared memory, with a lock: Python's
/// `multiprocessing.Array`.
///
/// ```
/// use mproc::{Array, Process};
///
/// fn fill(a: Array<i32>) {
///     a.lock().unwrap().iter_mut().for_each(|x| *x = 7);
/// }
/// let a = Array::<i32>::new(4)?;
/// let mut p = Process::new(fill, (a.clone(),));
/// p.start()?;
/// p.join()?;
/// assert_eq!(a.to_vec()?, [7, 7, 7, 7]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Array<T> {
    block: Arc<Block>,
    len: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            block: Arc::clone(&self.block),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Array<T> {
    /// `len` zeroed elements.
    ///
    /// ```
    /// let a = mproc::Array::<u64>::new(3)?;
    /// assert_eq!(a.to_vec()?, [0, 0, 0]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(len: usize) -> Result<Array<T>, Error> {
        Array::of_kind(KIND_ARRAY, len)
    }

    fn of_kind(kind: u32, len: usize) -> Result<Array<T>, Error> {
        Ok(Array {
            block: block_for::<T>(kind, len)?,
            len,
            _t: PhantomData,
        })
    }

    /// A handle received from another process, checked to hold `T`s in a block of `kind`.
    fn deserialize_kind<'de, D: Deserializer<'de>>(d: D, kind: u32) -> Result<Self, D::Error> {
        let block = deserialize_block(d, kind)?;
        let len = check_block::<T, D::Error>(&block)?;
        Ok(Array {
            block,
            len,
            _t: PhantomData,
        })
    }

    /// A copy of `items`.
    ///
    /// ```
    /// let a = mproc::Array::from_slice(&[1u8, 2, 3])?;
    /// assert_eq!(a.len(), 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn from_slice(items: &[T]) -> Result<Array<T>, Error> {
        let a = Array::new(items.len())?;
        a.lock()?.copy_from_slice(items);
        Ok(a)
    }

    /// How many elements it has.
    ///
    /// ```
    /// assert_eq!(mproc::Array::<f32>::new(5)?.len(), 5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it has no elements.
    ///
    /// ```
    /// assert!(mproc::Array::<f32>::new(0)?.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A copy of the elements (taken under the lock).
    ///
    /// ```
    /// assert_eq!(mproc::Array::from_slice(&[4i16, 5])?.to_vec()?, [4, 5]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<T>, Error> {
        Ok(self.lock()?.to_vec())
    }

    /// Takes the array's lock; the guard derefs to the elements.
    ///
    /// ```
    /// let a = mproc::Array::from_slice(&[1u32, 2])?;
    /// a.lock()?[1] = 20;
    /// assert_eq!(a.to_vec()?, [1, 20]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>, Error> {
        let (held, owner_died) = take(&self.block)?;
        Ok(ArrayGuard {
            block: &self.block,
            held,
            len: self.len,
            owner_died,
            _t: PhantomData,
        })
    }
}

impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_block(&self.block, s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Array::deserialize_kind(d, KIND_ARRAY)
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array").field("len", &self.len).finish()
    }
}

/// An [`Array`]'s lock, held; derefs to the elements. Released on drop. (Forgotten, it holds
/// the lock as a forgotten [`LockGuard`](crate::LockGuard) does.)
///
/// ```
/// let a = mproc::Array::<u8>::new(2)?;
/// let g = a.lock()?;
/// assert_eq!(&*g, &[0, 0]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct ArrayGuard<'a, T> {
    block: &'a Block,
    held: Held<'a>,
    len: usize,
    owner_died: bool,
    _t: PhantomData<&'a mut [T]>,
}

impl<T> ArrayGuard<'_, T> {
    /// Whether the previous holder died holding the lock (elements may be half-written).
    ///
    /// ```
    /// assert!(!mproc::Array::<u8>::new(1)?.lock()?.owner_died());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        let len = self.len * std::mem::size_of::<T>();
        bytemuck::cast_slice(
            self.block
                .guarded_bytes_ref(&self.held, data_at::<T>(), len),
        )
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let len = self.len * std::mem::size_of::<T>();
        bytemuck::cast_slice_mut(
            self.block
                .guarded_bytes(&mut self.held, data_at::<T>(), len),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type DeError = serde::de::value::Error;

    /// What a process receiving a handle checks before it lends the elements out: a header a
    /// peer wrote (or a handle of another type) is an error, never a slice past the block.
    #[test]
    fn a_header_that_does_not_fit_its_block_is_refused() {
        let block = block_for::<u32>(KIND_ARRAY, 10).unwrap();
        assert_eq!(check_block::<u32, DeError>(&block).unwrap(), 10);
        assert!(check_block::<u64, DeError>(&block).is_err(), "another type");
        let header = block.view::<Header>(0);
        for len in [200, 1 << 40, u64::MAX] {
            header.len.store(len, Ordering::Relaxed);
            assert!(
                check_block::<u32, DeError>(&block).is_err(),
                "{len} elements"
            );
        }
        header.len.store(10, Ordering::Relaxed);
        header.size.store(0, Ordering::Relaxed);
        assert!(check_block::<u32, DeError>(&block).is_err(), "a size of 0");
    }
}
