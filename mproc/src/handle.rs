//! How handles that own a descriptor (a `Lock`, a `Value`, ...) cross into another process.
//!
//! A handle serializes as a small index. While mproc encodes a target's arguments it collects
//! the descriptors those indices stand for ([`collecting`]); they travel beside the bytes,
//! attached to the same socket message with `SCM_RIGHTS`, whatever the start method. The
//! receiving side decodes the arguments with the descriptors it received in hand
//! ([`providing`]), and each handle takes its own back by index. A target's (or a pool
//! task's) returned value goes back the same way: its trampoline collects, leaves the
//! descriptors for the worker to send with the answer ([`stash_returned`]), and the parent
//! decodes the value with them in hand.
//!
//! Outside those two contexts (a handle put in a `Queue`, say), serializing a handle is an
//! error with a sentence that says where handles may go.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::thread::LocalKey;

use crate::sys::fd::InternalFd;

thread_local! {
    /// Descriptors of the handles met while encoding, in index order (each once) within each
    /// open scope ([`collecting`]; an inner scope's follow its outer one's): the handle's
    /// number, and the descriptor that travels (a duplicate, or what [`export_with`] made).
    static OUTGOING: RefCell<Vec<(RawFd, InternalFd)>> = const { RefCell::new(Vec::new()) };
    /// Where the innermost open scope's descriptors start in `OUTGOING`, and its length.
    static OUTGOING_FROM: Marks = const { Cell::new((None, 0)) };
    /// Descriptors received with the message being decoded, by index within each open scope
    /// ([`providing`]), as `OUTGOING` (a handle that appears several times in the message
    /// shares one; each decoded handle gets its own copy).
    static INCOMING: RefCell<Vec<InternalFd>> = const { RefCell::new(Vec::new()) };
    /// Where the innermost open scope's descriptors start in `INCOMING`, and its length.
    static INCOMING_FROM: Marks = const { Cell::new((None, 0)) };
}

/// An open scope of a thread-local stack (of descriptors here, `OUTGOING` and `INCOMING`; of a
/// pool's deferred callbacks in `pool::job`): it holds what lies past `start`, and hides what
/// lies before (an outer scope's). Closed in the reverse
/// order of opening, even when the code inside unwinds (scopes nest as calls do): it drops
/// what it holds, or gives it back ([`Scope::close`]), and reopens the scope that was open.
///
/// A stack and an index, not a slot swapped in and out; and the stack's length is kept beside
/// the index, in a plain `Cell`: a scope of nothing (every quick call's arguments and answer,
/// encoded and decoded) then reads and writes that `Cell` alone, where a slot swapped in and
/// out took 20-40 ns (issue 15, item 4).
pub(crate) struct Scope<T: 'static> {
    stack: &'static LocalKey<RefCell<Vec<T>>>,
    from: &'static LocalKey<Marks>,
    start: usize,
    outer: Option<usize>,
    /// A scope is its thread's: never sent to another.
    _thread: std::marker::PhantomData<*const ()>,
}

/// Where the innermost open scope of a stack starts (`None` outside any), and the stack's
/// length, kept beside it (see [`Scope`]).
pub(crate) type Marks = Cell<(Option<usize>, usize)>;

impl<T: 'static> Scope<T> {
    /// Opens a scope of `stack` (whose marks are `from`) holding `items`.
    #[inline]
    pub(crate) fn open(
        stack: &'static LocalKey<RefCell<Vec<T>>>,
        from: &'static LocalKey<Marks>,
        items: Vec<T>,
    ) -> Scope<T> {
        let (outer, start) = from.get();
        let len = match items.is_empty() {
            true => start,
            false => stack.with_borrow_mut(|s| {
                s.extend(items);
                s.len()
            }),
        };
        from.set((Some(start), len));
        Scope {
            stack,
            from,
            start,
            outer,
            _thread: std::marker::PhantomData,
        }
    }

    /// Adds `items` to the innermost open scope of `stack`; gives them back when none is open.
    pub(crate) fn extend(
        stack: &'static LocalKey<RefCell<Vec<T>>>,
        from: &'static LocalKey<Marks>,
        items: Vec<T>,
    ) -> Option<Vec<T>> {
        let (Some(start), _) = from.get() else {
            return Some(items);
        };
        stack.with_borrow_mut(|s| {
            s.extend(items);
            from.set((Some(start), s.len()));
        });
        None
    }

    /// Closes the scope and returns what it held.
    #[inline]
    pub(crate) fn close(self) -> Vec<T> {
        let this = std::mem::ManuallyDrop::new(self);
        this.take()
    }

    /// Reopens the outer scope; what this one held, taken off the stack.
    #[inline]
    fn take(&self) -> Vec<T> {
        let (_, len) = self.from.get();
        self.from.set((self.outer, self.start));
        match len > self.start {
            true => self.stack.with_borrow_mut(|s| s.split_off(self.start)),
            false => Vec::new(),
        }
    }
}

impl<T: 'static> Drop for Scope<T> {
    #[inline]
    fn drop(&mut self) {
        // Dropped after the borrow.
        let _held = self.take();
    }
}

thread_local! {
    /// The descriptors of the handles among the values a pool task just returned, left by its
    /// chunk trampoline for the worker to send with the answer.
    static RETURNED: RefCell<Vec<InternalFd>> = const { RefCell::new(Vec::new()) };
}

/// Sets up this thread's slots for descriptors (`OUTGOING`, `INCOMING`, `RETURNED`) now: the
/// first use of each registers its destructor with the C library, which goes through the
/// dynamic loader. A process forked from this thread inherits them set up (see
/// `start::worker::prepare_inherited`).
pub(crate) fn prepare() {
    OUTGOING.with(|_| ());
    INCOMING.with(|_| ());
    RETURNED.with(|_| ());
}

/// Leaves `fds` for [`take_returned`] (see `RETURNED`), which always takes what is there: none
/// is left from an earlier task.
pub(crate) fn stash_returned(fds: Vec<InternalFd>) {
    if !fds.is_empty() {
        RETURNED.with(|r| *r.borrow_mut() = fds);
    }
}

/// The descriptors the last task's values left (none, usually).
pub(crate) fn take_returned() -> Vec<InternalFd> {
    RETURNED.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

/// Runs `encode` (which serializes handles) and returns its result with owned copies of the
/// descriptors the handles stand for, in index order. The copies are listed as internal: a
/// child forked while they are held (a pool's queued task, its initializer's arguments, a
/// process not yet started) does not inherit them, nor the memory of the buffers they keep.
///
/// Inlined, as [`providing`], [`Scope`]'s methods and `memfile::with_payload` are: as calls, a
/// quick `apply` paid about 20 ns for them on its three passes through (issue 15, item 4).
#[inline]
pub(crate) fn collecting<R>(encode: impl FnOnce() -> R) -> (R, Vec<InternalFd>) {
    let scope = Scope::open(&OUTGOING, &OUTGOING_FROM, Vec::new());
    let result = encode();
    let met = scope.close();
    let fds = match met.is_empty() {
        true => Vec::new(),
        false => met.into_iter().map(|(_, fd)| fd).collect(),
    };
    (result, fds)
}

/// Like [`providing`], with copies of `fds`, which stay the caller's: a returned value kept
/// by its parent may be decoded again (each decoded handle owns its own descriptor).
pub(crate) fn providing_copies<R>(
    fds: &[impl AsFd],
    decode: impl FnOnce() -> R,
) -> Result<R, crate::Error> {
    let copies = fds
        .iter()
        .map(|fd| crate::sys::fd::dup_internal(fd.as_fd()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| crate::Error::os("taking a returned handle", e))?;
    Ok(providing(copies, decode))
}

/// Runs `decode` with `fds` (received with the bytes, listed as internal since they arrived:
/// a child forked meanwhile does not inherit them) available to the handles it decodes. They
/// are closed afterwards (each decoded handle holds its own copy).
#[inline]
pub(crate) fn providing<R>(fds: Vec<InternalFd>, decode: impl FnOnce() -> R) -> R {
    let scope = Scope::open(&INCOMING, &INCOMING_FROM, fds);
    let result = decode();
    drop(scope);
    result
}

/// In a child just started by forking, which may have inherited scopes open in the thread that
/// forked it (a pool made inside a target, say): they are closed to it, so that its own
/// messages see only their own descriptors. What they held stays on the stacks, unreachable
/// (a fork child never unwinds into its parent's frames).
pub(crate) fn forget_inherited_scopes() {
    for marks in [&OUTGOING_FROM, &INCOMING_FROM] {
        marks.with(|m| m.set((None, m.get().1)));
    }
}

/// Called by a handle's `Serialize`: the index that stands for `fd` in this message.
pub(crate) fn export(fd: BorrowedFd<'_>) -> Result<u32, String> {
    export_with(fd, || crate::sys::fd::dup_internal(fd))
}

/// Like [`export`], with `travel` making the descriptor that travels when `fd` first joins this
/// message (a handle met again, or sized before it is written, does not run it again): a
/// queue's handle sends an opening of its own, which says while it exists that a handle is on
/// its way (see `queue::ring`).
pub(crate) fn export_with(
    fd: BorrowedFd<'_>,
    travel: impl FnOnce() -> std::io::Result<InternalFd>,
) -> Result<u32, String> {
    let (Some(start), _) = OUTGOING_FROM.get() else {
        return Err(NOT_HERE.to_string());
    };
    OUTGOING.with_borrow_mut(|all| {
        let raw = fd.as_raw_fd();
        // The codec sizes a value before writing it: the same handle is met twice. Met by its
        // number, and the same file: a handle made while the value is encoded and dropped
        // before the next is made (a buffer made on the fly by a `serialize_with`) frees its
        // number for the next one, another file, which must travel as itself.
        let met = |(f, copy): &(RawFd, InternalFd)| {
            *f == raw && crate::sys::fd::same_file(fd, copy.as_fd())
        };
        let at = match all[start..].iter().position(met) {
            Some(at) => at,
            None => {
                let copy =
                    travel().map_err(|e| format!("duplicating a handle's descriptor: {e}"))?;
                all.push((raw, copy));
                OUTGOING_FROM.set((Some(start), all.len()));
                all.len() - 1 - start
            }
        };
        u32::try_from(at).map_err(|_| "too many handles in one message".to_string())
    })
}

/// Called by a handle's `Deserialize`: the descriptor that index `at` stands for (a copy of
/// its own, listed as internal).
pub(crate) fn import(at: u32) -> Result<InternalFd, String> {
    let (Some(start), _) = INCOMING_FROM.get() else {
        return Err(NOT_HERE.to_string());
    };
    INCOMING.with_borrow(|all| {
        let fd = all[start..]
            .get(at as usize)
            .ok_or_else(|| format!("handle {at} did not arrive with its message"))?;
        crate::sys::fd::dup_internal(fd.as_fd())
            .map_err(|e| format!("duplicating a received handle's descriptor: {e}"))
    })
}

const NOT_HERE: &str = "mproc handles (locks, shared values, queues) can only travel as \
                        arguments of Process::new or of Pool tasks, as what their targets \
                        return, or through a Connection";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_travel_by_index_once_each() {
        let (a, _a2) = crate::sys::fd::pipe().unwrap();
        let (b, _b2) = crate::sys::fd::pipe().unwrap();
        let (indices, fds) = collecting(|| {
            [
                export(a.as_fd()).unwrap(),
                export(b.as_fd()).unwrap(),
                export(a.as_fd()).unwrap(),
            ]
        });
        assert_eq!(indices, [0, 1, 0]);
        assert_eq!(fds.len(), 2);
        let got = providing(fds, || {
            let x = import(1).unwrap();
            let y = import(1).unwrap();
            assert_ne!(x.as_fd().as_raw_fd(), y.as_fd().as_raw_fd(), "each gets its own copy");
            assert!(import(7).is_err());
            x
        });
        drop(got);
        assert!(export(a.as_fd()).is_err(), "outside a message");
        assert!(import(0).is_err());
    }

    /// A number met again in one message stands for the same handle only while it is the
    /// same file: one closed and its number given to another file (a handle made and dropped
    /// while the value is encoded) is another handle, with its own index and descriptor.
    #[test]
    fn a_number_given_to_another_file_is_another_handle() {
        let (mut a, _a2) = crate::sys::fd::pipe().unwrap();
        let (b, _b2) = crate::sys::fd::pipe().unwrap();
        let (indices, fds) = collecting(|| {
            let first = export(a.as_fd()).unwrap();
            let again = export(a.as_fd()).unwrap();
            // The number of `a` now stands for `b`'s file.
            rustix::io::dup2(&b, &mut a).unwrap();
            [first, again, export(a.as_fd()).unwrap(), export(a.as_fd()).unwrap()]
        });
        assert_eq!(indices, [0, 0, 1, 1]);
        assert_eq!(fds.len(), 2);
        assert!(!crate::sys::fd::same_file(fds[0].as_fd(), fds[1].as_fd()));
        assert!(crate::sys::fd::same_file(fds[1].as_fd(), b.as_fd()));
    }

    /// A fork child closes the scopes it inherited open: the parent's descriptors are not its
    /// messages', and its own scopes work as anywhere.
    #[test]
    fn a_fork_childs_inherited_scopes_are_closed_to_it() {
        let (a, _a2) = crate::sys::fd::pipe().unwrap();
        let copy = crate::sys::fd::dup_above(a.as_fd(), 0).unwrap();
        providing(vec![InternalFd::new(copy)], || {
            assert!(import(0).is_ok());
            forget_inherited_scopes(); // as a child forked here does first
            assert!(import(0).is_err(), "the parent's descriptor");
            let (at, fds) = collecting(|| export(a.as_fd()).unwrap());
            assert_eq!((at, fds.len()), (0, 1));
            assert!(providing(fds, || import(0).is_ok()));
        });
        assert!(import(0).is_err());
    }

    /// Scopes nest: an inner one counts from 0 and hides the outer one's descriptors, which
    /// are there again once it closes, even by unwinding.
    #[test]
    fn scopes_nest_and_unwinding_closes_them() {
        let (a, _a2) = crate::sys::fd::pipe().unwrap();
        let (b, _b2) = crate::sys::fd::pipe().unwrap();
        let ((outer, inner_fds, unwound, last), fds) = collecting(|| {
            let outer = export(a.as_fd()).unwrap();
            let (inner, inner_fds) = collecting(|| {
                // `a` is not in this message yet: a new index, from 0.
                [export(b.as_fd()).unwrap(), export(a.as_fd()).unwrap()]
            });
            assert_eq!(inner, [0, 1]);
            let (again, _) = collecting(|| export(b.as_fd()).unwrap());
            assert_eq!(again, 0, "a scope after a closed one counts from 0 too");
            let unwound = std::panic::catch_unwind(|| {
                collecting(|| {
                    export(b.as_fd()).unwrap();
                    panic!("in an inner scope");
                })
            });
            // The outer scope again: `a` at 0, `b` new at 1.
            let last = [export(a.as_fd()).unwrap(), export(b.as_fd()).unwrap()];
            (outer, inner_fds.len(), unwound.is_err(), last)
        });
        assert_eq!((outer, inner_fds, unwound, last), (0, 2, true, [0, 1]));
        assert_eq!(fds.len(), 2);
        assert!(export(a.as_fd()).is_err(), "every scope closed");
        let marks = |fds: &[InternalFd]| {
            fds.iter()
                .map(|f| InternalFd::new(crate::sys::fd::dup_above(f.as_fd(), 0).unwrap()))
                .collect::<Vec<_>>()
        };
        let (outer_fds, inner_fds) = (marks(&fds), marks(&fds[1..]));
        providing(outer_fds, || {
            assert!(import(1).is_ok());
            providing(inner_fds, || {
                assert!(import(0).is_ok());
                assert!(import(1).is_err(), "the outer scope's second is hidden");
                let _ = std::panic::catch_unwind(|| providing(Vec::new(), || panic!("inner")));
                assert!(import(0).is_ok(), "back after an inner scope unwound");
            });
            assert!(import(1).is_ok(), "the outer scope's, once the inner one closed");
        });
        assert!(import(0).is_err(), "every scope closed");
    }
}
