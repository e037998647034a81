//! The key: required, private, checked on every frame before decoding; and Redis reached as
//! the README's ACL user over TCP, and over TLS.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use mproc::{ErrorKind, Pool, Remote, StartMethod};

use crate::cluster::Cluster;
use crate::harness::{Agent, RedisServer, TempDir, key_file};

fn square(n: u64) -> u64 {
    n * n
}

#[test]
fn remote_mode_refuses_to_start_without_a_good_key() {
    let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
    let url = redis.url();
    let e = Pool::builder()
        .remote(Remote::redis(&url).unwrap())
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("needs a key"), "{e}");
    let dir = TempDir::new("keys").unwrap();
    let open = key_file(dir.path());
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Pool::builder()
        .remote(Remote::redis(&url).unwrap().key_file(&open))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    let short = dir.path().join("short.key");
    std::fs::write(&short, b"tiny").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = Remote::redis(&url)
        .unwrap()
        .key_file(&short)
        .serve()
        .unwrap_err();
    assert!(e.to_string().contains("at least 16 bytes"), "{e}");
    // An agent without a key exits with the reason.
    let mut a = Agent::start(&url, std::path::Path::new(""), 1, &[]);
    let status = a
        .wait_timeout(Duration::from_secs(20))
        .expect("the agent exits");
    assert!(!status.success());
    assert!(a.output().contains("needs a key"), "{}", a.output());
}

#[test]
fn an_agent_with_another_key_takes_nothing() {
    let mut c = Cluster::new(StartMethod::Forkserver, 0, 1);
    let other = key_file(c.dir.path());
    c.agents.push(Agent::start(&c.redis.url(), &other, 1, &[]));
    // Registered, under its own key's names (`registered` counts every key's): waiting for
    // none, as this did, passed only when the look came before the agent had registered.
    c.wait_agents(1);
    let pool = c.pool();
    let r = pool.apply_async(square, (5,)).unwrap();
    assert!(
        r.get_timeout(Duration::from_millis(800))
            .unwrap_err()
            .is_timeout()
    );
    c.add_agent(1, &[]);
    assert_eq!(r.get_timeout(Duration::from_secs(20)).unwrap(), 25);
}

#[test]
fn a_tampered_task_frame_is_refused_and_never_run() {
    let mut c = Cluster::new(StartMethod::Forkserver, 0, 1);
    let pool = c.pool();
    let r = pool.apply_async(square, (6,)).unwrap();
    // No agent yet: the entry waits in the stream. Flip one byte of its frame.
    c.rewrite_waiting_frame(|f| {
        let at = f.len() / 2;
        f[at] ^= 0x40;
    });
    c.add_agent(1, &[]);
    let e = r.get_timeout(Duration::from_secs(20)).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Broker(_)), "{e}");
    assert!(e.to_string().contains("MAC"), "{e}");
    assert!(
        c.agents[0].output().contains("refused"),
        "{}",
        c.agents[0].output()
    );
    // Garbage that is not even a frame is refused too, and the agent serves on.
    let tasks = c.keys("mproc:*:tasks").pop().expect("the task stream");
    c.redis
        .cmd(&[b"XADD".as_slice(), &tasks, b"*", b"f", b"junk"])
        .unwrap();
    assert_eq!(pool.apply(square, (7,)).unwrap(), 49);
}

#[test]
fn over_tcp_as_the_acl_user() {
    let redis = RedisServer::start_tcp_acl().unwrap_or_else(|e| panic!("{e}"));
    as_the_acl_user(&redis.tcp_url_for_agent());
}

/// On the Unix socket, where connections also look for their socket (a `PING` of a token:
/// with `ECHO`, which the user may not send, no pool could start).
#[test]
fn over_a_unix_socket_as_the_acl_user() {
    let redis = RedisServer::start_tcp_acl().unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "redis+unix://{}?user={}&pass={}",
        redis.socket_path().display(),
        crate::harness::AGENT_USER,
        redis.agent_password()
    );
    as_the_acl_user(&url);
}

fn as_the_acl_user(url: &str) {
    let dir = TempDir::new("acl").unwrap();
    let key = key_file(dir.path());
    let url = url.to_owned();
    let started = std::time::Instant::now();
    let mut agent = Agent::start(&url, &key, 2, &[]);
    let pool = Pool::builder()
        .remote(Remote::redis(&url).unwrap().key_file(&key))
        .build()
        .unwrap();
    assert_eq!(pool.map(square, 0..20).unwrap()[19], 361);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow to start as the ACL user: {:?}",
        started.elapsed()
    );
    // Long enough for every periodic step (heartbeat, reaper, cancel checks, the pool's size)
    // to have run as that user, several times.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        pool.processes(),
        2,
        "the agents' workers, read as the ACL user"
    );
    // A task that is still running when cancelled (a trivial one may have finished, and then
    // `cancel` rightly says no): its cancel's commands run as that user too.
    let r = pool.apply_async(crate::common::sleep_ms, (2000,)).unwrap();
    assert!(r.cancel());
    assert_eq!(pool.chunksize(1).map(square, 0..20).unwrap()[19], 361);
    assert!(agent.is_running(), "{}", agent.output());
}

#[test]
fn over_tls() {
    let redis = RedisServer::start_tls().unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("tls").unwrap();
    let key = key_file(dir.path());
    let url = redis.tls_url();
    let ca = redis.ca_pem_path();
    let _agent = Agent::start(&url, &key, 1, &[("MPROC_CA_FILE", ca.to_str().unwrap())]);
    let pool = Pool::builder()
        .remote(Remote::redis(&url).unwrap().key_file(&key).ca_file(&ca))
        .build()
        .unwrap();
    assert_eq!(pool.map(square, 0..20).unwrap()[19], 361);
}

/// A frame sealed with the right key but naming another build is refused with
/// `ExecutableMismatch` and never run (an entry offset means nothing in another build). The
/// test re-seals a real frame itself: the task frame is five 8-byte fields (pool, task, build,
/// entry, items), the payload, then HMAC-SHA256 over `b'T'` and those bytes.
#[test]
fn a_frame_of_another_build_is_refused() {
    use hmac::{Hmac, Mac};
    let mut c = Cluster::new(StartMethod::Forkserver, 0, 1);
    let pool = c.pool();
    let r = pool.apply_async(square, (6,)).unwrap();
    let key = std::fs::read(&c.key).unwrap();
    c.rewrite_waiting_frame(|f| {
        f.truncate(f.len() - 32);
        f[16] ^= 1; // the build
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(b"T");
        mac.update(f);
        f.extend_from_slice(&mac.finalize().into_bytes());
    });
    c.add_agent(1, &[]);
    let e = r.get_timeout(Duration::from_secs(20)).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::ExecutableMismatch, "{e}");
    assert_eq!(pool.apply(square, (7,)).unwrap(), 49);
}
