//! Every method of the local pool, on a remote pool, with the same meaning.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use mproc::{ErrorKind, StartMethod};

use crate::cluster::Cluster;

fn square(n: u64) -> u64 {
    n * n
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

use crate::common::{PATIENCE, sleep_ms};

fn boom(n: u32) -> u32 {
    if n == 3 {
        panic!("three is right out");
    }
    n
}

fn whole_api(m: StartMethod) {
    let c = Cluster::new(m, 1, 2);
    let pool = c.pool();
    assert_eq!(
        pool.processes(),
        2,
        "the default size is the agents' workers"
    );
    assert_eq!(pool.apply(square, (12,)).unwrap(), 144);
    let r = pool.apply_async(add, (2, 3)).unwrap();
    r.wait().unwrap();
    assert!(r.ready());
    assert!(r.successful().unwrap());
    assert_eq!(r.get().unwrap(), 5);
    assert_eq!(r.get_timeout(Duration::from_secs(5)).unwrap(), 5);
    assert_eq!(
        pool.map(square, 0..100).unwrap(),
        (0..100).map(|n| n * n).collect::<Vec<_>>()
    );
    assert_eq!(
        pool.map_async(square, [3, 4]).unwrap().get().unwrap(),
        [9, 16]
    );
    // `as_completed` and `wait` watch remote results as they do local ones.
    let naps = [
        pool.apply_async(sleep_ms, (600,)).unwrap(),
        pool.apply_async(sleep_ms, (10,)).unwrap(),
    ];
    let (done, pending) = mproc::wait(&naps, mproc::Return::FirstCompleted, Some(PATIENCE));
    assert_eq!((done, pending), (vec![1], vec![0]));
    let order: Vec<usize> = mproc::as_completed_timeout(&naps, PATIENCE)
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(order, [1, 0]);
    // A limit per task for one call (the pool has none): the agent kills and replaces.
    let e = pool
        .timeout(Duration::from_millis(300))
        .apply(sleep_ms, (60_000,))
        .unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::TaskTimedOut);
    // Progress counts items as chunks come back, from remote agents too.
    let r = pool.chunksize(10).map_async(square, 0..100).unwrap();
    assert_eq!(r.progress().total, 100);
    r.wait().unwrap();
    assert_eq!(r.progress().to_string(), "100/100");
    #[cfg(feature = "progress")]
    assert_eq!(pool.progress().map(square, 0..100).unwrap().len(), 100);
    assert_eq!(pool.starmap(add, [(1, 2), (3, 4)]).unwrap(), [3, 7]);
    assert_eq!(
        pool.starmap_async(add, [(5, 5)]).unwrap().get().unwrap(),
        [10]
    );
    assert_eq!(pool.chunksize(7).map(square, 0..50).unwrap().len(), 50);
    let streamed: Vec<u64> = pool
        .imap(square, 0..30)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(streamed, (0..30).map(|n| n * n).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..30)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    unordered.sort();
    assert_eq!(unordered, streamed);
    // An endless input: imap pulls it lazily.
    let first: Vec<u64> = pool
        .imap(square, 0..)
        .unwrap()
        .take(5)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first, [0, 1, 4, 9, 16]);

    let (tx, rx) = mpsc::channel();
    pool.apply_async(square, (9,))
        .unwrap()
        .on_complete(move |r| tx.send(r).unwrap());
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(20)).unwrap().unwrap(),
        81
    );
    let fut = pool.apply_async(square, (7,)).unwrap();
    assert_eq!(futures::executor::block_on(fut).unwrap(), 49);

    let slow = pool.apply_async(sleep_ms, (3000,)).unwrap();
    let e = slow.get_timeout(Duration::from_millis(50)).unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(slow.successful().unwrap_err().kind(), &ErrorKind::NotReady);

    // A panic fails its own item only.
    let e = pool.map(boom, 0..6).unwrap_err();
    let ErrorKind::Panicked(report) = e.kind() else {
        panic!("{e}")
    };
    assert_eq!(report.message, "three is right out");
    // The report names the host that ran it: `host:...PoolWorker-n`.
    assert!(
        report.process.contains(":") && report.process.contains("PoolWorker-"),
        "{}",
        report.process
    );
    let each: Vec<_> = pool.imap(boom, 0..6).unwrap().collect();
    assert!(each[3].is_err() && each.iter().filter(|r| r.is_ok()).count() == 5);

    pool.close();
    assert_eq!(
        pool.apply(square, (1,)).unwrap_err().kind(),
        &ErrorKind::PoolClosed
    );
    pool.join().unwrap();
    assert_eq!(slow.get().unwrap(), 3000, "join waits for every task");
    // The pool's keys are gone with it.
    assert!(c.keys("mproc:*:pool:*").is_empty());
    assert!(c.keys("mproc:*:results:*").is_empty());
}

fn order_across_agents(m: StartMethod) {
    let c = Cluster::new(m, 2, 1);
    let pool = c.pool();
    assert_eq!(pool.processes(), 2);
    let want: Vec<u64> = (0..2000).map(|n| n * n).collect();
    assert_eq!(pool.map(square, 0..2000).unwrap(), want);
    assert_eq!(pool.chunksize(1).map(square, 0..300).unwrap(), want[..300]);
    let got: Vec<u64> = pool
        .chunksize(3)
        .imap(square, 0..500)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, want[..500]);
}

/// Long tasks spread over every agent's workers: no agent reads ahead what another's idle
/// worker could run (four tasks of 1.5 s on two agents of two workers each end together, not
/// in two rounds), neither at the start nor once the tasks are known to be long.
fn long_tasks_spread_over_every_agent(m: StartMethod) {
    let c = Cluster::new(m, 2, 2);
    let pool = c.pool();
    for round in 0..2 {
        let began = std::time::Instant::now();
        let got = pool
            .chunksize(1)
            .map(crate::common::sleep_ms, [1500u64; 4])
            .unwrap();
        assert_eq!(got, [1500; 4]);
        let took = began.elapsed();
        assert!(
            took < Duration::from_millis(2700),
            "round {round}: {took:?} (one agent ran tasks another's idle workers could have)"
        );
    }
}

fn pid() -> u32 {
    std::process::id()
}

static INITS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn init(greeting: String) {
    assert_eq!(greeting, "hello");
    INITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

fn inits() -> u32 {
    INITS.load(std::sync::atomic::Ordering::SeqCst)
}

fn fail_init() {
    panic!("no database here");
}

fn worker_settings(m: StartMethod) {
    let c = Cluster::new(m, 1, 1);
    // The initializer runs once per agent worker, before its tasks.
    let pool = c
        .builder()
        .initializer(init, ("hello".to_string(),))
        .build()
        .unwrap();
    let seen = pool.chunksize(1).starmap(inits, vec![(); 20]).unwrap();
    assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    drop(pool);

    // max_tasks_per_child: a fresh worker per task (both pids from the one agent's host).
    let pool = c.builder().max_tasks_per_child(1).build().unwrap();
    let (a, b) = (pool.apply(pid, ()).unwrap(), pool.apply(pid, ()).unwrap());
    assert_ne!(a, b);
    drop(pool);

    // task_timeout kills the task on its host; the next one runs.
    let pool = c
        .builder()
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(
        pool.apply(sleep_ms, (10_000,)).unwrap_err().kind(),
        &ErrorKind::TaskTimedOut
    );
    assert_eq!(pool.apply(sleep_ms, (1,)).unwrap(), 1);
    drop(pool);

    // An initializer that fails breaks the pool, with its cause.
    let pool = c.builder().initializer(fail_init, ()).build().unwrap();
    let e = pool.apply(square, (2,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InitializerFailed(_)), "{e}");
    assert!(e.to_string().contains("no database here"), "{e}");
    drop(pool);

    // Two pools at once on one agent, each with its own settings.
    let slow = c
        .builder()
        .task_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let plain = c.pool();
    let r = slow.apply_async(sleep_ms, (5000,)).unwrap();
    assert_eq!(plain.apply(sleep_ms, (300,)).unwrap(), 300);
    assert_eq!(r.get().unwrap_err().kind(), &ErrorKind::TaskTimedOut);
}

fn touch(path: String, ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, b"ran").unwrap();
    ms
}

fn cancel_and_terminate(m: StartMethod) {
    let c = Cluster::new(m, 1, 1);
    let pool = c.pool();
    let dir = c.dir.path().to_owned();
    let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
    // One running, one queued behind it.
    let running = pool.apply_async(touch, (file("running"), 1500)).unwrap();
    let queued = pool.apply_async(touch, (file("queued"), 0)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(queued.cancel());
    assert!(running.cancel());
    assert_eq!(queued.get().unwrap_err().kind(), &ErrorKind::Cancelled);
    assert_eq!(running.get().unwrap_err().kind(), &ErrorKind::Cancelled);
    // The agent carries on.
    assert_eq!(pool.apply(square, (3,)).unwrap(), 9);
    std::thread::sleep(Duration::from_millis(1800));
    assert!(!dir.join("queued").exists(), "a cancelled queued task ran");
    assert!(
        !dir.join("running").exists(),
        "a cancelled running task was not stopped"
    );

    let r = pool.apply_async(sleep_ms, (10_000,)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    pool.terminate();
    assert_eq!(r.get().unwrap_err().kind(), &ErrorKind::Terminated);
    assert!(c.keys("mproc:*:pool:*").is_empty());
    // The agent serves the next pool.
    assert_eq!(c.pool().apply(square, (4,)).unwrap(), 16);
}

/// An agent serving several pools at once runs no more tasks than the workers it announced:
/// each pool has a local pool of that many workers, and they share the agent's count.
fn an_agent_runs_no_more_than_its_workers_across_pools(m: StartMethod) {
    let c = Cluster::new(m, 1, 1);
    let (a, b) = (c.builder().processes(4).build().unwrap(), c.pool());
    let began = std::time::Instant::now();
    let tasks: Vec<_> = (0..3)
        .flat_map(|_| [&a, &b])
        .map(|p| p.apply_async(sleep_ms, (150,)).unwrap())
        .collect();
    let mut most = 0;
    while !tasks.iter().all(|t| t.ready()) {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "the tasks did not finish"
        );
        most = most.max(c.running());
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = began.elapsed();
    assert!(tasks.iter().all(|t| t.get().unwrap() == 150));
    assert!(
        most <= 1,
        "{most} tasks marked running at once on a one-worker agent"
    );
    // One at a time: six tasks of 150 ms take 900 ms at least.
    assert!(took >= Duration::from_millis(880), "{took:?}");
}

fn boom_on_three(n: u64) -> u64 {
    assert_ne!(n, 3, "three");
    n
}

/// `Pool::stats` of a remote pool: every agent's workers, each naming its agent, and the
/// tasks and failures they counted.
fn stats_per_agent_and_worker(m: StartMethod) {
    let c = Cluster::new(m, 2, 1);
    let pool = c.pool();
    let _ = pool.chunksize(1).map(boom_on_three, 0..20);
    let deadline = Instant::now() + PATIENCE;
    let stats = loop {
        let s = pool.stats();
        if s.tasks() == 20 && s.workers.len() == 2 {
            break s;
        }
        assert!(Instant::now() < deadline, "never all counted:\n{s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let agents: std::collections::HashSet<_> =
        stats.workers.iter().map(|w| w.agent.clone()).collect();
    assert_eq!(agents.len(), 2, "{stats}");
    assert!(agents.iter().all(Option::is_some), "{stats}");
    assert!(
        stats
            .workers
            .iter()
            .all(|w| w.name.contains(":") && w.pid.is_some()),
        "{stats}"
    );
    assert_eq!(stats.errors.get("Panicked"), Some(&1), "{stats}");
    assert!(stats.to_string().contains("agent "), "{stats}");
}

per_start_method!(
    stats_per_agent_and_worker,
    whole_api,
    order_across_agents,
    long_tasks_spread_over_every_agent,
    worker_settings,
    cancel_and_terminate,
    an_agent_runs_no_more_than_its_workers_across_pools
);

/// What was read does not stay in Redis: the submitter trims its results stream as it
/// reads it, and the reaper (every 250 ms, on each agent) trims the task stream up to its
/// oldest entry still pending or not yet delivered.
#[test]
fn streams_are_trimmed_as_they_go() {
    let c = Cluster::new(StartMethod::Fork, 1, 2);
    let pool = c.pool();
    let n = 2000;
    let got = pool.chunksize(1).map(square, 0..n).unwrap();
    assert_eq!(got.len(), n as usize);
    let tasks = c.keys("mproc:*:tasks").pop().expect("the task stream");
    let results = c
        .keys("mproc:*:results:*")
        .pop()
        .expect("the results stream");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let (t, r) = (c.len(&tasks), c.len(&results));
        // The task stream is trimmed by whole nodes (`MINID ~`, at most 100 entries each).
        // Answered entries are acknowledged, and their running marks taken away, in
        // batches, the last once the agents are quiet: none may stay.
        let marks = c.running_marks();
        if t <= 100 && r <= 1 && marks == 0 {
            break;
        }
        assert!(
            Instant::now() < until,
            "not trimmed: {t} task entries, {r} results and {marks} running marks of {n} left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pool.apply(square, (5,)).unwrap(), 25, "still serving");
}

/// This process's threads named `name` (as the kernel shortens it), by id, with how many
/// times each went to sleep (its voluntary context switches).
fn sleeps_of(name: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let sleeps = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("voluntary_ctxt_switches in status");
        out.push((task.file_name().to_string_lossy().into_owned(), sleeps));
    }
    out
}

/// On a Unix socket, the pool's result reader waits for Redis in poll(2), not in a
/// blocking read. Asleep in read(2), it was woken twice per answer: once when the server
/// read its `XREAD` (the kernel wakes every sleeper on a Unix socket when what it sent is
/// read, to say there is room to write), and once by the reply.
#[test]
fn the_result_reader_sleeps_once_per_answer() {
    // It counts this process's threads: no other test's pool may run beside it.
    if !crate::common::alone() {
        return;
    }
    let c = Cluster::new(StartMethod::Fork, 1, 1);
    let name = "mproc-remote-re"; // "mproc-remote-results", as the kernel keeps it
    let before: Vec<String> = sleeps_of(name).into_iter().map(|(id, _)| id).collect();
    let pool = c.pool();
    assert_eq!(pool.apply(square, (2,)).unwrap(), 4);
    let reader = |sleeps: Vec<(String, u64)>| {
        let mine: Vec<u64> = sleeps
            .into_iter()
            .filter(|(id, _)| !before.contains(id))
            .map(|(_, n)| n)
            .collect();
        assert_eq!(mine.len(), 1, "one result reader for the pool");
        mine[0]
    };
    let first = reader(sleeps_of(name));
    let n = 400;
    for i in 0..n {
        assert_eq!(pool.apply(square, (i,)).unwrap(), i * i);
    }
    let slept = reader(sleeps_of(name)) - first;
    // One sleep per answer, and a few more for a lock taken while another thread held it
    // or a 100 ms `BLOCK` that ran out. Measured: 0.99 to 1.00 per answer, with two CPU
    // hogs beside it too, and 1.05 beside a whole test run and another session's Redis tests
    // (2 CPUs, 11 ms a call); with a blocking read 1.03 to 1.87 (about 2 under load), and 1.8
    // with the trim's reply coming before the read's.
    assert!(
        slept < n * 3 / 2,
        "the result reader slept {slept} times for {n} answers"
    );
}

/// Runs until the file `gate` exists (looked for every 5 ms), `cap_ms` at most; returns
/// whether it was let go (not capped).
fn held_until(gate: String, cap_ms: u64) -> bool {
    let until = Instant::now() + Duration::from_millis(cap_ms);
    while Instant::now() < until {
        if std::path::Path::new(&gate).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// One task that runs long must not keep in Redis the entries of every task answered after
/// it (found in review: a trim of the stream's head alone stops at the oldest pending entry).
/// The long task runs until the test lets it go (it was a 6 s sleep, which 400 calls beside a
/// loaded CI run outlasted).
#[test]
fn a_long_task_pins_no_entries_behind_it() {
    let c = Cluster::new(StartMethod::Fork, 1, 2);
    let pool = c.pool();
    let gate = c.dir.path().join("gate").to_str().unwrap().to_owned();
    let long = pool
        .apply_async(held_until, (gate.clone(), 120_000))
        .unwrap();
    let n = 400;
    let got = pool.chunksize(1).map(square, 0..n).unwrap();
    assert_eq!(got.len(), n as usize);
    assert!(!long.ready(), "set-up: the long task still runs");
    let tasks = c.keys("mproc:*:tasks").pop().expect("the task stream");
    // Answered entries are acknowledged and deleted in batches, the last once the agent is
    // quiet for a millisecond: give it a second, well inside the long task.
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let left = c.len(&tasks);
        if left <= 2 {
            break;
        }
        assert!(
            Instant::now() < until,
            "{left} task entries left in Redis while one task runs (of {n} answered)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!long.ready(), "set-up: the long task ran through the check");
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(long.get_timeout(Duration::from_secs(20)), Ok(true));
}

#[test]
fn remote_pools_refuse_a_childs_environment() {
    let c = Cluster::new(StartMethod::Forkserver, 1, 1);
    for b in [
        c.builder().env("A", "1"),
        c.builder().current_dir("/"),
        c.builder().stdout(mproc::Stdio::null()),
    ] {
        let e = b.build().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
        assert!(e.to_string().contains("agents"), "{e}");
    }
}

fn identity(v: Vec<u8>) -> Vec<u8> {
    v
}

#[test]
fn payloads_up_to_the_frame_limit() {
    let c = Cluster::new(StartMethod::Forkserver, 1, 1);
    let pool = c.pool();
    let big = vec![7u8; (8 << 20) - 4096];
    assert_eq!(pool.apply(identity, (big.clone(),)).unwrap(), big);
    let e = pool.apply(identity, (vec![1u8; 9 << 20],)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("frame limit"), "{e}");
    // A larger limit, configured.
    let pool = mproc::Pool::builder()
        .remote(c.remote().max_frame(12 << 20))
        .build()
        .unwrap();
    assert_eq!(
        pool.apply(identity, (vec![1u8; 9 << 20],)).unwrap().len(),
        9 << 20
    );
}

fn with_queue(q: mproc::Queue<u8>) -> u8 {
    let _ = q;
    1
}

#[test]
fn handles_refuse_to_cross() {
    let c = Cluster::new(StartMethod::Forkserver, 1, 1);
    let pool = c.pool();
    let q = mproc::Queue::new().unwrap();
    let e = pool.apply(with_queue, (q,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("cannot cross"), "{e}");
    assert_eq!(pool.apply(square, (2,)).unwrap(), 4);
    // Nor can one a task returns: the task fails alone, with a sentence that says why.
    let e = pool.apply(make_buffer, (3,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("another host"), "{e}");
    assert_eq!(pool.apply(square, (3,)).unwrap(), 9);
}

fn make_buffer(n: u8) -> mproc::Buffer<u8> {
    mproc::Buffer::from_slice(&vec![n; usize::from(n)]).unwrap()
}

#[test]
fn local_pools_refuse_max_retries() {
    let e = mproc::Pool::builder()
        .processes(1)
        .max_retries(1)
        .build()
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
}

/// A worker's state, named by a random token (no pid: agents may be on other hosts).
struct Seen {
    token: u64,
    count: u32,
}

fn fresh() -> Seen {
    use std::hash::{BuildHasher, RandomState};
    Seen {
        token: RandomState::new().hash_one(0u8),
        count: 0,
    }
}

fn see(s: &mut Seen, _: u32) -> (u64, u32) {
    s.count += 1;
    (s.token, s.count)
}

/// `worker_state` on a remote pool: each agent worker builds its own and keeps it.
#[test]
fn worker_state_on_agents() {
    let c = Cluster::new(StartMethod::Forkserver, 2, 1);
    let pool = c.builder().worker_state(fresh, ()).build().unwrap();
    let runs = pool
        .chunksize(1)
        .map(mproc::with_state(see), 0..30)
        .unwrap();
    let mut by_state: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for (token, n) in runs {
        by_state.entry(token).or_default().push(n);
    }
    for counts in by_state.values_mut() {
        counts.sort_unstable();
        assert_eq!(*counts, (1..=counts.len() as u32).collect::<Vec<_>>());
    }
    assert_eq!(by_state.values().map(Vec::len).sum::<usize>(), 30);
}

/// Allocates 1 MiB a millisecond, written, up to `mib`.
fn hog(mib: usize) -> usize {
    let mut kept = Vec::new();
    for _ in 0..mib {
        kept.push(vec![1u8; 1 << 20]);
        std::thread::sleep(Duration::from_millis(1));
    }
    kept.len()
}

/// The memory caps reach the agents' workers: a task past the hard limit fails with
/// `MemoryExceeded`, its worker is replaced, and the agent serves on.
#[test]
fn memory_limit_on_agents() {
    let c = Cluster::new(StartMethod::Forkserver, 1, 1);
    let pool = c
        .builder()
        .memory_limit_per_child(300 << 20)
        .build()
        .unwrap();
    assert_eq!(pool.apply(hog, (10,)).unwrap(), 10);
    let e = pool.apply(hog, (4096,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::MemoryExceeded { .. }), "{e}");
    assert_eq!(pool.apply(square, (4,)).unwrap(), 16, "served on");
}
