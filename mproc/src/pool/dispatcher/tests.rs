//! The loop driven through a fake [`Link`]: every rule of the books (who gets a chunk, what a
//! death, a timeout or a retirement does to what a worker held) without a child process. The
//! fake is also the proof that a second kind of worker plugs in without touching the loop.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::link::{Answer, Link, Note, Peer, Polled, Sent};
use super::{Call, Chunk, Config, Dispatcher, LAUNCH_BATCH, Shared};
use crate::error::{Error, ErrorKind};
use crate::pool::job::JobState;
use crate::start::StartMethod;
use crate::sys::fd;
use crate::sys::proc::Exit;

/// What a fake worker was sent and will say; the test plays the worker.
#[derive(Default)]
struct Fake {
    sent: Vec<u64>,
    answers: VecDeque<Answer>,
    notes: VecDeque<Note>,
    started: u64,
    stopped: bool,
    dead: bool,
    /// Times its reader's word was set asleep.
    sleeps: usize,
    /// How many chunks it had been sent when its word was last set before a send
    /// (`Link::send_small` with `asleep`).
    asleep_before: Option<usize>,
    /// How many chunks it held when its word was last set as owed
    /// (`Link::prepare_sleep_held`).
    held_word: Option<u64>,
    /// The room its reader last said (`Link::say_cpu`), if it said one.
    room: Option<bool>,
}

type Handle = Rc<RefCell<Fake>>;

thread_local! {
    /// Every fake launched on this thread, in order.
    static LAUNCHED: RefCell<Vec<Handle>> = const { RefCell::new(Vec::new()) };
}

fn launched() -> Vec<Handle> {
    LAUNCHED.with(|l| l.borrow().clone())
}

struct FakeLink(Handle);

impl Link for FakeLink {
    type Launch = ();
    fn begin(_: &Config) -> Result<(), Error> {
        Ok(())
    }
    fn finish((): (), _: &Config) -> Result<Self, Error> {
        let fake = Handle::default();
        LAUNCHED.with(|l| l.borrow_mut().push(Rc::clone(&fake)));
        Ok(FakeLink(fake))
    }
    fn send(&mut self, chunk: &Chunk, _: &mut Vec<u8>) -> Sent {
        self.0.borrow_mut().sent.push(chunk.id);
        Sent::Placed
    }
    fn send_small(
        &mut self,
        id: u64,
        _: i64,
        _: &[u8],
        _: &mut Vec<u8>,
        asleep: bool,
    ) -> Option<Sent> {
        let mut fake = self.0.borrow_mut();
        if asleep {
            fake.sleeps += 1;
            fake.asleep_before = Some(fake.sent.len());
        }
        fake.sent.push(id);
        Some(Sent::Placed)
    }
    fn stop(&mut self) {
        self.0.borrow_mut().stopped = true;
    }
    fn flush(&mut self) {}
    fn queued(&self) -> bool {
        false
    }
    fn next_answer(&mut self, _: &mut Vec<u8>) -> Result<Option<Answer>, Error> {
        Ok(self.0.borrow_mut().answers.pop_front())
    }
    fn next_note(&mut self) -> Option<Note> {
        self.0.borrow_mut().notes.pop_front()
    }
    fn started(&self) -> u64 {
        self.0.borrow().started
    }
    fn revoke(&self, task: u64) -> bool {
        task > self.0.borrow().started
    }
    fn prepare_sleep(&self, _: u64) -> bool {
        let mut fake = self.0.borrow_mut();
        fake.sleeps += 1;
        fake.answers.is_empty()
    }
    fn prepare_sleep_held(&self, held: u64) -> bool {
        self.0.borrow_mut().held_word = Some(held);
        self.prepare_sleep(0)
    }
    fn awake(&self) {}
    fn say_cpu(&self, _: u32, room: Option<bool>) -> Peer {
        let mut fake = self.0.borrow_mut();
        fake.room = room.or(fake.room);
        Peer::Unsaid
    }
    fn watch(&self, _: &mut Vec<(RawFd, bool)>, _: bool) -> usize {
        0
    }
    fn polled(&mut self, _: &[fd::Ready]) -> Polled {
        Polled {
            read: true,
            exited: self.0.borrow().dead,
        }
    }
    fn exited(&mut self) -> Option<Error> {
        let dead = self.0.borrow().dead;
        dead.then(|| Error::lost("fake", 1, Exit::Unknown))
    }
    fn kill(&mut self) {
        self.0.borrow_mut().dead = true;
    }
    fn wait(&mut self, _: Option<Instant>) -> bool {
        true
    }
}

/// A dispatcher of `processes` fake workers, all started.
fn dispatcher(processes: usize, tweak: impl FnOnce(&mut Config)) -> Dispatcher<FakeLink> {
    let mut d = new_dispatcher(processes, tweak);
    d.launch_the_rest();
    d
}

/// A dispatcher as `Pool::build` leaves it (a fork server's pool by default).
fn new_dispatcher(processes: usize, tweak: impl FnOnce(&mut Config)) -> Dispatcher<FakeLink> {
    let mut config = Config {
        processes,
        method: StartMethod::Forkserver,
        init: None,
        init_fds: Vec::new(),
        init_args: None,
        max_tasks_per_child: None,
        max_memory_per_child: None,
        memory_limit_per_child: None,
        task_timeout: None,
        name_prefix: None,
        gated: None,
        setup: Default::default(),
    };
    tweak(&mut config);
    Dispatcher::new(Shared::new().unwrap(), config).unwrap()
}

#[test]
fn a_fork_server_pool_starts_its_first_worker_at_once_and_the_others_a_few_at_a_time() {
    let mut d = new_dispatcher(6, |_| {});
    assert_eq!((launched().len(), d.workers.len(), d.unlaunched), (1, 1, 5));
    let job = submit(&d, &[1]);
    // A turn of its own starts nothing: the slots of those still to start are held.
    round(&mut d);
    assert_eq!(launched().len(), 1);
    assert_eq!(launched()[0].borrow().sent, [1], "the first serves meanwhile");
    // The dispatcher thread takes them a batch at a time (as `serve` does).
    let mut batches = Vec::new();
    while let Some((config, n)) = d.take_unlaunched(LAUNCH_BATCH) {
        batches.push(n);
        let links = FakeLink::launch_many(&config, n);
        d.hire_launched(links, Instant::now(), false);
        round(&mut d);
    }
    assert_eq!(batches, [4, 1]);
    assert_eq!(launched().len(), 6);
    let slots: Vec<_> = d.workers.iter().map(|w| w.slot).collect();
    assert_eq!(slots, [0, 1, 2, 3, 4, 5]);
    round(&mut d);
    assert_eq!(launched().len(), 6, "never more than the pool's size");
    answer(&launched()[0], 1);
    round(&mut d);
    assert_eq!(outcome(&job, 0), Some(None));
}

#[test]
fn a_pool_terminated_before_its_workers_are_all_started_starts_no_more() {
    let mut d = new_dispatcher(3, |_| {});
    d.shared.terminate();
    assert!(d.take_unlaunched(LAUNCH_BATCH).is_none());
    assert_eq!(d.unlaunched, 0);
    assert_eq!(launched().len(), 1);
}

#[test]
fn fork_and_spawn_pools_start_every_worker_at_once() {
    for method in [StartMethod::Fork, StartMethod::Spawn] {
        LAUNCHED.with(|l| l.borrow_mut().clear());
        let d = new_dispatcher(3, |c| c.method = method);
        assert_eq!(launched().len(), 3, "{method}");
        assert_eq!(d.workers.len(), 3, "{method}");
    }
}

/// Submits one single-item chunk per id, as `Pool` does.
fn submit(d: &Dispatcher<FakeLink>, ids: &[u64]) -> Arc<JobState> {
    let job = JobState::new();
    let chunks = ids
        .iter()
        .map(|&id| {
            let index = job.add_chunk(id, 1);
            Chunk::new(id, 0, Vec::new().into(), Arc::clone(&job), index, 1)
        })
        .collect::<Vec<_>>();
    job.seal();
    d.shared.submit(chunks, true).unwrap();
    job
}

/// One turn of the loop and what `poll` would have reported.
fn round(d: &mut Dispatcher<FakeLink>) {
    let plan = d.turn().unwrap();
    let ready = vec![fd::Ready::default(); plan.fds.len()];
    d.handle(&plan, &ready);
}

fn ready(fake: &Handle) {
    fake.borrow_mut().notes.push_back(Note::Ready);
}

fn answer(fake: &Handle, id: u64) {
    let mut fake = fake.borrow_mut();
    fake.started += 1;
    let bytes = serde_bytes::ByteBuf::from(id.to_le_bytes().to_vec());
    fake.answers.push_back((id, Ok(bytes.into_vec().into())));
}

/// Chunk `index`'s outcome: `None` while unanswered, else its error kind (`None` inside for
/// success).
fn outcome(job: &JobState, index: usize) -> Option<Option<ErrorKind>> {
    let mut inner = job.lock();
    let slot = inner.slot_mut(index)?;
    let outcome = slot.outcome.as_ref()?;
    Some(outcome.as_ref().err().map(|e| e.kind().clone()))
}

#[test]
fn with_an_initializer_only_ready_workers_get_chunks_least_loaded_first() {
    let mut d = dispatcher(2, |c| c.init = Some((0, Vec::new())));
    let job = submit(&d, &[1, 2, 3, 4]);
    round(&mut d);
    let fakes = launched();
    assert!(fakes.iter().all(|f| f.borrow().sent.is_empty()));
    ready(&fakes[0]);
    ready(&fakes[1]);
    round(&mut d); // reads `Ready`
    round(&mut d); // assigns
    assert_eq!(fakes[0].borrow().sent, [1, 3]);
    assert_eq!(fakes[1].borrow().sent, [2, 4]);
    answer(&fakes[1], 2);
    round(&mut d);
    assert_eq!(outcome(&job, 1), Some(None));
    assert_eq!(outcome(&job, 0), None);
}

#[test]
fn a_worker_lost_mid_chunk_fails_it_and_requeues_the_rest() {
    let mut d = dispatcher(2, |_| {});
    let fakes = launched();
    fakes.iter().for_each(ready);
    round(&mut d);
    let job = submit(&d, &[1, 2, 3, 4]);
    round(&mut d);
    assert_eq!(fakes[0].borrow().sent, [1, 3]);
    // It took chunk 1 and died running it; chunk 3 never started.
    fakes[0].borrow_mut().started = 1;
    fakes[0].borrow_mut().dead = true;
    round(&mut d);
    assert!(matches!(
        outcome(&job, 0),
        Some(Some(ErrorKind::WorkerLost(_)))
    ));
    assert_eq!(outcome(&job, 2), None);
    round(&mut d); // starts a replacement
    let fakes = launched();
    assert_eq!(fakes.len(), 3);
    ready(&fakes[2]);
    round(&mut d);
    round(&mut d);
    assert_eq!(fakes[2].borrow().sent, [3]);
}

#[test]
fn a_timed_out_chunk_fails_once_its_worker_is_gone() {
    let mut d = dispatcher(1, |c| c.task_timeout = Some(Duration::ZERO));
    let fakes = launched();
    ready(&fakes[0]);
    round(&mut d);
    let job = submit(&d, &[1, 2]);
    fakes[0].borrow_mut().started = 1;
    round(&mut d); // assigns; the deadline has passed: condemned (killed)
    assert!(fakes[0].borrow().dead);
    assert_eq!(outcome(&job, 0), None, "accounted for only at its exit");
    round(&mut d);
    assert_eq!(outcome(&job, 0), Some(Some(ErrorKind::TaskTimedOut)));
    assert_eq!(outcome(&job, 1), None, "requeued");
}

/// A dispatcher of one fake worker that has said it is ready, and that worker.
fn one_ready_worker(tweak: impl FnOnce(&mut Config)) -> (Dispatcher<FakeLink>, Handle) {
    let mut d = dispatcher(1, tweak);
    let fake = Rc::clone(&launched()[0]);
    ready(&fake);
    round(&mut d);
    (d, fake)
}

/// The dead worker's replacement starts, says it is ready, and is sent `chunks`.
fn the_replacement_is_sent(d: &mut Dispatcher<FakeLink>, chunks: &[u64]) {
    round(d); // starts a replacement
    let fake = Rc::clone(launched().last().unwrap());
    ready(&fake);
    round(d);
    round(d);
    assert_eq!(fake.borrow().sent, chunks);
}

/// A worker killed for a task past its timeout may finish that task and take the next before
/// the kill lands: the chunks behind the late one are taken back first, so the next one, of
/// another call, runs elsewhere instead of failing with the worker.
#[test]
fn a_timeout_takes_back_the_chunks_behind_the_late_one_before_the_kill() {
    let (mut d, fake) = one_ready_worker(|c| c.task_timeout = Some(Duration::ZERO));
    let job = submit(&d, &[1, 2]);
    fake.borrow_mut().started = 1;
    round(&mut d); // assigns; chunk 1 past its deadline: chunk 2 taken back, then the kill
    assert!(fake.borrow().dead);
    // Before the kill landed it finished chunk 1 and got to chunk 2 (skipped: revoked).
    answer(&fake, 1);
    round(&mut d);
    assert_eq!(outcome(&job, 0), Some(None), "answered before the kill");
    assert_eq!(outcome(&job, 1), None, "lost with the worker killed for another");
    assert!(d.stats().errors.is_empty(), "{:?}", d.stats().errors);
    the_replacement_is_sent(&mut d, &[2]);
}

/// The same for a cancel that kills the worker running the cancelled chunk.
#[test]
fn a_cancel_takes_back_the_chunks_behind_the_running_one_before_the_kill() {
    let (mut d, fake) = one_ready_worker(|_| {});
    let job = submit(&d, &[1, 2]);
    round(&mut d);
    fake.borrow_mut().started = 1;
    d.cancel(std::collections::HashSet::from([1]), true);
    assert!(fake.borrow().dead);
    answer(&fake, 1); // finished before the kill landed, then got to chunk 2
    round(&mut d);
    assert_eq!(outcome(&job, 1), None, "lost with the worker killed for another");
    the_replacement_is_sent(&mut d, &[2]);
}

/// If the worker has already taken the chunk behind the late one, the late one has finished
/// (its answer is on its way): it is not killed for it.
#[test]
fn a_timeout_spares_a_worker_that_has_moved_on() {
    let (mut d, fake) = one_ready_worker(|c| c.task_timeout = Some(Duration::ZERO));
    let job = submit(&d, &[1, 2]);
    // It took both; chunk 1's answer comes just after the dispatcher looked for it.
    fake.borrow_mut().started = 2;
    round(&mut d);
    assert!(!fake.borrow().dead, "killed for a task that had finished");
    let bytes = serde_bytes::ByteBuf::from(1u64.to_le_bytes().to_vec());
    fake.borrow_mut().answers.push_back((1, Ok(bytes.into_vec().into())));
    round(&mut d); // chunk 1 answered; chunk 2, now the late one, costs the worker
    assert_eq!(outcome(&job, 0), Some(None));
    assert!(fake.borrow().dead);
    round(&mut d);
    assert_eq!(outcome(&job, 1), Some(Some(ErrorKind::TaskTimedOut)));
}

#[test]
fn a_retired_worker_finishes_its_chunk_before_it_is_replaced() {
    let mut d = dispatcher(1, |c| c.max_tasks_per_child = Some(1));
    let fakes = launched();
    ready(&fakes[0]);
    round(&mut d);
    let job = submit(&d, &[1, 2]);
    round(&mut d);
    assert_eq!(fakes[0].borrow().sent, [1]);
    assert!(fakes[0].borrow().stopped);
    round(&mut d);
    assert_eq!(launched().len(), 1, "it still holds its slot");
    answer(&fakes[0], 1);
    round(&mut d);
    round(&mut d);
    assert_eq!(outcome(&job, 0), Some(None));
    assert_eq!(launched().len(), 2);
}

#[test]
fn a_death_before_ready_breaks_a_pool_with_an_initializer() {
    let mut d = dispatcher(1, |c| c.init = Some((0, Vec::new())));
    let job = submit(&d, &[1]);
    round(&mut d);
    launched()[0].borrow_mut().dead = true;
    round(&mut d);
    round(&mut d);
    assert!(matches!(
        outcome(&job, 0),
        Some(Some(ErrorKind::InitializerFailed(_)))
    ));
    assert_eq!(launched().len(), 1, "never respawned into the same failure");
    assert!(matches!(
        d.shared.check_open().unwrap_err().kind(),
        ErrorKind::InitializerFailed(_)
    ));
}

#[test]
fn without_an_initializer_a_death_before_ready_is_replaced() {
    let mut d = dispatcher(1, |_| {});
    let job = submit(&d, &[1]);
    round(&mut d);
    assert_eq!(launched()[0].borrow().sent, [1], "handed over while it starts");
    launched()[0].borrow_mut().dead = true;
    round(&mut d);
    round(&mut d);
    assert_eq!(launched().len(), 2);
    assert!(d.shared.check_open().is_ok());
    // Never started there: requeued for the replacement, not failed.
    assert_eq!(outcome(&job, 0), None);
    round(&mut d);
    assert_eq!(launched()[1].borrow().sent, [1]);
}

#[test]
fn without_an_initializer_a_new_worker_takes_chunks_before_ready_and_its_time_starts_at_ready() {
    let mut d = dispatcher(1, |c| c.task_timeout = Some(Duration::from_millis(50)));
    let job = submit(&d, &[1, 2]);
    round(&mut d);
    let fakes = launched();
    assert_eq!(fakes[0].borrow().sent, [1, 2], "handed over while it starts");
    // Longer than the timeout passes before it says `Ready`: its start is not the task's time.
    std::thread::sleep(Duration::from_millis(60));
    round(&mut d);
    assert!(!fakes[0].borrow().dead, "not timed out while starting");
    ready(&fakes[0]);
    round(&mut d);
    assert!(!fakes[0].borrow().dead, "its time started at `Ready`");
    answer(&fakes[0], 1);
    round(&mut d);
    assert_eq!(outcome(&job, 0), Some(None));
    // Past its timeout after `Ready`, it is condemned as any other.
    fakes[0].borrow_mut().started = 2;
    std::thread::sleep(Duration::from_millis(60));
    round(&mut d);
    assert!(fakes[0].borrow().dead);
}

#[test]
fn a_worker_still_starting_is_passed_over_for_one_that_said_ready() {
    let mut d = dispatcher(2, |_| {});
    round(&mut d);
    let fakes = launched();
    ready(&fakes[1]);
    round(&mut d);
    submit(&d, &[1]);
    round(&mut d);
    assert!(fakes[0].borrow().sent.is_empty());
    assert_eq!(fakes[1].borrow().sent, [1]);
}

#[test]
fn a_chunk_held_by_a_worker_that_does_not_start_moves_to_one_that_has() {
    let mut d = dispatcher(2, |c| c.task_timeout = Some(Duration::from_millis(20)));
    let job = submit(&d, &[1]);
    round(&mut d);
    let fakes = launched();
    assert_eq!(fakes[0].borrow().sent, [1], "neither has said Ready: the first takes it");
    ready(&fakes[1]);
    round(&mut d);
    // Held past `SLOW` by a worker that has not started: taken back, and placed again.
    std::thread::sleep(Duration::from_millis(5));
    round(&mut d);
    round(&mut d);
    assert_eq!(fakes[1].borrow().sent, [1], "moved to the worker that runs");
    answer(&fakes[1], 1);
    round(&mut d);
    assert_eq!(outcome(&job, 0), Some(None));
    // The one that never started is neither timed out nor given anything else.
    std::thread::sleep(Duration::from_millis(30));
    round(&mut d);
    assert!(!fakes[0].borrow().dead);
    assert_eq!(fakes[0].borrow().sent, [1]);
}

/// A remote agent's pool whose workers all hold their one chunk is not woken for more: the
/// answer that frees a worker wakes it. One with a serving worker free is. (The predicate
/// only: the fake link has no sleep words, so a lost wake-up could not show here; the remote
/// suite exercises the fast path.)
#[test]
fn a_gated_pool_with_every_worker_busy_needs_no_wake_for_chunks_left_queued() {
    let gate = super::Gated {
        flush: Arc::new(|| true),
    };
    let mut d = dispatcher(2, |c| c.gated = Some(gate));
    let fakes = launched();
    ready(&fakes[0]);
    round(&mut d);
    round(&mut d);
    let job = submit(&d, &[1, 2, 3]);
    round(&mut d);
    assert_eq!(fakes[0].borrow().sent, [1], "one chunk per worker");
    assert!(fakes[1].borrow().sent.is_empty(), "launched, not Ready yet");
    assert_eq!(d.queue.len(), 2);
    assert!(!d.needs_attention(), "the one serving holds its chunk");
    ready(&fakes[1]);
    round(&mut d);
    round(&mut d);
    assert_eq!(fakes[1].borrow().sent, [2]);
    assert!(!d.needs_attention());
    answer(&fakes[0], 1);
    round(&mut d);
    assert_eq!(fakes[0].borrow().sent, [1, 3]);
    assert_eq!(outcome(&job, 0), Some(None));
    assert!(d.queue.is_empty());
    // A serving worker without a chunk while chunks wait: a look is needed.
    answer(&fakes[1], 2);
    d.drain_lanes(None);
    let _more = submit(&d, &[4]);
    d.take_commands();
    assert_eq!(d.queue.len(), 1);
    assert!(d.needs_attention(), "worker 1 is free");
}

/// A waiting thread's reading of the clock times an answer for the average, but never starts
/// the time of a chunk the worker runs next: an old reading would make its timeout early.
#[test]
fn a_waiters_old_reading_times_answers_but_never_starts_a_chunks_time() {
    let mut d = dispatcher(1, |c| c.task_timeout = Some(Duration::from_millis(50)));
    let fakes = launched();
    ready(&fakes[0]);
    round(&mut d);
    let job = submit(&d, &[1, 2]);
    round(&mut d);
    assert_eq!(fakes[0].borrow().sent, [1, 2]);
    let placed = d.workers[0].front_since;
    // Chunk 1 answered, chunk 2 runs: its time starts now, not at the old reading.
    let old = placed;
    std::thread::sleep(Duration::from_millis(5));
    answer(&fakes[0], 1);
    let before = Instant::now();
    d.drain_lanes(Some(old));
    assert_eq!(outcome(&job, 0), Some(None));
    assert!(d.workers[0].front_since >= before, "chunk 2's time starts when it is seen");
    // So its timeout comes 50 ms after that, not 50 ms after the old reading.
    let deadline = d.workers[0].deadline(Some(Duration::from_millis(50)));
    assert!(deadline.is_some_and(|at| at >= before + Duration::from_millis(50)));
    // Chunk 2 answered with nothing behind it: the reading, later than its start, times it.
    answer(&fakes[0], 2);
    let seen = Instant::now();
    d.drain_lanes(Some(seen));
    assert_eq!(outcome(&job, 1), Some(None));
    assert_eq!(d.workers[0].front_since, seen, "the waiter's reading, no clock read");
    // A reading older than the front chunk's start is not used: the clock is read instead.
    std::thread::sleep(Duration::from_millis(1));
    let job = submit(&d, &[3]);
    round(&mut d);
    let placed = d.workers[0].front_since;
    answer(&fakes[0], 3);
    d.drain_lanes(Some(seen));
    assert_eq!(outcome(&job, 0), Some(None));
    assert!(placed > seen && d.workers[0].front_since >= placed);
}

/// A reader letting go sets the sleep words of the workers that hold chunks only. A worker
/// handed a chunk after holding nothing by a thread that does not read the lanes has its word
/// set by that thread, once the chunk is in its lane; an answer already there by then (a quick
/// worker) makes the lanes need reading. A reader's turn sets it once, as it ends.
#[test]
fn a_readers_word_is_set_for_workers_holding_chunks_and_when_an_idle_one_is_handed_one() {
    let mut d = dispatcher(2, |_| {});
    let fakes = launched();
    fakes.iter().for_each(ready);
    round(&mut d);
    let sleeps = || (fakes[0].borrow().sleeps, fakes[1].borrow().sleeps);
    let (a, b) = sleeps();
    assert_eq!(d.prepare_sleep(false), Some(false));
    assert_eq!(sleeps(), (a, b), "both hold nothing: neither word is set");
    // Handed a chunk in a turn: set once, as the turn ends.
    let job = submit(&d, &[1]);
    round(&mut d);
    assert_eq!(fakes[0].borrow().sent, [1]);
    assert_eq!(sleeps(), (a + 1, b));
    assert!(!d.needs_attention());
    answer(&fakes[0], 1);
    d.drain_lanes(None);
    assert_eq!(outcome(&job, 0), Some(None));
    assert_eq!(d.prepare_sleep(false), Some(false));
    assert_eq!(sleeps(), (a + 1, b), "it holds nothing again");
    // Handed one by a submitting thread whose worker answers before its word is set.
    let job = JobState::new();
    let index = job.add_chunk(2, 1);
    job.seal();
    answer(&fakes[0], 2);
    d.enqueue(Chunk::new(2, 0, Vec::new().into(), Arc::clone(&job), index, 1));
    d.assign();
    assert_eq!(sleeps(), (a + 1, b), "not as it is placed");
    d.set_owed_words();
    assert_eq!(sleeps(), (a + 2, b));
    assert_eq!(fakes[0].borrow().held_word, Some(1), "the word names what it holds");
    assert!(d.needs_attention(), "an answer may wait unread");
    d.drain_lanes(None);
    assert_eq!(outcome(&job, 0), Some(None));
    assert!(!d.needs_attention());
}

/// A call put straight into the lane of a worker that holds nothing (`place_call`) has the
/// worker's word set before it is sent, once: the worker's answer, which cannot come before the
/// call, then finds it set, and nothing needs the lanes read after the call is placed.
#[test]
fn a_call_placed_on_an_idle_worker_sets_its_word_before_it_is_sent() {
    let mut d = dispatcher(1, |_| {});
    let fakes = launched();
    fakes.iter().for_each(ready);
    round(&mut d);
    let (sleeps, sent) = (fakes[0].borrow().sleeps, fakes[0].borrow().sent.len());
    let call = Call {
        id: 7,
        entry: 0,
        payload: Vec::new().into(),
        handles: Vec::new(),
        timeout: None,
    };
    let Ok(job) = d.place_call(call) else {
        panic!("a call to an idle worker is placed at once");
    };
    assert_eq!(fakes[0].borrow().sent[sent..], [7]);
    assert_eq!(fakes[0].borrow().sleeps, sleeps + 1, "set once");
    assert_eq!(fakes[0].borrow().asleep_before, Some(sent), "before the send");
    assert!(!d.needs_attention());
    answer(&fakes[0], 7);
    d.drain_lanes(None);
    assert_eq!(outcome(&job, 0), Some(None));
    assert_eq!(d.prepare_sleep(false), Some(false));
    assert_eq!(fakes[0].borrow().sleeps, sleeps + 1, "it holds nothing again");
}

/// A reader stops reading a worker's lane once the worker holds nothing: nothing it sends
/// then can be an answer (a well-behaved worker sends none), and the look at the next frame's
/// line, which the worker wrote last (zeroing it ahead), would cost a waiting caller a cache
/// miss between its answer and its next call. What such a worker sent is read, and judged,
/// once it is handed a chunk again.
#[test]
fn a_lane_is_not_read_while_its_worker_holds_nothing() {
    let mut d = dispatcher(1, |_| {});
    let fakes = launched();
    fakes.iter().for_each(ready);
    round(&mut d);
    let job = submit(&d, &[1]);
    round(&mut d);
    answer(&fakes[0], 1);
    answer(&fakes[0], 99); // nothing it holds
    d.drain_lanes(None);
    assert_eq!(outcome(&job, 0), Some(None));
    assert_eq!(fakes[0].borrow().answers.len(), 1, "left unread");
    d.drain_lanes(None);
    assert_eq!(fakes[0].borrow().answers.len(), 1, "still unread");
    assert!(!d.workers[0].state.is_condemned());
    // Handed a chunk, it is read: an answer out of order, and the worker is condemned.
    let next = submit(&d, &[2]);
    round(&mut d);
    assert!(fakes[0].borrow().answers.is_empty());
    assert_eq!(fakes[0].borrow().sent, [1, 2]);
    // It had taken the chunk (its count says so): the chunk fails with it, as any chunk a
    // worker that breaks the protocol had taken.
    assert!(d.workers.is_empty(), "the worker is gone");
    assert!(matches!(outcome(&next, 0), Some(Some(ErrorKind::WorkerLost(_)))));
}

/// Only a call placed on an idle worker says there is room for the worker to move off its
/// caller's CPU, and only while the busy workers and the caller are no more than the CPUs;
/// chunks handed out otherwise (a `map`) say there is none, and a waiter keeps what was said.
#[test]
fn only_a_call_placed_on_an_idle_worker_says_there_is_room() {
    let mut d = dispatcher(2, |_| {});
    d.cpus = 2;
    let fakes = launched();
    fakes.iter().for_each(ready);
    round(&mut d);
    let call = |id| Call {
        id,
        entry: 0,
        payload: Vec::new().into(),
        handles: Vec::new(),
        timeout: None,
    };
    assert!(d.place_call(call(7)).is_ok());
    assert_eq!(fakes[0].borrow().room, Some(true), "one busy worker and its caller: room");
    // A waiter says its CPU, and leaves the room as the call said it.
    d.say_cpu(None);
    assert_eq!(fakes[0].borrow().room, Some(true));
    // A second call while the first runs: two busy workers and the caller on two CPUs.
    assert!(d.place_call(call(8)).is_ok());
    assert_eq!(fakes[1].borrow().room, Some(false), "no room");
    answer(&fakes[0], 7);
    answer(&fakes[1], 8);
    d.drain_lanes(None);
    // A `map`'s chunks, handed out by `assign`: no room, even for the worker a call said
    // there was room for.
    let job = JobState::new();
    for id in [9, 10] {
        let index = job.add_chunk(id, 1);
        d.enqueue(Chunk::new(id, 0, Vec::new().into(), Arc::clone(&job), index, 1));
    }
    d.assign();
    assert_eq!(fakes[0].borrow().sent.last(), Some(&9));
    assert_eq!(fakes[0].borrow().room, Some(false), "a map's chunk says no room");
    assert_eq!(fakes[1].borrow().room, Some(false));
}

fn call(id: u64) -> Call {
    Call {
        id,
        entry: 0,
        payload: Vec::new().into(),
        handles: Vec::new(),
        timeout: None,
    }
}

/// A call its caller waits for at once (`place_waited`) goes straight to an idle worker with
/// nothing made or booked and no word set; its caller reads the answer itself
/// (`look_waited`), and the books then say what a chunk's answer read by `drain` would: the
/// worker given one task and done with it, idle again, its statistics counting it.
#[test]
fn a_waited_call_is_read_by_its_caller_and_booked_as_a_chunk_would_be() {
    let mut d = dispatcher(2, |_| {});
    let fakes = launched();
    fakes.iter().for_each(ready);
    round(&mut d);
    let (sleeps, sent) = (fakes[0].borrow().sleeps, fakes[0].borrow().sent.len());
    let placed = Instant::now();
    let at = d.place_waited(&call(7)).expect("an idle worker takes it");
    assert_eq!(at, 0);
    assert_eq!(fakes[0].borrow().sent[sent..], [7]);
    assert!(d.workers[0].in_flight.is_empty(), "nothing booked yet");
    assert!(matches!(d.look_waited(at, 7, placed, placed), super::Look::Nothing));
    answer(&fakes[0], 7);
    let seen = Instant::now();
    let super::Look::Answered(answered) = d.look_waited(at, 7, placed, seen) else {
        panic!("its answer is read");
    };
    assert_eq!(answered.bytes.in_memory(), Some(&7u64.to_le_bytes()[..]));
    let w = &d.workers[0];
    assert_eq!((w.given, w.answered, w.items, w.chunks), (1, 1, 1, 1));
    assert!(w.in_flight.is_empty() && !w.word_owed);
    assert_eq!(w.front_since, seen);
    assert_eq!(fakes[0].borrow().sleeps, sleeps, "no word set");
    assert_eq!(d.stats().tasks(), 1);
    // The worker holds nothing: the next call, waited or not, may go to it again.
    assert_eq!(d.place_waited(&call(8)), Some(0));
}

/// A waited call whose caller lets go before the answer (`hold_waited`) is in the books as a
/// placed call is: the worker holds its chunk, any reader completes its job, and the worker
/// owes no word (the reader letting go sets it).
#[test]
fn a_waited_call_let_go_before_its_answer_is_held_as_a_placed_call() {
    let (mut d, fake) = one_ready_worker(|_| {});
    let placed = Instant::now();
    let at = d.place_waited(&call(7)).unwrap();
    let job = d.hold_waited(at, call(7), placed, None);
    assert_eq!(d.workers[0].front(), Some(7));
    assert_eq!(d.workers[0].front_since, placed);
    assert_eq!(crate::pool::job::placed_at(&job), Some(placed));
    assert!(!d.workers[0].word_owed);
    assert_eq!(outcome(&job, 0), None);
    answer(&fake, 7);
    d.drain_lanes(None);
    assert_eq!(outcome(&job, 0), Some(None));
    assert_eq!(d.workers[0].given, 1);
}

/// Whatever else a waited call's caller finds in the lane (here another task's answer, from a
/// worker that holds nothing else) is judged with the call in the books, as any reader judges
/// it: the worker is condemned, and the call fails with it.
#[test]
fn a_waited_calls_worker_answering_another_task_fails_the_call_with_it() {
    let (mut d, fake) = one_ready_worker(|_| {});
    let placed = Instant::now();
    let at = d.place_waited(&call(7)).unwrap();
    answer(&fake, 99);
    let super::Look::Other(read) = d.look_waited(at, 7, placed, placed) else {
        panic!("another task's answer is not the call's");
    };
    let job = d.hold_waited(at, call(7), placed, Some(read));
    assert!(d.workers[0].state.is_condemned());
    round(&mut d);
    assert!(matches!(outcome(&job, 0), Some(Some(ErrorKind::WorkerLost(_)))));
}

/// A waited call counts toward `max_tasks_per_child` as any chunk: the worker it makes the
/// last of its quota is told to stop. Pools whose dispatcher thread looks after every
/// hand-over (a time limit, a memory limit) take no waited call.
#[test]
fn waited_calls_count_toward_retirement_and_skip_watched_pools() {
    let (mut d, fake) = one_ready_worker(|c| c.max_tasks_per_child = Some(1));
    let placed = Instant::now();
    let at = d.place_waited(&call(7)).unwrap();
    answer(&fake, 7);
    assert!(matches!(d.look_waited(at, 7, placed, placed), super::Look::Answered(_)));
    assert!(fake.borrow().stopped, "retired after its one task");
    assert!(d.workers[0].retired);
    for tweak in [
        (|c: &mut Config| c.task_timeout = Some(Duration::from_secs(1))) as fn(&mut Config),
        |c| c.memory_limit_per_child = Some(1 << 30),
    ] {
        let mut d = dispatcher(1, tweak);
        launched().last().map(ready);
        round(&mut d);
        assert_eq!(d.place_waited(&call(7)), None);
    }
    let mut d = dispatcher(1, |_| {});
    launched().last().map(ready);
    round(&mut d);
    let timed = Call {
        timeout: Some(Duration::from_secs(1)),
        ..call(7)
    };
    assert_eq!(d.place_waited(&timed), None, "a call with its own limit");
    assert_eq!(d.place_waited(&call(8)), Some(0), "the same pool takes one without");
}

/// A waited call is taken past the inbox (without its lock) only when no command waits there
/// before it: the dispatcher's count of commands taken meets the count posted only once it has
/// taken every one (`Shared::state_for_waited`).
#[test]
fn a_waited_call_never_overtakes_a_command_waiting_in_the_inbox() {
    use std::sync::atomic::Ordering;
    let (mut d, _fake) = one_ready_worker(|_| {});
    assert_eq!(d.taken, d.shared.posted.load(Ordering::Relaxed));
    // Submitted while this test holds the dispatcher (as another thread would find the state
    // taken): a command in the inbox.
    let job = submit(&d, &[1]);
    d.shared.cancel(vec![99]);
    assert_eq!(d.taken + 2, d.shared.posted.load(Ordering::Relaxed), "two wait");
    d.take_commands();
    assert_eq!(d.taken, d.shared.posted.load(Ordering::Relaxed), "none waits");
    assert_eq!(d.workers[0].front(), None);
    d.assign();
    assert_eq!(d.workers[0].front(), Some(1), "the submitted chunk went first");
    drop(job);
}

/// Every way the inbox starts refusing is seen by `check_open` at once, before the
/// dispatcher's next turn.
#[test]
fn check_open_refuses_at_once_after_close_terminate_or_the_dispatchers_end() {
    let d = dispatcher(1, |_| {});
    assert!(d.shared.check_open().is_ok());
    d.shared.terminate();
    assert_eq!(d.shared.check_open().unwrap_err().kind(), &ErrorKind::PoolClosed);
    let d = dispatcher(1, |_| {});
    d.shared.close();
    assert_eq!(d.shared.check_open().unwrap_err().kind(), &ErrorKind::PoolClosed);
    let d = dispatcher(1, |_| {});
    d.shared.mark_finished(&ErrorKind::Terminated.into());
    assert_eq!(d.shared.check_open().unwrap_err().kind(), &ErrorKind::PoolClosed);
    let d = dispatcher(1, |_| {});
    d.shared.set_broken(&ErrorKind::Terminated.into());
    assert_eq!(d.shared.check_open().unwrap_err().kind(), &ErrorKind::Terminated);
}
