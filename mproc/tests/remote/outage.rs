//! An agent whose Redis goes away (its connections dropped, the server killed, restarted
//! empty, or refusing it for a while): it keeps dialling, keeps its local workers and their
//! tasks, and serves again once Redis answers; an answer that waited is recorded once if its
//! pool still exists. Past `MPROC_REDIAL_MS` (for ever by default) it exits with status 1.

use std::time::{Duration, Instant};

use mproc::{AsyncResult, ErrorKind, StartMethod};

use crate::cluster::Cluster;
use crate::common::{sleep_ms, wait_until};
use crate::harness::{AGENT_USER, Agent, RedisServer, Reply};
use crate::redial::{clients_named, kill_named, mix, next};

/// How long an agent may take to serve again once Redis is back: it tries at least once a
/// second, and registers again at once.
const BACK_WITHIN: Duration = Duration::from_secs(10);

/// The ids the agents are registered under now.
fn agent_ids(c: &Cluster) -> Vec<Vec<u8>> {
    let mut ids = Vec::new();
    for key in c.keys("mproc:*:agents") {
        if let Ok(Reply::Array(fields)) = c.redis.cmd(&[b"HKEYS".as_slice(), &key]) {
            ids.extend(fields.into_iter().filter_map(|f| match f {
                Reply::Bulk(b) => Some(b),
                _ => None,
            }));
        }
    }
    ids
}

/// What Redis holds of the agents' work, for failure messages: the task stream's length,
/// its group (entries read and pending, lag), the pending entries, the running marks.
fn state(c: &Cluster) -> String {
    let Some(tasks) = c.keys("mproc:*:tasks").pop() else {
        return "no task stream".into();
    };
    let cmd = |args: &[&[u8]]| format!("{:?}", c.redis.cmd(args));
    format!(
        "XLEN {}; XINFO GROUPS {}; XPENDING {}; running marks {}",
        c.len(&tasks),
        cmd(&[b"XINFO", b"GROUPS", &tasks]),
        cmd(&[b"XPENDING", &tasks, b"agents", b"-", b"+", b"20"]),
        c.running_marks()
    )
}

/// The agent's output says it lost Redis and found it again (each of its threads says so
/// at its next try, a second at most after Redis is back), and nothing panicked.
fn said_out_and_back(agent: &Agent) {
    wait_until("the agent says Redis answers again", || {
        agent.output().contains("answers again")
    });
    let out = agent.output();
    assert!(out.contains("is out of reach"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}

/// Redis killed, and started again empty on the same socket 3 s later (past the agent's
/// heartbeat TTL and its longest pause between tries) while the agent is idle: the agent
/// does not exit, registers again, and the same process runs a pool made afterwards.
fn an_idle_agent_serves_again_after_redis_restarts(m: StartMethod) {
    let mut c = Cluster::new(m, 1, 2);
    let pid = c.agents[0].pid();
    {
        let pool = c.pool();
        assert_eq!(pool.apply(mix, (1,)).unwrap(), mix(1));
    }
    c.redis.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.agents[0].is_running(),
        "the agent exited with Redis down: {}",
        c.agents[0].output()
    );
    c.redis.restart().unwrap();
    let at = Instant::now();
    c.wait_agents(1);
    let pool = c.pool();
    let r = pool.map_async(mix, 0..200u64).unwrap();
    let want: Vec<u64> = (0..200).map(mix).collect();
    assert_eq!(r.get_timeout(BACK_WITHIN), Ok(want), "{}", state(&c));
    assert!(at.elapsed() < BACK_WITHIN, "{:?}", at.elapsed());
    assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
    assert_eq!(c.agents[0].pid(), pid);
    assert_eq!(c.registered(), 1);
    said_out_and_back(&c.agents[0]);
}

/// Every connection of the agent killed (`CLIENT KILL`) five times while Redis stays up,
/// under a long task and a `map`: the agent goes on under the same name, the long task's
/// worker is kept and its answer recorded (it would be `WorkerLost` had the agent been taken
/// for dead), every value comes, and its connections are back under their names.
fn agents_connections_killed_while_redis_stays_up(m: StartMethod) {
    let mut c = Cluster::new(m, 1, 2);
    let pid = c.agents[0].pid();
    let ids = agent_ids(&c);
    let pool = c.pool();
    let long = pool.apply_async(sleep_ms, (1500,)).unwrap();
    wait_until("the agent runs the long task", || c.running() == 1);
    let mapped = pool
        .chunksize(1)
        .map_async(sleep_ms, vec![5u64; 200])
        .unwrap();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        // (One killed before comes back once used again, or after its pause.)
        wait_until("an agent connection to kill", || {
            !clients_named(&c.redis, "mproc-agent-").is_empty()
        });
        kill_named(&c.redis, "mproc-agent-");
    }
    assert_eq!(long.get_timeout(Duration::from_secs(20)), Ok(1500));
    let got = mapped.get_timeout(Duration::from_secs(20));
    assert_eq!(got, Ok(vec![5; 200]), "{}", state(&c));
    assert_eq!(pool.apply(mix, (3,)).unwrap(), mix(3));
    assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
    assert_eq!(c.agents[0].pid(), pid);
    assert_eq!(agent_ids(&c), ids, "registered again under another name");
    wait_until("the agent's three connections are back", || {
        clients_named(&c.redis, "mproc-agent-").len() == 3
    });
    said_out_and_back(&c.agents[0]);
}

per_start_method!(
    an_idle_agent_serves_again_after_redis_restarts,
    agents_connections_killed_while_redis_stays_up
);

/// Redis restarted empty while the agent runs a long task of a pool: the caller gets a
/// Broker error (its pool is lost) or the value, never a hang; the agent drops the task's
/// answer (its pool is gone: nothing of it is written back) and serves a new pool.
#[test]
fn redis_restarted_under_a_running_task() {
    let mut c = Cluster::new(StartMethod::Forkserver, 1, 2);
    let pid = c.agents[0].pid();
    let pool = c.pool();
    let long = pool.apply_async(sleep_ms, (3000,)).unwrap();
    wait_until("the agent runs the long task", || c.running() == 1);
    let old = c.keys("mproc:*:pool:*");
    assert_eq!(old.len(), 1);
    let old = String::from_utf8(old[0].clone())
        .unwrap()
        .replace(":pool:", ":results:");
    c.redis.restart().unwrap();
    let at = Instant::now();
    match long.get_timeout(Duration::from_secs(20)) {
        Ok(v) => assert_eq!(v, 3000),
        Err(e) => assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}"),
    }
    assert!(at.elapsed() < Duration::from_secs(15), "{:?}", at.elapsed());
    let e = pool.apply(mix, (1,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
    drop(pool);
    c.wait_agents(1);
    let pool = c.pool();
    let r = pool.map_async(mix, 0..50u64).unwrap();
    let want: Vec<u64> = (0..50).map(mix).collect();
    assert_eq!(r.get_timeout(BACK_WITHIN), Ok(want), "{}", state(&c));
    // The long task's end (3 s after it started) is past: its answer was dropped.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(at.elapsed()));
    assert_eq!(pool.apply(mix, (2,)).unwrap(), mix(2));
    assert!(
        c.keys(&old).is_empty(),
        "the lost pool's answer was written back"
    );
    assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
    assert_eq!(c.agents[0].pid(), pid);
    said_out_and_back(&c.agents[0]);
}

/// Redis up, with its data, but refusing the agent for 2.5 s (its user switched off and its
/// connections dropped) while it runs a task that ends meanwhile: the answer waits, and is
/// recorded once when Redis lets the agent in again (the agent's heartbeat TTL, 5 s, outlives
/// the outage: it is not taken for dead). The caller is on the Unix socket as another user.
#[test]
fn an_answer_waits_for_redis_and_is_recorded_once() {
    let redis = RedisServer::start_tcp_acl().unwrap_or_else(|e| panic!("{e}"));
    let url = redis.tcp_url_for_agent();
    let mut c = Cluster::on(redis, StartMethod::Forkserver, 0, 2);
    let env = [
        ("MPROC_HEARTBEAT_MS", "5000"),
        ("MPROC_START_METHOD", "forkserver"),
    ];
    c.agents.push(Agent::start(&url, &c.key, 2, &env));
    c.wait_agents(1);
    let pool = c.pool();
    assert_eq!(pool.apply(mix, (1,)).unwrap(), mix(1));
    let long = pool.apply_async(sleep_ms, (1000,)).unwrap();
    wait_until("the agent runs the task", || c.running() == 1);
    let off = c.redis.cmd(&["ACL", "SETUSER", AGENT_USER, "off"]);
    assert_eq!(off, Ok(Reply::Status("OK".into())));
    let killed = c.redis.cmd(&["CLIENT", "KILL", "USER", AGENT_USER]);
    assert!(matches!(killed, Ok(Reply::Int(n)) if n >= 3), "{killed:?}");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!long.ready(), "answered while the agent was locked out");
    assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
    let on = c.redis.cmd(&["ACL", "SETUSER", AGENT_USER, "on"]);
    assert_eq!(on, Ok(Reply::Status("OK".into())));
    assert_eq!(long.get_timeout(BACK_WITHIN), Ok(1000));
    assert_eq!(pool.apply(mix, (2,)).unwrap(), mix(2));
    let results = c.keys("mproc:*:results:*");
    assert_eq!(results.len(), 1);
    assert_eq!(c.entries_added(&results[0]), 3, "an answer recorded twice");
    said_out_and_back(&c.agents[0]);
}

/// With `MPROC_REDIAL_MS=1500`, Redis killed and not started again: the agent keeps trying
/// for 1.5 s, then exits with status 1 and says why.
#[test]
fn an_agent_gives_up_past_its_redial_limit() {
    let mut c = Cluster::new(StartMethod::Forkserver, 0, 1);
    c.add_agent(1, &[("MPROC_REDIAL_MS", "1500")]);
    c.wait_agents(1);
    let at = Instant::now();
    c.redis.kill();
    assert_eq!(c.agents[0].wait_timeout(Duration::from_millis(1000)), None);
    let status = c.agents[0].wait_timeout(Duration::from_secs(15));
    let took = at.elapsed();
    let out = c.agents[0].output();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert!(
        out.contains("(MPROC_REMOTE is set): remote pool broker"),
        "{out}"
    );
    assert!(out.contains("was not reached again within 1.5s"), "{out}");
}

/// SIGTERM while Redis is down: the agent, idle or running a task, leaves within a bounded
/// time (it tries Redis for one heartbeat TTL), with status 0: what it held is the reaper's
/// once its heartbeat expires, as for a host that died.
#[test]
fn sigterm_while_redis_is_down_leaves() {
    for busy in [false, true] {
        let mut c = Cluster::new(StartMethod::Forkserver, 1, 1);
        let pool = c.pool();
        let r = pool.apply_async(sleep_ms, (200,)).unwrap();
        if busy {
            wait_until("the agent runs the task", || c.running() == 1);
        } else {
            assert_eq!(r.get_timeout(Duration::from_secs(10)), Ok(200));
        }
        c.redis.kill();
        std::thread::sleep(Duration::from_millis(500));
        let at = Instant::now();
        let status = c.agents[0].terminate().unwrap();
        let out = c.agents[0].output();
        assert!(status.success(), "busy {busy}: {status:?}: {out}");
        assert!(at.elapsed() < Duration::from_secs(5), "{:?}", at.elapsed());
        assert!(!out.contains("panicked"), "{out}");
    }
}

/// The server forgets the scripts (`SCRIPT FLUSH`, as a restart does) while the agent runs
/// a task: the `STEP` recording its answer finds no script, and the agent loads it again and
/// records the answer, once. (The caller sends nothing meanwhile; for a caller's own script,
/// see `a_pool_outlives_its_scripts_forgotten`.)
#[test]
fn scripts_flushed_under_a_running_task() {
    let mut c = Cluster::new(StartMethod::Forkserver, 1, 1);
    let pool = c.pool();
    let r = pool.apply_async(sleep_ms, (800,)).unwrap();
    wait_until("the agent runs the task", || c.running() == 1);
    assert_eq!(
        c.redis.cmd(&["SCRIPT", "FLUSH"]),
        Ok(Reply::Status("OK".into()))
    );
    assert_eq!(r.get_timeout(Duration::from_secs(10)), Ok(800));
    let results = c.keys("mproc:*:results:*");
    assert_eq!(results.len(), 1);
    assert_eq!(c.entries_added(&results[0]), 1);
    assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
    said_out_and_back(&c.agents[0]);
}

/// The load of the restart scenarios: a `map` of 150 tasks of 12 ms, one at a time, and ten
/// calls of 0 to 180 ms beside it.
fn map_and_calls(pool: &mproc::Pool) -> (AsyncResult<Vec<u64>>, Vec<AsyncResult<u64>>) {
    let mapped = pool
        .chunksize(1)
        .map_async(sleep_ms, vec![12u64; 150])
        .unwrap();
    let calls = (0..10u64)
        .map(|i| pool.apply_async(sleep_ms, (20 * i,)).unwrap())
        .collect();
    (mapped, calls)
}

/// Redis restarted empty (at once, or after 300 ms down) at random moments under a pool's
/// `map` and calls, four times: every wait ends with its value or a Broker error, within a
/// bounded time, and the same agent serves each new pool. At the end, a `map` of 200 tasks
/// of 12 ms (no read-ahead: the agent reads no more than its 2 workers run) runs whole: the
/// agent lost count of no entry its reader read.
#[test]
fn an_agent_serves_on_through_restarts_at_random_moments() {
    let mut c = Cluster::new(StartMethod::Forkserver, 1, 2);
    let pid = c.agents[0].pid();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..4u64 {
        c.wait_agents(1);
        let pool = c.pool();
        let (mapped, calls) = map_and_calls(&pool);
        std::thread::sleep(Duration::from_millis(50 + next(&mut seed) % 400));
        let at = Instant::now();
        if round % 2 == 0 {
            c.redis.restart().unwrap();
        } else {
            c.redis.kill();
            std::thread::sleep(Duration::from_millis(300));
            c.redis.restart().unwrap();
        }
        match mapped.get_timeout(Duration::from_secs(20)) {
            Ok(v) => assert_eq!(v, vec![12; 150]),
            Err(e) => assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}"),
        }
        for (i, r) in (0..).zip(&calls) {
            match r.get_timeout(Duration::from_secs(20)) {
                Ok(v) => assert_eq!(v, 20 * i),
                Err(e) => assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}"),
            }
        }
        assert!(at.elapsed() < Duration::from_secs(20), "{:?}", at.elapsed());
        assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
    }
    c.wait_agents(1);
    let pool = c.pool();
    let at = Instant::now();
    let mapped = pool
        .chunksize(1)
        .map_async(sleep_ms, vec![12u64; 200])
        .unwrap();
    let got = mapped.get_timeout(Duration::from_secs(20));
    assert_eq!(got, Ok(vec![12; 200]), "{}", state(&c));
    assert!(at.elapsed() < Duration::from_secs(10), "{:?}", at.elapsed());
    assert_eq!(c.agents[0].pid(), pid);
    assert!(!c.agents[0].output().contains("panicked"));
}

/// A cluster whose pool's caller reaches Redis on its Unix socket (the crate's replies
/// parsed by mproc), or over TCP as the README's ACL user (parsed by the crate); the agent is
/// on the Unix socket.
fn cluster_and_pool(tcp: bool, processes: Option<usize>) -> (Cluster, mproc::Pool) {
    let (c, remote) = if tcp {
        let redis = RedisServer::start_tcp_acl().unwrap_or_else(|e| panic!("{e}"));
        let url = redis.tcp_url_for_agent();
        let c = Cluster::on(redis, StartMethod::Forkserver, 1, 2);
        let remote = mproc::Remote::redis(&url).unwrap().key_file(&c.key);
        (c, remote)
    } else {
        let c = Cluster::new(StartMethod::Forkserver, 1, 2);
        let remote = c.remote();
        (c, remote)
    };
    let mut builder = mproc::Pool::builder().remote(remote);
    if let Some(n) = processes {
        builder = builder.processes(n);
    }
    let pool = builder.build().unwrap();
    (c, pool)
}

/// The server forgets the scripts while a pool is idle (`SCRIPT FLUSH`), and again under a
/// `map`, then restarts with its data (a snapshot taken with `SAVE` and loaded at its start,
/// as a server with persistence does; scripts are never saved): the pool loads its own script
/// again and goes on, each task answered once. (Before, the pool ended with `NOSCRIPT`.)
fn a_pool_outlives_its_scripts_forgotten(tcp: bool) {
    let (mut c, pool) = cluster_and_pool(tcp, None);
    let want: Vec<u64> = (0..200).map(mix).collect();
    assert_eq!(pool.map(mix, 0..200u64).unwrap(), want);
    let flush = || {
        assert_eq!(
            c.redis.cmd(&["SCRIPT", "FLUSH"]),
            Ok(Reply::Status("OK".into()))
        )
    };
    flush();
    assert_eq!(pool.apply(mix, (7,)).unwrap(), mix(7));
    assert_eq!(pool.map(mix, 0..200u64).unwrap(), want);
    let mapped = pool
        .chunksize(1)
        .map_async(sleep_ms, vec![2u64; 300])
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    flush();
    assert_eq!(
        mapped.get_timeout(Duration::from_secs(20)),
        Ok(vec![2; 300])
    );
    assert_eq!(c.redis.cmd(&["SAVE"]), Ok(Reply::Status("OK".into())));
    c.redis.restart().unwrap();
    let r = pool.map_async(mix, 0..200u64).unwrap();
    assert_eq!(r.get_timeout(Duration::from_secs(20)), Ok(want));
    assert_eq!(c.keys("mproc:*:results:*").len(), 1);
    assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
}

#[test]
fn a_pool_outlives_its_scripts_forgotten_on_a_unix_socket() {
    a_pool_outlives_its_scripts_forgotten(false);
}

#[test]
fn a_pool_outlives_its_scripts_forgotten_over_tcp() {
    a_pool_outlives_its_scripts_forgotten(true);
}

/// Redis restarted from a snapshot older than the tasks of a `map` (taken with `SAVE` before
/// it, as a server with persistence loses its last writes, or a replica that lagged takes
/// over): the tasks waiting in the stream (the pool allows 8 in flight, the agent runs 2) are
/// gone from Redis, and the pool sends them again; every value comes, in a bounded time.
/// (Before, the `map` waited for ever.) With 8 tasks, all were written before the restart
/// (the pool finds the loss by itself); with 12, the next batch finds it.
fn a_pool_outlives_redis_restarted_with_older_data(tcp: bool) {
    let (mut c, pool) = cluster_and_pool(tcp, Some(8));
    for n in [8u64, 12] {
        assert_eq!(pool.apply(mix, (n,)).unwrap(), mix(n));
        assert_eq!(c.redis.cmd(&["SAVE"]), Ok(Reply::Status("OK".into())));
        let want: Vec<u64> = (0..n).map(|i| 200 + i).collect();
        let mapped = pool.chunksize(1).map_async(sleep_ms, want.clone()).unwrap();
        wait_until("the agent runs two tasks", || c.running() == 2);
        c.redis.restart().unwrap();
        assert_eq!(mapped.get_timeout(Duration::from_secs(20)), Ok(want), "{n}");
        c.wait_agents(1);
    }
    let r = pool.apply_async(mix, (1,)).unwrap();
    assert_eq!(r.get_timeout(Duration::from_secs(20)), Ok(mix(1)));
    assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
}

#[test]
fn a_pool_outlives_redis_restarted_with_older_data_on_a_unix_socket() {
    a_pool_outlives_redis_restarted_with_older_data(false);
}

#[test]
fn a_pool_outlives_redis_restarted_with_older_data_over_tcp() {
    a_pool_outlives_redis_restarted_with_older_data(true);
}

/// Redis restarted with no data under a `map` of a pool allowing 8 tasks in flight: the
/// next batch finds every earlier one lost, and the pool, which Redis no longer knows, ends
/// at once with a Broker error that says so (nothing is sent again), every wait answered.
#[test]
fn a_pool_whose_redis_restarted_empty_ends_saying_so() {
    let (mut c, pool) = cluster_and_pool(false, Some(8));
    assert_eq!(pool.apply(mix, (1,)).unwrap(), mix(1));
    let mapped = pool
        .chunksize(1)
        .map_async(sleep_ms, vec![50u64; 40])
        .unwrap();
    wait_until("the agent runs two tasks", || c.running() == 2);
    c.redis.restart().unwrap();
    let e = mapped.get_timeout(Duration::from_secs(20)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
    assert!(e.to_string().contains("no longer knows this pool"), "{e}");
    assert!(c.keys("mproc:*:tasks").iter().all(|k| c.len(k) == 0));
}

/// Redis restarted with its data (a snapshot taken at a random moment, loaded at its start)
/// at random moments under a `map` and calls of a pool allowing 8 tasks in flight, four
/// times: every value comes (none is lost with the writes after the snapshot, and none
/// fails: the pool goes on), within a bounded time, from the same agent.
#[test]
fn a_pool_serves_on_through_restarts_with_data_at_random_moments() {
    let mut c = Cluster::new(StartMethod::Forkserver, 1, 2);
    let pid = c.agents[0].pid();
    let pool = c.builder().processes(8).build().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..4u64 {
        c.wait_agents(1);
        let (mapped, calls) = map_and_calls(&pool);
        std::thread::sleep(Duration::from_millis(50 + next(&mut seed) % 400));
        assert_eq!(c.redis.cmd(&["SAVE"]), Ok(Reply::Status("OK".into())));
        std::thread::sleep(Duration::from_millis(next(&mut seed) % 200));
        let at = Instant::now();
        c.redis.restart().unwrap();
        let got = mapped.get_timeout(Duration::from_secs(20));
        assert_eq!(got, Ok(vec![12; 150]), "round {round}: {}", state(&c));
        for (i, r) in (0..).zip(&calls) {
            assert_eq!(
                r.get_timeout(Duration::from_secs(20)),
                Ok(20 * i),
                "round {round}"
            );
        }
        assert!(at.elapsed() < Duration::from_secs(20), "{:?}", at.elapsed());
        assert!(c.agents[0].is_running(), "{}", c.agents[0].output());
    }
    assert_eq!(c.agents[0].pid(), pid);
    assert!(!c.agents[0].output().contains("panicked"));
}
