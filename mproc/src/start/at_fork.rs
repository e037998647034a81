//! Hooks around a `Fork` start. A module above `start` whose lock a fork child must inherit in
//! a known state (held by the forking thread, so by the child's only thread) registers a hook
//! here before it takes that lock; `fork.rs` runs every registered hook and names
//! none of them.
//!
//! # The lock order of a `Fork` start
//!
//! From first taken to last; code that holds one of these locks takes only later ones:
//!
//! 1. the standard output's lock, then the standard error's (`fork.rs`);
//! 2. the fork server's slot (`forkserver::lock`; slow: its holder may be starting a server);
//! 3. this list of hooks;
//! 4. the hooks, by [`Rank`]: the shared-memory keeper's slot (slow: its holder may be
//!    starting a keeper), then the list of this process's queues, the list of its children
//!    (`children.rs`), the record of its log relay (`relay.rs`), and the pipe its own events
//!    go to its parent on (`relay.rs`; taken by any event, so it is last);
//! 5. the liveness pipe's slot (`alive::lock`), the process's identity (`current::lock`), and
//!    the list of internal descriptors, taken by `fd::lock_for_fork` once it has waited for
//!    the receives of descriptors under way (each takes nothing but that list, so a thread may
//!    receive holding any lock) and while it holds new ones off until the fork is done.
//!
//! The standard streams come first because they are the user's locks: a thread may hold
//! `stdout().lock()` (or stderr's) while it makes a queue, which takes the list of queues, or
//! starts a process, which takes the fork server's slot; a fork that held those and waited for
//! the streams would deadlock with it. (Both are reentrant, so a thread holding stdout's lock
//! may itself start a `Fork` process; one holding only stderr's must not while another thread
//! may too: that fork waits for stdout, held by a fork waiting for stderr. No order avoids it,
//! as the fork needs both.) Then the slow ones, so nothing else of mproc's waits behind a fork
//! server or keeper start; output of other threads may, for as long as that start lasts.
//!
//! A hook is a plain function in a fixed array: running them costs the fork no allocation, and
//! one lock (this list's, uncontended: `Fork` starts already queue on the fork server's slot).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::Error;
use crate::sys::proc::Forked;

/// Runs the fork; `Ok(Forked::Child)` in the child.
pub(crate) type Fork<'a> = &'a mut dyn FnMut() -> Result<Forked, Error>;

/// A hook: takes its lock, calls the fork it is given, sets its state right for the side it is
/// on (the child, or the parent with the child's pid), releases its lock, and returns what the
/// fork returned.
pub(crate) type Hook = fn(Fork<'_>) -> Result<Forked, Error>;

/// A hook's place in the crate's lock order (see the module docs), first taken first.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rank {
    /// The shared-memory keeper's slot.
    Keeper,
    /// The list of this process's queues.
    Queues,
    /// The list of this process's children (`children.rs`).
    Children,
    /// The record of this process's log relay (`relay.rs`).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    Relay,
    /// The pipe this process's events go to its parent on (`relay.rs`).
    #[cfg_attr(not(feature = "tracing"), allow(dead_code))]
    Forwarding,
}

const RANKS: usize = 5;

static HOOKS: Mutex<[Option<Hook>; RANKS]> = Mutex::new([None; RANKS]);

fn lock() -> MutexGuard<'static, [Option<Hook>; RANKS]> {
    HOOKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether each rank's hook is registered: read first, so registering costs one load once done.
static REGISTERED: [AtomicBool; RANKS] = [const { AtomicBool::new(false) }; RANKS];

/// Registers `hook` at `rank` unless it is there already. Call it on every path that takes the
/// hook's lock, before taking it: a fork that started first waits for nothing of the hook's,
/// and registering waits for that fork to end, so the lock is never held across a fork that did
/// not take it. (Not a `Once`: a fork child inherits a `Once` stuck in its running state if
/// another thread was registering at the fork.)
pub(crate) fn ensure(rank: Rank, hook: Hook) {
    let registered = &REGISTERED[rank as usize];
    if !registered.load(Ordering::Acquire) {
        // The flag is set while the list is still locked: a fork that takes the list next
        // runs this hook, which calls `ensure` again on the forking thread, and must find the
        // flag set rather than lock the list a second time.
        let mut hooks = lock();
        hooks[rank as usize] = Some(hook);
        registered.store(true, Ordering::Release);
    }
}

/// Runs `fork` inside every registered hook, the first rank outermost.
pub(crate) fn around(fork: Fork<'_>) -> Result<Forked, Error> {
    let hooks = lock();
    nest(&*hooks, fork)
}

fn nest(hooks: &[Option<Hook>], fork: Fork<'_>) -> Result<Forked, Error> {
    match hooks.split_first() {
        None => fork(),
        Some((None, rest)) => nest(rest, fork),
        Some((Some(hook), rest)) => hook(&mut || nest(rest, &mut *fork)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        static SEEN: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    fn note(what: String) {
        SEEN.with(|s| s.borrow_mut().push(what));
    }

    fn first(fork: Fork<'_>) -> Result<Forked, Error> {
        note("first takes".into());
        let forked = fork();
        note(format!("first sees {}", side(&forked)));
        forked
    }

    fn second(fork: Fork<'_>) -> Result<Forked, Error> {
        note("second takes".into());
        let forked = fork();
        note(format!("second sees {}", side(&forked)));
        forked
    }

    fn side(forked: &Result<Forked, Error>) -> String {
        match forked {
            Ok(Forked::Child) => "child".into(),
            Ok(Forked::Parent(pid)) => format!("parent of {pid}"),
            Err(_) => "an error".into(),
        }
    }

    #[test]
    fn hooks_nest_by_rank_around_the_fork_and_see_its_side() {
        let hooks = [Some(first as Hook), None, Some(second as Hook)];
        let forked = nest(&hooks, &mut || {
            note("fork".into());
            Ok(Forked::Parent(42))
        });
        assert!(matches!(forked, Ok(Forked::Parent(42))));
        let failed = nest(&hooks, &mut || Err(Error::protocol("no fork")));
        assert!(failed.is_err());
        let seen = SEEN.with(|s| s.take());
        assert_eq!(
            seen,
            [
                "first takes",
                "second takes",
                "fork",
                "second sees parent of 42",
                "first sees parent of 42",
                "first takes",
                "second takes",
                "second sees an error",
                "first sees an error",
            ]
        );
    }
}
