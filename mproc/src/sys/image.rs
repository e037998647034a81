//! Addresses inside the running executable.
//!
//! A target function crosses into a child as the offset of its entry trampoline from
//! [`ANCHOR`], a fixed symbol in this crate. Position-independent executables are loaded at a
//! different base in every process, but the distance between two symbols of one image is fixed
//! at link time, so the same offset names the same function in any process running the same
//! build. Which build is running is [`super::exe::identity`]'s job; nothing here is called
//! before that check has passed.

use std::mem;

use crate::Error;

/// The signature every entry trampoline has: encoded arguments in, encoded result out.
pub(crate) type Entry = fn(&[u8]) -> Result<Vec<u8>, Error>;

/// The fixed point offsets are measured from.
static ANCHOR: u8 = 0;

fn anchor_address() -> usize {
    std::hint::black_box(&ANCHOR) as *const u8 as usize
}

/// The offset of `entry` from the anchor, valid in every process running this build.
pub(crate) fn offset_of(entry: Entry) -> i64 {
    (entry as usize as i64).wrapping_sub(anchor_address() as i64)
}

/// The entry at `offset` from the anchor, if `identity` (the sender's build) is this build;
/// `None` for another build, whose offsets mean nothing here.
pub(crate) fn entry_for(identity: u64, offset: i64) -> Option<Entry> {
    if identity != super::exe::identity() {
        return None;
    }
    // SAFETY: the sender runs this very build (checked above), and offsets are only ever made
    // by `offset_of`, so this one names an `Entry` function of this image.
    Some(unsafe { entry_at(offset) })
}

/// The entry at `offset` from the anchor.
///
/// # Safety
///
/// `offset` must have come from [`offset_of`] in a process running the same build as this
/// one (the executable identity check has passed); any other value gives a pointer to
/// arbitrary code.
unsafe fn entry_at(offset: i64) -> Entry {
    let address = (anchor_address() as i64).wrapping_add(offset) as usize;
    // SAFETY: by this function's contract the address is that of an `Entry` function in this
    // image; fn pointers and usize have the same size on every supported target.
    unsafe { mem::transmute::<usize, Entry>(address) }
}

/// A value of the zero-sized callable type `F` (a `fn` item or a closure that captures
/// nothing), made from no bytes. Fails to compile for a callable with captured state.
pub(crate) fn conjure<F: Copy>() -> F {
    const {
        assert!(
            mem::size_of::<F>() == 0,
            "an mproc target must be a plain `fn` item or a closure that captures nothing"
        )
    };
    // SAFETY: F is zero-sized (checked above at compile time), so it has no bytes that could
    // be invalid; the only zero-sized types that implement the Fn traits are fn items and
    // closures with no (or only zero-sized) captures, all of which are inhabited and carry no
    // invariant, so a value made from nothing is as good as the one the parent had.
    unsafe { mem::zeroed() }
}
