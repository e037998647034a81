//! The messages of the start-up and result protocol.
//!
//! Parent to child, on the child's control socket: one [`Start`]. Child to parent: one
//! [`Outcome`], then the child exits. Parent to fork server: one [`Hello`], answered by one
//! [`Welcome`]; then one [`ToServer::Fork`] per child, carrying the child's control socket and
//! a status socket; on the status socket the child announces itself ([`Forked`], with a pidfd
//! attached), and the server later sends the child's [`crate::sys::proc::Exit`]. The server lends each spare child it
//! forks to the client ([`Lent`]), made with sockets the client gave it ahead
//! ([`ToServer::Kit`]); a client that starts one says so ([`ToServer::Took`]), and the server
//! reports that child's exit on the status socket of its kit.
//!
//! A pool worker gets [`ToWorker::Lane`] (its lane's memory file attached) after its `Start`;
//! then [`ToWorker`] and [`FromWorker`] messages travel in the lane, or on the socket when they
//! are too large for it (a `OnSocket` placeholder keeps their place in the lane) or wake a
//! sleeping peer (`Wake`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, PanicReport};

/// Everything a child needs to run its target.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Start {
    /// The parent's build identity; the child refuses to run if its own differs.
    pub(crate) identity: u64,
    /// The offset that names the trampoline (of its entry record from the anchor symbol; see
    /// `sys::image`).
    pub(crate) entry: i64,
    /// The target's name, for messages.
    pub(crate) target: String,
    /// The child's process name.
    pub(crate) name: String,
    /// Whether it is daemonic (Python's `daemon`; the default of its own children's).
    pub(crate) daemon: bool,
    /// Python's `_identity`: the counters from the main process down to this child.
    pub(crate) lineage: Vec<u32>,
    /// The encoded argument tuple.
    #[serde(with = "serde_bytes")]
    pub(crate) args: Vec<u8>,
    /// What the child is for.
    pub(crate) role: Role,
    /// How many descriptors (of handles among the arguments) ride with this message; more
    /// may follow with later messages.
    pub(crate) handles: u32,
    /// With the `tracing` feature, when the parent wants events: the most verbose level it
    /// wants (0 error .. 4 trace); one more descriptor rides after the handles', the pipe the
    /// child's events go to (`relay.rs`).
    pub(crate) log: Option<u8>,
    /// Changes to the child's environment, applied in order before it runs anything.
    pub(crate) env: Vec<EnvChange>,
    /// The child's working directory, if not its parent's.
    pub(crate) cwd: Option<serde_bytes::ByteBuf>,
    /// Where its stdin, stdout and stderr go; each `File` is a descriptor riding with this
    /// message after the handles' (and before the log pipe).
    pub(crate) stdio: [Redirect; 3],
}

/// One change to a child's environment (`start/setup.rs`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum EnvChange {
    Set(serde_bytes::ByteBuf, serde_bytes::ByteBuf),
    Remove(serde_bytes::ByteBuf),
    Clear,
}

/// Where one of a child's standard streams goes.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) enum Redirect {
    #[default]
    Inherit,
    Null,
    File,
}

/// What a child is for.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Role {
    /// Call the target once with the arguments, send the [`Outcome`], exit (a `Process`).
    Call,
    /// Serve pool tasks until told to stop: `entry` names the role that does (see
    /// `start::role`) and `args` is unused.
    PoolWorker(PoolWorkerSpec),
}

/// How a pool worker starts.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PoolWorkerSpec {
    /// The initializer's trampoline offset and encoded arguments, run before the first task.
    pub(crate) init: Option<(i64, serde_bytes::ByteBuf)>,
}

/// Dispatcher to pool worker. `P` is the payload's type: borrowed when sent, owned when
/// received; the bytes on the wire are the same.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "P: serde_bytes::Serialize",
    deserialize = "P: serde_bytes::Deserialize<'de>"
))]
pub(crate) enum ToWorker<P> {
    /// Run the chunk trampoline at `entry` on `payload` (an encoded `Vec` of argument tuples).
    Task {
        id: u64,
        entry: i64,
        #[serde(with = "serde_bytes")]
        payload: P,
        /// How many descriptors (of handles among the arguments) ride with this message.
        handles: u32,
    },
    /// Finish what was sent before, then exit. Sent on the socket; the worker first runs
    /// everything already in its lane.
    Stop,
    /// The first message to a new worker: its lane's memory file is attached.
    Lane,
    /// Sent on the socket to a worker asleep on it: its lane has frames.
    Wake,
    /// In the lane, in place of a task too large for it: the task follows on the socket.
    OnSocket,
    /// On the socket, a large task: as `Task`, its payload of `len` bytes in a memory file
    /// (`memfile`) whose descriptor follows those of the handles.
    TaskInFile {
        id: u64,
        entry: i64,
        len: u64,
        handles: u32,
    },
}

/// Pool worker to dispatcher ([`FromWorkerOf`] with owned bytes).
pub(crate) type FromWorker = FromWorkerOf<serde_bytes::ByteBuf>;

/// Pool worker to dispatcher. `B` is how an answer's bytes are held: owned ([`FromWorker`]), or
/// borrowed from the frame (`&serde_bytes::Bytes`) by a reader that copies what it keeps (the
/// same bytes on the wire).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorkerOf<B> {
    /// The initializer (if any) succeeded; tasks may come.
    Ready,
    /// The initializer failed; the worker exits.
    InitFailed(Error),
    /// A task finished: the encoded `Vec<Result<R, PanicReport>>`, one per item, or an error
    /// for the whole chunk (its arguments or results could not be converted).
    Done { id: u64, result: Result<B, Error> },
    /// Sent on the socket to a dispatcher asleep on it: the lane has answers.
    Wake,
    /// In the lane, in place of an answer too large for it: the answer went on the socket.
    OnSocket,
    /// On the socket, a large answer: as `Done` with `Ok`, its `len` bytes in a memory file
    /// (`memfile`) whose descriptor rides with this message, after those of the `handles`
    /// among its values (as `DoneWithHandles`).
    DoneInFile { id: u64, len: u64, handles: u32 },
    /// On the socket, an answer whose values hold handles (a `Buffer`): as `Done` with `Ok`,
    /// with the handles' descriptors riding with this message.
    DoneWithHandles { id: u64, result: B, handles: u32 },
}

/// `Done`'s index among `FromWorkerOf`'s variants, and `Ok`'s among `Result`'s: how the
/// codec begins a `Done` with `Ok` bytes (see [`read_done_ok`]).
const DONE: u32 = 2;
const OK: u32 = 0;

/// The commonest answer in a lane, `FromWorkerOf::Done` with `Ok` bytes, read without serde:
/// its id and its bytes, borrowed; `None` for any other message, or one that does not fill
/// `frame` exactly (those go the general way, [`crate::wire::codec::decode_borrowed`], which
/// says what is wrong). The same bytes the codec reads (a test holds the two together): the
/// variant's index (`u32`), the id (`u64`), `Ok`'s index (`u32`), the length (`u64`), the
/// bytes. Serde's way takes about 22 ns here, this one 2 (issue 15, item 4: every `apply`'s
/// answer is read so, on the way from the worker to its caller).
pub(crate) fn read_done_ok(frame: &[u8]) -> Option<(u64, &[u8])> {
    let (head, bytes) = frame.split_first_chunk::<24>()?;
    let (variant, rest) = head.split_first_chunk::<4>()?;
    let (id, rest) = rest.split_first_chunk::<8>()?;
    let (ok, len) = rest.split_first_chunk::<4>()?;
    let len = u64::from_le_bytes(*len.first_chunk::<8>()?);
    (u32::from_le_bytes(*variant) == DONE
        && u32::from_le_bytes(*ok) == OK
        && u64::try_from(bytes.len()).is_ok_and(|n| n == len))
    .then_some((u64::from_le_bytes(*id), bytes))
}

/// `Task`'s index among `ToWorker`'s variants.
const TASK: u32 = 0;

/// Writes `ToWorker::Task { id, entry, payload, handles: 0 }` at the end of `out`, as the
/// codec would (a test holds the two together), without its two passes: every call's frame.
pub(crate) fn write_task(out: &mut Vec<u8>, id: u64, entry: i64, payload: &[u8]) {
    let mut head = [0; 28];
    head[..4].copy_from_slice(&TASK.to_le_bytes());
    head[4..12].copy_from_slice(&id.to_le_bytes());
    head[12..20].copy_from_slice(&entry.to_le_bytes());
    head[20..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    out.reserve(head.len() + payload.len() + 4);
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// A `ToWorker::Task` with no handles read without serde: its id, entry and payload,
/// borrowed; `None` for anything else, or a frame it does not fill exactly (those go the
/// codec's way, which says what is wrong).
pub(crate) fn read_task(frame: &[u8]) -> Option<(u64, i64, &[u8])> {
    let (head, rest) = frame.split_first_chunk::<28>()?;
    let (variant, head) = head.split_first_chunk::<4>()?;
    let (id, head) = head.split_first_chunk::<8>()?;
    let (entry, len) = head.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len.first_chunk::<8>()?)).ok()?;
    let (payload, handles) = rest.split_at_checked(len)?;
    (u32::from_le_bytes(*variant) == TASK && handles == [0; 4])
        .then_some((u64::from_le_bytes(*id), i64::from_le_bytes(*entry), payload))
}

/// Writes `FromWorker::Done { id, result: Ok(bytes) }` at the end of `out`, as the codec
/// would (see [`read_done_ok`]), without its two passes: a pool worker's every quick answer.
pub(crate) fn write_done_ok(out: &mut Vec<u8>, id: u64, bytes: &[u8]) {
    let mut head = [0; 24];
    head[..4].copy_from_slice(&DONE.to_le_bytes());
    head[4..12].copy_from_slice(&id.to_le_bytes());
    head[12..16].copy_from_slice(&OK.to_le_bytes());
    head[16..].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.reserve(head.len() + bytes.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(bytes);
}

/// How a target ended, sent by the child just before it exits.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// It returned; the encoded value.
    Returned(#[serde(with = "serde_bytes")] Vec<u8>),
    /// It panicked.
    Panicked(PanicReport),
    /// Its arguments or result could not be converted.
    Failed(Error),
    /// The child runs a different build and did not call anything.
    Refused,
}

/// The first message to a new fork server.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) identity: u64,
}

/// The fork server's answer to [`Hello`]: whether the builds match. When they do, the memory
/// file of the words its spares sleep on rides along, if it could make one.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Welcome {
    pub(crate) accepted: bool,
}

/// What a client tells its fork server, after the handshake.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToServer {
    /// Asks for a child; the child's control socket and the status socket ride along as
    /// descriptors, then a kit's two if `kit` names one (see [`ToServer::Kit`]).
    Fork { kit: Option<u64> },
    /// The spare lent to the client ([`Lent`]), `pid`, was taken for a start: it is the
    /// client's child now, and the server forks the next spare (at once if `late`: told after
    /// the child had started, not as it started). A kit's two descriptors ride along if `kit`
    /// names one.
    Took {
        pid: u32,
        kit: Option<u64>,
        late: bool,
    },
    /// Kit number `id` for a spare to lend: the client's own socket pairs, of which the spare's
    /// control socket and the server's end of a status socket ride along (the client keeps the
    /// other ends). A spare made with one is lent without a descriptor in flight (see
    /// [`Lent`]).
    Kit { id: u64 },
}

/// The fork server lends the client its spare child `pid`, made with the client's kit number
/// `kit` ([`ToServer::Kit`]): the client may start it itself, without a round trip through the
/// server, on the control socket it kept of that kit, by moving the word it sleeps on (number
/// `slot` in the page sent with [`Welcome`]) from `idle`; the server reports its exit on the
/// kit's status socket. No descriptor rides along: one left unread in a Unix socket makes the
/// kernel schedule its garbage collector at every Unix socket closed on the machine, and a lent
/// spare may wait long.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Lent {
    pub(crate) pid: u32,
    pub(crate) slot: u32,
    pub(crate) idle: u32,
    pub(crate) kit: u64,
}

/// The fork server's first answer on a status socket: the child's pid (a pidfd is attached).
/// Its `tag` ([`Forked::TAG`]) tells it from the server's report of the child's exit, which
/// comes first when the child died before it could announce itself: by the bytes, not by the
/// pidfd, which a receiver at its descriptor limit does not get.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Forked {
    pub(crate) pid: u32,
    pub(crate) tag: u64,
}

impl Forked {
    /// "mprocFrk". No `Exit` encodes to as many bytes as a `Forked`, let alone with these.
    pub(crate) const TAG: u64 = u64::from_le_bytes(*b"mprocFrk");

    /// The announcement of child `pid`.
    pub(crate) fn of(pid: u32) -> Forked {
        Forked {
            pid,
            tag: Forked::TAG,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec;

    /// One of each message a worker sends, `answer` the bytes of those that carry some.
    fn every_answer(answer: &[u8]) -> [FromWorker; 7] {
        [
        FromWorker::Ready,
        FromWorker::Done {
            id: 7,
            result: Ok(serde_bytes::ByteBuf::from(answer.to_vec())),
        },
        FromWorker::Done {
            id: 8,
            result: Err(Error::protocol("no")),
        },
        FromWorker::Wake,
        FromWorker::OnSocket,
        FromWorker::DoneInFile {
            id: 9,
            len: 10,
            handles: 1,
        },
        FromWorker::DoneWithHandles {
            id: 11,
            result: serde_bytes::ByteBuf::from(answer.to_vec()),
            handles: 2,
        },
    ]
    }

    /// The quick writing and reading of a call's `Task` make and find what the codec does,
    /// and the reading finds nothing in any other message, a cut one, one with handles, or
    /// one with bytes after its end.
    #[test]
    fn a_task_written_and_read_quickly_is_the_task_the_codec_writes_and_reads() {
        for (id, entry, payload) in [
            (7u64, 5i64, &[1u8, 2, 3][..]),
            (u64::MAX, i64::MIN, &[][..]),
            (1 << 40, -9, &[9; 300][..]),
        ] {
            let task = ToWorker::Task {
                id,
                entry,
                payload,
                handles: 0,
            };
            let frame = codec::encode(&task).unwrap();
            let mut written = vec![5];
            write_task(&mut written, id, entry, payload);
            assert_eq!(written[1..], frame);
            assert_eq!(read_task(&frame), Some((id, entry, payload)));
            for cut in 0..frame.len() {
                assert_eq!(read_task(&frame[..cut]), None, "cut at {cut}");
            }
            let mut longer = frame.clone();
            longer.push(0);
            assert_eq!(read_task(&longer), None);
            let with_handles = ToWorker::Task {
                id,
                entry,
                payload,
                handles: 1,
            };
            assert_eq!(read_task(&codec::encode(&with_handles).unwrap()), None);
        }
        for other in [
            ToWorker::<&[u8]>::Stop,
            ToWorker::Lane,
            ToWorker::Wake,
            ToWorker::OnSocket,
            ToWorker::TaskInFile {
                id: 1,
                entry: 2,
                len: 3,
                handles: 0,
            },
        ] {
            assert_eq!(read_task(&codec::encode(&other).unwrap()), None);
        }
    }

    /// The quick writing and reading of a `Done` with `Ok` bytes make and find what the codec
    /// does, and the reading finds nothing in any other message, a cut one, or one with bytes
    /// after its end.
    #[test]
    fn an_answer_read_quickly_is_the_answer_the_codec_reads() {
        let answer = vec![1u8, 2, 3, 250];
        let ok = |id, bytes: &[u8]| FromWorker::Done {
            id,
            result: Ok(serde_bytes::ByteBuf::from(bytes.to_vec())),
        };
        for (id, bytes) in [(7, &answer[..]), (u64::MAX, &[][..]), (1 << 40, &[9; 300][..])] {
            let frame = codec::encode(&ok(id, bytes)).unwrap();
            let mut written = vec![5];
            write_done_ok(&mut written, id, bytes);
            assert_eq!(written[1..], frame, "written as the codec writes it, after what was there");
            assert_eq!(read_done_ok(&frame), Some((id, bytes)));
            let Ok(FromWorkerOf::Done { id: read, result: Ok(b) }) =
                codec::decode_borrowed::<FromWorkerOf<&serde_bytes::Bytes>>(&frame)
            else {
                panic!("the codec reads it");
            };
            assert_eq!((read, &b[..]), (id, bytes));
            for cut in 0..frame.len() {
                assert_eq!(read_done_ok(&frame[..cut]), None, "cut at {cut}");
            }
            let mut longer = frame.clone();
            longer.push(0);
            assert_eq!(read_done_ok(&longer), None);
        }
        for message in every_answer(&answer) {
            let frame = codec::encode(&message).unwrap();
            let quick = read_done_ok(&frame);
            match message {
                FromWorker::Done { id, result: Ok(b) } => assert_eq!(quick, Some((id, &b[..]))),
                _ => assert_eq!(quick, None),
            }
        }
    }

    /// A dispatcher reads answers borrowed from their frame (`FromWorkerOf<&Bytes>`): the
    /// bytes a worker sends (`FromWorker`, owned) read the same that way, every variant.
    #[test]
    fn answers_read_borrowed_are_the_answers_sent() {
        for msg in every_answer(&[1u8, 2, 3, 250]) {
            let bytes = codec::encode(&msg).unwrap();
            let read: FromWorkerOf<&serde_bytes::Bytes> = codec::decode_borrowed(&bytes).unwrap();
            let same = match (&msg, &read) {
                (FromWorker::Ready, FromWorkerOf::Ready)
                | (FromWorker::Wake, FromWorkerOf::Wake)
                | (FromWorker::OnSocket, FromWorkerOf::OnSocket) => true,
                (
                    FromWorker::Done { id: a, result: ra },
                    FromWorkerOf::Done { id: b, result: rb },
                ) => {
                    a == b
                        && match (ra, rb) {
                            (Ok(x), Ok(y)) => x.as_slice() == &y[..],
                            (Err(x), Err(y)) => x.to_string() == y.to_string(),
                            _ => false,
                        }
                }
                (
                    FromWorker::DoneInFile { id, len, handles },
                    FromWorkerOf::DoneInFile {
                        id: i,
                        len: l,
                        handles: h,
                    },
                ) => (id, len, handles) == (i, l, h),
                (
                    FromWorker::DoneWithHandles {
                        id,
                        result,
                        handles,
                    },
                    FromWorkerOf::DoneWithHandles {
                        id: i,
                        result: r,
                        handles: h,
                    },
                ) => (id, handles) == (i, h) && result.as_slice() == &r[..],
                _ => false,
            };
            assert!(same, "{msg:?} read as {read:?}");
        }
    }
}
