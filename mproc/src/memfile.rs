//! Memory files for large messages, shared by pipes and the pool's worker sockets.
//!
//! A sender encodes a large message straight into a memory file and sends the descriptor
//! (`SCM_RIGHTS`) instead of the bytes, so they are never copied through a socket; it keeps the
//! file ([`Spares`]) and writes its next large message into it again once the receiver has set
//! the file's *done word* back to 0: when it has read the message, or, for a pool's task or
//! answer read in place ([`InFile`]), when that is dropped (a task's once it is decoded, an
//! answer's with its result). The receiver keeps its mappings of the last few files it was
//! sent ([`Mapped`]): mapping 10 MiB afresh (and unmapping it) cost more than copying the
//! message out.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::sys::fd;
use crate::sys::layout::SharedReader;
use crate::sys::shm::Mapping;
use crate::wire::codec;

/// Where a message starts in its memory file: after the *done word*, which the sender sets to
/// 1 when it sends the file and the receiver sets back to 0 once it is done with the message
/// (read, or an [`InFile`] dropped).
pub(crate) const FILE_HEADER: usize = 64;

/// From how many bytes a pool task's payload or answer travels in a memory file rather than on
/// the worker's socket: past a socket's buffer, the bytes would go through it in pieces, each
/// a wake-up on both sides.
pub(crate) const WORTH_A_FILE: usize = 256 * 1024;

/// How many memory files a sender keeps for reuse, and a receiver keeps mapped (within
/// [`KEEP_BYTES`] each): a file the receiver is done with is written again instead of a new
/// one being made (and its pages allocated and zeroed).
const SPARES: usize = 4;

/// A memory file sent, kept for reuse.
struct Spare {
    map: Mapping,
    file: OwnedFd,
}

impl Spare {
    fn is_free(&self) -> bool {
        self.map.word(0).load(Ordering::Acquire) == 0
    }
}

/// A sender's memory files.
#[derive(Default)]
pub(crate) struct Spares(Vec<Spare>);

impl Spares {
    /// Whether the receiver is done with every file (none in flight).
    #[cfg(test)]
    pub(crate) fn all_free(&self) -> bool {
        self.0.iter().all(Spare::is_free)
    }

    /// A memory file holding a message of `len` bytes that `fill` writes (a spare the
    /// receiver is done with, or a new one), marked in flight; returns a descriptor to send.
    pub(crate) fn write(
        &mut self,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), Error>,
    ) -> Result<OwnedFd, Error> {
        let need = FILE_HEADER
            .checked_add(len)
            .ok_or_else(|| Error::invalid("a message longer than memory"))?;
        let spares = &mut self.0;
        let at = match spares
            .iter()
            .position(|s| s.map.len() >= need && s.is_free())
        {
            Some(at) => at,
            None => {
                // Rounded up, so messages that vary a little in size share files.
                let size = need.next_multiple_of(64 * 1024);
                let (map, file) = Mapping::create("mproc-message", size)
                    .map_err(|e| Error::os("creating shared memory for a message", e))?;
                if spares.len() >= SPARES {
                    // A free one goes first; else the oldest (its receiver may never finish:
                    // dropping our copy only frees the memory once the receiver's is gone).
                    let victim = spares.iter().position(Spare::is_free).unwrap_or(0);
                    spares.remove(victim);
                }
                spares.push(Spare {
                    map,
                    file: file.into_owned(),
                });
                spares.len() - 1
            }
        };
        let spare = &mut spares[at];
        fill(&mut spare.map.bytes_mut_from(FILE_HEADER)[..len])?;
        let copy = fd::dup_above(spare.file.as_fd(), 0)
            .map_err(|e| Error::os("duplicating a message's memory file", e))?;
        spare.map.word(0).store(1, Ordering::Relaxed);
        self.keep_within(at);
        Ok(copy)
    }

    /// Keeps at most [`KEEP_BYTES`] of files: one larger goes as soon as it is sent (the copy
    /// in flight keeps it until its receiver is done), and free ones beyond the budget go,
    /// oldest first; `just` (the one just written) stays otherwise.
    fn keep_within(&mut self, just: usize) {
        let spares = &mut self.0;
        if spares[just].map.len() > KEEP_BYTES {
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
/// shrinking, so its pages stay. At most [`SPARES`] mappings and [`KEEP_BYTES`] are kept (a
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
                while kept.len() > 1
                    && (kept.len() > SPARES || kept.iter().map(|(_, m)| m.len()).sum::<usize>() > KEEP_BYTES)
                {
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

/// Marks a received file's message read: its sender may write the next one there.
pub(crate) fn done(map: &Mapping) {
    map.word(0).store(0, Ordering::Release);
}

/// Buffers of large encoded pool tasks, given back when their chunk is dropped (answered),
/// so that the next large task is encoded into memory already faulted in: a caller sending
/// 10 MiB arguments one call after another otherwise pays for 2560 fresh pages a call (the
/// allocator hands such blocks back to the system when they are freed). At most
/// [`KEEP_BUFFERS`] buffers and [`KEEP_BUFFER_BYTES`], process-wide, while a pool runs: a
/// pool's end lets them go ([`forget_buffers`]), and so does every child at its start.
static BUFFERS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// How many buffers [`BUFFERS`] keeps.
const KEEP_BUFFERS: usize = 2;

/// How many bytes [`BUFFERS`] keeps.
const KEEP_BUFFER_BYTES: usize = 64 << 20;

/// An empty buffer with room for `len` bytes: the smallest kept one that fits, when the
/// message is worth a file. Never waits: in a fork child, the lock may have been held by a
/// thread the fork left behind.
pub(crate) fn buffer(len: usize) -> Vec<u8> {
    if len >= WORTH_A_FILE
        && let Ok(mut kept) = BUFFERS.try_lock()
        && let Some((at, _)) = kept
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
    {
        let mut b = kept.swap_remove(at);
        b.clear();
        return b;
    }
    Vec::with_capacity(len)
}

/// Gives back a [`buffer`] no longer needed, to be kept if it is large (within the budget;
/// the oldest goes first).
pub(crate) fn recycle(b: Vec<u8>) {
    if !(WORTH_A_FILE..=KEEP_BUFFER_BYTES).contains(&b.capacity()) {
        return;
    }
    if let Ok(mut kept) = BUFFERS.try_lock() {
        kept.push(b);
        while kept.len() > KEEP_BUFFERS
            || kept.iter().map(Vec::capacity).sum::<usize>() > KEEP_BUFFER_BYTES
        {
            kept.remove(0);
        }
    }
}

/// Lets the kept buffers go: when a pool ends, and in a new child (a fork child inherits its
/// parent's, which it would only carry).
pub(crate) fn forget_buffers() {
    if let Ok(mut kept) = BUFFERS.try_lock() {
        *kept = Vec::new();
    }
}

/// A received message left in the memory file it came in, read in place: decoding it copies
/// each part once, straight into the value it becomes (a 10 MiB answer is not first copied
/// into a buffer of its own). Its sender writes the file again only once this is dropped.
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

/// What a pool worker lends the task it runs (see [`with_files`]), in one thread-local: set
/// up and taken back once per task.
struct Lending {
    /// While it runs a chunk whose arguments came in a memory file: the file, which the
    /// chunk's trampoline (`pool::task`) reads in place (not a copy of its bytes).
    payload: Option<InFile>,
    /// While it runs a task (any entry): its memory files for large answers, which a chunk's
    /// trampoline encodes a large answer into (not into a buffer then copied).
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

/// Where a pool task's answer went (see [`with_files`]).
#[derive(Debug)]
pub(crate) enum AnswerPlace {
    /// In the bytes the task returned.
    Bytes,
    /// Into this memory file of the worker's, `len` bytes long (the bytes returned are empty).
    File(OwnedFd, usize),
}

/// Runs `run` (a task's trampoline, in a pool worker) with the chunk's arguments `payload` in
/// a memory file if they came in one, and `spares` lent to put a large answer in; both are
/// taken back afterwards, even if `run` unwinds. Returns what `run` returned and where its
/// answer went.
pub(crate) fn with_files<R>(
    payload: Option<InFile>,
    spares: &mut Spares,
    run: impl FnOnce() -> R,
) -> (R, AnswerPlace) {
    /// Takes back what was lent, however `run` ends.
    struct Lent<'a>(&'a mut Spares);
    impl Drop for Lent<'_> {
        fn drop(&mut self) {
            // Unread if the entry was not a chunk's: dropped now (after the borrow), the file
            // is free again.
            let (_unread, kept) =
                LENDING.with_borrow_mut(|l| (l.payload.take(), l.files.take()));
            if let Some(kept) = kept {
                *self.0 = kept;
            }
        }
    }
    let lending = Lending {
        payload,
        files: Some(std::mem::take(spares)),
        place: AnswerPlace::Bytes,
    };
    // What was there (nothing, once the last task's were taken back) drops after the borrow.
    let _before = LENDING.with_borrow_mut(|l| std::mem::replace(l, lending));
    let lent = Lent(spares);
    let out = run();
    drop(lent);
    let place = LENDING.with_borrow_mut(|l| std::mem::replace(&mut l.place, AnswerPlace::Bytes));
    (out, place)
}

/// The arguments of the chunk the worker runs, when they came in a memory file (lent by
/// [`with_files`]): taken once, by the chunk's trampoline.
pub(crate) fn lent_payload() -> Option<InFile> {
    LENDING.with_borrow_mut(|l| l.payload.take())
}

/// Encodes a chunk's answer: into a memory file of the worker's when it is large and the
/// worker lent its files ([`with_files`]; the bytes returned are then empty), else into a
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
    let mut out = Vec::with_capacity(len);
    codec::encode_into(&mut out, value)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(spares.0.len(), 1, "the file was written again");
        assert_eq!(mapped.kept.len(), 1, "and mapped once");
        // A message larger than the budget is not kept once read, on either side.
        let big = msg(KEEP_BYTES + 1);
        let file = spares.write(big.len(), |b| { b.copy_from_slice(&big); Ok(()) }).unwrap();
        let kept: usize = spares.0.iter().map(|s| s.map.len()).sum();
        assert!(kept <= KEEP_BYTES, "{kept} bytes of files kept");
        assert_eq!(take(&mut mapped, file.as_fd(), big.len() as u64).unwrap(), big);
        assert!(mapped.passing.is_none());
        assert!(mapped.kept.iter().map(|(_, m)| m.len()).sum::<usize>() <= KEEP_BYTES);
        // Files in flight at once: at most SPARES mappings.
        let held: Vec<_> = (0..6)
            .map(|i| {
                let m = msg(100 + i);
                let f = spares.write(m.len(), |b| { b.copy_from_slice(&m); Ok(()) }).unwrap();
                (f, m)
            })
            .collect();
        for (f, m) in &held {
            assert_eq!(&take(&mut mapped, f.as_fd(), m.len() as u64).unwrap(), m);
        }
        assert!(mapped.kept.len() <= SPARES);
        // A bad length, and a file that is not one of ours.
        assert!(take(&mut mapped, held[0].0.as_fd(), u64::MAX).is_err());
        let unsealed = crate::sys::shm::testing::unsealed_memfd(4096);
        assert!(take(&mut mapped, unsealed.as_fd(), 10).is_err());
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
        let id = |f: &OwnedFd| crate::sys::shm::file_identity(f.as_fd()).unwrap();
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
