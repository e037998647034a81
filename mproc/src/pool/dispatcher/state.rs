//! [`WorkerState`]: where a worker is in its life, as `pool/README.md` draws it ("A worker").
//! Every transition is a method here; the dispatcher never sets a state by hand.

use crate::error::Error;

/// Where a worker is in its life. Its exit, in any state, removes it (see [`Departure`]).
#[derive(Debug)]
pub(crate) enum WorkerState {
    /// Launched; its initializer runs. It takes no chunks until it says `Ready`.
    Starting,
    /// It said `Ready` (or, in a pool without an initializer, it was launched: see
    /// `Config::at_once`): it takes chunks, up to its window.
    Serving,
    /// It takes no more chunks and finishes those it holds: it was given
    /// `max_tasks_per_child` and told to `Stop`, or its socket closed (it is exiting).
    Stopping,
    /// Killed by the dispatcher (task timeout, a cancel, or it broke the protocol). What it
    /// held is accounted for once its exit is seen, so an answer already on its way is never
    /// mistaken for a chunk still running.
    Condemned { charge: Charge, why: Error },
}

/// Who answers for a condemned worker's `why`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Charge {
    /// Its start: it broke the protocol before `Ready` (while `Starting`), as if its
    /// initializer had failed.
    Start,
    /// This chunk, if it is still the one the worker runs when its exit is seen.
    Chunk(u64),
    /// Nothing it holds (it answered out of order, or misbehaved while idle): a chunk it
    /// was running fails as lost.
    Nothing,
}

/// What a worker's exit means for what it held.
#[derive(Debug)]
pub(crate) enum Departure {
    /// It left while `Starting` (never said `Ready`): its start failed with this (with an
    /// initializer, the pool is broken).
    BeforeReady(Error),
    /// The chunk it was running, if it had taken one, fails with this.
    Lost(Error),
}

impl WorkerState {
    /// Whether it takes chunks.
    pub(crate) fn accepting(&self) -> bool {
        matches!(self, WorkerState::Serving)
    }

    pub(crate) fn is_condemned(&self) -> bool {
        matches!(self, WorkerState::Condemned { .. })
    }

    /// Whether it counts toward the pool's size: starting or serving, or still finishing
    /// chunks it holds (`holding`).
    pub(crate) fn occupies_slot(&self, holding: bool) -> bool {
        match self {
            WorkerState::Starting | WorkerState::Serving => true,
            WorkerState::Stopping | WorkerState::Condemned { .. } => holding,
        }
    }

    /// It said `Ready` (said again, or said too late, it changes nothing).
    pub(crate) fn ready(&mut self) {
        if matches!(self, WorkerState::Starting) {
            *self = WorkerState::Serving;
        }
    }

    /// It was given its last chunk and told to `Stop`.
    pub(crate) fn retire(&mut self) {
        if matches!(self, WorkerState::Serving) {
            *self = WorkerState::Stopping;
        }
    }

    /// Its socket closed: it can say nothing more and is exiting. A starting worker stays
    /// starting (its exit will say its start failed).
    pub(crate) fn socket_closed(&mut self) {
        self.retire();
    }

    /// Condemns it for `why`, charged to chunk `target` (the one it runs, if the reason is
    /// about it); the first reason stands. Returns whether it was newly condemned: the caller
    /// kills it then.
    pub(crate) fn condemn(&mut self, target: Option<u64>, why: Error) -> bool {
        let charge = match self {
            WorkerState::Condemned { .. } => return false,
            WorkerState::Starting => Charge::Start,
            WorkerState::Serving | WorkerState::Stopping => {
                target.map_or(Charge::Nothing, Charge::Chunk)
            }
        };
        *self = WorkerState::Condemned { charge, why };
        true
    }

    /// Its exit was seen while it held `front` first: `lost` is the error for a plain death.
    pub(crate) fn depart(self, front: Option<u64>, lost: Error) -> Departure {
        match self {
            WorkerState::Starting => Departure::BeforeReady(lost),
            WorkerState::Condemned {
                charge: Charge::Start,
                why,
            } => Departure::BeforeReady(why),
            WorkerState::Condemned {
                charge: Charge::Chunk(id),
                why,
            } if Some(id) == front => Departure::Lost(why),
            WorkerState::Serving | WorkerState::Stopping | WorkerState::Condemned { .. } => {
                Departure::Lost(lost)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn lost() -> Error {
        Error::protocol("lost")
    }

    fn departs_with(state: WorkerState, front: Option<u64>) -> (bool, ErrorKind) {
        match state.depart(front, lost()) {
            Departure::BeforeReady(e) => (true, e.kind().clone()),
            Departure::Lost(e) => (false, e.kind().clone()),
        }
    }

    #[test]
    fn a_worker_serves_once_ready_and_stops_when_retired() {
        let mut s = WorkerState::Starting;
        assert!(!s.accepting() && s.occupies_slot(false));
        s.ready();
        assert!(s.accepting() && s.occupies_slot(false));
        s.ready(); // said twice: nothing changes
        assert!(s.accepting());
        s.retire();
        assert!(!s.accepting());
        assert!(matches!(s, WorkerState::Stopping));
        // A stopping worker holds its slot only while it finishes chunks.
        assert!(s.occupies_slot(true) && !s.occupies_slot(false));
    }

    #[test]
    fn a_closed_socket_stops_a_server_but_not_a_starter() {
        let mut s = WorkerState::Serving;
        s.socket_closed();
        assert!(matches!(s, WorkerState::Stopping));
        let mut s = WorkerState::Starting;
        s.socket_closed();
        assert!(matches!(s, WorkerState::Starting));
        assert!(departs_with(s, None).0);
        // Ready cannot come back to a stopping worker.
        let mut s = WorkerState::Stopping;
        s.ready();
        assert!(matches!(s, WorkerState::Stopping));
    }

    #[test]
    fn the_first_condemnation_stands() {
        let mut s = WorkerState::Serving;
        assert!(s.condemn(Some(7), ErrorKind::TaskTimedOut.into()));
        assert!(!s.condemn(Some(8), ErrorKind::Cancelled.into()));
        assert!(s.is_condemned() && !s.accepting());
        assert!(s.occupies_slot(true) && !s.occupies_slot(false));
        s.ready();
        s.retire();
        s.socket_closed();
        assert!(matches!(
            s,
            WorkerState::Condemned {
                charge: Charge::Chunk(7),
                ..
            }
        ));
    }

    #[test]
    fn a_condemned_worker_fails_its_target_only_if_still_running_it() {
        let condemned = || {
            let mut s = WorkerState::Serving;
            s.condemn(Some(7), ErrorKind::TaskTimedOut.into());
            s
        };
        assert_eq!(
            departs_with(condemned(), Some(7)),
            (false, ErrorKind::TaskTimedOut)
        );
        // It answered 7 before it died: whatever it ran next was lost, not timed out.
        assert_eq!(
            departs_with(condemned(), Some(8)),
            (false, lost().kind().clone())
        );
        assert!(!departs_with(condemned(), None).0);
    }

    #[test]
    fn a_worker_condemned_for_nothing_it_holds_loses_its_chunk() {
        let mut s = WorkerState::Stopping;
        s.condemn(None, Error::protocol("out of order"));
        assert!(matches!(
            s,
            WorkerState::Condemned {
                charge: Charge::Nothing,
                ..
            }
        ));
        assert_eq!(departs_with(s, Some(3)), (false, lost().kind().clone()));
    }

    #[test]
    fn a_worker_that_dies_or_misbehaves_before_ready_failed_its_start() {
        assert_eq!(
            departs_with(WorkerState::Starting, None),
            (true, lost().kind().clone())
        );
        let mut s = WorkerState::Starting;
        s.condemn(None, Error::protocol("garbage"));
        assert_eq!(
            departs_with(s, None),
            (true, ErrorKind::Protocol("garbage".into()))
        );
        // Once ready, a death is a lost worker.
        assert!(!departs_with(WorkerState::Serving, Some(1)).0);
        assert!(!departs_with(WorkerState::Stopping, None).0);
    }
}
