//! This process's id, kept where every fork empties it.
//!
//! mproc asks for its process id often: every descriptor it makes or closes checks that it is
//! still the process that made it (a fork child inherits the parent's bookkeeping, see
//! [`super::fd::InternalFd`]), and a start and join of a child ask a dozen times. `getpid(2)`
//! is a system call each time: the C library stopped caching the id (glibc 2.25), since a
//! cache in ordinary memory is wrong in a child made by `clone` behind the library's back.
//!
//! This cache lives in a page the kernel empties in every child a fork makes, however it was
//! made (`MADV_WIPEONFORK`, Linux 4.14): such a child finds it empty and asks the kernel again.
//! Only a process sharing its parent's memory would see the parent's id there (`vfork` before
//! its `exec`, or `clone` with `CLONE_VM` and without `CLONE_THREAD`); mproc runs nothing in
//! one. Without such a page (an older kernel), every call asks the kernel.

#![allow(unsafe_code)] // mmap(2) and madvise(2) of the page the id lives in

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

/// The word in the page, once made (never unmapped).
static CELL: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());
/// Set once the page could not be made: every call then asks the kernel.
static NO_CELL: AtomicBool = AtomicBool::new(false);

/// This process's id (getpid(2)), without a system call once known in this process.
pub(crate) fn getpid() -> u32 {
    let Some(cell) = cell() else {
        return std::process::id();
    };
    // Any thread may fill it; each finds the same id. A fork meanwhile empties the child's
    // page, never this one.
    match cell.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            cell.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// The word the id is kept in; `None` if no page that forks empty could be made.
fn cell() -> Option<&'static AtomicU32> {
    let at = CELL.load(Ordering::Acquire);
    if !at.is_null() {
        // SAFETY: a page made by `make`, which is never unmapped, readable and writable,
        // aligned for a `u32`, and only ever touched through this atomic.
        return Some(unsafe { &*at });
    }
    if NO_CELL.load(Ordering::Relaxed) {
        return None;
    }
    let Some(made) = make() else {
        NO_CELL.store(true, Ordering::Relaxed);
        return None;
    };
    // Made without a lock (a fork in the middle leaves the child nothing to wait for): a
    // thread that lost the race gives its page back and uses the winner's.
    let at = match CELL.compare_exchange(
        std::ptr::null_mut(),
        made,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => made,
        Err(winner) => {
            // SAFETY: `made` is the page this call mapped, never published, so nobody else
            // holds it.
            let _ = unsafe { rustix::mm::munmap(made.cast(), page()) };
            winner
        }
    };
    // SAFETY: as above.
    Some(unsafe { &*at })
}

/// A fresh private page that forks empty, zero-filled.
fn make() -> Option<*mut AtomicU32> {
    use rustix::mm::{Advice, MapFlags, ProtFlags};
    let len = page();
    // SAFETY: a new anonymous mapping at an address the kernel picks: it overlaps nothing.
    let at = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )
    }
    .ok()?;
    // SAFETY: advice on the page just mapped, which changes only what a fork child sees there.
    if unsafe { rustix::mm::madvise(at, len, Advice::LinuxWipeOnFork) }.is_err() {
        // SAFETY: the page just mapped, not published.
        let _ = unsafe { rustix::mm::munmap(at, len) };
        return None;
    }
    Some(at.cast())
}

fn page() -> usize {
    rustix::param::page_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_kept_and_a_fork_child_finds_its_own() {
        assert_eq!(getpid(), std::process::id());
        assert!(cell().is_some_and(|c| c.load(Ordering::Relaxed) == std::process::id()));
        // A child made by a raw clone system call (no fork handlers run) reads its own id.
        let mut pipe = [0i32; 2];
        // SAFETY: a two-element array for pipe(2) to fill.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: the child only reads the cache, writes four bytes to a pipe and leaves with
        // _exit: nothing that could need a lock another thread of this test held at the fork.
        let child = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) } as i32;
        if child == 0 {
            let mine = getpid().to_ne_bytes();
            // SAFETY: four bytes from a live array to the pipe's write end; then _exit.
            unsafe {
                libc::write(pipe[1], mine.as_ptr().cast(), 4);
                libc::_exit(0);
            }
        }
        assert!(child > 0);
        let mut got = [0u8; 4];
        // SAFETY: reads four bytes into a live array from the pipe's read end.
        let n = unsafe { libc::read(pipe[0], got.as_mut_ptr().cast(), 4) };
        let mut status = 0;
        // SAFETY: waits for the child just forked; `status` is writable.
        unsafe { libc::waitpid(child, &mut status, 0) };
        // SAFETY: the pipe's two descriptors, owned here and not used again.
        unsafe {
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        assert_eq!(n, 4);
        assert_eq!(u32::from_ne_bytes(got), child as u32, "the child's own id, not ours");
        assert_eq!(getpid(), std::process::id(), "the parent's is unchanged");
    }
}
