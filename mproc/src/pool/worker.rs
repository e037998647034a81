//! A pool worker's life, in the child: map its lane, run the initializer, say `Ready`, then
//! run tasks in the order they come and answer each, until `Stop` or the dispatcher goes away.
//!
//! Tasks and answers travel through the lane (shared memory, no system call) unless they are
//! too large for it; then a placeholder goes in the lane and the frame on the socket. The
//! worker counts each task it takes in the lane's `started` word before running it, and
//! publishes each answer before taking the next task, so when a worker dies the dispatcher
//! knows exactly which task was running (if any): answers published are finished, the one
//! counted but unanswered was running, the rest never started.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use super::lane::{FRAME_OVERHEAD, Lane, Peer};
use crate::channel::{self, Channel};
use crate::memfile::{self, AnswerPlace, Mapped, Received, Spares};
use crate::error::{Error, ErrorKind};
use crate::panics::catch_uncounted;
use crate::sys::fd::{self, InternalFd};
use crate::sys::image;
use crate::sys::proc;
use crate::sys::time::monotonic_ns;
use crate::wire::codec;
use crate::wire::message::{FromWorker, PoolWorkerSpec, ToWorker};

/// How long an idle worker keeps looking at its lane before it sleeps on its socket: long
/// enough to catch the next task of a busy caller without a wake-up, short enough to give the
/// CPU back soon. A remote agent's workers linger too: their dispatcher hands a worker its next
/// entry in the turn that reads its answer (the `STEP` marking it running is written then, its
/// reply not waited for), so a worker that sleeps pays a wake-up per task (measured: `map1`
/// 22.5 → 25.4 k tasks/s, medians of nine rounds).
const LINGER: Duration = Duration::from_micros(50);

/// How long a worker that finds its dispatcher asleep after an answer waits for a reader to
/// come back before it wakes one. A caller that submits a task while no thread reads the lanes
/// sets them asleep again as it finishes its previous wait, and says it is awake only on its
/// way into the next one; a quick task's answer can come in between. Woken then, the
/// dispatcher thread would wake for nothing and take the pool's state from the caller
/// (measured in back-to-back `apply` calls: a few in ten thousand calls, each costing tens of
/// microseconds), where a wake-up costs more than this wait. Only a worker with nothing more
/// to take waits: one with tasks queued wakes the dispatcher at once and goes on.
const WAKE_GRACE: Duration = Duration::from_micros(2);

/// The least time between two moves of a worker off its caller's CPU (`Worker::linger`):
/// each is three system calls (2-3 µs), and a kernel that puts the two together again at
/// once is not fought more often than this. Short, for a worker woken for each burst of
/// calls: a wake-up over its socket asks the kernel to run it on its caller's CPU, and with
/// a millisecond here a burst every 0.8 ms took turns at one CPU in most bursts (the pool
/// bench's "bursts of 50 after 300 µs idle").
const MOVE_EVERY_NS: u64 = 100_000;

/// Serves tasks on `ctrl`; returns the exit code.
pub(crate) fn serve(
    ctrl: &mut Channel,
    identity: u64,
    spec: PoolWorkerSpec,
    init_handles: Vec<InternalFd>,
) -> i32 {
    crate::panics::quiet_in_this_process();
    let lane = match open_lane(ctrl) {
        Ok(lane) => lane,
        Err(code) => return code,
    };
    if let Some((entry, args)) = spec.init
        && let Err(e) = crate::handle::providing(init_handles, || run(identity, entry, &args)) {
            let _ = ctrl.send(&FromWorker::InitFailed(e), &[]);
            return 1;
        }
    if ctrl.send(&FromWorker::Ready, &[]).is_err() {
        return 0;
    }
    // Memory files its large answers go in, kept for reuse, lent to its tasks for good.
    memfile::lend_files(Spares::default());
    let mut worker = Worker {
        ctrl,
        lane,
        identity,
        out: Vec::new(),
        socket_task: None,
        files: Mapped::default(),
        last_entry: None,
        moved_at: 0,
        wake_owed: false,
    };
    match worker.serve() {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// Receives the lane's memory file (the dispatcher's first message) and maps it.
fn open_lane(ctrl: &mut Channel) -> Result<Lane, i32> {
    match ctrl.recv::<ToWorker<Vec<u8>>>(None) {
        Ok(ToWorker::Lane) => {}
        Ok(_) => return Err(1),
        Err(_) => return Err(0), // the dispatcher is gone
    }
    let file = ctrl.take_fds().into_iter().next().ok_or(1)?;
    Lane::open(std::os::fd::AsFd::as_fd(&file)).map_err(|_| 1)
}

struct Worker<'a> {
    ctrl: &'a mut Channel,
    lane: Lane,
    identity: u64,
    /// Where lane frames (small answers) are encoded.
    out: Vec<u8>,
    /// A large task that came on the socket while the worker slept, before it met the
    /// task's placeholder in the lane.
    socket_task: Option<SocketTask>,
    /// Its mappings of the memory files large tasks came in.
    files: Mapped,
    /// The entry the last task named (its offset) and the function found there.
    last_entry: Option<(i64, image::Entry)>,
    /// When it last moved off the caller's CPU (`CLOCK_MONOTONIC` ns; see `Worker::linger`).
    moved_at: u64,
    /// Whether it has published an answer since it last looked whether the reader sleeps
    /// (see [`Worker::wake_if_asleep`]): looked at before it takes its next task, or once it
    /// has done its books of going idle.
    wake_owed: bool,
}

/// A task that came on the socket: id, entry, payload (or why it could not be read), and its
/// handles' descriptors.
type SocketTask = (u64, i64, Result<Received, Error>, Vec<InternalFd>);

impl Worker<'_> {
    /// Runs tasks until told to stop (`Ok`) or until it cannot go on (`Err(exit code)`).
    fn serve(&mut self) -> Result<(), i32> {
        let mut frame = Vec::new();
        let mut stopping = false;
        // When the current run of tasks began (the lane had one after being empty): two
        // clock readings per run, not per task, for the pool's statistics.
        let mut run: Option<u64> = None;
        // The clock as read while lingering, just before the look that found the lane's next
        // frame: the start of the run that frame begins, read off the way of its task.
        let mut seen: Option<u64> = None;
        let mut panics = 0;
        loop {
            // A reader that sleeps is woken for the last answer before the next task runs
            // (looked at with that task still in the lane, as a deferred wake-up counts it;
            // and again once it is taken, should it have come only after that look).
            if self.wake_owed && !self.lane.is_empty() {
                self.wake_if_asleep(true)?;
            }
            if self.lane.pop_into(&mut frame).map_err(|_| 1)? {
                self.wake_if_asleep(true)?;
                if run.is_none() {
                    let now = seen.take().unwrap_or_else(monotonic_ns);
                    self.lane.begin_run(now);
                    run = Some(now);
                }
                // A task is read without serde (`read_task` takes every frame the codec would
                // read as a `Task` without handles); anything else, the codec's way.
                if let Some((id, entry, payload)) = crate::wire::message::read_task(&frame) {
                    let mine = self.lane.claim();
                    let (result, place) = self.run_if(mine, entry, payload, None, vec![]);
                    self.publish_panics(&mut panics);
                    self.answer(id, result, place)?;
                    continue;
                }
                match codec::decode_borrowed::<ToWorker<&[u8]>>(&frame) {
                    Ok(ToWorker::OnSocket) => {
                        let mine = self.lane.claim();
                        let (id, entry, payload, fds) = self.task_from_socket()?;
                        let (result, place) = match payload {
                            Ok(Received::Bytes(b)) => self.run_if(mine, entry, &b, None, fds),
                            Ok(Received::Small(len, b)) => {
                                self.run_if(mine, entry, &b[..usize::from(len)], None, fds)
                            }
                            Ok(Received::InFile(f)) => self.run_if(mine, entry, &[], Some(f), fds),
                            Err(e) => (Err(e), AnswerPlace::Bytes),
                        };
                        self.publish_panics(&mut panics);
                        self.answer(id, result, place)?;
                    }
                    _ => return Err(1), // nothing else belongs in the lane
                }
                continue;
            }
            let idle_since = monotonic_ns();
            if let Some(since) = run.take() {
                self.lane.end_run(since, idle_since);
            }
            // The last answer's look at the reader's word, put off until now: a caller that
            // waits for it is by now reading the lane, its word cleared, so the look costs
            // it nothing; looked at as the answer went, the word was often still set, and
            // the look took its line from the caller just before the caller cleared it.
            self.wake_if_asleep(false)?;
            if stopping {
                return Ok(());
            }
            seen = self.linger(idle_since);
            if seen.is_some() || !self.lane.prepare_sleep() {
                continue;
            }
            // Woken, it may be anywhere: until it lingers again, the caller yields.
            self.lane.unsay_cpu();
            let message = self.ctrl.recv::<ToWorker<Vec<u8>>>(None);
            self.lane.awake();
            let Ok(message) = message else {
                return Ok(()); // the dispatcher is gone
            };
            match self.socket_task_of(message) {
                // Its placeholder is in the lane by now: kept until the worker gets there.
                Ok(task) if self.socket_task.is_none() => self.socket_task = Some(task?),
                Err(ToWorker::Wake) => {}
                // Runs what the lane still holds first: it was sent before the Stop.
                Err(ToWorker::Stop) => stopping = true,
                Ok(_) | Err(_) => return Err(1),
            }
        }
    }

    /// Runs the task just taken if its claim was won (`mine`); one the dispatcher took back
    /// first is answered `Cancelled` without running. Its arguments are `payload`, or in
    /// `in_file` when they came in a memory file; a large answer may go straight into one of
    /// the worker's memory files (returned with it).
    fn run_if(
        &mut self,
        mine: bool,
        entry: i64,
        payload: &[u8],
        in_file: Option<memfile::InFile>,
        handles: Vec<InternalFd>,
    ) -> (Result<Vec<u8>, Error>, AnswerPlace) {
        if !mine {
            return (Err(ErrorKind::Cancelled.into()), AnswerPlace::Bytes);
        }
        // The entry the last task named is not looked up again (a pool's tasks mostly call
        // one function).
        let f = match self.last_entry {
            Some((at, f)) if at == entry => f,
            _ => match image::entry_for(self.identity, entry) {
                Ok(f) => {
                    self.last_entry = Some((entry, f));
                    f
                }
                Err(e) => return (Err(e), AnswerPlace::Bytes),
            },
        };
        memfile::with_payload(in_file, || {
            // A task whose arguments brought no descriptor (nearly all) needs no scope for
            // them: a handle among its arguments could only fail to decode either way.
            if handles.is_empty() {
                call(f, payload)
            } else {
                crate::handle::providing(handles, || call(f, payload))
            }
        })
    }

    /// Publishes the count of panics its tasks raised, if it changed (before the answer, so
    /// the pool's statistics count a panic once its task is answered).
    fn publish_panics(&self, published: &mut u64) {
        let caught = crate::panics::caught();
        if caught != *published {
            *published = caught;
            self.lane.set_panics(caught);
        }
    }

    /// Watches the lane for a little while from `idle_since` (a clock reading); if a frame
    /// came, the clock as read last before the look that found it.
    ///
    /// It looks [`LOOKS`] times in a row, then reads the clock where a spinning thread would
    /// pause: a reading takes about as long here (25 ns against 24 for a `pause`), and the
    /// run of tasks the frame begins then starts its time at a reading taken before the
    /// frame was seen, not at one on the way of its task (issue 15, item 4). The run's time
    /// so includes up to a batch of looks and one reading of idleness (about 45 ns), where a
    /// reading after the look would leave out as much of the task. With one look per reading,
    /// a frame that came during a reading waited for its end: a call's round trip was 15–25
    /// ns longer.
    fn linger(&mut self, idle_since: u64) -> Option<u64> {
        let (lane, moved_at) = (&self.lane, &mut self.moved_at);
        let mut crowded = |now: u64| {
            let cpu = proc::current_cpu();
            match lane.say_cpu(cpu, None) {
                Peer::Elsewhere { room: true } => false,
                // The caller never said where it runs (it may be here), or says the pool's
                // busy workers and it are more than the CPUs: some CPU is shared, maybe this
                // one (and a move would crowd another worker's).
                Peer::Unsaid | Peer::Here { room: false } | Peer::Elsewhere { room: false } => {
                    true
                }
                // On the caller's CPU the two would take turns at it, a yield each way per
                // call (9 µs against 0.6 µs on CPUs of their own), and the kernel leaves two
                // threads that yield to each other where they are. So the worker moves to
                // another CPU it may run on, at most every `MOVE_EVERY_NS`.
                Peer::Here { room: true } => {
                    if now.saturating_sub(*moved_at) < MOVE_EVERY_NS {
                        return true;
                    }
                    *moved_at = now;
                    !proc::move_off_cpu(cpu)
                        || !matches!(lane.say_cpu(proc::current_cpu(), None), Peer::Elsewhere { .. })
                }
            }
        };
        // Said once before the first look (off the way of the next task), then every round.
        crowded(idle_since);
        linger(idle_since, || !lane.is_empty(), crowded)
    }

    /// The task a placeholder in the lane stands for.
    fn task_from_socket(&mut self) -> Result<SocketTask, i32> {
        if let Some(task) = self.socket_task.take() {
            return Ok(task);
        }
        loop {
            let Ok(message) = self.ctrl.recv::<ToWorker<Vec<u8>>>(None) else {
                return Err(0);
            };
            match self.socket_task_of(message) {
                Ok(task) => return task,
                Err(ToWorker::Wake) => {}
                Err(_) => return Err(1),
            }
        }
    }

    /// A task that came on the socket, with its descriptors taken (`Err(exit code)` if they
    /// did not come); any other message is given back.
    fn socket_task_of(
        &mut self,
        message: ToWorker<Vec<u8>>,
    ) -> Result<Result<SocketTask, i32>, ToWorker<Vec<u8>>> {
        match message {
            ToWorker::Task {
                id,
                entry,
                payload,
                handles,
            } => {
                let fds = self.ctrl.take_fds_n(handles as usize);
                if fds.len() != handles as usize && self.ctrl.take_fds_dropped() {
                    // Lost here, at this worker's descriptor limit: the task fails alone.
                    let e = channel::fds_dropped_error("receiving a pool task");
                    return Ok(Ok((id, entry, Err(e), Vec::new())));
                }
                Ok(Ok((id, entry, Ok(Received::Bytes(payload)), fds)))
            }
            ToWorker::TaskInFile {
                id,
                entry,
                len,
                handles,
            } => Ok(self.task_in_file(id, entry, len, handles)),
            other => Err(other),
        }
    }

    /// A task whose payload came in a memory file, the last of the descriptors that came with
    /// its message: read in place by the task (a file that cannot be mapped fails the task
    /// alone).
    fn task_in_file(
        &mut self,
        id: u64,
        entry: i64,
        len: u64,
        handles: u32,
    ) -> Result<SocketTask, i32> {
        let want = handles as usize + 1;
        let mut fds = self.ctrl.take_fds_n(want);
        if fds.len() != want {
            if self.ctrl.take_fds_dropped() {
                // Lost here, at this worker's descriptor limit (its file among them): the task
                // fails alone, as one whose file cannot be mapped does.
                let e = channel::fds_dropped_error("receiving a pool task");
                return Ok((id, entry, Err(e), Vec::new()));
            }
            return Err(1);
        }
        let file = fds.pop().ok_or(1)?;
        let payload = self.files.keep(file.as_fd(), len).map(Received::InFile);
        Ok((id, entry, payload, fds))
    }

    /// Publishes a task's answer (in the lane, or on the socket with a placeholder in the
    /// lane); the dispatcher, if it sleeps, is woken by `serve` (see [`Worker::wake_owed`]).
    fn answer(
        &mut self,
        id: u64,
        result: Result<Vec<u8>, Error>,
        place: AnswerPlace,
    ) -> Result<(), i32> {
        // Handles among the values (a `Buffer`) go with the answer, on the socket.
        let handles = crate::handle::take_returned();
        let mut fds: Vec<_> = handles.iter().map(AsFd::as_fd).collect();
        let n = fds.len() as u32;
        match (place, result) {
            // A large answer: encoded straight into a memory file by the task's trampoline (its
            // descriptor after the handles').
            (AnswerPlace::File(file, len), Ok(_)) => {
                fds.push(file.as_fd());
                let done = FromWorker::DoneInFile {
                    id,
                    len: len as u64,
                    handles: n,
                };
                self.on_socket(id, &done, &fds)?;
            }
            (_, Ok(result)) if n > 0 => {
                let done = FromWorker::DoneWithHandles {
                    id,
                    result: serde_bytes::ByteBuf::from(result),
                    handles: n,
                };
                self.on_socket(id, &done, &fds)?;
            }
            // Nearly every answer: written without the codec's two passes.
            (_, Ok(bytes)) if Lane::fits(bytes.len() + FRAME_OVERHEAD) => {
                crate::wire::message::write_done_ok(self.out_cleared(), id, &bytes);
                self.publish()?;
                memfile::give_back_buffer(bytes);
            }
            (_, result) => {
                let done = FromWorker::Done {
                    id,
                    result: result.map(serde_bytes::ByteBuf::from),
                };
                // A value's frame is its bytes and a few words: sized first only when it may
                // not fit (an error's message, or bytes near the limit).
                let surely_fits = matches!(&done, FromWorker::Done { result: Ok(b), .. }
                    if Lane::fits(b.len() + FRAME_OVERHEAD));
                if (surely_fits || codec::encoded_len(&done).is_ok_and(Lane::fits))
                    && codec::encode_into(self.out_cleared(), &done).is_ok()
                    && Lane::fits(self.out.len())
                {
                    self.publish()?;
                } else {
                    self.on_socket(id, &done, &[])?;
                }
                if let FromWorker::Done { result: Ok(b), .. } = done {
                    memfile::give_back_buffer(b.into_vec());
                }
            }
        }
        // Looked at before the next task, or once this worker has done its books of going
        // idle (see `serve`).
        self.wake_owed = true;
        Ok(())
    }

    /// Wakes the dispatcher if it sleeps and an answer was published since the last look (as
    /// it asked: a deferred wake-up waits for the task it named, see `Lane::peer_needs_wake`);
    /// unless, with nothing to do (`!busy`), a reader comes back within [`WAKE_GRACE`].
    fn wake_if_asleep(&mut self, busy: bool) -> Result<(), i32> {
        if !std::mem::take(&mut self.wake_owed) {
            return Ok(());
        }
        let wake = match busy {
            true => self.lane.peer_needs_wake(),
            false => self.lane.peer_needs_wake_unless_back(WAKE_GRACE),
        };
        if wake {
            self.ctrl.send(&FromWorker::Wake, &[]).map_err(|_| 0)?;
        }
        Ok(())
    }

    /// Sends an answer too large for the lane (or carrying descriptors) on the socket, and its
    /// placeholder in the lane; if it could not be sent (over the frame limit, say), the
    /// error goes in the lane instead.
    fn on_socket(
        &mut self,
        id: u64,
        message: &FromWorker,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<(), i32> {
        match self.ctrl.send(message, fds) {
            Ok(()) => {
                codec::encode_into(self.out_cleared(), &FromWorker::OnSocket).map_err(|_| 1)?;
            }
            Err(e) if *e.kind() == ErrorKind::Closed => return Err(0),
            Err(e) => {
                let failed = FromWorker::Done { id, result: Err(e) };
                codec::encode_into(self.out_cleared(), &failed).map_err(|_| 1)?;
            }
        }
        self.publish()
    }

    fn out_cleared(&mut self) -> &mut Vec<u8> {
        self.out.clear();
        &mut self.out
    }

    /// Pushes `self.out` into the lane, waiting for room if the dispatcher is behind.
    fn publish(&mut self) -> Result<(), i32> {
        if !Lane::fits(self.out.len()) {
            return Err(1);
        }
        while !self.lane.push(&self.out).map_err(|_| 1)? {
            if self.lane.peer_needs_wake_now() {
                self.ctrl.send(&FromWorker::Wake, &[]).map_err(|_| 0)?;
            }
            // The dispatcher empties every lane before it sleeps; wait for it, unless it is
            // gone.
            std::thread::sleep(Duration::from_micros(50));
            let gone = fd::poll_read(&[self.ctrl.fd()], Some(Instant::now()))
                .map(|r| r[0].hangup)
                .unwrap_or(true);
            if gone {
                return Err(0);
            }
        }
        Ok(())
    }
}

/// How many times a lingering worker looks at its lane between two readings of the clock
/// (see [`Worker::linger`]).
const LOOKS: usize = 8;

/// [`Worker::linger`], looking with `came` (whether the lane holds a frame).
fn linger(
    idle_since: u64,
    mut came: impl FnMut() -> bool,
    mut crowded: impl FnMut(u64) -> bool,
) -> Option<u64> {
    let until = idle_since.saturating_add(LINGER.as_nanos() as u64);
    let mut now = idle_since;
    loop {
        for _ in 0..64 {
            for _ in 0..LOOKS {
                if came() {
                    return Some(now);
                }
            }
            now = monotonic_ns();
        }
        // Let the caller have this CPU if it runs here too (it may be waiting for it); on a
        // CPU of its own, a yield would only hand the turn to whatever else runs here.
        if crowded(now) {
            std::thread::yield_now();
        }
        now = monotonic_ns();
        if now >= until {
            return None;
        }
    }
}

/// Calls the entry at `entry` on `payload` (see [`call`]).
fn run(identity: u64, entry: i64, payload: &[u8]) -> Result<Vec<u8>, Error> {
    call(image::entry_for(identity, entry)?, payload)
}

/// Calls `f` on `payload`; a panic outside the per-item catch (in decoding or encoding, or in
/// an initializer) becomes `Panicked`.
fn call(f: image::Entry, payload: &[u8]) -> Result<Vec<u8>, Error> {
    catch_uncounted(|| f(payload)).map_err(|report| Error::from(ErrorKind::Panicked(report)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame found while lingering is timed from the clock read just before the look that
    /// found it: never an older reading (the idle time before it would count as busy), never
    /// one taken after that look.
    #[test]
    fn a_frame_found_while_lingering_is_timed_from_the_reading_before_its_look() {
        // Found at the first look, within the first batch of looks, at the first look after
        // a reading, and later, all in the first round (no deadline is looked at before the
        // round ends: deterministic under any load).
        for found_at in [0usize, 1, LOOKS - 1, LOOKS, LOOKS + 1, 3 * LOOKS + 2, 64 * LOOKS - 1] {
            // A little in the past, so that a reading taken later is surely larger.
            let idle_since = monotonic_ns() - 1_000;
            let mut clocks = Vec::new();
            let seen = linger(
                idle_since,
                || {
                    clocks.push(monotonic_ns());
                    clocks.len() > found_at
                },
                |_| true,
            );
            let seen = seen.expect("found within the first round of looks");
            // The reading it gives is the last one before the batch its look is in: between
            // the last look of the batch before and the first look of its own.
            let batch = found_at / LOOKS * LOOKS;
            if batch == 0 {
                assert_eq!(seen, idle_since, "found in the first batch, look {found_at}");
            } else {
                assert!(
                    clocks[batch - 1] <= seen && seen <= clocks[batch],
                    "found at look {found_at}: read {seen}, between {} and {}",
                    clocks[batch - 1],
                    clocks[batch]
                );
            }
        }
        // Nothing comes: it gives up once its time is over, not before.
        let idle_since = monotonic_ns();
        assert_eq!(linger(idle_since, || false, |_| true), None);
        assert!(monotonic_ns() >= idle_since + LINGER.as_nanos() as u64);
    }
}
