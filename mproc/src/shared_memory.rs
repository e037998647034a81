//! Named shared memory: [`SharedMemory`] (Python's `multiprocessing.shared_memory`).

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::sys::shm::Mapping;
use crate::sys::{proc, shm};

mod client;
pub(crate) mod keeper;
#[cfg(test)]
mod keeper_tests;
mod lease;
mod records;
pub(crate) mod server;

/// A block of memory with a name in `/dev/shm`, shared by every process that maps it: Python's
/// `multiprocessing.shared_memory.SharedMemory`.
///
/// Any process can [`open`](SharedMemory::open) it by [`name`](SharedMemory::name), an mproc
/// child can receive it in its arguments, and a program in another language can open the same
/// name (`shm_open`, or Python's `SharedMemory(name=...)`; Python before 3.13 then removes
/// the name when its script exits, unless it unregisters it from its resource tracker).
///
/// ```
/// use mproc::{Process, SharedMemory};
///
/// fn greet(name: String) -> mproc::Result<()> {
///     let shm = SharedMemory::open(&name)?;
///     shm.write_at(0, b"hello from a child")
/// }
/// let shm = SharedMemory::create(64)?;
/// let mut p = Process::new(greet, (shm.name().to_owned(),));
/// p.start()?;
/// p.join()??;
/// let mut buf = [0u8; 18];
/// shm.read_at(0, &mut buf)?;
/// assert_eq!(&buf, b"hello from a child");
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Lifetime of the name
///
/// The name exists while any process holds the segment: a handle to it (the creator's, an
/// opener's, a received one, one a `fork` child inherited), or any other opening of its file
/// (a program in another language that opened the name counts too, while it has it open or
/// mapped). When the last of them lets go, or dies (`SIGKILL` included), the name is removed
/// from `/dev/shm`, exactly once. A process that only opened it never removes it from under the
/// others (unlike Python's resource tracker, cpython gh-82300).
/// [`unlink`](SharedMemory::unlink) removes the name earlier, as in Python; the memory stays
/// usable wherever it is mapped.
///
/// This is done by a small helper process, the *keeper*, which the first `create` in a process
/// starts (a fresh copy of the executable, in a session of its own, so that Ctrl-C does not stop
/// it before it has cleaned up). The kernel tells it when the last opening of the file goes;
/// opening a segment by name asks nothing of anyone, so no other user can get in the way.
///
/// A keeper killed with `SIGKILL` (the out-of-memory killer) leaves its names behind, each
/// with a record in a directory only this user can use (`$XDG_RUNTIME_DIR/mproc`,
/// `/run/user/<uid>/mproc` or `/tmp/mproc-<uid>`). Another keeper adopts them: when a process
/// opens or drops such a segment (it starts a keeper for that if it has none), or when any
/// process of this user next creates shared memory; the name then goes once its last holder
/// has. If every holder dies without dropping its handle after its keeper, the name stays until
/// the next `create` of this user; if no record directory can be had (a `/tmp/mproc-<uid>` made
/// by another user is never used), until it is unlinked.
///
/// A segment that mproc did not create (made by another program) has no keeper and no record:
/// its name is never removed except by `unlink`.
///
/// Like any file, the memory can be shrunk by a process that holds it open for writing
/// (`ftruncate`); reading or writing past the new end then kills the process with `SIGBUS`, as
/// it would in C or Python. mproc itself never resizes a segment.
///
/// # Concurrency
///
/// The bytes have no lock: [`read_at`](SharedMemory::read_at) and
/// [`write_at`](SharedMemory::write_at) copy whatever is there, and concurrent writers to the
/// same bytes interleave. Pair it with a [`Lock`](crate::Lock), or use [`Value`](crate::Value)
/// and [`Array`](crate::Array), which carry their own lock.
///
/// # Platform-specific behavior
///
/// The keeper needs file leases (`fcntl(F_SETLEASE)`, on unless `/proc/sys/fs/leases-enable`
/// is 0; `create` fails clearly without them) and uses inotify when it can (without it, it
/// checks every 100 ms). Its records need file handles (`name_to_handle_at`, which tell a file
/// from a later one with the same inode number); without them a keeper writes none.
#[derive(Clone)]
pub struct SharedMemory {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    map: Mapping,
    /// The file, open for reading and writing: while it (or the mapping) is open, this process
    /// holds the segment, and its keeper leaves the name alone.
    file: OwnedFd,
    /// Which file it is (device and inode): how its keeper's record is found.
    identity: (u64, u64),
}

impl Drop for Inner {
    fn drop(&mut self) {
        // If its keeper was killed, the name has nobody to remove it: see that someone will.
        client::look_after(self.identity);
    }
}

impl SharedMemory {
    /// A new segment of `size` zero bytes under a fresh, unguessable name (`mproc_` and 16 hex
    /// digits), readable and writable by this user only.
    ///
    /// Its pages are allocated now: a `/dev/shm` too small for it is an error here (`ENOSPC`),
    /// not a crash (`SIGBUS`) at the first write, as it would be in Python.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if `size` is 0; an OS error if the memory cannot be had.
    ///
    /// ```
    /// let shm = mproc::SharedMemory::create(4096)?;
    /// assert_eq!(shm.len(), 4096);
    /// assert!(shm.name().starts_with("mproc_"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn create(size: usize) -> Result<SharedMemory, Error> {
        loop {
            let id = proc::random_u64().map_err(|e| Error::os("choosing a name", e))?;
            match SharedMemory::create_named(&format!("mproc_{id:016x}"), size) {
                // Someone holds that name already (chance): draw another.
                Err(e) if client::is_errno(&e, libc::EEXIST) => continue,
                other => return other,
            }
        }
    }

    /// A new segment of `size` zero bytes named `name` (Python's
    /// `SharedMemory(name, create=True, size=size)`); see [`create`](SharedMemory::create).
    /// A leading `/` is ignored.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if `size` is 0 or the name is empty, longer than 255 bytes, or holds a
    /// `/` or a NUL; an OS error `EEXIST` if the name exists.
    ///
    /// ```
    /// use mproc::SharedMemory;
    ///
    /// let name = format!("doc-example-{}", std::process::id());
    /// let shm = SharedMemory::create_named(&name, 100)?;
    /// assert_eq!(shm.name(), name);
    /// assert!(SharedMemory::create_named(&name, 100).is_err(), "the name is taken");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn create_named(name: &str, size: usize) -> Result<SharedMemory, Error> {
        let name = name.strip_prefix('/').unwrap_or(name);
        if size == 0 {
            return Err(Error::invalid("shared memory must have a size above 0"));
        }
        if !keeper::valid_name(name) {
            return Err(Error::invalid(format!(
                "{name:?} cannot name shared memory: a name has 1 to {} bytes, \
                 with no '/' or NUL, and is not '.' or '..'",
                keeper::MAX_NAME
            )));
        }
        let file = client::create(name, size)?;
        SharedMemory::from_parts(name.to_owned(), file)
    }

    /// Opens the segment named `name`, made by this or any other process (a leading `/` is
    /// ignored). Opening never makes this process responsible for removing the name.
    ///
    /// # Errors
    ///
    /// An OS error `ENOENT` if no such segment exists (or its name was removed), `EACCES` if
    /// this user may not open it.
    ///
    /// ```
    /// use mproc::SharedMemory;
    ///
    /// let a = SharedMemory::create(16)?;
    /// a.write_at(0, &[7; 16])?;
    /// let b = SharedMemory::open(a.name())?;
    /// let mut buf = [0; 16];
    /// b.read_at(0, &mut buf)?;
    /// assert_eq!(buf, [7; 16]);
    /// assert!(SharedMemory::open("no-such-segment").is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn open(name: &str) -> Result<SharedMemory, Error> {
        let name = name.strip_prefix('/').unwrap_or(name);
        if name.is_empty() || name.contains(['/', '\0']) {
            return Err(Error::invalid(format!(
                "{name:?} cannot name shared memory: a name is not empty and has no '/' or NUL"
            )));
        }
        let context = || format!("opening shared memory {name:?}");
        let file = shm::shm_open(name).map_err(|e| Error::os(context(), e))?;
        // A keeper that found nobody holding the segment removes its name under a lease, which
        // this open waited for: it then has the file whose name has just gone, which nobody
        // could open by name after it. The open came too late: as if after the removal.
        let identity = shm::file_identity(file.as_fd()).map_err(|e| Error::os(context(), e))?;
        if shm::shm_identity(name).ok() != Some(identity) {
            return Err(Error::os(
                context(),
                std::io::Error::from_raw_os_error(libc::ENOENT),
            ));
        }
        client::look_after(identity);
        SharedMemory::from_file(name.to_owned(), file, identity)
    }

    fn from_parts(name: String, file: OwnedFd) -> Result<SharedMemory, Error> {
        let identity = shm::file_identity(file.as_fd())
            .map_err(|e| Error::os(format!("mapping shared memory {name:?}"), e))?;
        SharedMemory::from_file(name, file, identity)
    }

    /// A handle on `file` (whose device and inode are `identity`), mapped whole.
    fn from_file(name: String, file: OwnedFd, identity: (u64, u64)) -> Result<SharedMemory, Error> {
        let map = Mapping::open_named(file.as_fd())
            .map_err(|e| Error::os(format!("mapping shared memory {name:?}"), e))?;
        Ok(SharedMemory {
            inner: Arc::new(Inner {
                name,
                map,
                file,
                identity,
            }),
        })
    }

    /// Its name, without a leading `/` (as Python's `name`): what [`open`](SharedMemory::open)
    /// takes.
    ///
    /// ```
    /// let shm = mproc::SharedMemory::create(8)?;
    /// assert!(std::path::Path::new("/dev/shm").join(shm.name()).exists());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its size in bytes.
    ///
    /// ```
    /// assert_eq!(mproc::SharedMemory::create(10)?.len(), 10);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Always `false`: a segment has at least one byte.
    ///
    /// ```
    /// assert!(!mproc::SharedMemory::create(1)?.is_empty());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `buf.len()` bytes starting at `offset` into `buf`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if the range does not lie inside the segment (nothing is copied).
    ///
    /// ```
    /// let shm = mproc::SharedMemory::create(4)?;
    /// shm.write_at(1, &[1, 2, 3])?;
    /// let mut buf = [9; 4];
    /// shm.read_at(0, &mut buf)?;
    /// assert_eq!(buf, [0, 1, 2, 3]);
    /// assert!(shm.read_at(2, &mut buf).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), Error> {
        self.check_range("read", offset, buf.len())?;
        self.inner
            .map
            .read_at(offset, buf)
            .map_err(|e| Error::os("reading shared memory", e))
    }

    /// Copies `data` into the segment starting at `offset`.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` if the range does not lie inside the segment (nothing is copied).
    ///
    /// ```
    /// let shm = mproc::SharedMemory::create(4)?;
    /// shm.write_at(0, b"abcd")?;
    /// assert!(shm.write_at(3, b"ef").is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        self.check_range("write", offset, data.len())?;
        self.inner
            .map
            .write_at(offset, data)
            .map_err(|e| Error::os("writing shared memory", e))
    }

    fn check_range(&self, what: &str, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::invalid(format!(
                "cannot {what} {len} bytes at offset {offset} of shared memory {:?} \
                 of {} bytes",
                self.name(),
                self.len()
            ))),
        }
    }

    /// The first byte, for code that works on the memory in place (casting it to a
    /// structure, handing it to a C library). Valid for [`len`](SharedMemory::len) bytes while
    /// any clone of this handle lives; other processes may read and write the same bytes at any
    /// time, so every access through it is yours to synchronize (atomics, or a
    /// [`Lock`](crate::Lock)).
    ///
    /// ```
    /// let shm = mproc::SharedMemory::create(8)?;
    /// let p = shm.as_ptr();
    /// // SAFETY: 8 bytes are valid; no other process uses this segment.
    /// unsafe { p.add(7).write(42) };
    /// let mut last = [0];
    /// shm.read_at(7, &mut last)?;
    /// assert_eq!(last, [42]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.map.as_ptr()
    }

    /// Removes the name from `/dev/shm` now (Python's `unlink`): `open` by this name fails from
    /// then on, while every process that has the segment mapped keeps using it. Without a call,
    /// the name goes when the last handle does (see the type's docs).
    ///
    /// # Errors
    ///
    /// An OS error `ENOENT` if the name was already removed.
    ///
    /// ```
    /// use mproc::SharedMemory;
    ///
    /// let shm = SharedMemory::create(8)?;
    /// shm.unlink()?;
    /// assert!(SharedMemory::open(shm.name()).is_err());
    /// shm.write_at(0, b"still ok")?;
    /// assert!(shm.unlink().is_err(), "removed already");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn unlink(&self) -> Result<(), Error> {
        client::unlink(&self.inner.name, self.inner.file.as_fd())
    }
}

/// What travels: the file (as a handle index) and the name.
#[derive(Serialize, Deserialize)]
struct Wire {
    file: u32,
    name: String,
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let file = crate::handle::export(self.inner.file.as_fd()).map_err(S::Error::custom)?;
        Wire {
            file,
            name: self.inner.name.clone(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let wire = Wire::deserialize(d)?;
        if !keeper::valid_name(&wire.name) {
            return Err(D::Error::custom(
                "a shared memory handle with a malformed name",
            ));
        }
        let file = crate::handle::import(wire.file)
            .map_err(D::Error::custom)?
            .into_owned();
        if !shm::is_regular_file(file.as_fd()) {
            return Err(D::Error::custom("a shared memory handle without its file"));
        }
        SharedMemory::from_parts(wire.name, file).map_err(D::Error::custom)
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.inner.name)
            .field("len", &self.len())
            .finish()
    }
}
