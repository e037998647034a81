//! The server-side scripts: each step that must be atomic is one script, so no crash between
//! two commands can leave a task both recorded and pending, or re-run twice.
//!
//! Every script takes the build's key prefix as `ARGV[1]` and derives the per-pool and
//! per-agent keys from it (all in one hash slot, `frame.rs`).

/// A submitter's batch of tasks, written to the task stream once: a batch sent again (its
/// connection was replaced before its reply was read, `conn.rs`, when Redis may have run it
/// already) is dropped, so that no task is queued twice. Batches are numbered from 1 in the
/// order they are sent, on one connection at a time, so Redis sees each pool's batches in
/// order: one number per pool, the last batch written, tells a batch sent again. (One
/// script per batch, not per task: it costs the server less than the `XADD`s it replaces
/// sent one by one.)
///
/// The same number tells a Redis that lost batches: one restarted with data older than they
/// are (a snapshot, an append-only file synced a second ago) or a replica that lagged taking
/// over holds a number below the last batch the submitter saw written. A batch says the
/// lowest number Redis may hold for it to be written (the one before it; for a batch that
/// sends lost tasks again, what Redis was found to hold); below that, nothing is written and
/// the number Redis holds comes back, so that the submitter sends the lost tasks again first.
///
/// KEYS: tasks, `sent:<pool>`. ARGV: the batch's number, the pool, its `max_retries`, the
/// lowest number held, then (task, sealed frame) per task. Returns 1; 0 for a batch sent
/// again; `-1 - held` where Redis holds `held`, lower than the lowest number.
pub(crate) const SUBMIT: &str = r#"
local n = tonumber(ARGV[1])
local held = tonumber(redis.call('GET', KEYS[2])) or 0
if n <= held then return 0 end
if held < tonumber(ARGV[4]) then return -1 - held end
redis.call('SET', KEYS[2], n)
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'f', ARGV[i + 1], 'p', ARGV[2], 'k', ARGV[i], 'm', ARGV[3])
end
return 1
"#;

/// An agent's step, sent whenever it has answers to record or entries about to start (one
/// call for both, so one round trip of the server's per task):
///
/// - Entries answered in earlier steps: acknowledged, deleted, and no longer marked running,
///   in one `XACK`, one `XDEL` and one `HDEL` (a script's call costs the server about a
///   microsecond beyond its command, so these come in batches). Until then such an entry
///   stays pending and marked running, which is harmless as its task is done: the reaper
///   charges nothing for a done task and only deletes its entry, and an entry read again
///   after a reconnection is found done when it is about to start.
/// - Answers: each is recorded only if its pool still exists and the task is not done yet
///   (`HSETNX done`): a task run twice (its first agent thought dead) is recorded once, a
///   cancelled one not at all. An answer not recorded (its pool gone, or its task done
///   already) has its running mark taken away at once. An empty entry id records a result
///   for a frame that was never started (refused).
/// - Entries about to start on the agent's workers: all refused (`-1`) if the agent's
///   heartbeat is gone (it was declared dead and its entries re-queued); else, per entry,
///   skipped (acknowledged; 0) if its pool is gone or the task is done (cancelled, or
///   already answered), and otherwise recorded as running (1).
///
/// An acknowledged entry is deleted (`XDEL`): a trim of the stream's head alone would let
/// one long-running task keep every entry after it in memory. Whether a pool exists is
/// asked once per pool and call; with entries to start and a single pool, one `EXISTS`
/// asks it with the heartbeat. Returns `{recorded, verdicts or -1}`.
///
/// KEYS: tasks, `hb:<agent>`, `running:<agent>`. ARGV: prefix, the number of answers, the
/// number of entries to acknowledge, then those entry ids, then (entry id, pool, task,
/// sealed result) per answer, then (entry id, pool, task) per start.
pub(crate) const STEP: &str = r#"
local p = ARGV[1]
local answers, acks = tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
if acks > 0 then
  redis.call('XACK', KEYS[1], 'agents', unpack(ARGV, i, i + acks - 1))
  redis.call('XDEL', KEYS[1], unpack(ARGV, i, i + acks - 1))
  redis.call('HDEL', KEYS[3], unpack(ARGV, i, i + acks - 1))
  i = i + acks
end
local alive = {}
local hb = nil
local first = i + 4 * answers
if first <= #ARGV then
  -- Entries to start: when every answer and start is of one pool, one call asks whether
  -- both the heartbeat and the pool exist.
  local pool = ARGV[first + 1]
  local one = true
  for j = i + 1, first - 1, 4 do one = one and ARGV[j] == pool end
  for j = first + 1, #ARGV, 3 do one = one and ARGV[j] == pool end
  if one and redis.call('EXISTS', KEYS[2], p .. 'pool:' .. pool) == 2 then
    hb = true
    alive[pool] = true
  end
end
local function live(pool)
  local a = alive[pool]
  if a == nil then
    a = redis.call('EXISTS', p .. 'pool:' .. pool) == 1
    alive[pool] = a
  end
  return a
end
local recorded = 0
for _ = 1, answers do
  local id, pool, task, blob = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if live(pool) and redis.call('HSETNX', p .. 'done:' .. pool, task, 1) == 1 then
    redis.call('XADD', p .. 'results:' .. pool, '*', 'r', blob)
    recorded = recorded + 1
  elseif id ~= '' then
    redis.call('HDEL', KEYS[3], id)
  end
end
if i > #ARGV then return {recorded, {}} end
-- Dead only once reaped (its registration gone): a heartbeat that expired while the server
-- was paused does not make it so.
if not hb and redis.call('EXISTS', KEYS[2]) == 0
    and redis.call('HEXISTS', p .. 'agents', string.sub(KEYS[2], #p + 4)) == 0 then
  return {recorded, -1}
end
local out = {}
while i <= #ARGV do
  local id, pool, task = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if not live(pool) or redis.call('HEXISTS', p .. 'done:' .. pool, task) == 1 then
    redis.call('XACK', KEYS[1], 'agents', id)
    redis.call('XDEL', KEYS[1], id)
    out[#out + 1] = 0
  else
    redis.call('HSET', KEYS[3], id, pool .. ':' .. task)
    out[#out + 1] = 1
  end
end
return {recorded, out}
"#;

/// The reaper: for every registered agent whose heartbeat has expired, in one step: the
/// entries it was running count an attempt each (past the task's `max_retries`: a `lost`
/// result and a copy on the dead-letter stream; else re-queued), the entries it held but had
/// not started are re-queued at no charge, then the agent is forgotten (its running record,
/// its registration, its consumer). A task that is done already (answered, or cancelled), or
/// whose pool has ended, is neither charged, re-queued nor dead-lettered: its entry just goes
/// (an answered entry keeps its running mark until its acknowledgement, and a pool's keys
/// are deleted when it ends: charging it would bring back its `attempts` key for good). Then, as a safety net, the task
/// stream's head is trimmed up to its oldest entry still pending or not yet delivered
/// (`MINID ~`: whole nodes only, so it costs little). Returns how many agents it reaped.
///
/// First, every registered pool whose caller is gone (its `alive` key expired: the program
/// holding it was killed, or silent past the pool's TTL) is dropped: its keys are deleted
/// (those of [`Keys::of_pool`](super::frame::Keys::of_pool)), as when a pool ends, so that
/// agents start none of its tasks and stop those they run.
///
/// KEYS: tasks, agents, dead, pools. ARGV: prefix, the caller's heartbeat TTL in ms (none:
/// no pause check).
pub(crate) const REAP: &str = r#"
local p = ARGV[1]
local reaped = 0
local ttl = tonumber(ARGV[2])
if ttl then
  -- Reapers run every ~250 ms; a longer gap means the server itself was not serving (paused,
  -- stopped, starved): every heartbeat expired with no agent dead. For one TTL, none is
  -- reaped, so that the live ones refresh theirs first.
  -- (A key that expires, not TIME: the agents' ACL allows no TIME.)
  if redis.call('EXISTS', p .. 'clock') == 0 then
    redis.call('SET', p .. 'grace', 1, 'PX', ttl)
  end
  redis.call('SET', p .. 'clock', 1, 'PX', math.max(math.floor(ttl / 2), 400))
  if redis.call('EXISTS', p .. 'grace') == 1 then return 0 end
end
for _, pool in ipairs(redis.call('HKEYS', KEYS[4])) do
  if redis.call('EXISTS', p .. 'alive:' .. pool) == 0 then
    local of = {}
    for _, k in ipairs({'pool:', 'results:', 'done:', 'stats:', 'attempts:', 'sent:', 'alive:'}) do
      of[#of + 1] = p .. k .. pool
    end
    redis.call('DEL', unpack(of))
    redis.call('HDEL', KEYS[4], pool)
  end
end
for _, a in ipairs(redis.call('HKEYS', KEYS[2])) do
  if redis.call('EXISTS', p .. 'hb:' .. a) == 0 then
    local running = p .. 'running:' .. a
    while true do
      local pending = redis.call('XPENDING', KEYS[1], 'agents', '-', '+', 1000, a)
      if #pending == 0 then break end
      for _, e in ipairs(pending) do
        local id = e[1]
        local got = redis.call('XRANGE', KEYS[1], id, id)
        if #got == 1 then
          local raw, f = got[1][2], {}
          for j = 1, #raw, 2 do f[raw[j]] = raw[j + 1] end
          local pool, task, m = f['p'], f['k'], f['m'] or '0'
          local live = redis.call('EXISTS', p .. 'pool:' .. pool) == 1
          local done = redis.call('HEXISTS', p .. 'done:' .. pool, task) == 1
          local requeue = live and not done
          if live and not done and redis.call('HEXISTS', running, id) == 1 then
            local n = redis.call('HINCRBY', p .. 'attempts:' .. pool, task, 1)
            if n > tonumber(m) then
              requeue = false
              redis.call('HSET', p .. 'done:' .. pool, task, 1)
              redis.call('XADD', p .. 'results:' .. pool, '*',
                'lost', task, 'attempts', n, 'agent', a)
              redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*',
                'p', pool, 'k', task, 'agent', a, 'attempts', n, 'f', f['f'])
            end
          end
          if requeue then
            redis.call('XADD', KEYS[1], '*', 'f', f['f'], 'p', pool, 'k', task, 'm', m)
          end
        end
        redis.call('XACK', KEYS[1], 'agents', id)
        redis.call('XDEL', KEYS[1], id)
      end
    end
    redis.call('DEL', running)
    redis.call('HDEL', KEYS[2], a)
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'agents', a)
    reaped = reaped + 1
  end
end
local s = redis.pcall('XPENDING', KEYS[1], 'agents')
if type(s) == 'table' and s.err == nil then
  local min = s[2]
  if s[1] == 0 then
    min = nil
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local f = {}
      for j = 1, #g, 2 do f[g[j]] = g[j + 1] end
      if f['name'] == 'agents' then min = f['last-delivered-id'] end
    end
  end
  if min then redis.call('XTRIM', KEYS[1], 'MINID', '~', min) end
end
return reaped
"#;

/// An agent's heartbeat, or a pool's: refreshed while the agent (or pool) is registered (the
/// reaper alone declares it gone; an expired heartbeat only tells it to look, and one that
/// expired while Redis was paused is set again). Returns 0 once reaped.
///
/// KEYS: `hb:<agent>`, agents (or `alive:<pool>`, pools). ARGV: the agent's id (or the
/// pool's), the TTL in ms.
pub(crate) const HEARTBEAT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('SET', KEYS[1], 1, 'PX', ARGV[2])
  return 1
end
return 0
"#;

/// An agent's statistics for one pool, written only while the pool exists (so a pool that
/// has ended is not brought back by a late write).
///
/// KEYS: `pool:<pool>`, `stats:<pool>`. ARGV: the agent's id, its sealed statistics.
pub(crate) const STATS: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 0
"#;

/// The scripts against a real redis-server: what an agent's steps leave for the reaper.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use redis::Value;

    use super::{REAP, STEP, SUBMIT};
    use crate::remote::conn::Conn;
    use crate::remote::conn::testing::{at, server};

    /// Runs one command given as words.
    fn run(con: &mut Conn, words: &[&str]) -> Value {
        let mut cmd = redis::cmd(words[0]);
        for w in &words[1..] {
            cmd.arg(*w);
        }
        con.run("a test command", |k| cmd.query(k)).unwrap()
    }

    fn int(v: Value) -> i64 {
        match v {
            Value::Int(n) => n,
            other => panic!("an integer: {other:?}"),
        }
    }

    /// `STEP` for agent `a1` with build prefix `t:`: `acks`, then `answers` (entry id, pool,
    /// task; the sealed result is a stand-in: the script does not open it), then `starts`.
    fn step(con: &mut Conn, acks: &[&str], answers: &[(&str, &str)], starts: &[(&str, &str)]) -> Value {
        let (na, nk) = (answers.len().to_string(), acks.len().to_string());
        let mut words = vec!["EVAL", STEP, "3", "t:tasks", "t:hb:a1", "t:running:a1", "t:"];
        words.extend([na.as_str(), nk.as_str()]);
        words.extend(acks);
        for (id, task) in answers {
            words.extend([*id, "7", *task, "sealed"]);
        }
        for (id, pool) in starts {
            words.extend([*id, *pool, id.rsplit('-').next().unwrap()]);
        }
        run(con, &words)
    }

    /// Three entries of pool 7 read by agent `a1` (tasks 1, 2, 3): their ids.
    fn three_entries(con: &mut Conn) -> Vec<String> {
        run(con, &["XGROUP", "CREATE", "t:tasks", "agents", "0", "MKSTREAM"]);
        run(con, &["SET", "t:pool:7", "frame"]);
        run(con, &["SET", "t:hb:a1", "1"]);
        run(con, &["HSET", "t:agents", "a1", "1"]);
        let ids: Vec<String> = (1..=3)
            .map(|k| {
                let id = format!("{k}-{k}");
                let k = k.to_string();
                run(con, &["XADD", "t:tasks", &id, "f", "F", "p", "7", "k", &k, "m", "0"]);
                id
            })
            .collect();
        run(con, &["XREADGROUP", "GROUP", "agents", "a1", "STREAMS", "t:tasks", ">"]);
        ids
    }

    fn pending(con: &mut Conn) -> i64 {
        match run(con, &["XPENDING", "t:tasks", "agents"]) {
            Value::Array(v) => int(v.into_iter().next().unwrap()),
            other => panic!("XPENDING: {other:?}"),
        }
    }

    /// An answered entry whose acknowledgement waits for a batch is left pending and marked
    /// running; if the agent dies then, the reaper runs it again for nobody and charges it
    /// no attempt: it only deletes it. The one really running is charged, the one held is
    /// re-queued free.
    #[test]
    fn an_answered_entry_not_yet_acknowledged_is_only_deleted_by_the_reaper() {
        let (_server, sock) = server();
        let mut con = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        let ids = three_entries(&mut con);
        let (id1, id2) = (ids[0].as_str(), ids[1].as_str());
        let started = step(&mut con, &[], &[], &[(id1, "7"), (id2, "7")]);
        assert_eq!(
            started,
            Value::Array(vec![Value::Int(0), Value::Array(vec![Value::Int(1), Value::Int(1)])])
        );
        let answered = step(&mut con, &[], &[(id1, "1")], &[]);
        assert_eq!(answered, Value::Array(vec![Value::Int(1), Value::Array(vec![])]));
        // Recorded, and left for the batch: still pending, still marked.
        assert_eq!(int(run(&mut con, &["XLEN", "t:results:7"])), 1);
        assert_eq!(int(run(&mut con, &["HEXISTS", "t:running:a1", id1])), 1);
        assert_eq!(pending(&mut con), 3);
        // The agent dies.
        run(&mut con, &["DEL", "t:hb:a1"]);
        let reaped = run(&mut con, &["EVAL", REAP, "4", "t:tasks", "t:agents", "t:dead", "t:pools", "t:"]);
        assert_eq!(int(reaped), 1);
        assert_eq!(pending(&mut con), 0);
        // Task 1's one result, and task 2 lost (no retries): two results; task 2 dead-lettered.
        assert_eq!(int(run(&mut con, &["XLEN", "t:results:7"])), 2);
        assert_eq!(int(run(&mut con, &["XLEN", "t:dead"])), 1);
        // Attempts: task 2's one, none for task 1.
        let attempts = run(&mut con, &["HGET", "t:attempts:7", "2"]);
        assert_eq!(attempts, Value::BulkString(b"1".to_vec()));
        assert_eq!(run(&mut con, &["HGET", "t:attempts:7", "1"]), Value::Nil);
        // What is left in the stream: task 3 re-queued, nothing else.
        let Value::Array(left) = run(&mut con, &["XRANGE", "t:tasks", "-", "+"]) else {
            panic!("XRANGE")
        };
        assert_eq!(left.len(), 1, "{left:?}");
        let entries = crate::remote::conn::stream_entries(Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"t:tasks".to_vec()),
            Value::Array(left),
        ])]));
        assert_eq!(entries[0].text("k"), Some("3"), "task 3 re-queued");
        assert_eq!(int(run(&mut con, &["EXISTS", "t:running:a1"])), 0);
    }

    /// An agent that dies with an answered entry not acknowledged yet, after the entry's pool
    /// has ended (its keys deleted, `done` among them): the reaper charges nothing, writes no
    /// dead letter, and brings back no key of the pool.
    #[test]
    fn the_reaper_charges_nothing_for_a_pool_that_has_ended() {
        let (_server, sock) = server();
        let mut con = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        let ids = three_entries(&mut con);
        step(&mut con, &[], &[], &[(ids[0].as_str(), "7")]);
        step(&mut con, &[], &[(ids[0].as_str(), "1")], &[]);
        assert_eq!(int(run(&mut con, &["HLEN", "t:running:a1"])), 1);
        // The pool ends (its submitter deletes its keys), then the agent dies.
        for k in ["t:pool:7", "t:results:7", "t:done:7", "t:stats:7", "t:attempts:7"] {
            run(&mut con, &["DEL", k]);
        }
        run(&mut con, &["DEL", "t:hb:a1"]);
        let reaped = run(&mut con, &["EVAL", REAP, "4", "t:tasks", "t:agents", "t:dead", "t:pools", "t:"]);
        assert_eq!(int(reaped), 1);
        assert_eq!(int(run(&mut con, &["EXISTS", "t:attempts:7"])), 0);
        assert_eq!(int(run(&mut con, &["EXISTS", "t:dead"])), 0);
        assert_eq!(int(run(&mut con, &["EXISTS", "t:results:7"])), 0);
        assert_eq!(int(run(&mut con, &["XLEN", "t:tasks"])), 0, "nothing re-queued");
        assert_eq!(pending(&mut con), 0);
    }

    /// A batch of acknowledgements acknowledges, deletes and unmarks its entries; an answer
    /// not recorded (its pool gone) loses its mark at once; one `EXISTS` for the heartbeat
    /// and a single pool decides as the separate checks would.
    #[test]
    fn a_step_acknowledges_in_batches_and_checks_pools_and_heartbeat() {
        let (_server, sock) = server();
        let mut con = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        let ids = three_entries(&mut con);
        let (id1, id2, id3) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
        step(&mut con, &[], &[], &[(id1, "7"), (id2, "7")]);
        step(&mut con, &[], &[(id1, "1"), (id2, "2")], &[]);
        assert_eq!(pending(&mut con), 3);
        let acked = step(&mut con, &[id1, id2], &[], &[]);
        assert_eq!(acked, Value::Array(vec![Value::Int(0), Value::Array(vec![])]));
        assert_eq!(pending(&mut con), 1);
        assert_eq!(int(run(&mut con, &["XLEN", "t:tasks"])), 1);
        assert_eq!(int(run(&mut con, &["HLEN", "t:running:a1"])), 0);
        // Two pools, one gone: the entry of the gone one is skipped (acknowledged), the
        // other starts.
        run(&mut con, &["XADD", "t:tasks", "4-4", "f", "F", "p", "8", "k", "4", "m", "0"]);
        run(&mut con, &["XREADGROUP", "GROUP", "agents", "a1", "STREAMS", "t:tasks", ">"]);
        let mixed = step(&mut con, &[], &[], &[(id3, "7"), ("4-4", "8")]);
        assert_eq!(
            mixed,
            Value::Array(vec![Value::Int(0), Value::Array(vec![Value::Int(1), Value::Int(0)])])
        );
        assert_eq!(pending(&mut con), 1);
        // Its pool gone, task 3's answer is not recorded, and its mark goes at once.
        run(&mut con, &["DEL", "t:pool:7"]);
        let lost = step(&mut con, &[], &[(id3, "3")], &[]);
        assert_eq!(lost, Value::Array(vec![Value::Int(0), Value::Array(vec![])]));
        assert_eq!(int(run(&mut con, &["HLEN", "t:running:a1"])), 0);
        // The heartbeat expired but the agent not reaped (Redis was paused): it is alive.
        run(&mut con, &["SET", "t:pool:7", "frame"]);
        run(&mut con, &["DEL", "t:hb:a1"]);
        let paused = step(&mut con, &[], &[], &[(id3, "7")]);
        assert_eq!(paused, Value::Array(vec![Value::Int(0), Value::Array(vec![Value::Int(1)])]));
        // Reaped (its registration gone): nothing starts (one pool: the combined check).
        run(&mut con, &["HDEL", "t:agents", "a1"]);
        let dead = step(&mut con, &[], &[], &[(id3, "7")]);
        assert_eq!(dead, Value::Array(vec![Value::Int(0), Value::Int(-1)]));
    }

    /// A batch of tasks sent again (its connection replaced before its reply was read) is
    /// written once, as is one older than the last written; the next one is written, its
    /// entries with the fields the agents and the reaper read. One that finds batches lost
    /// (the number held below the lowest it allows) writes nothing and says what is held;
    /// the batch that sends the lost tasks again, allowing that, is written.
    #[test]
    fn a_batch_of_tasks_sent_again_is_written_once() {
        let (_server, sock) = server();
        let mut con = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        let mut submit = |n: &str, lowest: &str, tasks: &[&str]| {
            let mut words = vec!["EVAL", SUBMIT, "2", "t:tasks", "t:sent:7", n, "7", "2"];
            words.push(lowest);
            for t in tasks {
                words.extend([*t, "F"]);
            }
            int(run(&mut con, &words))
        };
        assert_eq!(submit("1", "0", &["1", "2"]), 1);
        assert_eq!(submit("1", "0", &["1", "2"]), 0);
        assert_eq!(submit("2", "1", &["3"]), 1);
        assert_eq!(submit("1", "0", &["1", "2"]), 0);
        assert_eq!(submit("2", "1", &["3"]), 0);
        // Batch 4 finds 2 held, not 3: nothing written; batch 5 sends batch 3's again.
        assert_eq!(submit("4", "3", &["9"]), -3);
        assert_eq!(submit("5", "2", &["4", "9"]), 1);
        assert_eq!(submit("5", "2", &["4", "9"]), 0);
        let mut con = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        assert_eq!(int(run(&mut con, &["XLEN", "t:tasks"])), 5);
        let Value::Array(all) = run(&mut con, &["XRANGE", "t:tasks", "-", "+"]) else {
            panic!("XRANGE")
        };
        let entries = crate::remote::conn::stream_entries(Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"t:tasks".to_vec()),
            Value::Array(all),
        ])]));
        let tasks: Vec<_> = entries.iter().map(|e| e.text("k").unwrap()).collect();
        assert_eq!(tasks, ["1", "2", "3", "4", "9"]);
        let e = &entries[2];
        let fields = [e.text("f"), e.text("p"), e.text("m")];
        assert_eq!(fields, [Some("F"), Some("7"), Some("2")]);
    }

    /// A registered pool whose `alive` key has expired (its caller is gone) is dropped: every
    /// key of it goes (the script's list is `Keys::of_pool`'s), and its registration; a pool
    /// whose caller lives keeps everything.
    #[test]
    fn the_reaper_drops_a_pool_whose_caller_is_gone() {
        let (_server, sock) = server();
        let mut con = Conn::open(&at(&sock, ""), Duration::ZERO).unwrap();
        let keys = crate::remote::frame::Keys { prefix: "t:".into() };
        for pool in [7, 8] {
            for k in keys.of_pool(pool) {
                run(&mut con, &["SET", &k, "1"]);
            }
            run(&mut con, &["HSET", "t:pools", &pool.to_string(), "1"]);
        }
        run(&mut con, &["PEXPIRE", &keys.alive(7), "10000"]);
        run(&mut con, &["DEL", &keys.alive(8)]);
        run(&mut con, &["EVAL", REAP, "4", "t:tasks", "t:agents", "t:dead", "t:pools", "t:"]);
        for k in keys.of_pool(7) {
            assert_eq!(int(run(&mut con, &["EXISTS", &k])), 1, "{k} of the live pool");
        }
        for k in keys.of_pool(8) {
            assert_eq!(int(run(&mut con, &["EXISTS", &k])), 0, "{k} of the gone pool");
        }
        let left = run(&mut con, &["HKEYS", "t:pools"]);
        assert_eq!(left, Value::Array(vec![Value::BulkString(b"7".to_vec())]));
    }

}
