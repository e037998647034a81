//! Scaling benchmark (issue 15, item 5): how a `Pool` and a `Queue` scale with the number of
//! processes, 1, 2, 4, 8 and 16 of them (those up to this machine's CPU count, and the count
//! itself), next to raw floors or baselines and to Python's `multiprocessing` in the same run.
//!
//! Sections, each per process count:
//!
//! 1. `cpu`: CPU-bound tasks (an integer loop calibrated here to [`TASK_MS`] each), eight per
//!    worker, on a warm `Pool::new(n)` with `chunksize(1)`. Speed-up: the same tasks run one
//!    after another in this process, over the pool's time. Floor: `n` forked processes that
//!    each run their share of the tasks (all forked first, then released together; timed from
//!    the release to the last one reaped), the speed-up this machine allows (shared caches,
//!    clock boost). Target: speed-up >= 0.9 x n (issue 15).
//!    Python: `Pool(n).map(f, tasks, chunksize=1)` of a Python loop calibrated the same way,
//!    over the same loop run one after another in Python.
//! 2. `map1`: trivial tasks per second through `Pool::new(n).chunksize(1).map(f, 0..N)`: one
//!    dispatcher thread serves a pool, so this shows how far it goes; no target. Python's
//!    `Pool(n).map(f, range(N), chunksize=1)` beside.
//! 3. `queue`: `k` producer and `k` consumer processes on one `Queue<[u64; 8]>` (`k` = 1, 2, 4,
//!    8 while `2k` fits the CPUs, and 1 always), messages per second taken by all consumers,
//!    timed from a `Barrier` after warm-up messages to the last consumer's end. Beside it, a
//!    kernel baseline (not a floor: a `Queue` in shared memory makes no system call per
//!    message): the same through one `SOCK_SEQPACKET` socketpair, one `send` and one `recv` of
//!    64 bytes per message, each message taken whole by one reader (its writers wait once it
//!    holds a couple of hundred KiB; the `Queue`, like Python's, is unbounded). Python's
//!    `multiprocessing.Queue` with `k` and `k` beside. No target (issue 15 asks for the table).
//!
//! Python's side (`benches/python_scaling.py`, `$PYTHON` or `python3`) runs after the Rust
//! sections. Run it with:
//!
//! ```text
//! cargo bench -p mproc --bench scaling                  # everything
//! cargo bench -p mproc --bench scaling -- cpu queue     # only the sections named
//! cargo bench -p mproc --bench scaling -- --no-python   # skip Python
//! cargo bench -p mproc --bench scaling -- --max 4       # at most 4 processes a side
//! ```
//!
//! To run it on another machine (one with more cores) without building there, copy the binary
//! that `cargo bench -p mproc --bench scaling --no-run` names, and run it there with `--bench`;
//! `SCALING_PY` names its Python side (`benches/python_scaling.py`, copied along; a relative
//! path is taken from the current directory), or `--no-python` skips it. Without `--bench` on
//! its command line (as under `cargo test --benches`) it does a smoke run.

mod common;
use common::{machine, spin};

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use mproc::{Barrier, Pool, Process, Queue};

const SECTIONS: [&str; 3] = ["cpu", "map1", "queue"];
/// Milliseconds of one CPU-bound task.
const TASK_MS: f64 = 5.0;
/// CPU-bound tasks per worker.
const TASKS_PER_WORKER: usize = 8;
/// Process counts asked for (those above the CPU count are left out).
const COUNTS: [usize; 5] = [1, 2, 4, 8, 16];

struct Plan {
    /// Runs of each measurement (the median is shown).
    runs: usize,
    /// Seconds a `map1` run should take.
    map1_secs: f64,
    /// Messages each producer puts, after [`WARM`].
    per_producer: u64,
}

const FULL: Plan = Plan {
    runs: 5,
    map1_secs: 0.3,
    per_producer: 400_000,
};
const SMOKE: Plan = Plan {
    runs: 1,
    map1_secs: 0.01,
    per_producer: 2_000,
};

/// Messages each producer puts and each consumer takes before the clock starts.
const WARM: u64 = 1_000;

/// The trivial task of `map1`.
fn inc(x: u64) -> u64 {
    x + 1
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

struct Report {
    checks: Vec<(String, bool)>,
    /// Figures by Python's line names, to print ratios.
    ours: Vec<(String, f64)>,
}

impl Report {
    fn row(&mut self, name: &str, value: String) {
        println!("{name:<62} {value}");
    }
}

fn main() -> Result<(), mproc::Error> {
    let cli = common::Cli::new();
    let python = cli.python();
    let on = |s: &str| cli.on(&SECTIONS, s);
    let plan = if cli.full() { FULL } else { SMOKE };
    let cpus = mproc::cpu_count();
    let max = cli.value("--max", "--max N").unwrap_or(cpus).min(cpus);
    let mut counts: Vec<usize> = COUNTS.into_iter().filter(|&n| n <= max).collect();
    if !counts.contains(&max) {
        counts.push(max);
    }
    let pairs: Vec<usize> = counts
        .iter()
        .copied()
        .filter(|&k| k == 1 || 2 * k <= max)
        .collect();
    println!("{}", machine());
    let mut r = Report {
        checks: Vec::new(),
        ours: Vec::new(),
    };
    let mut py_args = Vec::new();
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    if on("cpu") {
        cpu(&plan, &counts, &mut r)?;
        py_args.push(format!("cpu={}", list(&counts)));
        py_args.push(format!("runs={}", plan.runs.min(3)));
    }
    if on("map1") {
        map1(&plan, &counts, &mut r)?;
        py_args.push(format!("map1={}", list(&counts)));
    }
    if on("queue") {
        queue(&plan, &pairs, &mut r)?;
        py_args.push(format!("queue={}", list(&pairs)));
        py_args.push(format!("per_producer={}", plan.per_producer / 10));
    }
    if python && !py_args.is_empty() {
        // In `benches/`, or where `SCALING_PY` says (from the current directory).
        let script = std::env::var_os("SCALING_PY").map_or_else(
            || std::path::PathBuf::from("python_scaling.py"),
            |p| std::env::current_dir().unwrap_or_default().join(p),
        );
        match common::python_stdout(&script, &py_args) {
            Ok(out) => {
                let ours = r.ours.clone();
                let compare = |_: &str, ours: f64, py: f64| format!("  (mproc {:.1}x)", ours / py);
                common::python_rows(&out, &ours, compare, |name, value| r.row(name, value));
            }
            Err(e) => println!("python skipped: {e}"),
        }
    }
    common::print_checks(&r.checks);
    Ok(())
}

fn cpu(plan: &Plan, counts: &[usize], r: &mut Report) -> Result<(), mproc::Error> {
    let iters = common::spin_rounds_for(TASK_MS);
    let expected = spin(iters);
    println!(
        "1. cpu: {TASKS_PER_WORKER} tasks of {iters} rounds (~{TASK_MS} ms) per worker, \
         {} runs each",
        plan.runs
    );
    // One task's time, one after another in this process (the median of a few).
    let mut one = Vec::new();
    for _ in 0..plan.runs.max(3) {
        let t = Instant::now();
        for _ in 0..TASKS_PER_WORKER {
            assert_eq!(spin(iters), expected);
        }
        one.push(t.elapsed().as_secs_f64() / TASKS_PER_WORKER as f64);
    }
    let one = median(&mut one);
    r.row(
        "one task, in this process",
        format!("{:>8.2} ms", one * 1e3),
    );
    for &n in counts {
        let tasks = vec![iters; TASKS_PER_WORKER * n];
        let ideal = one * tasks.len() as f64;
        let pool = Pool::new(n)?;
        // Warm: every worker runs the loop once.
        pool.chunksize(1).map(spin, vec![iters; n])?;
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..plan.runs {
            let t = Instant::now();
            let v = pool.chunksize(1).map(spin, tasks.iter().copied())?;
            ours.push(ideal / t.elapsed().as_secs_f64());
            assert!(v.iter().all(|&x| x == expected));
            floor.push(ideal / forked_share(n, tasks.len(), iters, expected));
        }
        drop(pool);
        let (ours, floor) = (median(&mut ours), median(&mut floor));
        r.row(
            &format!("n = {n:<2}  forked processes, a share each (floor)"),
            format!("speed-up {floor:>6.2}  ({:.2} of {n})", floor / n as f64),
        );
        r.row(
            &format!("n = {n:<2}  Pool::new(n).chunksize(1).map"),
            format!(
                "speed-up {ours:>6.2}  ({:.2} of {n}, {:.2}x the floor)",
                ours / n as f64,
                ours / floor
            ),
        );
        r.ours.push((format!("cpu {n} speed-up"), ours));
        r.checks.push((
            format!("cpu: Pool::new({n}) speed-up {ours:.2} >= 0.9 x {n}"),
            ours >= 0.9 * n as f64,
        ));
    }
    Ok(())
}

/// `n` forked children that split `tasks` tasks of [`spin`] between them; seconds from their
/// release (all forked first, each waiting on a shared word) to the last child reaped.
fn forked_share(n: usize, tasks: usize, iters: u64, expected: u64) -> f64 {
    // Unmapped below.
    let mem = common::shared_page();
    // SAFETY: the page is zeroed, aligned and lives until munmap; the word is only accessed
    // atomically.
    let start = unsafe { &*(mem as *const AtomicU32) };
    let pids: Vec<libc::pid_t> = (0..n)
        .map(|i| {
            // SAFETY: the child only waits on the shared word, runs the loop and leaves with
            // _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                while start.load(Ordering::Acquire) == 0 {
                    // SAFETY: FUTEX_WAIT on a valid shared word, no timeout.
                    unsafe {
                        libc::syscall(libc::SYS_futex, start.as_ptr(), libc::FUTEX_WAIT, 0, 0);
                    }
                }
                let mut ok = true;
                for _ in (i..tasks).step_by(n) {
                    ok &= spin(iters) == expected;
                }
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            pid
        })
        .collect();
    let t = Instant::now();
    start.store(1, Ordering::Release);
    // SAFETY: FUTEX_WAKE on a valid shared word.
    unsafe { libc::syscall(libc::SYS_futex, start.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
    for pid in pids {
        let mut status = 0;
        // SAFETY: reaps a child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0, "a forked share failed");
    }
    let took = t.elapsed().as_secs_f64();
    // SAFETY: unmaps the page mapped above, which nothing uses any more.
    unsafe { libc::munmap(mem, 4096) };
    took
}

fn map1(plan: &Plan, counts: &[usize], r: &mut Report) -> Result<(), mproc::Error> {
    println!(
        "2. map1: trivial tasks, chunksize(1), {} runs each",
        plan.runs
    );
    for &n in counts {
        let pool = Pool::new(n)?;
        // A warm-up run sizes N.
        let probe = 100_000;
        let t = Instant::now();
        pool.chunksize(1).map(inc, 0..probe)?;
        let rate = probe as f64 / t.elapsed().as_secs_f64();
        let items = ((rate * plan.map1_secs) as u64).max(1_000);
        let mut rates = Vec::new();
        for _ in 0..plan.runs {
            let t = Instant::now();
            let v = pool.chunksize(1).map(inc, 0..items)?;
            rates.push(items as f64 / t.elapsed().as_secs_f64());
            assert_eq!(v.last(), Some(&items));
        }
        let rate = median(&mut rates);
        r.row(
            &format!("n = {n:<2}  Pool::new(n).chunksize(1).map of a trivial task"),
            format!("{:>12.0} tasks/s", rate),
        );
        r.ours.push((format!("map1 {n} tasks/s"), rate));
    }
    Ok(())
}

/// A producer: [`WARM`] messages, the barrier, then `n` more.
fn produce(q: Queue<[u64; 8]>, start: Barrier, n: u64) {
    for i in 0..WARM {
        q.put([i; 8]).unwrap();
    }
    start.wait().unwrap();
    for i in 0..n {
        q.put([i; 8]).unwrap();
    }
}

/// A consumer: [`WARM`] messages, the barrier, then `n` more.
fn consume(q: Queue<[u64; 8]>, start: Barrier, n: u64) {
    for _ in 0..WARM {
        q.get().unwrap();
    }
    start.wait().unwrap();
    for _ in 0..n {
        std::hint::black_box(q.get().unwrap());
    }
}

fn queue(plan: &Plan, pairs: &[usize], r: &mut Report) -> Result<(), mproc::Error> {
    println!(
        "3. queue: k producers and k consumers, {} messages of 64 B per producer, {} runs each",
        plan.per_producer, plan.runs
    );
    for &k in pairs {
        let n = plan.per_producer;
        let total = k as f64 * n as f64;
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..plan.runs {
            let q = Queue::<[u64; 8]>::new()?;
            let start = Barrier::new(2 * k + 1)?;
            let mut producers: Vec<_> = (0..k)
                .map(|_| Process::new(produce, (q.clone(), start.clone(), n)))
                .collect();
            let mut consumers: Vec<_> = (0..k)
                .map(|_| Process::new(consume, (q.clone(), start.clone(), n)))
                .collect();
            for p in producers.iter_mut().chain(&mut consumers) {
                p.start()?;
            }
            start.wait()?;
            let t = Instant::now();
            for c in &mut consumers {
                c.join()?;
            }
            ours.push(total / t.elapsed().as_secs_f64());
            for p in &mut producers {
                p.join()?;
            }
            floor.push(seqpacket(k, n));
        }
        let (ours, floor) = (median(&mut ours), median(&mut floor));
        r.row(
            &format!("k = {k:<2}  one SOCK_SEQPACKET socketpair (kernel baseline)"),
            format!("{floor:>12.0} msgs/s"),
        );
        r.row(
            &format!("k = {k:<2}  one Queue<[u64; 8]>"),
            format!("{ours:>12.0} msgs/s  ({:.2}x the baseline)", ours / floor),
        );
        r.ours.push((format!("queue {k} msgs/s"), ours));
    }
    Ok(())
}

/// `k` forked writers send `WARM + n` messages of 64 bytes each on one end of a
/// `SOCK_SEQPACKET` socketpair and `k` forked readers take as many each from the other end,
/// all meeting at a barrier after the warm-up; messages per second from the barrier to the
/// last reader reaped.
fn seqpacket(k: usize, n: u64) -> f64 {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array it is given.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are fresh and owned here alone.
    let (tx, rx): (OwnedFd, OwnedFd) = unsafe {
        use std::os::fd::FromRawFd;
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    // Unmapped below.
    let mem = common::shared_page();
    // SAFETY: the page is zeroed, aligned and lives until munmap; the word is only accessed
    // atomically.
    let arrived = unsafe { &*(mem as *const AtomicU32) };
    let parties = 2 * k as u32 + 1;
    let meet = || {
        arrived.fetch_add(1, Ordering::AcqRel);
        while arrived.load(Ordering::Acquire) < parties {
            std::thread::yield_now();
        }
    };
    let fork = |write: bool| {
        // SAFETY: the child only sends or receives on the socket, touches the shared word and
        // leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid != 0 {
            return pid;
        }
        let mut msg = [0u8; 64];
        let fd = if write {
            tx.as_raw_fd()
        } else {
            rx.as_raw_fd()
        };
        for i in 0..WARM + n {
            if i == WARM {
                meet();
            }
            // SAFETY: `msg` is 64 valid bytes; `fd` is open in this child.
            let got = unsafe {
                if write {
                    libc::send(fd, msg.as_ptr().cast(), 64, 0)
                } else {
                    libc::recv(fd, msg.as_mut_ptr().cast(), 64, 0)
                }
            };
            if got != 64 {
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(1) };
            }
        }
        // SAFETY: as above.
        unsafe { libc::_exit(0) }
    };
    let writers: Vec<_> = (0..k).map(|_| fork(true)).collect();
    let readers: Vec<_> = (0..k).map(|_| fork(false)).collect();
    meet();
    let t = Instant::now();
    let reap = |pid| {
        let mut status = 0;
        // SAFETY: reaps a child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0, "a socket child failed");
    };
    readers.into_iter().for_each(reap);
    let rate = k as f64 * n as f64 / t.elapsed().as_secs_f64();
    writers.into_iter().for_each(reap);
    // SAFETY: unmaps the page mapped above, which nothing uses any more.
    unsafe { libc::munmap(mem, 4096) };
    rate
}
