//! Who holds a queue: this process's handle on a queue's memory ([`Shared`]), the holders'
//! table's view of processes, and the list of live queues a fork child is counted in.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::ring::{Holder, Ring};
use crate::error::Error;
use crate::start::at_fork;
use crate::sys::proc;

/// This process, as the holders' table names it.
fn me() -> Holder {
    match proc::me() {
        (pid, Some(start)) => Holder { pid, start },
        (pid, None) => {
            // No /proc to tell processes apart: never conclude that nobody else holds a queue.
            NO_PROC.store(true, Ordering::Relaxed);
            Holder { pid, start: 0 }
        }
    }
}

/// Set when `/proc` cannot say who is who.
static NO_PROC: AtomicBool = AtomicBool::new(false);

/// Whether the holder `h` still runs (not a zombie, and not another process with its pid).
fn alive(h: Holder) -> bool {
    proc::still_runs(h.pid, h.start, proc::START_BITS)
}

/// Every queue this process holds, so that a child made with fork(2) (which inherits them all,
/// passed or not) is counted as a holder of each before it runs: it may reach one through a
/// static, and put before it ever says so itself.
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// The list of this process's queues, locked and held across a fork ([`hold_across_fork`]),
/// with a strong reference to each: from before the fork until the child is counted as a holder
/// ([`LiveQueues::count_fork_child`]), each queue has one more handle in this process than
/// its users hold, so no get here concludes in that gap that nobody else can put (the child
/// exists, and may put, before it is counted).
pub(crate) struct LiveQueues {
    _list: MutexGuard<'static, Vec<Weak<Shared>>>,
    held: Vec<Arc<Shared>>,
}

pub(super) fn live_queues() -> LiveQueues {
    let mut list = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|w| w.strong_count() > 0);
    let held = list.iter().filter_map(Weak::upgrade).collect();
    LiveQueues { _list: list, held }
}

/// The queues' hook around a `Fork` start (see `start::at_fork`): the child is counted as a
/// holder of every queue before the list is let go.
fn hold_across_fork(fork: at_fork::Fork<'_>) -> Result<proc::Forked, Error> {
    let mut queues = live_queues();
    let forked = fork();
    if let Ok(proc::Forked::Parent(pid)) = forked {
        queues.count_fork_child(pid);
    }
    forked
}

impl LiveQueues {
    /// Counts the fork child `pid` as a holder of every queue this process holds: it inherited
    /// them, and may put or get before it ever says so itself. It does not mark them as
    /// shared: a child that never touches a queue leaves it as private as it was (the child
    /// marks it when it first uses it, see [`Shared::attach`]).
    pub(crate) fn count_fork_child(&mut self, pid: u32) {
        if self.held.is_empty() {
            return;
        }
        let Some((_, start)) = proc::process_start(pid) else {
            return;
        };
        let child = Holder {
            pid,
            start: proc::start_key(start, proc::START_BITS),
        };
        for shared in &self.held {
            let _ = shared.ring.attach(child, alive, false);
        }
    }
}

/// One process's handle on a queue's memory.
pub(super) struct Shared {
    pub(super) ring: Ring,
    pub(super) kind: u32,
    /// `fork_generation() + 1` of the process counted in the holders' table for this handle
    /// (0: none). A fork child that inherited the handle counts itself on first use.
    attached: AtomicU64,
}

impl Shared {
    pub(super) fn new(ring: Ring, kind: u32) -> Result<Arc<Shared>, Error> {
        let shared = Shared {
            ring,
            kind,
            attached: AtomicU64::new(0),
        };
        shared.attach()?;
        let shared = Arc::new(shared);
        at_fork::ensure(at_fork::Rank::Queues, hold_across_fork);
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&shared));
        Ok(shared)
    }

    pub(super) fn create(kind: u32, maxsize: u64) -> Result<Arc<Shared>, Error> {
        let ring = Ring::create(kind, maxsize)
            .map_err(|e| Error::os("creating shared memory for a queue", e))?;
        Shared::new(ring, kind)
    }

    /// Counts this process as a holder, once per process. A handle this process inherited
    /// through fork (attached by an earlier generation) and now uses makes the queue shared
    /// with another process, as passing it would have: from now on the dead-holder rule
    /// applies to it.
    pub(super) fn attach(&self) -> Result<(), Error> {
        let generation = proc::fork_generation() + 1;
        let was = self.attached.load(Ordering::Acquire);
        if was == generation {
            return Ok(());
        }
        if self
            .attached
            .compare_exchange(was, generation, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let inherited = was != 0;
            self.ring
                .attach(me(), alive, inherited)
                .map_err(|e| Error::os("registering with a queue", e))?;
        }
        Ok(())
    }

    /// Whether nothing can ever arrive (or leave) unless this very call does it: the queue was
    /// shared with another process, no other process holds it, no handle to it is on its way
    /// to one, and this is this process's only handle.
    ///
    /// The last is exact because handles are not `Sync`: a thread that can use the queue
    /// holds a handle of its own (a clone, or one reached through a `Mutex`, which counts
    /// too), so a strong count of 1 means no other thread can reach it while this call runs.
    /// A caller that gets `true` tries once more before failing: a thread that just put (or
    /// got) and dropped its clone may have done so after the caller last looked.
    pub(super) fn alone(self: &Arc<Self>) -> Result<bool, Error> {
        if Arc::strong_count(self) > 1 || NO_PROC.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let beyond = self
            .ring
            .shared_beyond(me(), alive)
            .map_err(|e| Error::os("reading a queue's holders", e))?;
        // Pairs with the release of the handle dropped last (in this process, or through the
        // registry lock in another), so the try that follows sees what it did.
        std::sync::atomic::fence(Ordering::Acquire);
        Ok(!beyond)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if self.attached.load(Ordering::Acquire) == proc::fork_generation() + 1 {
            let _ = self.ring.detach(me());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::Queue;

    /// A fork child exists, and may put, before the parent counts it as a holder: a get of
    /// the parent's in that gap must not conclude that nobody else can put. (Found when a
    /// thread's `get` on a shared queue raced another thread's `Fork` start: the child, which
    /// used the queue through a static later, was not counted yet, and the get said `Closed`.)
    #[test]
    fn a_fork_child_counts_as_a_holder_from_its_first_moment() {
        let q = Queue::<u8>::new().unwrap();
        // Shared with another process once, and nobody else holds it now: the dead-holder
        // rule applies to it.
        let ring = &q.core.shared.ring;
        drop(ring.lend().unwrap());
        assert!(
            q.core.shared.alone().unwrap(),
            "set-up: nobody else holds it"
        );

        let mut live = live_queues();
        let pid = match proc::fork().unwrap() {
            proc::Forked::Child => {
                drop(live);
                std::thread::sleep(Duration::from_millis(200));
                let code = i32::from(q.put(7).is_err());
                proc::exit_now(code)
            }
            proc::Forked::Parent(pid) => pid,
        };
        // The gap `start::fork` has between fork(2) and counting the child.
        let alone_in_gap = q.core.shared.alone().unwrap();
        live.count_fork_child(pid);
        drop(live);
        let got = q.get_timeout(Duration::from_secs(10));
        let exit = proc::reap_blocking(pid).unwrap();
        assert!(!alone_in_gap, "the child was forked: it may put");
        assert_eq!(got.unwrap(), 7);
        assert_eq!(exit, proc::Exit::Code(0));
    }
}
