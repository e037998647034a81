//! A caller's connections dropped while Redis stays up (an administrator's `CLIENT KILL`, a
//! proxy's or a NAT's timeout, a server's `timeout` closing idle clients): the pool dials
//! again and carries on, and every task is answered once, with its value. Redis really gone
//! still ends the pool, with a clear error, within the pool's TTL.

use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool, StartMethod};

use crate::cluster::Cluster;
use crate::common::sleep_ms;
use crate::harness::{RedisServer, Reply};

/// A task: `n` mixed (a value the caller checks by computing it again).
pub(crate) fn mix(n: u64) -> u64 {
    n.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ n
}

/// The ids of the connections whose name starts with `prefix` (`CLIENT LIST`).
pub(crate) fn clients_named(redis: &RedisServer, prefix: &str) -> Vec<String> {
    let Ok(Reply::Bulk(list)) = redis.cmd(&["CLIENT", "LIST"]) else {
        panic!("CLIENT LIST")
    };
    let list = String::from_utf8(list).expect("CLIENT LIST is text");
    list.lines()
        .filter(|l| {
            l.split(' ').any(|f| {
                f.strip_prefix("name=")
                    .is_some_and(|n| n.starts_with(prefix))
            })
        })
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

/// Kills the connections named `prefix…`; how many there were.
pub(crate) fn kill_named(redis: &RedisServer, prefix: &str) -> usize {
    let ids = clients_named(redis, prefix);
    for id in &ids {
        // A connection may be gone already (killed with the other, or replaced).
        let _ = redis.cmd(&["CLIENT", "KILL", "ID", id]);
    }
    ids.len()
}

/// Entries ever added to the one stream matching `pattern`.
fn added(c: &Cluster, pattern: &str) -> i64 {
    let keys = c.keys(pattern);
    assert_eq!(keys.len(), 1, "{pattern}: {keys:?}");
    c.entries_added(&keys[0])
}

/// The next of a xorshift sequence from `seed`.
pub(crate) fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// The caller's connections (its thread's, its result reader's, or both) killed by id at
/// random moments, many times, under `map` of 3000 quick items, `imap` and `apply_async` of
/// slower ones with callbacks, for twice the pool's TTL (2 s here: its heartbeat must go on):
/// every value comes once and right, every callback is called once, each task went to the
/// task stream once and got one result, and the pool serves on. (The agents' heartbeats
/// live 5 s: none is taken for dead on a busy machine, which would re-queue its entries.)
fn callers_connections_killed_at_random_lose_no_answer(m: StartMethod) {
    let mut c = Cluster::new(m, 0, 2);
    for _ in 0..2 {
        c.add_agent(2, &[("MPROC_HEARTBEAT_MS", "5000")]);
    }
    c.wait_agents(2);
    let remote = c.remote().heartbeat_ttl(Duration::from_millis(500));
    let pool = Pool::builder().remote(remote).build().unwrap();
    assert_eq!(pool.apply(mix, (1,)).unwrap(), mix(1));
    let tasks_before = added(&c, "mproc:*:tasks");
    let (tx, rx) = std::sync::mpsc::channel();
    let calls: Vec<_> = (0..30u64)
        .map(|i| {
            let tx = tx.clone();
            let r = pool.apply_async(sleep_ms, (20 + 5 * i,)).unwrap();
            r.on_complete(move |v| tx.send((i, v)).unwrap());
            r
        })
        .collect();
    drop(tx);
    let mapped = pool.chunksize(1).map_async(mix, 0..3000u64).unwrap();
    let (mut kills, mut busy) = (0, 0);
    let streamed = std::thread::scope(|s| {
        let pool = &pool;
        let streamer = s.spawn(move || {
            let it = pool.chunksize(2).imap(sleep_ms, vec![3u64; 400]);
            it.unwrap().collect::<Vec<_>>()
        });
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until || kills < 8 {
            std::thread::sleep(Duration::from_millis(20 + next(&mut seed) % 150));
            let which = match next(&mut seed) % 3 {
                0 => "mproc-caller-",
                1 => "mproc-results-",
                _ => "mproc-",
            };
            if mapped.ready() && clients_named(&c.redis, "mproc-").is_empty() {
                break; // the pool has ended: its answers say why
            }
            busy += usize::from(!mapped.ready() || !streamer.is_finished());
            kills += usize::from(kill_named(&c.redis, which) > 0);
            let late = until + Duration::from_secs(10);
            assert!(
                Instant::now() < late,
                "{kills} kills: the pool's connections not found"
            );
        }
        streamer.join().unwrap()
    });
    for (i, r) in (0..).zip(&calls) {
        assert_eq!(r.get_timeout(Duration::from_secs(30)), Ok(20 + 5 * i));
    }
    let want: Vec<u64> = (0..3000).map(mix).collect();
    assert_eq!(mapped.get_timeout(Duration::from_secs(30)).unwrap(), want);
    assert_eq!(streamed, vec![Ok(3); 400]);
    let mut called: Vec<(u64, Result<u64, mproc::Error>)> = rx.iter().collect();
    called.sort_by_key(|(i, _)| *i);
    let want: Vec<_> = (0..30).map(|i| (i, Ok(20 + 5 * i))).collect();
    assert_eq!(called, want, "callbacks not called once each");
    // 30 + 3000 + 200 chunks: each written once (a batch sent again is dropped) and
    // answered once.
    assert_eq!(added(&c, "mproc:*:tasks") - tasks_before, 3230);
    assert_eq!(added(&c, "mproc:*:results:*"), 3231);
    // It serves on, under its names again.
    assert_eq!(pool.apply(mix, (2,)).unwrap(), mix(2));
    assert_eq!(clients_named(&c.redis, "mproc-caller-").len(), 1);
    assert_eq!(clients_named(&c.redis, "mproc-results-").len(), 1);
    eprintln!("{kills} kills, {busy} of them under work");
    assert!(
        busy >= 4,
        "the work ended before the connections were killed"
    );
}

per_start_method!(callers_connections_killed_at_random_lose_no_answer);

/// The same over TCP as an ACL user (the agents are the default user on the Unix socket:
/// `CLIENT KILL USER` picks the caller's connections, all at once), at the start of the
/// work or in its middle: every wait ends with its value, and each pool, once dropped,
/// leaves nothing in Redis.
#[test]
fn callers_connections_killed_over_tcp_lose_no_answer() {
    let redis = RedisServer::start_tcp_acl().unwrap_or_else(|e| panic!("{e}"));
    let url = redis.tcp_url_for_agent();
    let c = Cluster::on(redis, StartMethod::Forkserver, 1, 2);
    let remote = || mproc::Remote::redis(&url).unwrap().key_file(&c.key);
    for round in 0..3u64 {
        let pool = Pool::builder().remote(remote()).build().unwrap();
        let r = pool
            .chunksize(1)
            .map_async(sleep_ms, vec![20u64; 300])
            .unwrap();
        let one = pool.apply_async(sleep_ms, (30,)).unwrap();
        std::thread::sleep(Duration::from_millis(50 * round));
        let killed = c
            .redis
            .cmd(&["CLIENT", "KILL", "USER", crate::harness::AGENT_USER]);
        assert!(matches!(killed, Ok(Reply::Int(n)) if n >= 2), "{killed:?}");
        assert_eq!(r.get_timeout(Duration::from_secs(30)).unwrap(), [20; 300]);
        assert_eq!(one.get_timeout(Duration::from_secs(30)), Ok(30));
        assert_eq!(pool.apply(mix, (1,)).unwrap(), mix(1));
    }
    crate::common::wait_until("the pools' keys are deleted", || {
        c.keys("mproc:*:pool:*").is_empty()
    });
}

/// Redis gone for longer than the pool's TTL (killed, then started again too late): the
/// pool ends within that TTL and a little, every wait with a Broker error that says Redis
/// was not reached again, and it never hangs.
#[test]
fn redis_gone_past_the_pools_ttl_ends_the_pool_with_a_clear_error() {
    let mut c = Cluster::new(StartMethod::Forkserver, 1, 2);
    // Four TTLs, 2 s: the time it has to reach Redis again.
    let remote = c.remote().heartbeat_ttl(Duration::from_millis(500));
    let pool = Pool::builder().remote(remote).build().unwrap();
    let mapped = pool
        .chunksize(1)
        .map_async(sleep_ms, vec![20u64; 300])
        .unwrap();
    let one = pool.apply_async(sleep_ms, (3000,)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let at = Instant::now();
    c.redis.kill();
    let e = mapped.get_timeout(Duration::from_secs(20)).unwrap_err();
    let took = at.elapsed();
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
    assert!(
        e.to_string().contains("was not reached again within 2s"),
        "{e}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let e = one.get_timeout(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
    // Back too late: the pool has ended, and says so at once.
    c.redis.restart().unwrap();
    let at = Instant::now();
    let e = pool.apply(mix, (1,)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
    assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
}
