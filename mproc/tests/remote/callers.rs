//! The caller's side in trouble: the program holding a remote pool stopped and continued
//! while it writes tasks, or killed mid-map. The caller is a program of its own (this test
//! binary run again, [`Agent::rerun`]) so that the test can signal it; each task notes every
//! run of it in a file, so a task run twice, or run for a caller that is gone, shows.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool, Remote, StartMethod};

use crate::cluster::Cluster;
use crate::harness::{AGENT_USER, Agent, RedisServer, Reply};

/// Set in a caller's run: what it does (`submit` or `map`).
const ROLE: &str = "MPROC_TEST_CALLER";
/// The caller's Redis URL, key file, the file its tasks note their runs in, and how many
/// tasks it submits.
const URL: &str = "MPROC_TEST_CALLER_URL";
const KEY: &str = "MPROC_TEST_CALLER_KEY";
const RUNS: &str = "MPROC_TEST_CALLER_RUNS";
const TASKS: &str = "MPROC_TEST_CALLER_TASKS";

/// A task: notes its run (one line, appended in one write), then takes `ms`.
fn noted(runs: String, i: u64, ms: u64) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&runs)
        .expect("the runs file");
    f.write_all(format!("{i}\n").as_bytes())
        .expect("a note of the run");
    std::thread::sleep(Duration::from_millis(ms));
    i
}

/// How many times each task ran so far.
fn runs(path: &Path) -> BTreeMap<u64, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut n = BTreeMap::new();
    for line in text.lines() {
        *n.entry(line.parse().expect("a task number")).or_default() += 1;
    }
    n
}

/// In a caller's run, plays the caller and returns `true`; in the test's own run, `false`.
fn play_caller() -> bool {
    let Ok(role) = std::env::var(ROLE) else {
        return false;
    };
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is set"));
    let remote = Remote::redis(&var(URL)).unwrap().key_file(var(KEY));
    let pool = Pool::builder().remote(remote).build().unwrap();
    let (runs, n): (String, u64) = (var(RUNS), var(TASKS).parse().unwrap());
    match role.as_str() {
        // One task every 10 ms, each answered with its own number.
        "submit" => {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    std::thread::sleep(Duration::from_millis(10));
                    pool.apply_async(noted, (runs.clone(), i, 10)).unwrap()
                })
                .collect();
            for (i, t) in (0..n).zip(tasks) {
                assert_eq!(t.get_timeout(Duration::from_secs(30)), Ok(i));
            }
            println!("caller done");
        }
        // Long tasks, until killed.
        "map" => {
            let args: Vec<_> = (0..n).map(|i| (runs.clone(), i, 60_000)).collect();
            let _ = pool.chunksize(1).starmap(noted, args);
            panic!("the caller was to be killed before its map ended");
        }
        // Long tasks, then stopped past the pool's TTL: a clear error, once continued.
        "stopped" => {
            let args: Vec<_> = (0..n).map(|i| (runs.clone(), i, 60_000)).collect();
            let r = pool.chunksize(1).starmap_async(noted, args).unwrap();
            let e = r.get_timeout(Duration::from_secs(60)).unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
            assert!(e.to_string().contains("silent"), "{e}");
            let e = pool.apply(noted, (runs, n, 0)).unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
            println!("caller done");
        }
        other => panic!("no caller role {other:?}"),
    }
    true
}

/// The caller's run of test `test`.
fn caller(test: &str, role: &str, url: &str, c: &Cluster, runs: &Path, n: u64) -> Agent {
    let (key, runs, n) = (
        c.key.to_str().unwrap(),
        runs.to_str().unwrap(),
        n.to_string(),
    );
    let env = [
        (ROLE, role),
        (URL, url),
        (KEY, key),
        (RUNS, runs),
        (TASKS, n.as_str()),
    ];
    Agent::rerun(&format!("callers::{test}"), &env)
}

/// Keeps Redis busy (a script that spins) for `ms`: commands sent meanwhile wait.
fn busy(redis: &RedisServer, ms: u64) {
    let spin = "local t = redis.call('TIME') local t0 = t[1] * 1e6 + t[2] \
                repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - t0 >= tonumber(ARGV[1])";
    let r = redis.cmd(&["EVAL", spin, "0", &(ms * 1000).to_string()]);
    assert!(matches!(r, Ok(Reply::Nil)), "{r:?}");
}

/// The ids of the caller's connections (those of the ACL user, over TCP).
fn connections_of_caller(redis: &RedisServer) -> Vec<u64> {
    let Ok(Reply::Bulk(list)) = redis.cmd(&["CLIENT", "LIST"]) else {
        panic!("CLIENT LIST")
    };
    let list = String::from_utf8(list).unwrap();
    let mut ids: Vec<u64> = list
        .lines()
        .filter(|l| l.contains(&format!(" user={AGENT_USER} ")))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect();
    ids.sort();
    ids
}

/// Over TCP, a caller stopped and continued while it waits for the replies to the tasks it
/// wrote (Redis busy: they wait behind a script) has its connection replaced, and what it
/// had not read the replies of is sent again: tasks that Redis had taken must not be queued
/// twice. Each task is written once and runs once.
fn a_caller_stopped_while_writing_tasks_queues_each_once(m: StartMethod) {
    if play_caller() {
        return;
    }
    let redis = RedisServer::start_tcp_acl().unwrap_or_else(|e| panic!("{e}"));
    let url = redis.tcp_url_for_agent();
    let c = Cluster::on(redis, m, 2, 2);
    let file = c.dir.path().join("runs");
    let n = 300;
    let test = format!("{m}::a_caller_stopped_while_writing_tasks_queues_each_once");
    let mut me = caller(&test, "submit", &url, &c, &file, n);
    crate::common::wait_until("the caller's tasks run", || runs(&file).len() >= 20);
    let before = connections_of_caller(&c.redis);
    for _ in 0..5 {
        std::thread::scope(|s| {
            s.spawn(|| busy(&c.redis, 400));
            std::thread::sleep(Duration::from_millis(200));
            me.stop();
            std::thread::sleep(Duration::from_millis(30));
            me.cont();
        });
        std::thread::sleep(Duration::from_millis(150));
    }
    // Else this tested nothing: the stops interrupted no wait for a reply.
    assert_ne!(
        connections_of_caller(&c.redis),
        before,
        "no connection replaced"
    );
    let status = me.wait_timeout(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        me.output()
    );
    let ran = runs(&file);
    let twice: Vec<_> = ran.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    assert_eq!(ran.len(), n as usize);
    let tasks = c.keys("mproc:*:tasks").pop().expect("the task stream");
    assert_eq!(c.entries_added(&tasks), n as i64, "tasks written twice");
}

/// The keys a pool leaves in Redis (other than the build's shared ones).
fn pool_keys(c: &Cluster) -> Vec<String> {
    let per_pool = [
        "pool", "results", "done", "stats", "attempts", "sent", "alive",
    ];
    let mut left: Vec<String> = per_pool
        .iter()
        .flat_map(|k| c.keys(&format!("mproc:*:{k}:*")))
        .map(|k| String::from_utf8_lossy(&k).into_owned())
        .collect();
    for pools in c.keys("mproc:*:pools") {
        left.push(String::from_utf8_lossy(&pools).into_owned());
    }
    left
}

/// A caller SIGKILLed mid-map: once its pool's heartbeat expires (4 s by default), the
/// reaper drops the pool, its keys go, and the agent stops the tasks of it that it runs and
/// runs no more of them; it serves the next pool with all its workers.
fn a_killed_caller_leaves_nothing_behind(m: StartMethod) {
    if play_caller() {
        return;
    }
    let c = Cluster::new(m, 1, 2);
    let file = c.dir.path().join("runs");
    let test = format!("{m}::a_killed_caller_leaves_nothing_behind");
    let mut me = caller(&test, "map", &c.redis.url(), &c, &file, 100);
    crate::common::wait_until("the agent runs the caller's tasks", || c.running() == 2);
    assert!(!pool_keys(&c).is_empty());
    me.kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(15);
    let tasks = c.keys("mproc:*:tasks").pop().expect("the task stream");
    let left = || (pool_keys(&c), c.running_marks(), c.len(&tasks));
    while left() != (vec![], 0, 0) {
        let (keys, marks, entries) = left();
        assert!(
            Instant::now() < deadline,
            "left in Redis: {keys:?}, {marks} running marks, {entries} task entries"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone_after = killed.elapsed();
    assert!(
        gone_after >= Duration::from_secs(3),
        "dropped while alive: {gone_after:?}"
    );
    let ran = runs(&file);
    assert_eq!(ran.values().sum::<usize>(), 2, "{ran:?}");
    // Its two tasks stopped: both workers serve the next pool at once.
    let next = c.pool();
    let took = Instant::now();
    let got = next
        .chunksize(1)
        .map(crate::common::sleep_ms, [500u64; 2])
        .unwrap();
    assert_eq!(got, [500; 2]);
    assert!(
        took.elapsed() < Duration::from_millis(1500),
        "{:?}",
        took.elapsed()
    );
    assert_eq!(
        runs(&file),
        ran,
        "a task of the dead caller ran after its pool was dropped"
    );
}

/// A caller stopped past its pool's TTL (as a killed one): the pool is dropped and its tasks
/// stopped; continued, the caller gets a clear error for what it waited for, not a hang, and
/// for what it asks next.
fn a_caller_stopped_past_its_pool_ttl_gets_a_clear_error(m: StartMethod) {
    if play_caller() {
        return;
    }
    let c = Cluster::new(m, 1, 2);
    let file = c.dir.path().join("runs");
    let test = format!("{m}::a_caller_stopped_past_its_pool_ttl_gets_a_clear_error");
    let mut me = caller(&test, "stopped", &c.redis.url(), &c, &file, 10);
    crate::common::wait_until("the agent runs the caller's tasks", || c.running() == 2);
    me.stop();
    crate::common::wait_until("the pool is dropped", || {
        pool_keys(&c).is_empty() && c.running_marks() == 0
    });
    me.cont();
    let status = me.wait_timeout(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        me.output()
    );
    assert!(me.output().contains("caller done"), "{}", me.output());
    assert_eq!(runs(&file).values().sum::<usize>(), 2);
    assert!(pool_keys(&c).is_empty(), "{:?}", pool_keys(&c));
}

per_start_method!(
    a_caller_stopped_while_writing_tasks_queues_each_once,
    a_killed_caller_leaves_nothing_behind,
    a_caller_stopped_past_its_pool_ttl_gets_a_clear_error
);
