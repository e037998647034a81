//! The remote tests' harness: a real redis-server as a foreground child of the test, on a
//! private Unix socket (and, for the ACL and TLS scenarios, on a loopback TCP port), and agents
//! made by re-running this test binary with `MPROC_REMOTE`, as a worker host would run the
//! program. Nothing stands in for Redis or for the agent, and every wait is bounded.
//!
//! Included as `mod harness;` by `tests/remote.rs`; its self-tests (module `selftest`) run in
//! every test binary that includes it.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process, kill_process_group};

/// How long redis-server may take to answer its first PING (it takes ~25 ms here).
const READY_WITHIN: Duration = Duration::from_secs(5);
/// How long a stopping redis-server or agent may take to exit before it is killed.
const EXIT_WITHIN: Duration = Duration::from_secs(5);
/// How long an agent asked to drain (SIGTERM) may take to exit.
const DRAIN_WITHIN: Duration = Duration::from_secs(20);
/// Read and write timeout of the harness's own connections: a dead server is an error, not a hang.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the command names when redis-server is missing: the remote tests never skip.
const INSTALL_HINT: &str = "install it with `apt-get install redis-server` (Debian/Ubuntu; \
                            scripts/test.sh and .ci/run install it when it is missing)";

/// Name of the ACL user the README documents for worker hosts.
pub(crate) const AGENT_USER: &str = "mproc-agent";

/// The ACL rules of [`AGENT_USER`] (after `ACL SETUSER mproc-agent reset >PASSWORD`): its keys
/// are mproc's (`mproc:{<build>}:...`), no Pub/Sub channel, and only the commands an agent or a
/// submitter sends. Scripts (`EVAL`/`EVALSHA`) are checked twice: the keys they declare and every
/// command they call must be allowed here too.
pub(crate) const AGENT_ACL: &str = "on ~mproc:* resetchannels -@all \
    +ping +hello +auth +client|setname \
    +xadd +xreadgroup +xread +xack +xdel +xtrim +xgroup|create +xgroup|createconsumer \
    +xgroup|delconsumer +xpending +xrange +xlen +xinfo \
    +eval +evalsha +script|load +script|exists \
    +hset +hsetnx +hget +hgetall +hdel +hincrby +hexists +hkeys +hvals \
    +set +get +del +exists +pexpire";

/// A private directory under the system's temporary directory, removed on drop.
pub(crate) struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates a fresh directory only its owner can enter, named after `tag`.
    pub(crate) fn new(tag: &str) -> io::Result<TempDir> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        // A Unix socket's path is limited to 107 bytes: fall back to /tmp under a long TMPDIR.
        let mut base = std::env::temp_dir();
        if base.as_os_str().len() > 60 {
            base = PathBuf::from("/tmp");
        }
        let name = format!(
            "mproc-{tag}-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            hex(&random_bytes(4)?)
        );
        let path = base.join(name);
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(TempDir { path, keep: false })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// `n` bytes from the kernel's random source.
fn random_bytes(n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a new key file of 32 random bytes, readable only by its owner, in `dir`.
pub(crate) fn key_file(dir: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!("mproc-{}.key", SEQ.fetch_add(1, Ordering::Relaxed)));
    let key = random_bytes(32).expect("32 bytes from /dev/urandom");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot create key file {}: {e}", path.display()));
    f.write_all(&key).expect("write the key file");
    path
}

/// The last `max` bytes of a file, as text, for failure messages.
fn tail(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b[b.len().saturating_sub(max)..]).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Polls `child` until it exits or `within` passes; `None` if it is still running.
fn wait_within(child: &mut Child, within: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A free port on 127.0.0.1 (another process may take it before redis-server binds it:
/// [`RedisServer`] retries with a new one then).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A reply in the Redis protocol (RESP2, and the RESP3 types a `HELLO 3` would bring).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// `+OK`, `+PONG`.
    Status(String),
    /// `-ERR ...`, `-NOPERM ...`.
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$n` bytes.
    Bulk(Vec<u8>),
    /// `*n` replies (also RESP3 maps, flattened, and sets).
    Array(Vec<Reply>),
    /// `$-1`, `*-1`, `_`.
    Nil,
}

impl Reply {
    /// `true` for an error refused by the ACL (`-NOPERM ...`).
    pub(crate) fn is_noperm(&self) -> bool {
        matches!(self, Reply::Error(e) if e.starts_with("NOPERM"))
    }
}

/// A bare RESP connection to redis-server, for the harness's own commands: setup, checks
/// (`XLEN`, `XPENDING`), and `SHUTDOWN`. Each read and write is bounded by [`IO_TIMEOUT`].
pub(crate) struct RespConn<S: Read + Write> {
    io: BufReader<S>,
}

impl RespConn<UnixStream> {
    /// Connects to the server's Unix socket as the default user.
    pub(crate) fn unix(path: &Path) -> io::Result<Self> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(RespConn {
            io: BufReader::new(s),
        })
    }
}

impl RespConn<TcpStream> {
    /// Connects to `127.0.0.1:port` in plain TCP.
    pub(crate) fn tcp(port: u16) -> io::Result<Self> {
        let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), IO_TIMEOUT)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(RespConn {
            io: BufReader::new(s),
        })
    }
}

impl<S: Read + Write> RespConn<S> {
    /// Sends one command and reads its reply; a server error is `Ok(Reply::Error)`.
    pub(crate) fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Reply> {
        self.send(args)?;
        self.read()
    }

    fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.io.get_mut().write_all(&out)
    }

    fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.io.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis-server closed the connection",
            ));
        }
        if !line.ends_with("\r\n") {
            return Err(bad_reply(&line));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad_reply(&line))?;
        let num = || rest.parse::<i64>().map_err(|_| bad_reply(&line));
        Ok(match kind {
            "+" => Reply::Status(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(num()?),
            "_" => Reply::Nil,
            "#" => Reply::Int((rest == "t").into()),
            "," => Reply::Status(rest.to_owned()),
            "$" | "=" => match num()? {
                n if n < 0 => Reply::Nil,
                n => {
                    let mut b = vec![0; n as usize + 2];
                    self.io.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Reply::Bulk(b)
                }
            },
            "*" | "~" | ">" | "%" => match num()? {
                n if n < 0 => Reply::Nil,
                n => {
                    let n = if kind == "%" { 2 * n } else { n };
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.read()?);
                    }
                    Reply::Array(items)
                }
            },
            _ => return Err(bad_reply(&line)),
        })
    }
}

fn bad_reply(line: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a RESP reply: {line:?}"),
    )
}

/// How the server listens besides its Unix socket.
#[derive(Clone)]
enum Listen {
    Unix,
    TcpAcl { port: u16, password: String },
    Tls { port: u16 },
}

/// A redis-server started for one test: a foreground child (never `--daemonize`) on a Unix
/// socket in a private directory, without persistence. Dropping it shuts it down
/// (`SHUTDOWN NOSAVE`, bounded wait, then SIGKILL) and removes the directory.
pub(crate) struct RedisServer {
    child: Option<Child>,
    listen: Listen,
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server on a private Unix socket, ready for commands.
    pub(crate) fn start() -> Result<RedisServer, String> {
        Self::start_with(Listen::Unix)
    }

    /// Starts redis-server on a private Unix socket and on a free TCP port of 127.0.0.1, with
    /// the ACL user [`AGENT_USER`] (rules [`AGENT_ACL`], a random password per run).
    pub(crate) fn start_tcp_acl() -> Result<RedisServer, String> {
        let password = hex(&random_bytes(16).map_err(|e| e.to_string())?);
        Self::start_with(Listen::TcpAcl { port: 0, password })
    }

    /// Starts redis-server on a private Unix socket and, in TLS only, on a free TCP port of
    /// 127.0.0.1, with a CA and a server certificate for `127.0.0.1` and `localhost` made now.
    /// Clients need no certificate of their own (`tls-auth-clients no`).
    pub(crate) fn start_tls() -> Result<RedisServer, String> {
        Self::start_with(Listen::Tls { port: 0 })
    }

    fn start_with(listen: Listen) -> Result<RedisServer, String> {
        let dir = TempDir::new("redis").map_err(|e| format!("cannot make a temp dir: {e}"))?;
        if let Listen::Tls { .. } = listen {
            write_certificates(dir.path())?;
        }
        let mut server = RedisServer {
            child: None,
            listen,
            dir,
        };
        let mut tries = 0;
        loop {
            // A port found free may be taken before redis-server binds it: try another one.
            tries += 1;
            match &mut server.listen {
                Listen::Unix => {}
                Listen::TcpAcl { port, .. } | Listen::Tls { port } => {
                    *port = free_port().map_err(|e| format!("no free TCP port: {e}"))?;
                }
            }
            server.write_config()?;
            match server.launch() {
                Err(e) if tries < 3 && e.contains("Address already in use") => continue,
                r => return r.map(|()| server),
            }
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("redis.conf")
    }

    /// The configuration file, kept for [`restart`](Self::restart): the same socket, port,
    /// user and certificates.
    fn write_config(&self) -> Result<(), String> {
        let dir = self.dir.path().display();
        let mut conf = format!(
            "daemonize no\nport 0\nunixsocket {dir}/redis.sock\nunixsocketperm 700\n\
             save \"\"\nappendonly no\ndir {dir}\nlogfile \"\"\n"
        );
        match &self.listen {
            Listen::Unix => {}
            Listen::TcpAcl { port, password } => conf.push_str(&format!(
                "bind 127.0.0.1\nport {port}\nuser {AGENT_USER} reset >{password} {AGENT_ACL}\n"
            )),
            Listen::Tls { port } => conf.push_str(&format!(
                "bind 127.0.0.1\ntls-port {port}\ntls-cert-file {dir}/server.pem\n\
                 tls-key-file {dir}/server.key\ntls-ca-cert-file {dir}/ca.pem\n\
                 tls-auth-clients no\n"
            )),
        }
        fs::write(self.config(), conf).map_err(|e| format!("cannot write redis.conf: {e}"))
    }

    /// Starts the process and waits (bounded) until it answers PING on its socket.
    fn launch(&mut self) -> Result<(), String> {
        let log = fs::File::create(self.log()).map_err(|e| format!("cannot create log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new("redis-server");
        cmd.arg(self.config())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = spawn_tied(cmd).map_err(spawn_error)?;
        let child = self.child.insert(child);
        let deadline = Instant::now() + READY_WITHIN;
        let socket = self.dir.path().join("redis.sock");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!(
                    "redis-server exited at start ({status}); its log:\n{}",
                    tail(&self.log(), 4000)
                ));
            }
            let pong = RespConn::unix(&socket).and_then(|mut c| c.call(&["PING"]));
            if let Ok(Reply::Status(s)) = &pong
                && s == "PONG"
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.stop_child();
                return Err(format!(
                    "redis-server did not answer PING within {READY_WITHIN:?} (last: {pong:?}); \
                     its log:\n{}",
                    tail(&self.log(), 4000)
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `redis+unix:///<dir>/redis.sock`: the server as the default user, on its socket.
    pub(crate) fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// The Unix socket's path.
    pub(crate) fn socket_path(&self) -> PathBuf {
        self.socket()
    }

    /// `redis://mproc-agent:<password>@127.0.0.1:<port>/0`: the ACL user of
    /// [`start_tcp_acl`](Self::start_tcp_acl) over TCP.
    pub(crate) fn tcp_url_for_agent(&self) -> String {
        match &self.listen {
            Listen::TcpAcl { port, password } => {
                format!("redis://{AGENT_USER}:{password}@127.0.0.1:{port}/0")
            }
            _ => panic!("tcp_url_for_agent: this server was not made by start_tcp_acl"),
        }
    }

    /// The password of [`AGENT_USER`] (random per run) on a server of `start_tcp_acl`.
    pub(crate) fn agent_password(&self) -> &str {
        match &self.listen {
            Listen::TcpAcl { password, .. } => password,
            _ => panic!("agent_password: this server was not made by start_tcp_acl"),
        }
    }

    /// The TCP (or TLS) port, on a server of `start_tcp_acl` or `start_tls`.
    pub(crate) fn port(&self) -> u16 {
        match &self.listen {
            Listen::TcpAcl { port, .. } | Listen::Tls { port } => *port,
            Listen::Unix => panic!("port: this server listens on its Unix socket only"),
        }
    }

    /// `rediss://127.0.0.1:<port>/0`, on a server of [`start_tls`](Self::start_tls).
    pub(crate) fn tls_url(&self) -> String {
        match &self.listen {
            Listen::Tls { port } => format!("rediss://127.0.0.1:{port}/0"),
            _ => panic!("tls_url: this server was not made by start_tls"),
        }
    }

    /// The PEM file of the CA that signed the server's certificate (`start_tls`).
    pub(crate) fn ca_pem_path(&self) -> PathBuf {
        assert!(
            matches!(self.listen, Listen::Tls { .. }),
            "ca_pem_path: this server was not made by start_tls"
        );
        self.dir.path().join("ca.pem")
    }

    /// One command as the default user on the Unix socket (a new connection each time).
    pub(crate) fn cmd<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Reply, String> {
        RespConn::unix(&self.socket())
            .and_then(|mut c| c.call(args))
            .map_err(|e| format!("redis-server at {}: {e}", self.socket().display()))
    }

    /// The server's pid (to check it from outside).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far (its last 8 KiB), for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        tail(&self.log(), 8192)
    }

    /// SIGKILLs the server at once (the "Redis killed mid-map" scenarios) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same socket (and port, user, certificates), with no
    /// data: a restart without persistence. Kills the running one first, if any.
    pub(crate) fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.launch()
    }

    /// Asks the server to exit without saving, waits (bounded), and kills it if it did not.
    fn stop_child(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut c) = RespConn::unix(&self.socket()) {
            // The server closes the connection as it exits: no reply on success.
            let _ = c.call(&["SHUTDOWN", "NOSAVE"]);
        }
        if !matches!(wait_within(&mut child, EXIT_WITHIN), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "redis-server's log ({}):\n{}",
                self.log().display(),
                self.log_tail()
            );
        }
        self.stop_child();
    }
}

/// Why redis-server did not start, with what to install.
fn spawn_error(e: io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => format!("redis-server is not on PATH: {INSTALL_HINT}"),
        _ => format!("cannot start redis-server ({e}): {INSTALL_HINT}"),
    }
}

/// Writes `ca.pem`, `server.pem` and `server.key` in `dir`: a CA made now, and a server
/// certificate for `127.0.0.1` and `localhost` it signed.
fn write_certificates(dir: &Path) -> Result<(), String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| format!("cannot make test certificates: {e}");
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mproc remote tests CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(err)?;
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(err)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "mproc remote tests server");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).map_err(err)?;

    let write = |name: &str, pem: String| {
        fs::write(dir.join(name), pem).map_err(|e| format!("cannot write {name}: {e}"))
    };
    write("ca.pem", ca_cert.pem())?;
    write("server.pem", cert.pem())?;
    write("server.key", key.serialize_pem())
}

/// The arguments an agent gets after the test binary's name: a test filter that matches no
/// test, so that a binary where `MPROC_REMOTE` did not take over before `main` runs nothing
/// and exits at once (and the test sees an agent that never came up, not a second test run).
const NO_TEST: [&str; 2] = ["__mproc_agent_runs_no_test__", "--exact"];

/// Spawns `cmd` tied to this test process: the kernel SIGKILLs the child when the process
/// dies, so a test killed (by nextest's timeout, or by hand) leaves no Redis server or agent
/// running (an agent would dial its Redis for ever). The parent-death signal follows the
/// thread that forked, not the process, and a test's own threads may end before what they
/// start: every child is spawned by one thread that lives as long as the process.
fn spawn_tied(mut cmd: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, answer) in rx {
                    let _ = answer.send(cmd.spawn());
                }
            })
            .expect("the harness's spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id();
    // SAFETY: the hook runs in the child between fork and exec, and calls only prctl(2),
    // getppid(2) and _exit(2), which are async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1); // the test process died before the signal was armed
            }
            Ok(())
        });
    }
    let (answer, answered) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, answer))
        .expect("the spawner thread lives as long as the process");
    answered
        .recv()
        .expect("the spawner thread answers every request")
}

/// The environment that makes a run of this binary an agent.
fn agent_env(
    url: &str,
    key_file: &Path,
    processes: usize,
    extra_env: &[(&str, &str)],
) -> Vec<(OsString, OsString)> {
    let mut env = vec![
        ("MPROC_REMOTE".into(), url.into()),
        ("MPROC_KEY_FILE".into(), key_file.as_os_str().to_owned()),
        ("MPROC_PROCESSES".into(), processes.to_string().into()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (k.into(), v.into())));
    env
}

/// A worker host: this test binary run again with `MPROC_REMOTE`, `MPROC_KEY_FILE` and
/// `MPROC_PROCESSES`, in a process group of its own (with the local workers it starts), its
/// output in files kept for failure messages. Dropping it SIGKILLs the group and reaps it.
pub(crate) struct Agent {
    child: Child,
    /// Exit status once reaped.
    status: Option<ExitStatus>,
    dir: TempDir,
}

impl Agent {
    /// Starts an agent serving the Redis at `url` with the key in `key_file` and `processes`
    /// local workers; `extra_env` is added to its environment.
    pub(crate) fn start(
        url: &str,
        key_file: &Path,
        processes: usize,
        extra_env: &[(&str, &str)],
    ) -> Agent {
        Self::spawn(&NO_TEST, agent_env(url, key_file, processes, extra_env))
    }

    /// Runs test `test` (its name as libtest knows it: `module::name`) of this binary again,
    /// alone, with `env` added: a second program of the test's own, such as a caller holding
    /// a remote pool, that the test can stop, continue and kill as it does a worker host.
    pub(crate) fn rerun(test: &str, env: &[(&str, &str)]) -> Agent {
        let env = env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        Self::spawn(&[test, "--exact", "--nocapture", "--test-threads=1"], env)
    }

    fn spawn(args: &[&str], env: Vec<(OsString, OsString)>) -> Agent {
        let dir = TempDir::new("agent").expect("a temp dir for the agent's output");
        let out =
            |name: &str| fs::File::create(dir.path().join(name)).expect("the agent's output file");
        let exe = std::env::current_exe().expect("this test binary");
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out("stdout"))
            .stderr(out("stderr"))
            // Its own group: a host's death (or the test's end) takes its local workers too.
            .process_group(0);
        let child = spawn_tied(cmd).expect("re-run this test binary as an agent");
        Agent {
            child,
            status: None,
            dir,
        }
    }

    /// The agent's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn group_signal(&self, sig: Signal) {
        // Once the leader is reaped its pid may be reused: signal only a live group.
        if self.status.is_none() {
            let pid = Pid::from_raw(self.child.id() as i32).expect("a child's pid is positive");
            let _ = kill_process_group(pid, sig);
        }
    }

    /// SIGKILLs the agent and everything it started, as when its host dies, and reaps it.
    pub(crate) fn kill(&mut self) {
        self.group_signal(Signal::KILL);
        self.reap();
    }

    /// SIGKILLs the agent process alone (its local workers see their parent die) and reaps it.
    pub(crate) fn kill_agent_only(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
        }
        self.reap();
        // Its workers are not this test's to leave behind once it is known dead.
        self.group_signal_after_reap(Signal::KILL);
    }

    fn group_signal_after_reap(&self, sig: Signal) {
        // The group outlives its leader while any member lives, so its id is not reused then;
        // when none is left this finds no group (ESRCH), which is ignored.
        let pid = Pid::from_raw(self.child.id() as i32).expect("a child's pid is positive");
        let _ = kill_process_group(pid, sig);
    }

    /// SIGSTOPs the agent and its workers, as when its host freezes (heartbeat included).
    pub(crate) fn stop(&self) {
        self.group_signal(Signal::STOP);
    }

    /// SIGCONTs what [`stop`](Self::stop) stopped.
    pub(crate) fn cont(&self) {
        self.group_signal(Signal::CONT);
    }

    /// SIGTERMs the agent (it drains and exits) and waits for it (bounded); on time out it is
    /// killed and the error carries its output.
    pub(crate) fn terminate(&mut self) -> Result<ExitStatus, String> {
        if self.status.is_none() {
            let pid = Pid::from_raw(self.child.id() as i32).expect("a child's pid is positive");
            let _ = kill_process(pid, Signal::TERM);
            // A stopped agent would keep the signal pending.
            self.cont();
        }
        match self.wait_timeout(DRAIN_WITHIN) {
            Some(status) => {
                self.group_signal_after_reap(Signal::KILL);
                Ok(status)
            }
            None => {
                self.kill();
                Err(format!(
                    "agent {} did not exit within {DRAIN_WITHIN:?} of SIGTERM; {}",
                    self.pid(),
                    self.output()
                ))
            }
        }
    }

    /// Waits up to `within` for the agent to exit; its status, or `None` if it still runs.
    pub(crate) fn wait_timeout(&mut self, within: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_within(&mut self.child, within).ok().flatten();
        }
        self.status
    }

    /// `true` while the agent has not exited.
    pub(crate) fn is_running(&mut self) -> bool {
        self.wait_timeout(Duration::ZERO).is_none()
    }

    fn reap(&mut self) {
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
    }

    /// Path of the agent's standard output file.
    pub(crate) fn stdout_path(&self) -> PathBuf {
        self.dir.path().join("stdout")
    }

    /// Path of the agent's standard error file.
    pub(crate) fn stderr_path(&self) -> PathBuf {
        self.dir.path().join("stderr")
    }

    /// The agent's output so far (last 8 KiB of each stream), for failure messages.
    pub(crate) fn output(&self) -> String {
        format!(
            "agent {} stdout:\n{}\nagent {} stderr:\n{}",
            self.pid(),
            tail(&self.stdout_path(), 8192),
            self.pid(),
            tail(&self.stderr_path(), 8192)
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.group_signal(Signal::KILL);
        self.reap();
        if std::thread::panicking() {
            // Kept for the post-mortem, and shown.
            self.dir.keep = true;
            eprintln!("{} (kept in {})", self.output(), self.dir.path().display());
        }
    }
}

#[cfg(test)]
mod selftest {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;

    fn must<T>(r: Result<T, String>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    #[test]
    fn unix_server_is_private_without_persistence_and_gone_after_drop() {
        let server = must(RedisServer::start());
        let sock = server.socket_path();
        assert_eq!(server.url(), format!("redis+unix://{}", sock.display()));
        assert!(server.url().starts_with("redis+unix:///"));
        let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the socket is its owner's only");
        assert_eq!(server.cmd(&["SET", "mproc:{t}:x", "1"]).unwrap(), ok());
        assert_eq!(server.cmd(&["GET", "mproc:{t}:x"]).unwrap(), bulk("1"));
        for (name, value) in [("save", ""), ("appendonly", "no"), ("daemonize", "no")] {
            assert_eq!(
                server.cmd(&["CONFIG", "GET", name]).unwrap(),
                Reply::Array(vec![bulk(name), bulk(value)])
            );
        }
        // The client the remote pool uses takes this URL as it is.
        let pong: String = redis::Client::open(server.url())
            .and_then(|cl| cl.get_connection())
            .and_then(|mut con| redis::cmd("PING").query(&mut con))
            .unwrap();
        assert_eq!(pong, "PONG");
        let dir = server.dir.path().to_owned();
        let t = Instant::now();
        drop(server);
        // Well under the wait after which it would have been killed: SHUTDOWN NOSAVE did it.
        assert!(
            t.elapsed() < EXIT_WITHIN / 2,
            "shutdown took {:?}",
            t.elapsed()
        );
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(UnixStream::connect(&sock).is_err());
    }

    #[test]
    fn killed_server_refuses_and_restarts_empty_on_the_same_socket() {
        let mut server = must(RedisServer::start());
        let url = server.url();
        let pid = server.pid().unwrap();
        assert_eq!(server.cmd(&["SET", "mproc:{t}:x", "1"]).unwrap(), ok());
        let mut held = RespConn::unix(&server.socket_path()).unwrap();
        server.kill();
        assert_eq!(server.pid(), None);
        let t = Instant::now();
        assert!(
            held.call(&["PING"]).is_err(),
            "a connection to a dead server fails"
        );
        assert!(server.cmd(&["PING"]).is_err());
        assert!(t.elapsed() < IO_TIMEOUT, "failed at once, not by time out");
        must(server.restart());
        assert_eq!(server.url(), url);
        assert_ne!(server.pid(), Some(pid));
        assert_eq!(server.cmd(&["GET", "mproc:{t}:x"]).unwrap(), Reply::Nil);
        assert_eq!(server.cmd(&["DBSIZE"]).unwrap(), Reply::Int(0));
        // A restart of a running server works too.
        must(server.restart());
        assert_eq!(server.cmd(&["PING"]).unwrap(), Reply::Status("PONG".into()));
    }

    /// Runs `args` on `c`, failing the test on any error reply.
    fn allowed<S: Read + Write>(c: &mut RespConn<S>, args: &[&str]) -> Reply {
        let r = c.call(args).unwrap();
        assert!(!matches!(r, Reply::Error(_)), "{args:?} refused: {r:?}");
        r
    }

    /// Runs `args` on `c`, failing the test unless the ACL refused it.
    fn refused<S: Read + Write>(c: &mut RespConn<S>, args: &[&str]) {
        let r = c.call(args).unwrap();
        assert!(r.is_noperm(), "{args:?} not refused by the ACL: {r:?}");
    }

    #[test]
    fn acl_user_runs_what_an_agent_needs_on_mproc_keys_and_nothing_else() {
        let mut server = must(RedisServer::start_tcp_acl());
        let (port, pw) = (server.port(), server.agent_password().to_owned());
        assert_eq!(
            server.tcp_url_for_agent(),
            format!("redis://mproc-agent:{pw}@127.0.0.1:{port}/0")
        );
        assert_eq!(pw.len(), 32);

        let mut c = RespConn::tcp(port).unwrap();
        let wrong = c.call(&["AUTH", AGENT_USER, "not-the-password"]).unwrap();
        assert!(
            matches!(&wrong, Reply::Error(e) if e.starts_with("WRONGPASS")),
            "{wrong:?}"
        );
        assert_eq!(c.call(&["AUTH", AGENT_USER, &pw]).unwrap(), ok());

        let (tasks, results) = ("mproc:{ab12}:tasks", "mproc:{ab12}:results:p1");
        allowed(&mut c, &["PING"]);
        allowed(&mut c, &["HELLO", "2"]);
        allowed(&mut c, &["CLIENT", "SETNAME", "mproc-agent-1"]);
        allowed(
            &mut c,
            &["XGROUP", "CREATE", tasks, "agents", "0", "MKSTREAM"],
        );
        allowed(&mut c, &["XGROUP", "CREATECONSUMER", tasks, "agents", "a1"]);
        let Reply::Bulk(id) = allowed(&mut c, &["XADD", tasks, "*", "f", "v"]) else {
            panic!("XADD gives an id")
        };
        let id = String::from_utf8(id).unwrap();
        let read = [
            "XREADGROUP",
            "GROUP",
            "agents",
            "a1",
            "COUNT",
            "1",
            "BLOCK",
            "10",
        ];
        allowed(&mut c, &[&read[..], &["STREAMS", tasks, ">"]].concat());
        allowed(&mut c, &["XPENDING", tasks, "agents"]);
        allowed(&mut c, &["XPENDING", tasks, "agents", "-", "+", "10", "a1"]);
        allowed(&mut c, &["XINFO", "STREAM", tasks]);
        allowed(&mut c, &["XINFO", "GROUPS", tasks]);
        allowed(&mut c, &["XINFO", "CONSUMERS", tasks, "agents"]);
        allowed(&mut c, &["XACK", tasks, "agents", &id]);
        allowed(&mut c, &["XDEL", tasks, &id]);
        allowed(&mut c, &["XRANGE", tasks, "-", "+"]);
        allowed(&mut c, &["XLEN", tasks]);
        allowed(&mut c, &["XTRIM", tasks, "MINID", "~", &id]);
        allowed(&mut c, &["XTRIM", tasks, "MAXLEN", "0"]);
        allowed(&mut c, &["XGROUP", "DELCONSUMER", tasks, "agents", "a1"]);
        allowed(&mut c, &["XADD", results, "*", "r", "1"]);
        allowed(
            &mut c,
            &[
                "XREAD", "COUNT", "1", "BLOCK", "10", "STREAMS", results, "0",
            ],
        );
        allowed(&mut c, &["XADD", "mproc:{ab12}:dead", "*", "t", "1"]);

        let script = "redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) \
                      return redis.call('HGET', KEYS[1], ARGV[1])";
        let Reply::Bulk(sha) = allowed(&mut c, &["SCRIPT", "LOAD", script]) else {
            panic!("SCRIPT LOAD gives a sha")
        };
        let sha = String::from_utf8(sha).unwrap();
        let done = "mproc:{ab12}:done:p1";
        assert_eq!(
            allowed(&mut c, &["SCRIPT", "EXISTS", &sha]),
            Reply::Array(vec![Reply::Int(1)])
        );
        assert_eq!(
            allowed(&mut c, &["EVALSHA", &sha, "1", done, "t1", "a"]),
            bulk("a")
        );
        assert_eq!(
            allowed(&mut c, &["EVAL", script, "1", done, "t1", "b"]),
            bulk("a")
        );

        let pool = "mproc:{ab12}:pool:p1";
        allowed(&mut c, &["HSET", pool, "k", "v"]);
        allowed(&mut c, &["HSETNX", pool, "k2", "v"]);
        allowed(&mut c, &["HGET", pool, "k"]);
        allowed(&mut c, &["HGETALL", pool]);
        allowed(&mut c, &["HEXISTS", pool, "k"]);
        allowed(&mut c, &["HDEL", pool, "k"]);
        allowed(&mut c, &["HINCRBY", "mproc:{ab12}:attempts:p1", "t1", "1"]);
        allowed(&mut c, &["HSET", "mproc:{ab12}:agents", "a1", "host"]);
        allowed(&mut c, &["HSET", "mproc:{ab12}:running:a1", "t1", "1"]);
        let hb = "mproc:{ab12}:hb:a1";
        assert_eq!(allowed(&mut c, &["SET", hb, "1", "PX", "1000"]), ok());
        allowed(&mut c, &["GET", hb]);
        assert_eq!(allowed(&mut c, &["PEXPIRE", hb, "1000"]), Reply::Int(1));
        assert_eq!(allowed(&mut c, &["EXISTS", hb]), Reply::Int(1));
        assert_eq!(allowed(&mut c, &["DEL", hb]), Reply::Int(1));

        // Other keys: refused, whether named directly or declared by a script.
        let other = "other:{ab12}:x";
        refused(&mut c, &["XADD", other, "*", "f", "v"]);
        refused(
            &mut c,
            &["XGROUP", "CREATE", other, "agents", "0", "MKSTREAM"],
        );
        refused(&mut c, &[&read[..], &["STREAMS", other, ">"]].concat());
        refused(&mut c, &["XREAD", "COUNT", "1", "STREAMS", other, "0"]);
        refused(&mut c, &["XRANGE", other, "-", "+"]);
        refused(&mut c, &["XLEN", other]);
        refused(&mut c, &["HSET", other, "k", "v"]);
        refused(&mut c, &["HGETALL", other]);
        refused(&mut c, &["SADD", other, "t"]);
        refused(&mut c, &["SET", other, "1"]);
        refused(&mut c, &["GET", other]);
        refused(&mut c, &["DEL", other]);
        refused(&mut c, &["EVALSHA", &sha, "1", other, "t1", "a"]);
        refused(&mut c, &["EVAL", script, "1", other, "t1", "a"]);
        // A script that reaches past what it declares, or calls a command the user lacks.
        for script in [
            "return redis.call('GET', 'other:x')",
            "return redis.call('FLUSHALL')",
        ] {
            let r = c.call(&["EVAL", script, "0"]).unwrap();
            assert!(
                matches!(&r, Reply::Error(e) if e.contains("user executing the script can't")),
                "{script}: {r:?}"
            );
        }
        // Commands no agent needs.
        refused(&mut c, &["FLUSHALL"]);
        refused(&mut c, &["FLUSHDB"]);
        refused(&mut c, &["CONFIG", "GET", "*"]);
        refused(&mut c, &["CONFIG", "SET", "save", "60 1"]);
        refused(&mut c, &["KEYS", "*"]);
        refused(&mut c, &["SCAN", "0"]);
        refused(&mut c, &["SHUTDOWN", "NOSAVE"]);
        // DEBUG is off by default anyway (enable-debug-command): ask the ACL itself.
        let dry = server
            .cmd(&["ACL", "DRYRUN", AGENT_USER, "DEBUG", "SLEEP", "0"])
            .unwrap();
        assert!(
            matches!(&dry, Reply::Bulk(e) if e.starts_with(b"This user has no permissions")),
            "{dry:?}"
        );
        assert!(matches!(
            c.call(&["DEBUG", "SLEEP", "0"]).unwrap(),
            Reply::Error(_)
        ));
        refused(&mut c, &["ACL", "LIST"]);
        refused(&mut c, &["SCRIPT", "FLUSH"]);
        refused(&mut c, &["CLIENT", "KILL", "TYPE", "normal"]);
        refused(&mut c, &["PUBLISH", "mproc:{ab12}:x", "hi"]);
        refused(&mut c, &["MONITOR"]);
        assert_eq!(
            c.call(&["PING"]).unwrap(),
            Reply::Status("PONG".into()),
            "still up"
        );

        // The client the remote pool uses gets through its own handshake as this user (it
        // pipelines CLIENT SETINFO, whose refusal it ignores) and meets the same rules.
        let mut con = redis::Client::open(server.tcp_url_for_agent())
            .and_then(|cl| cl.get_connection())
            .unwrap();
        let pong: String = redis::cmd("PING").query(&mut con).unwrap();
        assert_eq!(pong, "PONG");
        let len: i64 = redis::cmd("XLEN").arg(tasks).query(&mut con).unwrap();
        assert_eq!(len, 0);
        let err = redis::cmd("XLEN")
            .arg(other)
            .query::<i64>(&mut con)
            .unwrap_err();
        assert_eq!(err.code(), Some("NOPERM"), "{err}");

        // The user survives a restart (the configuration keeps it), and the data does not.
        must(server.restart());
        let mut c = RespConn::tcp(port).unwrap();
        assert_eq!(c.call(&["AUTH", AGENT_USER, &pw]).unwrap(), ok());
        assert_eq!(allowed(&mut c, &["EXISTS", tasks]), Reply::Int(0));
    }

    /// Runs `redis-cli` with `args` (bounded), giving its exit status and standard output.
    fn redis_cli(args: &[&str]) -> (ExitStatus, String) {
        let dir = TempDir::new("cli").unwrap();
        let out = dir.path().join("out");
        let mut child = Command::new("redis-cli")
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): {INSTALL_HINT}"));
        let status = wait_within(&mut child, Duration::from_secs(10))
            .unwrap()
            .unwrap_or_else(|| {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli {args:?} did not exit within 10 s")
            });
        (status, fs::read_to_string(out).unwrap())
    }

    #[test]
    fn tls_server_serves_with_the_certificate_made_now() {
        let server = must(RedisServer::start_tls());
        let port = server.port().to_string();
        assert_eq!(server.tls_url(), format!("rediss://127.0.0.1:{port}/0"));
        let ca = server.ca_pem_path();
        assert!(
            fs::read_to_string(&ca)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        let ca = ca.to_str().unwrap();
        for host in ["127.0.0.1", "localhost"] {
            let (status, out) =
                redis_cli(&["--tls", "--cacert", ca, "-h", host, "-p", &port, "PING"]);
            assert!(
                status.success() && out.trim() == "PONG",
                "{host}: {status} {out:?}"
            );
        }
        // Not trusted without the test CA, and no plain text on the TLS port.
        let (_, out) = redis_cli(&["--tls", "-h", "127.0.0.1", "-p", &port, "PING"]);
        assert_ne!(out.trim(), "PONG");
        let plain = RespConn::tcp(server.port()).and_then(|mut c| c.call(&["PING"]));
        assert!(
            plain.is_err(),
            "plain text answered on the TLS port: {plain:?}"
        );
    }

    #[test]
    fn a_missing_redis_server_names_the_install_command() {
        let e = Command::new("redis-server-that-is-not-installed")
            .spawn()
            .unwrap_err();
        let msg = spawn_error(e);
        assert!(
            msg.contains("not on PATH")
                && msg.contains("apt-get install redis-server")
                && msg.contains("scripts/test.sh"),
            "{msg}"
        );
    }

    #[test]
    fn key_files_are_32_private_random_bytes() {
        let dir = TempDir::new("keys").unwrap();
        let (a, b) = (key_file(dir.path()), key_file(dir.path()));
        assert_ne!(a, b);
        let (ka, kb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!((ka.len(), kb.len()), (32, 32));
        assert_ne!(ka, kb);
        assert_eq!(
            fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn agent_env_names_the_server_the_key_and_the_processes() {
        let env = agent_env("redis://h:1/0", Path::new("/k"), 3, &[("RUST_LOG", "x")]);
        let env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        let want = [
            ("MPROC_REMOTE", "redis://h:1/0"),
            ("MPROC_KEY_FILE", "/k"),
            ("MPROC_PROCESSES", "3"),
            ("RUST_LOG", "x"),
        ];
        assert_eq!(env, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    /// Set in the runs of this binary that [`agent_stub`] plays an agent in.
    const STUB: &str = "MPROC_HARNESS_STUB";

    fn stub_name() -> String {
        let path = module_path!();
        let (_crate, rest) = path.split_once("::").unwrap();
        format!("{rest}::agent_stub")
    }

    /// Two roles. In a run made by [`stub`] (with [`STUB`] set): a stand-in agent process with a
    /// child of its own, to test the harness's signals, that says when it is up and lives at
    /// most 30 s. Otherwise: checks that a binary `Agent::start` re-runs either becomes an agent
    /// (`MPROC_REMOTE` took over before `main`: it serves until SIGTERM, then drains and exits
    /// cleanly) or runs no test and exits at once (a build without the remote pool).
    #[test]
    fn agent_stub() {
        if std::env::var_os(STUB).is_some() {
            let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
            println!("stub up: pid {} child {}", std::process::id(), child.id());
            std::thread::sleep(Duration::from_secs(30));
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        let server = must(RedisServer::start());
        let dir = TempDir::new("key").unwrap();
        let mut agent = Agent::start(&server.url(), &key_file(dir.path()), 1, &[]);
        match agent.wait_timeout(Duration::from_secs(2)) {
            Some(status) => {
                let out = fs::read_to_string(agent.stdout_path()).unwrap();
                assert!(
                    status.success() && out.contains("running 0 tests"),
                    "{status}; {}",
                    agent.output()
                );
            }
            None => {
                let status = must(agent.terminate());
                assert!(status.success(), "{status}; {}", agent.output());
            }
        }
    }

    /// Starts a stand-in agent and waits (bounded) until it is up; its pid and its child's.
    fn stub() -> (Agent, u32, u32) {
        let name = stub_name();
        let agent = Agent::spawn(
            &[&name, "--exact", "--nocapture", "--test-threads=1"],
            vec![(STUB.into(), "1".into())],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = fs::read_to_string(agent.stdout_path()).unwrap();
            // libtest's "test name ... " is on the same line, before it.
            if let Some((_, line)) = out.split_once("stub up: ") {
                let w: Vec<&str> = line.split_whitespace().collect();
                let (pid, child) = (w[1].parse().unwrap(), w[3].parse().unwrap());
                assert_eq!(pid, agent.pid());
                return (agent, pid, child);
            }
            assert!(Instant::now() < deadline, "stub not up: {}", agent.output());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process's state letter (`R`, `S`, `T`, `Z`, ...), or `None` once it is gone.
    fn state(pid: u32) -> Option<char> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?.1.chars().next()
    }

    /// Waits (bounded) until `pid`'s state satisfies `want`.
    fn wait_state(pid: u32, want: impl Fn(Option<char>) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !want(state(pid)) {
            assert!(
                Instant::now() < deadline,
                "{pid} not {what}: {:?}",
                state(pid)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Gone, or a zombie waiting for a reaper that is not ours (a container's init may not reap).
    fn dead(s: Option<char>) -> bool {
        matches!(s, None | Some('Z' | 'X'))
    }

    #[test]
    fn agent_stop_cont_and_kill_reach_its_whole_group() {
        let (mut agent, pid, child) = stub();
        agent.stop();
        wait_state(pid, |s| s == Some('T'), "stopped");
        wait_state(child, |s| s == Some('T'), "stopped");
        agent.cont();
        wait_state(pid, |s| matches!(s, Some('S' | 'R')), "running");
        wait_state(child, |s| matches!(s, Some('S' | 'R')), "running");
        assert!(agent.is_running());
        agent.kill();
        let status = agent.wait_timeout(Duration::ZERO).expect("reaped");
        assert_eq!(status.signal(), Some(9));
        assert!(!agent.is_running());
        wait_state(child, dead, "dead");
        agent.kill(); // again: a no-op, not a signal to a pid that may be reused
    }

    #[test]
    fn agent_terminate_and_kill_agent_only() {
        let (mut agent, _, child) = stub();
        agent.stop(); // a stopped agent still gets its SIGTERM
        let status = must(agent.terminate());
        assert_eq!(status.signal(), Some(15), "{}", agent.output());
        wait_state(child, dead, "dead");

        let (mut agent, _, child) = stub();
        agent.kill_agent_only();
        assert_eq!(
            agent.wait_timeout(Duration::ZERO).unwrap().signal(),
            Some(9)
        );
        wait_state(child, dead, "dead");
        assert!(agent.output().contains("stub up: "));
    }

    /// Set in the run of this binary that [`owner_stub`] plays a test in.
    const OWNER: &str = "MPROC_HARNESS_OWNER";

    /// In a run made by [`a_killed_test_leaves_no_redis_server_or_agent`] (with [`OWNER`]
    /// set): a test that starts a Redis server and an agent, says their pids, and waits to be
    /// killed (30 s at most). Otherwise: nothing.
    #[test]
    fn owner_stub() {
        if std::env::var_os(OWNER).is_none() {
            return;
        }
        let server = must(RedisServer::start());
        let dir = TempDir::new("key").unwrap();
        let agent = Agent::start(&server.url(), &key_file(dir.path()), 1, &[]);
        println!(
            "owner up: redis {} agent {} .",
            server.pid().unwrap(),
            agent.pid()
        );
        std::thread::sleep(Duration::from_secs(30));
    }

    /// A test process killed (as nextest kills one past its time) leaves no Redis server or
    /// agent of its own running: the kernel kills them with it (an agent would otherwise dial
    /// its Redis for ever, and the server serve it).
    #[test]
    fn a_killed_test_leaves_no_redis_server_or_agent() {
        let base = TempDir::new("owner").unwrap();
        let path = module_path!();
        let name = format!("{}::owner_stub", path.split_once("::").unwrap().1);
        // Its temporary directories go in `base`, removed when this test ends.
        let mut owner = Agent::spawn(
            &[&name, "--exact", "--nocapture", "--test-threads=1"],
            vec![
                (OWNER.into(), "1".into()),
                ("TMPDIR".into(), base.path().as_os_str().to_owned()),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let (redis, agent) = loop {
            let out = fs::read_to_string(owner.stdout_path()).unwrap();
            if let Some((_, line)) = out.split_once("owner up: ") {
                let w: Vec<&str> = line.split_whitespace().collect();
                break (w[1].parse::<u32>().unwrap(), w[3].parse::<u32>().unwrap());
            }
            assert!(
                Instant::now() < deadline,
                "owner not up: {}",
                owner.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(!dead(state(redis)) && !dead(state(agent)));
        // The test process alone, not its group (the server is in it).
        let pid = Pid::from_raw(owner.pid() as i32).unwrap();
        kill_process(pid, Signal::KILL).unwrap();
        assert!(owner.wait_timeout(Duration::from_secs(10)).is_some());
        wait_state(redis, dead, "dead");
        wait_state(agent, dead, "dead");
    }

    #[test]
    fn dropped_agent_leaves_no_process() {
        let (agent, pid, child) = stub();
        let dir = agent.dir.path().to_owned();
        drop(agent);
        assert!(dead(state(pid)));
        wait_state(child, dead, "dead");
        assert!(!dir.exists());
    }
}
