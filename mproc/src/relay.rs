//! Forwarding a child's `tracing` events to its parent (the `tracing` feature), as Python's
//! `log_to_stderr` and loky's worker logging do: a child's own `tracing::info!` inside a target
//! reaches the parent's subscriber, with the child's name and pid.
//!
//! When the parent's subscribers want events at all, each child (a `Process`, a pool worker)
//! gets the write end of a pipe with its start message and the most verbose level wanted. In
//! the child, a subscriber encodes each event (level, target, message with its fields as
//! text) into a frame on the pipe. In the parent, one thread (`mproc-log-relay`, started with
//! the first such child) reads every child's pipe and emits each event again on target
//! `mproc::child`, with fields `child`, `pid` and `from` (the event's own target). A pipe's end
//! of file (its child has exited) retires it.
//!
//! A `Fork` child inherits its parent's global subscriber, which `tracing` sets once per
//! process: there the forwarder is its main thread's default only, and its other threads emit
//! through the inherited copy of the parent's subscriber.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata, Subscriber, span};

use crate::error::Error;
use crate::start::at_fork;
use crate::sys::fd::{self, InternalFd};
use crate::sys::proc::Forked;
use crate::wire::codec;

/// Messages longer than this are cut (a log line, not a payload).
const MAX_FRAME: usize = 64 * 1024;

/// Targets longer than this are cut (a module path, or a name the user gave).
const MAX_TARGET: usize = 1024;

/// The most a frame's body may announce: a cut message and target, and their lengths and
/// level. A pipe whose frame announces more is not a child's forwarder writing (something in
/// the child wrote to the wrong descriptor, or meant harm): the relay stops reading it rather
/// than keep whatever comes in wait for a frame that never ends.
const MAX_BODY: usize = MAX_FRAME + MAX_TARGET + 64;

/// One event as it crosses the pipe.
#[derive(Serialize, Deserialize)]
struct Record {
    /// 0 error, 1 warn, 2 info, 3 debug, 4 trace.
    level: u8,
    target: String,
    message: String,
}

fn level_number(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        Level::DEBUG => 3,
        _ => 4,
    }
}

/// The parent's side of a new child's pipe, and what the child is told. Both ends are
/// internal descriptors: a child another thread forks meanwhile does not keep the write end
/// open (the relay would never see this child's pipe end).
pub(crate) struct LogPipe {
    read: InternalFd,
    write: InternalFd,
    level: u8,
}

/// A pipe for a child's events, if any subscriber of this process wants events at all (and
/// the relay runs: a child never gets a pipe nobody reads).
pub(crate) fn log_pipe() -> Option<LogPipe> {
    let level = match LevelFilter::current().into_level() {
        None => return None,
        Some(l) => level_number(&l),
    };
    relay()?;
    let [read, write] = fd::create_internal(|| {
        let (read, write) = fd::pipe()?;
        Ok([read, write])
    })
    .ok()?;
    Some(LogPipe { read, write, level })
}

impl LogPipe {
    /// The most verbose level the parent wants (see [`level_number`]), for the start message.
    pub(crate) fn level(&self) -> u8 {
        self.level
    }

    /// The write end, sent to the child after its other descriptors.
    pub(crate) fn write(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }

    /// The child `name` (pid `pid`) has started: its events are read from now on.
    pub(crate) fn relay(self, name: &str, pid: u32) {
        drop(self.write);
        let Some(relay) = relay() else {
            return; // it cannot start: the child's writes fail, no more
        };
        relay
            .new
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Pipe {
                fd: self.read,
                name: name.to_owned(),
                pid,
                buf: Vec::new(),
            });
        fd::notify(relay.wake.as_fd());
    }
}

/// One child's pipe in the relay.
struct Pipe {
    fd: InternalFd,
    name: String,
    pid: u32,
    buf: Vec<u8>,
}

struct Relay {
    /// Pipes handed over and not yet watched.
    new: Mutex<Vec<Pipe>>,
    /// An eventfd that wakes the relay's thread.
    wake: InternalFd,
}

/// This process's relay, with the pid it belongs to. A `Fork` start holds it across the fork
/// (see `start/at_fork.rs`) and empties it in the child, which starts a relay of its own if
/// it needs one: it does not have the thread. A relay whose thread has ended takes itself out.
static RELAY: Mutex<Option<(u32, Arc<Relay>)>> = Mutex::new(None);

fn slot() -> MutexGuard<'static, Option<(u32, Arc<Relay>)>> {
    at_fork::ensure(at_fork::Rank::Relay, hold_across_fork);
    RELAY.lock().unwrap_or_else(|e| e.into_inner())
}

fn hold_across_fork(fork: at_fork::Fork<'_>) -> Result<Forked, Error> {
    let mut slot = RELAY.lock().unwrap_or_else(|e| e.into_inner());
    let forked = fork();
    if let Ok(Forked::Child) = forked {
        // The parent's relay, whose descriptors the fork closed here (dropping an inherited
        // `InternalFd` closes nothing) and whose thread is not here.
        *slot = None;
    }
    forked
}

/// This process's relay, started on first use; `None` if it cannot start.
fn relay() -> Option<Arc<Relay>> {
    let mut slot = slot();
    let me = std::process::id();
    if let Some((pid, relay)) = slot.as_ref()
        && *pid == me
    {
        return Some(Arc::clone(relay));
    }
    let [wake] = fd::create_internal(|| Ok([fd::eventfd()?])).ok()?;
    let relay = Arc::new(Relay {
        new: Mutex::new(Vec::new()),
        wake,
    });
    let serving = Arc::clone(&relay);
    std::thread::Builder::new()
        .name("mproc-log-relay".into())
        .spawn(move || {
            let _retire = Retire(Arc::clone(&serving));
            serve(&serving)
        })
        .ok()?;
    *slot = Some((me, Arc::clone(&relay)));
    Some(relay)
}

/// Takes its relay out of the slot when the relay's thread ends (it does not, unless it
/// panics): the next child gets a new relay rather than a pipe nobody reads.
struct Retire(Arc<Relay>);

impl Drop for Retire {
    fn drop(&mut self) {
        let mut slot = slot();
        if slot.as_ref().is_some_and(|(_, r)| Arc::ptr_eq(r, &self.0)) {
            *slot = None;
        }
    }
}

/// The relay's loop: waits on every pipe, emits what comes, retires pipes at end of file.
fn serve(relay: &Relay) {
    let mut live: Vec<Pipe> = Vec::new();
    loop {
        live.append(&mut relay.new.lock().unwrap_or_else(|e| e.into_inner()));
        let mut watched: Vec<(RawFd, bool)> = vec![(relay.wake.as_fd().as_raw_fd(), false)];
        watched.extend(live.iter().map(|p| (p.fd.as_fd().as_raw_fd(), false)));
        let Ok(ready) = fd::poll_numbers(&watched, None) else {
            continue;
        };
        if ready[0].readable {
            fd::drain(relay.wake.as_fd());
        }
        let mut ended = Vec::new();
        for (i, pipe) in live.iter_mut().enumerate() {
            let r = &ready[i + 1];
            if !(r.readable || r.hangup) {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            match rustix::io::read(&pipe.fd, &mut chunk) {
                Ok(0) | Err(_) => ended.push(i),
                Ok(n) => {
                    pipe.buf.extend_from_slice(&chunk[..n]);
                    if emit_frames(pipe).is_err() {
                        ended.push(i);
                    }
                }
            }
        }
        for i in ended.into_iter().rev() {
            live.swap_remove(i);
        }
    }
}

/// Emits every whole frame in `pipe`'s buffer; `Err` (the rest left unread) at a frame that
/// announces more than any event makes ([`MAX_BODY`]).
fn emit_frames(pipe: &mut Pipe) -> Result<(), ()> {
    let mut at = 0;
    while let Some(len) = pipe.buf.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().expect("four bytes")) as usize;
        if len > MAX_BODY {
            return Err(());
        }
        let Some(body) = pipe.buf.get(at + 4..at + 4 + len) else {
            break;
        };
        if let Ok(r) = codec::decode::<Record>(body) {
            // A subscriber of the user's that panics loses this event, not the relay.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| emit(&pipe.name, pipe.pid, &r)));
        }
        at += 4 + len;
    }
    pipe.buf.drain(..at);
    Ok(())
}

fn emit(child: &str, pid: u32, r: &Record) {
    let (from, message) = (r.target.as_str(), r.message.as_str());
    match r.level {
        0 => tracing::error!(target: "mproc::child", child, pid, from, "{message}"),
        1 => tracing::warn!(target: "mproc::child", child, pid, from, "{message}"),
        2 => tracing::info!(target: "mproc::child", child, pid, from, "{message}"),
        3 => tracing::debug!(target: "mproc::child", child, pid, from, "{message}"),
        _ => tracing::trace!(target: "mproc::child", child, pid, from, "{message}"),
    }
}

/// In a child: sends its `tracing` events to the parent through `pipe`, up to `level`. The
/// returned guard keeps this thread's default (where a global one was already set: a fork
/// child inherits its parent's) for as long as it lives.
pub(crate) fn forward(pipe: OwnedFd, level: u8) -> Option<tracing::dispatcher::DefaultGuard> {
    // Before any event can take the lock: a `Fork` start holds it across the fork from now on.
    at_fork::ensure(at_fork::Rank::Forwarding, hold_forwarding_across_fork);
    let forwarder = Forwarder {
        pipe: std::fs::File::from(pipe),
        level,
    };
    let dispatch = tracing::Dispatch::new(forwarder);
    match tracing::dispatcher::set_global_default(dispatch.clone()) {
        Ok(()) => None,
        Err(_) => Some(tracing::dispatcher::set_default(&dispatch)),
    }
}

/// Taken to write an event's frame, by every forwarder of this process (there is one, or two
/// in a `Fork` child, which inherits its parent's as the global default): frames of two
/// threads never interleave. A `Fork` start holds it across the fork, so the child never finds
/// it held by a thread it does not have (its own threads' events go through the inherited
/// forwarder).
static FORWARDING: Mutex<()> = Mutex::new(());

fn hold_forwarding_across_fork(fork: at_fork::Fork<'_>) -> Result<Forked, Error> {
    let _held = FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
    fork()
}

/// The child's subscriber: each event as a frame on the pipe.
struct Forwarder {
    pipe: std::fs::File,
    level: u8,
}

/// An event's message, then its other fields as `name=value`.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl Subscriber for Forwarder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_number(metadata.level()) <= self.level
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match self.level {
            0 => LevelFilter::ERROR,
            1 => LevelFilter::WARN,
            2 => LevelFilter::INFO,
            3 => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        })
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        let mut message = text.0;
        cut(&mut message, MAX_FRAME);
        let mut target = event.metadata().target().to_owned();
        cut(&mut target, MAX_TARGET);
        let record = Record {
            level: level_number(event.metadata().level()),
            target,
            message,
        };
        let Ok(body) = codec::encode(&record) else {
            return;
        };
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&body);
        // One write per frame, under the lock: frames of two threads never interleave. A
        // parent gone (broken pipe) loses the event, nothing more.
        let _held = FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
        let _ = (&self.pipe).write_all(&frame);
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// Cuts `text` to at most `most` bytes, at a character's boundary.
fn cut(text: &mut String, most: usize) {
    if text.len() > most {
        let mut at = most;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
}
