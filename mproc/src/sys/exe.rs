//! Which build of the executable is running.
//!
//! A child from a different build must refuse a function offset instead of jumping to a wrong
//! address. The identity is the linker's GNU build ID note of the running image (a hash of its
//! contents, present in binaries linked by GNU ld, gold, lld and mold with their defaults on
//! Debian and most distributions), read from memory through dl_iterate_phdr(3). When the image
//! has no such note, it falls back to the device, inode, size and modification time of
//! `/proc/self/exe`, so a rebuilt file is still told apart. Either way the distance between two
//! of its symbols is mixed in (see [`layout_distance`]), so two builds that share a note by
//! accident still differ when their layouts do.

// dl_iterate_phdr (no rustix wrapper) and the program headers it hands back.
#![allow(unsafe_code)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::slice;
use std::sync::OnceLock;

/// This build's identity, computed once per process (a forked child inherits it).
pub(crate) fn identity() -> u64 {
    static IDENTITY: OnceLock<u64> = OnceLock::new();
    *IDENTITY.get_or_init(compute)
}

fn compute() -> u64 {
    let mut h = DefaultHasher::new();
    match build_id() {
        Some(id) => id.hash(&mut h),
        None => {
            if let Ok(m) = std::fs::metadata("/proc/self/exe") {
                (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()).hash(&mut h);
            }
        }
    }
    layout_distance().hash(&mut h);
    h.finish()
}

/// The distance between a function and a static of this image: fixed at link time, so two
/// builds that share a build ID by accident still differ when their layouts do.
fn layout_distance() -> i64 {
    static ANCHOR: u8 = 0;
    let anchor = std::hint::black_box(&ANCHOR) as *const u8 as usize;
    let probe = std::hint::black_box(layout_probe as fn() -> u8) as usize;
    (probe as i64).wrapping_sub(anchor as i64)
}

fn layout_probe() -> u8 {
    std::hint::black_box(7)
}

/// The GNU build ID of the main executable, if it carries one.
fn build_id() -> Option<Vec<u8>> {
    let mut found: Option<Vec<u8>> = None;
    // SAFETY: the callback only reads the program headers the loader hands it, and `data`
    // points at `found`, which outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&mut found as *mut Option<Vec<u8>>).cast());
    }
    found
}

const NT_GNU_BUILD_ID: u32 = 3;

unsafe extern "C" fn visit(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid dl_phdr_info; the first object it reports is the main
    // executable, whose loaded PT_NOTE segments are readable memory at dlpi_addr + p_vaddr
    // for p_memsz bytes. `data` is the `Option<Vec<u8>>` passed by build_id.
    unsafe {
        let info = &*info;
        let phdrs = slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize);
        for ph in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
            let start = (info.dlpi_addr as usize + ph.p_vaddr as usize) as *const u8;
            let notes = slice::from_raw_parts(start, ph.p_memsz as usize);
            if let Some(id) = find_build_id(notes) {
                *data.cast::<Option<Vec<u8>>>() = Some(id.to_vec());
                break;
            }
        }
    }
    1 // stop after the main executable
}

/// Walks ELF notes (4-byte aligned `namesz`, `descsz`, `type`, name, desc) for the GNU build ID.
fn find_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    let word = |b: &[u8], i: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
    };
    let align = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name_end = 12 + align(namesz);
        let desc_end = name_end.checked_add(align(descsz))?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc);
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_has_a_stable_identity() {
        assert_eq!(identity(), compute());
    }

    #[test]
    fn note_walk_finds_the_build_id_and_survives_garbage() {
        let mut notes = Vec::new();
        for (name, kind, desc) in [(&b"XY\0"[..], 1u32, &[9u8; 5][..]), (b"GNU\0", 3, &[7; 20])] {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
            notes.extend(desc);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
        }
        assert_eq!(find_build_id(&notes), Some(&[7u8; 20][..]));
        for cut in 0..notes.len() {
            let _ = find_build_id(&notes[..cut]);
        }
        assert_eq!(find_build_id(&[0xff; 40]), None);
    }
}
