//! Memory files for large messages, shared by pipes and the pool's worker sockets.
//!
//! A sender encodes a large message straight into a memory file and sends the descriptor
//! (`SCM_RIGHTS`) instead of the bytes, so they are never copied through a socket; it keeps the
//! file ([`Spares`]) and writes its next large message into it again once the receiver has set
//! the file's *done word* back to 0: when it has read the message, or, for a pool's task or
//! answer read in place ([`InFile`]), when that is dropped (a task's once it is decoded, an
//! answer's with its result). (A pool caller's task files go by their tasks' answers
//! instead: [`TaskFile`].) The receiver keeps its mappings of the last few files it was
//! sent ([`Mapped`]): mapping 10 MiB afresh (and unmapping it) cost more than copying the
//! message out.
//!
//! A pool's caller encodes a large task's arguments straight into a memory file of its own
//! ([`TaskFile`], in a [`Payload`]), which the dispatcher sends as it is: no thread copies
//! them on the way to the worker.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::sys::layout::SharedReader;
use crate::sys::fd::InternalFd;
use crate::sys::{fd, futex, proc};
use crate::sys::shm::Mapping;
use crate::wire::codec;

/// Where a message starts in its memory file: after the *done word*, which the sender sets to
/// 1 when it sends the file and the receiver sets back to 0 once it is done with the message
/// (read, or an [`InFile`] dropped), and, for a pipe's, the words that pace its sender
/// ([`Spares::write_paced`]).
pub(crate) const FILE_HEADER: usize = 64;

/// Where a pipe's receiver names itself in a file's header once it has taken the message
/// ([`taken`]): its pid (0 until one has), and the low 32 bits of its start time.
const TAKER_PID: usize = 4;
const TAKER_START: usize = 8;
/// Set by a pipe's sender that waits for the file to be done: the receiver then wakes it.
const SENDER_WAITS: usize = 12;

/// How many bytes of memory files a pipe's sender may have in flight (sent, not yet read)
/// before its next large message waits ([`Spares::write_paced`]), and how many files: no
/// more than its receiver keeps mapped ([`KEEP_BYTES`], [`KEEP_MAPPINGS`]), so that a sender
/// ahead of its reader cycles through files the reader has mapped already.
const IN_FLIGHT_BYTES: usize = KEEP_BYTES;
const IN_FLIGHT_FILES: usize = KEEP_MAPPINGS;

/// How long a waiting sender sleeps at most before it looks again at who holds its files.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(10);

/// From how many bytes a pool task's payload or answer travels in a memory file rather than on
/// the worker's socket: past a socket's buffer, the bytes would go through it in pieces, each
/// a wake-up on both sides.
pub(crate) const WORTH_A_FILE: usize = 256 * 1024;

/// How many memory files a sender keeps for reuse beyond those in flight (within
/// [`KEEP_BYTES`]): a file the receiver is done with is written again instead of a new one
/// being made (and its pages allocated and zeroed).
const SPARES: usize = 4;

/// How many mappings of the files it was sent a receiver keeps (within [`KEEP_BYTES`]).
const KEEP_MAPPINGS: usize = 16;

/// A memory file sent, kept for reuse.
struct Spare {
    map: Mapping,
    /// Internal: a child forked meanwhile does not inherit it (and the memory it holds).
    file: InternalFd,
    /// A pipe's, in flight: since when it has looked taken by a receiver that has not named
    /// itself yet (see [`Spare::worth_keeping`]).
    unclaimed_since: Option<Instant>,
}

impl Spare {
    fn is_free(&self) -> bool {
        self.map.word(0).load(Ordering::Acquire) == 0
    }

    /// Whether a pipe's sender keeps it (see [`Spares::write_paced`]): free and no larger than
    /// [`KEEP_BYTES`], or in flight while its message may still be read. A message a
    /// receiver has named itself in may be while that process runs. One nobody has named
    /// themselves in may be while `sock` still holds messages nobody took (`queued`), and for
    /// [`GRACE`] after that: a receiver may be between taking it and naming itself, or may
    /// have died there. A file not kept is let go: never written again, as a receiver may
    /// still read it.
    fn worth_keeping(&mut self, queued: bool, now: Instant) -> bool {
        let map = &self.map;
        if map.word(0).load(Ordering::Acquire) == 0 {
            return map.len() <= KEEP_BYTES;
        }
        match map.word(TAKER_PID).load(Ordering::Acquire) {
            0 if queued => {
                self.unclaimed_since = None;
                true
            }
            0 => now.duration_since(*self.unclaimed_since.get_or_insert(now)) < GRACE,
            pid => {
                let start = map.word(TAKER_START).load(Ordering::Relaxed);
                proc::still_runs(pid, u64::from(start), 32)
            }
        }
    }
}

/// How long a pipe's file that has left its socket may go without its receiver naming itself
/// before its sender stops counting it (see [`Spare::worth_keeping`]).
const GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// A sender's memory files.
#[derive(Default)]
pub(crate) struct Spares {
    files: Vec<Spare>,
    /// A pipe's (see [`Spares::write_paced`]): files in flight are kept, however many, to be
    /// counted; others let the oldest in flight go when they need room.
    paced: bool,
}

impl Spares {
    /// A pipe's sender's files, which [`write_paced`](Spares::write_paced) paces.
    pub(crate) fn paced() -> Spares {
        Spares {
            files: Vec::new(),
            paced: true,
        }
    }

    /// Whether the receiver is done with every file (none in flight).
    #[cfg(test)]
    pub(crate) fn all_free(&self) -> bool {
        self.files.iter().all(Spare::is_free)
    }

    /// How many bytes of memory its files hold.
    #[cfg(test)]
    pub(crate) fn allocated_bytes(&self) -> u64 {
        let held = |s: &Spare| crate::sys::shm::allocated_bytes(s.file.as_fd());
        self.files.iter().map(held).sum()
    }

    /// [`write`](Spares::write) for a pipe's sender, which sends the file on `sock` before
    /// these spares are used again: first waits while the files sent and not yet read hold
    /// [`IN_FLIGHT_BYTES`] with this one, or number [`IN_FLIGHT_FILES`], and one at least is in
    /// flight, as a writer waits on a full pipe (or its memory would grow with every message
    /// sent ahead: 10 MiB ones reached 2.8 GB before the socket's buffer filled). A file counts
    /// while its message may still be read ([`Spare::worth_keeping`]): a receiver that died
    /// with a message, or every receiver gone with the messages unread, holds up nothing. A
    /// socket shut down (by either end) is `Closed`, as its send would be.
    pub(crate) fn write_paced(
        &mut self,
        len: usize,
        sock: BorrowedFd<'_>,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<InternalFd, Error> {
        debug_assert!(self.paced);
        let need = FILE_HEADER.saturating_add(len);
        loop {
            if fd::hung_up(sock).map_err(|e| Error::os("looking at a pipe", e))? {
                return Err(crate::error::ErrorKind::Closed.into());
            }
            let queued = crate::sys::socket::unreceived(sock)
                .map_err(|e| Error::os("looking at what a pipe holds", e))?
                > 0;
            let now = Instant::now();
            self.files.retain_mut(|s| s.worth_keeping(queued, now));
            let mut in_flight = self.files.iter().filter(|s| !s.is_free());
            let Some(oldest) = in_flight.next() else {
                break;
            };
            let (count, bytes) = in_flight.fold((1, oldest.map.len()), |(n, b), s| {
                (n + 1, b + s.map.len())
            });
            if count < IN_FLIGHT_FILES && bytes.saturating_add(need) <= IN_FLIGHT_BYTES {
                break;
            }
            let done = oldest.map.word(0);
            oldest.map.word(SENDER_WAITS).store(1, Ordering::SeqCst);
            futex::wait(done, 1, Some(now + LOOK_AGAIN))
                .map_err(|e| Error::os("waiting for a pipe's reader", e))?;
        }
        self.write(len, fill)
    }

    /// A memory file holding a message of `len` bytes that `fill` writes (a spare the
    /// receiver is done with, or a new one), marked in flight; returns a descriptor to send.
    pub(crate) fn write(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<InternalFd, Error> {
        let need = FILE_HEADER
            .checked_add(len)
            .ok_or_else(|| Error::invalid("a message longer than memory"))?;
        let spares = &mut self.files;
        let at = match spares
            .iter()
            .position(|s| s.map.len() >= need && s.is_free())
        {
            Some(at) => {
                // Read by its last receiver (done): the words it wrote are cleared.
                let spare = &mut spares[at];
                spare.map.word(TAKER_PID).store(0, Ordering::Relaxed);
                spare.map.word(SENDER_WAITS).store(0, Ordering::Relaxed);
                spare.unclaimed_since = None;
                at
            }
            None => {
                // Rounded up, so messages that vary a little in size share files.
                let size = need.next_multiple_of(64 * 1024);
                let (map, file) = Mapping::create("mproc-message", size)
                    .map_err(|e| Error::os("creating shared memory for a message", e))?;
                if spares.len() >= SPARES {
                    // A free one goes first; else, but for a pipe's (which counts them), the
                    // oldest (its receiver may never finish: dropping our copy only frees the
                    // memory once the receiver's is gone).
                    match spares.iter().position(Spare::is_free) {
                        Some(free) => drop(spares.remove(free)),
                        None if !self.paced => drop(spares.remove(0)),
                        None => {}
                    }
                }
                spares.push(Spare {
                    map,
                    file,
                    unclaimed_since: None,
                });
                spares.len() - 1
            }
        };
        let spare = &mut spares[at];
        fill(&mut spare.map.bytes_mut_from(FILE_HEADER)[..len])?;
        let copy = fd::dup_internal(spare.file.as_fd())
            .map_err(|e| Error::os("duplicating a message's memory file", e))?;
        spare.map.word(0).store(1, Ordering::Relaxed);
        self.keep_within(at);
        Ok(copy)
    }

    /// Keeps at most [`KEEP_BYTES`] of files: one larger goes as soon as it is sent (the copy
    /// in flight keeps it until its receiver is done; a pipe's, which counts it, once it is
    /// read: [`Spare::worth_keeping`]), and free ones beyond the budget go, oldest first;
    /// `just` (the one just written) stays otherwise.
    fn keep_within(&mut self, just: usize) {
        let spares = &mut self.files;
        if spares[just].map.len() > KEEP_BYTES && !self.paced {
            spares.remove(just);
            return;
        }
        let mut total: usize = spares.iter().map(|s| s.map.len()).sum();
        let (mut i, mut just) = (0, just);
        while total > KEEP_BYTES && i < spares.len() {
            if i != just && spares[i].is_free() {
                total -= spares[i].map.len();
                spares.remove(i);
                if i < just {
                    just -= 1;
                }
            } else {
                i += 1;
            }
        }
    }
}

/// A receiver's mappings of the memory files it was sent, by identity, the most recently used
/// last. A kept mapping is safe to read again: a file is mapped only once it is sealed against
/// shrinking, so its pages stay. At most [`KEEP_MAPPINGS`] mappings and [`KEEP_BYTES`] are kept (a
/// larger message's mapping goes once it is read); each keeps its file's memory alive until it
/// is replaced or the receiver is dropped. An [`InFile`] shares its mapping and keeps it past
/// both.
#[derive(Default)]
pub(crate) struct Mapped {
    kept: Vec<(Identity, Arc<Mapping>)>,
    /// The mapping of the last message, when it is not kept.
    passing: Option<Arc<Mapping>>,
}

/// Which file a mapping is of: its device and inode numbers, and its file handle (which adds
/// tmpfs's random generation number, so a number reused after a wrap is not the same file).
type Identity = ((u64, u64), Vec<u8>);

/// How many bytes of mappings a receiver keeps.
const KEEP_BYTES: usize = 64 << 20;

impl Mapped {
    /// A mapping of the memory file `file` that holds a message of `len` bytes after its
    /// header (sealed against shrinking, and that long, or an error).
    pub(crate) fn map(&mut self, file: BorrowedFd<'_>, len: u64) -> Result<&Arc<Mapping>, Error> {
        let need = usize::try_from(len)
            .ok()
            .and_then(|len| len.checked_add(FILE_HEADER))
            .ok_or_else(|| Error::protocol("a message longer than memory"))?;
        let bad = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::protocol(format!("a message in a bad memory file: {e}"))
            } else {
                Error::os("mapping a received message", e)
            }
        };
        self.passing = None;
        // Without a file handle (a kernel or file system without them) nothing is kept.
        let id = crate::sys::shm::file_identity(file)
            .and_then(|numbers| Ok((numbers, crate::sys::shm::file_handle(file)?)))
            .ok();
        let kept = &mut self.kept;
        if let Some(at) = id
            .as_ref()
            .and_then(|id| kept.iter().position(|(k, map)| k == id && map.len() >= need))
        {
            let found = kept.remove(at);
            kept.push(found);
            return Ok(&kept.last().expect("just pushed").1);
        }
        let map = Arc::new(Mapping::open_prefix(file, need).map_err(bad)?);
        match id {
            Some(id) if need <= KEEP_BYTES => {
                kept.retain(|(k, _)| *k != id);
                kept.push((id, map));
                let over = |kept: &Vec<(Identity, Arc<Mapping>)>| {
                    kept.len() > KEEP_MAPPINGS
                        || kept.iter().map(|(_, m)| m.len()).sum::<usize>() > KEEP_BYTES
                };
                while kept.len() > 1 && over(kept) {
                    kept.remove(0);
                }
                Ok(&kept.last().expect("just pushed").1)
            }
            _ => Ok(self.passing.insert(map)),
        }
    }

    /// Unmaps the last message's file unless it is kept.
    pub(crate) fn release(&mut self) {
        self.passing = None;
    }

    /// The `len`-byte message in `file`, left there to be read in place: the file is marked
    /// done when the [`InFile`] is dropped.
    pub(crate) fn keep(&mut self, file: BorrowedFd<'_>, len: u64) -> Result<InFile, Error> {
        let map = Arc::clone(self.map(file, len)?);
        self.release();
        Ok(InFile {
            map,
            len: len as usize, // `map` checked that it fits in memory
        })
    }
}

/// Names this process, in a received pipe message's file, as the one that took the message
/// (see [`Spares::write_paced`]): its sender then counts the file as in flight only while this
/// process runs, and until the returned guard is dropped, which marks it [`done`] (the
/// message read, or its decoding failed or unwound).
pub(crate) fn taken(map: &Mapping) -> Taken<'_> {
    let (pid, start) = proc::me();
    // The low 32 bits: with the pid, one process still.
    map.word(TAKER_START)
        .store(start.unwrap_or(0) as u32, Ordering::Relaxed);
    map.word(TAKER_PID).store(pid, Ordering::Release);
    Taken(map)
}

/// A received pipe message's file while it is read ([`taken`]): marked done when dropped.
pub(crate) struct Taken<'a>(&'a Mapping);

impl Taken<'_> {
    /// Marks the message read; a file larger than a sender keeps ([`KEEP_BYTES`]) is emptied
    /// first, its memory given back at once: its sender, which keeps it until its next large
    /// message (to count it until it is read), then holds no memory with it.
    pub(crate) fn read(self, file: BorrowedFd<'_>) {
        if self.0.len() > KEEP_BYTES {
            let body = (self.0.len() - FILE_HEADER) as u64;
            let _ = crate::sys::shm::release_pages(file, FILE_HEADER as u64, body);
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        done(self.0);
    }
}

/// Marks a received file's message read: its sender may write the next one there (and is
/// woken if it waits for that).
pub(crate) fn done(map: &Mapping) {
    map.word(0).store(0, Ordering::SeqCst);
    if map.word(SENDER_WAITS).load(Ordering::SeqCst) != 0 {
        futex::wake(map.word(0), 1);
    }
}

/// A large pool task's encoded arguments, written by its caller straight into a memory file
/// of the caller's own: the dispatcher sends the worker the descriptor, not a copy of the
/// bytes (the worker reads them in place: [`InFile`]). The chunk owns the file until it is
/// dropped, as a chunk taken back from a worker may be sent again. Answered by a worker (which
/// decodes its arguments before it answers), it goes back to [`FILES`] for the next large
/// task, whose pages are then already faulted in (a 10 MiB argument otherwise costs 2560 fresh
/// pages a call); failed otherwise (its worker lost or killed, the pool ended, or cancelled
/// before it was sent: not told apart) it is let go, never written again, as a worker may not
/// have finished reading it ([`TaskFile::discard`]).
///
/// Fork children do not inherit it (neither the mapping nor the descriptor): dropped in one, it
/// touches nothing.
#[derive(Debug)]
pub(crate) struct TaskFile {
    /// `None` only while it is dropped.
    kept: Option<KeptFile>,
    len: usize,
    /// Let go when dropped, not kept for reuse.
    discard: bool,
}

/// A memory file for large task arguments: its mapping, and its descriptor to send.
#[derive(Debug)]
struct KeptFile {
    map: Mapping,
    file: fd::InternalFd,
}

/// Memory files of large tasks' arguments given back when their chunk was dropped: at most
/// [`KEEP_FILES`] and [`KEEP_FILE_BYTES`], process-wide, while a pool runs (a pool's end lets
/// them go: [`forget_files`]; one given back after that waits for the next pool's end); and how
/// many [`TaskFile`]s exist. Of the fork generation that made them: a fork child starts with
/// none.
static FILES: std::sync::Mutex<Files> = std::sync::Mutex::new(Files {
    generation: 0,
    kept: Vec::new(),
    out: 0,
});

/// The fork generation in which [`FILES`] was last locked: when it is this process's, the lock
/// was free after the fork, so waiting for it is safe (in a fork child, it may have been held
/// by a thread the fork left behind, for ever).
static FILES_LOCKED_IN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Files {
    generation: u64,
    kept: Vec<KeptFile>,
    out: usize,
}

/// Held by the unit tests that make [`TaskFile`]s, which would see each other's in one
/// process (plain `cargo test`). A lib test that ran a pool would end it, and so let the kept
/// files go under them: none does.
#[cfg(test)]
pub(crate) static TASK_FILE_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How many files [`FILES`] keeps.
const KEEP_FILES: usize = 2;

/// How many bytes of files [`FILES`] keeps.
const KEEP_FILE_BYTES: usize = 64 << 20;

/// How many [`TaskFile`]s may exist at once in a process. Each holds a descriptor: a `map`
/// of thousands of large items, all encoded at once, must not take a descriptor each. Past
/// this, a large task's arguments are encoded into a buffer, which the dispatcher copies into
/// a file of its own when it sends them.
const MAX_TASK_FILES: usize = 16;

/// [`FILES`], as this process has it (a fork child's starts empty). Waits for the lock when
/// that is safe ([`FILES_LOCKED_IN`]); `None` when it is not free and may never be (the files
/// are only a speed-up). A panic under it left nothing half-done that matters.
fn files() -> Option<std::sync::MutexGuard<'static, Files>> {
    let now = crate::sys::proc::fork_generation();
    let mut files = if FILES_LOCKED_IN.load(Ordering::Acquire) == now {
        FILES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    } else {
        match FILES.try_lock() {
            Ok(files) => files,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    };
    if files.generation != now {
        // Another process's: neither the mappings nor the descriptors are ours (dropping
        // them touches nothing), nor are the files it counted.
        files.generation = now;
        files.kept = Vec::new();
        files.out = 0;
        FILES_LOCKED_IN.store(now, Ordering::Release);
    }
    Some(files)
}

impl TaskFile {
    /// A file with room for `len` bytes of arguments: the smallest kept one that fits, or a
    /// new one; `None` if [`MAX_TASK_FILES`] exist or none can be made.
    fn take(len: usize) -> Option<TaskFile> {
        let need = FILE_HEADER.checked_add(len)?;
        let found = {
            let mut files = files()?;
            if files.out >= MAX_TASK_FILES {
                return None;
            }
            files.out += 1;
            let at = files
                .kept
                .iter()
                .enumerate()
                .filter(|(_, k)| k.map.len() >= need)
                .min_by_key(|(_, k)| k.map.len())
                .map(|(at, _)| at);
            at.map(|at| files.kept.swap_remove(at))
        };
        // Counted from here: dropped, even with no file, it is uncounted again.
        let mut file = TaskFile {
            kept: found,
            len,
            discard: false,
        };
        if file.kept.is_none() {
            // Rounded up, so arguments that vary a little in size share files.
            let size = need.next_multiple_of(64 * 1024);
            let (map, fd) = Mapping::create("mproc-task", size).ok()?;
            file.kept = Some(KeptFile { map, file: fd });
        }
        Some(file)
    }

    /// Marks it to be let go when dropped, not written again: a worker may still read it.
    pub(crate) fn discard(&mut self) {
        self.discard = true;
    }

    /// The bytes its arguments are written into, before its chunk is sent.
    fn bytes_mut(&mut self) -> &mut [u8] {
        let kept = self.kept.as_mut().expect("only `None` while dropped");
        &mut kept.map.bytes_mut_from(FILE_HEADER)[..self.len]
    }

    fn kept(&self) -> &KeptFile {
        self.kept.as_ref().expect("only `None` while dropped")
    }

    /// The descriptor of the file (the arguments start [`FILE_HEADER`] bytes in).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.kept().file.as_fd()
    }

    /// How many bytes the arguments are.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for TaskFile {
    /// Given back for the next large task, unless discarded or past the budget (the oldest
    /// kept goes first); let go outside the lock. In a fork child, it touches nothing.
    fn drop(&mut self) {
        let file = self.kept.take();
        if file.as_ref().is_some_and(|f| !f.map.is_in_this_process()) {
            return;
        }
        // Counted in this process, so `files` waits for the lock (it was free after the fork).
        let Some(mut files) = files() else {
            return;
        };
        files.out = files.out.saturating_sub(1);
        let mut gone = Vec::new();
        if let Some(file) = file {
            if self.discard || file.map.len() > KEEP_FILE_BYTES {
                gone.push(file);
            } else {
                files.kept.push(file);
                while files.kept.len() > KEEP_FILES
                    || files.kept.iter().map(|k| k.map.len()).sum::<usize>() > KEEP_FILE_BYTES
                {
                    gone.push(files.kept.remove(0));
                }
            }
        }
        drop(files);
        drop(gone);
    }
}

/// Lets the kept files go, when a pool ends.
pub(crate) fn forget_files() {
    let gone = files().map(|mut files| std::mem::take(&mut files.kept));
    drop(gone); // unmapped outside the lock
}

/// A pool task's encoded arguments: bytes, or, when large, in a memory file of this process's
/// ([`TaskFile`], boxed: every chunk carries a `Payload`, and a small one should stay as small
/// as its `Vec`).
#[derive(Debug)]
pub(crate) enum Payload {
    Bytes(Vec<u8>),
    File(Box<TaskFile>),
}

const _: () = assert!(std::mem::size_of::<Payload>() == std::mem::size_of::<Vec<u8>>());

impl Payload {
    /// Encodes a chunk's arguments: into a memory file when they are large and `in_file` (a
    /// local pool's, whose dispatcher sends the file; within [`MAX_TASK_FILES`]), else into a
    /// buffer.
    pub(crate) fn encode<T: Serialize + ?Sized>(
        value: &T,
        in_file: bool,
    ) -> Result<Payload, codec::Error> {
        let len = codec::encoded_len(value)?;
        // A value that encodes to another length the second time (a `Serialize` that changed
        // its mind) goes into a buffer, as a small one would.
        if in_file
            && len >= WORTH_A_FILE
            && let Some(mut file) = TaskFile::take(len)
            && codec::encode_to_slice(file.bytes_mut(), value).is_ok()
        {
            return Ok(Payload::File(Box::new(file)));
        }
        let mut out = buffer_for(len);
        codec::encode_into(&mut out, value)?;
        Ok(Payload::Bytes(out))
    }

    /// Which memory file it is in (device and inode numbers); for tests that follow a file's
    /// reuse. Panics if it is in none.
    #[cfg(test)]
    pub(crate) fn file_identity(&self) -> (u64, u64) {
        match self {
            Payload::File(f) => crate::sys::shm::file_identity(f.fd()).expect("a memory file"),
            Payload::Bytes(_) => panic!("not in a file"),
        }
    }

    /// Marks a file it is in to be let go, not written again (see [`TaskFile`]).
    pub(crate) fn discard(&mut self) {
        if let Payload::File(file) = self {
            file.discard();
        }
    }

    /// How many bytes the arguments are.
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Bytes(b) => b.len(),
            Payload::File(f) => f.len(),
        }
    }

    /// The bytes, copied out of the file if they are in one (for a remote pool, which sends
    /// bytes).
    #[cfg_attr(
        not(any(feature = "remote", test)),
        expect(dead_code, reason = "a remote pool sends its tasks' bytes")
    )]
    pub(crate) fn into_vec(self) -> Result<Vec<u8>, Error> {
        let file = match self {
            Payload::Bytes(b) => return Ok(b),
            Payload::File(file) => file,
        };
        let map = &file.kept().map;
        if !map.is_in_this_process() {
            return Err(Error::invalid(
                "a task's arguments encoded by the parent process cannot be read in a fork child",
            ));
        }
        map.reader(FILE_HEADER, file.len)
            .and_then(SharedReader::into_vec)
            .map_err(|e| Error::os("reading a task's arguments from its memory file", e))
    }
}

impl Default for Payload {
    fn default() -> Payload {
        Payload::Bytes(Vec::new())
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload::Bytes(bytes)
    }
}

/// A received message left in the memory file it came in, read in place: decoding it copies
/// each part once, straight into the value it becomes (a 10 MiB answer is not first copied
/// into a buffer of its own). A sender with [`Spares`] writes the file again only once this is
/// dropped; a pool's caller writes a task's file ([`TaskFile`]) again once the task is
/// answered, which its worker does after decoding the arguments (an `InFile` of them that it
/// still holds, of a task it skipped, is never read).
///
/// The mapping is not inherited by fork children: in one, the message cannot be read (an
/// error), and dropping it touches nothing.
#[derive(Debug)]
pub(crate) struct InFile {
    map: Arc<Mapping>,
    len: usize,
}

impl InFile {
    /// A reader of the message; an error in a fork child of the process that received it.
    fn reader(&self) -> Result<SharedReader<'_>, Error> {
        if !self.map.is_in_this_process() {
            return Err(Error::invalid(
                "this message was received by the parent process, and a fork child does not \
                 have its memory: read it in the parent",
            ));
        }
        self.map
            .reader(FILE_HEADER, self.len)
            .map_err(|e| Error::protocol(format!("a message in a bad memory file: {e}")))
    }
}

impl Drop for InFile {
    fn drop(&mut self) {
        if self.map.is_in_this_process() {
            done(&self.map);
        }
    }
}

/// A received message: its bytes, held inline when they are few (a pool's answer of a number
/// or two: no allocation where it arrives, no free where it is read), or left in the memory
/// file it came in.
#[derive(Debug)]
pub(crate) enum Received {
    Bytes(Vec<u8>),
    Small(u8, [u8; SMALL]),
    InFile(InFile),
}

/// The most bytes a [`Received`] holds inline (its length in a byte).
const SMALL: usize = 30;
const _: () = assert!(SMALL <= u8::MAX as usize);

impl Received {
    /// Its bytes, if they are in this process's memory (not left in a file).
    pub(crate) fn in_memory(&self) -> Option<&[u8]> {
        match self {
            Received::Bytes(b) => Some(b),
            Received::Small(len, b) => Some(&b[..usize::from(*len)]),
            Received::InFile(_) => None,
        }
    }

    /// A copy of `bytes`, inline if they are few.
    pub(crate) fn copy_of(bytes: &[u8]) -> Received {
        if bytes.len() <= SMALL {
            let mut inline = [0; SMALL];
            inline[..bytes.len()].copy_from_slice(bytes);
            Received::Small(bytes.len() as u8, inline)
        } else {
            Received::Bytes(bytes.to_vec())
        }
    }

    /// Decodes it (any number of times): the value, or the codec's error; `Err` if its file
    /// cannot be read here. One in a file is decoded as it is copied out: a misbehaving sender
    /// could still write the file.
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<Result<T, codec::Error>, Error> {
        Ok(match self {
            Received::Bytes(b) => codec::decode(b),
            Received::Small(len, b) => codec::decode(&b[..usize::from(*len)]),
            Received::InFile(f) => crate::wire::shared::decode_shared(f.reader()?),
        })
    }

    /// `Ok` if it can be read in this process (one in a file cannot in a fork child of the
    /// process that received it).
    pub(crate) fn readable(&self) -> Result<(), Error> {
        match self {
            Received::Bytes(_) | Received::Small(..) => Ok(()),
            Received::InFile(f) => f.reader().map(drop),
        }
    }

    /// Its bytes, copied out of its file if it is in one.
    #[cfg_attr(
        not(any(feature = "remote", test)),
        expect(dead_code, reason = "a remote agent sends its answers' bytes on")
    )]
    pub(crate) fn into_vec(self) -> Result<Vec<u8>, Error> {
        match self {
            Received::Bytes(b) => Ok(b),
            Received::Small(len, b) => Ok(b[..usize::from(len)].to_vec()),
            Received::InFile(f) => f
                .reader()?
                .into_vec()
                .map_err(|e| Error::protocol(format!("a message in a bad memory file: {e}"))),
        }
    }
}

impl Default for Received {
    fn default() -> Received {
        Received::Bytes(Vec::new())
    }
}

/// What a pool worker lends the tasks it runs, in one thread-local: its memory files for
/// large answers, for its whole life ([`lend_files`]), and to each task in turn the memory
/// file its arguments came in, if they did ([`with_payload`]).
struct Lending {
    /// While it runs a chunk whose arguments came in a memory file: the file, which the
    /// chunk's trampoline (`pool::task`) reads in place (not a copy of its bytes).
    payload: Option<InFile>,
    /// Its memory files for large answers, which a chunk's trampoline encodes a large answer
    /// into (not into a buffer then copied).
    files: Option<Spares>,
    /// Where the trampoline put its answer: in its bytes, or in one of those files.
    place: AnswerPlace,
}

thread_local! {
    static LENDING: std::cell::RefCell<Lending> = const {
        std::cell::RefCell::new(Lending {
            payload: None,
            files: None,
            place: AnswerPlace::Bytes,
        })
    };
}

/// Where a pool task's answer went (see [`with_payload`]).
#[derive(Debug)]
pub(crate) enum AnswerPlace {
    /// In the bytes the task returned.
    Bytes,
    /// Into this memory file of the worker's, `len` bytes long (the bytes returned are empty).
    File(InternalFd, usize),
}

/// Lends `spares`, a pool worker's memory files, to every task this thread runs from now on,
/// to put a large answer in ([`encode_answer`]): once for the worker's life, not per task.
pub(crate) fn lend_files(spares: Spares) {
    // What was there (nothing: a worker lends its files once) drops after the borrow.
    let _before = LENDING.with_borrow_mut(|l| l.files.replace(spares));
}

/// Runs `run` (a task's trampoline, in a pool worker) with the chunk's arguments `payload` in
/// a memory file if they came in one. Returns what `run` returned and where its answer went
/// (into one of the files [`lend_files`] lent, or its bytes). The file of arguments the task
/// did not read, and where its answer went, are let go afterwards, even if `run` unwinds.
#[inline]
pub(crate) fn with_payload<R>(payload: Option<InFile>, run: impl FnOnce() -> R) -> (R, AnswerPlace) {
    /// Clears what this task was lent and left, if `run` unwinds (forgotten otherwise: the
    /// task's end clears it in one go).
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            let _left = take_left();
        }
    }
    /// The unread payload and where the answer went, taken; both dropped after the borrow.
    fn take_left() -> (Option<InFile>, AnswerPlace) {
        LENDING.with_borrow_mut(|l| {
            (l.payload.take(), std::mem::replace(&mut l.place, AnswerPlace::Bytes))
        })
    }
    let clear = Clear;
    if let Some(payload) = payload {
        let _none = LENDING.with_borrow_mut(|l| l.payload.replace(payload));
    }
    let out = run();
    std::mem::forget(clear);
    // Unread if the entry was not a chunk's: dropped now (after the borrow), the file is free
    // again.
    let (_unread, place) = take_left();
    (out, place)
}

/// The arguments of the chunk the worker runs, when they came in a memory file (lent by
/// [`with_payload`]): taken once, by the chunk's trampoline.
pub(crate) fn lent_payload() -> Option<InFile> {
    LENDING.with_borrow_mut(|l| l.payload.take())
}

/// Encodes a chunk's answer: into a memory file of the worker's when it is large and the
/// worker lent its files ([`lend_files`]; the bytes returned are then empty), else into a
/// buffer.
pub(crate) fn encode_answer<T: Serialize>(value: &T) -> Result<Vec<u8>, codec::Error> {
    /// Gives the lent files back, even if the value's `Serialize` panics.
    struct PutBack(Option<Spares>);
    impl Drop for PutBack {
        fn drop(&mut self) {
            if let Some(spares) = self.0.take() {
                // What it replaces (nothing: taken by `encode_answer`) drops outside the borrow.
                let _none = LENDING.with_borrow_mut(|l| l.files.replace(spares));
            }
        }
    }
    let len = codec::encoded_len(value)?;
    if len >= WORTH_A_FILE
        && let Some(spares) = LENDING.with_borrow_mut(|l| l.files.take())
    {
        let mut lent = PutBack(Some(spares));
        let written = lent.0.as_mut().map(|spares| {
            spares.write(len, |b| {
                codec::encode_to_slice(b, value)
                    .map_err(|e| Error::codec("a task's answer", "encode", e))
            })
        });
        drop(lent);
        if let Some(Ok(file)) = written {
            let _before = LENDING.with_borrow_mut(|l| {
                std::mem::replace(&mut l.place, AnswerPlace::File(file, len))
            });
            return Ok(Vec::new());
        }
        // No file (none could be made, or the value encoded differently the second time): a
        // buffer, as for a small answer, which the worker sends on its socket.
    }
    let mut out = buffer_for(len);
    codec::encode_into(&mut out, value)?;
    Ok(out)
}

thread_local! {
    /// A small buffer given back on this thread ([`give_back_buffer`]) for the next small
    /// payload or answer encoded here: a pool worker's last answer, once sent; a caller's last
    /// task, once answered. Back-to-back quick calls then allocate none.
    static SPARE_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The most a buffer kept for reuse may hold: what a quick call sends. Every thread that
/// encodes or answers tasks keeps one (a pool worker, the pool's thread, each caller), so
/// little; a larger payload costs more to encode than to allocate for.
const KEPT_BUFFER: usize = 4 * 1024;

/// An empty buffer with room for `len` bytes: this thread's spare, if it has one.
fn buffer_for(len: usize) -> Vec<u8> {
    let mut buffer = SPARE_BUFFER.take();
    buffer.clear();
    buffer.reserve(len);
    buffer
}

/// Gives back a buffer a payload or an answer was encoded into, once it is done with, for
/// the next one encoded on this thread; a large one is dropped.
pub(crate) fn give_back_buffer(buffer: Vec<u8>) {
    // An empty one (a revoked chunk's, say) would only replace a spare with nothing.
    if (1..=KEPT_BUFFER).contains(&buffer.capacity()) {
        SPARE_BUFFER.set(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a task that unwound left (where its answer went) is not the next task's.
    #[test]
    fn a_task_that_unwinds_leaves_nothing_to_the_next() {
        let unwound = std::panic::catch_unwind(|| {
            with_payload(None, || {
                // As a trampoline that put its answer into a file, then panicked.
                let file = std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
                let file = InternalFd::new(file);
                LENDING.with_borrow_mut(|l| l.place = AnswerPlace::File(file, 1));
                panic!("after its answer");
            })
        });
        assert!(unwound.is_err());
        let ((), place) = with_payload(None, || ());
        assert!(matches!(place, AnswerPlace::Bytes), "{place:?}");
    }

    /// A small buffer given back is the one the next payload or answer on the thread is
    /// encoded into; a large one is not kept.
    #[test]
    fn a_buffer_given_back_is_the_next_ones_unless_it_is_large() {
        let spare = Vec::with_capacity(100);
        let at = spare.as_ptr();
        give_back_buffer(spare);
        let Payload::Bytes(bytes) = Payload::encode(&7u64, false).unwrap() else {
            panic!("a small payload is bytes");
        };
        assert_eq!(bytes.as_ptr(), at, "the spare");
        assert_eq!(bytes, codec::encode(&7u64).unwrap(), "holding 7 alone");
        give_back_buffer(bytes);
        let answer = encode_answer(&(1u8, 2u8)).unwrap();
        assert_eq!(answer.as_ptr(), at);
        assert_eq!(answer, codec::encode(&(1u8, 2u8)).unwrap());
        give_back_buffer(Vec::with_capacity(KEPT_BUFFER + 1));
        assert_ne!(encode_answer(&1u8).unwrap().capacity(), KEPT_BUFFER + 1);
        // An empty one does not replace the spare.
        let spare = Vec::with_capacity(100);
        let at = spare.as_ptr();
        give_back_buffer(spare);
        give_back_buffer(Vec::new());
        let answer = encode_answer(&1u8).unwrap();
        assert_eq!(answer.as_ptr(), at);
    }

    /// The `len`-byte message in `file`, copied out; the file is then marked done.
    fn take(mapped: &mut Mapped, file: BorrowedFd<'_>, len: u64) -> Result<Vec<u8>, Error> {
        Received::InFile(mapped.keep(file, len)?).into_vec()
    }

    #[test]
    fn a_copy_is_inline_up_to_its_size_and_decodes_the_same_either_way() {
        // A `Vec<u8>` of n bytes encodes to 8 + n: every length from empty to past the
        // inline size, both sides of it.
        let mut sizes = Vec::new();
        for n in 0..SMALL + 10 {
            let value: Vec<u8> = (0..n as u8).collect();
            let bytes = codec::encode(&value).unwrap();
            sizes.push(bytes.len());
            let copy = Received::copy_of(&bytes);
            let inline = bytes.len() <= SMALL;
            assert_eq!(matches!(copy, Received::Small(..)), inline, "{} bytes", bytes.len());
            assert_eq!(copy.decode::<Vec<u8>>().unwrap().unwrap(), value);
            assert!(copy.readable().is_ok());
            assert_eq!(copy.into_vec().unwrap(), bytes);
        }
        assert!(sizes.contains(&SMALL) && sizes.contains(&(SMALL + 1)), "{sizes:?}");
        assert!(matches!(Received::copy_of(&[]), Received::Small(0, _)));
    }

    /// A pipe's sender counts a file in flight while its message may still be read: queued
    /// (nobody took it yet), for a grace after it left the socket unnamed, or while the
    /// process named in it runs; not once it is done, nor once its taker ended. It waits while
    /// 64 MiB would be in flight and is woken when one is done; a file let go is never written
    /// again, and a free one over the budget is not kept. A shut-down socket is `Closed`.
    #[test]
    fn a_pipes_sender_waits_for_files_that_may_still_be_read() {
        use crate::sys::socket;
        let (tx, rx) = socket::seqpacket_pair().unwrap();
        let mut spares = Spares::paced();
        let big = 40 << 20;
        let send = |spares: &mut Spares, len: usize| {
            let file = spares.write_paced(len, tx.as_fd(), |_| Ok(())).unwrap();
            socket::send(tx.as_fd(), &[&[1]], &[file.as_fd()]).unwrap();
        };
        let mut got = Vec::new();
        let mut receive = || {
            socket::recv(rx.as_fd(), &mut [0u8; 8], &mut got).unwrap();
            Mapping::open(got.last().unwrap().as_fd()).unwrap()
        };
        let identity =
            |s: &Spares| crate::sys::shm::file_identity(s.files[0].file.as_fd()).unwrap();
        send(&mut spares, big);
        let first = identity(&spares);
        let now = Instant::now();
        assert!(spares.files[0].worth_keeping(true, now), "queued, nobody took it");
        // Out of the socket, nobody named: counted for a grace, then let go.
        let _unnamed = receive();
        assert!(spares.files[0].worth_keeping(false, now));
        assert!(spares.files[0].worth_keeping(false, now + GRACE / 2));
        assert!(!spares.files[0].worth_keeping(false, now + GRACE));
        std::thread::sleep(GRACE);
        send(&mut spares, big);
        assert_eq!(spares.files.len(), 1, "the first let go");
        assert_ne!(identity(&spares), first, "a new file (the first is still open here)");
        // Named by a process that runs (this one): counted, queued or not.
        let reader = receive();
        let reading = taken(&reader);
        assert!(spares.files[0].worth_keeping(false, Instant::now() + GRACE));
        // Named by one that has ended: not counted.
        let ended = std::process::Command::new("true").spawn().unwrap();
        let pid = ended.id();
        ended.wait_with_output().unwrap();
        reader.word(TAKER_PID).store(pid, Ordering::Release);
        assert!(!spares.files[0].worth_keeping(true, Instant::now()), "{pid} ended");
        // Named again (the first guard forgotten: dropped, it would mark the file read).
        std::mem::forget(reading);
        let reading = taken(&reader);
        // 40 MiB in flight: another 40 waits until the first is read, then reuses its file.
        let kept = identity(&spares);
        let tx_fd = tx.try_clone().unwrap();
        let (started, waiting) = std::sync::mpsc::channel();
        let (wrote, written) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            started.send(()).unwrap();
            let file = spares.write_paced(big, tx_fd.as_fd(), |_| Ok(())).unwrap();
            wrote.send((file, spares)).unwrap();
        });
        let patience = std::time::Duration::from_secs(20);
        waiting.recv_timeout(patience).unwrap();
        let early = written.recv_timeout(std::time::Duration::from_millis(100));
        assert!(early.is_err(), "it waits while 80 MiB would be in flight");
        drop(reading);
        let (_file, mut spares) = written.recv_timeout(patience).unwrap();
        assert_eq!((spares.files.len(), identity(&spares)), (1, kept), "written again");
        // A free file over the budget is not kept.
        spares.files[0].map.word(0).store(0, Ordering::Release);
        send(&mut spares, KEEP_BYTES + 1);
        let huge = receive();
        done(&huge);
        assert!(!spares.files.last_mut().unwrap().worth_keeping(true, Instant::now()));
        // A socket shut down: `Closed`, not a wait.
        socket::shutdown(tx.as_fd()).unwrap();
        let e = spares.write_paced(10, tx.as_fd(), |_| Ok(())).unwrap_err();
        assert_eq!(e.kind(), &crate::error::ErrorKind::Closed);
    }

    #[test]
    fn mappings_are_kept_by_file_up_to_a_budget() {
        let mut spares = Spares::default();
        let mut mapped = Mapped::default();
        let msg = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 7) as u8).collect() };
        // The same file again and again (read each time): one mapping kept.
        for round in 0..5 {
            let m = msg(1000 + round);
            let file = spares.write(m.len(), |b| { b.copy_from_slice(&m); Ok(()) }).unwrap();
            assert_eq!(take(&mut mapped, file.as_fd(), m.len() as u64).unwrap(), m);
        }
        assert_eq!(spares.files.len(), 1, "the file was written again");
        assert_eq!(mapped.kept.len(), 1, "and mapped once");
        // A message larger than the budget is not kept once read, on either side.
        let big = msg(KEEP_BYTES + 1);
        let file = spares.write(big.len(), |b| { b.copy_from_slice(&big); Ok(()) }).unwrap();
        let kept: usize = spares.files.iter().map(|s| s.map.len()).sum();
        assert!(kept <= KEEP_BYTES, "{kept} bytes of files kept");
        assert_eq!(take(&mut mapped, file.as_fd(), big.len() as u64).unwrap(), big);
        assert!(mapped.passing.is_none());
        assert!(mapped.kept.iter().map(|(_, m)| m.len()).sum::<usize>() <= KEEP_BYTES);
        // Files in flight at once: at most KEEP_MAPPINGS mappings.
        let held: Vec<_> = (0..KEEP_MAPPINGS + 2)
            .map(|i| {
                let m = msg(100 + i);
                let f = spares.write(m.len(), |b| { b.copy_from_slice(&m); Ok(()) }).unwrap();
                (f, m)
            })
            .collect();
        for (f, m) in &held {
            assert_eq!(&take(&mut mapped, f.as_fd(), m.len() as u64).unwrap(), m);
        }
        assert!(mapped.kept.len() <= KEEP_MAPPINGS);
        // A bad length, and a file that is not one of ours.
        assert!(take(&mut mapped, held[0].0.as_fd(), u64::MAX).is_err());
        let unsealed = crate::sys::shm::testing::unsealed_memfd(4096);
        assert!(take(&mut mapped, unsealed.as_fd(), 10).is_err());
    }

    #[test]
    fn large_task_arguments_are_encoded_into_files_reused_and_capped() {
        let _alone = TASK_FILE_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let value = |b: u8| vec![b; WORTH_A_FILE + 1000];
        // Large: in a file, which holds exactly what the codec makes of it, and which a
        // worker reads in place.
        let first = Payload::encode(&value(1), true).unwrap();
        let encoded = codec::encode(&value(1)).unwrap();
        assert_eq!(first.len(), encoded.len());
        let id = Payload::file_identity(&first);
        let Payload::File(file) = &first else { unreachable!() };
        let mut mapped = Mapped::default();
        let read = Received::InFile(mapped.keep(file.fd(), file.len() as u64).unwrap());
        assert_eq!(read.decode::<Vec<u8>>().unwrap().unwrap(), value(1));
        // Small: bytes.
        assert!(matches!(Payload::encode(&[1u8; 100][..], true).unwrap(), Payload::Bytes(_)));
        // Held, the next large value goes in another file; dropped (its chunk answered, even
        // with the worker's reading still held), its file takes the next one.
        let second = Payload::encode(&value(2), true).unwrap();
        assert_ne!(Payload::file_identity(&second), id);
        drop(first);
        let third = Payload::encode(&value(3), true).unwrap();
        assert_eq!(Payload::file_identity(&third), id, "the file was reused");
        assert_eq!(third.into_vec().unwrap(), codec::encode(&value(3)).unwrap());
        drop(read);
        // At most MAX_TASK_FILES at once; past them, bytes (the dispatcher copies those into
        // a file of its own).
        let mut held = vec![second];
        while held.len() <= MAX_TASK_FILES {
            let p = Payload::encode(&value(4), true).unwrap();
            let in_file = matches!(p, Payload::File(_));
            held.push(p);
            if !in_file {
                break;
            }
        }
        let in_files = held.iter().filter(|p| matches!(p, Payload::File(_))).count();
        assert_eq!(in_files, MAX_TASK_FILES);
        assert_eq!(held.pop().unwrap().into_vec().unwrap(), codec::encode(&value(4)).unwrap());
        held.pop();
        assert!(matches!(Payload::encode(&value(5), true).unwrap(), Payload::File(_)));
        drop(held);
        forget_files();
        let kept = files().unwrap();
        assert!(kept.kept.is_empty() && kept.out == 0, "{} out", kept.out);
    }

    #[test]
    fn a_message_read_in_place_frees_its_file_when_dropped() {
        let mut spares = Spares::default();
        let mut mapped = Mapped::default();
        let m: Vec<u8> = (0..300_000).map(|i| (i % 251) as u8).collect();
        let len = m.len() as u64;
        let mut write = || {
            spares
                .write(m.len(), |b| {
                    b.copy_from_slice(&m);
                    Ok(())
                })
                .unwrap()
        };
        let id = |f: &InternalFd| crate::sys::shm::file_identity(f.as_fd()).unwrap();
        let f1 = write();
        let held = mapped.keep(f1.as_fd(), len).unwrap();
        // Held unread: the next message goes in another file.
        let f2 = write();
        assert_ne!(id(&f1), id(&f2));
        let read = Received::InFile(mapped.keep(f2.as_fd(), len).unwrap());
        assert_eq!(read.into_vec().unwrap(), m);
        // Read and dropped: its file is written again, not the held one.
        let f3 = write();
        assert_eq!(id(&f3), id(&f2));
        // The held message is intact; dropped, its file is free again.
        assert_eq!(Received::InFile(held).into_vec().unwrap(), m);
        let f4 = write();
        assert_eq!(id(&f4), id(&f1));
    }
}
