//! A test cluster: a private redis-server, a key file, and agents of this test binary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mproc::{Pool, PoolBuilder, Remote, StartMethod};

use crate::harness::{Agent, RedisServer, Reply, TempDir, key_file};

/// Redis, a key, and agents; all stopped when dropped.
pub(crate) struct Cluster {
    pub(crate) redis: RedisServer,
    pub(crate) agents: Vec<Agent>,
    pub(crate) key: PathBuf,
    pub(crate) method: StartMethod,
    pub(crate) dir: TempDir,
}

impl Cluster {
    /// Redis and `agents` agents of `workers` local workers each, started with `method`,
    /// registered before this returns.
    pub(crate) fn new(method: StartMethod, agents: usize, workers: usize) -> Cluster {
        let redis = RedisServer::start().unwrap_or_else(|e| panic!("{e}"));
        Cluster::on(redis, method, agents, workers)
    }

    /// The same on a Redis already started.
    pub(crate) fn on(
        redis: RedisServer,
        method: StartMethod,
        agents: usize,
        workers: usize,
    ) -> Cluster {
        let dir = TempDir::new("cluster").expect("a temp dir");
        let key = key_file(dir.path());
        let mut c = Cluster {
            redis,
            agents: Vec::new(),
            key,
            method,
            dir,
        };
        for _ in 0..agents {
            c.add_agent(workers, &[]);
        }
        c.wait_agents(agents);
        c
    }

    /// Starts one more agent (not waiting for it to register); returns its index.
    pub(crate) fn add_agent(&mut self, workers: usize, env: &[(&str, &str)]) -> usize {
        let method = self.method.to_string();
        let mut all = vec![("MPROC_START_METHOD", method.as_str())];
        all.extend_from_slice(env);
        self.agents
            .push(Agent::start(&self.redis.url(), &self.key, workers, &all));
        self.agents.len() - 1
    }

    /// How many agents are registered now.
    pub(crate) fn registered(&self) -> usize {
        match self.redis.cmd(&["KEYS", "mproc:*:agents"]) {
            Ok(Reply::Array(keys)) => keys
                .iter()
                .map(|k| match k {
                    Reply::Bulk(k) => match self.redis.cmd(&[b"HLEN".as_slice(), k]) {
                        Ok(Reply::Int(n)) => n as usize,
                        _ => 0,
                    },
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }

    /// Waits (bounded) until `n` agents are registered.
    pub(crate) fn wait_agents(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.registered() != n {
            if Instant::now() > deadline {
                let outputs: Vec<String> = self.agents.iter().map(|a| a.output()).collect();
                panic!(
                    "{} of {n} agents registered within 20 s; their output:\n{}",
                    self.registered(),
                    outputs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn remote(&self) -> Remote {
        Remote::redis(&self.redis.url())
            .expect("the harness's URL")
            .key_file(&self.key)
    }

    pub(crate) fn builder(&self) -> PoolBuilder {
        Pool::builder().remote(self.remote())
    }

    pub(crate) fn pool(&self) -> Pool {
        self.builder().build().expect("a remote pool")
    }

    /// The keys matching `pattern` (for looking at what the pool left in Redis).
    pub(crate) fn keys(&self, pattern: &str) -> Vec<Vec<u8>> {
        match self.redis.cmd(&["KEYS", pattern]) {
            Ok(Reply::Array(keys)) => keys
                .into_iter()
                .filter_map(|k| match k {
                    Reply::Bulk(k) => Some(k),
                    _ => None,
                })
                .collect(),
            other => panic!("KEYS {pattern}: {other:?}"),
        }
    }

    /// The length of stream `key`.
    pub(crate) fn len(&self, key: &[u8]) -> usize {
        match self.redis.cmd(&[b"XLEN".as_slice(), key]) {
            Ok(Reply::Int(n)) => n as usize,
            other => panic!("XLEN: {other:?}"),
        }
    }

    /// Replaces the task entry waiting in the stream (the newest: no agent has read it) by a
    /// copy whose sealed frame `change` has rewritten.
    pub(crate) fn rewrite_waiting_frame(&self, change: impl FnOnce(&mut Vec<u8>)) {
        let tasks = self.keys("mproc:*:tasks").pop().expect("the task stream");
        let Ok(Reply::Array(entries)) =
            self.redis
                .cmd(&[b"XREVRANGE".as_slice(), &tasks, b"+", b"-", b"COUNT", b"1"])
        else {
            panic!("XREVRANGE")
        };
        assert_eq!(entries.len(), 1);
        let Reply::Array(entry) = &entries[0] else {
            panic!("an entry: {entries:?}")
        };
        let (Reply::Bulk(id), Reply::Array(fields)) = (&entry[0], &entry[1]) else {
            panic!("an entry: {entry:?}")
        };
        let mut args: Vec<Vec<u8>> = vec![b"XADD".to_vec(), tasks.clone(), b"*".to_vec()];
        let mut change = Some(change);
        for pair in fields.chunks(2) {
            let (Reply::Bulk(k), Reply::Bulk(v)) = (&pair[0], &pair[1]) else {
                panic!("a field: {pair:?}")
            };
            let mut v = v.clone();
            if k == b"f" {
                (change.take().expect("one frame"))(&mut v);
            }
            args.push(k.clone());
            args.push(v);
        }
        self.redis.cmd(&args).unwrap();
        self.redis.cmd(&[b"XDEL".as_slice(), &tasks, id]).unwrap();
    }

    /// How many running marks the agents have in Redis now, answered or not.
    pub(crate) fn running_marks(&self) -> usize {
        self.keys("mproc:*:running:*")
            .iter()
            .map(|k| match self.redis.cmd(&[b"HLEN".as_slice(), k]) {
                Ok(Reply::Int(n)) => n as usize,
                _ => 0,
            })
            .sum()
    }

    /// How many entries the agents have marked running now and not answered (all agents
    /// together). An answered entry keeps its mark a little longer (its acknowledgement
    /// comes in a batch): a mark counts only while its task (`pool:task`) is not done.
    pub(crate) fn running(&self) -> usize {
        let mut n = 0;
        for key in self.keys("mproc:*:running:*") {
            let at = key
                .windows(8)
                .position(|w| w == b"running:")
                .expect("a running key");
            let prefix = &key[..at];
            let Ok(Reply::Array(marks)) = self.redis.cmd(&[b"HVALS".as_slice(), &key]) else {
                continue;
            };
            for mark in marks {
                let Reply::Bulk(mark) = mark else { continue };
                let text = String::from_utf8(mark).expect("a running mark is text");
                let (pool, task) = text.split_once(':').expect("pool:task");
                let done = [prefix, b"done:", pool.as_bytes()].concat();
                let answered = self
                    .redis
                    .cmd(&[b"HEXISTS".as_slice(), &done, task.as_bytes()]);
                n += usize::from(matches!(answered, Ok(Reply::Int(0))));
            }
        }
        n
    }

    /// How many entries were ever added to the stream `key` (XINFO's `entries-added`).
    pub(crate) fn entries_added(&self, key: &[u8]) -> i64 {
        let Ok(Reply::Array(info)) = self.redis.cmd(&[b"XINFO".as_slice(), b"STREAM", key]) else {
            return 0;
        };
        let mut it = info.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if matches!(&k, Reply::Bulk(b) if b == b"entries-added")
                && let Reply::Int(n) = v
            {
                return n;
            }
        }
        0
    }
}
