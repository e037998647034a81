//! The only place in mproc that talks to the operating system.
//!
//! # Contract
//!
//! Everything above this module is safe Rust. Each function here wraps one system call (or a
//! small, fixed sequence of them), through [rustix] where it covers the call (typed flags,
//! owned descriptors, `Errno`), and through libc where it does not; each failure becomes an
//! [`io::Error`]. Descriptors cross this boundary as [`OwnedFd`] or [`BorrowedFd`], never as
//! bare integers, except where a number must be written into a child's environment or compared
//! with `/proc/self/fd`. Every descriptor this module creates has `FD_CLOEXEC` set: a
//! descriptor reaches a child only when the start method hands it over explicitly.
//!
//! One file is not about the system: [`cast`] holds the two type casts that let the codec copy a
//! sequence of numbers whole, kept here with the rest of the crate's `unsafe`.
//!
//! A file here that needs `unsafe` says so itself (`#![allow(unsafe_code)]`, with the reason
//! beside it); the crate denies it everywhere else. Every `unsafe` block carries a
//! `// SAFETY:` line saying why it is sound.
//!
//! [rustix]: https://docs.rs/rustix
//! [`OwnedFd`]: std::os::fd::OwnedFd
//! [`BorrowedFd`]: std::os::fd::BorrowedFd
//! [`io::Error`]: std::io::Error

pub(crate) mod cast;
pub(crate) mod dir;
pub(crate) mod exe;
pub(crate) mod fd;
pub(crate) mod futex;
pub(crate) mod image;
pub(crate) mod layout;
pub(crate) mod pid;
pub(crate) mod proc;
pub(crate) mod shared;
pub(crate) mod shm;
pub(crate) mod socket;
pub(crate) mod time;
pub(crate) mod watch;
