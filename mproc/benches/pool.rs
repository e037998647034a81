//! Pool benchmark: what a `Pool` costs per task, per item, at start, under CPU load and when a
//! worker dies, next to the operating system's floor and to Python's `multiprocessing.Pool`.
//!
//! Sections, each with its target (checked at the end, PASS or MISS):
//!
//! 1. `apply`: round trip `pool.apply_async(f, (x,))?.get()` of a trivial `fn(u64) -> u64` on
//!    a warm `Pool::new(2)`, p50 and p99. Floor: an 8-byte ping-pong over a Unix socketpair
//!    with a forked child that echoes with raw `read`/`write`. Shown beside them, not a
//!    target: the same echo through a relay thread (caller, thread, child, thread, caller),
//!    the shape of any pool with a dispatcher thread. Samples of the three alternate (so the
//!    pool idles for the other two's round trips between calls, and its worker may have gone
//!    to sleep). Targets: p50 <= 2x the floor's p50; p99 <= 50 µs. Before those, each alone
//!    and back to back: a ping-pong of a child spinning on a word of a shared page (issue 15's
//!    floor); the same with the call encoded by mproc's codec, decoded and made in the child
//!    and its `Result` sent back the same way (`pool_call_floor.rs`: a lower bound of any
//!    call to another process, not a design); the same again with a pool's duties kept
//!    (result handles, books under a lock, rings of frames, a claim, a function table, sleep
//!    words read: `DutyEcho`, a lean design's floor); a ping-pong through a word of a shared page
//!    where both sides sleep in `FUTEX_WAIT` (each wake-up finds its CPU idle: what that costs
//!    here, for reference); and, once the pool is warm, `pool.apply(f, (x,))` itself (issue
//!    15's target: p50 <= 3x the spin ping-pong; beside it `apply_async(f, (x,))?.get()`,
//!    which makes a result handle first). The target is checked on the spin floor and back-to-back
//!    `apply` timed again in six alternating pairs of blocks, each block's ratio of p50s taken
//!    and the median checked: a floor timed alone once can meet another moment of the machine
//!    than the calls (its p50 read 0.37-0.41 µs, the blocks' 0.12-0.13, in two runs of four,
//!    which made the ratio look like 2.2-2.6x). On the 2-CPU VM this was written on, the floor
//!    itself has two levels, 0.12-0.13 µs and 0.35-0.44 µs (where the host runs the two
//!    virtual CPUs, it seems), for whole runs; the calls slow down with it, and the ratio is
//!    5-8x at the first and 2.4-3.4x at the second. Under `--pin` the spinning rows are skipped
//!    (two spinning processes on one CPU measure time slices) and that target is not checked.
//! 2. `map1`: throughput of `pool.chunksize(1).map(f, 0..N)`, one task per item, in tasks/s.
//!    Target: >= 2,500,000 tasks/s (issue 15; the first round asked 1,000,000).
//! 3. `map`: `pool.map(f, 0..1_000_000u64)` with the default chunk size, in items/s. Target:
//!    >= 3x Python's `Pool(2).map(f, range(1_000_000))`.
//! 4. `start`: `Pool::new(2)` (by builder, per start method) plus its first `apply(f, (1,))`,
//!    timed together; the pool's drop afterwards is not timed. Methods sampled round-robin.
//!    Target: median <= 2 ms for the default (forkserver).
//! 5. `speedup`: 40 CPU-bound tasks of about 10 ms (an integer loop calibrated here), run in
//!    this process one after another and on a warm `Pool::new(2)` with `chunksize(1)`.
//!    Target: speed-up >= 0.95 x `mproc::cpu_count()`.
//! 6. `death`: a one-worker pool reports its worker's pid, then runs a long sleep; once the
//!    sleep has begun (it writes a marker file first), the worker gets `SIGKILL` and the time
//!    from the kill to `get()` returning `Err(WorkerLost)` is taken. Target: median <= 10 ms.
//!    Python is not run here: its `Pool` never returns such a task's result (it hangs).
//!
//! The sections run in the order 1, 4, 2, 3, 5, 6: pool starts early, while this process is
//! small (a fork copies its page tables, and the maps leave a large heap behind).
//!
//! Python's side (`benches/python_pool.py`, interpreter `$PYTHON` or `python3`) times itself
//! in its own process after the Rust sections, and this binary parses what it prints.
//!
//! Method: plain `std::time::Instant`, warm-ups before every measurement, medians (and p99
//! where asked). Run it with:
//!
//! ```text
//! cargo bench -p mproc --bench pool                  # everything, under 2 minutes
//! cargo bench -p mproc --bench pool -- apply death   # only the sections named
//! cargo bench -p mproc --bench pool -- --pin 0       # everything on CPU 0 only
//! cargo bench -p mproc --bench pool -- --no-python   # skip Python
//! ```
//!
//! `--pin CPU` runs everything (this process, the workers, the fork server, Python) on one CPU:
//! a wake-up across CPUs costs about ten microseconds on a small VM, and pinning shows the CPU
//! cost alone (the speed-up target then expects 0.95x of one CPU). Without `--bench` on its
//! command line (as under `cargo test --benches`) it does a smoke run of a few samples each.

mod common;
mod pool_call_floor;

/// mproc's wire format, compiled from the library's source files (it is crate-private), so
/// the call floor (`pool_call_floor`) encodes exactly as mproc does.
#[allow(dead_code, unused_macros, unreachable_pub)]
#[path = "../src/wire"]
mod wire {
    pub(crate) mod codec;
    mod de;
    pub(crate) mod format;
    mod ser;
}

/// The casts the wire format copies sequences of numbers with (`crate::sys::cast` there).
#[allow(dead_code, unreachable_pub)]
#[path = "../src/sys"]
mod sys {
    pub(crate) mod cast;
}
use common::{futex_wait, futex_wake, machine, pin_to, spin};
use pool_call_floor::{CallEcho, DutyEcho};

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool, StartMethod};

/// Every section's name, in order.
const SECTIONS: [&str; 6] = ["apply", "map1", "map", "start", "speedup", "death"];

/// The trivial target.
fn ident(x: u64) -> u64 {
    x
}

/// The worker's process id.
fn worker_pid() -> u32 {
    std::process::id()
}

/// Writes `marker` (so the parent knows the task has begun), then sleeps `ms` milliseconds.
fn sleeper(marker: String, ms: u64) -> u64 {
    std::fs::write(&marker, b"").expect("writing the marker file");
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Sample counts; `FULL` under `--bench`, `SMOKE` otherwise.
struct Plan {
    /// Round trips of each of raw ping-pong and mproc apply (section 1).
    apply: usize,
    /// Untimed round trips of each first.
    apply_warmup: usize,
    /// Python's round trips.
    py_apply: usize,
    /// Seconds one `chunksize(1)` map run should take (N is chosen from a warm-up run).
    map1_secs: f64,
    /// Bounds on N for section 2.
    map1_n: (usize, usize),
    /// Runs of section 2.
    map1_runs: usize,
    /// Python's N and runs for section 2.
    py_map1: (usize, usize),
    /// Items of section 3 (both sides).
    map_n: usize,
    /// Runs of section 3, Rust and Python.
    map_runs: usize,
    py_map_runs: usize,
    /// Pool starts per method (section 4), and Python's for fork, forkserver, spawn.
    start: usize,
    py_start: (usize, usize, usize),
    /// Untimed pool starts per method first.
    start_warmup: usize,
    /// Length of one CPU-bound task, how many, and how many runs of each side (section 5).
    spin_ms: f64,
    spin_tasks: usize,
    spin_runs: usize,
    /// Kills (section 6).
    death: usize,
    /// Python's warm-up repetitions.
    py_warmup: usize,
}

const FULL: Plan = Plan {
    apply: 20_000,
    apply_warmup: 2_000,
    py_apply: 20_000,
    map1_secs: 1.0,
    map1_n: (100_000, 2_000_000),
    map1_runs: 3,
    py_map1: (100_000, 1),
    map_n: 1_000_000,
    map_runs: 5,
    py_map_runs: 3,
    start: 50,
    py_start: (30, 10, 10),
    start_warmup: 3,
    spin_ms: 10.0,
    spin_tasks: 40,
    spin_runs: 5,
    death: 30,
    py_warmup: 2,
};

const SMOKE: Plan = Plan {
    apply: 50,
    apply_warmup: 10,
    py_apply: 50,
    map1_secs: 0.01,
    map1_n: (1_000, 1_000),
    map1_runs: 1,
    py_map1: (1_000, 1),
    map_n: 10_000,
    map_runs: 1,
    py_map_runs: 1,
    start: 2,
    py_start: (1, 1, 1),
    start_warmup: 1,
    spin_ms: 1.0,
    spin_tasks: 4,
    spin_runs: 1,
    death: 2,
    py_warmup: 1,
};

/// One line of the results table.
struct Row {
    section: usize,
    name: String,
    n: String,
    result: String,
    note: String,
}

/// One target's check.
struct Check {
    section: usize,
    what: String,
    /// The measured value as shown, and whether it met the target (None: not measured).
    shown: String,
    pass: Option<bool>,
}

/// Everything measured.
#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    checks: Vec<Check>,
    /// mproc's apply round trip p50 and p99, µs (section 1).
    apply: Option<(f64, f64)>,
    /// mproc's items/s of section 2 and of section 3.
    map1_rate: Option<f64>,
    map_rate: Option<f64>,
    /// mproc's median Pool(2)+apply under forkserver, µs (section 4).
    forkserver_start: Option<f64>,
}

impl Results {
    fn row(&mut self, section: usize, name: &str, n: String, result: String, note: String) {
        self.rows.push(Row {
            section,
            name: name.to_owned(),
            n,
            result,
            note,
        });
    }

    fn check(&mut self, section: usize, what: String, shown: String, pass: Option<bool>) {
        self.checks.push(Check {
            section,
            what,
            shown,
            pass,
        });
    }
}

fn main() -> Result<(), mproc::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let plan = if full { FULL } else { SMOKE };
    let mut pin: Option<usize> = None;
    let mut python = true;
    let mut filters: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pin" => {
                pin = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--pin takes a CPU number"),
                );
            }
            "--no-python" => python = false,
            s if !s.starts_with('-') => filters.push(s),
            _ => {}
        }
    }
    for f in &filters {
        assert!(
            SECTIONS.contains(f),
            "unknown section {f:?}; the sections are {SECTIONS:?}"
        );
    }
    let wanted = |name: &str| filters.is_empty() || filters.contains(&name);
    let started = Instant::now();

    println!(
        "mproc pool bench ({})",
        if full {
            "full"
        } else {
            "smoke: a few samples each, not meaningful"
        }
    );
    println!("machine: {}", machine());
    if let Some(cpu) = pin {
        pin_to(cpu);
        println!("pinned: this process and every child run on CPU {cpu} only");
    }
    let cores = mproc::cpu_count();
    let mut res = Results::default();
    let mut py = PyRequest::default();

    if wanted("apply") {
        apply_section(&plan, pin.is_some(), &mut res)?;
        py.add(format!("apply={}", plan.py_apply));
    }
    if wanted("start") {
        start_section(&plan, &mut res)?;
        let (f, fs, s) = plan.py_start;
        py.add(format!("start_fork={f}"));
        py.add(format!("start_forkserver={fs}"));
        py.add(format!("start_spawn={s}"));
    }
    if wanted("map1") {
        map1_section(&plan, &mut res)?;
        py.add(format!("map1={}:{}", plan.py_map1.0, plan.py_map1.1));
    }
    if wanted("map") {
        map_section(&plan, &mut res)?;
        py.add(format!("map={}:{}", plan.map_n, plan.py_map_runs));
    }
    if wanted("speedup") {
        speedup_section(&plan, cores, &mut res)?;
    }
    if wanted("death") {
        death_section(&plan, &mut res)?;
    }

    let mut py_out = None;
    if python && !py.args.is_empty() {
        println!("running python ({} measurements)...", py.args.len());
        match run_python(&py.args, plan.py_warmup) {
            Ok(out) => py_out = Some(out),
            Err(e) => println!("python skipped: {e}"),
        }
    }
    compare_python(py_out.as_ref(), &mut res);

    report(&res, py_out.as_ref(), full);
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `round_trip`'s round trips, timed back to back after a warm-up.
fn alone(round_trip: impl FnMut(u64), plan: &Plan) -> Pct {
    timed(round_trip, plan.apply_warmup, plan.apply)
}

/// `n` of `round_trip`'s round trips, timed back to back after `warmup` untimed ones.
fn timed(mut round_trip: impl FnMut(u64), warmup: usize, n: usize) -> Pct {
    for i in 0..warmup as u64 {
        round_trip(i);
    }
    let samples: Vec<f64> = (0..n as u64)
        .map(|i| {
            let t = Instant::now();
            round_trip(i);
            us(t)
        })
        .collect();
    Pct::of(&samples)
}

/// Blocks in which [`interleaved`] alternates the spin floor and back-to-back calls.
const BLOCKS: usize = 6;

/// The spin ping-pong's p50 and back-to-back `apply`'s p50 in each of [`BLOCKS`] pairs of
/// blocks timed one after the other, so that both sides of a ratio see the same moment of the
/// machine (a virtual machine's speed drifts by a third between seconds). Each spin block has
/// a spinning child of its own, gone before the calls; the child touches only its shared page,
/// so it may be forked now that the pool's threads run (see `common::fork_child`).
fn interleaved(pool: &Pool, plan: &Plan) -> Result<Vec<(f64, f64)>, mproc::Error> {
    let n = (plan.apply / BLOCKS).max(1);
    let warmup = (plan.apply_warmup / BLOCKS).max(1);
    let mut blocks = Vec::with_capacity(BLOCKS);
    for _ in 0..BLOCKS {
        let spin = {
            let mut echo = WordEcho::spinning();
            timed(|i| echo.round_trip(i), warmup, n)
        };
        let mut failed = None;
        let calls = timed(
            |i| match pool.apply(ident, (i,)) {
                Ok(r) => assert_eq!(r, i),
                Err(e) => failed = Some(e),
            },
            warmup,
            n,
        );
        if let Some(e) = failed {
            return Err(e);
        }
        blocks.push((spin.p50, calls.p50));
    }
    Ok(blocks)
}

/// Back-to-back calls from a caller held on one CPU (as a latency-minded program pins its
/// thread), to a worker put on that CPU first and then let go (where a wake-up may leave it).
/// Two threads spinning and yielding to each other stay where they are: before the worker
/// moved itself off its caller's CPU, such calls took turns at one CPU, about 10 µs each,
/// for seconds. `None` where this process has one CPU. Also how long the worker took to
/// leave (read from `/proc` every 100 calls).
fn after_sharing_a_cpu(pool: &Pool, plan: &Plan) -> Result<Option<(String, Pct)>, mproc::Error> {
    use rustix::process::Pid;
    use rustix::thread::{CpuSet, sched_getaffinity, sched_getcpu, sched_setaffinity};
    let Ok(mine) = sched_getaffinity(None) else {
        return Ok(None);
    };
    if mine.count() < 2 {
        return Ok(None);
    }
    let worker = pool.apply(worker_pid, ())?;
    let Some(its_pid) = Pid::from_raw(worker as i32) else {
        return Ok(None);
    };
    let cpu = sched_getcpu();
    let mut one = CpuSet::new();
    one.set(cpu);
    let held = sched_setaffinity(None, &one).is_ok();
    let put = held && sched_setaffinity(Some(its_pid), &one).is_ok();
    for i in 0..200u64 {
        assert_eq!(pool.apply(ident, (i,))?, i);
    }
    let _ = sched_setaffinity(Some(its_pid), &mine);
    let last_cpu = || {
        std::fs::read_to_string(format!("/proc/{worker}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(36)?
                    .parse::<usize>()
                    .ok()
            })
    };
    // Nothing else between the calls (a look at `/proc` takes long enough for the worker to
    // sleep, and a wake-up may put it back on the caller's CPU).
    let mut samples = Vec::with_capacity(plan.apply);
    for i in 0..plan.apply as u64 {
        let t = Instant::now();
        let r = pool.apply(ident, (i,));
        samples.push(us(t));
        assert_eq!(r.expect("apply"), i);
    }
    let apart = last_cpu().is_some_and(|c| c != cpu);
    let _ = sched_setaffinity(None, &mine);
    if !put {
        return Ok(None);
    }
    let calls = Pct::of(&samples);
    let slow = samples.iter().filter(|&&t| t > 5.0).count();
    let said = format!(
        "{slow} calls over 5 µs (turns at one CPU); the worker {} at the end",
        if apart {
            "on another CPU"
        } else {
            "still on the caller's"
        }
    );
    Ok(Some((said, calls)))
}

/// Calls in a burst of [`bursts_after_a_rest`].
const BURST: usize = 50;

/// Bursts of [`BURST`] back-to-back calls, each after 300 µs without one (the worker, past
/// its 50 µs of lingering, sleeps; the burst's first call wakes it): each burst timed whole.
/// A wake-up over a socket asks the kernel to run the woken thread on the waker's CPU, and a
/// worker left there took turns with its caller for the whole burst (about 10 µs a call)
/// until it moved off that CPU at once.
fn bursts_after_a_rest(pool: &Pool) -> Result<Pct, mproc::Error> {
    let mut samples = Vec::with_capacity(500);
    for _ in 0..500 {
        std::thread::sleep(Duration::from_micros(300));
        let t = Instant::now();
        for i in 0..BURST as u64 {
            assert_eq!(pool.apply(ident, (i,))?, i);
        }
        samples.push(us(t));
    }
    Ok(Pct::of(&samples))
}

/// How many times this process's pool threads (`mproc-pool`) have been switched to, from
/// `/proc` (their voluntary and involuntary context switches together).
fn dispatcher_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut n = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        if !status.starts_with("Name:\tmproc-pool") {
            continue;
        }
        n += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n
}

/// Section 1: apply round trip against a raw socketpair ping-pong. `pinned`: everything runs
/// on one CPU, where two spinning processes would measure the scheduler's time slices, so the
/// spinning floors are skipped.
fn apply_section(plan: &Plan, pinned: bool, res: &mut Results) -> Result<(), mproc::Error> {
    println!("1. apply round trip ({} samples each)...", plan.apply);
    // The shared-memory floors first, each on its own: its child spins on a core for as long
    // as it lives, which would slow every other row.
    let spin = (!pinned).then(|| {
        let mut echo = WordEcho::spinning();
        alone(|i| echo.round_trip(i), plan)
    });
    // The same with the call encoded, decoded and made (a lower bound, not a design).
    let call = (!pinned).then(|| {
        let mut echo = CallEcho::start();
        alone(|i| assert_eq!(echo.call(i), i), plan)
    });
    // The same with a pool's duties kept: handles, books, claims, a table, sleep words.
    let duty = (!pinned).then(|| {
        let echo = DutyEcho::start();
        alone(|i| assert_eq!(echo.call(i), i), plan)
    });
    // The sleeping floor next, on its own too: between two `apply` calls the other rows'
    // round trips are the pool's idle time, which decides whether its worker still watches
    // its lane (50 µs) or sleeps, so the rows sampled among them stay as they were.
    let mut echo = WordEcho::sleeping();
    let slept = alone(|i| echo.round_trip(i), plan);
    drop(echo);
    // The echo children are forked before any pool or thread exists.
    let mut echo = Echo::start();
    let mut relay = Relay::start(Echo::start());
    let pool = Pool::new(2)?;
    for i in 0..plan.apply_warmup as u64 {
        echo.round_trip(i);
        relay.round_trip(i);
        assert_eq!(pool.apply_async(ident, (i,))?.get()?, i);
    }
    // Back to back first, as the floors are timed: the worker still watches its lane and the
    // caller still reads it when the next call comes, as the spinning floors' sides do. How
    // often the pool's own thread had to run meanwhile is counted: each time costs the
    // calls around it tens of microseconds on two CPUs.
    let switches = dispatcher_switches();
    let alone_mp = alone(
        |i| assert_eq!(pool.apply(ident, (i,)).expect("apply"), i),
        plan,
    );
    let switches = dispatcher_switches() - switches;
    // The same through a result handle: the job a later `get` waits on is made for it.
    let alone_async = alone(
        |i| {
            let r = pool.apply_async(ident, (i,)).and_then(|r| r.get());
            assert_eq!(r.expect("apply_async"), i);
        },
        plan,
    );
    let blocks = match pinned {
        true => None,
        false => Some(interleaved(&pool, plan)?),
    };
    let together = match pinned {
        true => None,
        false => after_sharing_a_cpu(&pool, plan)?,
    };
    let bursts = bursts_after_a_rest(&pool)?;
    let mut raw = Vec::with_capacity(plan.apply);
    let mut via = Vec::with_capacity(plan.apply);
    let mut mp = Vec::with_capacity(plan.apply);
    for i in 0..plan.apply as u64 {
        let t = Instant::now();
        echo.round_trip(i);
        raw.push(us(t));
        let t = Instant::now();
        relay.round_trip(i);
        via.push(us(t));
        let t = Instant::now();
        let r = pool.apply_async(ident, (i,))?.get()?;
        mp.push(us(t));
        assert_eq!(r, i);
    }
    drop(pool);
    drop(relay);
    drop(echo);
    let raw = Pct::of(&raw);
    let via = Pct::of(&via);
    let mp = Pct::of(&mp);
    res.apply = Some((mp.p50, mp.p99));
    res.row(
        1,
        "raw ping-pong 8 B, socketpair + forked child",
        raw.n.to_string(),
        format!("p50 {:.1} µs  p99 {:.1} µs", raw.p50, raw.p99),
        "(floor)".into(),
    );
    res.row(
        1,
        "raw relay: caller->thread->child->thread->caller",
        via.n.to_string(),
        format!("p50 {:.1} µs  p99 {:.1} µs", via.p50, via.p99),
        format!(
            "p50 {:.2}x floor, p99 {:.2}x floor (a pool's shape)",
            via.p50 / raw.p50,
            via.p99 / raw.p99
        ),
    );
    res.row(
        1,
        "mproc apply_async(f,(x,)).get(), Pool(2)",
        mp.n.to_string(),
        format!("p50 {:.1} µs  p99 {:.1} µs", mp.p50, mp.p99),
        format!(
            "p50 {:.2}x floor, p99 {:.2}x floor",
            mp.p50 / raw.p50,
            mp.p99 / raw.p99
        ),
    );
    res.check(
        1,
        "apply p50 / raw ping-pong p50 <= 2.00".into(),
        format!(
            "{:.2} ({:.1} / {:.1} µs)",
            mp.p50 / raw.p50,
            mp.p50,
            raw.p50
        ),
        Some(mp.p50 <= 2.0 * raw.p50),
    );
    res.row(
        1,
        "mproc apply(f,(x,)), back to back",
        alone_mp.n.to_string(),
        alone_mp.p50_p99_mean(),
        format!(
            "(timed alone and back to back, as the floors below; the pool's thread ran {} \
             times in {} calls)",
            switches,
            plan.apply + plan.apply_warmup
        ),
    );
    res.row(
        1,
        "mproc apply_async(f,(x,)).get(), back to back",
        alone_async.n.to_string(),
        alone_async.p50_p99_mean(),
        format!(
            "{:.2}x apply (a result handle made for a later get)",
            alone_async.p50 / alone_mp.p50
        ),
    );
    if let Some((said, calls)) = together {
        res.row(
            1,
            "apply back to back, caller held on one CPU, worker put there first",
            calls.n.to_string(),
            calls.p50_p99_mean(),
            format!("the worker then let go (as a wake-up may leave it): {said}"),
        );
    }
    res.row(
        1,
        "apply in bursts of 50 after 300 µs idle (the worker asleep)",
        bursts.n.to_string(),
        format!(
            "p50 {:.0} µs  p90 {:.0} µs  mean {:.0} µs a burst",
            bursts.p50, bursts.p90, bursts.mean
        ),
        format!(
            "{:.2} µs a call at the mean, its wake-up included (back to back: {:.2} µs)",
            bursts.mean / BURST as f64,
            alone_mp.mean
        ),
    );
    const SKIPPED: &str = "skipped: pinned to one CPU, two spinning processes measure time slices";
    match spin {
        Some(spin) => res.row(
            1,
            "raw spin ping-pong, shared page + forked child",
            spin.n.to_string(),
            format!("p50 {:.2} µs  p99 {:.2} µs", spin.p50, spin.p99),
            format!(
                "apply back to back is {:.1}x it (issue 15 asks <= 3x)",
                alone_mp.p50 / spin.p50
            ),
        ),
        None => res.row(
            1,
            "raw spin ping-pong",
            "-".into(),
            "-".into(),
            SKIPPED.into(),
        ),
    }
    // The call floors beside the spin: apply's ratio to each.
    let floors = [
        (call, "raw encoded call", ", shared page", "a lower bound"),
        (
            duty,
            "raw call with a pool's duties",
            "",
            "a lean design's floor",
        ),
    ];
    for (floor, name, page, what) in floors {
        match (floor, spin) {
            (Some(floor), Some(spin)) => res.row(
                1,
                &format!("{name}{page}, both spinning"),
                floor.n.to_string(),
                format!("p50 {:.2} µs  p99 {:.2} µs", floor.p50, floor.p99),
                format!(
                    "{:.1}x spin; apply back to back is {:.1}x it ({what})",
                    floor.p50 / spin.p50,
                    alone_mp.p50 / floor.p50
                ),
            ),
            _ => res.row(1, name, "-".into(), "-".into(), SKIPPED.into()),
        }
    }
    // The ratio the check reads: each block's calls over the same block's spin.
    let ratio = blocks.as_ref().map(|blocks| {
        let mut ratios: Vec<f64> = blocks.iter().map(|&(spin, call)| call / spin).collect();
        ratios.sort_by(f64::total_cmp);
        let range = |xs: Vec<f64>| {
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(0.0, f64::max);
            format!("{lo:.2}-{hi:.2} µs")
        };
        res.row(
            1,
            "apply back to back / spin, in alternating blocks",
            format!("{BLOCKS}x2x{}", (plan.apply / BLOCKS).max(1)),
            format!(
                "spin p50 {}, apply p50 {}",
                range(blocks.iter().map(|b| b.0).collect()),
                range(blocks.iter().map(|b| b.1).collect())
            ),
            format!(
                "ratio per block {:.1}-{:.1}x, median {:.1}x (issue 15 asks <= 3x)",
                ratios[0],
                ratios[ratios.len() - 1],
                median(&ratios)
            ),
        );
        median(&ratios)
    });
    res.row(
        1,
        "raw futex ping-pong, both asleep, CPUs idle between",
        slept.n.to_string(),
        format!("p50 {:.1} µs  p99 {:.1} µs", slept.p50, slept.p99),
        "(what waking idle CPUs costs; timed alone, not beside apply)".into(),
    );
    res.check(
        1,
        "apply p50, back to back / spin ping-pong p50 <= 3.00 (issue 15; median of the \
         alternating blocks)"
            .into(),
        match (ratio, spin) {
            (Some(ratio), Some(spin)) => format!(
                "{ratio:.2} (timed apart: {:.2} / {:.2} µs, {:.2})",
                alone_mp.p50,
                spin.p50,
                alone_mp.p50 / spin.p50
            ),
            _ => SKIPPED.into(),
        },
        ratio.map(|ratio| ratio <= 3.0),
    );
    res.check(
        1,
        "apply p99 <= 50 µs".into(),
        format!("{:.1} µs", mp.p99),
        Some(mp.p99 <= 50.0),
    );
    Ok(())
}

/// Section 2: `chunksize(1).map` throughput.
fn map1_section(plan: &Plan, res: &mut Results) -> Result<(), mproc::Error> {
    let pool = Pool::new(2)?;
    // A warm-up run that also sizes N for about `map1_secs` a run.
    let probe = 20_000.min(plan.map1_n.0) as u64;
    let t = Instant::now();
    assert_eq!(
        pool.chunksize(1).map(ident, 0..probe)?.len(),
        probe as usize
    );
    let rate = probe as f64 / t.elapsed().as_secs_f64();
    let n = ((rate * plan.map1_secs / 100_000.0).round() as usize * 100_000)
        .clamp(plan.map1_n.0, plan.map1_n.1);
    println!(
        "2. chunksize(1) map of {n} items, {} runs...",
        plan.map1_runs
    );
    let mut secs = Vec::new();
    for _ in 0..plan.map1_runs {
        let t = Instant::now();
        let v = pool.chunksize(1).map(ident, 0..n as u64)?;
        secs.push(t.elapsed().as_secs_f64());
        assert_eq!((v.len(), v.last().copied()), (n, Some(n as u64 - 1)));
    }
    let rate = n as f64 / median(&secs);
    res.map1_rate = Some(rate);
    res.row(
        2,
        "mproc chunksize(1).map(f, 0..N), Pool(2)",
        format!("{n}x{}", plan.map1_runs),
        format!("{} tasks/s", thousands(rate)),
        format!("median run {:.0} ms", median(&secs) * 1e3),
    );
    res.check(
        2,
        "chunksize(1) map >= 2,500,000 tasks/s (issue 15)".into(),
        format!("{} tasks/s", thousands(rate)),
        Some(rate >= 2.5e6),
    );
    Ok(())
}

/// Section 3: default-chunksize map of a million items.
fn map_section(plan: &Plan, res: &mut Results) -> Result<(), mproc::Error> {
    println!(
        "3. default map of {} items, {} runs...",
        plan.map_n, plan.map_runs
    );
    let pool = Pool::new(2)?;
    let n = plan.map_n;
    assert_eq!(pool.map(ident, 0..n as u64)?.len(), n);
    let mut secs = Vec::new();
    for _ in 0..plan.map_runs {
        let t = Instant::now();
        let v = pool.map(ident, 0..n as u64)?;
        secs.push(t.elapsed().as_secs_f64());
        assert_eq!((v.len(), v.last().copied()), (n, Some(n as u64 - 1)));
    }
    let rate = n as f64 / median(&secs);
    res.map_rate = Some(rate);
    res.row(
        3,
        "mproc map(f, 0..N) default chunks, Pool(2)",
        format!("{n}x{}", plan.map_runs),
        format!("{} items/s", thousands(rate)),
        format!("median run {:.1} ms", median(&secs) * 1e3),
    );
    // The check needs Python; `compare_python` adds it.
    Ok(())
}

/// Section 4: pool creation to first result, per start method.
fn start_section(plan: &Plan, res: &mut Results) -> Result<(), mproc::Error> {
    println!(
        "4. Pool(2) + first apply, {} per start method...",
        plan.start
    );
    let methods = [
        StartMethod::Forkserver,
        StartMethod::Fork,
        StartMethod::Spawn,
    ];
    let once = |m: StartMethod| -> Result<f64, mproc::Error> {
        let t = Instant::now();
        let pool = Pool::builder().processes(2).start_method(m).build()?;
        let r = pool.apply(ident, (1,))?;
        let el = us(t);
        assert_eq!(r, 1);
        drop(pool);
        Ok(el)
    };
    for m in methods {
        for _ in 0..plan.start_warmup {
            once(m)?;
        }
    }
    let mut times = vec![Vec::new(); methods.len()];
    for _ in 0..plan.start {
        for (i, m) in methods.into_iter().enumerate() {
            times[i].push(once(m)?);
        }
    }
    for (m, t) in methods.iter().zip(&times) {
        let p = Pct::of(t);
        res.row(
            4,
            &format!("mproc Pool(2)+apply, {m}"),
            p.n.to_string(),
            format!("median {:.3} ms  p90 {:.3} ms", p.p50 / 1e3, p.p90 / 1e3),
            String::new(),
        );
        if *m == StartMethod::Forkserver {
            res.forkserver_start = Some(p.p50);
            res.check(
                4,
                "Pool(2)+apply median, forkserver (default) <= 2 ms".into(),
                format!("{:.2} ms", p.p50 / 1e3),
                Some(p.p50 <= 2000.0),
            );
        }
    }
    Ok(())
}

/// Section 5: CPU-bound speed-up over running in this process.
fn speedup_section(plan: &Plan, cores: usize, res: &mut Results) -> Result<(), mproc::Error> {
    let iters = common::spin_rounds_for(plan.spin_ms);
    println!(
        "5. speed-up: {} tasks of {iters} rounds (~{} ms), {} runs each way...",
        plan.spin_tasks, plan.spin_ms, plan.spin_runs
    );
    let expected = spin(iters);
    let pool = Pool::new(2)?;
    // Warm: the workers run the loop once too.
    assert_eq!(pool.chunksize(1).map(spin, [iters, iters])?[0], expected);
    let tasks = vec![iters; plan.spin_tasks];
    let (mut seq, mut par) = (Vec::new(), Vec::new());
    for _ in 0..plan.spin_runs {
        let t = Instant::now();
        for &k in &tasks {
            assert_eq!(spin(k), expected);
        }
        seq.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let v = pool.chunksize(1).map(spin, tasks.iter().copied())?;
        par.push(t.elapsed().as_secs_f64());
        assert!(v.iter().all(|&x| x == expected));
    }
    let (s, p) = (median(&seq), median(&par));
    let speedup = s / p;
    let task_ms = s / plan.spin_tasks as f64 * 1e3;
    res.row(
        5,
        "sequential, in this process",
        format!("{}x{}", plan.spin_tasks, plan.spin_runs),
        format!("{:.1} ms ({task_ms:.2} ms/task)", s * 1e3),
        String::new(),
    );
    res.row(
        5,
        "mproc Pool(2).chunksize(1).map",
        format!("{}x{}", plan.spin_tasks, plan.spin_runs),
        format!("{:.1} ms", p * 1e3),
        format!(
            "speed-up {speedup:.2}, efficiency {:.1}% of {cores} cores",
            100.0 * speedup / cores as f64
        ),
    );
    let goal = 0.95 * cores as f64;
    res.check(
        5,
        format!("CPU-bound speed-up >= 0.95 x {cores} cores = {goal:.2}"),
        format!("{speedup:.2}"),
        Some(speedup >= goal),
    );
    Ok(())
}

/// Section 6: from SIGKILL of a busy worker to `Err(WorkerLost)`.
fn death_section(plan: &Plan, res: &mut Results) -> Result<(), mproc::Error> {
    println!("6. worker death, {} kills...", plan.death);
    let pool = Pool::new(1)?;
    let marker = std::env::temp_dir().join(format!("mproc-pool-bench-{}", std::process::id()));
    let marker_s = marker.to_string_lossy().into_owned();
    let mut times = Vec::new();
    for run in 0..=plan.death {
        let _ = std::fs::remove_file(&marker);
        // The replacement of the worker killed last time, once it is up.
        let pid = pool.apply(worker_pid, ())?;
        let r = pool.apply_async(sleeper, (marker_s.clone(), 60_000))?;
        wait_for(&marker, Duration::from_secs(10));
        let t = Instant::now();
        // SAFETY: kill has no memory effects; `pid` is our pool's live worker (it answered
        // above and is now sleeping in `sleeper`, so it has not exited).
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        let e = r
            .get_timeout(Duration::from_secs(10))
            .expect_err("a killed worker's task must fail");
        let el = us(t);
        assert!(
            matches!(e.kind(), ErrorKind::WorkerLost(_)),
            "expected WorkerLost, got {e}"
        );
        // The first kill is a warm-up.
        if run > 0 {
            times.push(el);
        }
    }
    let _ = std::fs::remove_file(&marker);
    let p = Pct::of(&times);
    res.row(
        6,
        "SIGKILL of busy worker -> get() Err(WorkerLost)",
        p.n.to_string(),
        format!("median {:.2} ms  p90 {:.2} ms", p.p50 / 1e3, p.p90 / 1e3),
        format!("max {:.2} ms", p.max / 1e3),
    );
    res.row(
        6,
        "python Pool, same",
        "-".into(),
        "not run: get() hangs forever".into(),
        "the task is lost and never answered".into(),
    );
    res.check(
        6,
        "death to WorkerLost median <= 10 ms".into(),
        format!("{:.2} ms", p.p50 / 1e3),
        Some(p.p50 <= 10_000.0),
    );
    Ok(())
}

/// Polls until `path` exists.
fn wait_for(path: &Path, limit: Duration) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// A forked child that echoes 8-byte messages over a socketpair, with raw syscalls only.
struct Echo {
    fd: libc::c_int,
    pid: libc::pid_t,
}

impl Echo {
    fn start() -> Echo {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a writable array of two ints, as socketpair requires.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
        // SAFETY: the child calls only close, read, write and _exit, all async-signal-safe, so
        // it touches no state another thread might have held at the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let mut buf = [0u8; 8];
            // SAFETY: fds[0] is the parent's end, ours to close; `buf` is 8 writable bytes for
            // read and 8 initialised bytes for write; `_exit` ends the child without running
            // destructors.
            unsafe {
                libc::close(fds[0]);
                loop {
                    let n = libc::read(fds[1], buf.as_mut_ptr().cast(), 8);
                    if n <= 0 || libc::write(fds[1], buf.as_ptr().cast(), n as usize) != n {
                        libc::_exit(0);
                    }
                }
            }
        }
        // SAFETY: fds[1] is the child's end, open and owned here; the parent no longer needs it.
        unsafe { libc::close(fds[1]) };
        Echo { fd: fds[0], pid }
    }

    /// Sends `x` and reads it back.
    fn round_trip(&mut self, x: u64) {
        let out = x.to_ne_bytes();
        // SAFETY: `out` is 8 initialised bytes; `self.fd` is our open socket.
        let n = unsafe { libc::write(self.fd, out.as_ptr().cast(), 8) };
        assert_eq!(n, 8, "write: {}", std::io::Error::last_os_error());
        let mut back = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            // SAFETY: `back[got..]` is 8 - got writable bytes; `self.fd` is our open socket.
            let n = unsafe { libc::read(self.fd, back[got..].as_mut_ptr().cast(), 8 - got) };
            assert!(n > 0, "read: {}", std::io::Error::last_os_error());
            got += n as usize;
        }
        assert_eq!(u64::from_ne_bytes(back), x);
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // SAFETY: `self.fd` is open and owned by this Echo, closed once here; the child then
        // reads end of file and exits, and `status` is a writable int for waitpid.
        unsafe {
            libc::close(self.fd);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

/// A forked child that answers through a word of a shared page: the parent writes an odd
/// number, the child adds one. Spinning ([`WordEcho::spinning`]), both sides watch the word
/// in a loop (issue 15's floor: one cache line between two busy cores); sleeping
/// ([`WordEcho::sleeping`]), both sleep in the kernel while they wait (`FUTEX_WAIT` on the
/// word, `FUTEX_WAKE` after each store): a round trip between two processes that burn no core
/// while idle, paying a wake-up each way.
struct WordEcho {
    word: *const std::sync::atomic::AtomicU32,
    pid: libc::pid_t,
    sleeps: bool,
}

/// Tells the child to leave.
const ECHO_STOP: u32 = u32::MAX;

impl WordEcho {
    fn spinning() -> WordEcho {
        WordEcho::start(false)
    }

    fn sleeping() -> WordEcho {
        WordEcho::start(true)
    }

    fn start(sleeps: bool) -> WordEcho {
        use std::sync::atomic::{AtomicU32, Ordering};
        let page = common::shared_page();
        let word = page.cast::<AtomicU32>();
        // The child only watches and stores to the shared word and makes futex calls (forked
        // before this bench starts any thread: `apply` is its first section).
        let pid = common::fork_child(|| {
            // SAFETY: `word` points into the page mapped above (zeroed, aligned), shared with
            // the parent and never unmapped in this child.
            let w = unsafe { &*word };
            loop {
                let v = w.load(Ordering::Acquire);
                if v == ECHO_STOP {
                    return;
                }
                if v % 2 == 1 {
                    w.store(v + 1, Ordering::Release);
                    if sleeps {
                        futex_wake(w);
                    }
                } else if sleeps {
                    futex_wait(w, v);
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        WordEcho { word, pid, sleeps }
    }

    /// Sends request `x` and waits for its answer.
    fn round_trip(&mut self, x: u64) {
        use std::sync::atomic::Ordering;
        // SAFETY: the page stays mapped until this WordEcho drops.
        let w = unsafe { &*self.word };
        let ask = 2 * (x % (1 << 30)) as u32 + 1;
        w.store(ask, Ordering::Release);
        if self.sleeps {
            futex_wake(w);
        }
        for spins in 1u64.. {
            let v = w.load(Ordering::Acquire);
            if v == ask + 1 {
                return;
            }
            if self.sleeps {
                futex_wait(w, v);
            } else {
                std::hint::spin_loop();
                assert!(
                    !spins.is_multiple_of(1 << 24) || !common::has_ended(self.pid),
                    "the echo child died"
                );
            }
        }
    }
}

impl Drop for WordEcho {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        // SAFETY: the page is still mapped, and this process does not use it afterwards.
        unsafe {
            (*self.word).store(ECHO_STOP, Ordering::Release);
            futex_wake(&*self.word);
            common::reap_and_unmap(self.pid, self.word as *mut libc::c_void);
        }
    }
}

/// The floor of a pool's shape: the same 8-byte echo, with a relay thread between this
/// thread and the child (4 wake-ups a round trip instead of 2), all by blocking socket I/O.
struct Relay {
    sock: Option<UnixStream>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(mut echo: Echo) -> Relay {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let thread = std::thread::spawn(move || {
            let mut theirs = theirs;
            let mut buf = [0u8; 8];
            while theirs.read_exact(&mut buf).is_ok() {
                echo.round_trip(u64::from_ne_bytes(buf));
                if theirs.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        Relay {
            sock: Some(ours),
            thread: Some(thread),
        }
    }

    /// Sends `x` through the relay thread to the child and reads it back.
    fn round_trip(&mut self, x: u64) {
        let sock = self.sock.as_mut().expect("open until dropped");
        sock.write_all(&x.to_ne_bytes()).expect("relay write");
        let mut back = [0u8; 8];
        sock.read_exact(&mut back).expect("relay read");
        assert_eq!(u64::from_ne_bytes(back), x);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // End of file ends the thread, which drops (and so reaps) its echo child.
        drop(self.sock.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Microseconds since `t`.
fn us(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

/// Nearest-rank percentiles of a sample.
#[derive(Clone, Copy)]
struct Pct {
    n: usize,
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Pct {
    /// A back-to-back row's result: p50, p99 and mean.
    fn p50_p99_mean(&self) -> String {
        format!(
            "p50 {:.2} µs  p99 {:.1} µs  mean {:.2} µs",
            self.p50, self.p99, self.mean
        )
    }

    fn of(xs: &[f64]) -> Pct {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let rank = |p: usize| v[(n * p).div_ceil(100).max(1) - 1];
        Pct {
            n,
            mean: v.iter().sum::<f64>() / n as f64,
            p50: median(&v),
            p90: rank(90),
            p99: rank(99),
            max: v[n - 1],
        }
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// mproc's speed over Python's as words.
fn faster(ratio: f64) -> String {
    if ratio >= 1.0 {
        format!("mproc {ratio:.2}x faster")
    } else {
        format!("mproc {:.2}x slower", 1.0 / ratio)
    }
}

/// `1234567.8` as `1,234,568`.
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The measurements asked of Python.
#[derive(Default)]
struct PyRequest {
    args: Vec<String>,
}

impl PyRequest {
    fn add(&mut self, arg: String) {
        self.args.push(arg);
    }
}

/// What the Python script printed.
struct PyOut {
    version: String,
    method: String,
    /// Per measurement: items per sample and the samples in microseconds.
    samples: Vec<(String, usize, Vec<f64>)>,
}

impl PyOut {
    fn get(&self, name: &str) -> Option<(usize, &[f64])> {
        self.samples
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, k, v)| (*k, v.as_slice()))
    }

    /// Items per second of a throughput measurement, on the median run.
    fn rate(&self, name: &str) -> Option<(usize, usize, f64)> {
        self.get(name)
            .map(|(k, v)| (k, v.len(), k as f64 / (median(v) / 1e6)))
    }
}

/// Runs the Python script with `args` and parses what it prints.
fn run_python(args: &[String], warmup: usize) -> Result<PyOut, String> {
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python_pool.py");
    let out = Command::new(&python)
        .arg(&script)
        .arg("--warmup")
        .arg(warmup.to_string())
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("could not run {}: {e}", python.to_string_lossy()))?;
    if !out.status.success() {
        return Err(format!("{} exited with {}", script.display(), out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut py = PyOut {
        version: "?".into(),
        method: "?".into(),
        samples: Vec::new(),
    };
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("version") => py.version = words.collect::<Vec<_>>().join(" "),
            Some("method") => py.method = words.collect::<Vec<_>>().join(" "),
            Some("samples") => {
                let name = words.next().ok_or("a samples line without a name")?;
                let items = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or("a samples line without an item count")?;
                let v = words
                    .map(|w| {
                        w.parse::<f64>()
                            .map_err(|e| format!("bad sample {w:?}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if !v.is_empty() {
                    py.samples.push((name.to_owned(), items, v));
                }
            }
            _ => {}
        }
    }
    Ok(py)
}

/// Python's rows, and the checks and ratios that need them.
fn compare_python(py: Option<&PyOut>, res: &mut Results) {
    if let Some((_, v)) = py.and_then(|p| p.get("apply")) {
        let p = Pct::of(v);
        res.row(
            1,
            "python apply_async(f,(x,)).get(), Pool(2)",
            p.n.to_string(),
            format!("p50 {:.1} µs  p99 {:.1} µs", p.p50, p.p99),
            res.apply.map_or_else(String::new, |(m50, m99)| {
                format!(
                    "mproc {:.1}x faster at p50, {:.1}x at p99",
                    p.p50 / m50,
                    p.p99 / m99
                )
            }),
        );
    }
    if let Some((k, runs, rate)) = py.and_then(|p| p.rate("map1")) {
        res.row(
            2,
            "python map(f, range(N), chunksize=1), Pool(2)",
            format!("{k}x{runs}"),
            format!("{} tasks/s", thousands(rate)),
            res.map1_rate.map_or_else(String::new, |m| faster(m / rate)),
        );
    }
    let py_map = py.and_then(|p| p.rate("map"));
    if let Some((k, runs, rate)) = py_map {
        res.row(
            3,
            "python map(f, range(N)), Pool(2)",
            format!("{k}x{runs}"),
            format!("{} items/s", thousands(rate)),
            res.map_rate.map_or_else(String::new, |m| faster(m / rate)),
        );
    }
    if let Some(m) = res.map_rate {
        let ratio = py_map.map(|(_, _, rate)| m / rate);
        res.check(
            3,
            "default map items/s >= 3x Python's".into(),
            ratio.map_or_else(|| "not measured (no Python)".into(), |r| format!("{r:.2}x")),
            ratio.map(|r| r >= 3.0),
        );
    }
    for m in ["fork", "forkserver", "spawn"] {
        if let Some((_, v)) = py.and_then(|p| p.get(&format!("start_{m}"))) {
            let p = Pct::of(v);
            res.row(
                4,
                &format!("python Pool(2)+apply, {m}"),
                p.n.to_string(),
                format!("median {:.2} ms  p90 {:.2} ms", p.p50 / 1e3, p.p90 / 1e3),
                res.forkserver_start.map_or_else(String::new, |f| {
                    format!("{:.1}x mproc forkserver", p.p50 / f)
                }),
            );
        }
    }
    res.rows.sort_by_key(|r| r.section);
}

/// The table and the target checks.
fn report(res: &Results, py: Option<&PyOut>, full: bool) {
    println!();
    if let Some(p) = py {
        println!(
            "python rows: CPython {}, warm pools use its default start method ({})",
            p.version, p.method
        );
    }
    println!(
        "{:<2} {:<48} {:>10}  {:<32} comparison",
        "#", "measurement", "n", "result"
    );
    for r in &res.rows {
        println!(
            "{:<2} {:<48} {:>10}  {:<32} {}",
            r.section, r.name, r.n, r.result, r.note
        );
    }
    println!();
    println!(
        "targets{}:",
        if full {
            ""
        } else {
            " (smoke run, so the verdicts mean nothing)"
        }
    );
    let mut checks: Vec<&Check> = res.checks.iter().collect();
    checks.sort_by_key(|c| c.section);
    for c in checks {
        let verdict = match c.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a ",
        };
        println!("  {verdict}  {}. {}: {}", c.section, c.what, c.shown);
    }
}
