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
//! (`WordEcho::spinning`) with the encoding and the call an `apply` needs.

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
