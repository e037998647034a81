//! The only place in mproc that talks to the operating system.
//!
//! # Contract
//!
//! Everything above this module is safe Rust. Each function here wraps one system call (or a
//! small, fixed sequence of them) and turns its failure into an [`io::Error`] through the
//! `syscall!` macro, in one place. Descriptors cross this boundary as [`OwnedFd`] or
//! [`BorrowedFd`], never as bare integers, except where a number must be written into a child's
//! environment or compared with `/proc/self/fd`. Every descriptor this module creates has
//! `FD_CLOEXEC` set: a descriptor reaches a child only when the start method hands it over
//! explicitly.
//!
//! Every `unsafe` block carries a `// SAFETY:` line saying why it is sound.
//!
//! [`OwnedFd`]: std::os::fd::OwnedFd
//! [`BorrowedFd`]: std::os::fd::BorrowedFd
//! [`io::Error`]: std::io::Error

#![allow(unsafe_code)]

/// Calls a libc function and turns a `-1` return into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of the macro states why the arguments are valid for this call.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

pub(crate) mod dir;
pub(crate) mod exe;
pub(crate) mod fd;
pub(crate) mod futex;
pub(crate) mod image;
pub(crate) mod layout;
pub(crate) mod proc;
pub(crate) mod shared;
pub(crate) mod shm;
pub(crate) mod socket;
pub(crate) mod watch;
