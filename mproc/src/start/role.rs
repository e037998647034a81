//! Roles: what a process that mproc starts does besides calling one target (serve a pool's
//! tasks, keep named shared memory). The modules above `start` own them; `start` enters them
//! through an entry pointer and never names them.
//!
//! As rayon-core's `JobRef` erases a job into a function pointer and its data, a role crosses
//! into the new process as an offset that names an entry record of the image (see
//! `sys::image`; the same offset names it in every process running this build, spawned or
//! forked), beside the data its start carries. The record's function only *claims* the role:
//! it names, with [`claim`], the typed function that runs it, which the start layer then calls
//! with what that role needs (its control channel, its descriptors). So the start layer knows
//! the two shapes a role can have, and nothing of what any role does.
//!
//! An offset that names a target's trampoline instead runs that target (with no arguments)
//! and claims nothing, and the start is refused: a `Start` asking to call that target could
//! have asked for as much.

use std::cell::Cell;
use std::os::fd::OwnedFd;

use crate::Error;
use crate::channel::Channel;
use crate::sys::fd::InternalFd;
use crate::sys::image::{self, Entry};
use crate::wire::message::PoolWorkerSpec;

/// The function that runs a role, as its entry record claims it.
#[derive(Clone, Copy)]
pub(crate) enum RoleFn {
    /// A pool worker, entered once the child has read its `Start`: its control channel (which
    /// may hold what followed the start), its build identity, the role's data, and the
    /// descriptors that came with the start. Returns the exit code.
    Worker(fn(&mut Channel, u64, PoolWorkerSpec, Vec<InternalFd>) -> i32),
    /// A process spawned for the role alone, entered before `main`: its control socket and
    /// its creator's liveness pipe. Never returns.
    Spawned(fn(OwnedFd, OwnedFd) -> !),
}

thread_local! {
    /// What the entry function called last claimed.
    static CLAIMED: Cell<Option<RoleFn>> = const { Cell::new(None) };
}

/// The body of a role's entry function (a `fn` item of the entry signature, named to other
/// processes by [`offset_of`]): claims `role` as the function that runs it.
pub(crate) fn claim(role: RoleFn) -> Result<Vec<u8>, Error> {
    CLAIMED.set(Some(role));
    Ok(Vec::new())
}

/// The offset that names the role whose entry function is `entry`, in every process running
/// this build.
pub(crate) fn offset_of<T>(entry: T) -> i64
where
    T: Fn(&[u8]) -> Result<Vec<u8>, Error> + Copy,
{
    image::offset_of(entry)
}

/// The role that the entry function `entry` (found by its offset) claims, if it is a role's.
pub(crate) fn claimed_by(entry: Entry) -> Result<RoleFn, Error> {
    CLAIMED.set(None);
    let _ = entry(&[]);
    CLAIMED
        .take()
        .ok_or_else(|| Error::protocol("a role reference that names no role of this executable"))
}

/// The role that `offset` names in this build (before `main` in a process spawned for it).
pub(crate) fn named_by(offset: i64) -> Result<RoleFn, Error> {
    claimed_by(image::entry_for(crate::sys::exe::identity(), offset)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(_: &mut Channel, _: u64, _: PoolWorkerSpec, _: Vec<InternalFd>) -> i32 {
        7
    }

    fn worker_entry(_: &[u8]) -> Result<Vec<u8>, Error> {
        claim(RoleFn::Worker(worker))
    }

    fn not_a_role(_: &[u8]) -> Result<Vec<u8>, Error> {
        Ok(Vec::new())
    }

    #[test]
    fn an_offset_names_the_role_its_entry_claims_and_nothing_else() {
        let role = named_by(offset_of(worker_entry)).unwrap();
        let expected: fn(&mut Channel, u64, PoolWorkerSpec, Vec<InternalFd>) -> i32 = worker;
        assert!(matches!(role, RoleFn::Worker(f) if f as usize == expected as usize));
        let e = named_by(offset_of(not_a_role))
            .err()
            .expect("claims nothing");
        assert!(e.to_string().contains("names no role"), "{e}");
        // What an earlier entry claimed is not taken for the next one's.
        let _ = named_by(offset_of(worker_entry)).unwrap();
        assert!(named_by(offset_of(not_a_role)).is_err());
        assert!(named_by(offset_of(worker_entry).wrapping_add(8)).is_err());
    }
}
