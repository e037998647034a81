//! A module of the pool bench, not a bench of its own: a call to another process reduced to
//! its encoding, its hand-over and the call itself, both sides spinning (issue 15, item 4).
//!
//! The parent encodes the call (an entry number and the argument tuple) with mproc's own wire
//! codec into one cache line of a shared page and bumps its sequence word; a forked child
//! spinning on that line decodes it, calls the function, encodes `Result<R, String>` into a
//! second line and bumps that one's word; the parent, spinning, decodes the answer. Nothing
//! else, so this is a lower bound and not a design: no result handle to wait on from any
//! thread in any order, one caller and one worker, no function table to look the entry up in
//! (a `match`), no claim (a call a dead child took is simply lost), no sleep words (both sides
//! burn a core while idle), no statistics, timeouts or cancel, and a payload of at most 56
//! bytes carried in the sequence word's own line. It is the spin ping-pong
//! (`WordEcho::spinning`) with the encoding and the call an `apply` needs. [`DutyEcho`] puts
//! back what any pool call must do, as a lean design would.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::common;
use crate::wire;

/// One cache line: a sequence word, a length word, and the encoded bytes.
#[repr(C, align(64))]
struct Slot {
    seq: AtomicU32,
    len: AtomicU32,
    bytes: [u8; BYTES],
}

/// What fits beside the two words.
const BYTES: usize = 56;

/// The request line and the answer line of the shared page.
#[repr(C)]
struct Page {
    ask: Slot,
    answer: Slot,
}

/// Tells the child to leave.
const STOP: u32 = u32::MAX;

/// The function the child calls for entry 1 (the pool bench's `ident`).
fn call(entry: i64, args: (u64,)) -> Result<u64, String> {
    match entry {
        1 => Ok(std::hint::black_box(args.0)),
        _ => Err(format!("no function at entry {entry}")),
    }
}

/// A forked child answering encoded calls through a shared page; see the module's docs.
pub(crate) struct CallEcho {
    page: *mut Page,
    pid: libc::pid_t,
    seq: u32,
}

/// Encodes `value` into the bytes of the line at `slot` and publishes it under `seq` (its
/// length word first, then the sequence word, released).
///
/// # Safety
/// `slot` points into the live shared page, and the other process is not reading its bytes
/// (it waits for `seq`).
unsafe fn put<T: Serialize>(slot: *mut Slot, seq: u32, value: &T) {
    let mut buf = [0u8; BYTES];
    let len = wire::codec::encoded_len(value).expect("encodable");
    assert!(len <= BYTES, "a call's floor sends one cache line");
    wire::codec::encode_to_slice(&mut buf[..len], value).expect("encode");
    // SAFETY: the line is live and nobody reads its bytes now (the caller's contract); the
    // words are atomics of the same line.
    unsafe {
        std::ptr::copy_nonoverlapping(buf.as_ptr(), (&raw mut (*slot).bytes).cast::<u8>(), len);
        (*slot).len.store(len as u32, Ordering::Relaxed);
        (*slot).seq.store(seq, Ordering::Release);
    }
}

/// Waits (spinning) until the line at `slot` holds a sequence number other than `last`, then
/// decodes its bytes; returns the number and the value (`None` once told to stop). With
/// `writer`, panics if that child has died instead of spinning forever.
///
/// # Safety
/// `slot` points into the live shared page, whose writer leaves the bytes alone once it has
/// published them until this side answers.
unsafe fn take<T: DeserializeOwned>(
    slot: *const Slot,
    last: u32,
    writer: Option<libc::pid_t>,
) -> (u32, Option<T>) {
    // SAFETY: the line is live (the caller's contract); its words are atomics.
    let (seq, len) = unsafe {
        let mut spins = 0u64;
        let seq = loop {
            let v = (*slot).seq.load(Ordering::Acquire);
            if v != last {
                break v;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(1 << 24) && writer.is_some_and(common::has_ended) {
                panic!("the call floor's child died");
            }
        };
        let len = (*slot).len.load(Ordering::Relaxed) as usize;
        (seq, len.min(BYTES))
    };
    if seq == STOP {
        return (seq, None);
    }
    let mut buf = [0u8; BYTES];
    // SAFETY: published before `seq` (acquired above) and left alone until this side answers.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&raw const (*slot).bytes).cast::<u8>(),
            buf.as_mut_ptr(),
            len,
        );
    }
    (seq, Some(wire::codec::decode(&buf[..len]).expect("decode")))
}

impl CallEcho {
    /// Forks the child; it spins on a core until this is dropped (or this process dies).
    pub(crate) fn start() -> CallEcho {
        let page = common::shared_page().cast::<Page>();
        // The child only reads and writes the shared page, encodes, decodes and calls; it is
        // forked before this bench starts any thread (`apply` is its first section).
        let pid = common::fork_child(|| {
            let mut seen = 0;
            loop {
                // SAFETY: the page is mapped (zeroed, page-aligned, so each line is aligned),
                // shared with the parent and never unmapped in this child; the parent writes
                // the ask line only before bumping its word and reads the answer line only
                // after this child bumps its own.
                let (seq, ask) =
                    unsafe { take::<(i64, (u64,))>(&raw const (*page).ask, seen, None) };
                let Some((entry, args)) = ask else {
                    return;
                };
                seen = seq;
                // SAFETY: as above; the parent waits for `seq` on this line.
                unsafe { put(&raw mut (*page).answer, seq, &call(entry, args)) };
            }
        });
        CallEcho { page, pid, seq: 0 }
    }

    /// Calls entry 1 with `(x,)` in the child and returns its answer.
    pub(crate) fn call(&mut self, x: u64) -> u64 {
        let last = self.seq;
        self.seq = if last + 1 == STOP { 1 } else { last + 1 };
        // SAFETY: the page stays mapped until this drops; the child reads the ask line only
        // after its word moves, and writes the answer line only before bumping its word.
        let (_, answer) = unsafe {
            put(&raw mut (*self.page).ask, self.seq, &(1i64, (x,)));
            take::<Result<u64, String>>(&raw const (*self.page).answer, last, Some(self.pid))
        };
        answer.expect("the child answers").expect("entry 1 answers")
    }
}

impl Drop for CallEcho {
    fn drop(&mut self) {
        // SAFETY: the page is still mapped, and this process does not use it afterwards.
        unsafe {
            (*self.page).ask.seq.store(STOP, Ordering::Release);
            common::reap_and_unmap(self.pid, self.page.cast());
        }
    }
}

/// A call with a pool's duties kept (issue 15, item 4): what a lean `apply` path must do at
/// the least, timed as [`CallEcho`] is. Beyond the encoded call:
/// - a result handle per call (`Arc<Job>`: a done flag and the answer's bytes under a mutex),
///   which any thread may wait on, in any order: the answer is delivered into it by whoever
///   reads the answer ring, under the books' lock, and decoded from it under its own lock;
/// - the books: a lock taken to number the call and file its handle, and again by the waiter
///   that reads the answers and finds each one's handle by its number;
/// - a ring of frames each way, each frame saying itself that it is there (its sequence word);
/// - a claim: the worker swaps the frame's claim word from queued to claimed before it runs the
///   call (a dispatcher could revoke it with a compare-exchange), and counts it in its own
///   `started` word;
/// - a function table (entries to trampolines that decode, call under `catch_unwind`, and
///   encode straight into the answer's frame);
/// - sleep words: after publishing, each side reads the other's (never set here: both spin).
///
/// Still left out: timeouts, cancel, statistics, payloads over 40 bytes, several workers.
pub(crate) struct DutyEcho {
    page: *mut DutyPage,
    pid: libc::pid_t,
    books: std::sync::Mutex<Books>,
}

/// Frames per ring.
const RING: usize = 16;

/// What a frame holds beside its words.
const FRAME_BYTES: usize = 40;

/// One frame: its sequence word (the call's number plus one once written), its length, the
/// claim word (`QUEUED | n`, then `CLAIMED | n`), the call's number, the bytes.
#[repr(C, align(64))]
struct Frame {
    seq: std::sync::atomic::AtomicU64,
    claim: std::sync::atomic::AtomicU64,
    len: AtomicU32,
    entry: AtomicU32,
    bytes: [u8; FRAME_BYTES],
}

const QUEUED: u64 = 1 << 62;
const CLAIMED: u64 = 1 << 63;
const DUTY_STOP: u64 = u64::MAX;

/// A side's own line: its sleep word and, for the worker, its count of calls started.
#[repr(C, align(64))]
struct Own {
    asleep: AtomicU32,
    started: std::sync::atomic::AtomicU64,
}

#[repr(C)]
struct DutyPage {
    ask: [Frame; RING],
    answer: [Frame; RING],
    caller: Own,
    worker: Own,
}

/// The caller's books: the next call's number, the handles of calls not yet answered, and
/// how far the answer ring has been read.
struct Books {
    next: u64,
    jobs: [Option<std::sync::Arc<Job>>; RING],
    answers_read: u64,
}

/// A call's result handle.
struct Job {
    done: std::sync::atomic::AtomicBool,
    answer: std::sync::Mutex<(usize, [u8; FRAME_BYTES])>,
}

impl Default for Job {
    fn default() -> Job {
        Job {
            done: std::sync::atomic::AtomicBool::new(false),
            answer: std::sync::Mutex::new((0, [0; FRAME_BYTES])),
        }
    }
}

/// The worker's function table: decodes the arguments, calls, encodes `Result<R, String>`
/// into `out`; the bytes written.
type Trampoline = fn(&[u8], &mut [u8]) -> usize;

fn ident_trampoline(args: &[u8], out: &mut [u8]) -> usize {
    let answer: Result<u64, String> = match wire::codec::decode::<(u64,)>(args) {
        Ok(args) => std::panic::catch_unwind(|| std::hint::black_box(args.0))
            .map_err(|_| "panicked".to_string()),
        Err(e) => Err(e.to_string()),
    };
    let len = wire::codec::encoded_len(&answer).expect("encodable");
    assert!(len <= out.len(), "a duty call's answer fits its frame");
    wire::codec::encode_to_slice(&mut out[..len], &answer).expect("encode");
    len
}

const TABLE: [Trampoline; 2] = [ident_trampoline, ident_trampoline];

impl DutyEcho {
    /// Forks the worker; it spins on a core until this is dropped (or this process dies).
    pub(crate) fn start() -> DutyEcho {
        assert!(size_of::<DutyPage>() <= 4096);
        let page = common::shared_page().cast::<DutyPage>();
        let pid = common::fork_child(|| {
            let mut n = 0u64;
            let mut out = [0u8; FRAME_BYTES];
            loop {
                // SAFETY: the page is mapped (zeroed, page-aligned), shared with the parent
                // and never unmapped in this child. The parent writes frame `n % RING` of the
                // ask ring only before storing its sequence word, and reads frame `n % RING`
                // of the answer ring only after this child stores that one's.
                unsafe {
                    let f = &(*page).ask[n as usize % RING];
                    let seq = loop {
                        let seq = f.seq.load(Ordering::Acquire);
                        if seq == n + 1 || seq == DUTY_STOP {
                            break seq;
                        }
                        std::hint::spin_loop();
                    };
                    if seq == DUTY_STOP {
                        return;
                    }
                    // The claim: one swap; a revoked call would be skipped.
                    if f.claim.swap(CLAIMED | n, Ordering::AcqRel) != QUEUED | n {
                        n += 1;
                        continue;
                    }
                    (*page).worker.started.store(n + 1, Ordering::Release);
                    let len = (f.len.load(Ordering::Relaxed) as usize).min(FRAME_BYTES);
                    let entry = f.entry.load(Ordering::Relaxed) as usize;
                    let args = std::slice::from_raw_parts((&raw const f.bytes).cast::<u8>(), len);
                    let written = match TABLE.get(entry) {
                        Some(t) => t(args, &mut out),
                        None => 0,
                    };
                    let a = &(*page).answer[n as usize % RING];
                    std::ptr::copy_nonoverlapping(
                        out.as_ptr(),
                        (&raw const a.bytes).cast::<u8>().cast_mut(),
                        written,
                    );
                    a.len.store(written as u32, Ordering::Relaxed);
                    a.seq.store(n + 1, Ordering::Release);
                    // The caller's sleep word: a wake-up would be sent if it were set.
                    std::hint::black_box((*page).caller.asleep.load(Ordering::Acquire));
                }
                n += 1;
            }
        });
        DutyEcho {
            page,
            pid,
            books: std::sync::Mutex::new(Books {
                next: 0,
                jobs: Default::default(),
                answers_read: 0,
            }),
        }
    }

    /// Submits entry 1 with `(x,)`; its handle.
    fn submit(&self, x: u64) -> std::sync::Arc<Job> {
        let job = std::sync::Arc::new(Job::default());
        let mut books = self.books.lock().expect("books");
        let n = books.next;
        books.next += 1;
        let mut buf = [0u8; FRAME_BYTES];
        let len = wire::codec::encoded_len(&(x,)).expect("encodable");
        wire::codec::encode_to_slice(&mut buf[..len], &(x,)).expect("encode");
        // SAFETY: the page stays mapped until this drops; the worker reads frame `n % RING`
        // only once its sequence word says `n + 1` (stored last, released), and has answered
        // call `n - RING` (one call is in flight at a time here).
        unsafe {
            let f = &(*self.page).ask[n as usize % RING];
            std::ptr::copy_nonoverlapping(
                buf.as_ptr(),
                (&raw const f.bytes).cast::<u8>().cast_mut(),
                len,
            );
            f.len.store(len as u32, Ordering::Relaxed);
            f.entry.store(1, Ordering::Relaxed);
            f.claim.store(QUEUED | n, Ordering::Relaxed);
            f.seq.store(n + 1, Ordering::Release);
            // The worker's sleep word: a wake-up would be sent if it were set.
            std::hint::black_box((*self.page).worker.asleep.load(Ordering::Acquire));
        }
        books.jobs[n as usize % RING] = Some(job.clone());
        job
    }

    /// Reads the answers there are and delivers each into its handle (under the books' lock).
    fn help(&self) {
        let Ok(mut books) = self.books.try_lock() else {
            return;
        };
        loop {
            let n = books.answers_read;
            // SAFETY: as in `submit`; the worker writes frame `n % RING` of the answer ring
            // only before storing its sequence word.
            let (len, bytes) = unsafe {
                let a = &(*self.page).answer[n as usize % RING];
                if a.seq.load(Ordering::Acquire) != n + 1 {
                    return;
                }
                let len = (a.len.load(Ordering::Relaxed) as usize).min(FRAME_BYTES);
                let mut bytes = [0u8; FRAME_BYTES];
                std::ptr::copy_nonoverlapping(
                    (&raw const a.bytes).cast::<u8>(),
                    bytes.as_mut_ptr(),
                    len,
                );
                (len, bytes)
            };
            books.answers_read += 1;
            if let Some(job) = books.jobs[n as usize % RING].take() {
                *job.answer.lock().expect("job") = (len, bytes);
                job.done.store(true, Ordering::Release);
            }
        }
    }

    /// Waits for `job`'s answer (helping read the answers meanwhile) and decodes it.
    fn get(&self, job: &Job) -> u64 {
        let mut spins = 0u64;
        while !job.done.load(Ordering::Acquire) {
            self.help();
            std::hint::spin_loop();
            spins += 1;
            if spins.is_multiple_of(1 << 24) && common::has_ended(self.pid) {
                panic!("the duty floor's child died");
            }
        }
        let answer = job.answer.lock().expect("job");
        let decoded: Result<u64, String> =
            wire::codec::decode(&answer.1[..answer.0]).expect("decode");
        decoded.expect("entry 1 answers")
    }

    /// Calls entry 1 with `(x,)` in the child and returns its answer.
    pub(crate) fn call(&self, x: u64) -> u64 {
        let job = self.submit(x);
        self.get(&job)
    }
}

impl Drop for DutyEcho {
    fn drop(&mut self) {
        let n = self.books.get_mut().map_or(0, |b| b.next);
        // SAFETY: the page is still mapped, and this process does not use it afterwards.
        unsafe {
            (*self.page).ask[n as usize % RING]
                .seq
                .store(DUTY_STOP, Ordering::Release);
            common::reap_and_unmap(self.pid, self.page.cast());
        }
    }
}
