//! [`LocalLink`]: a worker that is a child process of this one. Chunks and answers travel in
//! its lane (shared memory, see `pool/lane.rs`); what goes on its socket (large frames with a
//! placeholder in the lane that keeps their place in the order, wake-ups, `Stop`) goes
//! through its outbox, so one slow worker never blocks the others.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use super::chunk::Chunk;
use super::config::Config;
use super::link::{Answer, Link, Note, Peer, Polled, Sent};
use crate::channel::{self, Outbox};
use crate::error::{Error, ErrorKind};
use crate::memfile::{Mapped, Payload, Received, Spares, WORTH_A_FILE};
use crate::pool::task::Answered;
use crate::pool::task;
use crate::process;
use crate::start::{self, Child, StartMethod};
use crate::sys::exe;
use crate::sys::fd::{self, InternalFd};
use crate::pool::lane::{Corrupt, FRAME_OVERHEAD, Lane};
use crate::sys::proc::Exit;
use crate::wire::codec;
use crate::wire::message::{FromWorker, FromWorkerOf, PoolWorkerSpec, Role, Start, ToWorker};

/// A worker being started: [`Link::begin`] made it, [`Link::finish`] waits for it.
pub(crate) struct Launch {
    launching: start::Launching,
    /// Its encoded start message, and the pipe its `tracing` events come back through: kept
    /// to ask again if its fork server is found dead.
    start: Vec<u8>,
    name: String,
    log_pipe: Option<crate::relay::LogPipe>,
    /// Its lane, already sent after the start message (so the child finds it waiting), and
    /// the lane's file, kept to send it again to the child of a second request.
    lane: Lane,
    lane_file: fd::InternalFd,
    lane_sent: Result<(), Error>,
}

/// The message that hands a worker its lane's file.
fn lane_message() -> Result<Vec<u8>, Error> {
    channel::encode_message(&ToWorker::<&[u8]>::Lane)
}

/// Sends a worker its lane's `file` on `ctrl`: small, but the start message before it may
/// still fill the socket, so bounded like it.
fn send_lane(ctrl: &channel::Channel, file: &fd::InternalFd) -> Result<(), Error> {
    ctrl.send_frame_until(
        &lane_message()?,
        &[file.as_fd()],
        fd::deadline_after(start::PATIENCE),
    )
}

/// The descriptors that go with a worker's start message: the initializer's handles, its
/// standard streams' files, and its log pipe.
fn start_fds<'a>(
    config: &'a Config,
    log_pipe: Option<&'a crate::relay::LogPipe>,
) -> Vec<std::os::fd::BorrowedFd<'a>> {
    let mut fds: Vec<_> = config.init_fds.iter().map(AsFd::as_fd).collect();
    fds.extend(config.setup.files());
    fds.extend(log_pipe.map(|p| p.write()));
    fds
}

/// A child process serving the pool, and the ways to it.
pub(crate) struct LocalLink {
    child: Child,
    name: String,
    /// Whether its control socket can still be read.
    ctrl_open: bool,
    outbox: Outbox,
    /// The shared-memory rings its tasks and answers travel in.
    lane: Lane,
    /// Answers that came on the socket (too large for the lane), in order, each waiting for
    /// its placeholder in the lane.
    socket_answers: VecDeque<Answer>,
    /// Placeholders met in the lane whose answers have not come on the socket yet; the lane is
    /// not read past them.
    placeholders: usize,
    /// Its exit was seen: an answer that came on the socket just before, without its
    /// placeholder, is taken in its turn.
    gone: bool,
    /// Memory files its large tasks go in when their caller did not encode them into one of
    /// its own (past `memfile`'s limit of such files, or a remote agent's tasks), kept for
    /// reuse.
    spares: Spares,
    /// Mappings of the memory files its large answers came in.
    files: Mapped,
    /// Tasks placed in its lane, and answers taken from it: a worker cannot answer more than
    /// it was given (one that does is not one of ours any more).
    given: u64,
    answered: u64,
}

impl LocalLink {
    /// What a push of a task's frame (or of its placeholder) into the lane came to. A sleeping
    /// worker is woken now, not when this turn ends: it starts on this chunk while the
    /// dispatcher places the rest (and reads the other lanes).
    fn pushed(&mut self, pushed: Result<bool, Corrupt>) -> Sent {
        let sent = self.pushed_unwoken(pushed);
        if let Sent::Placed = sent {
            self.wake_if_asleep();
        }
        sent
    }

    /// [`pushed`](Self::pushed), leaving the worker asleep if it is: the caller wakes it
    /// ([`Link::wake_if_asleep`]) before it lets go.
    fn pushed_unwoken(&mut self, pushed: Result<bool, Corrupt>) -> Sent {
        match pushed {
            Ok(true) => {
                self.given += 1;
                Sent::Placed
            }
            Ok(false) => Sent::Full,
            Err(Corrupt) => Sent::Broken(Error::protocol("a pool worker corrupted its lane")),
        }
    }

    /// The next answer in the lane's order (see [`Link::next_answer`]).
    fn next_answer_uncounted(&mut self, scratch: &mut Vec<u8>) -> Result<Option<Answer>, Error> {
        loop {
            if self.placeholders > 0 {
                let Some(answer) = self.socket_answers.pop_front() else {
                    return Ok(None); // the lane waits for the socket
                };
                self.placeholders -= 1;
                return Ok(Some(answer));
            }
            match self.lane.pop_into(scratch) {
                Ok(true) => {}
                Ok(false) if self.gone => return Ok(self.socket_answers.pop_front()),
                Ok(false) => return Ok(None),
                Err(Corrupt) => return Err(Error::protocol("a pool worker corrupted its lane")),
            }
            // Borrowed from the frame, and copied inline if it is small (see `Received`).
            if let Some((id, bytes)) = crate::wire::message::read_done_ok(scratch) {
                let answer = Answered {
                    bytes: Received::copy_of(bytes),
                    handles: Vec::new(),
                };
                return Ok(Some((id, Ok(answer))));
            }
            match codec::decode_borrowed::<FromWorkerOf<&serde_bytes::Bytes>>(scratch) {
                Ok(FromWorkerOf::Done { id, result }) => {
                    let answer = result.map(|b| Answered {
                        bytes: Received::copy_of(b),
                        handles: Vec::new(),
                    });
                    return Ok(Some((id, answer)));
                }
                Ok(FromWorkerOf::OnSocket) => self.placeholders += 1,
                Ok(_) | Err(_) => {
                    return Err(Error::protocol("a pool worker wrote garbage in its lane"));
                }
            }
        }
    }

    /// Queues a task on the socket with the descriptors of its handles (`fds`); a large one
    /// with its payload in a memory file, whose descriptor follows them: the caller's own file
    /// if it encoded the payload into one, else one of this link's, the payload copied in.
    fn push_on_socket(&mut self, chunk: &Chunk, mut fds: Vec<InternalFd>) -> Result<(), Error> {
        let file = match &chunk.payload {
            Payload::File(file) => fd::dup_internal(file.fd())
                .map_err(|e| Error::os("passing a task's memory file to a pool worker", e))?,
            Payload::Bytes(bytes) if bytes.len() >= WORTH_A_FILE => {
                self.spares.write(bytes.len(), |b| {
                    b.copy_from_slice(bytes);
                    Ok(())
                })?
            }
            Payload::Bytes(bytes) => {
                let task = ToWorker::Task {
                    id: chunk.id,
                    entry: chunk.entry,
                    payload: bytes.as_slice(),
                    handles: chunk.handles.len() as u32,
                };
                return self.outbox.push_with_fds(&task, fds);
            }
        };
        fds.push(file);
        let task = ToWorker::<&[u8]>::TaskInFile {
            id: chunk.id,
            entry: chunk.entry,
            len: chunk.payload.len() as u64,
            handles: chunk.handles.len() as u32,
        };
        self.outbox.push_with_fds(&task, fds)
    }
}

impl Link for LocalLink {
    type Launch = Launch;

    /// Starts a worker as `config` says, without waiting for it where its start method lets
    /// it go on (see [`start::begin`]).
    fn begin(config: &Config) -> Result<Launch, Error> {
        let (number, lineage) = process::next_child();
        let prefix = match config.method {
            StartMethod::Fork => "ForkPoolWorker",
            StartMethod::Spawn => "SpawnPoolWorker",
            StartMethod::Forkserver => "ForkServerPoolWorker",
        };
        let name = match &config.name_prefix {
            Some(host) => format!("{host}:{prefix}-{number}"),
            None => format!("{prefix}-{number}"),
        };
        // The worker's own `tracing` events come back through a pipe when they are wanted.
        let log_pipe = crate::relay::log_pipe();
        let log = log_pipe.as_ref().map(|p| p.level());
        let (env, cwd, stdio, _) = config.setup.message();
        let start = Start {
            env,
            cwd: cwd.map(serde_bytes::ByteBuf::from),
            stdio,
            log,
            handles: config.init_fds.len() as u32,
            identity: exe::identity(),
            entry: task::worker_entry(),
            target: "mproc::Pool worker".into(),
            name: name.clone(),
            // As Python's pool workers: the processes a task starts are daemonic by default,
            // terminated when their worker leaves.
            daemon: true,
            lineage,
            args: Vec::new(),
            role: Role::PoolWorker(PoolWorkerSpec {
                init: config
                    .init
                    .as_ref()
                    .map(|(entry, args)| (*entry, serde_bytes::ByteBuf::from(args.clone()))),
            }),
        };
        let start = channel::encode_message(&start)?;
        let launching = start::begin(config.method, &start, &start_fds(config, log_pipe.as_ref()))?;
        // The lane is made (13-21 µs) while the fork server (or the new child) gets going,
        // not before the request.
        let (lane, lane_file) = match Lane::create() {
            Ok(made) => made,
            Err(e) => {
                // The child would wait for a lane that never comes (it leaves when its socket
                // closes; a child already running is killed now).
                if let start::Launching::Started(child) = &launching {
                    let _ = child.signal(libc::SIGKILL);
                }
                return Err(Error::os("creating a pool worker's lane", e));
            }
        };
        // Before the child is heard from: it finds its lane behind its start message and goes
        // on, instead of waiting for this process to hear of it and answer.
        let lane_sent = launching
            .channel()
            .map_or(Ok(()), |ctrl| send_lane(ctrl, &lane_file));
        Ok(Launch {
            launching,
            start,
            name,
            log_pipe,
            lane,
            lane_file,
            lane_sent,
        })
    }

    /// The worker [`begin`](Link::begin) started, once it has: its lane made and sent.
    fn finish(launch: Launch, config: &Config) -> Result<LocalLink, Error> {
        let Launch {
            launching,
            start,
            name,
            log_pipe,
            lane,
            lane_file,
            lane_sent,
        } = launch;
        let (child, asked_again) =
            launching.finish(&start, &start_fds(config, log_pipe.as_ref()))?;
        if let Some(pipe) = log_pipe {
            pipe.relay(&name, child.pid());
        }
        // The lane went to the first request's socket; a second request's child needs it too.
        let sent = match asked_again {
            false => lane_sent,
            true => send_lane(child.channel_ref(), &lane_file),
        };
        drop(lane_file);
        if let Err(e) = sent {
            let _ = child.signal(libc::SIGKILL);
            return Err(e);
        }
        Ok(LocalLink {
            child,
            name,
            ctrl_open: true,
            outbox: Outbox::default(),
            lane,
            socket_answers: VecDeque::new(),
            placeholders: 0,
            gone: false,
            spares: Spares::default(),
            files: Mapped::default(),
            given: 0,
            answered: 0,
        })
    }

    fn send(&mut self, chunk: &Chunk, scratch: &mut Vec<u8>) -> Sent {
        // Small tasks go in the lane; a large one (or one carrying handles' descriptors) on
        // the socket, with a placeholder in the lane that keeps its place in the order.
        if let Payload::Bytes(payload) = &chunk.payload
            && chunk.handles.is_empty()
            && let Some(sent) = self.send_small(chunk.id, chunk.entry, payload, scratch, false)
        {
            if let Sent::Placed = sent {
                self.wake_if_asleep();
            }
            return sent;
        }
        scratch.clear(); // it may hold the task, encoded and found too large
        let _ = codec::encode_into(scratch, &ToWorker::<&[u8]>::OnSocket);
        let placed = match self.lane.has_room(scratch.len()) {
            Ok(true) => {
                let copies = chunk
                    .handles
                    .iter()
                    .map(|fd| fd::dup_internal(fd.as_fd()))
                    .collect::<Result<Vec<_>, _>>();
                let pushed = match copies {
                    Ok(fds) => self.push_on_socket(chunk, fds),
                    Err(e) => Err(Error::os("passing a handle to a pool worker", e)),
                };
                if let Err(e) = pushed {
                    return Sent::Refused(e);
                }
                // It had room a moment ago and only this thread writes: a refusal now
                // means the worker tampered with the lane (it is killed, so the task
                // already queued on its socket never runs).
                match self.lane.push(scratch) {
                    Ok(true) => Ok(true),
                    _ => Err(Corrupt),
                }
            }
            other => other,
        };
        self.pushed(placed)
    }

    fn send_small(
        &mut self,
        id: u64,
        entry: i64,
        payload: &[u8],
        scratch: &mut Vec<u8>,
        asleep: bool,
    ) -> Option<Sent> {
        scratch.clear();
        // A frame is the payload and a few words (see `FRAME_OVERHEAD`), written without the
        // codec's passes.
        if !Lane::fits(payload.len() + FRAME_OVERHEAD) {
            return None;
        }
        crate::wire::message::write_task(scratch, id, entry, payload);
        let small = Lane::fits(scratch.len());
        // The reader's word, stored with the frame, after its bytes (see `Lane::push_asleep`),
        // names the task this chunk will be.
        let asleep = asleep.then_some(self.given + 1);
        let pushed = small.then(|| self.lane.push_asleep(scratch, asleep))?;
        Some(self.pushed_unwoken(pushed))
    }

    fn wake_if_asleep(&mut self) {
        if self.lane.peer_needs_wake() {
            let _ = self.outbox.push(&ToWorker::<&[u8]>::Wake);
            let _ = self.outbox.flush(self.child.channel());
        }
    }

    fn stop(&mut self) {
        let _ = self.outbox.push(&ToWorker::<&[u8]>::Stop);
    }

    /// A worker whose socket is broken is dying; its exit is handled when it is seen.
    fn flush(&mut self) {
        let _ = self.outbox.flush(self.child.channel());
    }

    fn queued(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Reads the lane, in order, taking large answers from the socket at their placeholders.
    fn next_answer(&mut self, scratch: &mut Vec<u8>) -> Result<Option<Answer>, Error> {
        let answer = self.next_answer_uncounted(scratch)?;
        self.answered += u64::from(answer.is_some());
        Ok(answer)
    }

    /// Reads its socket: answers there wait for their place in the lane's order.
    fn next_note(&mut self) -> Option<Note> {
        while self.ctrl_open {
            let frame = match self.child.channel().try_recv_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(e) => {
                    // Closed, or garbage that cannot be framed: either way it can say nothing
                    // more. Closed mid-frame is a death while sending (its exit tells how),
                    // not garbage.
                    self.ctrl_open = false;
                    if *e.kind() != ErrorKind::Closed && !self.child.channel().at_eof() {
                        return Some(Note::Garbage(e));
                    }
                    return Some(Note::Closed);
                }
            };
            match channel::decode_message::<FromWorker>(&frame) {
                Ok(FromWorker::Ready) => return Some(Note::Ready),
                Ok(FromWorker::InitFailed(e)) => return Some(Note::InitFailed(e)),
                Ok(FromWorker::Done { id, result }) => {
                    self.socket_answers.push_back((id, answered(result)));
                }
                Ok(FromWorker::DoneWithHandles {
                    id,
                    result,
                    handles,
                }) => {
                    let want = handles as usize;
                    let handles = self.child.channel().take_fds_n(want);
                    if handles.len() == want {
                        let answer = Answered {
                            bytes: Received::Bytes(result.into_vec()),
                            handles,
                        };
                        self.socket_answers.push_back((id, Ok(answer)));
                    } else if self.child.channel().take_fds_dropped() {
                        // Lost here (at this process's descriptor limit): that task fails
                        // alone, its worker is fine.
                        let e = channel::fds_dropped_error("receiving a pool task's answer");
                        self.socket_answers.push_back((id, Err(e)));
                    } else {
                        self.ctrl_open = false;
                        return Some(Note::Garbage(Error::protocol(
                            "a pool worker's answer came without the descriptors it announced",
                        )));
                    }
                }
                Ok(FromWorker::DoneInFile { id, len, handles }) => {
                    let want = handles as usize + 1;
                    let mut fds = self.child.channel().take_fds_n(want);
                    if fds.len() != want && self.child.channel().take_fds_dropped() {
                        // As above: its file, or handles, lost here.
                        let e = channel::fds_dropped_error("receiving a pool task's answer");
                        self.socket_answers.push_back((id, Err(e)));
                    } else {
                        let (Some(file), true) = (fds.pop(), fds.len() + 1 == want) else {
                            self.ctrl_open = false;
                            return Some(Note::Garbage(Error::protocol(
                                "a pool worker's answer in a memory file came without its \
                                 descriptors",
                            )));
                        };
                        let answer = self.files.keep(file.as_fd(), len).map(|m| Answered {
                            bytes: Received::InFile(m),
                            handles: fds,
                        });
                        self.socket_answers.push_back((id, answer));
                    }
                }
                Ok(FromWorker::Wake) => {}
                Ok(FromWorker::OnSocket) => {
                    return Some(Note::Garbage(Error::protocol(
                        "a pool worker sent a lane message",
                    )));
                }
                Err(e) => return Some(Note::Garbage(e)),
            }
            // Descriptors no message accounts for, or answers to tasks it was never given:
            // not our worker's doing. It goes before it can fill this process's table.
            let unclaimed = self.child.channel().pending_fds() > crate::sys::socket::MAX_FDS;
            let unasked = self.answered + self.socket_answers.len() as u64 > self.given;
            if unclaimed || unasked {
                self.ctrl_open = false;
                drop(self.child.channel().take_fds());
                return Some(Note::Garbage(Error::protocol(if unclaimed {
                    "a pool worker sent descriptors no message accounts for"
                } else {
                    "a pool worker answered tasks it was never given"
                })));
            }
        }
        None
    }

    fn started(&self) -> u64 {
        self.lane.started()
    }

    fn pid(&self) -> Option<u32> {
        Some(self.child.pid())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn work(&self, now_ns: u64) -> (u64, u64) {
        self.lane.work(now_ns)
    }

    fn revoke(&self, task: u64) -> bool {
        self.lane.revoke(task)
    }

    fn prepare_sleep(&self, ahead: u64) -> bool {
        // Woken by an answer once it has taken the chunk `ahead` places before the last one
        // given (or it runs dry).
        let started = if ahead == 0 { 0 } else { self.given.saturating_sub(ahead) };
        self.lane.prepare_sleep_until(started)
    }

    fn prepare_sleep_held(&self, held: u64) -> bool {
        // The first of them: the task number the last one given was, less the others.
        let first = (self.given + 1).saturating_sub(held).max(1);
        self.lane.prepare_sleep_until(first)
    }

    fn awake(&self) {
        self.lane.awake();
    }

    fn say_cpu(&self, cpu: u32, room: Option<bool>) -> Peer {
        self.lane.say_cpu(cpu, room)
    }

    /// Its exit descriptor and, while open, its control socket.
    fn watch(&self, fds: &mut Vec<(RawFd, bool)>, write: bool) -> usize {
        fds.push((self.child.exit_fd().as_raw_fd(), false));
        if !self.ctrl_open {
            return 1;
        }
        let write = write && !self.outbox.is_empty();
        fds.push((self.child.channel_fd().as_raw_fd(), write));
        2
    }

    fn polled(&mut self, ready: &[fd::Ready]) -> Polled {
        let exit = ready.first().copied().unwrap_or_default();
        let ctrl = ready.get(1).copied().unwrap_or_default();
        if ctrl.writable {
            let _ = self.outbox.flush(self.child.channel());
        }
        Polled {
            read: ctrl.readable || ctrl.hangup,
            exited: exit.readable || exit.hangup,
        }
    }

    fn exited(&mut self) -> Option<Error> {
        let exit = self.child.poll_exit().unwrap_or(Some(Exit::Unknown))?;
        self.gone = true;
        // A child ended here, off any start's way: the fork server's kits made now.
        crate::start::forkserver::top_up();
        Some(Error::lost(&self.name, self.child.pid(), exit))
    }

    fn kill(&mut self) {
        let _ = self.child.signal(libc::SIGKILL);
    }

    fn wait(&mut self, deadline: Option<Instant>) -> bool {
        let ended = matches!(self.child.wait(deadline), Ok(Some(_)));
        if ended {
            // As in `exited`.
            crate::start::forkserver::top_up();
        }
        ended
    }
}

/// A worker's answer as the dispatcher keeps it.
fn answered(result: Result<serde_bytes::ByteBuf, Error>) -> Result<Answered, Error> {
    result.map(|b| Answered::from(b.into_vec()))
}
