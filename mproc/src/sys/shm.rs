//! Shared memory: anonymous memory files (memfd) mapped into every process that holds one.
//!
//! A [`Mapping`] is created in one process, its descriptor crosses to another (inherited, or
//! sent with `SCM_RIGHTS`), and the other maps the same pages with [`Mapping::open`]. Nothing
//! has a name in the file system, so nothing is left behind when every process is gone.
//!
//! Touching a mapped page past the end of its file kills the process (`SIGBUS`), and any
//! holder of a descriptor can shorten a file. So every memory file mproc makes is sealed
//! against shrinking (`F_SEAL_SHRINK`), and every one it receives is mapped only once it is
//! seen to be sealed: a sender cannot pull pages from under its receiver. (Named shared memory,
//! which other programs make too, cannot be sealed: see [`Mapping::open_named`].)

// Mapping and unmapping memory, and reaching into it through pointers; name_to_handle_at
// (no rustix wrapper); leases (F_SETLEASE, F_GETLEASE: no rustix wrapper).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use rustix::fs::{FileType, Mode, OFlags, SealFlags, Stat};
use rustix::io::Errno;
use rustix::mm::{Advice, MapFlags, ProtFlags};

use super::fd::{self, InternalFd};

/// A shared, read-write mapping of a whole memory file, unmapped on drop.
///
/// mproc's own mappings (pool lanes) are made with `MADV_DONTFORK`: a child made with fork(2)
/// does not inherit them, so they only live in the processes that opened them on purpose.
/// User objects' mappings are inherited, as Python's are.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// For a mapping fork children do not inherit (`MADV_DONTFORK`): the fork generation that
    /// mapped it. A fork child does not have it, and must not unmap whatever it has at that
    /// address since.
    private_to: Option<u64>,
    /// Left mapped when dropped (see [`Mapping::keep_mapped`]).
    kept: bool,
}

// SAFETY: the mapping is plain memory, valid until drop in whichever thread drops it; the
// types built on it decide how the bytes are shared (atomics, or one writer at a time).
unsafe impl Send for Mapping {}
// SAFETY: as above. Through `&Mapping`, shared bytes are read and written only with atomics
// (`word`, `read_at`, `write_at`, typed views of atomics) or raw copies into private memory
// (sys/layout.rs); `&mut [u8]` is lent only under a lock (`locked_bytes`); raw pointers are
// the caller's business.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a zero-filled memory file of `len` bytes and maps it. The descriptor is listed
    /// as internal (a fork child closes it) and is only needed to share the mapping.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<(Mapping, InternalFd)> {
        Mapping::create_as(name, len, false)
    }

    /// Like [`Mapping::create`], but fork children inherit the mapping (for user objects).
    pub(crate) fn create_inherited(name: &str, len: usize) -> io::Result<(Mapping, InternalFd)> {
        Mapping::create_as(name, len, true)
    }

    /// A memory file of `len` bytes that may grow (never shrink), mapped with `reserve` bytes
    /// of address space so that growth made by any process is seen by every mapping without
    /// remapping. Bytes past the file's current size must not be touched (SIGBUS). Fork
    /// children inherit it.
    pub(crate) fn create_growable(
        name: &str,
        len: usize,
        reserve: usize,
    ) -> io::Result<(Mapping, OwnedFd)> {
        let file = memfd(name, len)?.into_owned();
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::SEAL)?;
        let map = Mapping::map(file.as_fd(), reserve.max(len), true)?;
        Ok((map, file))
    }

    /// Maps a memory file made by [`Mapping::create_growable`] elsewhere with `reserve` bytes
    /// of address space, after checking that nobody can shrink it. Returns the mapping and the
    /// file's current size.
    pub(crate) fn open_growable(
        file: BorrowedFd<'_>,
        reserve: usize,
    ) -> io::Result<(Mapping, usize)> {
        require_unshrinkable(file)?;
        let len = file_len(file)?;
        let map = Mapping::map(file, reserve.max(len), true)?;
        Ok((map, len))
    }

    fn create_as(name: &str, len: usize, inherit: bool) -> io::Result<(Mapping, InternalFd)> {
        let file = memfd(name, len)?;
        // Its size is fixed from now on: a process that maps it can trust the size it saw, and
        // no holder of the descriptor can shrink it under another's mapping (SIGBUS).
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        let map = Mapping::map(file.as_fd(), len, inherit)?;
        Ok((map, file))
    }

    /// Maps the whole memory file `file` (as created by [`Mapping::create`] elsewhere).
    /// `InvalidData` if it could shrink (see the module docs).
    pub(crate) fn open(file: BorrowedFd<'_>) -> io::Result<Mapping> {
        require_unshrinkable(file)?;
        Mapping::open_as(file, false)
    }

    /// Like [`Mapping::open`], but fork children inherit the mapping (for user objects).
    pub(crate) fn open_inherited(file: BorrowedFd<'_>) -> io::Result<Mapping> {
        require_unshrinkable(file)?;
        Mapping::open_as(file, true)
    }

    /// Maps the whole of `file`, a named shared memory file, which fork children inherit. Such
    /// a file cannot be sealed, so a process that shortens it makes every access past its new
    /// end fault: the caller documents that, as for any mapped file.
    pub(crate) fn open_named(file: BorrowedFd<'_>) -> io::Result<Mapping> {
        Mapping::open_as(file, true)
    }

    /// Maps the first `len` bytes of the memory file `file` (made by [`Mapping::create`]
    /// elsewhere), with every page faulted in at once (`MAP_POPULATE`: one pass in the kernel
    /// instead of a fault per page). For a message about to be read whole. `InvalidData` if
    /// the file is shorter or could shrink.
    pub(crate) fn open_prefix(file: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        require_unshrinkable(file)?;
        if file_len(file)? < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a memory file shorter than its message",
            ));
        }
        Mapping::map_with(file, len, false, MapFlags::POPULATE)
    }

    fn open_as(file: BorrowedFd<'_>, inherit: bool) -> io::Result<Mapping> {
        let len = file_len(file)?;
        Mapping::map(file, len, inherit)
    }

    fn map(file: BorrowedFd<'_>, len: usize, inherit: bool) -> io::Result<Mapping> {
        Mapping::map_with(file, len, inherit, MapFlags::empty())
    }

    fn map_with(
        file: BorrowedFd<'_>,
        len: usize,
        inherit: bool,
        flags: MapFlags,
    ) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // A fork launch holds the internal list's lock across fork(2): held from the mapping
        // to its advice, no child of another thread's fork can inherit a mapping meant not to
        // be inherited (which would, say, make a `Frozen`'s write seal fail with EBUSY). The
        // pages are faulted in after, not under the lock (`MAP_POPULATE` of a large message
        // would hold up every fork and internal descriptor meanwhile).
        let populate = !inherit && flags.contains(MapFlags::POPULATE);
        let flags = match populate {
            true => flags.difference(MapFlags::POPULATE),
            false => flags,
        };
        let no_fork = (!inherit).then(fd::lock_internal);
        let ptr = map_shared(file, len, ProtFlags::READ | ProtFlags::WRITE, flags)?;
        let map = Mapping {
            ptr: NonNull::new(ptr.cast()).ok_or(io::ErrorKind::InvalidData)?,
            len,
            private_to: (!inherit).then(super::proc::fork_generation),
            kept: false,
        };
        if !inherit {
            // SAFETY: advice on exactly the range just mapped, which changes no byte in it.
            unsafe { rustix::mm::madvise(ptr, len, Advice::LinuxDontFork)? };
        }
        drop(no_fork);
        if populate {
            // SAFETY: advice on exactly the range just mapped (all inside the file, which the
            // caller checked), which changes no byte in it. Only a hint, as `MAP_POPULATE` is:
            // before Linux 5.14 the pages are faulted in one by one instead.
            let _ = unsafe { rustix::mm::madvise(ptr, len, Advice::LinuxPopulateRead) };
        }
        Ok(map)
    }

    /// The first byte. Valid for [`Mapping::len`] bytes while `self` lives; other processes
    /// may write the same bytes at any time.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Leaves the pages mapped when `self` is dropped, for the rest of the process's life: for
    /// memory that something outside Rust's ownership may still point into (a robust mutex on
    /// a thread's robust list, which glibc and the kernel follow by address).
    pub(crate) fn keep_mapped(&mut self) {
        self.kept = true;
    }

    /// Copies `buf.len()` bytes at `offset` out of the mapping. `InvalidInput` if they are not
    /// all inside it.
    ///
    /// Other threads and processes may write the same bytes at the same time, so the copy is
    /// made of relaxed atomic loads (8 bytes at a time where aligned): a racing write makes the
    /// copy see a mix of old and new words. (A racing copy may use a byte where this one uses
    /// the word around it; mixed-size atomic accesses are outside Rust's formal model but are
    /// single instructions on every target Linux runs, never a torn byte.)
    pub(crate) fn read_at(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        use std::sync::atomic::{AtomicU8, AtomicU64};
        self.check_range(offset, buf.len())?;
        let base = self.ptr.as_ptr() as usize + offset;
        for (at, width) in pieces(base, buf.len()) {
            // SAFETY: `base + at` and its `width` bytes lie inside the mapping (range checked
            // above; 8-byte pieces are 8-aligned), valid while `self` lives; shared bytes are
            // only accessed through atomics here.
            unsafe {
                if width == 8 {
                    let word = (*((base + at) as *const AtomicU64)).load(Ordering::Relaxed);
                    buf[at..at + 8].copy_from_slice(&word.to_ne_bytes());
                } else {
                    buf[at] = (*((base + at) as *const AtomicU8)).load(Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`. `InvalidInput` if it does not fit.
    /// Relaxed atomic stores, for the reasons given at [`Mapping::read_at`].
    pub(crate) fn write_at(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        use std::sync::atomic::{AtomicU8, AtomicU64};
        self.check_range(offset, data.len())?;
        let base = self.ptr.as_ptr() as usize + offset;
        for (at, width) in pieces(base, data.len()) {
            // SAFETY: as in `read_at`; the mapping is writable.
            unsafe {
                if width == 8 {
                    let word = u64::from_ne_bytes(data[at..at + 8].try_into().expect("8 bytes"));
                    (*((base + at) as *const AtomicU64)).store(word, Ordering::Relaxed);
                } else {
                    (*((base + at) as *const AtomicU8)).store(data[at], Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    fn check_range(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::ErrorKind::InvalidInput.into()),
        }
    }

    /// The bytes from `from` on, of a mapping this process alone uses now (a message being
    /// written before it is sent, or after its receiver said it is done with it, or answered).
    pub(crate) fn bytes_mut_from(&mut self, from: usize) -> &mut [u8] {
        assert!(from <= self.len, "past the end of a mapping");
        // SAFETY: valid for `len - from` bytes past `from` while `self` lives; exclusive for
        // the borrow of `&mut self`. Callers write a message before they send its file, or
        // again only after the receiver stored its done word (outside this range) and so reads
        // no more, or (a pool task's arguments, `memfile::TaskFile`) once the worker sent them
        // has answered (it decodes them first), a file sent and not answered being never
        // written again. Another process writing anyway changes bytes, never this process's
        // memory safety: the codec only writes through this slice.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(from), self.len - from) }
    }

    /// Whether this process has the mapping: `false` in a fork child of the process that made
    /// one fork children do not inherit (`MADV_DONTFORK`), where nothing may touch it.
    pub(crate) fn is_in_this_process(&self) -> bool {
        self.private_to
            .is_none_or(|g| g == super::proc::fork_generation())
    }

    /// The 32-bit word at `at` (4-aligned, inside the mapping), shared through atomics.
    pub(crate) fn word(&self, at: usize) -> &std::sync::atomic::AtomicU32 {
        match self.view(at) {
            Ok(word) => word,
            Err(e) => panic!("a word outside a mapping: {e}"),
        }
    }
}

/// Where POSIX named shared memory lives: `shm_open("/name")` opens `/dev/shm/name` (glibc).
const SHM_DIR: &str = "/dev/shm";

/// Named shared memory (POSIX, in `/dev/shm`): `name` is given without its leading slash.
///
/// Creates a file of `len` zero bytes in `/dev/shm` that has no name yet (so that its identity
/// can be recorded before anyone can see it; [`shm_link`] names it), readable and writable by
/// this user only, and allocates its pages at once, so that a full `/dev/shm` is an `ENOSPC`
/// error here rather than a `SIGBUS` at the first write into the mapping.
///
/// See open(2) (`O_TMPFILE`), posix_fallocate(3).
pub(crate) fn shm_create_unnamed(len: usize) -> io::Result<OwnedFd> {
    let flags = OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC;
    let file = rustix::fs::open(SHM_DIR, flags, Mode::RUSR | Mode::WUSR)?;
    let size = file_size(len).map_err(|_| io::Error::from(Errno::FBIG))?;
    rustix::fs::ftruncate(&file, size)?;
    // fallocate(2) itself, which tmpfs supports (posix_fallocate(3) would only add a slow
    // fallback for file systems that do not).
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)?;
    Ok(file)
}

/// Gives the unnamed file `file` (from [`shm_create_unnamed`]) the name `name`;
/// `AlreadyExists` if the name is taken.
///
/// See linkat(2) (`AT_SYMLINK_FOLLOW` through `/proc/self/fd`, as open(2) describes for
/// `O_TMPFILE`).
pub(crate) fn shm_link(file: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    let to = shm_file_path(name)?;
    let (cwd, follow) = (rustix::fs::CWD, rustix::fs::AtFlags::SYMLINK_FOLLOW);
    Ok(rustix::fs::linkat(cwd, from, cwd, to, follow)?)
}

/// A new, read-only open file description of `file` (not a duplicate descriptor of the same
/// description): for a process that must tell its own opening of the file from everyone
/// else's (see [`try_write_lease`]).
pub(crate) fn reopen_read_only(file: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    reopen_as(file, OFlags::RDONLY)
}

/// A new open file description of `file` for reading and writing (not a duplicate descriptor
/// of the same description): one whose lifetime, and the locks it holds, are its own (see
/// `queue::ring`'s handles in flight).
pub(crate) fn reopen(file: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    reopen_as(file, OFlags::RDWR)
}

/// A new open file description of `file`, with `access`, through `/proc/self/fd`.
fn reopen_as(file: BorrowedFd<'_>, access: OFlags) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    Ok(rustix::fs::open(path, access | OFlags::CLOEXEC, Mode::empty())?)
}

/// Opens the named shared memory `name` read-only, without following a symbolic link or
/// blocking (on a FIFO put in its place), and returns it with its owner's user id.
/// `InvalidData` if it is not a regular file.
pub(crate) fn shm_open_read_only(name: &str) -> io::Result<(OwnedFd, u32)> {
    let file = open_named(name, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let st = stat(file.as_fd())?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::ErrorKind::InvalidData.into());
    }
    Ok((file, st.st_uid))
}

/// Asks for a write lease on `file`: granted (true) only if no other open file description of
/// the file exists anywhere — no other process, and no other opening in this one, has it open,
/// mapped, or in a message in flight; false when one does. While it is held, anyone opening
/// the file waits until [`release_lease`] (and this process gets `SIGIO`, which it must
/// ignore). The caller must own the file.
///
/// See fcntl(2), "Leases".
pub(crate) fn try_write_lease(file: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: fcntl on a borrowed, open descriptor, with an integer argument.
    match unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) } {
        -1 => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EAGAIN) => Ok(false),
            e => Err(e),
        },
        _ => Ok(true),
    }
}

/// Whether this opening still holds the write lease [`try_write_lease`] took, unbroken: while
/// another process's open waits for it to be given back (or once the kernel has taken it back,
/// `/proc/sys/fs/lease-break-time` later), the kernel reports the type it is being broken to.
///
/// See fcntl(2), `F_GETLEASE`.
pub(crate) fn holds_write_lease(file: BorrowedFd<'_>) -> bool {
    // SAFETY: fcntl on a borrowed, open descriptor, with no argument.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLEASE) == libc::F_WRLCK }
}

/// Gives up the lease [`try_write_lease`] took.
pub(crate) fn release_lease(file: BorrowedFd<'_>) {
    // SAFETY: fcntl on a borrowed, open descriptor, with an integer argument.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
}

/// Opens the existing named shared memory `name` for reading and writing.
///
/// See shm_open(3).
pub(crate) fn shm_open(name: &str) -> io::Result<OwnedFd> {
    open_named(name, OFlags::RDWR)
}

/// Removes the name `name`; memory stays mapped wherever it is, until its last mapping and
/// descriptor are gone.
///
/// See shm_unlink(3).
pub(crate) fn shm_unlink(name: &str) -> io::Result<()> {
    match rustix::fs::unlink(shm_file_path(name)?) {
        // As glibc's shm_unlink(3) reports it.
        Err(Errno::PERM) => Err(Errno::ACCESS.into()),
        done => Ok(done?),
    }
}

/// Which file `name` now names (device and inode). It does not open the file (an opening
/// would wait for a lease, and would count as a holder) nor follow a symbolic link.
///
/// See stat(2).
pub(crate) fn shm_identity(name: &str) -> io::Result<(u64, u64)> {
    Ok(identity_of(&rustix::fs::lstat(shm_file_path(name)?)?))
}

/// Gives the memory of `len` bytes of `file` from `offset` back to the system (they read as
/// zeros again; the file keeps its size, so no mapping of it faults).
///
/// See fallocate(2) (`FALLOC_FL_PUNCH_HOLE`).
pub(crate) fn release_pages(file: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let punch = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    Ok(rustix::fs::fallocate(file, punch, offset, len)?)
}

/// How many bytes of memory `file` holds (its allocated blocks).
#[cfg(test)]
pub(crate) fn allocated_bytes(file: BorrowedFd<'_>) -> u64 {
    rustix::fs::fstat(file).map_or(0, |st| st.st_blocks as u64 * 512)
}

/// Which file `file` is (device and inode).
pub(crate) fn file_identity(file: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    Ok(identity_of(&stat(file)?))
}

fn identity_of(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// The longest file handle [`file_handle`] returns: its type (4 bytes) and `MAX_HANDLE_SZ`
/// bytes.
pub(crate) const MAX_FILE_HANDLE: usize = 4 + 128;

/// What tells `file` apart from every other file its file system ever had, as NFS does: its
/// file handle (type, then bytes). Device and inode numbers do not: a fresh tmpfs (after a
/// reboot, or in a restarted container) numbers its files from the same start on the same
/// device, while tmpfs puts a random generation number in each new file's handle.
///
/// See name_to_handle_at(2).
pub(crate) fn file_handle(file: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    const MAX_HANDLE_SZ: usize = MAX_FILE_HANDLE - 4;
    /// `struct file_handle` with room for the largest handle.
    #[repr(C)]
    struct Handle {
        handle_bytes: libc::c_uint,
        handle_type: libc::c_int,
        f_handle: [u8; MAX_HANDLE_SZ],
    }
    let mut handle = Handle {
        handle_bytes: MAX_HANDLE_SZ as libc::c_uint,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH: the descriptor's own
    // file); `handle` is a file_handle with room for the `handle_bytes` it announces, and
    // `mount_id` is writable. (rustix has no name_to_handle_at.)
    let rc = unsafe {
        libc::name_to_handle_at(
            file.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut handle).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    let len = (handle.handle_bytes as usize).min(MAX_HANDLE_SZ);
    let mut out = handle.handle_type.to_le_bytes().to_vec();
    out.extend(&handle.f_handle[..len]);
    Ok(out)
}

/// Whether `file` is a regular file (what shared memory is).
pub(crate) fn is_regular_file(file: BorrowedFd<'_>) -> bool {
    stat(file).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
}

/// shm_open(3) of `name` with `flags`, as glibc does it: the file of that name in `/dev/shm`,
/// never through a symbolic link, close-on-exec. (rustix's `shm::open` follows links.)
fn open_named(name: &str, flags: OFlags) -> io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rustix::fs::open(
        shm_file_path(name)?,
        flags,
        Mode::empty(),
    )?)
}

/// The file behind the name, as glibc's shm_open(3) finds it; `EINVAL` for a name glibc
/// refuses (empty, `.`, `..`, or with a `/`).
fn shm_file_path(name: &str) -> io::Result<String> {
    if matches!(name, "" | "." | "..") || name.contains('/') {
        return Err(Errno::INVAL.into());
    }
    Ok(format!("{SHM_DIR}/{name}"))
}

fn stat(file: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(rustix::fs::fstat(file)?)
}

/// `len` as a file size (which the kernel takes as signed).
fn file_size(len: usize) -> io::Result<u64> {
    match i64::try_from(len) {
        Ok(size) => Ok(size as u64),
        Err(_) => Err(io::ErrorKind::InvalidInput.into()),
    }
}

/// How to copy `len` bytes starting at address `base` in atomic pieces: `(offset, width)`,
/// single bytes up to the first 8-aligned address, 8-byte words, then single bytes.
fn pieces(base: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let head = (base.next_multiple_of(8) - base).min(len);
    let body_end = head + (len - head) / 8 * 8;
    let bytes = |r: std::ops::Range<usize>| r.map(|at| (at, 1));
    bytes(0..head)
        .chain((head..body_end).step_by(8).map(|at| (at, 8)))
        .chain(bytes(body_end..len))
}

/// A memory file whose bytes nobody can change, mapped read-only: written once by its creator,
/// then sealed against writing, shrinking and growing before anyone else can have it. With
/// `F_SEAL_WRITE` the kernel refuses every write to the file, through any descriptor or shared
/// mapping, in every process; so its bytes may be lent as `&[u8]`, which no other memory file
/// here can be. Fork children inherit the mapping (the bytes are the same there).
pub(crate) struct Frozen {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: immutable memory, valid until drop in whichever thread drops it.
unsafe impl Send for Frozen {}
// SAFETY: as above: no process can write the bytes, so any thread may read them.
unsafe impl Sync for Frozen {}

impl Frozen {
    /// Creates a memory file of `len` bytes (more than zero), lets `fill` write them, then
    /// seals it and maps it read-only. `fill` is the only writer: the file is new and no
    /// descriptor of it has left this function.
    pub(crate) fn create(
        name: &str,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> io::Result<(Frozen, InternalFd)> {
        let file = memfd(name, len)?;
        {
            let mut writable = Mapping::map(file.as_fd(), len, false)?;
            fill(writable.bytes_mut_from(0));
        } // Unmapped: the write seal is refused while a writable shared mapping exists.
        rustix::fs::fcntl_add_seals(
            &file,
            SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL,
        )?;
        Ok((Frozen::map(file.as_fd(), len)?, file))
    }

    /// Maps a memory file made by [`Frozen::create`] elsewhere: `InvalidData` unless it is
    /// sealed against writing and shrinking.
    pub(crate) fn open(file: BorrowedFd<'_>) -> io::Result<Frozen> {
        match rustix::fs::fcntl_get_seals(file) {
            Ok(seals) if seals.contains(SealFlags::WRITE | SealFlags::SHRINK) => {}
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a memory file sealed against writing and shrinking",
                ));
            }
        }
        Frozen::map(file, file_len(file)?)
    }

    fn map(file: BorrowedFd<'_>, len: usize) -> io::Result<Frozen> {
        match Frozen::map_as(file, len, true) {
            // Linux before 6.7 refuses any shared mapping of a write-sealed file made through a
            // descriptor open for writing (every memory file's is), even a read-only one: a
            // private one then. Nothing can write the file, so it maps the very same pages, and
            // no process can change them (this one could only by making its own mapping
            // writable, which copies the pages it writes).
            Err(e) if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => {
                Frozen::map_as(file, len, false)
            }
            mapped => mapped,
        }
    }

    /// Maps the first `len` bytes of `file` read-only: `shared` (`MAP_SHARED`, which since
    /// Linux 6.7 the write seal keeps from ever becoming writable) or private.
    fn map_as(file: BorrowedFd<'_>, len: usize, shared: bool) -> io::Result<Frozen> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let ptr = match shared {
            true => map_shared(file, len, ProtFlags::READ, MapFlags::empty())?,
            false => map_private(file, len, ProtFlags::READ)?,
        };
        Ok(Frozen {
            ptr: NonNull::new(ptr.cast()).ok_or(io::ErrorKind::InvalidData)?,
            len,
        })
    }

    /// The file's bytes, page-aligned.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` mapped bytes, valid while `self` lives; the file is sealed against
        // writing and shrinking, so no process can change them or take the pages away, and
        // the mapping itself is read-only.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped, once; no borrow of `bytes` outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// A fresh shared mapping of `len` bytes of `file` (`MAP_SHARED` and `flags`), where the
/// kernel chooses.
fn map_shared(
    file: BorrowedFd<'_>,
    len: usize,
    prot: ProtFlags,
    flags: MapFlags,
) -> io::Result<*mut std::ffi::c_void> {
    // SAFETY: a fresh shared mapping of a descriptor we hold; the kernel picks the address,
    // so no existing memory is replaced.
    Ok(unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED | flags, file, 0)? })
}

/// A fresh private mapping of `len` bytes of `file` (`MAP_PRIVATE`), where the kernel chooses.
fn map_private(
    file: BorrowedFd<'_>,
    len: usize,
    prot: ProtFlags,
) -> io::Result<*mut std::ffi::c_void> {
    // SAFETY: a fresh private mapping of a descriptor we hold; the kernel picks the address,
    // so no existing memory is replaced.
    Ok(unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::PRIVATE, file, 0)? })
}

/// A zero-filled memory file of `len` bytes (close-on-exec, sealable), listed as internal.
fn memfd(name: &str, len: usize) -> io::Result<InternalFd> {
    let name = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let [file] = fd::create_internal(|| {
        let flags = rustix::fs::MemfdFlags::CLOEXEC | rustix::fs::MemfdFlags::ALLOW_SEALING;
        Ok([rustix::fs::memfd_create(&name, flags)?])
    })?;
    rustix::fs::ftruncate(&file, file_size(len)?)?;
    Ok(file)
}

/// `InvalidData` unless `file` is sealed against shrinking: whoever else holds it can then never
/// take pages from under a mapping of it. Checked before the size is read, so the size stays
/// true.
fn require_unshrinkable(file: BorrowedFd<'_>) -> io::Result<()> {
    match rustix::fs::fcntl_get_seals(file) {
        Ok(seals) if seals.contains(SealFlags::SHRINK) => Ok(()),
        Err(e) if e != Errno::INVAL => Err(e.into()),
        // EINVAL: a file that supports no seals at all (not a memory file).
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a memory file its sender could shrink (not sealed against it)",
        )),
    }
}

/// The current size of a file.
pub(crate) fn file_len(file: BorrowedFd<'_>) -> io::Result<usize> {
    usize::try_from(stat(file)?.st_size).map_err(|_| io::ErrorKind::InvalidData.into())
}

/// Grows a memory file to `len` bytes if it is smaller (never shrinks it).
pub(crate) fn grow_file(file: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    if file_len(file)? < len {
        rustix::fs::ftruncate(file, file_size(len)?)?;
    }
    Ok(())
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self
            .private_to
            .is_some_and(|g| g != super::proc::fork_generation())
        {
            return; // a fork child, which never had the pages
        }
        if self.kept {
            return;
        }
        // SAFETY: unmaps exactly what `map` mapped, once; no reference into it outlives `self`
        // (the types built on it borrow it).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// For tests elsewhere in the crate: what a misbehaving peer would send, and a way to watch a
/// scenario that may kill its process.
#[cfg(test)]
pub(crate) mod testing {
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    use crate::{Process, StartMethod, Target};

    /// A repeatable stream of pseudo-random numbers (xorshift64) from `state` (not 0), for
    /// tests that run a fuzz target's body on cheap inputs at every `cargo test`.
    pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// `seed` with one to four random bytes changed, cut or inserted: a cheap mutation, as a
    /// fuzzer would make, for tests that run a fuzz body on the seeds at every `cargo test`.
    pub(crate) fn mutate(seed: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
        let mut m = seed.to_vec();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % m.len().max(1);
            match next() % 3 {
                0 if !m.is_empty() => m[i] = next() as u8,
                1 => m.truncate(i),
                _ => m.insert(i.min(m.len()), next() as u8),
            }
        }
        m
    }

    /// `rounds` random inputs of up to 200 bytes for the lane and ring fuzz bodies, whose
    /// operations 4 to 7 of a byte's bits 1-3 are a peer's stray writes when its bit 3 is set:
    /// every other input leaves those out, so that honest runs go deep.
    pub(crate) fn fuzz_inputs(rounds: usize) -> impl Iterator<Item = Vec<u8>> {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        (0..rounds).map(move |round| {
            let len = (next() % 200) as usize;
            (0..len)
                .map(|_| next() as u8)
                .map(|b| {
                    if round % 2 == 0 && (b >> 1) % 8 >= 4 {
                        b & !0x08
                    } else {
                        b
                    }
                })
                .collect()
        })
    }

    /// A memory file of `len` zero bytes that nothing stops from shrinking (no seals).
    pub(crate) fn unsealed_memfd(len: usize) -> OwnedFd {
        super::memfd("mproc-test-unsealed", len)
            .expect("memfd")
            .into_owned()
    }

    /// Runs `scenario` in a child under every start method and fails the test unless each
    /// returns `Ok`: a scenario that kills its process (`SIGBUS`) fails it with the signal.
    pub(crate) fn in_children<F>(scenario: F)
    where
        F: Target<(), Output = Result<(), String>>,
    {
        let _ = scenario;
        for m in StartMethod::ALL {
            let mut p = Process::new(crate::sys::image::conjure::<F>(), ()).start_method(m);
            p.start().unwrap();
            match p.join_timeout(Duration::from_secs(20)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("{m}: {e}"),
                Err(e) => panic!("{m}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn received_files_that_could_shrink_are_refused() {
        let unsealed = testing::unsealed_memfd(1 << 16);
        let refused = |r: io::Result<Mapping>| {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            assert!(e.to_string().contains("could shrink"), "{e}");
        };
        refused(Mapping::open(unsealed.as_fd()));
        refused(Mapping::open_inherited(unsealed.as_fd()));
        refused(Mapping::open_prefix(unsealed.as_fd(), 100));
        refused(Mapping::open_growable(unsealed.as_fd(), 1 << 20).map(|(m, _)| m));
        // Not a memory file at all: supports no seals.
        let (sock, _peer) = super::super::socket::seqpacket_pair().unwrap();
        refused(Mapping::open(sock.as_fd()));
        // Ours are sealed.
        let (_m, file) = Mapping::create("mproc-test", 4096).unwrap();
        assert_eq!(Mapping::open(file.as_fd()).unwrap().len(), 4096);
        assert_eq!(Mapping::open_prefix(file.as_fd(), 100).unwrap().len(), 100);
        // Named shared memory cannot be sealed: it is mapped as it is.
        assert!(Mapping::open_named(unsealed.as_fd()).is_ok());
    }

    /// Where the kernel refuses a shared mapping of a write-sealed memory file (Linux before
    /// 6.7), a frozen file is mapped privately: the same bytes, read-only, shared with every
    /// other holder's mapping (nothing can write the file).
    #[test]
    fn a_frozen_file_maps_privately_where_shared_is_refused() {
        let (shared, file) = Frozen::create("mproc-test-frozen", 8192, |b| {
            b[..5].copy_from_slice(b"first");
            b[8191] = 7;
        })
        .unwrap();
        let private = Frozen::map_as(file.as_fd(), 8192, false).unwrap();
        assert_eq!(private.bytes(), shared.bytes());
        let at = private.bytes().as_ptr() as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.starts_with(&format!("{at:x}-")))
            .expect("the private mapping is listed");
        assert!(line.contains(" r--p "), "{line}");
        assert!(line.contains("memfd:mproc-test-frozen"), "{line}");
        // Still nobody can write the file, nor map it writable.
        assert_eq!(rustix::io::pwrite(&file, b"x", 0), Err(Errno::PERM));
        assert!(Mapping::open(file.as_fd()).is_err());
        drop(shared);
        assert_eq!(&private.bytes()[..5], b"first");
    }

    #[test]
    fn a_memory_file_cannot_be_resized() {
        let (_a, file) = Mapping::create("mproc-test", 4096).unwrap();
        let shrunk = rustix::fs::ftruncate(&file, 1);
        assert_eq!(
            shrunk,
            Err(Errno::PERM),
            "shrinking a sealed memory file must fail"
        );
    }

    #[test]
    fn copies_at_any_offset_and_length_round_trip() {
        let (map, _file) = Mapping::create("mproc-test", 64).unwrap();
        for offset in 0..17 {
            for len in 0..30 {
                let data: Vec<u8> = (0..len as u8).map(|b| b ^ offset as u8 ^ 0x5a).collect();
                map.write_at(offset, &data).unwrap();
                let mut back = vec![0; len];
                map.read_at(offset, &mut back).unwrap();
                assert_eq!(back, data, "offset {offset}, length {len}");
            }
        }
        assert!(map.read_at(60, &mut [0; 5]).is_err());
    }

    #[test]
    fn two_mappings_of_one_file_share_bytes() {
        let (a, file) = Mapping::create("mproc-test", 8192).unwrap();
        let b = Mapping::open(file.as_fd()).unwrap();
        assert_eq!(b.len(), 8192);
        // SAFETY: both pointers are valid for 8192 bytes; one thread, no overlap in time.
        unsafe {
            a.as_ptr().add(100).write(42);
            assert_eq!(b.as_ptr().add(100).read(), 42);
            assert_eq!(b.as_ptr().add(8191).read(), 0);
        }
    }
}
