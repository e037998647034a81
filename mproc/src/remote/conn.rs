//! Connections to Redis and the shapes of its replies.
//!
//! Every blocking read has a connection of its own (a command queued behind a blocked
//! `XREADGROUP` would wait for it), and every connection has read and write timeouts, so a
//! server that stops answering is an error, never a hang.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use redis::{Connection, Value};

use crate::error::{Error, ErrorKind};
use crate::sys::fd;

/// Where Redis is and how to reach it. Its `Debug` leaves the password out.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) url: String,
    /// A PEM file of the certificate authority to trust for `rediss://` (else the system's).
    pub(crate) ca: Option<PathBuf>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.shown())
            .field("ca", &self.ca)
            .finish()
    }
}

/// How long a command may take before the server counts as gone (a blocking read adds its
/// own block time).
pub(crate) const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

impl Endpoint {
    /// The URL without its password, for messages.
    pub(crate) fn shown(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}://…@{}", &self.url[..s], &self.url[at + 1..]),
            _ => self.url.clone(),
        }
    }

    fn client(&self) -> Result<redis::Client, Error> {
        if self.url.starts_with("rediss://") {
            // redis enables rustls without a crypto provider; ours is ring (the only one
            // built in). Installing it twice is harmless. (Deprecated for lacking post-quantum
            // key exchange, which aws-lc-rs has; it needs cmake to build.)
            #[allow(deprecated)]
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let made = match &self.ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::os(format!("reading the CA certificate {}", path.display()), e)
                })?;
                redis::Client::build_with_tls(
                    self.url.as_str(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
            }
            None => redis::Client::open(self.url.as_str()),
        };
        made.map_err(|e| broker(format!("the Redis URL {}", self.shown()), &e))
    }

    /// A new connection, with timeouts.
    pub(crate) fn connect(&self) -> Result<Connection, Error> {
        self.dial().map_err(|(e, _)| e)
    }

    /// A new connection, with timeouts; on failure, the error and whether it may pass by
    /// itself ([`may_pass`]).
    fn dial(&self) -> Result<Connection, (Error, bool)> {
        let client = self.client().map_err(|e| (e, false))?;
        let what = format!("connecting to Redis at {}", self.shown());
        let con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .map_err(|e| (broker(what, &e), may_pass(&e)))?;
        con.set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| con.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| (broker("setting the Redis connection's timeouts", &e), false))?;
        Ok(con)
    }

    /// Whether Redis answers now: a connection made (authenticated, as the URL says) and a
    /// `PING` answered; a refusal of the `PING` itself (an ACL without `+ping`) is an answer
    /// too. On failure, the error and whether it may pass by itself ([`may_pass`]).
    pub(crate) fn reach(&self) -> Result<(), (Error, bool)> {
        let mut con = self.dial()?;
        match redis::cmd("PING").query::<Value>(&mut con) {
            Err(e) if may_pass(&e) => {
                Err((broker(format!("connecting to Redis at {}", self.shown()), &e), true))
            }
            _ => Ok(()),
        }
    }

    /// Whether connections go through a Unix socket.
    fn is_unix(&self) -> bool {
        self.url.starts_with("unix:") || self.url.starts_with("redis+unix:")
    }

    /// A new connection and, on a Unix socket, the descriptor under it (for
    /// [`Conn::ask`]), found by a `PING` of a random token and a peek for its answer among
    /// the sockets that appeared while connecting; `None` where it cannot be found (another
    /// thread reused a number meanwhile, or the server refused the `PING`): reads then block
    /// as the crate's do.
    fn connect_located(&self) -> Result<(Connection, Option<RawFd>), Error> {
        if !self.is_unix() {
            return Ok((self.connect()?, None));
        }
        let before: std::collections::HashSet<(RawFd, u64)> = fd::sockets().into_iter().collect();
        let mut con = self.connect()?;
        // By inode too: a number another thread closed meanwhile may be this connection's
        // now (threads of an agent dial again together), and was in `before`.
        let new: Vec<RawFd> = fd::sockets()
            .into_iter()
            .filter(|s| !before.contains(s))
            .map(|s| s.0)
            .collect();
        if new.is_empty() {
            return Ok((con, None));
        }
        let random = || crate::sys::proc::random_u64().map_err(|e| Error::os("getrandom", e));
        let token = format!("{:016x}{:016x}", random()?, random()?);
        let what = "finding the Redis connection's socket";
        // `PING <token>` answers the token as a bulk string (RESP2 and RESP3 alike), and the
        // README's ACL user may send it (`ECHO` it may not).
        con.send_packed_command(&redis::cmd("PING").arg(&token).get_packed_command())
            .map_err(|e| broker(what, &e))?;
        let answer = format!("${}\r\n{token}\r\n", token.len());
        let found = fd::peek_for(&new, answer.as_bytes(), fd::deadline_after(REPLY_TIMEOUT));
        match con.recv_response() {
            Ok(v) if v == Value::BulkString(token.into_bytes()) => Ok((con, found)),
            // Refused (an ACL without `+ping`, a renamed command): reads will block.
            Ok(_) => Ok((con, None)),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                Err(broker(what, &e))
            }
            Err(_) => Ok((con, None)),
        }
    }
}

/// A connection that survives a stop and continue of this process: blocked socket reads
/// with timeouts fail with `EINTR` when the process is resumed (signal(7)), in the middle of
/// a reply, so the connection cannot be trusted after one. It is replaced, and what was lost
/// with it is sent again: the command that was interrupted, and every pipeline sent with
/// [`send`](Conn::send) whose replies were not read yet (callers send only commands that may
/// run twice: a submitter's batch of tasks goes through the `SUBMIT` script, which writes a
/// batch sent again only once). [`Conn::take_reconnected`] tells the caller, who may have to look again at
/// what a lost reply would have said (a consumer's pending entries). A connection made
/// [`redialing`](Conn::redialing) survives being dropped the same way, within a bound.
pub(crate) struct Conn {
    endpoint: Endpoint,
    con: Connection,
    /// Whether to look for the socket under each connection (for [`Conn::ask`]).
    polled: bool,
    /// The socket under `con`, where found (Unix sockets only): [`Conn::ask`] waits on it.
    fd: Option<RawFd>,
    read_timeout: Duration,
    reconnected: bool,
    /// A reply may still come that nothing will read (a read failed or gave up): the
    /// connection is replaced before it is used again, so that no command reads another's
    /// reply.
    stale: bool,
    /// Pipelines sent and not read yet, oldest first, with how many replies each has.
    unread: std::collections::VecDeque<(Vec<u8>, usize)>,
    /// How long a connection that was dropped (or went silent) is dialled again before its
    /// failure is the caller's ([`redialing`](Conn::redialing); zero: not at all).
    redial: Duration,
    /// The connection failed under a command and is not replaced yet (only with `redial`):
    /// its unread pipelines go again, in order, on the next one.
    lost: bool,
    /// Redis was not reached again within `redial` once: a next failure is dialled again
    /// once only.
    unreachable: bool,
    /// The name each connection gives itself (`CLIENT SETNAME`), for `CLIENT LIST`.
    name: Option<String>,
    /// Where `fd` is known, replies are read off it here, not through the crate (whose
    /// parser costs several microseconds a reply): bytes read and not parsed yet.
    inbox: Inbox,
    /// The scripts its pipelines call by digest, loaded again when the server says it has
    /// forgotten them ([`loads_again`](Conn::loads_again)).
    scripts: &'static [&'static str],
}

/// Bytes read off a connection's socket, `buf[lo..hi]` not parsed yet.
#[derive(Default)]
struct Inbox {
    buf: Vec<u8>,
    lo: usize,
    hi: usize,
    /// How many bytes from `lo` the reply there needs before it can be whole (what
    /// [`resp::measure`](super::resp::measure) said): it is not looked at again before.
    need: usize,
}

/// The most room made at once for a reply that says it needs more (a larger one grows as
/// its bytes come, as far as memory allows, as with the crate).
const PREPARE_AT_MOST: usize = 64 << 20;

impl Inbox {
    fn clear(&mut self) {
        (self.lo, self.hi, self.need) = (0, 0, 0);
    }

    /// Room at the end for the next read, at least enough for what the reply at `lo` needs
    /// (up to [`PREPARE_AT_MOST`]): moves what is unparsed to the front, or grows.
    fn room(&mut self) -> &mut [u8] {
        if self.lo == self.hi {
            (self.lo, self.hi) = (0, 0);
        }
        let want = self.need.min(PREPARE_AT_MOST).max(self.hi - self.lo + 1);
        if self.buf.len() - self.lo < want || self.hi == self.buf.len() {
            if self.lo > 0 {
                self.buf.copy_within(self.lo..self.hi, 0);
                (self.lo, self.hi) = (0, self.hi - self.lo);
            }
            if self.hi == self.buf.len() || self.buf.len() < want {
                let grown = (self.buf.len() * 2).max(want).max(64 << 10);
                self.buf.resize(grown, 0);
            }
        }
        &mut self.buf[self.hi..]
    }
}

impl Conn {
    /// A connection whose reads may block `block` longer than a plain command's.
    pub(crate) fn open(endpoint: &Endpoint, block: Duration) -> Result<Conn, Error> {
        Conn::open_with(endpoint, block, false)
    }

    /// The same, for a thread that waits on it with [`ask`](Self::ask): on a Unix socket,
    /// each connection's descriptor is looked for (a `PING` and a look at this process's
    /// descriptors), so that `ask` can wait in poll(2).
    pub(crate) fn open_polled(endpoint: &Endpoint, block: Duration) -> Result<Conn, Error> {
        Conn::open_with(endpoint, block, true)
    }

    fn open_with(endpoint: &Endpoint, block: Duration, polled: bool) -> Result<Conn, Error> {
        let (con, fd) = Conn::connect(endpoint, polled)?;
        let mut conn = Conn {
            endpoint: endpoint.clone(),
            con,
            polled,
            fd,
            stale: false,
            read_timeout: REPLY_TIMEOUT + block,
            reconnected: false,
            unread: std::collections::VecDeque::new(),
            redial: Duration::ZERO,
            lost: false,
            unreachable: false,
            name: None,
            inbox: Inbox::default(),
            scripts: &[],
        };
        conn.set_timeout()?;
        Ok(conn)
    }

    /// The same connection, named `name` (in `CLIENT LIST`; a server that refuses the name
    /// is not an error), and dialled again when it is dropped or goes silent: a `CLIENT
    /// KILL`, a proxy's or a NAT's timeout, a server's `timeout` closing idle clients. Its
    /// commands are then sent again on the new one, unread pipelines first, in order; so
    /// every command it is given must be one that may run twice (a submitter's batch goes
    /// through the `SUBMIT` script, which writes a batch sent again only once). Past
    /// `within` of tries, the command fails: Redis counts as gone.
    pub(crate) fn redialing(mut self, within: Duration, name: String) -> Conn {
        self.redial = within;
        self.name = Some(name);
        // Lost already: the first command dials again.
        self.lost = self.set_name().is_err();
        self
    }

    /// The same connection, whose pipelines call `scripts` by digest (`EVALSHA`): a pipeline
    /// the server answers `NOSCRIPT` (it forgot them: restarted, even with its data, or
    /// `SCRIPT FLUSH` run) has them loaded again and goes again, when nothing was sent after
    /// it (else its error is the caller's, as without this). A pipeline that goes again may
    /// run twice in part: its commands must be ones that may (as for [`redialing`]).
    ///
    /// [`redialing`]: Conn::redialing
    pub(crate) fn loads_again(mut self, scripts: &'static [&'static str]) -> Conn {
        self.scripts = scripts;
        self
    }

    /// The same connection, named `name` (in `CLIENT LIST`, and again on each connection that
    /// replaces it; a server that refuses the name is not an error), not dialled again by
    /// itself: its owner decides what a lost connection means. A connection lost under the
    /// name is replaced at its next use.
    pub(crate) fn named(mut self, name: &str) -> Conn {
        self.name = Some(name.to_owned());
        self.stale |= self.set_name().is_err();
        self
    }

    /// Names the connection, if it has a name: before any command of its own is sent. A
    /// refusal (an ACL without `+client|setname`) leaves it unnamed and fine; a connection
    /// that failed under it is not used.
    fn set_name(&mut self) -> Result<(), Error> {
        let Some(name) = &self.name else {
            return Ok(());
        };
        let what = "naming the Redis connection";
        match redis::cmd("CLIENT").arg("SETNAME").arg(name).query::<()>(&mut self.con) {
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                Err(broker(what, &e))
            }
            Err(e) if e.kind() == redis::ErrorKind::Parse => Err(broker(what, &e)),
            _ => Ok(()),
        }
    }

    /// After a failed command: a connection that may have failed under it (dropped, silent
    /// past its timeout, garbled) is not used again. With `redial`, one dropped or silent
    /// keeps its unread pipelines, to send them again on the next (`lost`);
    /// else it is replaced before its next use, its unread pipelines dropped.
    fn failed_under(&mut self, e: &redis::RedisError) {
        let dropped = e.is_io_error() || e.is_timeout() || e.is_connection_dropped();
        if dropped && !self.redial.is_zero() {
            self.lost = true;
        } else if dropped || e.kind() == redis::ErrorKind::Parse {
            self.stale = true;
        }
    }

    /// Runs `op`; if the connection fails under it and this one redials, again on a new
    /// connection (its unread pipelines sent again first) until it succeeds, fails for
    /// another reason, or `redial` has passed since the first failure. No command is added
    /// when nothing fails: the hot path costs a flag's test.
    fn redialed<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut Conn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut since: Option<Instant> = None;
        let mut pause = Duration::ZERO;
        let mut failures = 0;
        loop {
            let tried = match self.lost {
                true => self.restore(what),
                false => Ok(()),
            };
            let e = match tried.and_then(|()| op(self)) {
                Ok(v) => {
                    self.unreachable = false;
                    return Ok(v);
                }
                Err(e) if self.lost => e,
                Err(e) => return Err(e),
            };
            failures += 1;
            let since = *since.get_or_insert_with(Instant::now);
            let within = if self.unreachable { Duration::ZERO } else { self.redial };
            let left = within.saturating_sub(since.elapsed());
            // A connection dropped between two commands is dialled again once, however
            // long Redis was away before.
            if left.is_zero() && failures > 1 {
                self.unreachable = true;
                let why = match e.kind() {
                    ErrorKind::Broker(why) => why.clone(),
                    _ => e.to_string(),
                };
                return Err(ErrorKind::Broker(format!(
                    "{why}; Redis at {} was not reached again within {within:?}",
                    self.endpoint.shown()
                ))
                .into());
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).clamp(Duration::from_millis(5), Duration::from_millis(100));
        }
    }

    /// A lost connection replaced, its unread pipelines sent again; still lost on failure.
    fn restore(&mut self, what: &str) -> Result<(), Error> {
        self.reconnect(what)?;
        self.lost = false;
        Ok(())
    }

    /// From now on, a connection that fails under a command is dialled again once only (for
    /// a pool's last words: its end need not wait for Redis again).
    pub(crate) fn hurry(&mut self) {
        self.unreachable = true;
    }

    fn connect(endpoint: &Endpoint, polled: bool) -> Result<(Connection, Option<RawFd>), Error> {
        match polled {
            true => endpoint.connect_located(),
            false => Ok((endpoint.connect()?, None)),
        }
    }

    /// Replaces a `stale` connection; what it had not answered is dropped.
    fn fresh(&mut self, what: &str) -> Result<(), Error> {
        if self.stale {
            self.unread.clear();
            self.reconnect(what)?;
            self.stale = false;
        }
        Ok(())
    }

    fn set_timeout(&mut self) -> Result<(), Error> {
        self.con
            .set_read_timeout(Some(self.read_timeout))
            .map_err(|e| broker("setting the Redis connection's timeouts", &e))
    }

    /// Replaces the connection and sends the unread pipelines again on the new one.
    fn reconnect(&mut self, what: &str) -> Result<(), Error> {
        self.inbox.clear();
        (self.con, self.fd) = Conn::connect(&self.endpoint, self.polled)?;
        self.set_timeout()?;
        self.set_name()?;
        self.reconnected = true;
        for (packed, _) in &self.unread {
            self.con
                .send_packed_command(packed)
                .map_err(|e| broker(what, &e))?;
        }
        Ok(())
    }

    /// Runs `f` on the connection (again on a new one if a signal interrupted it). Every
    /// reply of [`send`](Self::send) must have been read first.
    pub(crate) fn run<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        self.redialed(what, |c| c.run_once(what, &mut f))
    }

    fn run_once<T>(
        &mut self,
        what: &str,
        f: &mut impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Error> {
        // Bytes this side read and did not parse would be another command's reply: the
        // connection is out of step (never seen; a server's push message could do it).
        if self.inbox.lo != self.inbox.hi {
            self.stale = true;
        }
        self.fresh(what)?;
        debug_assert!(self.unread.is_empty(), "replies of a pipeline are unread");
        let mut tries = 0;
        loop {
            match f(&mut self.con) {
                Ok(v) => return Ok(v),
                Err(e) if interrupted(&e) && tries < 5 && self.redial.is_zero() => {
                    tries += 1;
                    self.reconnect(what)?;
                }
                Err(e) => {
                    // A reply given up on (a timeout) may still come, and a garbled one
                    // leaves the stream anywhere: the crate would skip the late reply at its
                    // next read, but this side reads some replies itself and would not. The
                    // connection is replaced before its next use. (A server's error reply,
                    // or one of the wrong type, was read whole: the connection is fine.)
                    self.failed_under(&e);
                    return Err(broker(what, &e));
                }
            }
        }
    }

    /// Sends a pipeline of `replies` commands without waiting for them; [`recv`](Self::recv)
    /// reads them, oldest pipeline first.
    pub(crate) fn send(&mut self, what: &str, packed: Vec<u8>, replies: usize) -> Result<(), Error> {
        self.fresh(what)?;
        self.unread.push_back((packed, replies));
        // Restoring a lost connection sends every unread pipeline, this one included.
        if self.lost {
            return self.redialed(what, |_| Ok(()));
        }
        let last = &self.unread.back().expect("just pushed").0;
        match self.con.send_packed_command(last) {
            Ok(()) => Ok(()),
            // Reconnecting sends every unread pipeline, this one included.
            Err(e) if interrupted(&e) && self.redial.is_zero() => self.reconnect(what),
            Err(e) => {
                self.failed_under(&e);
                if self.lost {
                    return self.redialed(what, |_| Ok(()));
                }
                self.stale = true;
                Err(broker(what, &e))
            }
        }
    }

    /// Sends a pipeline of `replies` commands and reads their replies, like [`run`](Self::run)
    /// (every reply of [`send`](Self::send) must have been read first; one that fails leaves
    /// the connection `stale`, replaced at its next use). Where the socket is
    /// known, the wait for the first reply is a poll(2), not a blocking read: a thread asleep
    /// in read(2) on a Unix socket is woken each time the server reads what it sent (the
    /// kernel's write-space wake-up reaches every sleeper on the socket) as well as by the
    /// answer; one asleep in poll is woken by the answer alone. For the commands that wait
    /// (`XREAD … BLOCK`) and those sent at every task.
    pub(crate) fn ask(
        &mut self,
        what: &str,
        packed: Vec<u8>,
        replies: usize,
    ) -> Result<Vec<Value>, Error> {
        self.fresh(what)?;
        debug_assert!(self.unread.is_empty(), "replies of a pipeline are unread");
        self.send(what, packed, replies)?;
        self.recv(what)
    }

    /// Reads the replies of the oldest pipeline sent with [`send`](Self::send) (none: an
    /// empty list).
    pub(crate) fn recv(&mut self, what: &str) -> Result<Vec<Value>, Error> {
        self.redialed(what, |c| c.recv_once(what))
    }

    fn recv_once(&mut self, what: &str) -> Result<Vec<Value>, Error> {
        // Scripts forgotten again at once, three times in a row, are not loaded a fourth.
        self.recv_pipeline(what, 3)
    }

    fn recv_pipeline(&mut self, what: &str, reloads: u32) -> Result<Vec<Value>, Error> {
        let Some(&(_, n)) = self.unread.front() else {
            return Ok(Vec::new());
        };
        let got = if let Some(sock) = self.fd {
            let got = self.recv_direct(sock, n, what);
            if got.is_err() && self.lost {
                return got; // it goes again, whole, on the next connection
            }
            // On an error, some of this pipeline's replies may still come; with every reply
            // read, bytes left over answer nothing sent (never seen): either way the
            // connection is replaced before its next use.
            if got.is_err() || (self.unread.len() == 1 && self.inbox.lo != self.inbox.hi) {
                self.stale = true;
            }
            got.inspect_err(|_| drop(self.unread.pop_front()))?
        } else {
            let mut tries = 0;
            loop {
                let got: redis::RedisResult<Vec<Value>> =
                    (0..n).map(|_| self.con.recv_response()).collect();
                match got {
                    Ok(got) => break got,
                    Err(e) if interrupted(&e) && tries < 5 && self.redial.is_zero() => {
                        tries += 1;
                        self.reconnect(what)?;
                    }
                    Err(e) => {
                        self.failed_under(&e);
                        // Some of this pipeline's replies may still come.
                        self.stale |= !self.lost;
                        return Err(broker(what, &e));
                    }
                }
            }
        };
        if reloads > 0 && self.forgot_scripts(&got) {
            // It stays the first unread while its scripts are loaded and it goes again: a
            // connection lost meanwhile sends it again on the next one.
            self.load_scripts(what)?;
            if let Some((packed, _)) = self.unread.front()
                && let Err(e) = self.con.send_packed_command(packed)
            {
                self.failed_under(&e);
                self.stale |= !self.lost;
                return Err(broker(what, &e));
            }
            return self.recv_pipeline(what, reloads - 1);
        }
        self.unread.pop_front();
        got.into_iter()
            .map(|v| v.extract_error().map_err(|e| broker(what, &e)))
            .collect()
    }

    /// Whether the replies of the first unread pipeline say the server forgot the scripts it
    /// called, and they may be loaded again and the pipeline sent again at once: this
    /// connection knows them, and nothing was sent after it (nor left unparsed).
    fn forgot_scripts(&self, replies: &[Value]) -> bool {
        !self.scripts.is_empty()
            && !self.stale
            && self.unread.len() == 1
            && self.inbox.lo == self.inbox.hi
            && replies
                .iter()
                .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"))
    }

    /// Loads this connection's scripts on the server (the only unread pipeline's replies were
    /// all read).
    fn load_scripts(&mut self, what: &str) -> Result<(), Error> {
        for script in self.scripts {
            let loaded = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(*script)
                .query::<String>(&mut self.con);
            if let Err(e) = loaded {
                self.failed_under(&e);
                self.stale |= !self.lost;
                return Err(broker(what, &e));
            }
        }
        Ok(())
    }

    /// `n` replies read off socket `sock` (`self.con`'s, open for this call) and parsed
    /// here. The crate holds no bytes of them: every reply before them was read (by the
    /// crate only for [`run`](Self::run), which leaves none unread). Waiting is a poll(2),
    /// not a blocking read: a thread asleep in read(2) on a Unix socket is woken each time
    /// the server reads what it sent (the kernel's write-space wake-up reaches every sleeper
    /// on the socket) as well as by the answer; one asleep in poll is woken by the answer
    /// alone.
    fn recv_direct(&mut self, sock: RawFd, n: usize, what: &str) -> Result<Vec<Value>, Error> {
        let gone = |c: &mut Conn, why: &str| -> Error {
            c.lost = !c.redial.is_zero();
            ErrorKind::Broker(format!(
                "{what}: {why} (the Redis server went away or stopped answering)"
            ))
            .into()
        };
        // As the crate's reads (a timeout per read), the wait runs from the last bytes.
        let mut deadline = fd::deadline_after(self.read_timeout);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let b = &self.inbox.buf[self.inbox.lo..self.inbox.hi];
            if b.len() >= self.inbox.need {
                let garbled = |e| Error::protocol(format!("{what}: a garbled reply: {e}"));
                match super::resp::measure(b).map_err(garbled)? {
                    Ok(_) => {
                        let Some((v, used)) = super::resp::build(b).map_err(garbled)? else {
                            return Err(garbled("a reply measured whole and parsed part".into()));
                        };
                        self.inbox.lo += used;
                        self.inbox.need = 0;
                        out.push(v);
                        continue;
                    }
                    Err(need) => self.inbox.need = need,
                }
            }
            match fd::recv_number(sock, self.inbox.room()) {
                Ok(0) => return Err(gone(self, "the connection closed")),
                Ok(got) => {
                    self.inbox.hi += got;
                    deadline = fd::deadline_after(self.read_timeout);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match fd::poll_numbers(&[(sock, false)], deadline) {
                        Ok(r) if r.iter().any(|r| r.readable || r.hangup) => {}
                        Ok(_) => {
                            let why = format!("no reply in {:?}", self.read_timeout);
                            return Err(gone(self, &why));
                        }
                        Err(e) => return Err(Error::os(what.to_owned(), e)),
                    }
                }
                Err(e) => return Err(gone(self, &e.to_string())),
            }
        }
        Ok(out)
    }

    /// Whether replies of pipelines sent with [`send`](Self::send) are still to be read.
    pub(crate) fn unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// Whether the connection was replaced since the last call.
    pub(crate) fn take_reconnected(&mut self) -> bool {
        std::mem::take(&mut self.reconnected)
    }
}

/// An I/O failure that is not the server's going away: `EINTR` (the crate does not say
/// which kind an I/O error was, so this takes any such; a server really gone then fails the
/// reconnection, or the next try, with a plain error).
fn interrupted(e: &redis::RedisError) -> bool {
    e.is_io_error() && !e.is_connection_dropped() && !e.is_timeout() && !e.is_connection_refusal()
}

/// A Redis failure as mproc's error, saying what was being done.
pub(crate) fn broker(what: impl std::fmt::Display, e: &redis::RedisError) -> Error {
    let hint = if e.code() == Some("NOGROUP") {
        " (the task stream's consumer group is gone: was Redis restarted without persistence?)"
    } else if e.code() == Some("NOSCRIPT") {
        " (the server forgot mproc's scripts: was Redis restarted, or SCRIPT FLUSH run?)"
    } else if (e.is_connection_dropped() || e.is_io_error() || e.is_timeout()) && may_pass(e) {
        " (the Redis server went away or stopped answering)"
    } else {
        ""
    };
    ErrorKind::Broker(format!("{what}: {e}{hint}")).into()
}

/// Whether a failure to reach Redis may pass by itself: the server not there yet (the
/// connection refused, its socket file missing), silent, its name not resolved yet, loading
/// its data, or a failover under way. One that will not: a password or user refused, a
/// certificate rejected (a TLS error anywhere in the error's sources), a socket this user may
/// not open, a bad URL.
pub(crate) fn may_pass(e: &redis::RedisError) -> bool {
    use std::error::Error as StdError;
    use std::io::ErrorKind as Io;
    type Shared = std::sync::Arc<dyn StdError + Send + Sync>;
    // The crate keeps its cause behind an `Arc` (whose `source` is the cause's own, skipping
    // it) and an `io::Error` its payload (the same): both are opened by hand.
    let mut next: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = next {
        if let Some(inner) = s.downcast_ref::<Shared>() {
            next = Some(&**inner);
            continue;
        }
        if s.is::<rustls::Error>() {
            return false;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                Io::PermissionDenied | Io::InvalidData | Io::InvalidInput | Io::Unsupported
            ) {
                return false;
            }
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
                continue;
            }
        }
        next = s.source();
    }
    match e.kind() {
        redis::ErrorKind::Io => true,
        _ => matches!(e.retry_method(), redis::RetryMethod::WaitAndRetry),
    }
}

/// One stream entry: its id and its fields.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: Vec<(String, Vec<u8>)>,
}

impl Entry {
    pub(crate) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XREAD`/`XREADGROUP` reply (of one stream); none on a timeout (nil).
pub(crate) fn stream_entries(reply: Value) -> Vec<Entry> {
    let mut out = Vec::new();
    let streams = match reply {
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        other => items(other)
            .into_iter()
            .filter_map(|s| items(s).into_iter().nth(1))
            .collect::<Vec<_>>(),
    };
    for entries in streams {
        for e in items(entries) {
            let mut parts = items(e).into_iter();
            let (Some(id), Some(fields)) = (parts.next().and_then(bytes), parts.next()) else {
                continue;
            };
            let mut kv = items(fields).into_iter();
            let mut fields = Vec::new();
            while let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                if let (Some(k), Some(v)) = (bytes(k), bytes(v)) {
                    fields.push((String::from_utf8_lossy(&k).into_owned(), v));
                }
            }
            out.push(Entry {
                id: String::from_utf8_lossy(&id).into_owned(),
                fields,
            });
        }
    }
    out
}

/// Creates the task stream's consumer group if it is not there.
pub(crate) fn ensure_group(con: &mut Conn, tasks: &str) -> Result<(), Error> {
    con.run("creating the task stream's consumer group", |c| {
        let made: redis::RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(tasks)
            .arg(super::frame::GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query(c);
        match made {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(Value::Okay),
            other => other,
        }
    })
    .map(drop)
}

/// A redis-server of a test's own, for the unit tests that need the real engine.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A redis-server of its own on a Unix socket, killed when dropped.
    pub(crate) struct Server(std::process::Child, PathBuf);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    pub(crate) fn server() -> (Server, PathBuf) {
        let n = crate::sys::proc::random_u64().unwrap();
        let dir = std::env::temp_dir().join(format!("mproc-conn-{n:x}"));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("redis.sock");
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect(
                "redis-server is not on PATH: install it with `apt-get install redis-server` \
                 (scripts/test.sh and .ci/run install it when it is missing)",
            );
        let server = Server(child, dir);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(std::time::Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        (server, sock)
    }

    pub(crate) fn at(sock: &std::path::Path, user: &str) -> Endpoint {
        Endpoint {
            url: format!("redis+unix://{}{user}", sock.display()),
            ca: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{at, server};
    use super::*;

    #[test]
    fn a_unix_connection_finds_its_socket_and_waits_on_it() {
        let (_server, sock) = server();
        let mut polled = Conn::open_polled(&at(&sock, ""), Duration::ZERO).unwrap();
        let found = polled.fd.expect("the socket under the connection");
        assert!(fd::sockets().iter().any(|s| s.0 == found));
        let set = redis::cmd("SET").arg("k").arg("v").get_packed_command();
        let get = redis::cmd("GET").arg("k").get_packed_command();
        let mut both = set;
        both.extend_from_slice(&get);
        let got = polled.ask("set and get", both, 2).unwrap();
        assert_eq!(got[1], Value::BulkString(b"v".to_vec()));
        // Connections that do not ask do not look.
        let mut plain = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        assert_eq!(plain.fd, None);
        // A user that may not PING: no socket found, and a connection that works.
        plain
            .run("adding a user", |c| {
                redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg("noping")
                    .arg("on")
                    .arg(">pw")
                    .arg("~*")
                    .arg("+@all")
                    .arg("-ping")
                    .query::<()>(c)
            })
            .unwrap();
        let mut refused =
            Conn::open_polled(&at(&sock, "?user=noping&pass=pw"), Duration::ZERO).unwrap();
        assert_eq!(refused.fd, None);
        let got = refused.ask("get", get.clone(), 1).unwrap();
        assert_eq!(got, [Value::BulkString(b"v".to_vec())]);
    }

    /// Connections made while another thread closes sockets and opens new ones (an agent's
    /// threads dial again together, its local pools start workers): each finds its own
    /// socket, at once, though its number may have been another socket's a moment before.
    #[test]
    fn a_connection_made_while_sockets_come_and_go_finds_its_own() {
        let (_server, sock) = server();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let pairs: Vec<_> = (0..4)
                        .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
                        .collect();
                    drop(pairs);
                }
            })
        };
        let mut slowest = Duration::ZERO;
        for _ in 0..100 {
            let at = std::time::Instant::now();
            let con = Conn::open_polled(&at_sock(&sock), Duration::ZERO).unwrap();
            slowest = slowest.max(at.elapsed());
            assert!(con.fd.is_some(), "the connection's socket not found");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        churn.join().unwrap();
        assert!(slowest < Duration::from_secs(2), "{slowest:?}");
    }

    fn at_sock(sock: &std::path::Path) -> Endpoint {
        at(sock, "")
    }

    /// Replies read off the socket by mproc's parser: large ones (past the first buffer),
    /// several pipelines in flight read in order, errors as errors, and the crate's own
    /// commands in between.
    #[test]
    fn replies_read_off_the_socket_come_whole_and_in_order() {
        let (_server, sock) = server();
        let mut con = Conn::open_polled(&at(&sock, ""), Duration::ZERO).unwrap();
        assert!(con.fd.is_some());
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let set = redis::cmd("SET").arg("big").arg(&big).get_packed_command();
        assert_eq!(con.ask("set", set, 1).unwrap(), [Value::Okay]);
        let get = |k: &str| redis::cmd("GET").arg(k).get_packed_command();
        con.send("get", get("big"), 1).unwrap();
        let mut two = redis::cmd("INCR").arg("n").get_packed_command();
        two.extend(redis::cmd("HGET").arg("big").arg("f").get_packed_command());
        con.send("incr and a wrong type", two.clone(), 2).unwrap();
        con.send("get", get("nothing"), 1).unwrap();
        assert_eq!(con.recv("get").unwrap(), [Value::BulkString(big.clone())]);
        let e = con.recv("incr and a wrong type").unwrap_err();
        assert!(e.to_string().contains("WRONGTYPE"), "{e}");
        assert_eq!(con.recv("get").unwrap(), [Value::Nil]);
        // The crate's turn, then this side's again.
        let n: i64 = con
            .run("get", |c| redis::cmd("GET").arg("n").query(c))
            .unwrap();
        assert_eq!(n, 1);
        let xs = redis::cmd("XADD").arg("s").arg("*").arg("f").arg("v").get_packed_command();
        let got = con.ask("xadd", xs, 1).unwrap();
        assert!(matches!(&got[0], Value::BulkString(id) if id.contains(&b'-')), "{got:?}");
    }

    /// A command of the crate's given up on (its reply late): the crate would skip that
    /// reply at its own next read, but the next reply read here is read by mproc, which
    /// must not take the late one for its own. The connection is replaced instead.
    #[test]
    fn a_late_reply_to_the_crates_command_is_not_read_as_the_next() {
        let (_server, sock) = server();
        let mut con = Conn::open_polled(&at(&sock, ""), Duration::ZERO).unwrap();
        con.run("set", |c| redis::cmd("SET").arg("k").arg("v").query::<()>(c))
            .unwrap();
        con.read_timeout = Duration::from_millis(200);
        con.set_timeout().unwrap();
        let late = con.run("waiting", |c| {
            redis::cmd("BLPOP").arg("nothing").arg(1).query::<Value>(c)
        });
        assert!(late.is_err(), "{late:?}");
        get_after_the_late_reply(&mut con);
    }

    /// Once a late reply has come (the `BLPOP`'s nil, a second after it was given up on),
    /// `GET k` read by mproc is `v`, not that nil.
    fn get_after_the_late_reply(con: &mut Conn) {
        std::thread::sleep(Duration::from_millis(1000));
        let got = con
            .ask("get", redis::cmd("GET").arg("k").get_packed_command(), 1)
            .unwrap();
        assert_eq!(got, [Value::BulkString(b"v".to_vec())]);
    }

    /// Several large strings in one reply, read off the socket as they come.
    #[test]
    fn a_reply_of_many_large_strings_comes_whole() {
        let (_server, sock) = server();
        let mut con = Conn::open_polled(&at(&sock, ""), Duration::ZERO).unwrap();
        let value = |i: u8| vec![i; 4 << 20];
        for i in 0..6u8 {
            let set = redis::cmd("SET").arg(format!("k{i}")).arg(value(i)).get_packed_command();
            assert_eq!(con.ask("set", set, 1).unwrap(), [Value::Okay]);
        }
        let mut mget = redis::cmd("MGET");
        for i in 0..6u8 {
            mget.arg(format!("k{i}"));
        }
        let got = con.ask("mget", mget.get_packed_command(), 1).unwrap();
        let want: Vec<Value> = (0..6u8).map(|i| Value::BulkString(value(i))).collect();
        assert!(got == [Value::Array(want)], "not the six strings");
    }

    #[test]
    fn a_connection_given_up_on_is_replaced_before_its_next_command() {
        let (_server, sock) = server();
        let mut con = Conn::open_polled(&at(&sock, ""), Duration::ZERO).unwrap();
        assert!(con.fd.is_some());
        con.run("set", |c| redis::cmd("SET").arg("k").arg("v").query::<()>(c))
            .unwrap();
        // A reply later than the wait for it: the `BLPOP`'s nil comes after `ask` gave up.
        con.read_timeout = Duration::from_millis(200);
        let slow = redis::cmd("BLPOP").arg("nothing").arg(1).get_packed_command();
        let e = con.ask("waiting", slow, 1).unwrap_err();
        assert!(e.to_string().contains("no reply in"), "{e}");
        // On the same connection, `GET` would read that nil as its own reply.
        let got: Option<String> = con
            .run("get", |c| redis::cmd("GET").arg("k").query(c))
            .unwrap();
        assert_eq!(got.as_deref(), Some("v"));
        get_after_the_late_reply(&mut con);
    }

    /// The ids of the connections named `name` (`CLIENT LIST`).
    fn ids_named(admin: &mut Conn, name: &str) -> Vec<String> {
        let list: String = admin
            .run("listing clients", |c| redis::cmd("CLIENT").arg("LIST").query(c))
            .unwrap();
        list.lines()
            .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .map(str::to_owned)
            .collect()
    }

    fn kill(admin: &mut Conn, name: &str) {
        let ids = ids_named(admin, name);
        assert_eq!(ids.len(), 1, "one connection named {name}: {ids:?}");
        let killed: i64 = admin
            .run("killing", |c| {
                redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&ids[0]).query(c)
            })
            .unwrap();
        assert_eq!(killed, 1);
    }

    /// A redialing connection killed under it (`CLIENT KILL`): between commands, with
    /// pipelines sent and not read, and under a blocked read. Each is dialled again, under
    /// its name, and what was lost goes again in order: every reply comes, once.
    #[test]
    fn a_redialing_connection_killed_under_it_sends_again_what_was_lost() {
        let (_server, sock) = server();
        let mut admin = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        for polled in [true, false] {
            let name = format!("redial-{polled}");
            let block = Duration::from_millis(100);
            let mut con = Conn::open_with(&at(&sock, ""), block, polled)
                .unwrap()
                .redialing(Duration::from_secs(5), name.clone());
            assert_eq!(con.fd.is_some(), polled);
            // Between two commands.
            kill(&mut admin, &name);
            let set = |k: &str, v: &str| redis::cmd("SET").arg(k).arg(v).get_packed_command();
            con.run("set", |c| redis::cmd("SET").arg("a").arg("1").query::<()>(c))
                .unwrap();
            // Pipelines sent, the connection killed before their replies are read: both go
            // again, in order, on the next one.
            kill(&mut admin, &name);
            con.send("set", set("b", "2"), 1).unwrap();
            let mut two = set("c", "3");
            two.extend(redis::cmd("GET").arg("b").get_packed_command());
            con.send("set and get", two, 2).unwrap();
            assert_eq!(con.recv("set").unwrap(), [Value::Okay]);
            let got = con.recv("set and get").unwrap();
            assert_eq!(got, [Value::Okay, Value::BulkString(b"2".to_vec())]);
            // Under a blocked read.
            let read = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(2000)
                .arg("STREAMS")
                .arg("s")
                .arg("0-0")
                .get_packed_command();
            let killer = {
                let mut admin = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
                let name = name.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    kill(&mut admin, &name);
                    std::thread::sleep(Duration::from_millis(200));
                    admin
                        .run("xadd", |c| {
                            redis::cmd("XADD").arg("s").arg("*").arg("f").arg("v").query::<()>(c)
                        })
                        .unwrap();
                })
            };
            let at = std::time::Instant::now();
            let got = con.ask("xread", read, 1).unwrap();
            killer.join().unwrap();
            assert!(at.elapsed() < Duration::from_secs(2), "{:?}", at.elapsed());
            assert_eq!(stream_entries(got.into_iter().next().unwrap()).len(), 1);
            assert!(con.take_reconnected());
            assert_eq!(ids_named(&mut admin, &name).len(), 1, "named again");
            admin
                .run("clean", |c| redis::cmd("DEL").arg("s").query::<()>(c))
                .unwrap();
        }
    }

    /// A server silent past a redialing connection's reply timeout (all clients paused, as
    /// a NAT that drops a connection without a word looks): the command goes again on a new
    /// connection once the server answers, and the old one's late reply is read by no one.
    #[test]
    fn a_redialing_connection_whose_server_went_silent_asks_again() {
        let (_server, sock) = server();
        let mut admin = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        for polled in [true, false] {
            let mut con = Conn::open_with(&at(&sock, ""), Duration::ZERO, polled)
                .unwrap()
                .redialing(Duration::from_secs(5), format!("silent-{polled}"));
            con.run("set", |c| redis::cmd("SET").arg("k").arg("v").query::<()>(c))
                .unwrap();
            con.read_timeout = Duration::from_millis(200);
            con.set_timeout().unwrap();
            admin
                .run("pausing", |c| {
                    redis::cmd("CLIENT").arg("PAUSE").arg(700).arg("ALL").query::<()>(c)
                })
                .unwrap();
            let at = std::time::Instant::now();
            let got = con
                .ask("get", redis::cmd("GET").arg("k").get_packed_command(), 1)
                .unwrap();
            assert_eq!(got, [Value::BulkString(b"v".to_vec())]);
            assert!(at.elapsed() >= Duration::from_millis(500), "{:?}", at.elapsed());
            assert!(con.take_reconnected());
            let n: i64 = con
                .run("incr", |c| redis::cmd("INCR").arg(format!("n{polled}")).query(c))
                .unwrap();
            assert_eq!(n, 1);
        }
    }

    /// Redis gone: a redialing connection's command fails once `redial` has passed, saying
    /// so; and after [`Conn::hurry`], at the first failed try.
    #[test]
    fn redis_gone_past_the_redial_bound_is_a_clear_error() {
        let (server, sock) = server();
        let mut con = Conn::open_polled(&at(&sock, ""), Duration::ZERO)
            .unwrap()
            .redialing(Duration::from_millis(500), "gone".into());
        drop(server);
        let at = std::time::Instant::now();
        let e = con
            .run("get", |c| redis::cmd("GET").arg("k").query::<Option<String>>(c))
            .unwrap_err();
        let took = at.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
        assert!(e.to_string().contains("not reached again within 500ms"), "{e}");
        assert_eq!(e.to_string().matches("remote pool broker").count(), 1, "{e}");
        // Not reached once: the next command tries once.
        let at = std::time::Instant::now();
        con.send("set", redis::cmd("SET").arg("k").arg("v").get_packed_command(), 1)
            .unwrap_err();
        assert!(at.elapsed() < Duration::from_millis(200), "{:?}", at.elapsed());
    }

    /// What may pass by itself (a server not there yet, silent, loading) and what will not
    /// (a password refused, a certificate rejected, a socket not ours to open), as the
    /// crate's errors carry them.
    #[test]
    fn which_failures_may_pass() {
        use std::io::{Error as IoError, ErrorKind as Io};
        let io = |kind: Io| redis::RedisError::from(IoError::from(kind));
        for kind in [Io::ConnectionRefused, Io::NotFound, Io::TimedOut, Io::ConnectionReset] {
            assert!(may_pass(&io(kind)), "{kind:?}");
        }
        for kind in [Io::PermissionDenied, Io::InvalidData] {
            assert!(!may_pass(&io(kind)), "{kind:?}");
        }
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(!may_pass(&IoError::other(tls).into()));
        let auth = (redis::ErrorKind::AuthenticationFailed, "refused");
        assert!(!may_pass(&auth.into()));
        let config = (redis::ErrorKind::InvalidClientConfig, "bad");
        assert!(!may_pass(&config.into()));
        let loading = redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading);
        assert!(may_pass(&(loading, "loading").into()));
        // A real server: reached; an unknown command's error will not pass; once it is gone,
        // not reached, and that may pass.
        let (server, sock) = server();
        let endpoint = at(&sock, "");
        assert_eq!(endpoint.reach().map_err(|(e, _)| e.to_string()), Ok(()));
        let mut con = endpoint.connect().unwrap();
        let e = redis::cmd("NO-SUCH-COMMAND").query::<Value>(&mut con).unwrap_err();
        assert!(!may_pass(&e), "{e}");
        drop(server);
        let (e, passes) = endpoint.reach().unwrap_err();
        assert!(passes, "{e}");
    }

    #[test]
    fn the_password_stays_out_of_messages() {
        let e = Endpoint {
            url: "redis://mproc-agent:s3cret@10.0.0.5:6379/0".into(),
            ca: None,
        };
        assert_eq!(e.shown(), "redis://…@10.0.0.5:6379/0");
        assert!(!format!("{e:?}").contains("s3cret"));
    }
}
