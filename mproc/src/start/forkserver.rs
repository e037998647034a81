//! The `Forkserver` start method.
//!
//! Client side (any process that starts children): the first `Forkserver` start spawns a
//! server, a fresh copy of the executable that becomes the server before `main`, checks that
//! it runs the same build ([`Hello`]/[`Welcome`], which brings the page of its spares' words,
//! [`Words`]), and keeps one request socket to it. The client gives the server the sockets of
//! its next two spares ahead ([`Kit`]: the spare's end of a control socket, the server's end
//! of a status socket; the client keeps the other ends): sent after the handshake, then made
//! once a child has ended and been waited for ([`top_up`]) and sent with the next message that
//! tells the server a spare was used. The server lends each spare it forks with a kit to the
//! client ([`Lent`]: its pid, which kit, where its word is; no descriptor, see below). A start
//! takes the lent spare itself ([`start_lent`]): it opens a pidfd by the pid, sends the start
//! message on the kit's control socket, moves the spare's word from idle to taken, wakes it
//! (one futex wake-up, no round trip), and tells the server later ([`ToServer::Took`]: at the
//! next wait for a child, start, or pool thread's sleep, see [`tell_takes`]; told at once, the
//! server woke just as the child started, and took its CPU), which reports the child's exit on
//! the kit's status socket. With no spare lent (none yet, or
//! gone), a start is one [`ToServer::Fork`] carrying two descriptors (the child's control
//! socket and a status socket; and a kit's two if the server lacks one). That child answers on
//! the status socket with [`Forked`] and a pidfd before it runs anything (so an unanswered
//! request ran nothing, even if the server died on it), and the server later sends the child's
//! exit status there.
//!
//! Why kits: a descriptor sent on a Unix socket and not yet received makes the kernel schedule
//! its garbage collector (a kernel worker) at every Unix socket closed on the machine, by any
//! process, for as long as it waits, and a lent spare may wait unread for hours. A lent spare
//! whose sockets rode in its [`Lent`] made an unrelated program's socket pairs 35% slower to
//! make and close (BENCHMARKS.md, "No descriptor left in flight"). A kit is in flight only until
//! the server reads it, at once.
//!
//! Server side: a single-threaded loop over the request socket, a signalfd for `SIGCHLD` and
//! the liveness pipe. The server keeps one child forked ahead of demand ([`Spare`]), asleep on
//! its word. A request that comes while the spare is lent takes it back (the word moved from
//! idle to handed: whoever moves it first owns the spare) and hands it the request's sockets in
//! one message; if the client took it first, the request is served by `fork`, as it is with no
//! spare (its fork failed, it was killed). The next spare is forked soon after the client says
//! it took the last ([`TAKEN_DELAY`]; at once when it says so late, after the child started),
//! a little later ([`SPARE_DELAY`]) when it was handed a request,
//! once the new child has had the CPU to start on (see [`NextSpare`]). A waiting spare dies of
//! the server's death or a signal (any that ends a process by default, but SIGKILL and the
//! fault and real-time signals) only if it moves its own word from idle to dead first
//! (see [`proc::SpareSignals`]): a spare someone took lives on as theirs. A spare left unasked
//! for a millisecond, when a CPU is free then (or at one of a few later looks), maps in the
//! code the page cache holds of the files it may ask about ([`proc::map_in_code`]), so the
//! child it becomes does not fault it in on its way to its target. A child closes every descriptor but
//! its control and status sockets and its own description of the liveness pipe, on which the
//! kernel will kill it when the pipe hangs up ([`alive::tie`]), and runs the worker (announcing
//! itself first if it was asked through the server). A reaped child's status goes back on its
//! status socket; a waiting spare that died is said dead in its word before it is reaped, so
//! that a pidfd the client opened by its pid before taking it is the spare's. (Only around the
//! server's own death could another process reap a spare the client is taking, and its pid
//! would then have to be reused within those microseconds.) A spare forked with no kit at hand
//! (the first, before the kits come; or once a program started without joining has used them
//! up) is not lent: it waits for a request. When the parent dies the liveness pipe hangs up
//! (and the request socket closes): the server and every child exit.
//!
//! A child's life is tied to the user's process, never to the server's: a server killed by
//! the out-of-memory killer or a stray `kill` leaves its running children running (another
//! process adopts them), and the next start replaces the server. The parent's [`Child`] then
//! sees the end through its pidfd and learns how it ended from the kernel's record or from the
//! child's own report (see [`Reaper::Adopted`]).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use super::child::{Child, Reaper};
use super::marker::Role;
use super::{PATIENCE, alive, socket_pair, spawn, worker};
use crate::channel::{self, Channel};
use crate::error::{Error, ErrorKind};
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc::{self, Forked as ForkSide};
use crate::sys::shm::Mapping;
use crate::sys::{exe, futex};
use crate::wire::message::{Forked, Hello, Lent, ToServer, Welcome};

/// This process's fork server. `owner` tells a forked child that the server it inherited is
/// its parent's (its socket already closed by the fork launch).
pub(crate) struct Server {
    owner: u32,
    /// Which server of this process it is (each replacement gets the next number).
    serial: u64,
    /// Shared so that a wait for its end ([`has_died`]) can be made without holding the slot.
    pidfd: Arc<InternalFd>,
    request: Channel,
    /// When it was last found alive after dropping a request (its fork failed): requests
    /// dropped soon after are not each given [`DYING`] to show it (a pool asks for several).
    alive_seen: Option<std::time::Instant>,
    /// The page of the words its spares sleep on ([`Words`]), sent with its [`Welcome`];
    /// `None` if it has none (its spares are then never started here: each start asks).
    words: Option<Arc<Mapping>>,
    /// The kits given to the server and not lent back yet, oldest first (see [`Kit`]).
    kits: VecDeque<Kit>,
    /// The spare the server lent last, read and not tried yet (see [`Server::read_lents`]).
    lent: Option<LentSpare>,
    /// Starts that asked the server since it last lent a spare (see [`Server::short`]).
    asked_since_lent: u32,
    /// Kits made ahead (their other ends in `kits`), the server's ends not sent yet: each goes
    /// with the next message that tells the server a spare was used ([`top_up`]).
    prepared: VecDeque<(u64, [InternalFd; 2])>,
    /// The number of the next kit.
    next_kit: u64,
    /// Lent spares started here that the server has not been told of yet (see
    /// [`tell_takes`]).
    untold: Vec<u32>,
    /// When this process last started a child through the server (see [`note_taken`]).
    last_start: Option<std::time::Instant>,
}

/// This process's ends of the sockets of a spare the server will lend ([`ToServer::Kit`]):
/// the spare's control socket, and the status socket its exit will be reported on. The client
/// makes them, so that a lent spare needs no descriptor sent back ([`Lent`]).
struct Kit {
    id: u64,
    ctrl: InternalFd,
    status: InternalFd,
}

/// How many kits the client keeps at its server: one for the spare it forks next, and one
/// more, so that a spare taken for a start is replaced without waiting for the kit that comes
/// with the news.
const KITS: usize = 2;

/// After this many starts asked of the server with nothing lent meanwhile, the kits it was sent
/// are taken for lost (see [`Server::short`]).
const ASKED_UNLENT: u32 = 16;

/// A spare child the server lent this process: started here, with no round trip through the
/// server ([`start_lent`]).
struct LentSpare {
    pid: u32,
    ctrl: InternalFd,
    status: InternalFd,
    /// Its word's place in the server's page, and the word's value while it waits.
    slot: u32,
    idle: u32,
}

impl Server {
    /// The spare the server lent last, not started yet, with the kit it was made with; `None`
    /// if none is (it may be gone all the same: taken back for a request, or dead).
    fn next_lent(&mut self) -> Option<LentSpare> {
        self.read_lents();
        self.lent.take()
    }

    /// Reads what the server lent since the last look, and matches each with its kit: the
    /// newest is kept ([`Server::lent`]). An older one is gone (the server forks a spare only
    /// once the last is taken, handed to a request or dead), and so is its kit: what is left
    /// in [`Server::kits`] is what the server still holds, or has not read yet.
    fn read_lents(&mut self) {
        while let Ok(Some(frame)) = self.request.try_recv_frame() {
            // None ride along; any that did are not kept.
            drop(self.request.take_fds());
            let Ok(Lent {
                pid,
                slot,
                idle,
                kit,
            }) = channel::decode_message::<Lent>(&frame)
            else {
                continue;
            };
            // The server uses the kits in the order it got them: an older one is gone with
            // a spare it could not fork.
            while self.kits.front().is_some_and(|k| k.id < kit) {
                self.kits.pop_front();
            }
            self.asked_since_lent = 0;
            if self.kits.front().is_some_and(|k| k.id == kit)
                && let Some(Kit { ctrl, status, .. }) = self.kits.pop_front()
            {
                self.lent = Some(LentSpare {
                    pid,
                    ctrl,
                    status,
                    slot,
                    idle,
                });
            }
        }
    }

    /// A kit for the server: one made ahead, else a new one if it holds fewer than [`KITS`]
    /// (and keeps spares at all). Its number, and the descriptors that go to the server (the
    /// spare's end of its control socket, the server's end of the status socket); this process
    /// keeps the other ends.
    fn kit_to_give(&mut self) -> Option<(u64, [InternalFd; 2])> {
        if self.prepared.is_empty() && self.short() {
            self.make_kit();
        }
        self.prepared.pop_front()
    }

    /// Whether the server holds fewer than [`KITS`] kits, made or on their way (and keeps
    /// spares at all).
    fn short(&mut self) -> bool {
        // A kit used for a spare that went to a request (or died) counts once its lending is
        // read.
        self.read_lents();
        if self.asked_since_lent >= ASKED_UNLENT {
            // Several starts asked and nothing was lent meanwhile: the server has none of the
            // kits sent (one it could not keep, at its descriptor limit, say). They are
            // forgotten, so that new ones go.
            let prepared: Vec<u64> = self.prepared.iter().map(|(id, _)| *id).collect();
            self.kits.retain(|k| prepared.contains(&k.id));
            self.asked_since_lent = 0;
        }
        self.words.is_some() && self.kits.len() < KITS
    }

    /// Makes a kit: this process's ends kept in [`Server::kits`], the server's waiting in
    /// [`Server::prepared`].
    fn make_kit(&mut self) {
        let (Ok([ctrl, ctrl_child]), Ok([status, status_server])) = (socket_pair(), socket_pair())
        else {
            return; // out of descriptors, say: the server forks spares it does not lend
        };
        let id = self.next_kit;
        self.next_kit += 1;
        self.kits.push_back(Kit { id, ctrl, status });
        self.prepared.push_back((id, [ctrl_child, status_server]));
    }

    /// Makes the kits the server lacks, to go with the next messages to it.
    fn prepare_kits(&mut self) {
        while self.short() && self.prepared.len() < KITS {
            let before = self.kits.len();
            self.make_kit();
            if self.kits.len() == before {
                return;
            }
        }
    }

    /// Forgets kit `id`, whose message could not be sent.
    fn lost_kit(&mut self, id: u64) {
        self.kits.retain(|k| k.id != id);
    }

    /// Gives the server the kits it lacks, each in a message of its own (after the handshake).
    fn give_kits(&mut self) {
        self.prepare_kits();
        while let Some((id, fds)) = self.prepared.pop_front() {
            let Ok(msg) = channel::encode_message(&ToServer::Kit { id }) else {
                return self.lost_kit(id);
            };
            let fds = [fds[0].as_fd(), fds[1].as_fd()];
            let now = Some(std::time::Instant::now());
            if self.request.send_frame_until(&msg, &fds, now).is_err() {
                return self.lost_kit(id);
            }
        }
    }

    /// The server's page of words, and where in it the word of spare `slot` lies, if there.
    fn word(&self, slot: u32) -> Option<(Arc<Mapping>, usize)> {
        let at = (slot as usize).checked_mul(4)?;
        let page = self.words.as_ref()?;
        (at + 4 <= page.len()).then(|| (Arc::clone(page), at))
    }
}

/// The states of the word a spare sleeps on, in a page the server shares with its spares and
/// its client ([`Words`]): its low two bits. The rest is the spare's number, so that a word
/// reused by a later spare is never taken for an earlier one's. Whoever moves it from
/// [`IDLE`](word::IDLE) owns the spare.
mod word {
    /// Waiting; nobody has taken it.
    pub(super) const IDLE: u32 = 0;
    /// Started by the client it was lent to: it runs on its own control socket.
    pub(super) const TAKEN: u32 = 1;
    /// Taken back by the server for a request: the request's sockets wait on its socket to the
    /// server.
    pub(super) const HANDED: u32 = 2;
    /// Dead unasked: said by the spare itself as it dies (of its server's death or a signal;
    /// see [`crate::sys::proc::SpareSignals`]), or by the server that reaped it.
    pub(super) const DEAD: u32 = 3;
    /// The bits of the state.
    pub(super) const STATE: u32 = 3;
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

pub(crate) fn lock() -> MutexGuard<'static, Option<Server>> {
    SERVER.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a child through the server and hands it `start` (see [`request`] and
/// [`Requested::finish`]).
pub(crate) fn launch(start: &[u8], start_fds: &[BorrowedFd<'_>]) -> Result<Child, Error> {
    let (child, _) = request(start, start_fds)?.finish(start, start_fds)?;
    Ok(child)
}

/// Asks the server for a child and hands it `start`, without waiting for the child to announce
/// itself: a caller starting several children asks for all of them first, so the server forks
/// one while the others start (see [`Requested::finish`]).
pub(crate) fn request(start: &[u8], start_fds: &[BorrowedFd<'_>]) -> Result<Requested, Error> {
    let deadline = fd::deadline_after(PATIENCE);
    if let Some(started) = start_lent(start, start_fds, deadline) {
        return started.map(Requested::Lent);
    }
    request_once(start, start_fds, deadline).map(Requested::Asked)
}

/// A child started through the server: started already in the spare it lent, or asked of it.
pub(crate) enum Requested {
    /// Started in the spare the server lent this process: its pid was known before.
    Lent(Child),
    /// Asked of the server, not yet announced.
    Asked(Asked),
}

impl Requested {
    /// The child's control socket, on which more may be sent after its start message (see
    /// [`finish`](Requested::finish) for when it is another child's); `None` if the start
    /// message itself could not be sent (`finish` says why).
    pub(crate) fn channel(&self) -> Option<&Channel> {
        match self {
            Requested::Lent(child) => Some(child.channel_ref()),
            Requested::Asked(asked) => asked.channel(),
        }
    }

    /// The child, once it has announced itself (at once for a lent spare). A server killed
    /// before it forked the child ran nothing: a fresh one is asked, once, with the same
    /// `start` and `start_fds`; `true` with the child then (what was sent on
    /// [`channel`](Requested::channel) after the start message went nowhere).
    pub(crate) fn finish(
        self,
        start: &[u8],
        start_fds: &[BorrowedFd<'_>],
    ) -> Result<(Child, bool), Error> {
        match self {
            Requested::Lent(child) => Ok((child, false)),
            Requested::Asked(asked) => asked.finish(start, start_fds),
        }
    }
}

/// Starts the spare the server lent this process, if there is one and it still waits: its
/// start message goes straight to it, and one futex wake-up starts it, with no round trip
/// through the server (the pid was known before). The server, told after, reports its exit as
/// for any child. `None` without one (none lent yet, or it died, or the
/// server took it back for a request): the caller asks the server.
///
/// A lent spare that died unasked, of the server's death or a signal, said so in its word
/// first (see [`proc::SpareSignals`]): it is passed over. Only a SIGKILL of the spare itself
/// (or a fault or real-time signal someone sent it) can end it unsaid; one between the look at its socket and the wake-up is a child killed as
/// it starts, as with `fork`.
fn start_lent(
    start: &[u8],
    start_fds: &[BorrowedFd<'_>],
    deadline: Option<std::time::Instant>,
) -> Option<Result<Child, Error>> {
    let mut burst = None;
    loop {
        let (lent, serial, (words, at), burst) = {
            let mut slot = lock();
            let server = slot.as_mut().filter(|s| s.owner == proc::getpid())?;
            // A server found dead is replaced by the request (its waiting spares die with it,
            // each saying so in its word first).
            if proc::has_ended(server.pidfd.as_fd()).unwrap_or(true) {
                return None;
            }
            let burst = *burst.get_or_insert_with(|| server.starting());
            // The takes before this one first: the server forks a spare once told.
            server.tell_untold(true);
            let lent = server.next_lent()?;
            let word = server.word(lent.slot)?;
            (lent, server.serial, word, burst)
        };
        let word = words.word(at);
        if let Some(started) = start_in(lent, serial, word, start, start_fds, deadline, burst) {
            return Some(started);
        }
    }
}

/// Starts `lent`, a spare of server `serial` sleeping on `word` (see [`start_lent`]); `None`
/// if it is gone.
fn start_in(
    lent: LentSpare,
    serial: u64,
    word: &std::sync::atomic::AtomicU32,
    start: &[u8],
    start_fds: &[BorrowedFd<'_>],
    deadline: Option<std::time::Instant>,
    burst: bool,
) -> Option<Result<Child, Error>> {
    // Opened by its pid before its word is moved: if the move succeeds, the spare had not been
    // reaped by then (the server says a spare dead before it reaps it, and it was alive just
    // before: see `start_lent`), so the pid was still the spare's when the pidfd was opened.
    // (A server that died since could have left a killed spare to another process to reap,
    // and its pid to be reused, within the microseconds between: not excluded.)
    let [pidfd] = fd::create_internal(|| Ok([proc::pidfd_open(lent.pid)?])).ok()?;
    let ctrl = Channel::new(lent.ctrl);
    // A start message that surely fits the socket's buffer goes first, so that the spare
    // finds it waiting; its socket closed says that it died. A larger one goes after the
    // wake-up, as the spare reads it.
    let early = fits_early(&ctrl, start.len());
    if early {
        if ctrl.send_frame_until(start, start_fds, deadline).is_err() {
            return None; // it is gone: nothing was started
        }
    } else if proc::has_ended(pidfd.as_fd()).unwrap_or(true) {
        return None;
    }
    let taken = word.compare_exchange(
        lent.idle,
        lent.idle | word::TAKEN,
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Acquire,
    );
    if taken.is_err() {
        return None;
    }
    futex::wake(word, 1);
    let sent = if early {
        Ok(())
    } else {
        ctrl.send_frame_until(start, start_fds, deadline)
    };
    note_taken(serial, lent.pid, burst);
    let child = Child::new(
        lent.pid,
        pidfd,
        ctrl,
        Reaper::Server(Channel::new(lent.status)),
    );
    Some(match sent {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.signal(libc::SIGKILL);
            Err(super::child::start_unsent(e))
        }
    })
}

/// Whether a start message of `len` bytes goes to a lent spare before it is woken (see
/// [`start_in`]): at most [`EARLY_START`] and a quarter of a socket's send buffer (read once),
/// so that it surely fits the fresh socket, which nobody reads until the spare is woken.
fn fits_early(ctrl: &Channel, len: usize) -> bool {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let limit = *LIMIT.get_or_init(|| {
        crate::sys::socket::send_buffer(ctrl.fd()).map_or(0, |b| (b / 4).min(EARLY_START))
    });
    len <= limit
}

/// The most a start message may be to go to a lent spare before it is woken.
const EARLY_START: usize = 64 * 1024;

/// Notes that server `serial`'s lent spare `pid` was started here. A start in a `burst` (soon
/// after the last, [`BURST_STARTS`]) tells the server at once, so that the next spare is ready
/// soon. Any other tells it later ([`tell_takes`]): the message would wake the server just as
/// the child starts, on this CPU, where the child waits for its turn (a task woken runs on its
/// waker's CPU here), and the server, asleep a long while, often ran first (BENCHMARKS.md, "A
/// lent spare's take told later").
fn note_taken(serial: u64, pid: u32, burst: bool) {
    let mut slot = lock();
    if let Some(server) = slot
        .as_mut()
        .filter(|s| s.serial == serial && s.owner == proc::getpid())
    {
        server.untold.push(pid);
        if burst {
            server.tell_untold(false);
        }
    }
}

/// Starts through the server closer together than this make a burst, whose takes of lent
/// spares are told at once (see [`note_taken`]): a start and its `join` back to back come
/// every 0.3-0.5 ms here, and the next start wants a spare by then; a program that starts a
/// process now and then, further apart, wants its start alone on the CPU.
const BURST_STARTS: std::time::Duration = std::time::Duration::from_millis(1);

/// Tells this process's fork server, if it has one and its slot is free, of the lent spares
/// started here since it was last told, so that it forks the next spare: at the next wait for
/// a child (a `join`, `is_alive`), a start, a pool thread's sleep, or once a child has ended
/// (with [`top_up`]). Until then the server has no spare for this process (at most one more
/// start asks it instead). Never waits.
pub(crate) fn tell_takes() {
    with_own_server(|server| server.tell_untold(true));
}

/// Runs `f` on this process's fork server, if it has one and its slot is free (never waits).
fn with_own_server(f: impl FnOnce(&mut Server)) {
    let mut slot = match SERVER.try_lock() {
        Ok(slot) => slot,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if let Some(server) = slot.as_mut().filter(|s| s.owner == proc::getpid()) {
        f(server);
    }
}

impl Server {
    /// A start through the server begins now: whether it comes in a burst (see
    /// [`BURST_STARTS`]).
    fn starting(&mut self) -> bool {
        let now = std::time::Instant::now();
        let last = self.last_start.replace(now);
        last.is_some_and(|t| now.duration_since(t) < BURST_STARTS)
    }

    /// Tells the server of the lent spares started here ([`ToServer::Took`]), each with a kit
    /// made ahead if there is one (none is made here: see [`top_up`]); `late` when not from
    /// the start that took it: the server then forks the next spare at once. (Even a take
    /// microseconds old, told by a `join` right after its start: holding such a take's fork
    /// back by [`TAKEN_DELAY`] made the start after a rested start and its `join` find no
    /// spare, 0.51-0.56 ms against 0.46-0.48 for that start+join, in three alternating pairs.)
    /// Never waits: a server that does not read (stopped, say) learns it when the child ends,
    /// or at the next request.
    fn tell_untold(&mut self, late: bool) {
        for pid in std::mem::take(&mut self.untold) {
            let kit = self.prepared.pop_front();
            let took = ToServer::Took {
                pid,
                kit: kit.as_ref().map(|(id, _)| *id),
                late,
            };
            let Ok(msg) = channel::encode_message(&took) else {
                continue;
            };
            let fds: Vec<_> = kit
                .iter()
                .flat_map(|(_, fds)| fds.iter().map(AsFd::as_fd))
                .collect();
            // Never waits, and a frame this small goes whole or not at all: a Unix stream
            // socket refuses a send that does not fit its buffer before it takes any of it.
            let now = Some(std::time::Instant::now());
            if self.request.send_frame_until(&msg, &fds, now).is_err()
                && let Some((id, _)) = kit
            {
                self.lost_kit(id);
            }
        }
    }
}

/// Makes the kits this process's fork server lacks ([`KITS`]), if it has one, to go with the
/// next [`ToServer::Took`] (or request): called once a child has ended and been waited for
/// (joined, or a pool's worker), off the way of a start (making a kit's two socket pairs in a
/// start took it ~25 µs longer here; a start that asks the server makes one only if none was
/// made ahead). Sends them only with a take still untold (see [`tell_takes`]): a message of
/// their own would wake the server just as the next start may need the CPU. Never waits: with
/// the server's slot busy (another thread starting a server, say), it does nothing. A program
/// that starts without joining runs the server short: a spare it forks then is not lent, and
/// the next start asks for it, with a kit.
pub(crate) fn top_up() {
    with_own_server(|server| {
        server.prepare_kits();
        server.tell_untold(true);
    });
}

/// A child asked of the server, its start message sent, not yet announced.
pub(crate) struct Asked {
    ctrl: Channel,
    status: Channel,
    /// The server asked.
    serial: u64,
    /// Whether the start message could be sent (a child that will not get it is killed once
    /// it is known).
    sent: Result<(), Error>,
    deadline: Option<std::time::Instant>,
}

impl Asked {
    /// See [`Requested::channel`].
    fn channel(&self) -> Option<&Channel> {
        self.sent.is_ok().then_some(&self.ctrl)
    }

    /// Waits for the child's announcement (see [`Requested::finish`]).
    fn finish(
        self,
        start: &[u8],
        start_fds: &[BorrowedFd<'_>],
    ) -> Result<(Child, bool), Error> {
        let deadline = self.deadline;
        match self.announced()? {
            Ok(child) => Ok((child, false)),
            Err(_) => match request_once(start, start_fds, deadline)?.announced()? {
                Ok(child) => Ok((child, true)),
                Err(Unannounced::ServerDied) => {
                    Err(server_failed("fork a child", ErrorKind::Closed.into()))
                }
                // The server answered: it is not the server's failure (killed twice as it
                // started, say, by someone killing the server's children).
                Err(Unannounced::Ended(how)) => Err(Error::os(
                    "starting a child through the fork server",
                    std::io::Error::other(format!(
                        "the new child ended before it could start ({how}), twice; nothing ran"
                    )),
                )),
            },
        }
    }

    /// The child, once it has announced itself; why not if the server died, and no child of
    /// this request exists or ever will, or if the child died before it could run anything.
    fn announced(self) -> Result<Result<Child, Unannounced>, Error> {
        let Asked {
            ctrl,
            mut status,
            serial,
            sent,
            deadline,
        } = self;
        // The child itself announces its pid and pidfd on the status socket before it runs
        // anything, and keeps that socket open until then: so the socket closing unanswered
        // means that no child of this request will ever run.
        let announced = match status.recv_frame(deadline) {
            Ok(frame) => frame,
            Err(e) if *e.kind() == ErrorKind::Closed && has_died(serial) => {
                return Ok(Err(Unannounced::ServerDied));
            }
            // Closed unanswered by a server that lives: it dropped the request, as it does
            // when it cannot take the request's descriptors or fork (see `fork_child`).
            Err(e) if *e.kind() == ErrorKind::Closed => {
                return Err(Error::os(
                    "asking the fork server to fork a child",
                    std::io::Error::other(
                        "the fork server could not fork it (out of descriptors, processes or \
                         memory?)",
                    ),
                ));
            }
            Err(e) => return Err(server_failed("fork a child", e)),
        };
        // The server's report of the child's exit comes first only when the child died before
        // it announced itself (killed as it started): it ran nothing, so another may be asked
        // for.
        let forked = match channel::decode_message::<Forked>(&announced) {
            Ok(forked) if forked.tag == Forked::TAG => forked,
            _ => match channel::decode_message::<crate::sys::proc::Exit>(&announced) {
                Ok(exit) => {
                    let how = match exit {
                        crate::sys::proc::Exit::Signal(s) => format!("signal {s}"),
                        crate::sys::proc::Exit::Code(c) => format!("exit code {c}"),
                        crate::sys::proc::Exit::Unknown => "how is unknown".to_owned(),
                    };
                    return Ok(Err(Unannounced::Ended(how)));
                }
                Err(_) => {
                    return Err(Error::protocol("a malformed announcement from a new child"));
                }
            },
        };
        let Some(pidfd) = status.take_fds().pop() else {
            // Its pidfd was dropped on the way in (this process is at its descriptor limit:
            // another thread took the descriptors this start freed), yet the child runs, its
            // start message waiting for it: it is killed by its pid, which stays its own until
            // the server reaps it, and reports the exit on `status` (none there yet). Without
            // this it ran its target unwatched, and its value went nowhere.
            if matches!(status.try_recv_frame(), Ok(None)) {
                let _ = proc::kill(forked.pid, libc::SIGKILL);
            }
            return Err(Error::os(
                "starting a child through the fork server",
                std::io::Error::other(
                    "the new child's pidfd could not be received (at the descriptor limit?); \
                     the child was killed",
                ),
            ));
        };
        let child = Child::new(
            forked.pid,
            pidfd,
            ctrl,
            Reaper::Server(status),
        );
        match sent {
            Ok(()) => Ok(Ok(child)),
            // Its control socket closed before its start message could go: it died (killed
            // as it started) with nothing run, so another may be asked for.
            Err(e) if *e.kind() == ErrorKind::Closed => {
                let _ = child.signal(libc::SIGKILL);
                Ok(Err(Unannounced::Ended(
                    "before its start message could be sent".to_owned(),
                )))
            }
            Err(e) => {
                let _ = child.signal(libc::SIGKILL);
                Err(e)
            }
        }
    }
}

/// Why a child asked of the server never announced itself (nothing of it ran).
enum Unannounced {
    /// The server died before it forked the child.
    ServerDied,
    /// The child ended before it announced itself (killed as it started), as the server
    /// reported, or before its start message could be sent; how.
    Ended(String),
}

/// One request to the server (replacing it once if it is found dead), and the start message
/// sent to the child it will fork.
fn request_once(
    start: &[u8],
    start_fds: &[BorrowedFd<'_>],
    deadline: Option<std::time::Instant>,
) -> Result<Asked, Error> {
    let [ctrl, ctrl_child] = socket_pair()?;
    let [status, status_child] = socket_pair()?;
    let mut slot = lock();
    let mut serial = 0;
    for attempt in 0.. {
        let server = running(&mut slot)?;
        serial = server.serial;
        server.asked_since_lent = server.asked_since_lent.saturating_add(1);
        // With a kit if the server lacks one (a spare handed to a request used its own).
        let kit = server.kit_to_give();
        let request = channel::encode_message(&ToServer::Fork {
            kit: kit.as_ref().map(|(id, _)| *id),
        })?;
        let mut fds = vec![ctrl_child.as_fd(), status_child.as_fd()];
        fds.extend(kit.iter().flat_map(|(_, fds)| fds.iter().map(AsFd::as_fd)));
        match server.request.send_frame_until(&request, &fds, deadline) {
            Ok(()) => break,
            // The server died (someone killed it): replace it once.
            Err(e) if *e.kind() == ErrorKind::Closed && attempt == 0 => retire(&mut slot),
            Err(e) => {
                if let Some((id, _)) = kit {
                    server.lost_kit(id);
                }
                return Err(e);
            }
        }
    }
    drop(slot);
    drop((ctrl_child, status_child));
    // The child will find its start message waiting: no round trip spent on it.
    let ctrl = Channel::new(ctrl);
    let sent = ctrl.send_frame_until(start, start_fds, deadline);
    Ok(Asked {
        ctrl,
        status: Channel::new(status),
        serial,
        sent,
        deadline,
    })
}

/// Whether the server numbered `serial` has died; if it is still this process's server, it is
/// reaped and forgotten. A server that dropped a request unanswered without dying (its fork
/// failed) is given a moment to show which it is: a killed server closes its sockets just
/// before it ends. The slot is not held over that moment: every other thread's start takes it
/// (a `Fork` start too), and would wait [`DYING`] behind a server that merely failed a fork.
fn has_died(serial: u64) -> bool {
    let (pidfd, wait) = {
        let slot = lock();
        match slot.as_ref() {
            Some(server) if server.serial == serial && server.owner == proc::getpid() => {
                let lately = server.alive_seen.is_some_and(|t| t.elapsed() < DYING);
                let wait = if lately {
                    Some(std::time::Instant::now())
                } else {
                    fd::deadline_after(DYING)
                };
                (Arc::clone(&server.pidfd), wait)
            }
            // Replaced already, by another thread that found it dead.
            _ => return true,
        }
    };
    let ended =
        fd::poll_read(&[pidfd.as_fd()], wait).is_ok_and(|r| r[0].readable || r[0].hangup);
    let mut slot = lock();
    match slot.as_mut() {
        Some(server) if server.serial == serial && server.owner == proc::getpid() => {
            if ended {
                retire(&mut slot);
            } else {
                server.alive_seen = Some(std::time::Instant::now());
            }
            ended
        }
        // Replaced meanwhile, by another thread that found it dead.
        _ => true,
    }
}

/// How long a server that closed a status socket unanswered may take to end if it was killed.
const DYING: std::time::Duration = std::time::Duration::from_millis(200);

fn server_failed(what: &str, e: Error) -> Error {
    match e.kind() {
        ErrorKind::Closed | ErrorKind::Timeout => Error::os(
            format!("asking the fork server to {what}"),
            std::io::Error::other(format!("the fork server did not answer ({e})")),
        ),
        _ => e,
    }
}

/// The running server, started if there is none (or only the parent's, inherited by fork).
fn running(slot: &mut Option<Server>) -> Result<&mut Server, Error> {
    if slot.as_ref().is_some_and(|s| s.owner != proc::getpid()) {
        std::mem::forget(slot.take());
    }
    if slot.is_none() {
        *slot = Some(start_server(exe::identity())?);
    }
    Ok(slot.as_mut().expect("just started"))
}

/// Starts a server and checks that it runs the build `identity` (ours, except in tests).
fn start_server(identity: u64) -> Result<Server, Error> {
    let alive_read = alive::reader()?;
    let [client, server_end] = socket_pair()?;
    let pid = spawn::spawn_executable(Role::ForkServer, server_end.as_fd(), alive_read.as_fd())?;
    drop(server_end);
    let [pidfd] = fd::create_internal(|| Ok([proc::pidfd_open(pid)?]))
        .map_err(|e| Error::os("opening a pidfd for the fork server", e))?;
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let mut server = Server {
        owner: proc::getpid(),
        serial: SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        pidfd: Arc::new(pidfd),
        request: Channel::new(client),
        alive_seen: None,
        words: None,
        kits: VecDeque::new(),
        lent: None,
        asked_since_lent: 0,
        prepared: VecDeque::new(),
        untold: Vec::new(),
        last_start: None,
        next_kit: 0,
    };
    let handshake = server.request.send(&Hello { identity }, &[]);
    let welcome = handshake.and_then(|()| {
        let deadline = fd::deadline_after(PATIENCE);
        server.request.recv::<Welcome>(deadline)
    });
    match welcome {
        Ok(Welcome { accepted: true }) => {
            // The page of its spares' words, if it made one: mapped here once.
            let page = server.request.take_fds_n(1).pop();
            server.words = page.and_then(|page| Mapping::open(page.as_fd()).ok().map(Arc::new));
            server.give_kits();
            Ok(server)
        }
        Ok(Welcome { accepted: false }) => {
            retire(&mut Some(server));
            Err(ErrorKind::ExecutableMismatch.into())
        }
        Err(e) => {
            retire(&mut Some(server));
            Err(server_failed("start", e))
        }
    }
}

/// Stops and reaps a server that is broken or unwanted.
fn retire(slot: &mut Option<Server>) {
    if let Some(server) = slot.take() {
        let _ = proc::pidfd_signal(server.pidfd.as_fd(), libc::SIGKILL);
        let _ = fd::poll_read(&[server.pidfd.as_fd()], fd::deadline_after(PATIENCE));
        let _ = proc::try_reap(server.pidfd.as_fd());
    }
}

/// The fork server's life: never returns.
pub(crate) fn serve(request: InternalFd, alive: OwnedFd) -> ! {
    let mut request = Channel::new(request);
    let Ok(hello) = request.recv::<Hello>(None) else {
        proc::exit_now(0)
    };
    let accepted = hello.identity == exe::identity();
    // The page of the words its spares sleep on, shared with the client: without one, it
    // keeps no spares.
    let mut words = accepted.then(Words::new).flatten();
    let page: Vec<_> = words.iter().map(|w| w.file.as_fd()).collect();
    let _ = request.send(&Welcome { accepted }, &page);
    if !accepted {
        proc::exit_now(1);
    }
    // Like a pool worker, the server is stopped by the user's process (its end, or a kill),
    // not by a Ctrl-C meant for the program; its children start with an empty mask.
    proc::block_stop_signals();
    let Ok(sigchld) = proc::sigchld_fd() else {
        proc::write_stderr("mproc: the fork server could not watch its children; exiting\n");
        proc::exit_now(1)
    };
    // Each child's tie to the liveness pipe, made ahead and handed on (see `alive::Ties`).
    let mut ties = alive::Ties::new(alive.as_fd());
    let mut children = HashMap::new();
    // Every child would otherwise do it for itself after its start.
    worker::prepare_inherited();
    // The kits the client gave for its spares (see `ToServer::Kit`), oldest first.
    let mut kits = VecDeque::new();
    // A child forked ahead of the next start, lent to the client (see `Spare`): the first
    // waits unlent, for the request that started this server (the client's kits come after).
    let mut spare = Spare::fork(
        alive.as_fd(),
        &mut ties,
        &request,
        words.as_mut(),
        &mut kits,
    );
    // When the next one is forked, when there is none.
    let mut next_spare = NextSpare::default();
    loop {
        let fds = [request.fd(), sigchld.as_fd(), alive.as_fd()];
        let Ok(ready) = fd::poll_read(&fds, next_spare.due) else {
            proc::exit_now(1)
        };
        if ready[2].readable || ready[2].hangup {
            proc::exit_now(0); // the parent died; each child sees the same pipe and exits
        }
        if ready[1].readable {
            proc::drain_signalfd(sigchld.as_fd());
            report_ended(&mut children, &mut ties, &mut spare, words.as_mut());
        }
        let mut served = Served::default();
        if ready[0].readable || ready[0].hangup {
            let mut server = Serving {
                alive: alive.as_fd(),
                ties: &mut ties,
                children: &mut children,
                spare: &mut spare,
                words: words.as_ref(),
                kits: &mut kits,
            };
            served = server.serve_requests(&mut request);
        }
        let now = std::time::Instant::now();
        if next_spare.fork_now(now, served, ready[1].readable, spare.is_some()) {
            spare = Spare::fork(
                alive.as_fd(),
                &mut ties,
                &request,
                words.as_mut(),
                &mut kits,
            );
        }
    }
}

/// The page of the words the server's spares sleep on ([`word`]), shared with the client (sent
/// with [`Welcome`]) and inherited by each spare: a word per spare, reused once the process
/// that spare became is gone.
struct Words {
    /// Shared, so that a spare can keep it mapped for its whole life (see [`Spare::fork`]).
    page: Arc<Mapping>,
    file: InternalFd,
    /// Which words a spare, or the child it became, still holds.
    used: Vec<bool>,
    /// The last spare's number, in the bits above the state.
    last: u32,
}

/// The size of the page of words: a word for each of this many spares, or children they
/// became, at once (beyond that, requests are served by `fork`).
const WORDS_PAGE: usize = 4096;

impl Words {
    fn new() -> Option<Words> {
        let (page, file) = Mapping::create_inherited("mproc-spares", WORDS_PAGE).ok()?;
        Some(Words {
            page: Arc::new(page),
            file,
            used: vec![false; WORDS_PAGE / 4],
            last: 0,
        })
    }

    /// A free word for a new spare, set idle; its place, and its value while idle.
    fn take(&mut self) -> Option<(u32, u32)> {
        let slot = self.used.iter().position(|used| !used)?;
        self.used[slot] = true;
        self.last = self.last.wrapping_add(word::STATE + 1);
        let slot = slot as u32;
        self.word(slot)
            .store(self.last | word::IDLE, std::sync::atomic::Ordering::Release);
        Some((slot, self.last))
    }

    /// Frees the word of a spare whose process is gone.
    fn give_back(&mut self, slot: u32) {
        if let Some(used) = self.used.get_mut(slot as usize) {
            *used = false;
        }
    }

    fn word(&self, slot: u32) -> &std::sync::atomic::AtomicU32 {
        self.page.word(slot as usize * 4)
    }
}

/// When the server forks its next spare: a little after a request (or a child's end), not at
/// once ([`SPARE_DELAY`]), unless requests come in a burst ([`BURST`]). One that cannot be
/// forked is tried again only after the next request or child's end, not in a loop.
#[derive(Debug, Default)]
struct NextSpare {
    /// When it is due, while there is no spare: the server's poll waits until then at most.
    due: Option<std::time::Instant>,
    /// When the last request came.
    last_request: Option<std::time::Instant>,
}

/// What one wake-up of the server served.
#[derive(Debug, Default, Clone, Copy)]
struct Served {
    /// Requests for a child.
    requests: usize,
    /// Whether the client took the spare it was lent.
    taken: bool,
    /// Whether it said so only after the child had started (see [`note_taken`]).
    late: bool,
}

impl NextSpare {
    /// After the server's wake-up at `now` (with `served`, a child's end seen or not, and a
    /// spare or not since), whether to fork the next spare now. Several requests served at
    /// once are a burst too. A spare the client took itself is replaced sooner
    /// ([`TAKEN_DELAY`]) than one handed a request ([`SPARE_DELAY`]).
    fn fork_now(&mut self, now: std::time::Instant, served: Served, ended: bool, spare: bool) -> bool {
        let request = served.requests > 0 || served.taken;
        // A take told late: the child is past its start, and the next start may be near.
        let mut delay = match (served.taken, served.late) {
            (true, true) => std::time::Duration::ZERO,
            (true, false) => TAKEN_DELAY,
            _ => SPARE_DELAY,
        };
        if request {
            if served.requests > 1
                || self
                    .last_request
                    .is_some_and(|t| now.duration_since(t) < BURST)
            {
                delay = std::time::Duration::ZERO;
            }
            self.last_request = Some(now);
        }
        if spare {
            self.due = None;
            return false;
        }
        if request || ended {
            // The sooner of this one's time and one already set.
            self.due = match (self.due, now.checked_add(delay)) {
                (Some(set), Some(due)) => Some(set.min(due)),
                (set, due) => set.or(due),
            };
        }
        if self.due.is_some_and(|due| due <= now) {
            self.due = None;
            return true;
        }
        false
    }
}

/// A child forked ahead of demand, asleep on a word of a page the server shares with its
/// spares and its client ([`Words`]). Made with a kit the client gave ([`ToServer::Kit`]), the
/// server lends it to the client at once ([`Lent`]: its pid, which kit, where its word is),
/// and the client starts it itself: one futex wake-up, with the pid known before. (Made with
/// no kit at hand, it is not lent, and waits for a request.) A request that comes to the server instead
/// (the client had not read of the spare yet, or another thread took it) takes it back and
/// hands it the request's sockets, which costs the request one message instead of a `fork`.
/// The next spare is forked [`TAKEN_DELAY`] after a spare is taken, [`SPARE_DELAY`] after one
/// is handed a request (see [`NextSpare`]). At most one exists, idle. A stop signal (or any
/// other that ends a process) ends it, as it ends the processes that existed when it came,
/// unless it was taken first (see
/// [`wait_as_spare`]). Tied to the user's process like every child, it ends with it; while it
/// waits, it also ends with the server, which alone can hand it on.
struct Spare {
    pid: u32,
    /// Where a request's sockets are handed to it when the server takes it back.
    sock: Channel,
    tie: alive::Tie,
    /// Its word's place in the page of [`Words`], and the word's value while it waits.
    slot: u32,
    idle: u32,
    /// The server's end of the status socket of the kit it was lent with; `None` if it was
    /// not lent (no kit was there): it waits for a request then.
    status: Option<Channel>,
}

/// A kit the client gave for a spare ([`ToServer::Kit`]): the spare's end of its control
/// socket and the server's end of its status socket.
struct ServerKit {
    id: u64,
    ctrl_child: InternalFd,
    status: InternalFd,
}

impl Spare {
    /// Forks a spare and lends it to the client on `request`; `None` if it cannot be forked
    /// (the next request forks its own child), or has no word to sleep on. One that could not
    /// be lent is still there for the next request.
    fn fork(
        alive: BorrowedFd<'_>,
        ties: &mut alive::Ties,
        request: &Channel,
        words: Option<&mut Words>,
        kits: &mut VecDeque<ServerKit>,
    ) -> Option<Spare> {
        let words = words?;
        let [sock, sock_child] = super::socket_pair().ok()?;
        // Made with the client's kit, if it gave one, and lent; else with a control socket of
        // its own (nobody's at the other end), unlent: it waits for a request.
        let (ctrl_child, kit) = match kits.pop_front() {
            Some(ServerKit {
                id,
                ctrl_child,
                status,
            }) => (ctrl_child, Some((id, status))),
            None => {
                let [_, ctrl_child] = super::socket_pair().ok()?;
                (ctrl_child, None)
            }
        };
        let give_back = |kits: &mut VecDeque<ServerKit>, ctrl_child, kit: Option<(u64, _)>| {
            if let Some((id, status)) = kit {
                kits.push_front(ServerKit {
                    id,
                    ctrl_child,
                    status,
                });
            }
        };
        let Some((slot, idle)) = words.take() else {
            give_back(kits, ctrl_child, kit);
            return None;
        };
        let Some(tie) = ties.take(alive) else {
            words.give_back(slot);
            give_back(kits, ctrl_child, kit);
            return None;
        };
        let server = proc::getpid();
        // Blocked in the spare until it catches them: one sent before ends it only said dead.
        let held = proc::SpareSignals::hold();
        let forked = proc::fork();
        if matches!(forked, Ok(ForkSide::Parent(_)) | Err(_)) {
            drop(held);
        }
        match forked {
            Ok(ForkSide::Child) => {
                let keep = [sock_child.as_fd().as_raw_fd(), ctrl_child.as_fd().as_raw_fd()];
                let me = settle_child(&keep, tie);
                // The server's (the other kits with them): their descriptors are closed,
                // their numbers not ours.
                std::mem::forget((sock, kit, std::mem::take(kits)));
                let sock = InternalFd::new(sock_child.into_owned());
                let ctrl = InternalFd::new(ctrl_child.into_owned());
                // Mapped for its whole life: its signal handler reads the word.
                let page: &'static Arc<Mapping> = Box::leak(Box::new(Arc::clone(&words.page)));
                wait_as_spare(server, me, sock, ctrl, page.word(slot as usize * 4), idle)
            }
            Ok(ForkSide::Parent(pid)) => {
                let status = kit.map(|(kit, status)| {
                    if let Ok(lent) = channel::encode_message(&Lent {
                        pid,
                        slot,
                        idle,
                        kit,
                    }) {
                        // Never waits: a client that reads nothing (stopped, say) is lent
                        // nothing more, and its requests take the spare back. (A frame this
                        // small goes whole or not at all: a Unix stream socket refuses a send
                        // that does not fit its buffer before it takes any of it.)
                        let now = Some(std::time::Instant::now());
                        let _ = request.send_frame_until(&lent, &[], now);
                    }
                    Channel::new(status)
                });
                Some(Spare {
                    pid,
                    sock: Channel::new(sock),
                    tie,
                    slot,
                    idle,
                    status,
                })
            }
            Err(_) => {
                ties.give_back(tie);
                words.give_back(slot);
                give_back(kits, ctrl_child, kit);
                None
            }
        }
    }

    /// Moves its word from idle to `to`; `false` if someone moved it first (the client started
    /// it, or it said it died).
    fn claim(&self, words: &Words, to: u32) -> bool {
        words
            .word(self.slot)
            .compare_exchange(
                self.idle,
                self.idle | to,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .is_ok()
    }

    /// Whether the client started it.
    fn taken(&self, words: &Words) -> bool {
        let now = words.word(self.slot).load(std::sync::atomic::Ordering::Acquire);
        now == self.idle | word::TAKEN
    }
}

/// A spare's life, in the spare (its pid `me`, forked by `server`): it sleeps on its word until
/// the client starts it (it runs its start message from `ctrl`) or the server takes it back (it
/// reads a request's sockets from `sock`), mapping the code in meanwhile if left unasked.
fn wait_as_spare(
    server: u32,
    me: u32,
    sock: InternalFd,
    ctrl: InternalFd,
    word: &'static std::sync::atomic::AtomicU32,
    idle: u32,
) -> ! {
    // Dies unasked, unless someone took it first (then it is theirs, and lives on).
    let die_unasked = || proc::die_if_untaken(word, idle, idle | word::DEAD);
    // While it waits it dies with the server, which alone may hand it on, and of a stop
    // signal (a Ctrl-C to the process group, say) or any other that ends a process, as the
    // processes that existed then do; the server forks another. Either only if nobody took it
    // first: once taken it is tied to the user's process alone, like every child, and the
    // signal is the child's.
    let Ok(signals) = proc::SpareSignals::catch(word, idle, idle | word::DEAD, server) else {
        die_unasked();
        proc::exit_now(1) // taken meanwhile, yet it cannot start safely: a child lost
    };
    let asked = || word.load(std::sync::atomic::Ordering::Acquire) != idle;
    // Unasked for a while: it maps the code in now, so that the child it becomes does not
    // fault it in on its way to its target (measured: start -> target running after a rest
    // 150-166 -> 112-117 µs); asked meanwhile, it stops at once. With every CPU busy it looks
    // again later, a few times, then no more.
    let mut rest = SPARE_IDLE;
    for _ in 0..SPARE_LOOKS {
        let until = fd::deadline_after(rest);
        while !asked() && futex::wait(word, idle, until).unwrap_or(false) {}
        if asked() || proc::map_in_code(asked) {
            break;
        }
        rest *= 5;
    }
    while !asked() {
        if futex::wait(word, idle, None).is_err() {
            die_unasked();
        }
    }
    // Its own number still (the word is reused only once this process is gone), and how it
    // was asked.
    let how = word.load(std::sync::atomic::Ordering::Acquire) ^ idle;
    signals.taken();
    match how {
        // (The worker unblocks every signal as it begins.)
        word::TAKEN => {
            drop(sock);
            worker::run(ctrl)
        }
        word::HANDED => {
            drop(ctrl);
            let mut sock = Channel::new(sock);
            // The server gone, or a malformed hand-over: nothing ran, nobody waits.
            if sock.recv_frame(None).is_err() {
                proc::exit_now(0);
            }
            let Ok([ctrl, status]) = <[InternalFd; 2]>::try_from(sock.take_fds()) else {
                proc::exit_now(0)
            };
            drop(sock);
            run_child(ctrl.into_owned(), status.into_owned(), me)
        }
        _ => proc::exit_now(0),
    }
}

/// How long after a request the server forks the next spare, when the request was not part of
/// a burst ([`BURST`]). Not at once: the kernel runs a task woken through a socket on its
/// waker's CPU, so the spare just handed the request waits for the server's CPU, and a fork
/// there (a hundred microseconds and more) held it off that long (seen in scheduler traces on
/// two CPUs, with the other idle). Asleep, the server leaves the CPU to the child starting (on
/// this VM a child takes 100-150 µs to reach its target, so the fork comes after). A start
/// sooner than this finds no spare and is forked for, as before spares existed, and makes a
/// burst.
const SPARE_DELAY: std::time::Duration = std::time::Duration::from_micros(300);

/// How long after the client took its lent spare the server forks the next, when that was not
/// part of a burst ([`BURST`]). Sooner than [`SPARE_DELAY`]: that child was woken by the
/// client, so it starts on the client's CPU, not the server's; and a program that starts one
/// process and then another wants the next spare lent by then (the process-start bench's
/// back-to-back row, a start ~0.2 ms after a start and its join: 0.21-0.55 ms with 0.15 ms
/// or more, 0.14-0.31 ms with 0.1). Not at once: a pool's thread asks for its other workers
/// right after the first took the spare, and a fork begun at once held them and the first
/// one's start up (`Pool(2)` to its first result: 0.26-0.32 ms at once, 0.14-0.16 with 0.1).
const TAKEN_DELAY: std::time::Duration = std::time::Duration::from_micros(100);

/// Requests closer together than this make a burst, after which the next spare is forked at
/// once: the next request is likely near, and wants one. Longer than [`SPARE_DELAY`] and a
/// fork: starts a little over [`SPARE_DELAY`] apart would otherwise each come while the
/// delayed fork runs, and wait for it.
const BURST: std::time::Duration = std::time::Duration::from_micros(600);

/// How long a spare waits unasked before it maps the code in ([`proc::map_in_code`]): longer
/// than the gap between the starts of a burst (a few hundred microseconds each), where the
/// CPU it would take is better left to the children just started.
const SPARE_IDLE: std::time::Duration = std::time::Duration::from_millis(1);

/// How many times a spare looks for a free CPU to map the code in, each wait five times the
/// last (1, 5, 25, 125 and 625 ms), before it gives up for good: an idle spare wakes no more.
const SPARE_LOOKS: usize = 5;

/// What the server serves requests with.
struct Serving<'a, 'b> {
    alive: BorrowedFd<'a>,
    ties: &'b mut alive::Ties,
    children: &'b mut Children,
    spare: &'b mut Option<Spare>,
    words: Option<&'b Words>,
    kits: &'b mut VecDeque<ServerKit>,
}

/// The server's running children, by pid.
type Children = HashMap<u32, Running>;

/// A running child of the server.
struct Running {
    /// Where its exit is reported (or, for a spare that died unasked, nothing is).
    status: Channel,
    /// Its tie to the user's process, taken back for a later child once it is reaped.
    tie: alive::Tie,
    /// The word it slept on, if it was a spare (see [`Words`]): freed once it is reaped.
    slot: Option<u32>,
}

impl Serving<'_, '_> {
    /// Serves the requests waiting; says what they were.
    fn serve_requests(&mut self, request: &mut Channel) -> Served {
        let mut served = Served::default();
        loop {
            match request.try_recv_frame() {
                Ok(Some(frame)) => {
                    match channel::decode_message::<ToServer>(&frame) {
                        Ok(ToServer::Fork { kit }) => {
                            served.requests += 1;
                            let fds = request.take_fds_n(2);
                            self.take_kit(request, kit);
                            if let Ok([ctrl, status]) = <[InternalFd; 2]>::try_from(fds) {
                                self.start_child(ctrl.into_owned(), status.into_owned());
                            }
                        }
                        Ok(ToServer::Took { pid, kit, late }) => {
                            served.taken = true;
                            served.late |= late;
                            self.take_kit(request, kit);
                            self.taken(pid);
                        }
                        Ok(ToServer::Kit { id }) => self.take_kit(request, Some(id)),
                        Err(_) => drop(request.take_fds()),
                    }
                }
                Ok(None) => return served,
                // The parent closed the request socket (it is gone), or the stream lost its
                // framing (cannot happen with our own client): nothing more can be served.
                Err(e) if matches!(e.kind(), ErrorKind::Closed | ErrorKind::Protocol(_)) => {
                    proc::exit_now(0)
                }
                // A transient failure (such as the descriptor limit): serve on.
                Err(_) => return served,
            }
        }
    }

    /// Keeps kit `id`, if a message named one, whose two descriptors come next on `request`.
    fn take_kit(&mut self, request: &mut Channel, id: Option<u64>) {
        let Some(id) = id else { return };
        if let Ok([ctrl_child, status]) = <[InternalFd; 2]>::try_from(request.take_fds_n(2)) {
            self.kits.push_back(ServerKit {
                id,
                ctrl_child,
                status,
            });
        }
    }

    /// Takes the spare back from the client and hands it a request's sockets, or forks a
    /// child for them if there is none (or it died, or the client started it meanwhile).
    fn start_child(&mut self, ctrl: OwnedFd, status: OwnedFd) {
        if let Some(words) = self.words
            && let Some(spare) = self.spare.take()
        {
            let slot = Some(spare.slot);
            if !spare.claim(words, word::HANDED) {
                // The client started it; its word to say so is on the way.
                self.children.insert(
                    spare.pid,
                    Running {
                        status: spare.status.unwrap_or(spare.sock),
                        tie: spare.tie,
                        slot,
                    },
                );
            } else if spare.sock.send_frame(&[], &[ctrl.as_fd(), status.as_fd()]).is_ok() {
                futex::wake(words.word(spare.slot), 1);
                let status = Channel::new(InternalFd::new(status));
                let tie = spare.tie;
                self.children
                    .insert(spare.pid, Running { status, tie, slot });
                return;
            } else {
                // It died unasked (killed), or the hand-over failed: it goes (our own
                // unreaped child, so the pid is still its), and is reaped with the others, its
                // tie and word given back then.
                let _ = proc::kill(spare.pid, libc::SIGKILL);
                self.children.insert(
                    spare.pid,
                    Running {
                        status: spare.sock,
                        tie: spare.tie,
                        slot,
                    },
                );
            }
        }
        self.fork_child(ctrl, status);
    }

    /// The client says it started the spare `pid` it was lent: its exit is reported on the
    /// status socket of the kit it was made with.
    fn taken(&mut self, pid: u32) {
        let Some(words) = self.words else { return };
        if let Some(spare) = self.spare.take_if(|s| s.pid == pid && s.taken(words)) {
            let slot = Some(spare.slot);
            self.children.insert(
                pid,
                Running {
                    status: spare.status.unwrap_or(spare.sock),
                    tie: spare.tie,
                    slot,
                },
            );
        }
    }

    fn fork_child(&mut self, ctrl: OwnedFd, status: OwnedFd) {
        let Some(tie) = self.ties.take(self.alive) else {
            return; // dropping `status` tells the client the fork failed
        };
        match proc::fork() {
            Ok(ForkSide::Child) => {
                let me = settle_child(&[ctrl.as_raw_fd(), status.as_raw_fd()], tie);
                proc::unblock_all_signals();
                run_child(ctrl, status, me)
            }
            Ok(ForkSide::Parent(pid)) => {
                // The server keeps its copy of the tie until the child is reaped, to hand it on.
                let status = Channel::new(InternalFd::new(status));
                self.children.insert(
                    pid,
                    Running {
                        status,
                        tie,
                        slot: None,
                    },
                );
            }
            // Dropping `status` tells the client the fork failed.
            Err(_) => self.ties.give_back(tie),
        }
    }
}

/// In a new child of the server (a spare or not): closes every descriptor but `keep` and its
/// tie, forgets the server's internal ones, and ties itself to the user's process; its pid.
/// Tied through the liveness pipe, not to the server through PR_SET_PDEATHSIG: the server may
/// die (killed, out of memory) while the user's process still wants this child's work.
fn settle_child(keep: &[std::os::fd::RawFd], tie: alive::Tie) -> u32 {
    // On the stack: nothing here needs the allocator.
    let mut all = [tie.as_raw_fd(); 3];
    debug_assert!(keep.len() <= 2, "room for two descriptors and the tie");
    let n = keep.len().min(2);
    all[..n].copy_from_slice(&keep[..n]);
    proc::close_all_fds_except(&all[..=n]);
    fd::lock_internal().forget_all();
    let me = proc::getpid();
    alive::tie(tie, me);
    me
}

/// In a new child, tied already: announces itself, then runs the worker.
fn run_child(ctrl: OwnedFd, status: OwnedFd, me: u32) -> ! {
    if announce(status, me).is_err() {
        proc::exit_now(1); // nobody will ever know of it, so it must not run
    }
    worker::run(InternalFd::new(ctrl))
}

/// In a new child, whose id is `pid`: tells the client its pid, with a pidfd, then closes its
/// copy of the status socket (the server reports the exit on it later). The child does it, not
/// the server, so that the client hears of every child that may run its target, even if the
/// server dies this very moment.
fn announce(status: OwnedFd, pid: u32) -> Result<(), Error> {
    let status = Channel::new(InternalFd::new(status));
    let pidfd = proc::pidfd_open(pid)?;
    status.send(&Forked::of(pid), &[pidfd.as_fd()])
}

/// Reaps the children that ended and reports each one's exit where it is due. A waiting spare
/// that died is said dead in its word before it is reaped: its pid stays its own until then,
/// so a client that opened a pidfd by that pid before it moved the word holds the spare's
/// (see `start_in`).
fn report_ended(
    children: &mut Children,
    ties: &mut alive::Ties,
    spare: &mut Option<Spare>,
    mut words: Option<&mut Words>,
) {
    while let Ok(Some(pid)) = proc::ended_child() {
        // Dead while it waited (another is forked; it said so itself, or is said dead now),
        // unless the client started it and has not said so yet: then it was the client's
        // child.
        let started = spare.as_ref().filter(|s| s.pid == pid).map(|dead| {
            words
                .as_deref()
                .is_some_and(|w| !dead.claim(w, word::DEAD) && dead.taken(w))
        });
        let Ok(Some(exit)) = proc::reap_child(pid) else {
            return; // cannot happen to an ended child of ours; looked at again at the next
        };
        let slot = if let Some(Running { status, tie, slot }) = children.remove(&pid) {
            let _ = status.send(&exit, &[]);
            ties.give_back(tie);
            slot
        } else if let Some(dead) = spare.take_if(|s| s.pid == pid) {
            if started == Some(true)
                && let Some(status) = &dead.status
            {
                let _ = status.send(&exit, &[]);
            }
            ties.give_back(dead.tie);
            Some(dead.slot)
        } else {
            None
        };
        if let (Some(slot), Some(words)) = (slot, words.as_deref_mut()) {
            words.give_back(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_spare_is_due_later_alone_at_once_in_a_burst_or_taken_and_never_unasked() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let at = |us: u64| t0 + Duration::from_micros(us);
        let served = |requests, taken| Served {
            requests,
            taken,
            late: false,
        };
        let asked = |requests| served(requests, false);
        let mut next = NextSpare::default();
        // Nothing happened: nothing is due, ever (no retry loop after a failed fork).
        assert!(!next.fork_now(at(0), asked(0), false, false));
        assert_eq!(next.due, None);
        // A request alone (its spare taken): the next spare SPARE_DELAY later.
        assert!(!next.fork_now(at(0), asked(1), false, false));
        assert_eq!(next.due, Some(at(0) + SPARE_DELAY));
        // A child's end meanwhile does not put it off.
        assert!(!next.fork_now(at(100), asked(0), true, false));
        assert_eq!(next.due, Some(at(0) + SPARE_DELAY));
        // Its time comes (the poll's timeout: nothing ready).
        assert!(next.fork_now(at(0) + SPARE_DELAY, asked(0), false, false));
        assert_eq!(next.due, None);
        // Forked; the next request, within BURST of the last, finds it and takes it: the one
        // after is forked at once.
        let soon = at(0) + BURST / 2;
        assert!(next.fork_now(soon, asked(1), false, false));
        // A request long after the last: later again.
        let later = soon + BURST * 2;
        assert!(!next.fork_now(later, asked(1), false, false));
        assert_eq!(next.due, Some(later + SPARE_DELAY));
        // A spare there (forked for another reason): nothing is due.
        assert!(!next.fork_now(later, asked(0), false, true));
        assert_eq!(next.due, None);
        // A fork that failed: tried again only after the next request or child's end.
        assert!(!next.fork_now(later + BURST * 3, asked(0), false, false));
        assert!(!next.fork_now(later + BURST * 3, asked(0), true, false));
        assert_eq!(next.due, Some(later + BURST * 3 + SPARE_DELAY));
        // Two requests served in one wake-up are a burst, one is not.
        assert!(NextSpare::default().fork_now(at(0), asked(2), false, false));
        assert!(!NextSpare::default().fork_now(at(0), asked(1), false, false));
        // A spare the client took itself: the next one TAKEN_DELAY later, alone; at once in a
        // burst.
        let took = served(0, true);
        let mut next = NextSpare::default();
        assert!(!next.fork_now(at(0), took, false, false));
        assert_eq!(next.due, Some(at(0) + TAKEN_DELAY));
        assert!(next.fork_now(at(0) + TAKEN_DELAY, asked(0), false, false));
        assert!(next.fork_now(at(0) + BURST / 2, took, false, false));
        // Taken, and one request for a child (a pool's next worker) in the same wake-up: not
        // a burst.
        let mut pool = NextSpare::default();
        assert!(!pool.fork_now(at(0), served(1, true), false, false));
        assert_eq!(pool.due, Some(at(0) + TAKEN_DELAY));
        // A take told after its child started: the next spare at once.
        let late = Served {
            requests: 0,
            taken: true,
            late: true,
        };
        assert!(NextSpare::default().fork_now(at(0), late, false, false));
        assert!(TAKEN_DELAY < SPARE_DELAY);
        assert!(BURST > SPARE_DELAY);
    }

    #[test]
    fn a_spare_is_lent_with_no_descriptor_in_flight() {
        // A server of the test's own, given its kits at the handshake.
        let mut server = start_server(exe::identity()).expect("a server");
        assert_eq!(server.kits.len(), KITS, "the kits given ahead");
        // Its first spare was forked before any kit came, so it waits unlent: killed, it is
        // replaced by one made with the first kit, and lent.
        let fdinfo = format!("/proc/self/fdinfo/{}", server.pidfd.as_fd().as_raw_fd());
        let info = std::fs::read_to_string(fdinfo).unwrap();
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .map(|p| p.trim().to_owned())
            .expect("a pidfd's fdinfo names its process");
        let children = format!("/proc/{pid}/task/{pid}/children");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let first = loop {
            let listed = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = listed.split_whitespace().next() {
                break pid.parse::<u32>().unwrap();
            }
            assert!(std::time::Instant::now() < deadline, "no spare forked");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        proc::kill(first, libc::SIGKILL).expect("the first spare killed");
        let frame = server
            .request
            .recv_frame(Some(deadline))
            .expect("a spare lent");
        assert_eq!(server.request.pending_fds(), 0, "a descriptor rode along");
        let lent = channel::decode_message::<Lent>(&frame).expect("a Lent");
        assert_eq!(lent.kit, server.kits[0].id, "made with the first kit");
        retire(&mut Some(server));
    }

    #[test]
    fn a_fork_server_of_another_build_is_refused() {
        let e = start_server(exe::identity() ^ 1).err().expect("refused");
        assert_eq!(e.kind(), &ErrorKind::ExecutableMismatch);
        let server = start_server(exe::identity()).expect("the same build is accepted");
        retire(&mut Some(server));
    }

    fn seven() -> u8 {
        7
    }

    /// A thread that waits to learn whether the server died (it dropped a request unanswered)
    /// holds back no other thread's start: each start takes the server's slot, under `Fork` as
    /// under `Forkserver`. Held across the wait, the slot stalled them for up to [`DYING`].
    #[test]
    fn a_wait_for_the_server_to_die_holds_no_other_start_back() {
        use std::time::{Duration, Instant};
        let serial = running(&mut lock()).expect("a server").serial;
        for m in crate::StartMethod::ALL {
            let mut took = Vec::new();
            for _ in 0..5 {
                if let Some(server) = lock().as_mut() {
                    server.alive_seen = None; // so that the next look waits the whole moment
                }
                let waiter = std::thread::spawn(move || has_died(serial));
                std::thread::sleep(DYING / 10);
                let t = Instant::now();
                let mut p = crate::Process::new(seven, ()).start_method(m);
                p.start().expect("a start");
                took.push(t.elapsed());
                assert_eq!(p.join_timeout(Duration::from_secs(20)).unwrap(), 7);
                assert!(!waiter.join().unwrap(), "the server lives");
            }
            took.sort_unstable();
            assert!(took[2] < DYING / 2, "{m}: starts took {took:?}");
        }
    }

    /// The client tells a child's announcement from the server's exit report by its bytes.
    #[test]
    fn an_exit_report_is_never_an_announcement() {
        use crate::sys::proc::Exit;
        use crate::wire::codec;
        for exit in [Exit::Code(0), Exit::Code(-1), Exit::Signal(9), Exit::Unknown] {
            let bytes = codec::encode(&exit).unwrap();
            let announced = channel::decode_message::<Forked>(&bytes);
            assert!(!announced.is_ok_and(|f| f.tag == Forked::TAG), "{exit:?}");
            assert!(channel::decode_message::<Exit>(&bytes).is_ok());
        }
        let bytes = codec::encode(&Forked::of(2)).unwrap();
        assert!(channel::decode_message::<Forked>(&bytes).is_ok_and(|f| f.tag == Forked::TAG));
        assert!(channel::decode_message::<Exit>(&bytes).is_err());
    }
}
