//! Chaos for the managed containers (`Manager`'s `Dict` and `List`), used carelessly and by
//! a hostile local user: holders SIGKILLed inside `update_with` while others wait on the
//! lock, churners killed mid-`clear`, `pop`, `set` and compaction while threads of this
//! process read through the same handle, handles of other kinds forged into a `Dict`, the
//! container's memory scribbled on while children call, a process out of descriptors, and
//! handles dropped in odd orders. Each scenario checks that every call ends with a value or a
//! clear `Err` (never a panic, a hang or wrong data), that a dead holder blocks nobody, and
//! that nothing is left behind.
//!
//! There is no manager server to kill and no socket to squat: the containers live in shared
//! memory, reached through a descriptor each holder keeps (see `src/manager.rs`).

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use mproc::{
    Buffer, Connection, Dict, ErrorKind, Event, List, Lock, Manager, Process, StartMethod, Value,
};

use crate::common::{PATIENCE, alone, open_fds, start};

/// Takes the dict's lock inside `update_with`, says so, and never lets go.
fn hold_forever(d: Dict<String, u64>, inside: Event) {
    let _ = d.update_with("n".into(), |n| {
        inside.set();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let _ = &n;
        }
    });
}

fn bump(d: Dict<String, u64>, times: u32) {
    for _ in 0..times {
        d.update_with("n".into(), |n| n.unwrap_or(0) + 1).unwrap();
    }
}

/// A holder killed inside `update_with` while processes and threads of this one wait for the
/// lock: every waiter goes on, no increment is lost, and the holder's half-made update is
/// not stored.
fn a_holder_killed_inside_update_with_frees_every_waiter(m: StartMethod) {
    let d = Manager::new().unwrap().dict::<String, u64>().unwrap();
    d.insert("n".into(), 0).unwrap();
    let inside = Event::new().unwrap();
    let mut holder = start(m, hold_forever, (d.clone(), inside.clone()));
    inside.wait_timeout(PATIENCE).unwrap();
    let mut waiters: Vec<Process<()>> = (0..2).map(|_| start(m, bump, (d.clone(), 100))).collect();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let d = d.clone();
            std::thread::spawn(move || bump(d, 100))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        threads.iter().all(|t| !t.is_finished()),
        "a waiter went past a held lock"
    );
    holder.kill().unwrap();
    let _ = holder.join_timeout(PATIENCE);
    for w in &mut waiters {
        w.join_timeout(PATIENCE).unwrap();
    }
    let until = Instant::now() + PATIENCE;
    for t in threads {
        while !t.is_finished() {
            assert!(
                Instant::now() < until,
                "a thread still waits for a dead holder"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        t.join().unwrap();
    }
    assert_eq!(d.get(&"n".to_string()).unwrap(), Some(400));
}

/// The item a list holds at `index`, and the value a dict holds under `key`: what the churn
/// keeps true, so a reader can check every item it sees.
fn item_at(index: usize) -> u64 {
    index as u64 * 7 + 3
}

fn value_of(key: u16) -> Vec<u8> {
    vec![key as u8; usize::from(key % 50)]
}

/// Changes a small dict, and the list too if `list_too`, at random forever: pushes, pops,
/// sets, clears, inserts and removes (the dict compacts often), each keeping [`item_at`] and
/// [`value_of`] true. (A list changed by one process only: a push's item depends on the
/// length read before it.)
fn churn_forever(l: List<u64>, d: Dict<u16, Vec<u8>>, seed: u64, list_too: bool) {
    let mut r = seed | 1;
    loop {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        let key = (r >> 20) as u16 % 40;
        // Without the list: a clear, removes and inserts.
        let op = match (list_too, r % 8) {
            (true, _) => r % 16,
            (false, 0) => 1,
            (false, n) => 5 + n,
        };
        match op {
            0 => l.clear().unwrap(),
            1 => d.clear().unwrap(),
            2..=4 => drop(l.pop().unwrap()),
            5 => {
                let n = l.len().unwrap();
                if n > 0 {
                    l.set(key as usize % n, item_at(key as usize % n)).unwrap();
                }
            }
            6..=9 => drop(d.remove(&key).unwrap()),
            10..=12 => drop(d.insert(key, value_of(key)).unwrap()),
            _ => {
                let n = l.len().unwrap();
                if n < 200 {
                    l.push(item_at(n)).unwrap();
                }
            }
        }
    }
}

/// Whether what a list and a dict hold is what the churn keeps true; while nobody changes
/// them (`quiet`), also that their keys and items agree (two calls).
fn check_whole(l: &List<u64>, d: &Dict<u16, Vec<u8>>, quiet: bool) -> Result<(), String> {
    let items = l.to_vec().map_err(|e| e.to_string())?;
    if let Some(i) = (0..items.len()).find(|&i| items[i] != item_at(i)) {
        return Err(format!("list item {i} is {}", items[i]));
    }
    let entries = d.items().map_err(|e| e.to_string())?;
    if let Some((k, _)) = entries.iter().find(|(k, v)| *v != value_of(*k)) {
        return Err(format!("dict entry {k} is wrong"));
    }
    let keys = d.keys().map_err(|e| e.to_string())?;
    if quiet && keys.len() != d.len().map_err(|e| e.to_string())? {
        return Err("len and keys disagree".into());
    }
    let agree = keys.len() == entries.len() && keys.iter().zip(&entries).all(|(k, (e, _))| k == e);
    if quiet && !agree {
        return Err("keys and items disagree".into());
    }
    Ok(())
}

/// Churners SIGKILLed at random moments (inside clears, pops, sets, compactions) while
/// threads of this process read the same handles by reference: every read, during and after,
/// sees a whole state, and nobody waits for the dead.
fn churners_killed_while_threads_read_by_reference(m: StartMethod) {
    let manager = Manager::new().unwrap();
    let l = manager.list_with_capacity::<u64>(256, 16 << 10).unwrap();
    // 48 entries, 2 KiB: inserts and removes compact every few dozen calls.
    let d = manager
        .dict_with_capacity::<u16, Vec<u8>>(48, 2 << 10)
        .unwrap();
    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        check_whole(&l, &d, false)?;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                })
            })
            .collect();
        // Set however this thread leaves the scope (a failed check panics), so the readers end.
        let stopper = StopOnDrop(&stop);
        for round in 0..10u64 {
            let mut churners: Vec<Process<()>> = (0..2)
                .map(|i| {
                    start(
                        m,
                        churn_forever,
                        (l.clone(), d.clone(), round * 2 + i, i == 0),
                    )
                })
                .collect();
            std::thread::sleep(Duration::from_millis(15 + 9 * round));
            for c in &churners {
                c.kill().unwrap();
            }
            for c in &mut churners {
                let _ = c.join_timeout(PATIENCE);
            }
            let began = Instant::now();
            check_whole(&l, &d, true).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(
                began.elapsed() < Duration::from_secs(2),
                "blocked by a dead holder"
            );
        }
        drop(stopper);
        for r in readers {
            r.join().unwrap().unwrap();
        }
    });
    assert!(reads.load(Ordering::Relaxed) > 0);
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Another kind of handle where a `Dict<u8, u8>` is expected: what a hostile sender does.
/// Serializes as the handle it holds, deserializes only as a dict.
enum Forged {
    Lock(Lock),
    Buffer(Buffer<u8>),
    Pipe(Connection<u8>),
    List(List<u8>),
    Dict(Dict<u8, u8>),
}

impl Serialize for Forged {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Forged::Lock(h) => h.serialize(s),
            Forged::Buffer(h) => h.serialize(s),
            Forged::Pipe(h) => h.serialize(s),
            Forged::List(h) => h.serialize(s),
            Forged::Dict(h) => h.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Forged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Dict::deserialize(d).map(Forged::Dict)
    }
}

/// Receives `n` forged handles (each must be refused), then a true dict; returns each
/// outcome and how many more descriptors it holds than before.
fn receive_forged(c: Connection<Forged>, n: usize) -> (Vec<String>, isize) {
    let before = open_fds().len() as isize;
    let mut seen = Vec::new();
    for _ in 0..n {
        seen.push(match c.recv_timeout(PATIENCE) {
            Ok(_) => "accepted".to_string(),
            Err(e) => format!("{:?}: {e}", e.kind()),
        });
    }
    match c.recv_timeout(PATIENCE) {
        Ok(Forged::Dict(d)) => seen.push(format!("dict: {:?}", d.get(&1))),
        Ok(_) => seen.push("not a dict".into()),
        Err(e) => seen.push(format!("the true dict refused: {e}")),
    }
    (seen, open_fds().len() as isize - before)
}

/// Handles of other kinds (a lock, a sealed buffer, a pipe, a list) sent where a dict is
/// expected are refused with a clear error that consumes the message, keeps no descriptor,
/// and leaves the pipe usable; a dict of other types reads as a codec error.
fn forged_handles_are_refused(m: StartMethod) {
    let manager = Manager::new().unwrap();
    let (ours, theirs) = mproc::pipe::<Forged>().unwrap();
    let mut p = start(m, receive_forged, (theirs, 4));
    let (a, _b) = mproc::pipe::<u8>().unwrap();
    ours.send(Forged::Lock(Lock::new().unwrap())).unwrap();
    ours.send(Forged::Buffer(Buffer::from_slice(&[1u8; 100]).unwrap()))
        .unwrap();
    ours.send(Forged::Pipe(a)).unwrap();
    ours.send(Forged::List(manager.list().unwrap())).unwrap();
    let d = manager.dict::<u8, u8>().unwrap();
    d.insert(1, 2).unwrap();
    ours.send(Forged::Dict(d)).unwrap();
    let (seen, kept) = p.join_timeout(PATIENCE).unwrap();
    assert_eq!(seen.len(), 5, "{seen:?}");
    for s in &seen[..4] {
        assert!(s.starts_with("Codec"), "a forged handle: {s}");
    }
    assert_eq!(seen[4], "dict: Ok(Some(2))");
    assert!(
        kept <= 1,
        "{kept} descriptors kept (the true dict's is one): {seen:?}"
    );
    // Types confused: the bytes of a u64 read as a string.
    let d = manager.dict::<u64, u64>().unwrap();
    d.insert(1, u64::MAX).unwrap();
    let same: Dict<u64, String> = retype(&d);
    let e = same.get(&1).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Codec(_)), "{e}");
    assert!(same.items().is_err() && same.values().is_err());
    assert_eq!(same.len().unwrap(), 1);
}

/// The same container seen with other types (its handle carries none): sent through a pipe
/// as an `A`, received as a `B`.
fn retype<A: Serialize + Clone, B: DeserializeOwned>(handle: &A) -> B {
    let (x, y) = mproc::pipe::<Retyped<A, B>>().unwrap();
    x.send(Retyped::Sent(handle.clone())).unwrap();
    match y.recv_timeout(PATIENCE).unwrap() {
        Retyped::Received(b) => b,
        Retyped::Sent(_) => unreachable!("received as a `B`"),
    }
}

/// Serializes as the `A` it was sent as, deserializes as a `B`.
enum Retyped<A, B> {
    Sent(A),
    Received(B),
}

impl<A: Serialize, B> Serialize for Retyped<A, B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Retyped::Sent(a) => a.serialize(s),
            Retyped::Received(_) => Err(serde::ser::Error::custom("only what is sent is encoded")),
        }
    }
}

impl<'de, A, B: Deserialize<'de>> Deserialize<'de> for Retyped<A, B> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        B::deserialize(d).map(Retyped::Received)
    }
}

/// Writes words into a dict and a list (what another program's types would write).
fn write_words(d: Dict<u8, String>, l: List<String>) {
    d.update([(1, "one".to_string()), (2, "two".to_string())])
        .unwrap();
    l.extend(["a".to_string(), "b".to_string()]).unwrap();
}

/// Every call that takes a value out of `d` and `l`, or replaces one, on containers that
/// hold values of another type; each outcome as a line (a value taken is a bug).
fn try_takes<V>(d: &Dict<u8, V>, l: &List<V>, new: V) -> Vec<String>
where
    V: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let said = |r: Result<Option<V>, mproc::Error>| match r {
        Ok(v) => format!("taken: {v:?}"),
        Err(e) => match e.kind() {
            ErrorKind::Codec(c) => format!("Codec {}: {} ({})", c.direction, c.value, c.message),
            k => format!("{k:?}"),
        },
    };
    vec![
        said(d.remove(&1)),
        said(d.remove(&2)),
        said(d.insert(1, new.clone())),
        said(d.update_with(2, |_| new.clone()).map(Some)),
        said(l.pop()),
    ]
}

fn take_words(d: Dict<u8, String>, l: List<String>) -> Vec<String> {
    try_takes(&d, &l, "new".to_string())
}

/// Each outcome of [`try_takes`] is a decode error that names the type asked for.
fn assert_refused(seen: &[String], asked: &str, m: StartMethod) {
    assert_eq!(seen.len(), 5, "{m}: {seen:?}");
    for s in seen {
        let named = s.contains(&format!("as `{asked}`"));
        assert!(s.starts_with("Codec decode") && named, "{m}: {s}");
    }
    // Those that take or replace say the value stayed (update_with only reads it).
    for s in [&seen[0], &seen[1], &seen[2], &seen[4]] {
        assert!(s.contains("left where it was"), "{m}: {s}");
    }
}

/// A dict and a list reached with other types than they were written with (a handle carries
/// none): a child writes words and this process takes them out as numbers, then this
/// process writes numbers and a child takes them out as words. Every `remove`, `pop` and
/// `insert` over such a value is a `Codec` error and the value stays, whole, for a handle of
/// its own type (they were removed from the table before being decoded, and lost).
fn a_value_of_another_type_is_refused_and_kept(m: StartMethod) {
    let manager = Manager::new().unwrap();
    let (words, word_list) = (
        manager.dict::<u8, String>().unwrap(),
        manager.list().unwrap(),
    );
    start(m, write_words, (words.clone(), word_list.clone()))
        .join_timeout(PATIENCE)
        .unwrap();
    let (as_numbers, list_as_numbers): (Dict<u8, u64>, List<u64>) =
        (retype(&words), retype(&word_list));
    assert_refused(&try_takes(&as_numbers, &list_as_numbers, 9), "u64", m);
    assert_eq!(
        (as_numbers.len().unwrap(), list_as_numbers.len().unwrap()),
        (2, 2),
        "{m}"
    );
    let one = (1, "one".to_string());
    assert_eq!(
        words.items().unwrap(),
        [one.clone(), (2, "two".into())],
        "{m}"
    );
    assert_eq!(word_list.pop().unwrap().as_deref(), Some("b"), "{m}");
    assert_eq!(words.remove(&2).unwrap().as_deref(), Some("two"), "{m}");
    assert_eq!(words.items().unwrap(), [one], "{m}");

    let (numbers, number_list) = (manager.dict::<u8, u64>().unwrap(), manager.list().unwrap());
    numbers.update([(1, u64::MAX), (2, 7)]).unwrap();
    number_list.extend([5u64, 6]).unwrap();
    let seen = start(m, take_words, (retype(&numbers), retype(&number_list)))
        .join_timeout(PATIENCE)
        .unwrap();
    assert_refused(&seen, "alloc::string::String", m);
    assert_eq!(numbers.items().unwrap(), [(1, u64::MAX), (2, 7)], "{m}");
    assert_eq!(number_list.to_vec().unwrap(), [5, 6], "{m}");
    assert_eq!(numbers.remove(&1).unwrap(), Some(u64::MAX), "{m}");
    assert_eq!(number_list.pop().unwrap(), Some(6), "{m}");
}

/// Calls every method on a dict and list for `ms` milliseconds, whatever they return;
/// returns how many calls succeeded and failed (a panic or a hang fails the process).
fn call_everything(d: Dict<u16, Vec<u8>>, l: List<u64>, ms: u64) -> (u64, u64) {
    let (mut ok, mut err) = (0, 0);
    let mut tally = |r: Result<(), mproc::Error>| match r {
        Ok(()) => ok += 1,
        Err(_) => err += 1,
    };
    let until = Instant::now() + Duration::from_millis(ms);
    let mut i = 0u16;
    while Instant::now() < until {
        i = i.wrapping_add(1);
        let k = i % 64;
        tally(d.insert(k, vec![k as u8; usize::from(k)]).map(drop));
        tally(d.get(&k).map(drop));
        tally(d.update_with(k + 1, |v| v.unwrap_or_default()).map(drop));
        tally(d.items().map(drop));
        tally(d.remove(&(k / 2)).map(drop));
        tally(l.push(u64::from(i)));
        tally(l.to_vec().map(drop));
        tally(l.pop().map(drop));
        tally(l.set(usize::from(k), 1));
        if k == 0 {
            tally(d.clear());
            tally(l.clear());
        }
    }
    (ok, err)
}

/// The memory file behind a container this process just made: the descriptor among those
/// open now that was not open `before`, as a file this process can write (a hostile user's
/// route to it: /proc/<pid>/fd).
fn container_file(before: &[(i32, String)]) -> std::fs::File {
    let new: Vec<_> = open_fds()
        .into_iter()
        .filter(|f| !before.contains(f) && f.1.contains("memfd:"))
        .collect();
    assert_eq!(new.len(), 1, "one new memory file: {new:?}");
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", new[0].0))
        .unwrap()
}

/// A hostile user writes random words all over a container's table (not its lock) while
/// children call every method: each call returns a value or an error, no child panics or
/// hangs, and this process can still call.
fn a_scribbled_container_gives_errors_not_panics(m: StartMethod) {
    let manager = Manager::new().unwrap();
    let l = manager.list_with_capacity::<u64>(64, 4 << 10).unwrap();
    let before = open_fds();
    let d = manager
        .dict_with_capacity::<u16, Vec<u8>>(64, 8 << 10)
        .unwrap();
    let file = container_file(&before);
    let len = file.metadata().unwrap().len();
    let mut callers: Vec<Process<(u64, u64)>> = (0..2)
        .map(|_| start(m, call_everything, (d.clone(), l.clone(), 1500)))
        .collect();
    let mut r = 0x2545_f491_4f6c_dd1du64;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        for _ in 0..4 {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            // Past the block's header and lock (the table starts at 192).
            let at = 192 + (r >> 16) % (len - 200);
            let word = if r & 1 == 0 { r } else { r % 512 };
            file.write_all_at(&word.to_le_bytes(), at & !7).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, c) in callers.iter_mut().enumerate() {
        let (ok, err) = c
            .join_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("caller {i}: {e}"));
        eprintln!("caller {i}: {ok} calls answered, {err} refused");
        assert!(ok + err > 0);
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        call_everything(d.clone(), l.clone(), 50)
    }));
    assert!(r.is_ok(), "a call on a scribbled container panicked");
}

/// Sends new dicts (each holding its number under 0) until the pipe fails.
fn send_dicts(c: Connection<Dict<u8, u32>>) {
    let manager = Manager::new().unwrap();
    for n in 0u32.. {
        let d = manager.dict_with_capacity::<u8, u32>(2, 64).unwrap();
        d.insert(0, n).unwrap();
        if c.send(d).is_err() {
            return;
        }
    }
}

/// Opens files until this process has no descriptor left; returns them.
fn take_every_descriptor() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return held,
            Err(e) => panic!("opening /dev/null: {e}"),
        }
    }
}

fn set_nofile(limit: libc::rlimit) {
    // SAFETY: setrlimit reads the struct given; this test runs in a process of its own.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
}

/// Out of descriptors: a dict received is a clear error (its descriptor could not be
/// installed), making one is a clear error, calls on dicts already held go on; once
/// descriptors are free again, dicts arrive whole. Under every start method for the sender.
#[test]
fn a_process_out_of_descriptors_mid_call() {
    if !alone() {
        return; // it lowers this process's limit for a while
    }
    for m in StartMethod::ALL {
        let held = Manager::new().unwrap().dict::<u8, u8>().unwrap();
        let (ours, theirs) = mproc::pipe::<Dict<u8, u32>>().unwrap();
        let mut sender = start(m, send_dicts, (theirs,));
        assert_eq!(
            ours.recv_timeout(PATIENCE).unwrap().get(&0).unwrap(),
            Some(0)
        );
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        let open = open_fds().len() as u64;
        set_nofile(libc::rlimit {
            rlim_cur: open + 16,
            rlim_max: old.rlim_max,
        });
        let fillers = take_every_descriptor();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let refused: Vec<String> = (0..5)
                .filter_map(|_| ours.recv_timeout(PATIENCE).err())
                .map(|e| e.to_string())
                .collect();
            let made = Manager::new().unwrap().dict::<u8, u8>();
            held.insert(1, 1).map(drop).and(held.get(&1).map(drop))?;
            Ok::<_, mproc::Error>((refused, made.is_err()))
        }));
        drop(fillers);
        set_nofile(old);
        let (refused, made_failed) = r
            .unwrap_or_else(|_| panic!("{m}: panicked out of descriptors"))
            .unwrap_or_else(|e| panic!("{m}: a held dict failed out of descriptors: {e}"));
        assert_eq!(
            refused.len(),
            5,
            "{m}: dicts received with no descriptor to spare"
        );
        // Said as such (it was "handle 0 did not arrive with its message").
        for e in &refused {
            assert!(e.contains("descriptor limit"), "{m}: {e}");
        }
        assert!(made_failed, "{m}: a dict made with no descriptor to spare");
        // Descriptors free again: dicts arrive whole (numbers after those lost).
        let mut last = 0;
        for _ in 0..20 {
            let n = ours
                .recv_timeout(PATIENCE)
                .unwrap()
                .get(&0)
                .unwrap()
                .unwrap();
            assert!(n > last, "{m}: dict {n} after {last}");
            last = n;
        }
        drop(ours);
        sender.join_timeout(PATIENCE).unwrap();
    }
}

/// Receives a dict, adds to it, sends it back, and waits to be killed.
fn add_send_back_and_wait(c: Connection<Dict<u8, u8>>, back: Connection<Dict<u8, u8>>) {
    let d = c.recv_timeout(PATIENCE).unwrap();
    d.insert(1, 1).unwrap();
    back.send(&d).unwrap();
    std::thread::sleep(PATIENCE);
}

/// The mappings of mproc's shared blocks in this process.
fn shared_mappings() -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().filter(|l| l.contains("mproc-shared")).count()
}

fn memory_files() -> usize {
    open_fds()
        .iter()
        .filter(|f| f.1.contains("mproc-shared"))
        .count()
}

/// A dict's only handle here dropped while it is in a pipe to a child (the `Manager` holds
/// nothing: it is `Copy`); a child killed holding it, and one killed holding its lock: the container works
/// as long as someone holds it, and afterwards this process keeps no descriptor or mapping
/// of it.
#[test]
fn handles_dropped_in_odd_orders_leave_nothing() {
    if !alone() {
        return; // it counts this process's descriptors and mappings
    }
    let warm = Manager::new().unwrap().dict::<u8, u8>().unwrap();
    for m in StartMethod::ALL {
        start(m, crate::common::sleep_ms, (1,))
            .join_timeout(PATIENCE)
            .unwrap();
    }
    drop(warm);
    let (files, maps) = (memory_files(), shared_mappings());
    for m in StartMethod::ALL {
        let d = Manager::new().unwrap().dict::<u8, u8>().unwrap();
        let (tx, rx) = mproc::pipe().unwrap();
        let (back_tx, back_rx) = mproc::pipe().unwrap();
        let mut child = start(m, add_send_back_and_wait, (rx, back_tx));
        tx.send(&d).unwrap();
        drop(d);
        let d = back_rx.recv_timeout(PATIENCE).unwrap();
        assert_eq!(d.get(&1).unwrap(), Some(1), "{m}");
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        assert_eq!(
            d.insert(2, 2).unwrap(),
            None,
            "{m}: usable after its other holder died"
        );
        // A holder of its lock killed, then our last handle dropped.
        let held = Manager::new().unwrap().dict::<String, u64>().unwrap();
        let inside = Event::new().unwrap();
        let mut holder = start(m, hold_forever, (held.clone(), inside.clone()));
        inside.wait_timeout(PATIENCE).unwrap();
        drop(held);
        holder.kill().unwrap();
        let _ = holder.join_timeout(PATIENCE);
        drop((d, inside, tx));
        assert_eq!(memory_files(), files, "{m}: memory files left open");
        assert_eq!(shared_mappings(), maps, "{m}: shared blocks left mapped");
    }
}

/// How much shared memory this process has resident (`RssShmem`), in KiB.
fn resident_shared_kib() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("RssShmem:"));
    let kib = line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    kib.ok_or_else(|| io::Error::other("no RssShmem in /proc/self/status"))
}

/// A clear costs in proportion to what the container holds, not to its capacity: clearing a
/// dict made for a million entries that holds three makes none of its 80 MiB of slots
/// resident. (It zeroed every slot: 80 MiB written and kept at each clear.)
#[test]
fn a_clear_costs_what_is_stored_not_the_capacity() {
    if !alone() {
        return; // it measures this process's resident memory
    }
    let manager = Manager::new().unwrap();
    let big = manager
        .dict_with_capacity::<u32, u32>(1 << 20, 1 << 20)
        .unwrap();
    let l = manager.list_with_capacity::<u32>(1 << 20, 1 << 20).unwrap();
    for round in 0..3u32 {
        big.update((0..3).map(|i| (i, round))).unwrap();
        l.extend(0..3).unwrap();
        let before = resident_shared_kib().unwrap();
        big.clear().unwrap();
        l.clear().unwrap();
        let grew = resident_shared_kib().unwrap().saturating_sub(before);
        assert!(
            grew < 1024,
            "round {round}: two clears made {grew} KiB resident"
        );
        assert!(big.is_empty().unwrap() && l.is_empty().unwrap());
        assert_eq!(big.get(&1).unwrap(), None);
    }
    big.insert(7, 7).unwrap();
    assert_eq!(big.items().unwrap(), [(7, 7)]);
}

/// `items()` and the compactions of a dict made for a million entries that holds three cost
/// what it holds, told by the pages they touch (its time is the manager bench's): `items()`
/// reads none of its index (it scanned every slot, making the index resident: tens of MiB,
/// 3 ms here), and compactions make none of it resident (each zeroed the other index: 80
/// MiB).
#[test]
fn items_and_compactions_cost_what_is_held_not_the_capacity() {
    if !alone() {
        return; // it measures this process's resident memory
    }
    let big = Manager::new()
        .unwrap()
        .dict_with_capacity::<u32, Vec<u8>>(1 << 20, 1 << 20)
        .unwrap();
    big.update((0..3).map(|i| (i, vec![i as u8; 10]))).unwrap();
    let before = resident_shared_kib().unwrap();
    for _ in 0..20 {
        assert_eq!(big.items().unwrap().len(), 3);
    }
    let read = resident_shared_kib().unwrap().saturating_sub(before);
    assert!(read < 256, "items() made {read} KiB resident");
    // 64 KiB updates into a 1 MiB arena: a compaction every 15 or so.
    for round in 0..40u8 {
        big.insert(1, vec![round; 64 << 10]).unwrap();
    }
    let grew = resident_shared_kib().unwrap().saturating_sub(before);
    // Two arenas of 1 MiB at most, and a few pages of the header, index and order.
    assert!(grew < 3 << 10, "compactions made {grew} KiB resident");
    let items = big.items().unwrap();
    let seen: Vec<_> = items.iter().map(|(k, v)| (*k, v[0], v.len())).collect();
    assert_eq!(seen, [(0, 0, 10), (1, 39, 64 << 10), (2, 2, 10)]);
}

/// One change of [`change_in_order`]'s, made from its seed and number alone.
#[derive(Debug)]
enum Change {
    Insert(u16, Vec<u8>),
    Remove(u16),
    Clear,
}

fn change(seed: u64, n: u64) -> Change {
    let mut r = (seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
    for _ in 0..3 {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
    }
    let key = (r >> 20) as u16 % 40;
    match r % 64 {
        0 => Change::Clear,
        1..=24 => Change::Remove(key),
        _ => Change::Insert(key, vec![n as u8; (r >> 40) as usize % 48]),
    }
}

/// Makes changes `0..` from `seed` to `d` forever, counting each made in `done`.
fn change_in_order(d: Dict<u16, Vec<u8>>, done: Value<u64>, seed: u64) {
    for n in 0.. {
        match change(seed, n) {
            Change::Insert(k, v) => drop(d.insert(k, v).unwrap()),
            Change::Remove(k) => drop(d.remove(&k).unwrap()),
            Change::Clear => d.clear().unwrap(),
        }
        done.set(n + 1).unwrap();
    }
}

/// Python's dict after changes `0..n` from `seed` to `from`: an update keeps its key's
/// place, a key removed and inserted again goes last.
fn model(mut from: Vec<(u16, Vec<u8>)>, seed: u64, n: u64) -> Vec<(u16, Vec<u8>)> {
    for i in 0..n {
        match change(seed, i) {
            Change::Insert(k, v) => match from.iter_mut().find(|(key, _)| *key == k) {
                Some(entry) => entry.1 = v,
                None => from.push((k, v)),
            },
            Change::Remove(k) => from.retain(|(key, _)| *key != k),
            Change::Clear => from.clear(),
        }
    }
    from
}

/// A child SIGKILLed at random points of its inserts, updates, removes, clears and the
/// compactions they bring (48 entries and 4 KiB: one every few dozen changes): after each
/// kill, `items()` is Python's dict as the changes the child counted, or as one more (the
/// one it made but was killed before counting), in Python's order.
fn a_child_killed_mid_change_leaves_the_models_dict(m: StartMethod) {
    let d = Manager::new()
        .unwrap()
        .dict_with_capacity::<u16, Vec<u8>>(48, 4 << 10)
        .unwrap();
    let done = Value::new(0u64).unwrap();
    let mut r = 0x2545_f491_4f6c_dd1du64;
    for round in 0..40u64 {
        let base = d.items().unwrap();
        done.set(0).unwrap();
        let seed = round.wrapping_mul(0x1000_0000_01b3) ^ r;
        let mut child = start(m, change_in_order, (d.clone(), done.clone(), seed));
        let until = Instant::now() + PATIENCE;
        while done.get().unwrap() == 0 {
            assert!(Instant::now() < until, "{m}: the child made no change");
            std::thread::sleep(Duration::from_millis(1));
        }
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        std::thread::sleep(Duration::from_micros(r % 5_000));
        child.kill().unwrap();
        let _ = child.join_timeout(PATIENCE);
        let n = done.get().unwrap();
        let seen = d.items().unwrap();
        assert_eq!(d.len().unwrap(), seen.len(), "{m}, round {round}");
        let (counted, one_more) = (model(base.clone(), seed, n), model(base, seed, n + 1));
        assert!(
            seen == counted || seen == one_more,
            "{m}, round {round}, after {n} changes: {seen:?}\nnot {counted:?}\nnor {one_more:?}"
        );
    }
}

per_start_method!(
    a_child_killed_mid_change_leaves_the_models_dict,
    a_holder_killed_inside_update_with_frees_every_waiter,
    churners_killed_while_threads_read_by_reference,
    forged_handles_are_refused,
    a_value_of_another_type_is_refused_and_kept,
    a_scribbled_container_gives_errors_not_panics,
);
