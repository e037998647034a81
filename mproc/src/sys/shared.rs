//! The memory behind mproc's shared objects (locks, events, values, ...): a memory file that
//! every process holding the object maps, with a small typed header, robust process-shared
//! mutexes, and futex words.
//!
//! Layout of a block: `[magic u32][kind u32][len u64]` then what the kind puts there. A mutex
//! is a glibc `pthread_mutex_t` made process-shared and robust: when its owner dies holding it,
//! the kernel hands it to the next locker with `EOWNERDEAD`, which mproc reports as "the owner
//! died" instead of deadlocking.
//!
//! Unlike a pool's lanes, blocks are inherited by fork(2) children: a handle kept in a global
//! works in a forked child, as Python's objects do.

use std::cell::UnsafeCell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::shm::Mapping;

const MAGIC: u32 = 0x6d70_7362; // "mpsb"

/// Where the header ends; the first offset a kind may use.
pub(crate) const HEADER: usize = 64;

/// A shared block: one mapping of one memory file, and the file (to pass it on).
#[derive(Debug)]
pub(crate) struct Block {
    map: Mapping,
    file: OwnedFd,
}

impl Block {
    /// A zero-filled block of `len` bytes (at least [`HEADER`]) for objects of `kind`.
    pub(crate) fn create(kind: u32, len: usize) -> io::Result<Block> {
        let len = len.max(HEADER).next_multiple_of(64);
        let (map, file) = Mapping::create_inherited("mproc-shared", len)?;
        let block = Block {
            map,
            file: file.into_owned(),
        };
        block.u32_at(4).store(kind, Ordering::Relaxed);
        block.u64_at(8).store(len as u64, Ordering::Relaxed);
        block.u32_at(0).store(MAGIC, Ordering::Release);
        Ok(block)
    }

    /// Maps a block received from another process, checking that it is one of `kind`.
    pub(crate) fn open(file: OwnedFd, kind: u32) -> io::Result<Block> {
        let map = Mapping::open_inherited(file.as_fd())?;
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not an mproc object of this kind",
            )
        };
        if map.len() < HEADER {
            return Err(bad());
        }
        let block = Block { map, file };
        if block.u32_at(0).load(Ordering::Acquire) != MAGIC
            || block.u32_at(4).load(Ordering::Relaxed) != kind
            || block.u64_at(8).load(Ordering::Relaxed) != block.map.len() as u64
        {
            return Err(bad());
        }
        Ok(block)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn check(&self, at: usize, size: usize, align: usize) {
        assert!(
            at % align == 0
                && at
                    .checked_add(size)
                    .is_some_and(|end| end <= self.map.len()),
            "offset {at} (+{size}) outside the block or misaligned"
        );
    }

    /// A 32-bit word at `at` (4-aligned, inside the block).
    pub(crate) fn u32_at(&self, at: usize) -> &AtomicU32 {
        self.check(at, 4, 4);
        // SAFETY: checked to lie inside the mapping and be aligned; the mapping lives as long
        // as `self`; every process touches these words only through atomics.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU32>() }
    }

    /// A 64-bit word at `at` (8-aligned, inside the block).
    pub(crate) fn u64_at(&self, at: usize) -> &AtomicU64 {
        self.check(at, 8, 8);
        // SAFETY: as for `u32_at`.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU64>() }
    }

    /// The robust mutex at `at` (64-aligned, inside the block), set up once by
    /// [`RobustMutex::init`] when the block is created.
    pub(crate) fn mutex_at(&self, at: usize) -> &RobustMutex {
        self.check(at, std::mem::size_of::<RobustMutex>(), 64);
        // SAFETY: inside the mapping and aligned (checked); `RobustMutex` is a transparent
        // `UnsafeCell` over the C type, which glibc accesses with atomics across processes.
        unsafe { &*self.map.as_ptr().add(at).cast::<RobustMutex>() }
    }

    /// The bytes at `at..at+len`, for the holder of a mutex that guards them.
    pub(crate) fn guarded_bytes<'a>(
        &'a self,
        held: &'a mut Held<'_>,
        at: usize,
        len: usize,
    ) -> &'a mut [u8] {
        let _ = held;
        self.check(at, len, 1);
        // SAFETY: inside the mapping (checked). Exclusive for the borrow: the caller holds the
        // mutex that guards these bytes (a `Held`, borrowed mutably here, so one slice at a
        // time), and every process writes them only while holding it.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(at), len) }
    }

    /// The bytes at `at..at+len`, read-only, for the holder of a mutex that guards them.
    pub(crate) fn guarded_bytes_ref<'a>(
        &'a self,
        held: &'a Held<'_>,
        at: usize,
        len: usize,
    ) -> &'a [u8] {
        let _ = held;
        self.check(at, len, 1);
        // SAFETY: inside the mapping (checked); nobody writes them while the caller holds the
        // guarding mutex (and this shared borrow of its `Held` excludes a mutable one here).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at), len) }
    }
}

impl AsFd for Block {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A process-shared, robust `pthread_mutex_t` living in a [`Block`].
#[repr(transparent)]
pub(crate) struct RobustMutex(UnsafeCell<libc::pthread_mutex_t>);

// SAFETY: glibc's mutex is made for concurrent use from threads and processes.
unsafe impl Sync for RobustMutex {}

/// How a lock was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    Clean,
    /// Its previous owner died holding it; the data it guards may be half-updated.
    OwnerDied,
}

/// Proof that this thread holds a [`RobustMutex`]; unlocks on drop. Not `Send`: a pthread
/// mutex is released by the thread that took it.
pub(crate) struct Held<'a> {
    mutex: &'a RobustMutex,
    _not_send: PhantomData<*const ()>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: this thread holds the mutex (that is what a `Held` proves).
        unsafe { libc::pthread_mutex_unlock(self.mutex.0.get()) };
    }
}

unsafe extern "C" {
    /// glibc 2.30+: like `pthread_mutex_timedlock`, on a chosen clock.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clock: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

impl RobustMutex {
    /// Sets the mutex up in fresh (zeroed, not yet shared) memory: process-shared, robust,
    /// error-checking or recursive.
    pub(crate) fn init(&self, recursive: bool) -> io::Result<()> {
        // SAFETY: the attribute object lives on this frame and is destroyed before it ends;
        // the mutex is not yet visible to any other thread or process.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            let check = |rc: libc::c_int| match rc {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            };
            check(libc::pthread_mutexattr_init(&mut attr))?;
            let kind = if recursive {
                libc::PTHREAD_MUTEX_RECURSIVE
            } else {
                libc::PTHREAD_MUTEX_ERRORCHECK
            };
            let set = check(libc::pthread_mutexattr_settype(&mut attr, kind))
                .and(check(libc::pthread_mutexattr_setpshared(
                    &mut attr,
                    libc::PTHREAD_PROCESS_SHARED,
                )))
                .and(check(libc::pthread_mutexattr_setrobust(
                    &mut attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                )))
                .and(check(libc::pthread_mutex_init(self.0.get(), &attr)));
            libc::pthread_mutexattr_destroy(&mut attr);
            set
        }
    }

    /// Takes the mutex, waiting until `deadline`: `Ok(None)` when it passed.
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> io::Result<Option<(Held<'_>, Taken)>> {
        let rc = match deadline {
            // SAFETY: the mutex was set up by `init` and lives as long as `self`.
            None => unsafe { libc::pthread_mutex_lock(self.0.get()) },
            Some(d) => {
                let at = monotonic_deadline(d);
                // SAFETY: as above; `at` is a valid timespec on this frame.
                unsafe { pthread_mutex_clocklock(self.0.get(), libc::CLOCK_MONOTONIC, &at) }
            }
        };
        self.taken(rc)
    }

    /// Takes the mutex if it is free now.
    pub(crate) fn try_lock(&self) -> io::Result<Option<(Held<'_>, Taken)>> {
        // SAFETY: the mutex was set up by `init` and lives as long as `self`.
        let rc = unsafe { libc::pthread_mutex_trylock(self.0.get()) };
        self.taken(if rc == libc::EBUSY {
            libc::ETIMEDOUT
        } else {
            rc
        })
    }

    fn taken(&self, rc: libc::c_int) -> io::Result<Option<(Held<'_>, Taken)>> {
        let held = || Held {
            mutex: self,
            _not_send: PhantomData,
        };
        match rc {
            0 => Ok(Some((held(), Taken::Clean))),
            libc::EOWNERDEAD => {
                // The dead owner's state is ours to judge; the lock itself is usable again.
                // SAFETY: this thread holds the mutex (EOWNERDEAD hands it over).
                unsafe { libc::pthread_mutex_consistent(self.0.get()) };
                Ok(Some((held(), Taken::OwnerDied)))
            }
            libc::ETIMEDOUT => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }

    /// Releases a hold taken with [`Held`] forgotten (an `RLock` released by `release()`).
    /// `Err(EPERM)` when this thread does not hold it.
    pub(crate) fn unlock(&self) -> io::Result<()> {
        // SAFETY: the mutex was set up by `init`; glibc checks ownership for error-checking,
        // recursive and robust mutexes and returns EPERM otherwise.
        match unsafe { libc::pthread_mutex_unlock(self.0.get()) } {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// `deadline` as an absolute CLOCK_MONOTONIC time (what `Instant` measures on Linux).
fn monotonic_deadline(deadline: Instant) -> libc::timespec {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec to a valid location.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let mut sec = now
        .tv_sec
        .saturating_add(left.as_secs().min(i64::MAX as u64 / 2) as libc::time_t);
    let mut nsec = now.tv_nsec + left.subsec_nanos() as libc::c_long;
    if nsec >= 1_000_000_000 {
        sec = sec.saturating_add(1);
        nsec -= 1_000_000_000;
    }
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}
