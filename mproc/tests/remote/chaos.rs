//! Chaos against the remote pool: Redis paused or killed, agents killed under many callers, two
//! callers on one Redis. Every value is compared with what the function computes.

use std::time::{Duration, Instant};

use mproc::StartMethod;

use crate::cluster::Cluster;
use crate::common::sleep_ms;

fn signal(pid: u32, sig: &str) {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1)");
    assert!(st.success());
}

fn mix(n: u64) -> u64 {
    n.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ n
}

/// Pauses Redis (SIGSTOP) for `paused` while an agent runs two tasks of 2.5 s: no agent and
/// no caller died, so the tasks finish and are answered once, and the pool serves on (also
/// `after` the pause).
fn redis_paused(paused: Duration, after: Duration) {
    let c = Cluster::new(StartMethod::Forkserver, 1, 2);
    let pool = c.pool();
    let tasks: Vec<_> = (0..2)
        .map(|_| pool.apply_async(sleep_ms, (2500,)).unwrap())
        .collect();
    crate::common::wait_until("the agent runs both tasks", || c.running() == 2);
    let pid = c.redis.pid().unwrap();
    signal(pid, "STOP");
    std::thread::sleep(paused);
    signal(pid, "CONT");
    for t in &tasks {
        assert_eq!(t.get_timeout(Duration::from_secs(10)), Ok(2500));
    }
    assert_eq!(pool.apply(mix, (7,)).unwrap(), mix(7));
    std::thread::sleep(after);
    assert_eq!(pool.apply(mix, (8,)).unwrap(), mix(8));
}

/// Redis paused past the agents' heartbeat TTL: no task may fail as lost.
#[test]
fn redis_paused_past_the_heartbeat_ttl_loses_no_running_task() {
    redis_paused(Duration::from_millis(2000), Duration::ZERO);
}

/// Redis paused past the pools' TTL (four heartbeat TTLs): no pool may be dropped.
#[test]
fn redis_paused_past_the_pool_ttl_drops_no_pool() {
    redis_paused(Duration::from_millis(5000), Duration::from_millis(1500));
}

/// Many threads call `apply_async` and `map` while agents are SIGKILLed at random: every
/// value is the function's, none lost.
#[test]
fn many_callers_with_agents_killed_at_random() {
    let mut c = Cluster::new(StartMethod::Forkserver, 3, 1);
    let pool = c.builder().max_retries(20).build().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        for t in 0..4u64 {
            let (pool, done) = (&pool, &done);
            hs.push(s.spawn(move || {
                let mut round = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) && round < 200 {
                    let base = t * 1_000_000 + round * 1000;
                    if round.is_multiple_of(2) {
                        let rs: Vec<_> = (base..base + 20)
                            .map(|i| pool.apply_async(mix, (i,)).unwrap())
                            .collect();
                        for (i, r) in (base..).zip(rs) {
                            assert_eq!(r.get_timeout(Duration::from_secs(20)), Ok(mix(i)));
                        }
                    } else {
                        let got = pool.chunksize(3).map(mix, base..base + 50).unwrap();
                        let want: Vec<u64> = (base..base + 50).map(mix).collect();
                        assert_eq!(got, want);
                    }
                    round += 1;
                }
                round
            }));
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(100 + seed % 300));
            let i = (seed % c.agents.len() as u64) as usize;
            c.agents[i].kill();
            c.agents.remove(i);
            c.add_agent(1, &[]);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in hs {
            assert!(h.join().unwrap() > 0);
        }
    });
}

fn add_one(n: u64) -> u64 {
    n + 1
}

/// Two callers on one Redis: each gets its own answers only.
#[test]
fn two_callers_on_one_redis_get_their_own_answers() {
    let c = Cluster::new(StartMethod::Forkserver, 2, 2);
    let (a, b) = (c.pool(), c.pool());
    std::thread::scope(|s| {
        let ha = s.spawn(|| a.chunksize(1).map(mix, 0..2000u64).unwrap());
        let hb = s.spawn(|| b.chunksize(1).map(add_one, 0..2000u64).unwrap());
        let (ga, gb) = (ha.join().unwrap(), hb.join().unwrap());
        assert!(ga.iter().enumerate().all(|(i, &v)| v == mix(i as u64)));
        assert!(gb.iter().enumerate().all(|(i, &v)| v == i as u64 + 1));
    });
    // One dropped while its tasks run: the other serves on.
    let r = a.chunksize(1).map_async(sleep_ms, vec![200u64; 8]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(a);
    assert!(r.get_timeout(Duration::from_secs(10)).is_err());
    assert_eq!(
        b.chunksize(1).map(add_one, 0..100u64).unwrap(),
        (1..101).collect::<Vec<u64>>()
    );
}

/// Redis killed, or restarted empty, at a random moment while `imap`, `map_async` and
/// `apply_async` with a callback wait: each ends (a value, or a Broker error) within a
/// bounded time, every callback is called once, and the pool then says Broker at once.
#[test]
fn redis_killed_at_random_moments_ends_every_wait() {
    let mut seed = 0x853c_49e6_748f_ea9bu64;
    for round in 0..4u64 {
        let mut c = Cluster::new(StartMethod::Forkserver, 1, 2);
        let pool = c.pool();
        let (tx, rx) = std::sync::mpsc::channel();
        let calls: Vec<_> = (0..20u64)
            .map(|i| {
                let tx = tx.clone();
                let r = pool.apply_async(sleep_ms, (10 * i,)).unwrap();
                r.on_complete(move |v| tx.send((i, v.is_ok())).unwrap());
                r
            })
            .collect();
        drop(tx);
        let mapped = pool.chunksize(1).map_async(mix, 0..3000u64).unwrap();
        let streamed = pool.chunksize(2).imap(sleep_ms, vec![5u64; 400]).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 400));
        let at = Instant::now();
        if round % 2 == 0 {
            c.redis.kill();
        } else {
            c.redis.restart().unwrap();
        }
        // Each item a value or a Broker error; the stream may end early, at an error.
        let (mut seen, mut failed) = (0, false);
        for r in streamed {
            match r {
                Ok(v) => assert_eq!(v, 5),
                Err(e) => {
                    assert!(matches!(e.kind(), mproc::ErrorKind::Broker(_)), "{e}");
                    failed = true;
                }
            }
            seen += 1;
            assert!(at.elapsed() < Duration::from_secs(20), "imap still going");
        }
        assert!(
            seen == 400 || failed,
            "imap ended after {seen} values, no error"
        );
        match mapped.get_timeout(Duration::from_secs(20)) {
            Ok(v) => assert_eq!(v.len(), 3000),
            Err(e) => assert!(matches!(e.kind(), mproc::ErrorKind::Broker(_)), "{e}"),
        }
        for (i, r) in calls.iter().enumerate() {
            match r.get_timeout(Duration::from_secs(20)) {
                Ok(v) => assert_eq!(v, 10 * i as u64),
                Err(e) => assert!(matches!(e.kind(), mproc::ErrorKind::Broker(_)), "{e}"),
            }
        }
        let mut called: Vec<u64> = rx.iter().map(|(i, _)| i).collect();
        called.sort();
        assert_eq!(
            called,
            (0..20).collect::<Vec<_>>(),
            "callbacks not called once each"
        );
        let e = pool.apply(mix, (1,)).unwrap_err();
        assert!(matches!(e.kind(), mproc::ErrorKind::Broker(_)), "{e}");
        assert!(at.elapsed() < Duration::from_secs(20), "{:?}", at.elapsed());
    }
}

/// A task that notes its run (`task agent` in `runs`), then takes 20 ms.
fn noted_run(runs: String, i: u64) -> u64 {
    use std::io::Write;
    let me = std::env::var("MPROC_TEST_AGENT").unwrap_or_default();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&runs)
        .expect("the runs file");
    f.write_all(format!("{i} {me}\n").as_bytes())
        .expect("a note");
    std::thread::sleep(Duration::from_millis(20));
    mix(i)
}

/// Agents SIGKILLed at random under `map`, `imap` and `apply_async`: every task is answered
/// with its value, and a task runs more than once only as the documented at-least-once
/// allows: each of its runs but the last was on an agent that was killed.
#[test]
fn agents_killed_at_random_rerun_only_what_they_were_running() {
    let mut c = Cluster::new(StartMethod::Forkserver, 0, 2);
    let name = |n: usize| format!("agent{n}");
    for n in 0..3 {
        c.add_agent(2, &[("MPROC_TEST_AGENT", &name(n))]);
    }
    c.wait_agents(3);
    let mut names: Vec<String> = (0..3).map(name).collect();
    let pool = c.builder().max_retries(20).build().unwrap();
    let file = c.dir.path().join("runs");
    let runs = file.to_string_lossy().into_owned();
    let arg = |i: u64| (runs.clone(), i);
    let calls: Vec<_> = (0..100u64)
        .map(|i| pool.apply_async(noted_run, arg(i)).unwrap())
        .collect();
    let mapped = pool
        .chunksize(3)
        .starmap_async(noted_run, (100..400u64).map(arg).collect::<Vec<_>>())
        .unwrap();
    let (mut killed, mut busy) = (Vec::new(), 0);
    let streamed = std::thread::scope(|s| {
        let (pool, arg) = (&pool, &arg);
        let streamer = s.spawn(move || {
            let it = pool
                .chunksize(2)
                .imap(noted_run_pair, (400..700u64).map(arg));
            it.unwrap().collect::<Vec<_>>()
        });
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for n in 3..7 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(150 + seed % 300));
            let i = (seed % c.agents.len() as u64) as usize;
            busy += usize::from(!mapped.ready());
            c.agents[i].kill();
            c.agents.remove(i);
            killed.push(names.remove(i));
            c.add_agent(2, &[("MPROC_TEST_AGENT", &name(n))]);
            names.push(name(n));
        }
        streamer.join().unwrap()
    });
    for (i, r) in (0..).zip(&calls) {
        assert_eq!(r.get_timeout(Duration::from_secs(60)), Ok(mix(i)));
    }
    let want: Vec<u64> = (100..400).map(mix).collect();
    assert_eq!(mapped.get_timeout(Duration::from_secs(60)).unwrap(), want);
    let want: Vec<_> = (400..700).map(|i| Ok(mix(i))).collect();
    assert_eq!(streamed, want);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut by_task: std::collections::BTreeMap<u64, Vec<&str>> = Default::default();
    for line in text.lines() {
        let (task, agent) = line.split_once(' ').expect("task agent");
        by_task
            .entry(task.parse().unwrap())
            .or_default()
            .push(agent);
    }
    assert_eq!(by_task.len(), 700, "tasks that never ran");
    assert!(busy >= 2, "the work ended before the agents were killed");
    eprintln!(
        "reruns: {}",
        by_task.values().filter(|a| a.len() > 1).count()
    );
    for (task, agents) in &by_task {
        let (_, before) = agents.split_last().unwrap();
        assert!(
            before.iter().all(|a| killed.iter().any(|k| k == a)),
            "task {task} ran on {agents:?}; killed: {killed:?}"
        );
    }
}

fn noted_run_pair(arg: (String, u64)) -> u64 {
    noted_run(arg.0, arg.1)
}

/// Redis killed, or restarted empty, under agents serving a pool. Restarted: the agents
/// (dialling again for ever, by default) serve a new pool, the same processes. Killed, for
/// agents whose limit is `MPROC_REDIAL_MS=1000`: each ends within a bounded time, with status
/// 1 and the reason on its stderr (for a supervisor to restart it).
#[test]
fn agents_outlive_a_restart_and_end_past_their_redial_limit() {
    for restart in [false, true] {
        let mut c = Cluster::new(StartMethod::Forkserver, 0, 1);
        let limit = if restart {
            &[][..]
        } else {
            &[("MPROC_REDIAL_MS", "1000")][..]
        };
        for _ in 0..2 {
            c.add_agent(1, limit);
        }
        c.wait_agents(2);
        let pool = c.pool();
        let r = pool
            .chunksize(1)
            .map_async(sleep_ms, vec![30u64; 200])
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        if restart {
            c.redis.restart().unwrap();
        } else {
            c.redis.kill();
        }
        assert!(r.get_timeout(Duration::from_secs(20)).is_err());
        if restart {
            c.wait_agents(2);
            drop(pool);
            let pool = c.pool();
            let got = pool.map_async(mix, 0..100u64).unwrap();
            let want: Vec<u64> = (0..100).map(mix).collect();
            assert_eq!(got.get_timeout(Duration::from_secs(20)).unwrap(), want);
            for a in &mut c.agents {
                assert!(a.is_running(), "{}", a.output());
            }
            continue;
        }
        for a in &mut c.agents {
            let status = a.wait_timeout(Duration::from_secs(20));
            let out = a.output();
            assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
            assert!(
                out.contains("(MPROC_REMOTE is set): remote pool broker"),
                "{out}"
            );
        }
    }
}

/// A task that notes its run and its worker (`task pid` in `runs`), then takes 100 ms.
fn noted_pid(runs: String, i: u64) -> u64 {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&runs)
        .expect("the runs file");
    f.write_all(format!("{i} {}\n", std::process::id()).as_bytes())
        .expect("a note");
    std::thread::sleep(Duration::from_millis(100));
    mix(i)
}

/// An agent's workers SIGKILLed at random under `apply_async`, `map` and `imap`: the task a
/// killed worker ran fails alone with `WorkerLost` (a worker is not a host: it is not run
/// again), every other task is answered with its value, each task ran once, and nothing
/// hangs.
fn workers_killed_at_random_fail_their_task_alone(m: StartMethod) {
    let c = Cluster::new(m, 1, 2);
    let pool = c.builder().max_retries(3).build().unwrap();
    let file = c.dir.path().join("runs");
    let runs = file.to_string_lossy().into_owned();
    let arg = |i: u64| (runs.clone(), i);
    let calls: Vec<_> = (0..10u64)
        .map(|i| pool.apply_async(noted_pid, arg(i)).unwrap())
        .collect();
    let mapped = pool
        .chunksize(1)
        .starmap_async(noted_pid, (10..40u64).map(arg).collect::<Vec<_>>())
        .unwrap();
    let mut kills = 0;
    let streamed = std::thread::scope(|s| {
        let (pool, arg) = (&pool, &arg);
        let streamer = s.spawn(move || {
            let pairs = (40..70u64).map(arg);
            let it = pool.chunksize(1).imap(noted_pid_pair, pairs);
            it.unwrap().collect::<Vec<_>>()
        });
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while kills < 5 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(150 + seed % 250));
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let Some(pid) = text.lines().last().and_then(|l| l.split(' ').nth(1)) else {
                continue;
            };
            signal(pid.parse().unwrap(), "KILL");
            kills += 1;
        }
        streamer.join().unwrap()
    });
    let mut lost = 0;
    let mut check = |i: u64, r: Result<u64, mproc::Error>| match r {
        Ok(v) => assert_eq!(v, mix(i)),
        Err(e) => {
            assert!(matches!(e.kind(), mproc::ErrorKind::WorkerLost(_)), "{e}");
            lost += 1;
        }
    };
    for (i, r) in (0..).zip(&calls) {
        check(i, r.get_timeout(Duration::from_secs(30)));
    }
    match mapped.get_timeout(Duration::from_secs(30)) {
        Ok(v) => (10..40).zip(v).for_each(|(i, v)| check(i, Ok(v))),
        Err(e) => check(10, Err(e)),
    }
    for (i, r) in (40..).zip(streamed) {
        check(i, r);
    }
    assert!((1..=kills).contains(&lost), "{lost} lost of {kills} kills");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut n = std::collections::BTreeMap::<u64, usize>::new();
    for line in text.lines() {
        *n.entry(line.split(' ').next().unwrap().parse().unwrap())
            .or_default() += 1;
    }
    assert!(n.values().all(|&k| k == 1), "a task ran twice: {n:?}");
}

fn noted_pid_pair(arg: (String, u64)) -> u64 {
    noted_pid(arg.0, arg.1)
}

per_start_method!(workers_killed_at_random_fail_their_task_alone);
