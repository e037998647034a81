//! A pool worker's life, in the child: run the initializer, say `Ready`, then run tasks in the
//! order they come and answer each with `Done`, until `Stop` or the dispatcher goes away.
//!
//! Tasks are run strictly in arrival order, which is what lets the dispatcher know, when a
//! worker dies, that the oldest unanswered task is the one that was running and the others
//! never started.

use crate::channel::Channel;
use crate::error::{Error, ErrorKind};
use crate::start::worker::catch;
use crate::sys::image;
use crate::wire::message::{FromWorker, PoolWorkerSpec, ToWorker};

/// Serves tasks on `ctrl`; returns the exit code.
pub(crate) fn serve(ctrl: &mut Channel, identity: u64, spec: PoolWorkerSpec) -> i32 {
    if let Some((entry, args)) = spec.init {
        if let Err(e) = run(identity, entry, &args) {
            let _ = ctrl.send(&FromWorker::InitFailed(e), &[]);
            return 1;
        }
    }
    if ctrl.send(&FromWorker::Ready, &[]).is_err() {
        return 0;
    }
    // Each answer leaves before the next task starts: if the worker dies, every task it had
    // finished has been reported, so the dispatcher fails exactly the one that was running.
    loop {
        match ctrl.recv::<ToWorker<Vec<u8>>>(None) {
            Ok(ToWorker::Task { id, entry, payload }) => {
                let result = run(identity, entry, &payload).map(serde_bytes::ByteBuf::from);
                match ctrl.send(&FromWorker::Done { id, result }, &[]) {
                    Ok(()) => {}
                    Err(e) if *e.kind() == ErrorKind::Closed => return 0,
                    // The answer could not be sent (over the frame limit, say): say that.
                    Err(e) => {
                        if ctrl
                            .send(&FromWorker::Done { id, result: Err(e) }, &[])
                            .is_err()
                        {
                            return 1;
                        }
                    }
                }
            }
            // Told to stop, or the dispatcher is gone: either way there is nothing more to do.
            Ok(ToWorker::Stop) | Err(_) => return 0,
        }
    }
}

/// Calls the entry at `entry` on `payload`; a panic outside the per-item catch (in decoding,
/// or in an initializer) becomes `Panicked`.
fn run(identity: u64, entry: i64, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let f = image::entry_for(identity, entry).ok_or(ErrorKind::ExecutableMismatch)?;
    catch(|| f(payload)).map_err(|report| Error::from(ErrorKind::Panicked(report)))?
}
