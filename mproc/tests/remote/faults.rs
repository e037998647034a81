//! Hosts that crash, stop or vanish, tasks that crash their process, and Redis going away:
//! every task is accounted for, exactly once, and nothing hangs.

use std::time::{Duration, Instant};

use mproc::{ErrorKind, StartMethod};

use crate::cluster::Cluster;
use crate::common::sleep_ms;
use crate::harness::Reply;

fn crash(how: u8) -> u8 {
    match how {
        1 => std::process::abort(),
        2 => {
            // SAFETY: none; this deliberately writes through a null pointer to die by SIGSEGV.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
            2
        }
        _ => how,
    }
}

fn crashes_fail_alone(m: StartMethod) {
    let c = Cluster::new(m, 1, 2);
    let pool = c.pool();
    let out: Vec<_> = pool
        .chunksize(1)
        .imap(crash, [0, 1, 3, 2, 4])
        .unwrap()
        .collect();
    assert_eq!(out[0].as_ref().unwrap(), &0);
    assert!(
        matches!(
            out[1].as_ref().unwrap_err().kind(),
            ErrorKind::WorkerLost(_)
        ),
        "{out:?}"
    );
    assert_eq!(out[2].as_ref().unwrap(), &3);
    assert!(
        matches!(
            out[3].as_ref().unwrap_err().kind(),
            ErrorKind::WorkerLost(_)
        ),
        "{out:?}"
    );
    assert_eq!(out[4].as_ref().unwrap(), &4);
    // The agent is still up.
    assert_eq!(pool.apply(sleep_ms, (1,)).unwrap(), 1);
}

fn agent_killed_mid_map(m: StartMethod) {
    // No retries: exactly the tasks the dead host was running fail, the rest complete.
    let mut c = Cluster::new(m, 1, 1);
    // A window wider than the one worker, so the agent also holds entries it has not started.
    let pool = c.builder().processes(8).build().unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|_| pool.apply_async(sleep_ms, (100,)).unwrap())
        .collect();
    // Once it runs a task, a second host comes, and the first dies.
    crate::common::wait_until("the first agent runs a task", || c.running() == 1);
    c.add_agent(1, &[]);
    c.wait_agents(2);
    let killer = std::thread::spawn({
        let mut a = c.agents.remove(0);
        move || a.kill()
    });
    let each: Vec<_> = tasks
        .iter()
        .map(|t| t.get_timeout(Duration::from_secs(30)))
        .collect();
    killer.join().unwrap();
    // Its one worker was running one task: that one fails, counted once; the ones it held
    // ahead were re-queued free and ran on the other host.
    let lost: Vec<_> = each.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(lost.len(), 1, "{each:?}");
    let ErrorKind::WorkerLost(report) = lost[0].kind() else {
        panic!("{}", lost[0])
    };
    assert_eq!(report.attempts, 1);
    assert_eq!(each.iter().filter(|r| r.as_ref() == Ok(&100)).count(), 39);
    // A copy of the lost task went to the dead-letter stream.
    let dead = c.keys("mproc:*:dead");
    assert_eq!(dead.len(), 1);
    assert_eq!(c.entries_added(&dead[0]), 1);
    drop(pool);

    // With a retry, every task completes, exactly once.
    c.add_agent(1, &[]);
    c.wait_agents(2);
    let pool = c.builder().max_retries(1).build().unwrap();
    let r: Vec<_> = {
        let it = pool.chunksize(1).imap(sleep_ms, vec![100u64; 40]).unwrap();
        let killer = std::thread::spawn({
            let mut a = c.agents.remove(1);
            move || {
                std::thread::sleep(Duration::from_millis(450));
                a.kill();
            }
        });
        let all = it.collect();
        killer.join().unwrap();
        all
    };
    assert_eq!(r.len(), 40);
    assert!(r.iter().all(|x| x.as_ref() == Ok(&100)), "{r:?}");
}

fn host_name() -> String {
    std::env::var("MPROC_TEST_AGENT").unwrap_or_default()
}

fn slow_host_name(ms: u64) -> String {
    std::thread::sleep(Duration::from_millis(ms));
    std::env::var("MPROC_TEST_AGENT").unwrap_or_default()
}

#[test]
fn agent_stopped_past_its_ttl_is_not_recorded_twice() {
    let mut c = Cluster::new(StartMethod::Forkserver, 0, 1);
    let ttl = [("MPROC_HEARTBEAT_MS", "500"), ("MPROC_TEST_AGENT", "a")];
    c.add_agent(1, &ttl);
    c.wait_agents(1);
    let pool = c.builder().max_retries(1).build().unwrap();
    assert_eq!(pool.apply(host_name, ()).unwrap(), "a");
    let r = pool.apply_async(slow_host_name, (1500,)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.agents[0].stop();
    // Past its TTL, its running task is re-run on another host.
    c.add_agent(1, &[("MPROC_TEST_AGENT", "b")]);
    let got = r.get_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(got, "b");
    c.agents[0].cont();
    // It finishes its run, and its late answer is not recorded.
    std::thread::sleep(Duration::from_millis(2000));
    let results = c.keys("mproc:*:results:*");
    assert_eq!(results.len(), 1);
    assert_eq!(
        c.entries_added(&results[0]),
        2,
        "one result per task, the late one dropped"
    );
    // Both agents serve on.
    c.wait_agents(2);
    assert_eq!(
        pool.chunksize(1).map(sleep_ms, [1u64; 10]).unwrap().len(),
        10
    );
}

#[test]
fn agent_stopped_with_entries_waiting_in_its_local_pool() {
    // The agent holds more than it runs: one entry runs on its one worker, the next waits in
    // its local pool. Stopped past its TTL, both go to another host (the running one as a
    // retry, the waiting one free). Resumed, it must not start the one that waited (it is no
    // longer its own), nor record anything.
    let mut c = Cluster::new(StartMethod::Forkserver, 0, 1);
    let ttl = [("MPROC_HEARTBEAT_MS", "500"), ("MPROC_TEST_AGENT", "a")];
    c.add_agent(1, &ttl);
    c.wait_agents(1);
    let pool = c.builder().processes(4).max_retries(1).build().unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| pool.apply_async(slow_host_name, (300,)).unwrap())
        .collect();
    crate::common::wait_until("the agent runs a task", || c.running() == 1);
    c.agents[0].stop();
    c.add_agent(1, &[("MPROC_TEST_AGENT", "b")]);
    let hosts: Vec<String> = tasks
        .iter()
        .map(|t| t.get_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    // The first may have finished on "a" before the stop took; none after it did.
    let on_a = hosts.iter().filter(|h| *h == "a").count();
    assert!(on_a <= 1, "{hosts:?}");
    c.agents[0].cont();
    // It finishes the run it was in (its answer not recorded), starts nothing it held, and
    // rejoins under a new id.
    std::thread::sleep(Duration::from_millis(1500));
    let results = c.keys("mproc:*:results:*");
    assert_eq!(results.len(), 1);
    assert_eq!(c.entries_added(&results[0]), 4, "one result per task");
    c.wait_agents(2);
    let again: Vec<String> = pool.chunksize(1).map(slow_host_name, [20u64; 8]).unwrap();
    assert_eq!(again.len(), 8);
}

#[test]
fn redis_killed_mid_map_is_a_clear_error() {
    let mut c = Cluster::new(StartMethod::Forkserver, 1, 1);
    let pool = c.pool();
    let r = pool
        .chunksize(1)
        .map_async(sleep_ms, vec![50u64; 100])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let at = Instant::now();
    c.redis.kill();
    let e = r.get_timeout(Duration::from_secs(20)).unwrap_err();
    assert!(at.elapsed() < Duration::from_secs(15));
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
    let e = pool.apply(sleep_ms, (1,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
}

#[test]
fn redis_restarted_empty_is_a_clear_error() {
    let mut c = Cluster::new(StartMethod::Forkserver, 1, 1);
    let pool = c.pool();
    let r = pool.apply_async(sleep_ms, (5000,)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.redis.restart().unwrap();
    let e = r.get_timeout(Duration::from_secs(20)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
}

/// A server that refuses to store the task (out of memory, here): the pool ends with the
/// server's error, soon, rather than waiting for an answer that cannot come. (The pipeline's
/// replies are read before the next one or at the pool's next tick, not waited for.)
#[test]
fn a_task_the_server_refuses_to_store_is_a_clear_error() {
    let c = Cluster::new(StartMethod::Forkserver, 1, 1);
    let pool = c.pool();
    let served = pool.apply(tiny, (2,)).unwrap();
    assert_eq!(served, tiny(2), "set-up: the pool serves");
    let full = c.redis.cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    assert!(matches!(full, Ok(Reply::Status(_))), "{full:?}");
    let at = Instant::now();
    let e = pool
        .apply_async(tiny, (3,))
        .and_then(|r| r.get_timeout(Duration::from_secs(20)))
        .unwrap_err();
    assert!(at.elapsed() < Duration::from_secs(5), "{:?}", at.elapsed());
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
    assert!(e.to_string().contains("OOM"), "{e}");
}

fn tiny(n: u64) -> u64 {
    n.wrapping_mul(2654435761)
}

#[test]
fn many_tasks_with_agents_killed_at_random() {
    let mut c = Cluster::new(StartMethod::Forkserver, 3, 1);
    let pool = c.builder().max_retries(10).build().unwrap();
    let n = 100_000u64;
    let r = pool.chunksize(10).map_async(tiny, 0..n).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !r.ready() && Instant::now() < deadline {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 100));
        if kills < 4 && !r.ready() {
            let i = (seed % c.agents.len() as u64) as usize;
            c.agents[i].kill();
            c.agents.remove(i);
            c.add_agent(1, &[]);
            kills += 1;
        }
    }
    let got = r.get_timeout(Duration::from_secs(120)).unwrap();
    assert!(
        kills >= 2,
        "the map ended before the agents were killed ({kills} kills)"
    );
    assert_eq!(got.len(), n as usize);
    assert!(got.iter().enumerate().all(|(i, &v)| v == tiny(i as u64)));
}

per_start_method!(crashes_fail_alone, agent_killed_mid_map);

#[test]
fn sigterm_drains_an_agent() {
    let mut c = Cluster::new(StartMethod::Forkserver, 1, 1);
    let pool = c.pool();
    let r = pool
        .chunksize(1)
        .map_async(sleep_ms, vec![300u64; 6])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // It finishes the task it runs, hands back the rest, and exits 0.
    let status = c.agents[0].terminate().unwrap();
    assert!(status.success(), "{status:?}: {}", c.agents[0].output());
    assert!(!r.ready());
    c.add_agent(1, &[]);
    let got = r.get_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(got, [300; 6], "no task lost or failed by the drain");
}
