//! Remote pool benchmark: a `Pool` whose workers are agents reached through Redis, next to the
//! raw floor on the same redis-server and to Celery's and RQ's throughput on it.
//!
//! Everything runs in one go on one private redis-server (a foreground child on a Unix
//! socket); agents are this bench binary run again with `MPROC_REMOTE` (they turn into agents
//! before `main`). Sections, each with its target (PASS or MISS at the end):
//!
//! 1. `floor`: a bare `redis`-crate ping-pong, XADD → XREADGROUP → XADD → XREAD, between two
//!    threads with their own connections (`remote_common.rs`), p50 and p99.
//! 2. `apply`: round trip of `pool.apply(f, (x,))` of a trivial `fn(u64) -> u64`, one agent
//!    with one worker, p50 and p99. Target: p50 ≤ 2× the floor's p50. The two are measured
//!    in five alternating rounds, so that both see the same load.
//! 3. `map1`: `pool.chunksize(1).map(f, 0..N)` of trivial tasks with 2 agents, each with its
//!    default number of workers (the host's CPUs, as an agent started without
//!    `MPROC_PROCESSES` has), tasks/s, with the default window (the agents' workers) and with
//!    `processes(64)` (the median of five rounds). Target ≥ 30 k/s.
//! 4. `map`: `pool.map(f, 0..1_000_000u64)`, default chunk size, the same 2 agents. Target ≥ 3 M
//!    items/s.
//! 5. `death`: an agent is SIGKILLed while running a long task; time from the kill to
//!    `get()` returning `Err(WorkerLost)`, heartbeat TTL 1 s (the default). Target ≤ 1.5 s.
//! 6. `python`: Celery and RQ, trivial `add(x, y)` end to end with 2 worker processes on the
//!    same redis-server (`python_remote.py`, which installs them in a venv from PyPI). Target:
//!    mproc's `map1` ≥ 10× each.
//!
//! ```text
//! cargo bench -p mproc --features remote --bench remote
//! cargo bench -p mproc --features remote --bench remote -- --no-python
//! cargo bench -p mproc --features remote --bench remote -- --map1 100000
//! ```
//!
//! `-- --map1 [N] [--workers W]` runs only `map1` (`processes(64)`, three rounds of N tasks,
//! 30 000 by default, agents of W workers each, by default the host's CPUs) and prints where
//! the server's time went (`INFO commandstats`): for profiling.
//!
//! Without `--bench` on its command line (as under `cargo test --benches`) it does a smoke run
//! of a few samples each, and no Python.

#[path = "../tests/remote/harness.rs"]
#[allow(dead_code, unused_imports)]
mod harness;
#[allow(dead_code)]
mod remote_common;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Agent, RedisServer, TempDir, key_file};
use mproc::{ErrorKind, Pool, Remote};
use remote_common::{floor_round_trip, quantile};

fn trivial(n: u64) -> u64 {
    n ^ 0x5a
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Verdicts(Vec<(String, bool)>);

impl Verdicts {
    fn check(&mut self, what: &str, ok: bool) {
        self.0.push((what.to_owned(), ok));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let python = full && !args.iter().any(|a| a == "--no-python");
    let scale = |n: usize| if full { n } else { (n / 100).max(10) };
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = redis.url();
    let dir = TempDir::new("bench-remote").expect("a temp dir");
    let key = key_file(dir.path());
    let remote = || Remote::redis(&url).expect("url").key_file(&key);
    let mut v = Verdicts(Vec::new());
    println!("remote bench: redis-server on a Unix socket, agents of this binary");

    if args.iter().any(|a| a == "--map1") {
        map1_alone(&redis, &key, remote, &args);
        return;
    }
    // 1 and 2: the floor and `apply` (one agent with one worker), in alternating rounds, so
    // that both see the same load on this shared VM.
    let agent = Agent::start(&url, &key, 1, &[]);
    let pool = Pool::builder().remote(remote()).build().expect("pool");
    wait_for_workers(&pool, 1);
    for i in 0..200 {
        pool.apply(trivial, (i,)).expect("warm-up");
    }
    let rounds = if full { 5 } else { 1 };
    let (mut floor, mut samples) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        floor.extend(floor_round_trip(&url, scale(5000) / rounds));
        samples.extend((0..(scale(3000) / rounds) as u64).map(|i| {
            let t = Instant::now();
            let r = pool.apply(trivial, (i,)).expect("apply");
            let took = t.elapsed();
            assert_eq!(r, trivial(i));
            took
        }));
    }
    let (f50, f99) = (quantile(&mut floor, 0.5), quantile(&mut floor, 0.99));
    println!(
        "floor   XADD→XREADGROUP→XADD→XREAD    p50 {:7.1} µs  p99 {:7.1} µs",
        us(f50),
        us(f99)
    );
    let (a50, a99) = (quantile(&mut samples, 0.5), quantile(&mut samples, 0.99));
    println!(
        "apply   round trip                     p50 {:7.1} µs  p99 {:7.1} µs  ({:.2}x the floor's p50)",
        us(a50),
        us(a99),
        us(a50) / us(f50)
    );
    v.check("apply p50 <= 2x floor p50", a50 <= f50 * 2);
    drop(pool);
    drop(agent);

    // 3 and 4: two agents, each with as many workers as an agent has by default.
    let per_agent = mproc::cpu_count();
    let agents = [
        Agent::start(&url, &key, per_agent, &[]),
        Agent::start(&url, &key, per_agent, &[]),
    ];
    let pool = Pool::builder().remote(remote()).build().expect("pool");
    wait_for_workers(&pool, 2 * per_agent);
    let n = scale(30_000) as u64;
    pool.chunksize(1).map(trivial, 0..1000).expect("warm-up");
    let t = Instant::now();
    let got = pool.chunksize(1).map(trivial, 0..n).expect("map1");
    let default_rate = n as f64 / t.elapsed().as_secs_f64();
    assert_eq!(got.len(), n as usize);
    let wide = Pool::builder()
        .remote(remote())
        .processes(64)
        .build()
        .expect("pool");
    wide.chunksize(1).map(trivial, 0..1000).expect("warm-up");
    let mut wide_rates = Vec::new();
    for _ in 0..if full { 5 } else { 1 } {
        let t = Instant::now();
        let got = wide.chunksize(1).map(trivial, 0..n).expect("map1");
        wide_rates.push(n as f64 / t.elapsed().as_secs_f64());
        assert_eq!(got.len(), n as usize);
    }
    let rounds: Vec<String> = wide_rates.iter().map(|r| format!("{r:.0}")).collect();
    wide_rates.sort_by(f64::total_cmp);
    let wide_rate = wide_rates[wide_rates.len() / 2];
    println!(
        "map1    chunksize(1), 2 agents of {per_agent} workers {:9.0} tasks/s (window {})  {:9.0} tasks/s (processes(64), median of rounds {})",
        default_rate,
        2 * per_agent,
        wide_rate,
        rounds.join(" "),
    );
    v.check("map1 >= 30k tasks/s (processes(64))", wide_rate >= 30_000.0);
    drop(wide);

    let items = scale(1_000_000) as u64;
    pool.map(trivial, 0..10_000).expect("warm-up");
    let mut rates = Vec::new();
    for _ in 0..if full { 5 } else { 1 } {
        let t = Instant::now();
        let got = pool.map(trivial, 0..items).expect("map");
        rates.push(items as f64 / t.elapsed().as_secs_f64());
        assert_eq!(got.len(), items as usize);
    }
    rates.sort_by(f64::total_cmp);
    let map_rate = rates[rates.len() / 2];
    println!(
        "map     1M u64, default chunks, 2 agents {:8.2} M items/s (median of {})",
        map_rate / 1e6,
        rates.len()
    );
    v.check("map >= 3M items/s", map_rate >= 3e6);
    drop(pool);
    drop(agents);

    // 5. death: SIGKILL of an agent running a long task -> WorkerLost.
    let mut deaths = Vec::new();
    for _ in 0..if full { 5 } else { 1 } {
        let mut agent = Agent::start(&url, &key, 1, &[]);
        let pool = Pool::builder().remote(remote()).build().expect("pool");
        wait_for_workers(&pool, 1);
        pool.apply(trivial, (1,)).expect("warm-up");
        let r = pool.apply_async(sleep_ms, (60_000,)).expect("submit");
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        agent.kill();
        let e = r.get_timeout(Duration::from_secs(10)).expect_err("lost");
        let took = t.elapsed();
        assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
        deaths.push(took);
    }
    let d50 = quantile(&mut deaths, 0.5);
    println!(
        "death   SIGKILL -> WorkerLost, TTL 1 s   median {:7.0} ms",
        d50.as_secs_f64() * 1e3
    );
    v.check("death <= 1.5x TTL", d50 <= Duration::from_millis(1500));

    // 6. Celery and RQ on the same server.
    if python {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python_remote.py");
        let out = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .args([
                script,
                "--redis",
                &url,
                "--count",
                "2000",
                "--tools",
                "celery,rq",
            ])
            .output()
            .expect("run python_remote.py");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().filter(|l| l.starts_with('{')) {
            let rate = field(line, "tasks_per_s").and_then(|r| r.parse::<f64>().ok());
            let tool = field(line, "tool").unwrap_or_default();
            let version = field(line, "version").unwrap_or_default();
            match rate {
                Some(r) => {
                    println!(
                        "python  {tool} {version}: {r:9.0} tasks/s; mproc map1 is {:.1}x",
                        wide_rate / r
                    );
                    v.check(&format!("map1 >= 10x {tool}"), wide_rate >= 10.0 * r);
                }
                None => println!("python  {line}"),
            }
        }
        if !out.status.success() {
            println!("python  failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    println!();
    for (what, ok) in &v.0 {
        println!("{} {what}", if *ok { "PASS" } else { "MISS" });
    }
    drop(redis);
}

/// Waits (bounded) until the agents announce `n` workers.
fn wait_for_workers(pool: &Pool, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.processes() < n {
        assert!(Instant::now() < deadline, "agents did not register");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A field of a flat JSON line, as text (the script's own output; no JSON crate needed).
fn field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = line[at..].trim_start();
    let value = if let Some(s) = rest.strip_prefix('"') {
        s[..s.find('"')?].to_owned()
    } else {
        rest[..rest.find([',', '}'])?].trim().to_owned()
    };
    Some(value)
}

/// `--map1 [N]`: `map1` alone, three rounds, then the server's time per command.
fn map1_alone(
    redis: &RedisServer,
    key: &std::path::Path,
    remote: impl Fn() -> Remote,
    args: &[String],
) {
    let url = redis.url();
    let n: u64 = args
        .iter()
        .skip_while(|a| *a != "--map1")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(30_000);
    let per_agent = args
        .iter()
        .skip_while(|a| *a != "--workers")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(mproc::cpu_count);
    let agents = [
        Agent::start(&url, key, per_agent, &[]),
        Agent::start(&url, key, per_agent, &[]),
    ];
    let pool = Pool::builder()
        .remote(remote())
        .processes(64)
        .build()
        .expect("pool");
    wait_for_workers(&pool, 2 * per_agent);
    pool.chunksize(1).map(trivial, 0..1000).expect("warm-up");
    let mut c = harness::RespConn::unix(&redis.socket_path()).expect("a connection");
    c.call(&["CONFIG", "RESETSTAT"]).expect("CONFIG RESETSTAT");
    for _ in 0..3 {
        let t = Instant::now();
        let got = pool.chunksize(1).map(trivial, 0..n).expect("map1");
        assert_eq!(got.len(), n as usize);
        println!(
            "map1    chunksize(1), 2 agents of {per_agent} workers, processes(64)  {:9.0} tasks/s",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
    if let Ok(harness::Reply::Bulk(b)) = c.call(&["INFO", "commandstats"]) {
        println!("server time per command over the {} tasks:", 3 * n);
        for line in String::from_utf8_lossy(&b)
            .lines()
            .filter(|l| l.starts_with("cmdstat_"))
        {
            println!("  {line}");
        }
    }
    drop(pool);
    drop(agents);
}
