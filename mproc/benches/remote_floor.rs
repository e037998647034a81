//! The raw floor of a remote round trip alone (a bare `redis`-crate XADD -> XREADGROUP -> XADD
//! -> XREAD ping-pong, `remote_common::floor_round_trip`), until `cargo bench --bench remote`
//! measures it beside the remote pool.
//!
//! `cargo bench -p mproc --bench remote_floor [-- N [URL]]`: N round trips (default 20000)
//! after 2000 unmeasured ones, against URL or else a redis-server of its own (a foreground child
//! on a Unix socket in a temp dir, without persistence, shut down at the end).

mod remote_common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args
        .first()
        .map_or(20_000, |a| a.parse().expect("N: a count"));
    let (url, server) = match args.get(1) {
        Some(url) => (url.clone(), None),
        None => {
            let (url, server) = start_redis();
            (url, Some(server))
        }
    };
    remote_common::floor_round_trip(&url, 2000);
    let mut samples = remote_common::floor_round_trip(&url, n);
    let p50 = remote_common::quantile(&mut samples, 0.50);
    let p99 = remote_common::quantile(&mut samples, 0.99);
    println!(
        "floor round trip (XADD -> XREADGROUP -> XADD -> XREAD), {n} samples: p50 {:.1} us, p99 {:.1} us",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    );
    if let Some((mut child, dir)) = server {
        let mut con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to stop redis-server");
        let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").arg("NOSAVE").query(&mut con);
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A redis-server on a Unix socket in a fresh temp dir, ready (PING answered within 5 s).
// The server is handed to main, which shuts it down and waits for it.
#[allow(clippy::zombie_processes)]
fn start_redis() -> (String, (Child, std::path::PathBuf)) {
    let dir = std::env::temp_dir().join(format!("mproc-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("redis.sock");
    let mut child = Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(&sock)
        .args([
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}): install it with `apt-get install redis-server`"
            )
        });
    let url = format!("redis+unix://{}", sock.display());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pong = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
        if pong.is_ok() {
            return (url, (child, dir));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server not ready within 5 s: {pong:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
