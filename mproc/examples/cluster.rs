//! The seed's pool exercise (`do_math`: one `apply_async` per block, results in order) run on
//! two worker hosts through Redis, all on this machine: it starts a private `redis-server`
//! (when one is on PATH), writes a key file, starts two agents (this same executable, run
//! with `MPROC_REMOTE`: each turns into an agent before `main`), and runs the pool across
//! them. On real hosts, start `redis-server` once and the agents on each host; see the
//! README's "Many machines".
//!
//! ```text
//! cargo run --release --features remote --example cluster
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mproc::{Pool, Remote};

/// The (integer) average of the squares of `start..end`, and which host and worker did it.
fn do_math(start: u64, end: u64) -> (u64, String) {
    let mut average = 0;
    for value in start..end {
        average += value * value / (end - start);
    }
    (average, mproc::current_process().name().to_string())
}

/// A private redis-server on a Unix socket in `dir`, as a foreground child.
fn start_redis(dir: &Path) -> Option<(Child, PathBuf)> {
    let sock = dir.join("redis.sock");
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocketperm",
            "700",
        ])
        .arg("--unixsocket")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(20));
    Some((child, sock))
}

pub(crate) fn main() -> mproc::Result<()> {
    let dir = std::env::temp_dir().join(format!("mproc-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let Some((mut redis, sock)) = start_redis(&dir) else {
        println!(
            "cluster: redis-server is not on PATH; install it (Debian: `apt-get install \
             redis-server`) to run the pool across agents"
        );
        return Ok(());
    };
    let key = dir.join("mproc.key");
    let bytes: Vec<u8> = (0..32)
        .map(|i| (std::process::id() as u8).wrapping_mul(31) ^ i)
        .collect();
    std::fs::write(&key, bytes)?;
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let url = format!("redis+unix://{}", sock.display());
    println!(
        "cluster: redis-server on {}, two agents with 2 workers each",
        sock.display()
    );
    let agents: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe()?)
                .env("MPROC_REMOTE", &url)
                .env("MPROC_KEY_FILE", &key)
                .env("MPROC_PROCESSES", "2")
                .spawn()
        })
        .collect::<Result<_, _>>()?;

    let pool = Pool::builder()
        .remote(Remote::redis(&url)?.key_file(&key))
        .build()?;
    let blocks: Vec<(u64, u64)> = (0..8).map(|i| (i * 100_000, (i + 1) * 100_000)).collect();
    let tasks: Vec<_> = blocks
        .iter()
        .map(|&(start, end)| pool.apply_async(do_math, (start, end)))
        .collect::<Result<_, _>>()?;
    pool.close();
    pool.join()?;
    for ((start, end), task) in blocks.iter().zip(&tasks) {
        let (average, worker) = task.get()?;
        println!("block {start:>6}..{end:<6} average of squares: {average:>14}  by {worker}");
    }
    drop(pool);

    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    let _ = redis.kill();
    let _ = redis.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
