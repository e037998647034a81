//! Who this process is: its name and lineage (Python's `_identity`), and the counter that
//! numbers its children.
//!
//! A leaf: it imports nothing of the crate, so every layer may ask it (an error names the
//! process it happened in; a new child sets its own identity before its target runs).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// A process's name and lineage (Python's `_identity`), and whether it is daemonic.
#[derive(Debug)]
pub(crate) struct Identity {
    name: String,
    lineage: Vec<u32>,
    daemon: bool,
}

impl Identity {
    /// `"MainProcess"`, or the name the parent gave this child.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether its parent started it as daemonic (the main process is not).
    pub(crate) fn daemon(&self) -> bool {
        self.daemon
    }
}

/// Counts the processes this process has made, for their names ("Process-N").
static COUNTER: AtomicU32 = AtomicU32::new(0);

static CURRENT: Mutex<Option<Arc<Identity>>> = Mutex::new(None);

/// The identity's slot; held only to read or set it, and by the `Fork` start across `fork`
/// (so a fork child inherits it unlocked by anyone but itself).
pub(crate) fn lock() -> MutexGuard<'static, Option<Arc<Identity>>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process's identity (`MainProcess` until a parent set another).
pub(crate) fn identity() -> Arc<Identity> {
    lock()
        .get_or_insert_with(|| {
            Arc::new(Identity {
                name: "MainProcess".into(),
                lineage: Vec::new(),
                daemon: false,
            })
        })
        .clone()
}

/// The number and lineage of this process's next child (Python's `_identity`).
pub(crate) fn next_child() -> (u32, Vec<u32>) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    let mut lineage = identity().lineage.clone();
    lineage.push(n);
    (n, lineage)
}

/// In a new child: sets its identity and restarts the name counter, as Python does.
pub(crate) fn set(name: String, lineage: Vec<u32>, daemon: bool) {
    *lock() = Some(Arc::new(Identity {
        name,
        lineage,
        daemon,
    }));
    COUNTER.store(0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_count_up_under_this_lineage() {
        let (a, la) = next_child();
        let (b, lb) = next_child();
        assert!(b > a);
        assert_eq!(la.last(), Some(&a));
        assert_eq!(lb.last(), Some(&b));
        assert_eq!(la.len(), lb.len());
    }
}
