//! Chaos against the remote pool: Redis paused, agents killed under many callers, two
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

/// Redis paused (SIGSTOP) past the agents' heartbeat TTL: no agent died, so no task may
/// fail as lost; the tasks that were running finish and are answered once.
#[test]
fn redis_paused_past_the_heartbeat_ttl_loses_no_running_task() {
    let c = Cluster::new(StartMethod::Forkserver, 1, 2);
    let pool = c.pool();
    let tasks: Vec<_> = (0..2)
        .map(|_| pool.apply_async(sleep_ms, (2500,)).unwrap())
        .collect();
    crate::common::wait_until("the agent runs both tasks", || c.running() == 2);
    let pid = c.redis.pid().unwrap();
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_millis(2000));
    signal(pid, "CONT");
    for t in &tasks {
        assert_eq!(t.get_timeout(Duration::from_secs(10)), Ok(2500));
    }
    assert_eq!(pool.apply(mix, (7,)).unwrap(), mix(7));
}

/// Redis paused past the pools' TTL (four heartbeat TTLs): no caller died, so no pool may be
/// dropped; the tasks that were running finish and are answered, and the pool serves on.
#[test]
fn redis_paused_past_the_pool_ttl_drops_no_pool() {
    let c = Cluster::new(StartMethod::Forkserver, 1, 2);
    let pool = c.pool();
    let tasks: Vec<_> = (0..2)
        .map(|_| pool.apply_async(sleep_ms, (2500,)).unwrap())
        .collect();
    crate::common::wait_until("the agent runs both tasks", || c.running() == 2);
    let pid = c.redis.pid().unwrap();
    signal(pid, "STOP");
    std::thread::sleep(Duration::from_millis(5000));
    signal(pid, "CONT");
    for t in &tasks {
        assert_eq!(t.get_timeout(Duration::from_secs(10)), Ok(2500));
    }
    assert_eq!(pool.apply(mix, (7,)).unwrap(), mix(7));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pool.apply(mix, (8,)).unwrap(), mix(8));
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
