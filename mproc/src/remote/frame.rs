//! What travels through Redis: the frames (encoded with mproc's wire format and sealed with
//! the key, `auth.rs`) and the names of the keys that hold them.
//!
//! All keys of one build and key share one hash tag, `{<build>.<key id>}`, so a Redis
//! cluster keeps them in one slot (the scripts touch several at once):
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `tasks` | stream, group `agents` | task entries: `f` sealed frame; `p`, `k`, `m` pool, task and max retries in clear, for the reaper's script; acknowledged entries are trimmed by the reaper |
//! | `results:<pool>` | stream | `r` sealed result frame; or `lost`, `attempts`, `agent` from the reaper |
//! | `dead` | stream | tasks that exhausted their retries (capped at ~10 000) |
//! | `pool:<pool>` | string | the sealed pool frame; its absence means the pool is gone |
//! | `done:<pool>` | hash | task → 1 once a result is recorded (exactly one result), `c` once cancelled (none is) |
//! | `attempts:<pool>` | hash | task → runs lost with a dead agent |
//! | `sent:<pool>` | string | the number of the submitter's last batch of tasks written (`SUBMIT`): a batch sent again is dropped, and one Redis lost is found |
//! | `alive:<pool>` | string, TTL | the pool's heartbeat, refreshed by its submitter: once it expires, the reaper drops the pool |
//! | `pools` | hash | pool → 1 while it is registered (for the reaper) |
//! | `stats:<pool>` | hash | agent → its sealed statistics for the pool (`Pool::stats`), refreshed every 250 ms |
//! | `agents` | hash | agent → workers it announces |
//! | `hb:<agent>` | string, TTL | the agent's heartbeat |
//! | `running:<agent>` | hash | entry id → `pool:task` the agent's workers are running |

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::auth::{Key, Kind};
use crate::error::Error;
use crate::wire::codec;

/// The names of a build's keys on one Redis.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `mproc:{<build>.<key id>}:`
    pub(crate) prefix: String,
}

impl Keys {
    pub(crate) fn new(build: u64, key: &Key) -> Keys {
        Keys {
            prefix: format!("mproc:{{{build:016x}.{}}}:", key.id()),
        }
    }
    pub(crate) fn tasks(&self) -> String {
        format!("{}tasks", self.prefix)
    }
    pub(crate) fn dead(&self) -> String {
        format!("{}dead", self.prefix)
    }
    pub(crate) fn agents(&self) -> String {
        format!("{}agents", self.prefix)
    }
    pub(crate) fn pool(&self, pool: u64) -> String {
        format!("{}pool:{pool}", self.prefix)
    }
    pub(crate) fn results(&self, pool: u64) -> String {
        format!("{}results:{pool}", self.prefix)
    }
    pub(crate) fn done(&self, pool: u64) -> String {
        format!("{}done:{pool}", self.prefix)
    }
    pub(crate) fn stats(&self, pool: u64) -> String {
        format!("{}stats:{pool}", self.prefix)
    }
    pub(crate) fn attempts(&self, pool: u64) -> String {
        format!("{}attempts:{pool}", self.prefix)
    }
    pub(crate) fn sent(&self, pool: u64) -> String {
        format!("{}sent:{pool}", self.prefix)
    }
    pub(crate) fn alive(&self, pool: u64) -> String {
        format!("{}alive:{pool}", self.prefix)
    }
    pub(crate) fn pools(&self) -> String {
        format!("{}pools", self.prefix)
    }
    pub(crate) fn heartbeat(&self, agent: &str) -> String {
        format!("{}hb:{agent}", self.prefix)
    }
    pub(crate) fn running(&self, agent: &str) -> String {
        format!("{}running:{agent}", self.prefix)
    }
    /// Every key of one pool, deleted when it finishes (and by the reaper's script, which
    /// has its own list of them, when its caller is gone).
    pub(crate) fn of_pool(&self, pool: u64) -> [String; 7] {
        [
            self.pool(pool),
            self.results(pool),
            self.done(pool),
            self.stats(pool),
            self.attempts(pool),
            self.sent(pool),
            self.alive(pool),
        ]
    }
}

/// The consumer group of the task stream.
pub(crate) const GROUP: &str = "agents";

/// One chunk of one pool.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct TaskFrame {
    pub(crate) pool: u64,
    pub(crate) task: u64,
    /// The submitter's build: an entry offset means something only in the same build.
    pub(crate) build: u64,
    pub(crate) entry: i64,
    pub(crate) items: u64,
    pub(crate) payload: ByteBuf,
    /// Its own time limit per task, in ms (`pool.timeout(d)`), else the pool's.
    pub(crate) timeout_ms: Option<u64>,
}

/// How a pool's workers are set up, read by each agent that meets the pool.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct PoolFrame {
    pub(crate) pool: u64,
    pub(crate) build: u64,
    pub(crate) init: Option<(i64, ByteBuf)>,
    pub(crate) task_timeout_ms: Option<u64>,
    pub(crate) max_tasks_per_child: Option<u64>,
    /// Each agent worker's memory caps, in bytes.
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) memory_limit_per_child: Option<u64>,
    /// The largest frame either side may write.
    pub(crate) max_frame: u64,
}

/// The answer to one task frame.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct ResultFrame {
    pub(crate) pool: u64,
    pub(crate) task: u64,
    /// Which agent answered (host name and agent id), for error messages.
    pub(crate) agent: String,
    pub(crate) outcome: Result<ByteBuf, Error>,
}

/// Encodes and seals a frame.
pub(crate) fn seal<T: Serialize>(key: &Key, kind: Kind, frame: &T) -> Result<Vec<u8>, Error> {
    let bytes = codec::encode(frame)
        .map_err(|e| Error::codec(format!("a remote {kind:?} frame"), "encode", e))?;
    Ok(key.seal(kind, bytes))
}

/// Checks a frame's MAC, then decodes it.
pub(crate) fn open<T: serde::de::DeserializeOwned>(
    key: &Key,
    kind: Kind,
    sealed: &[u8],
) -> Result<T, Error> {
    codec::decode(key.open(kind, sealed)?)
        .map_err(|e| Error::codec(format!("a remote {kind:?} frame"), "decode", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_keys_share_one_tag() {
        let key = Key::new(vec![7; 32]).unwrap();
        let t = TaskFrame {
            pool: 1,
            task: 2,
            build: 3,
            entry: -4,
            items: 5,
            payload: ByteBuf::from(vec![1, 2, 3]),
            timeout_ms: Some(6),
        };
        let sealed = seal(&key, Kind::Task, &t).unwrap();
        let back: TaskFrame = open(&key, Kind::Task, &sealed).unwrap();
        assert_eq!((back.pool, back.task, back.entry, &back.payload[..]), (1, 2, -4, &[1, 2, 3][..]));
        assert_eq!(back.timeout_ms, Some(6));
        assert!(open::<TaskFrame>(&key, Kind::Result, &sealed).is_err());
        let keys = Keys::new(0xabc, &key);
        let tag = &keys.prefix[keys.prefix.find('{').unwrap()..=keys.prefix.find('}').unwrap()];
        for k in [keys.tasks(), keys.results(9), keys.heartbeat("a"), keys.done(9)] {
            assert!(k.contains(tag), "{k}");
        }
    }
}
