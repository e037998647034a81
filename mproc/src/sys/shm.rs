//! Shared memory: anonymous memory files (memfd) mapped into every process that holds one.
//!
//! A [`Mapping`] is created in one process, its descriptor crosses to another (inherited, or
//! sent with `SCM_RIGHTS`), and the other maps the same pages with [`Mapping::open`]. Nothing
//! has a name in the file system, so nothing is left behind when every process is gone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

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
}

// SAFETY: the mapping is plain memory, valid until drop in whichever thread drops it; the
// types built on it decide how the bytes are shared (atomics, or one writer at a time).
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out raw pointers, whose use is the caller's business.
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
        syscall!(fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL
        ))?;
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
        let seals = syscall!(fcntl(file.as_raw_fd(), libc::F_GET_SEALS))?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a growable memory file that could shrink",
            ));
        }
        let len = file_len(file)?;
        let map = Mapping::map(file, reserve.max(len), true)?;
        Ok((map, len))
    }

    fn create_as(name: &str, len: usize, inherit: bool) -> io::Result<(Mapping, InternalFd)> {
        let file = memfd(name, len)?;
        // Its size is fixed from now on: a process that maps it can trust the size it saw, and
        // no holder of the descriptor can shrink it under another's mapping (SIGBUS).
        syscall!(fcntl(
            file.as_fd().as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL
        ))?;
        let map = Mapping::map(file.as_fd(), len, inherit)?;
        Ok((map, file))
    }

    /// Maps the whole memory file `file` (as created by [`Mapping::create`] elsewhere).
    pub(crate) fn open(file: BorrowedFd<'_>) -> io::Result<Mapping> {
        Mapping::open_as(file, false)
    }

    /// Like [`Mapping::open`], but fork children inherit the mapping (for user objects).
    pub(crate) fn open_inherited(file: BorrowedFd<'_>) -> io::Result<Mapping> {
        Mapping::open_as(file, true)
    }

    fn open_as(file: BorrowedFd<'_>, inherit: bool) -> io::Result<Mapping> {
        let len = file_len(file)?;
        Mapping::map(file, len, inherit)
    }

    fn map(file: BorrowedFd<'_>, len: usize, inherit: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a fresh shared mapping of a descriptor we hold; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = Mapping {
            ptr: NonNull::new(ptr.cast()).ok_or(io::ErrorKind::InvalidData)?,
            len,
            private_to: (!inherit).then(super::proc::fork_generation),
        };
        if !inherit {
            // SAFETY: advice on exactly the range just mapped.
            syscall!(madvise(ptr, len, libc::MADV_DONTFORK))?;
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

    /// The bytes of a mapping this process alone writes (a message being written before it
    /// is sent).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: valid for `len` bytes while `self` lives; exclusive for the borrow of
        // `&mut self`. The file has not been sent yet (callers write a message before sending
        // it), so no other process maps it.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes of a mapping nobody writes any more (a message received: its sender wrote it
    /// before sending and dropped its mapping).
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: valid for `len` bytes while `self` lives. A message's sender finishes
        // writing before it sends the file and never maps it again; a misbehaving sender could
        // only change what the bytes decode to, which the decoder checks.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// A zero-filled memory file of `len` bytes (close-on-exec, sealable), listed as internal.
fn memfd(name: &str, len: usize) -> io::Result<InternalFd> {
    let name = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let [file] = fd::create_internal(|| {
        let raw = syscall!(memfd_create(
            name.as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING
        ))?;
        // SAFETY: memfd_create returned a fresh descriptor owned by nobody else.
        Ok([unsafe { OwnedFd::from_raw_fd(raw) }])
    })?;
    let size = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    syscall!(ftruncate(file.as_fd().as_raw_fd(), size))?;
    Ok(file)
}

/// The current size of a file.
pub(crate) fn file_len(file: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable stat buffer.
    syscall!(fstat(file.as_raw_fd(), &mut st))?;
    usize::try_from(st.st_size).map_err(|_| io::ErrorKind::InvalidData.into())
}

/// Grows a memory file to `len` bytes if it is smaller (never shrinks it).
pub(crate) fn grow_file(file: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    if file_len(file)? < len {
        let size = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        syscall!(ftruncate(file.as_raw_fd(), size))?;
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
        // SAFETY: unmaps exactly what `map` mapped, once; no reference into it outlives `self`
        // (the types built on it borrow it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_memory_file_cannot_be_resized() {
        let (_a, file) = Mapping::create("mproc-test", 4096).unwrap();
        // SAFETY: ftruncate on a descriptor we hold.
        let rc = unsafe { libc::ftruncate(file.as_fd().as_raw_fd(), 1) };
        assert_eq!(rc, -1, "shrinking a sealed memory file must fail");
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
