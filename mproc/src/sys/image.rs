//! Addresses inside the running executable.
//!
//! A target function crosses into a child as an offset from [`ANCHOR`], a fixed symbol in this
//! crate. Position-independent executables are loaded at a different base in every process,
//! but the distance between two symbols of one image is fixed at link time, so the same offset
//! names the same thing in any process running the same build. Which build is running is
//! [`super::exe::identity`]'s job.
//!
//! An offset is untrusted input, whoever sent it (a frame may come from a corrupt or hostile
//! peer, and later over a network): it names an [`EntryRecord`], never code. Each entry
//! function has one record, a constant the compiler places in the image's read-only data,
//! holding a 128-bit tag and a pointer to the function. An offset is followed only if it lands,
//! aligned, on read-only memory of this image that carries the tag, and the pointer there lies in
//! this image's code. The tag's bytes appear nowhere else in the image: the check compares
//! against a value computed at run time from its complement. So a bogus offset is refused
//! with an error; it is never turned into a jump.

// dl_iterate_phdr (no rustix wrapper), and entry points read back from addresses.
#![allow(unsafe_code)]

use std::mem;
use std::sync::OnceLock;

use crate::{Error, ErrorKind};

/// The signature every entry trampoline has: encoded arguments in, encoded result out.
pub(crate) type Entry = fn(&[u8]) -> Result<Vec<u8>, Error>;

/// The fixed point offsets are measured from.
static ANCHOR: u8 = 0;

fn anchor_address() -> usize {
    std::hint::black_box(&ANCHOR) as *const u8 as usize
}

/// The complement of the tag that opens every record: the tag itself is made at compile time
/// into records only, and at run time for the comparison, so no other constant in the image
/// carries its bytes.
const NOT_TAG: [u64; 2] = [0x26d2_6bb6_b2ea_2d16, 0xdf66_a24d_66ed_d59c];

/// What an offset names: a tag and an entry function. One per entry function, a constant in
/// the image (see the module docs).
#[repr(C)]
pub(crate) struct EntryRecord {
    tag: [u64; 2],
    entry: Entry,
}

/// The bytes of an [`EntryRecord`] as read before they are trusted: the pointer as a number.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawRecord {
    tag: [u64; 2],
    entry: usize,
}

const _: () = assert!(
    mem::size_of::<EntryRecord>() == mem::size_of::<RawRecord>()
        && mem::align_of::<EntryRecord>() == mem::align_of::<RawRecord>()
        && mem::size_of::<Entry>() == mem::size_of::<usize>()
);

/// Calls the zero-sized entry function `T` (a `fn` item).
fn call<T>(args: &[u8]) -> Result<Vec<u8>, Error>
where
    T: Fn(&[u8]) -> Result<Vec<u8>, Error> + Copy,
{
    conjure::<T>()(args)
}

/// The offset that names `entry` (a `fn` item of the [`Entry`] signature), valid in every
/// process running this build. Anything that receives it finds the function again with
/// [`entry_for`].
pub(crate) fn offset_of<T>(entry: T) -> i64
where
    T: Fn(&[u8]) -> Result<Vec<u8>, Error> + Copy,
{
    let _ = entry;
    let record: &'static EntryRecord = const {
        &EntryRecord {
            tag: [!NOT_TAG[0], !NOT_TAG[1]],
            entry: call::<T>,
        }
    };
    // Read the image's layout now, in the parent: a fork child then inherits it and need not
    // ask the loader, whose lock another thread may have held at the fork.
    let _ = image();
    (record as *const EntryRecord as usize as i64).wrapping_sub(anchor_address() as i64)
}

/// The entry function that `offset` names, if `identity` (the sender's build) is this build.
///
/// # Errors
///
/// `ExecutableMismatch` for another build, whose offsets mean nothing here; `Protocol` for an
/// offset that does not name an entry record of this image (see the module docs).
pub(crate) fn entry_for(identity: u64, offset: i64) -> Result<Entry, Error> {
    if identity != super::exe::identity() {
        return Err(ErrorKind::ExecutableMismatch.into());
    }
    let address = (anchor_address() as i64).wrapping_add(offset) as usize;
    record_at(address).ok_or_else(|| {
        Error::protocol(format!(
            "a function reference (offset {offset}) that names no target of this executable"
        ))
    })
}

/// Reads where this image lies in memory now (see [`image`]), so that the processes forked from
/// this one inherit it rather than each walking the loaded objects' program headers again
/// (`dl_iterate_phdr`: the dynamic loader's code and every object's headers, faulted in by
/// each of them).
pub(crate) fn prepare() {
    let _ = image();
}

/// Where this image lies in memory, from its program headers.
struct Image {
    /// Loaded segments: start and end addresses, and `PF_*` flags.
    loads: Vec<(usize, usize, u32)>,
    /// The range the loader makes read-only once it has relocated it (`PT_GNU_RELRO`), where
    /// constants holding pointers live in a position-independent image.
    relro: Option<(usize, usize)>,
}

impl Image {
    fn segment(&self, start: usize, len: usize) -> Option<u32> {
        let end = start.checked_add(len)?;
        self.loads
            .iter()
            .find(|&&(s, e, _)| s <= start && end <= e)
            .map(|&(_, _, flags)| flags)
    }

    /// Whether `len` bytes at `start` are constant: readable and never written after start-up.
    /// (Executable segments count too: a linker without separate code and data segments puts
    /// constants beside the code; code bytes never hold the tag.)
    fn is_constant(&self, start: usize, len: usize) -> bool {
        let Some(flags) = self.segment(start, len) else {
            return false;
        };
        let relocated_once = match self.relro {
            Some((s, e)) => s <= start && start + len <= e,
            // An image linked without RELRO has nowhere better to put them.
            None => true,
        };
        flags & libc::PF_R != 0 && (flags & libc::PF_W == 0 || relocated_once)
    }

    fn is_code(&self, address: usize) -> bool {
        self.segment(address, 1)
            .is_some_and(|flags| flags & libc::PF_X != 0)
    }
}

/// The image this crate is linked into, read once per process.
fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut found = Image {
            loads: Vec::new(),
            relro: None,
        };
        // SAFETY: the callback only reads the program headers the loader hands it, and `data`
        // points at `found`, which outlives the call.
        unsafe {
            libc::dl_iterate_phdr(Some(visit), (&mut found as *mut Image).cast());
        }
        found
    })
}

unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid dl_phdr_info whose dlpi_phdr points at dlpi_phnum
    // program headers; `data` is the `Image` passed by `image`, borrowed by nobody else.
    let (info, found) = unsafe { (&*info, &mut *data.cast::<Image>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: as above.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let base = info.dlpi_addr as usize;
    let ranges = phdrs.iter().map(|ph| {
        let start = base.wrapping_add(ph.p_vaddr as usize);
        (ph, start, start.saturating_add(ph.p_memsz as usize))
    });
    let anchor = anchor_address();
    let holds_anchor = ranges
        .clone()
        .any(|(ph, s, e)| ph.p_type == libc::PT_LOAD && s <= anchor && anchor < e);
    if !holds_anchor {
        return 0; // another object: a shared library, the vDSO
    }
    for (ph, s, e) in ranges {
        match ph.p_type {
            libc::PT_LOAD => found.loads.push((s, e, ph.p_flags)),
            libc::PT_GNU_RELRO => found.relro = Some((s, e)),
            _ => {}
        }
    }
    1
}

/// The entry function of the record at `address`, if one is there (see the module docs).
fn record_at(address: usize) -> Option<Entry> {
    let image = image();
    if !address.is_multiple_of(mem::align_of::<RawRecord>())
        || !image.is_constant(address, mem::size_of::<RawRecord>())
    {
        return None;
    }
    // SAFETY: the bytes lie inside a loaded, readable segment of this image that nobody
    // writes (checked above), aligned; any bit pattern is a valid `RawRecord`.
    let raw = unsafe { (address as *const RawRecord).read() };
    let not_tag = std::hint::black_box(NOT_TAG);
    if raw.tag != [!not_tag[0], !not_tag[1]] || !image.is_code(raw.entry) {
        return None;
    }
    // SAFETY: the tag is found only in the records `offset_of` makes, each holding an `Entry`
    // (the pointer lies in this image's code, as it must); fn pointers and usize have the
    // same size (asserted above).
    Some(unsafe { mem::transmute::<usize, Entry>(raw.entry) })
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
    // be invalid. It is a target (`Target` is sealed) or a function a target wraps: a fn item,
    // a closure with no (or only zero-sized) captures, or one of mproc's adapters (a struct of
    // `PhantomData`), all of which are inhabited and carry no invariant, so a value made from
    // nothing is as good as the one the parent had.
    unsafe { mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(args: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(args.to_vec())
    }

    fn other(_: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(b"other".to_vec())
    }

    #[test]
    fn an_offset_made_here_names_its_function() {
        let me = super::super::exe::identity();
        let f = entry_for(me, offset_of(echo)).unwrap();
        assert_eq!(f(b"abc").unwrap(), b"abc");
        let g = entry_for(me, offset_of(other)).unwrap();
        assert_eq!(g(b"").unwrap(), b"other");
        let e = entry_for(me ^ 1, offset_of(echo)).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::ExecutableMismatch);
    }

    #[test]
    fn bogus_offsets_are_refused_never_followed() {
        let me = super::super::exe::identity();
        let good = offset_of(echo);
        let code = (echo as Entry as usize as i64).wrapping_sub(anchor_address() as i64);
        // The tag made at run time, so the test binary has no constant with its bytes.
        let not_tag = std::hint::black_box(NOT_TAG);
        let heap = Box::new(RawRecord {
            tag: [!not_tag[0], !not_tag[1]],
            entry: echo as Entry as usize,
        });
        let forged =
            (&*heap as *const RawRecord as usize as i64).wrapping_sub(anchor_address() as i64);
        let stack = 0u64;
        let on_stack = (&stack as *const u64 as usize as i64).wrapping_sub(anchor_address() as i64);
        let complement =
            (&NOT_TAG as *const [u64; 2] as usize as i64).wrapping_sub(anchor_address() as i64);
        let mut bogus = vec![
            0,
            code,   // the function itself, not its record
            forged, // a perfect record, but not in the image's constants
            on_stack,
            complement,
            i64::MIN,
            i64::MAX,
            -1,
            1 << 40,
        ];
        // Inside the record, or astride it and a neighbour (records are 24 bytes).
        bogus.extend((-23..24).filter(|d| *d != 0).map(|d| good.wrapping_add(d)));
        for offset in bogus {
            let e = entry_for(me, offset)
                .err()
                .unwrap_or_else(|| panic!("offset {offset} (good: {good}) was taken for an entry"));
            assert!(matches!(e.kind(), ErrorKind::Protocol(_)), "{e}");
            assert!(e.to_string().contains("names no target"), "{e}");
        }
        // Every 8-aligned offset across the image's constants around the record: only
        // records pass (this one, and the other entry functions of this binary, compiled
        // into the same place), and reading the rest faults nowhere.
        let records = (-(1i64 << 16)..(1 << 16))
            .step_by(8)
            .filter(|d| entry_for(me, good.wrapping_add(*d)).is_ok())
            .count();
        assert!((1..1000).contains(&records), "{records} records found");
    }
}
