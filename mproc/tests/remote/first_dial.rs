//! An agent started before its Redis (a container or a unit started first): it waits,
//! dialling as it does after a loss, and serves once Redis answers; past `MPROC_REDIAL_MS` it
//! exits with status 1, and on SIGTERM with 0. A Redis that refuses it (a wrong password, a
//! certificate it does not trust) ends it at once, with status 1 and the reason.

use std::time::{Duration, Instant};

use mproc::StartMethod;

use crate::cluster::Cluster;
use crate::harness::{Agent, RedisServer};
use crate::redial::mix;

/// How long an agent refused by Redis may take to say so and exit: one dial, no retries.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// Redis down (killed, its socket file left behind, so every dial is refused) when the agent
/// starts, and started again 1.5 s later: the agent, still running, registers and serves a
/// pool's `map`, says it waited, and drains on SIGTERM.
fn an_agent_started_before_redis_waits_for_it(m: StartMethod) {
    let mut c = Cluster::new(m, 0, 2);
    c.redis.kill();
    c.add_agent(2, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        c.agents[0].is_running(),
        "the agent did not wait for Redis: {}",
        c.agents[0].output()
    );
    c.redis.restart().unwrap();
    c.wait_agents(1);
    let pool = c.pool();
    let r = pool.map_async(mix, 0..100u64).unwrap();
    let want: Vec<u64> = (0..100).map(mix).collect();
    assert_eq!(r.get_timeout(Duration::from_secs(20)), Ok(want));
    drop(pool);
    let out = c.agents[0].output();
    assert!(
        out.contains("is out of reach at the agent's start"),
        "{out}"
    );
    assert!(out.contains("answers (waited"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    let status = c.agents[0].terminate().unwrap();
    assert!(status.success(), "{status:?}: {}", c.agents[0].output());
}

per_start_method!(an_agent_started_before_redis_waits_for_it);

/// With no Redis at all: an agent with `MPROC_REDIAL_MS=800` keeps trying for 0.8 s, then exits
/// with status 1 and says why; one without a limit waits until SIGTERM, then exits 0 at once.
#[test]
fn an_agent_waiting_for_redis_ends_past_its_limit_or_on_sigterm() {
    let mut c = Cluster::new(StartMethod::Forkserver, 0, 1);
    c.redis.kill();
    let at = Instant::now();
    c.add_agent(1, &[("MPROC_REDIAL_MS", "800")]);
    let status = c.agents[0].wait_timeout(Duration::from_secs(15));
    let took = at.elapsed();
    let out = c.agents[0].output();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(8),
        "{took:?}"
    );
    assert!(
        out.contains("(MPROC_REMOTE is set): remote pool broker"),
        "{out}"
    );
    assert!(
        out.contains("was not reached within 800ms of the agent's start"),
        "{out}"
    );

    c.add_agent(1, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.agents[1].is_running(), "{}", c.agents[1].output());
    let at = Instant::now();
    let status = c.agents[1].terminate().unwrap();
    let out = c.agents[1].output();
    assert!(status.success(), "{status:?}: {out}");
    assert!(at.elapsed() < Duration::from_secs(3), "{:?}", at.elapsed());
    assert!(out.contains("SIGTERM before Redis answered"), "{out}");
}

/// Waits (bounded) for an agent that must end at once, and returns its output; fails if it
/// did not exit with status 1 or said it would dial again.
fn ends_at_once(agent: &mut Agent) -> String {
    let status = agent.wait_timeout(REFUSED_WITHIN);
    let out = agent.output();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{out}");
    assert!(!out.contains("dialling it again"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
    out
}

/// A wrong password, and a TLS server whose certificate the agent does not trust (no
/// `MPROC_CA_FILE`): the agent says why and exits with status 1 at once, without dialling
/// again; the right password is served, as a control.
#[test]
fn an_agent_refused_at_its_start_ends_at_once() {
    let redis = RedisServer::start_tcp_acl().unwrap_or_else(|e| panic!("{e}"));
    let mut c = Cluster::on(redis, StartMethod::Forkserver, 0, 1);
    let good = c.redis.tcp_url_for_agent();
    let bad = good.replace(c.redis.agent_password(), "not-the-password");
    assert_ne!(good, bad);
    let mut refused = Agent::start(&bad, &c.key, 1, &[]);
    let out = ends_at_once(&mut refused);
    assert!(out.contains("uthentication"), "{out}");
    c.agents.push(Agent::start(&good, &c.key, 1, &[]));
    c.wait_agents(1);
    assert_eq!(c.pool().apply(mix, (3,)).unwrap(), mix(3));

    let tls = RedisServer::start_tls().unwrap_or_else(|e| panic!("{e}"));
    let mut untrusting = Agent::start(&tls.tls_url(), &c.key, 1, &[]);
    let out = ends_at_once(&mut untrusting);
    assert!(out.to_lowercase().contains("certificate"), "{out}");
}
