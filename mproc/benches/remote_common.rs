//! Shared by the remote bench: the raw floor every remote figure is measured against.

use std::time::{Duration, Instant};

use redis::Value;

/// How long one blocking read of the floor may wait: a stuck peer fails the bench, never hangs it.
const BLOCK_MS: u64 = 5000;

/// The raw floor of a remote round trip, measured `n` times: two threads, each with its own
/// connection to the Redis at `url` (`redis+unix:///path`, `redis://host:port/0`), play the
/// submitter (`XADD` a task, then `XREAD BLOCK` its result) and the agent (`XREADGROUP BLOCK`
/// the task, then `XADD` its result). Nothing of mproc's: the bare cost of the four commands
/// and the two wake-ups. Each sample is one submit-to-result-seen time. Uses keys of its own
/// (`mproc:{floor-<pid>-<t>}:*`), deleted at the end. Panics on any Redis error (a bench).
///
/// ```no_run
/// let samples = floor_round_trip("redis+unix:///tmp/redis.sock", 10_000);
/// ```
pub(crate) fn floor_round_trip(url: &str, n: usize) -> Vec<Duration> {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("redis url {url}: {e}"));
    let connect = || {
        client
            .get_connection()
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
    };
    let (mut sub, mut agent) = (connect(), connect());
    let tag = format!(
        "floor-{}-{}",
        std::process::id(),
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .unwrap_or_default()
            .as_nanos()
    );
    let tasks = format!("mproc:{{{tag}}}:tasks");
    let results = format!("mproc:{{{tag}}}:results");
    query(
        &mut sub,
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&tasks)
            .arg("agents")
            .arg("$")
            .arg("MKSTREAM"),
    );

    let agent_tasks = tasks.clone();
    let agent_results = results.clone();
    let agent_thread = std::thread::spawn(move || {
        for _ in 0..n {
            let read = query(
                &mut agent,
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("agents")
                    .arg("a1")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(BLOCK_MS)
                    .arg("STREAMS")
                    .arg(&agent_tasks)
                    .arg(">"),
            );
            let (_, payload) =
                first_entry(&read).unwrap_or_else(|| panic!("agent: no task within {BLOCK_MS} ms"));
            query(
                &mut agent,
                redis::cmd("XADD")
                    .arg(&agent_results)
                    .arg("*")
                    .arg("r")
                    .arg(payload),
            );
        }
    });

    let mut last = "0-0".to_owned();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        query(
            &mut sub,
            redis::cmd("XADD")
                .arg(&tasks)
                .arg("*")
                .arg("t")
                .arg(i as u64),
        );
        let read = query(
            &mut sub,
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&results)
                .arg(&last),
        );
        samples.push(t0.elapsed());
        let (id, payload) = first_entry(&read)
            .unwrap_or_else(|| panic!("submitter: no result within {BLOCK_MS} ms"));
        assert_eq!(
            payload,
            (i as u64).to_string().into_bytes(),
            "result of task {i}"
        );
        last = id;
    }
    agent_thread.join().expect("the agent thread of the floor");
    query(&mut sub, redis::cmd("DEL").arg(&tasks).arg(&results));
    samples
}

fn query(con: &mut redis::Connection, cmd: &redis::Cmd) -> Value {
    cmd.query(con)
        .unwrap_or_else(|e| panic!("redis command failed: {e}"))
}

/// The id and the first field's value of the first entry of an `XREAD`/`XREADGROUP` reply
/// (`[[key, [[id, [field, value, ...]], ...]], ...]`, or a RESP3 map of key to entries).
fn first_entry(reply: &Value) -> Option<(String, Vec<u8>)> {
    let entries = match reply {
        Value::Array(streams) => match streams.first()? {
            Value::Array(kv) => kv.get(1)?,
            _ => return None,
        },
        Value::Map(streams) => &streams.first()?.1,
        _ => return None,
    };
    let Value::Array(entries) = entries else {
        return None;
    };
    let Value::Array(entry) = entries.first()? else {
        return None;
    };
    let (Value::BulkString(id), Value::Array(fields)) = (entry.first()?, entry.get(1)?) else {
        return None;
    };
    let Value::BulkString(value) = fields.get(1)? else {
        return None;
    };
    Some((String::from_utf8_lossy(id).into_owned(), value.clone()))
}

/// The `q`-quantile (0.0..=1.0) of `samples` (sorted here).
pub(crate) fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i.min(samples.len() - 1)]
}
