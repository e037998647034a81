//! The memory behind mproc's shared objects (locks, events, values, ...): a memory file that
//! every process holding the object maps, with a small typed header, robust process-shared
//! mutexes, and futex words.
//!
//! Layout of a block: a [`BlockHeader`] (magic, kind, length), then what the kind puts there,
//! described by the kind's own [`shared_layout!`](super::layout::shared_layout) struct. A mutex
//! is a glibc `pthread_mutex_t` made process-shared and robust: when its owner dies holding it,
//! the kernel hands it to the next locker with `EOWNERDEAD`, which mproc reports as "the owner
//! died" instead of deadlocking.
//!
//! Unlike a pool's lanes, blocks are inherited by fork(2) children: a handle kept in a global
//! works in a forked child, as Python's objects do.
//!
//! A robust mutex that a thread holds is linked, by its address in this process, into that
//! thread's robust list, which glibc writes through at every lock and unlock of any robust
//! mutex and the kernel walks when the thread exits. Safe code can drop a block's last handle
//! while its mutex is held (an `RLock` never released, a guard passed to `mem::forget`): such a
//! block is left mapped for the rest of the process's life (see [`RobustMutex::held_here`]),
//! never unmapped under the list.

// Robust pthread mutexes (no rustix wrapper), fork, tgkill, and pointers into shared memory.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use super::layout::{SharedLayout, shared_layout};
use super::shm::Mapping;

const MAGIC: u32 = 0x6d70_7362; // "mpsb"

/// Where the header ends; the first offset a kind may use.
pub(crate) const HEADER: usize = 64;

shared_layout! {
    /// What every block starts with. The rest of its first 64 bytes ([`HEADER`]) is the kind's.
    pub(crate) struct BlockHeader {
        /// `MAGIC`, stored last when the block is made.
        magic: AtomicU32,
        kind: AtomicU32,
        /// The block's length in bytes, as its maker mapped it.
        len: AtomicU64,
    }
}
const _: () = assert!(std::mem::offset_of!(BlockHeader, magic) == 0);
const _: () = assert!(std::mem::offset_of!(BlockHeader, kind) == 4);
const _: () = assert!(std::mem::offset_of!(BlockHeader, len) == 8);
const _: () = assert!(std::mem::size_of::<BlockHeader>() <= HEADER);

/// A shared block: one mapping of one memory file, and the file (to pass it on).
#[derive(Debug)]
pub(crate) struct Block {
    map: Mapping,
    file: OwnedFd,
    /// Where its robust mutexes sit: the only ones [`Block::mutex_at`] lends, each checked
    /// before the block is unmapped.
    mutexes: &'static [usize],
}

impl Block {
    /// A zero-filled block of `len` bytes (at least [`HEADER`]) for objects of `kind`, with
    /// robust mutexes at `mutexes` (set up by the caller with [`RobustMutex::init`]).
    pub(crate) fn create(kind: u32, len: usize, mutexes: &'static [usize]) -> io::Result<Block> {
        let len = len.max(HEADER).next_multiple_of(64);
        let (map, file) = Mapping::create_inherited("mproc-shared", len)?;
        let mut block = Block {
            map,
            file: file.into_owned(),
            mutexes: &[],
        };
        assert!(block.fits(mutexes), "a mutex outside the block");
        block.mutexes = mutexes;
        let header = block.header();
        header.kind.store(kind, Ordering::Relaxed);
        header.len.store(len as u64, Ordering::Relaxed);
        header.magic.store(MAGIC, Ordering::Release);
        Ok(block)
    }

    /// Maps a block received from another process, checking that it is one of `kind` and has
    /// room for robust mutexes at `mutexes`.
    pub(crate) fn open(file: OwnedFd, kind: u32, mutexes: &'static [usize]) -> io::Result<Block> {
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
        let mut block = Block {
            map,
            file,
            mutexes: &[],
        };
        let header = block.header();
        if header.magic.load(Ordering::Acquire) != MAGIC
            || header.kind.load(Ordering::Relaxed) != kind
            || header.len.load(Ordering::Relaxed) != block.map.len() as u64
            || !block.fits(mutexes)
        {
            return Err(bad());
        }
        block.mutexes = mutexes;
        Ok(block)
    }

    /// Whether every mutex at `mutexes` lies inside the block, aligned.
    fn fits(&self, mutexes: &[usize]) -> bool {
        let size = std::mem::size_of::<RobustMutex>();
        mutexes.iter().all(|&at| {
            at % 64 == 0
                && at >= HEADER
                && at
                    .checked_add(size)
                    .is_some_and(|end| end <= self.map.len())
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn check(&self, at: usize, size: usize, align: usize) {
        assert!(
            at.is_multiple_of(align)
                && at
                    .checked_add(size)
                    .is_some_and(|end| end <= self.map.len()),
            "offset {at} (+{size}) outside the block or misaligned"
        );
    }

    fn header(&self) -> &BlockHeader {
        self.view(0)
    }

    /// The layout `T` at `at`, which the block's kind puts there (inside the block and
    /// aligned: a block's offsets are its kind's constants, so a miss is a bug, not input).
    pub(crate) fn view<T: SharedLayout>(&self, at: usize) -> &T {
        match self.map.view(at) {
            Ok(view) => view,
            Err(e) => panic!("a block's layout: {e}"),
        }
    }

    /// The robust mutex at `at` (one of the block's `mutexes`), set up once by
    /// [`RobustMutex::init`] when the block is created.
    pub(crate) fn mutex_at(&self, at: usize) -> &RobustMutex {
        // Only a declared mutex is checked before the block is unmapped.
        assert!(self.mutexes.contains(&at), "no mutex at offset {at}");
        // Not through `view`: its bounds and alignment checks cost an uncontended `Lock` a
        // tenth of its time, and a declared mutex was checked once, when the block was made.
        // SAFETY: a declared mutex, which `create` or `open` checked to lie inside the mapping,
        // 64-aligned; `RobustMutex` is a shared layout (a transparent `UnsafeCell` over the C
        // type, which glibc accesses with atomics across processes).
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

impl Mapping {
    /// The bytes `offset..offset + len`, writable, for the holder of the lock (`held`) under
    /// which every process writes them, and that keeps every honest reader off them until
    /// they are published (a queue frame being written). `InvalidInput` outside the mapping.
    pub(crate) fn locked_bytes<'a>(
        &'a self,
        held: &'a mut Held<'_>,
        offset: usize,
        len: usize,
    ) -> io::Result<&'a mut [u8]> {
        let _ = held;
        self.check_bytes(offset, len)?;
        // SAFETY: inside the mapping (checked). Exclusive for the borrow: the caller holds the
        // lock that guards these bytes (a `Held`, borrowed mutably here, so one slice at a
        // time), and no process reads or writes them by protocol until they are published.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(offset), len) })
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.mutexes.iter().any(|&at| self.mutex_at(at).held_here()) {
            self.map.keep_mapped();
        }
    }
}

impl AsFd for Block {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The longest a waiter sleeps before it looks at a lock again ([`RobustMutex::lock`]): what a
/// wake-up lost with a killed waiter costs the others.
pub(crate) const WAKE_LOST: std::time::Duration = std::time::Duration::from_millis(50);

/// When a waiter with `deadline` next looks again: [`WAKE_LOST`] from now, or its deadline if
/// sooner.
pub(crate) fn next_look(deadline: Option<Instant>) -> Instant {
    let slice = Instant::now() + WAKE_LOST;
    deadline.map_or(slice, |d| d.min(slice))
}

/// A process-shared, robust `pthread_mutex_t` living in a [`Block`].
#[repr(transparent)]
pub(crate) struct RobustMutex(UnsafeCell<libc::pthread_mutex_t>);

// SAFETY: glibc's mutex is made for concurrent use from threads and processes.
unsafe impl Sync for RobustMutex {}

impl std::fmt::Debug for RobustMutex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RobustMutex")
    }
}

// SAFETY: a `pthread_mutex_t` is plain C integers (any bit pattern is a value; a scribbled one
// makes glibc return an error or wait, not misbehave in Rust's sense), in an `UnsafeCell` that
// only glibc touches, with atomic instructions; no pointer, no `Drop`.
unsafe impl SharedLayout for RobustMutex {}

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
    ///
    /// It waits in slices of [`WAKE_LOST`], trying again after each: a release's wake-up goes
    /// to one waiter, and one killed between its wake-up and its take loses it for the others
    /// (the kernel passes it on only when it finds the lock free as it handles the death; a
    /// locker that came meanwhile, itself killed holding it, left it marked dead with no
    /// waiter flagged). A waiter so passed over takes the lock at its next try.
    pub(crate) fn lock(&self, deadline: Option<Instant>) -> io::Result<Option<(Held<'_>, Taken)>> {
        // Free (nearly always): no clock reading.
        if let Some(taken) = self.try_lock()? {
            return Ok(Some(taken));
        }
        loop {
            let at = monotonic_deadline(next_look(deadline));
            // SAFETY: the mutex was set up by `init` and lives as long as `self`; `at` is a
            // valid timespec on this frame.
            match unsafe { pthread_mutex_clocklock(self.0.get(), libc::CLOCK_MONOTONIC, &at) } {
                // One more try: glibc gives up when its sleep times out, even if the mutex
                // was released meanwhile (its wake-up late, or lost).
                libc::ETIMEDOUT => {
                    if let Some(taken) = self.try_lock()? {
                        return Ok(Some(taken));
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                }
                rc => return self.taken(rc),
            }
        }
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

    /// Whether a thread of this process may hold the mutex, through this mapping or another:
    /// then the memory it was locked in must stay mapped, since it is linked into that
    /// thread's robust list. Called when a mapping is about to go, so nothing of this process
    /// can be locking or unlocking it through that mapping.
    ///
    /// The robust-futex ABI puts the owner's thread id in the lock word (glibc's `__lock`,
    /// the mutex's first word, checked once per process by [`owner_in_first_word`]): a mutex
    /// this process holds names one of its threads there until released (a thread that exits
    /// holding it has it marked dead by the kernel, and its list is gone). An id of another
    /// process's thread, or a word another process scribbled, makes this at worst keep a
    /// mapping it could have dropped. No system call unless the mutex is held by someone.
    pub(crate) fn held_here(&self) -> bool {
        if !owner_in_first_word() {
            return true;
        }
        let tid = self.first_word().load(Ordering::Acquire) & FUTEX_TID_MASK;
        if tid == 0 {
            return false;
        }
        // SAFETY: tgkill with signal 0 sends nothing; it only says whether thread `tid`
        // belongs to this process.
        let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid as libc::pid_t, 0) };
        // Only ESRCH says "not ours"; any other failure (a seccomp filter) cannot tell.
        rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }

    /// glibc's lock word, where the robust-futex ABI keeps the owner's thread id.
    fn first_word(&self) -> &AtomicU32 {
        // SAFETY: `pthread_mutex_t` is at least 4-aligned and larger than 4 bytes; its first
        // field is glibc's `int __lock`, which every process changes only atomically.
        unsafe { &*self.0.get().cast::<AtomicU32>() }
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

/// The thread-id bits of a robust futex word (`FUTEX_TID_MASK` in linux/futex.h).
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;

/// Whether this C library keeps a held robust mutex's owner, and nothing else, in the mutex's
/// first word (glibc does; [`RobustMutex::held_here`] relies on it and, if it were ever not
/// so, assumes every mutex may be held). Checked once per process on a private mutex.
fn owner_in_first_word() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        // SAFETY: an all-zero `pthread_mutex_t` is a valid value to hand to
        // `pthread_mutex_init` (which `init` does before any other use).
        let probe = Box::new(RobustMutex(UnsafeCell::new(unsafe { std::mem::zeroed() })));
        if probe.init(false).is_err() {
            return false;
        }
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        let held = match probe.lock(None) {
            Ok(Some((held, _))) => held,
            _ => return false,
        };
        let while_held = probe.first_word().load(Ordering::Relaxed);
        drop(held);
        let after = probe.first_word().load(Ordering::Relaxed);
        // SAFETY: the mutex is set up, free, and unused from here on.
        unsafe { libc::pthread_mutex_destroy(probe.0.get()) };
        while_held == me && after == 0
    })
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

#[cfg(test)]
pub(crate) mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;

    pub(crate) const MUTEX: usize = 64;

    /// A block with a robust (recursive) mutex at 64, for tests.
    pub(crate) fn lock_block() -> Block {
        let block = Block::create(1, 256, &[MUTEX]).unwrap();
        block.mutex_at(MUTEX).init(true).unwrap();
        block
    }

    /// Runs `body` in a new process running only this test (`name`, its full path), and
    /// checks that it passed there: what it checks may crash the process it runs in.
    pub(crate) fn in_own_process(name: &str, body: impl FnOnce()) {
        const CHILD: &str = "MPROC_TEST_IN_OWN_PROCESS";
        if std::env::var_os(CHILD).is_some() {
            body();
            return;
        }
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name} did not finish in its own process");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        assert!(
            status.success(),
            "{name} in its own process: {status}\n{out}"
        );
        assert!(
            out.contains("1 passed"),
            "{name} did not run in its own process:\n{out}"
        );
    }

    /// A mutex released while a thread waits for it, its wake-up coming only after the
    /// waiter's deadline (here: never; the lock word is cleared without one, as by an owner
    /// whose wake-up is late), is taken all the same: the waiter tries once more when its
    /// sleep times out. Run in a process of its own: it forges glibc's lock word.
    #[test]
    fn a_mutex_released_as_the_deadline_passes_is_taken() {
        in_own_process(
            "sys::shared::tests::a_mutex_released_as_the_deadline_passes_is_taken",
            || {
                for recursive in [false, true] {
                    let block = Block::create(1, 256, &[MUTEX]).unwrap();
                    let mutex = block.mutex_at(MUTEX);
                    mutex.init(recursive).unwrap();
                    // Held, as far as glibc can tell, by this thread.
                    let word = mutex.first_word();
                    word.store(rustix::thread::gettid().as_raw_nonzero().get() as u32, Ordering::SeqCst);
                    std::thread::scope(|s| {
                        let waiter = s.spawn(|| {
                            let deadline = Instant::now() + Duration::from_millis(300);
                            mutex.lock(Some(deadline)).unwrap().map(|(held, _)| drop(held)).is_some()
                        });
                        // Asleep in the kernel: glibc marks the word as waited on first.
                        let asleep = Instant::now() + Duration::from_secs(10);
                        while word.load(Ordering::SeqCst) & libc::FUTEX_WAITERS == 0 {
                            assert!(Instant::now() < asleep, "the waiter never slept");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                        word.store(0, Ordering::SeqCst);
                        assert!(waiter.join().unwrap(), "recursive {recursive}: not taken");
                    });
                }
            },
        );
    }

    /// A waiter whose wake-up went to a waiter killed before it took the mutex (or whose
    /// mutex an owner killed holding it left marked dead, with no waiter flagged) takes the
    /// mutex at its next look, without a deadline of its own. Forged here: the lock word
    /// changed under a sleeping waiter, with no wake-up. Before the waits in slices, it slept
    /// for ever. Run in a process of its own: it forges glibc's lock word.
    #[test]
    fn a_waiter_passed_over_by_a_lost_wake_up_takes_the_mutex() {
        in_own_process(
            "sys::shared::tests::a_waiter_passed_over_by_a_lost_wake_up_takes_the_mutex",
            || {
                let cases = [(0, Taken::Clean), (libc::FUTEX_OWNER_DIED, Taken::OwnerDied)];
                for (left, want) in cases {
                    // Leaked: a waiter that never wakes must not hold the test's scope.
                    let block: &'static Block =
                        Box::leak(Box::new(Block::create(1, 256, &[MUTEX]).unwrap()));
                    let mutex = block.mutex_at(MUTEX);
                    mutex.init(false).unwrap();
                    let word = mutex.first_word();
                    // Held, as far as glibc can tell, by this thread.
                    word.store(rustix::thread::gettid().as_raw_nonzero().get() as u32, Ordering::SeqCst);
                    let (tx, rx) = std::sync::mpsc::channel();
                    std::thread::spawn(move || {
                        let got = mutex.lock(None).unwrap().map(|(held, taken)| {
                            drop(held);
                            taken
                        });
                        let _ = tx.send(got);
                    });
                    let asleep = Instant::now() + Duration::from_secs(10);
                    while word.load(Ordering::SeqCst) & libc::FUTEX_WAITERS == 0 {
                        assert!(Instant::now() < asleep, "the waiter never slept");
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    word.store(left, Ordering::SeqCst);
                    let got = rx
                        .recv_timeout(Duration::from_secs(5))
                        .unwrap_or_else(|_| panic!("left {left:#x}: the waiter still sleeps"));
                    assert_eq!(got, Some(want), "left {left:#x}");
                }
            },
        );
    }

    /// A copy of the block's descriptor, as another process would receive it.
    fn file_of(block: &Block) -> OwnedFd {
        block.as_fd().try_clone_to_owned().unwrap()
    }

    fn refused(opened: io::Result<Block>) {
        let e = opened.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    }

    #[test]
    fn a_block_opens_only_as_its_kind_with_its_header_intact() {
        let block = Block::create(5, 256, &[MUTEX]).unwrap();
        assert_eq!(block.len(), 256);
        let again = Block::open(file_of(&block), 5, &[MUTEX]).unwrap();
        again.view::<AtomicU64>(HEADER).store(9, Ordering::Relaxed);
        assert_eq!(
            block.view::<AtomicU64>(HEADER).load(Ordering::Relaxed),
            9,
            "the same memory"
        );
        refused(Block::open(file_of(&block), 6, &[MUTEX]));
        // Mutexes where the block has no room for them, or off their alignment.
        refused(Block::open(file_of(&block), 5, &[256]));
        refused(Block::open(file_of(&block), 5, &[72]));
        refused(Block::open(file_of(&block), 5, &[0]));
        // A peer's writes to the header.
        let header = block.header();
        header.len.store(4096, Ordering::Relaxed);
        refused(Block::open(file_of(&block), 5, &[MUTEX]));
        header.len.store(256, Ordering::Relaxed);
        header.magic.store(0x6d70_7371, Ordering::Relaxed);
        refused(Block::open(file_of(&block), 5, &[MUTEX]));
        header.magic.store(MAGIC, Ordering::Relaxed);
        assert!(Block::open(file_of(&block), 5, &[MUTEX]).is_ok());
    }

    #[test]
    fn a_file_too_small_or_of_another_shape_is_not_a_block() {
        let (_map, small) = Mapping::create_inherited("mproc-test", 32).unwrap();
        refused(Block::open(small.into_owned(), 1, &[]));
        // Large enough, all zero: no magic.
        let (_map, zeros) = Mapping::create_inherited("mproc-test", 4096).unwrap();
        refused(Block::open(zeros.into_owned(), 1, &[]));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn a_view_outside_the_block_is_a_bug_caught_at_once() {
        lock_block().view::<AtomicU64>(256);
    }

    #[test]
    fn held_here_knows_this_process_s_holds_from_others() {
        assert!(
            owner_in_first_word(),
            "glibc keeps a robust mutex's owner in its first word"
        );
        let block = lock_block();
        let m = block.mutex_at(MUTEX);
        assert!(!m.held_here(), "free");
        let (held, _) = m.lock(None).unwrap().unwrap();
        assert!(m.held_here(), "held by this thread");
        drop(held);
        assert!(!m.held_here(), "released");

        let (took, taken) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            s.spawn(move || {
                let held = m.lock(None).unwrap().unwrap();
                took.send(()).unwrap();
                let _ = released.recv_timeout(Duration::from_secs(20));
                drop(held);
            });
            taken.recv_timeout(Duration::from_secs(20)).unwrap();
            assert!(m.held_here(), "held by another thread of this process");
            release.send(()).unwrap();
        });
        assert!(!m.held_here());

        let (read, write) = crate::sys::fd::pipe().unwrap();
        // SAFETY: the child only locks a mutex (no allocation), writes to a pipe and sleeps,
        // all safe after fork in a multithreaded process; it never returns.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
        if pid == 0 {
            let held = m.lock(None);
            // SAFETY: writes one byte from a valid buffer; then sleeps until killed.
            unsafe {
                libc::write(write.as_raw_fd(), [1u8].as_ptr().cast(), 1);
                libc::sleep(60);
                libc::_exit(if held.is_ok() { 0 } else { 1 })
            }
        }
        drop(write);
        let mut byte = [0u8];
        let deadline = Instant::now() + Duration::from_secs(20);
        crate::sys::fd::poll_read(&[read.as_fd()], Some(deadline)).unwrap();
        // SAFETY: reads at most one byte into a valid buffer, without blocking: the pipe is
        // readable (the child wrote once it held the mutex, or died) or it is empty and the
        // read fails, which the assertion below reports.
        let n = unsafe {
            libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
            libc::read(read.as_raw_fd(), byte.as_mut_ptr().cast(), 1)
        };
        let held_elsewhere = m.held_here();
        // SAFETY: kills and reaps the child made above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert_eq!(n, 1, "the child took the mutex");
        assert!(!held_elsewhere, "held by another process");
        let (_held, taken) = m.lock(None).unwrap().unwrap();
        assert_eq!(taken, Taken::OwnerDied);
    }
}
