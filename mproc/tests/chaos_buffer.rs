//! Chaos on `Buffer`: workers SIGKILLed while they hold, read or return one (in `apply`,
//! `map` chunks and `imap`); buffers left unread in a pipe, with a reader killed after
//! taking some, and results that hold buffers outliving their pool; a low descriptor limit;
//! one buffer read, cloned and sent from many threads at once; and hostile peers that send
//! another handle's descriptor where a buffer is expected. Each caller gets its values or a
//! clear error, never a hang or a crash, and no buffer's memory file stays open or mapped in
//! it once the buffers are dropped. Every wait is bounded.

use std::time::Duration;

use mproc::{Buffer, Connection, ErrorKind, Lock, Pool, Process, Queue, StartMethod, Value, pipe};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::common::{PATIENCE, alone, held, pool, wait_until};

fn value_at(seed: u64, i: usize) -> u64 {
    (i as u64 ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn table(seed: u64, len: usize) -> Buffer<u64> {
    Buffer::new_with(len, |t: &mut [u64]| {
        for (i, x) in t.iter_mut().enumerate() {
            *x = value_at(seed, i);
        }
    })
    .unwrap()
}

fn sum_of(seed: u64, len: usize) -> u64 {
    (0..len).fold(0, |s, i| s.wrapping_add(value_at(seed, i)))
}

fn sum(b: &Buffer<u64>) -> u64 {
    b.iter().fold(0, |s, &x| s.wrapping_add(x))
}

/// Checks every element of `b`, a `table(seed, len)`.
fn check_table(b: &Buffer<u64>, seed: u64, len: usize) {
    assert_eq!(b.len(), len);
    for (i, &x) in b.iter().enumerate() {
        assert_eq!(x, value_at(seed, i), "element {i} of table {seed}");
    }
}

/// How many descriptors of buffers' memory files this process holds, and how many mappings of
/// them it has.
fn buffer_files() -> (usize, usize) {
    let fds = crate::common::open_fds()
        .iter()
        .filter(|(_, l)| l.contains("memfd:mproc-buffer"))
        .count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:mproc-buffer"))
        .count();
    (fds, maps)
}

/// Waits (bounded) until no buffer's memory file is open or mapped here, and this process
/// holds what it held at `baseline` (taken with nothing of the scenario alive).
fn wait_until_clean(baseline: (Vec<String>, usize)) {
    wait_until("no buffer's memory file is left open or mapped", || {
        buffer_files() == (0, 0)
    });
    let mut now = held();
    for _ in 0..PATIENCE.as_millis() / 10 {
        if now.0 == baseline.0 && now.1 <= baseline.1 + 10 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
        now = held();
    }
    panic!(
        "held {now:?}, {baseline:?} before:\n{:#?}",
        crate::common::open_fds()
    );
}

/// This process's descriptors once a pool of this start method has come and gone (a fork
/// server, once started, stays).
fn baseline(m: StartMethod) -> (Vec<String>, usize) {
    let p = pool(m, 1);
    assert_eq!(p.apply(sum_table, (table(0, 10),)).unwrap(), sum_of(0, 10));
    drop(p);
    wait_until("the warm-up's buffer is gone", || buffer_files() == (0, 0));
    held()
}

fn sum_table(b: Buffer<u64>) -> u64 {
    sum(&b)
}

fn kill_self() -> ! {
    // SAFETY: kill(2) and getpid(2) have no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILLed");
}

/// Sums the table it is given; dies (SIGKILL) halfway through reading it when `die`.
fn read_then_maybe_die(b: Buffer<u64>, die: bool) -> u64 {
    let half = b.len() / 2;
    let s = b[..half].iter().fold(0u64, |s, &x| s.wrapping_add(x));
    if die {
        kill_self();
    }
    b[half..].iter().fold(s, |s, &x| s.wrapping_add(x))
}

fn read_pair((b, die): (Buffer<u64>, bool)) -> u64 {
    read_then_maybe_die(b, die)
}

fn lost(e: &mproc::Error) -> bool {
    matches!(e.kind(), ErrorKind::WorkerLost(_))
}

/// Workers SIGKILLed while they read a buffer they were given, by `apply`, in `map` chunks
/// and in `imap`: that task (or chunk) alone fails with `WorkerLost`, every other gives its
/// sum, the pool replaces the dead, and nothing of any buffer stays in the caller.
fn a_worker_killed_reading_a_buffer_fails_its_task_alone(m: StartMethod) {
    if !alone() {
        return;
    }
    let base = baseline(m);
    {
        let p = pool(m, 2);
        let t = table(1, 100_000);
        let results: Vec<_> = (0..6)
            .map(|k| {
                p.apply_async(read_then_maybe_die, (t.clone(), k % 3 == 1))
                    .unwrap()
            })
            .collect();
        for (k, r) in results.iter().enumerate() {
            match r.get_timeout(PATIENCE) {
                Ok(s) => {
                    assert!(k % 3 != 1, "task {k} should have died");
                    assert_eq!(s, sum_of(1, 100_000));
                }
                Err(e) => assert!(k % 3 == 1 && lost(&e), "task {k}: {e}"),
            }
        }
        // imap, one item a chunk: the dying items fail, the rest come in order.
        let items = (0..12).map(|k| (table(k, 1000 + k as usize), k % 4 == 3));
        let got: Vec<_> = p
            .timeout(PATIENCE)
            .imap(read_pair, items)
            .unwrap()
            .collect();
        assert_eq!(got.len(), 12);
        for (k, r) in got.into_iter().enumerate() {
            match r {
                Ok(s) => {
                    assert!(k % 4 != 3, "item {k} should have died");
                    assert_eq!(s, sum_of(k as u64, 1000 + k));
                }
                Err(e) => assert!(k % 4 == 3 && lost(&e), "item {k}: {e}"),
            }
        }
        // A map whose chunks each carry several buffers: the chunk with the dying item fails.
        let items: Vec<_> = (0..20).map(|k| (table(k, 50), k == 13)).collect();
        let e = p
            .chunksize(5)
            .starmap_async(read_then_maybe_die, items)
            .unwrap()
            .get_timeout(PATIENCE)
            .unwrap_err();
        assert!(lost(&e), "{e}");
        // The pool works on.
        assert_eq!(
            p.apply(sum_table, (t.clone(),)).unwrap(),
            sum_of(1, 100_000)
        );
        drop(t);
        drop(results);
        drop(p);
    }
    wait_until_clean(base);
}

/// Makes a table in the worker and returns it with the worker's pid.
fn make_table(seed: u64, len: usize) -> (Buffer<u64>, u32) {
    (table(seed, len), std::process::id())
}

fn make_pair((seed, len): (u64, usize)) -> (Buffer<u64>, u32) {
    make_table(seed, len)
}

/// A thread SIGKILLs every worker it learns of while buffers are made in workers and come
/// back in results (`apply`, `map` chunks, `imap`): each result is its own table, whole, or
/// `WorkerLost`; never a hang, never another task's table.
fn workers_killed_while_buffer_results_are_in_flight(m: StartMethod) {
    if !alone() {
        return;
    }
    let base = baseline(m);
    {
        let p = pool(m, 3);
        let pids = std::sync::Mutex::new(Vec::<u32>::new());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let seen = |pid: u32| pids.lock().unwrap().push(pid);
        let check = |seed: u64, len: usize, r: Result<(Buffer<u64>, u32), mproc::Error>| match r {
            Ok((b, pid)) => {
                check_table(&b, seed, len);
                seen(pid);
                true
            }
            Err(e) => {
                assert!(lost(&e), "table {seed}: {e}");
                false
            }
        };
        let (mut ok, mut failed) = (0, 0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut killed = std::collections::HashSet::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(3));
                    let victim = pids
                        .lock()
                        .unwrap()
                        .iter()
                        .copied()
                        .find(|p| !killed.contains(p));
                    if let Some(v) = victim {
                        // SAFETY: kill(2) has no memory-safety preconditions.
                        unsafe { libc::kill(v as i32, libc::SIGKILL) };
                        killed.insert(v);
                    }
                }
            });
            // Until a dozen have been lost (or 40 rounds: a slow machine kills less).
            for round in 0..40u64 {
                if failed >= 12 {
                    break;
                }
                let base_seed = round * 1000;
                let rs: Vec<_> = (0..10)
                    .map(|k| p.apply_async(make_table, (base_seed + k, 20_000)).unwrap())
                    .collect();
                for (k, r) in rs.iter().enumerate() {
                    match check(base_seed + k as u64, 20_000, r.get_timeout(PATIENCE)) {
                        true => ok += 1,
                        false => failed += 1,
                    }
                }
                let args: Vec<_> = (0..30).map(|k| (base_seed + 100 + k, 100)).collect();
                match p
                    .chunksize(6)
                    .starmap_async(make_table, args)
                    .unwrap()
                    .get_timeout(PATIENCE)
                {
                    Ok(all) => {
                        for (k, got) in all.into_iter().enumerate() {
                            assert!(check(base_seed + 100 + k as u64, 100, Ok(got)));
                        }
                        ok += 1;
                    }
                    Err(e) => {
                        assert!(lost(&e), "{e}");
                        failed += 1;
                    }
                }
                let args = (0..20).map(|k| (base_seed + 200 + k, 3000));
                for (k, r) in p
                    .timeout(PATIENCE)
                    .imap(make_pair, args)
                    .unwrap()
                    .enumerate()
                {
                    match check(base_seed + 200 + k as u64, 3000, r) {
                        true => ok += 1,
                        false => failed += 1,
                    }
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(ok > 0, "nothing got through ({failed} lost)");
        // The pool has replaced its dead.
        let (b, _) = p.apply(make_table, (7, 10)).unwrap();
        check_table(&b, 7, 10);
        drop(b);
        drop(p);
    }
    wait_until_clean(base);
}

fn nap_then_table(ms: u64, seed: u64) -> Buffer<u64> {
    std::thread::sleep(Duration::from_millis(ms));
    table(seed, 5000)
}

fn nap_pair((ms, seed): (u64, u64)) -> Buffer<u64> {
    nap_then_table(ms, seed)
}

/// Results holding buffers, dropped and read in odd orders: a result read after its pool was
/// dropped keeps its buffer (got twice, each its own), one whose pool was terminated before
/// it ran fails, an `imap` dropped halfway and a result dropped unread leave nothing.
fn buffer_results_outlive_their_pool(m: StartMethod) {
    if !alone() {
        return;
    }
    let base = baseline(m);
    {
        let p = pool(m, 2);
        let done = p.apply_async(nap_then_table, (0, 1)).unwrap();
        done.wait_timeout(PATIENCE).unwrap();
        let unread = p.apply_async(nap_then_table, (0, 2)).unwrap();
        unread.wait_timeout(PATIENCE).unwrap();
        let mut half_read = p.imap(nap_pair, (0..10).map(|k| (1, 10 + k))).unwrap();
        check_table(&half_read.next().unwrap().unwrap(), 10, 5000);
        let early: Vec<_> = (0..3)
            .map(|k| (k, p.apply_async(nap_then_table, (0, 20 + k)).unwrap()))
            .collect();
        for (k, r) in &early {
            r.wait_timeout(PATIENCE).unwrap();
            let _ = k;
        }
        drop(p);
        let a = done.get_timeout(PATIENCE).unwrap();
        let b = done.get_timeout(PATIENCE).unwrap();
        drop(done);
        drop(a);
        check_table(&b, 1, 5000);
        drop(unread);
        drop(half_read);
        for (k, r) in early.into_iter().rev() {
            check_table(&r.get_timeout(PATIENCE).unwrap(), 20 + k, 5000);
        }
        drop(b);

        let p = pool(m, 1);
        let running = p.apply_async(nap_then_table, (200, 3)).unwrap();
        let queued = p.apply_async(nap_then_table, (0, 4)).unwrap();
        p.terminate();
        assert!(running.get_timeout(PATIENCE).is_err());
        assert!(queued.get_timeout(PATIENCE).is_err());
        drop(p);
        drop((running, queued));
    }
    wait_until_clean(base);
}

/// Takes buffers from `rx` and reports each sum on `tx`; SIGKILLs itself after the `die_after`th.
fn take_some_then_die(rx: Connection<Buffer<u64>>, tx: Connection<u64>, die_after: usize) {
    for k in 0.. {
        let Ok(b) = rx.recv() else { return };
        tx.send(sum(&b)).unwrap();
        if k + 1 == die_after {
            kill_self();
        }
    }
}

/// Buffers sent on a pipe and never read, by a reader that dies after taking a few, or by no
/// reader at all (small ones and 1 MiB ones, one at a time and many in one message): once the
/// pipes are dropped, nothing of them stays in the sender.
fn buffers_left_unread_in_a_pipe_leave_nothing(m: StartMethod) {
    if !alone() {
        return;
    }
    let base = baseline(m);
    {
        let (to_child, from_parent) = pipe::<Buffer<u64>>().unwrap();
        let (to_parent, from_child) = pipe::<u64>().unwrap();
        let mut p = Process::new(take_some_then_die, (from_parent, to_parent, 3)).start_method(m);
        p.start().unwrap();
        // Sends after it died may fail (`Closed`); those before stay in the pipe unread.
        for k in 0..12u64 {
            let len = if k % 2 == 0 { 10 } else { 1 << 17 };
            if let Err(e) = to_child.send(table(k, len)) {
                assert_eq!(e.kind(), &ErrorKind::Closed, "{e}");
            }
        }
        for k in 0..3u64 {
            let len = if k % 2 == 0 { 10 } else { 1 << 17 };
            assert_eq!(from_child.recv_timeout(PATIENCE).unwrap(), sum_of(k, len));
        }
        assert!(p.join_timeout(PATIENCE).is_err(), "it died");
        assert_eq!(p.exitcode(), Some(-libc::SIGKILL));
        drop((to_child, from_child));

        // No reader at all: many buffers in one value (over 64 KiB encoded: a memory file of
        // its own beside them), and one at a time.
        let (a, b) = pipe::<Vec<Buffer<u64>>>().unwrap();
        let many: Vec<_> = (0..200).map(|k| table(k, 3)).collect();
        a.send(&many).unwrap();
        a.send(vec![table(9, 1 << 18); 3]).unwrap();
        drop(many);
        // Both ends dropped with the messages inside.
        drop((a, b));
    }
    wait_until_clean(base);
}

/// Lowers this process's descriptor limit to what it has open plus `room`.
fn lower_descriptor_limit(room: u64) {
    let open = crate::common::open_fds().len() as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write or read the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = open + room;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

static KEPT: std::sync::OnceLock<Vec<Buffer<u64>>> = std::sync::OnceLock::new();

fn many_tables_kept() -> Vec<Buffer<u64>> {
    KEPT.get().unwrap().clone()
}

fn many_tables(n: usize) -> Vec<Buffer<u64>> {
    (0..n).map(|k| table(k as u64, 4)).collect()
}

fn pid() -> u32 {
    std::process::id()
}

/// Raises this process's descriptor limit back to its hard limit (at most 4096).
fn raise_descriptor_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write or read the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max.min(4096);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Small tasks around a failing one: each must give its own sum.
fn around(p: &Pool) -> Vec<mproc::AsyncResult<u64>> {
    (0..4)
        .map(|k| {
            p.apply_async(read_then_maybe_die, (table(k, 10), false))
                .unwrap()
        })
        .collect()
}

fn check_around(rs: Vec<mproc::AsyncResult<u64>>) {
    for (k, r) in rs.into_iter().enumerate() {
        assert_eq!(r.get_timeout(PATIENCE).unwrap(), sum_of(k as u64, 10));
    }
}

/// At a low descriptor limit (a child that lowered its own): making buffers until none can be
/// made, a pipe message and a pool task's answer that carry more buffers than there is room
/// for, a process's value and arguments that hold 100. Each fails with an error that says why
/// (a pool answer's task alone: the tasks around it give their values, and its worker, not at
/// fault, is kept); with room again, everything works. Returns what the errors said.
fn at_the_descriptor_limit(m: StartMethod) -> Vec<String> {
    let mut said = Vec::new();
    let p = pool(m, 1);
    let worker = p.apply(pid, ()).unwrap();
    let (a, b) = pipe::<Vec<Buffer<u64>>>().unwrap();
    a.send(many_tables(100)).unwrap();
    let _ = KEPT.set(many_tables(100));
    // Room for the pool's own work and a few descriptors more.
    lower_descriptor_limit(30);
    let mut made = Vec::new();
    let e = loop {
        match Buffer::from_slice(&[made.len() as u64]) {
            Ok(t) => made.push(t),
            Err(e) => break e,
        }
        assert!(made.len() < 1000, "the limit did not hold");
    };
    said.push(e.to_string());
    drop(made);
    said.push(b.recv_timeout(PATIENCE).unwrap_err().to_string());
    // 200 buffers come back in one chunk's answer (and 200 with a large value: in a memory
    // file), more than there is room for.
    for pad in [0, 1 << 20] {
        let before = around(&p);
        let r = p
            .chunksize(200)
            .starmap_async(bytes_and_table, (0..200).map(|k| (k, pad)))
            .unwrap();
        let after = around(&p);
        match r.get_timeout(PATIENCE) {
            Ok(v) => said.push(format!("got {} unexpectedly", v.len())),
            Err(e) => said.push(e.to_string()),
        }
        check_around(before);
        check_around(after);
    }
    assert_eq!(p.apply(pid, ()).unwrap(), worker, "the worker was replaced");
    // A process that returns 100 buffers; one given 100 (it starts with this limit).
    let mut c = Process::new(many_tables, (100,)).start_method(m);
    c.start().unwrap();
    said.push(format!(
        "join: {:?}",
        c.join_timeout(PATIENCE).map(|v| v.len())
    ));
    let mut c = Process::new(sum_all, (many_tables_kept(), vec![])).start_method(m);
    match c.start() {
        Ok(()) => said.push(format!("args: {:?}", c.join_timeout(PATIENCE))),
        Err(e) => said.push(format!("args start: {e}")),
    }
    // With room again, the pool and the pipe work.
    raise_descriptor_limit();
    let got = p
        .chunksize(200)
        .starmap(make_table, (0..200).map(|k| (k, 4)))
        .unwrap();
    for (k, (t, _)) in got.iter().enumerate() {
        check_table(t, k as u64, 4);
    }
    a.send(many_tables(5)).unwrap();
    let got = b.recv_timeout(PATIENCE).unwrap();
    for (k, t) in got.iter().enumerate() {
        check_table(t, k as u64, 4);
    }
    said
}

/// A table and `pad` bytes (over 1 MiB, the answer travels in a memory file).
fn bytes_and_table(seed: u64, pad: usize) -> (Buffer<u64>, Vec<u8>) {
    (table(seed, 4), vec![seed as u8; pad])
}

fn descriptor_limit_gives_clear_errors(m: StartMethod) {
    let mut p = Process::new(at_the_descriptor_limit, (m,)).start_method(m);
    p.start().unwrap();
    let said = p.join_timeout(PATIENCE * 3).unwrap();
    assert_eq!(said.len(), 6, "{said:#?}");
    assert!(said[0].contains("creating a shared buffer"), "{said:#?}");
    for e in &said[1..4] {
        assert!(e.contains("descriptor limit"), "{said:#?}");
    }
    // The process's value, or its arguments: whichever side ran out says so.
    for e in &said[4..] {
        assert!(
            e.contains("Too many open files") || e.contains("descriptor limit"),
            "{said:#?}"
        );
    }
}

/// A worker's initializer: leaves it room for 20 descriptors more than it has.
fn cramped() {
    lower_descriptor_limit(20);
}

fn sum_all(tables: Vec<Buffer<u64>>, _pad: Vec<u8>) -> u64 {
    tables.iter().fold(0, |s, t| s.wrapping_add(sum(t)))
}

/// A worker at a low descriptor limit (its initializer lowered it) given a task with more
/// buffers than it has room for (its arguments small, and large enough for a memory file):
/// that task alone fails, with an error that says why; the worker stays.
fn a_cramped_worker_gives_clear_errors(m: StartMethod) {
    let p = Pool::builder()
        .processes(1)
        .start_method(m)
        .initializer(cramped, ())
        .build()
        .unwrap();
    let worker = p.apply(pid, ()).unwrap();
    let tables: Vec<_> = (0..100).map(|k| table(k, 4)).collect();
    for pad in [0, 1 << 20] {
        let before = around(&p);
        let r = p
            .apply_async(sum_all, (tables.clone(), vec![1u8; pad]))
            .unwrap();
        let after = around(&p);
        let e = r.get_timeout(PATIENCE).unwrap_err();
        assert!(e.to_string().contains("descriptor limit"), "{pad}: {e}");
        check_around(before);
        check_around(after);
    }
    assert_eq!(p.apply(pid, ()).unwrap(), worker, "the worker was replaced");
    assert_eq!(
        p.apply(sum_all, (tables[..5].to_vec(), vec![])).unwrap(),
        (0..5).map(|k| sum_of(k, 4)).fold(0, u64::wrapping_add)
    );
}

fn first_of(b: Buffer<u64>) -> u64 {
    b[0]
}

/// One buffer read through `&Buffer` by scoped threads while others clone, drop, forget and
/// send clones of it (on pipes, to pool tasks, to processes) at the same time: every reader
/// sees the same elements, every send arrives whole, and the memory stays while any clone
/// does (a forgotten one keeps it for good, as a leaked value does).
fn one_buffer_shared_by_many_threads(m: StartMethod) {
    let t = table(3, 50_000);
    let p = pool(m, 2);
    let (to, from) = pipe::<Buffer<u64>>().unwrap();
    std::thread::scope(|s| {
        for _ in 0..3 {
            let r = &t;
            s.spawn(move || {
                for _ in 0..20 {
                    assert_eq!(sum(r), sum_of(3, 50_000));
                }
            });
        }
        for k in 0..3u64 {
            let (t, p) = (&t, &p);
            s.spawn(move || {
                for i in 0..20 {
                    let c = t.clone();
                    match (i + k) % 4 {
                        0 => drop(c),
                        1 => assert_eq!(p.apply(sum_table, (c,)).unwrap(), sum_of(3, 50_000)),
                        2 => assert_eq!(p.apply(first_of, (c,)).unwrap(), value_at(3, 0)),
                        _ => std::mem::forget(c),
                    }
                }
            });
        }
        let (t, to) = (&t, &to);
        s.spawn(move || {
            for _ in 0..30 {
                to.send(t).unwrap();
            }
        });
        for _ in 0..30 {
            check_table(&from.recv_timeout(PATIENCE).unwrap(), 3, 50_000);
        }
    });
    let mut child = Process::new(sum_table, (t.clone(),)).start_method(m);
    child.start().unwrap();
    drop(t);
    assert_eq!(child.join_timeout(PATIENCE).unwrap(), sum_of(3, 50_000));
}

/// What a hostile peer sends where a `Buffer<u64>` is expected: another handle's descriptor in
/// a buffer's place (on the wire, every one of these is a handle's index, as a buffer is).
/// Received, it is decoded as the `Buffer<u64>` the receiver expects.
enum Forged {
    /// A pipe's socket: no memory file at all.
    Pipe(Connection<u8>),
    /// A shared value's memory file: sealed against shrinking, but written by its holders.
    Value(Value<u64>),
    /// A lock's memory file, as the value's.
    Lock(Lock),
    /// A queue's ring: a memory file that may still grow, and is written.
    Queue(Queue<u8>),
    /// A real buffer of bytes, received as one of `u64`s.
    Bytes(Buffer<u8>),
    /// What the receiver got.
    Got(Buffer<u64>),
}

impl Serialize for Forged {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Forged::Pipe(c) => c.serialize(s),
            Forged::Value(v) => v.serialize(s),
            Forged::Lock(l) => l.serialize(s),
            Forged::Queue(q) => q.serialize(s),
            Forged::Bytes(b) => b.serialize(s),
            Forged::Got(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Forged {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Buffer::<u64>::deserialize(d).map(Forged::Got)
    }
}

/// The forgery of kind `kind` (0 to 4); a real `Buffer<u64>` for 5.
fn forge(kind: u8) -> Forged {
    match kind {
        0 => Forged::Pipe(pipe::<u8>().unwrap().0),
        1 => {
            let v = Value::new(0u64).unwrap();
            v.set(u64::MAX).unwrap();
            Forged::Value(v)
        }
        2 => Forged::Lock(Lock::new().unwrap()),
        3 => Forged::Queue(Queue::new().unwrap()),
        4 => Forged::Bytes(Buffer::from_slice(&[7u8; 4096]).unwrap()),
        _ => Forged::Got(table(kind as u64, 1000)),
    }
}

const KINDS: u8 = 6;

/// A forger: sends each kind on `out`, then waits for the pipe to close, writing its shared
/// value all the while (a peer that would change a buffer after it was checked).
fn forger(out: Connection<Forged>) {
    let v = Value::new(0u64).unwrap();
    for kind in 0..KINDS {
        let f = match kind {
            1 => Forged::Value(v.clone()),
            k => forge(k),
        };
        if out.send(f).is_err() {
            return;
        }
    }
    for i in 0.. {
        v.set(i).unwrap();
        if out.poll(Duration::from_millis(1)).unwrap_or(true) {
            return;
        }
    }
}

fn forged_result(kind: u8) -> Forged {
    forge(kind)
}

fn take_forged(f: Forged) -> u64 {
    match f {
        Forged::Got(b) => sum(&b),
        _ => unreachable!("only received ones here"),
    }
}

fn check_forged(kind: u8, got: Result<Forged, mproc::Error>) {
    match (kind, got) {
        (5, Ok(Forged::Got(b))) => check_table(&b, 5, 1000),
        (5, other) => panic!("a real buffer: {:?}", other.err()),
        (_, Ok(_)) => panic!("forgery {kind} accepted as a Buffer<u64>"),
        (_, Err(e)) => {
            assert!(
                matches!(e.kind(), ErrorKind::Codec(_)),
                "forgery {kind}: {e}"
            );
            let text = e.to_string();
            let why = match kind {
                0..=3 => "sealed",
                _ => "1-byte elements",
            };
            assert!(text.contains(why), "forgery {kind}: {text}");
        }
    }
}

/// Another handle's descriptor where a buffer is expected: on a pipe (from a peer that keeps
/// writing the memory it sent), as a pool task's result, as a pool task's and a process's
/// argument. The receiver refuses each with a `Codec` error that says why, and works on.
fn forged_buffers_are_refused(m: StartMethod) {
    let (mine, theirs) = pipe::<Forged>().unwrap();
    let mut p = Process::new(forger, (theirs,)).start_method(m);
    p.start().unwrap();
    for kind in 0..KINDS {
        check_forged(kind, mine.recv_timeout(PATIENCE));
    }
    drop(mine);
    p.join_timeout(PATIENCE).unwrap();

    let workers = pool(m, 1);
    for kind in 0..KINDS {
        check_forged(kind, workers.apply(forged_result, (kind,)));
    }
    for kind in 0..KINDS {
        match workers.apply(take_forged, (forge(kind),)) {
            Ok(s) => assert_eq!((kind, s), (5, sum_of(5, 1000))),
            Err(e) => check_forged(kind, Err(e)),
        }
    }
    for kind in [1, 4, 5] {
        let mut p = Process::new(take_forged, (forge(kind),)).start_method(m);
        p.start().unwrap();
        match p.join_timeout(PATIENCE) {
            Ok(s) => assert_eq!((kind, s), (5, sum_of(5, 1000))),
            Err(e) => assert!(kind != 5, "{e}"),
        }
    }
    assert_eq!(
        workers.apply(sum_table, (table(8, 10),)).unwrap(),
        sum_of(8, 10)
    );
}

/// How many descriptors and mappings of buffers' memory files the calling process holds.
fn buffer_files_here() -> (usize, usize) {
    buffer_files()
}

/// How many descriptors of buffers' memory files the calling process holds.
fn buffer_fds_here() -> usize {
    buffer_files().0
}

/// A worker that was given buffers, returned them, or made them, holds none of them once its
/// tasks are done (each would hold its memory for the worker's life): checked in the worker
/// itself. A worker that replaced a dead one holds no buffer's descriptor either; under fork
/// it has the mappings of the buffers its parent held when it was forked (every fork child
/// inherits its parent's memory, as Python's do), which it can read but not pass on.
fn workers_hold_no_buffer_after_their_tasks(m: StartMethod) {
    // Alone: a fork child here inherits the mappings of every buffer this process holds.
    if !alone() {
        return;
    }
    let p = pool(m, 1);
    assert_eq!(p.apply(buffer_files_here, ()).unwrap(), (0, 0));
    let t = table(4, 10_000);
    assert_eq!(p.apply(sum_table, (t.clone(),)).unwrap(), sum_of(4, 10_000));
    let (made, _) = p.apply(make_table, (5, 1000)).unwrap();
    let back = p
        .chunksize(4)
        .starmap(make_table, (0..20).map(|k| (k, 100)))
        .unwrap();
    let got: Vec<u64> = p
        .chunksize(3)
        .map(sum_table, std::iter::repeat_n(t.clone(), 10))
        .unwrap();
    assert_eq!(got, vec![sum_of(4, 10_000); 10]);
    wait_until("the worker holds no buffer", || {
        p.apply(buffer_files_here, ()).unwrap() == (0, 0)
    });
    assert!(p.apply(read_then_maybe_die, (t.clone(), true)).is_err());
    let (fds, maps) = p.apply(buffer_files_here, ()).unwrap();
    assert_eq!(fds, 0, "the replacement holds buffers' descriptors");
    if m != StartMethod::Fork {
        assert_eq!(maps, 0, "the replacement maps buffers");
    }
    drop((made, back));
}

/// Children started while descriptors of buffers are kept (by an `AsyncResult` and a joined
/// `Process` whose values hold buffers, a pool's initializer arguments, a queued task's, a
/// process not started yet) hold none of them: each would keep the buffer's memory for the
/// child's life (and the child never asked for it).
fn children_inherit_no_kept_buffer(m: StartMethod) {
    // Alone: a fork child here inherits the mappings of every buffer this process holds.
    if !alone() {
        return;
    }
    let p = pool(m, 1);
    let r = p.apply_async(make_table, (1, 1000)).unwrap();
    r.wait_timeout(PATIENCE).unwrap();
    let mut maker = Process::new(make_table, (2, 1000)).start_method(m);
    maker.start().unwrap();
    let (kept, _) = maker.join_timeout(PATIENCE).unwrap();
    // A pool whose initializer was given a buffer, one whose worker is busy while a task
    // given a buffer waits, and a process given one, not started: each keeps its copy.
    let initialized = Pool::builder()
        .processes(1)
        .start_method(m)
        .initializer(store_table, (table(3, 10),))
        .build()
        .unwrap();
    let busy = p.apply_async(nap_then_table, (300, 4)).unwrap();
    let queued = p.apply_async(sum_table, (table(5, 10),)).unwrap();
    let unstarted = Process::new(sum_table, (table(6, 10),)).start_method(m);
    let mut c = Process::new(buffer_files_here, ()).start_method(m);
    c.start().unwrap();
    let (fds, maps) = c.join_timeout(PATIENCE).unwrap();
    assert_eq!(fds, 0, "a child holds descriptors of its parent's buffers");
    if m != StartMethod::Fork {
        assert_eq!(maps, 0);
    }
    let p2 = pool(m, 1);
    assert_eq!(
        p2.apply(buffer_files_here, ()).unwrap().0,
        0,
        "a new worker holds them"
    );
    assert_eq!(queued.get_timeout(PATIENCE).unwrap(), sum_of(5, 10));
    check_table(&busy.get_timeout(PATIENCE).unwrap(), 4, 5000);
    drop((r, kept, initialized, unstarted));
}

/// Where a buffer cannot go (a queue of any kind, a manager's dict or list), a careless user
/// gets an error that says where it can go, never a panic, and the container works on.
fn where_a_buffer_cannot_go_says_so(m: StartMethod) {
    let says = |e: mproc::Error| {
        assert!(matches!(e.kind(), ErrorKind::Codec(_)), "{e}");
        assert!(e.to_string().contains("Connection"), "{e}");
    };
    let q = mproc::SimpleQueue::<Buffer<u64>>::new().unwrap();
    says(q.put(table(1, 3)).unwrap_err());
    let q = mproc::JoinableQueue::<(u8, Vec<Buffer<u64>>)>::new().unwrap();
    says(q.put((1, vec![table(1, 3); 3])).unwrap_err());
    q.put((2, vec![])).unwrap();
    assert_eq!(q.get_timeout(PATIENCE).unwrap().0, 2);
    let manager = mproc::Manager::new().unwrap();
    let d = manager.dict::<u8, Buffer<u64>>().unwrap();
    says(d.insert(1, table(2, 3)).unwrap_err());
    assert_eq!(d.len().unwrap(), 0);
    let l = manager.list::<Option<Buffer<u64>>>().unwrap();
    says(l.push(Some(table(3, 3))).unwrap_err());
    l.push(None).unwrap();
    assert_eq!(l.len().unwrap(), 1);
    // A pool task can still take one.
    assert_eq!(
        pool(m, 1).apply(sum_table, (table(4, 3),)).unwrap(),
        sum_of(4, 3)
    );
}

static STORED: std::sync::OnceLock<Buffer<u64>> = std::sync::OnceLock::new();

/// A worker's initializer: keeps the table for the worker's tasks.
fn store_table(t: Buffer<u64>) {
    STORED.set(t).unwrap();
}

/// Sums the stored table; SIGKILLs its worker first when `die`.
fn sum_stored(die: bool) -> (u64, u32) {
    if die {
        kill_self();
    }
    (sum(STORED.get().unwrap()), std::process::id())
}

/// A table handed to every worker once, by the pool's initializer (the caller dropping its own
/// handle at once): workers killed along the way are replaced, and each replacement gets the
/// table again; every task reads it whole.
fn a_buffer_given_by_the_initializer_survives_worker_deaths(m: StartMethod) {
    let t = table(6, 100_000);
    let p = Pool::builder()
        .processes(1)
        .start_method(m)
        .initializer(store_table, (t.clone(),))
        .build()
        .unwrap();
    drop(t);
    let mut workers = std::collections::HashSet::new();
    for round in 0..4 {
        let rs: Vec<_> = (0..6)
            .map(|k| p.apply_async(sum_stored, (k == 2,)).unwrap())
            .collect();
        for (k, r) in rs.into_iter().enumerate() {
            match r.get_timeout(PATIENCE) {
                Ok((s, pid)) => {
                    assert!(k != 2, "round {round}: the dying task returned");
                    assert_eq!(s, sum_of(6, 100_000), "round {round}, task {k}");
                    workers.insert(pid);
                }
                Err(e) => assert!(k == 2 && lost(&e), "round {round}, task {k}: {e}"),
            }
        }
    }
    // One worker at a time: each death made a replacement, which read the table too.
    assert!(workers.len() >= 4, "workers: {workers:?}");
}

/// 128 bytes aligned to 128 (a cache line).
#[derive(Clone, Copy)]
#[repr(C, align(128))]
struct Line([u8; 128]);
// SAFETY: plain bytes, no padding (size equals the array's), any bit pattern valid.
unsafe impl bytemuck::Zeroable for Line {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for Line {}

/// Sent as a buffer of `Line`s, received as one of `[u8; 128]`: the same size, another
/// alignment (a peer built from other sources, or a type changed on one side).
enum Pun {
    Lines(Buffer<Line>),
    Bytes(Buffer<[u8; 128]>),
}

impl Serialize for Pun {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pun::Lines(b) => b.serialize(s),
            Pun::Bytes(b) => b.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Pun {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Buffer::<[u8; 128]>::deserialize(d).map(Pun::Bytes)
    }
}

/// `n` lines, line `i` all `i + 1`.
fn lines(n: usize) -> Pun {
    Pun::Lines(
        Buffer::new_with(n, |l: &mut [Line]| {
            for (i, line) in l.iter_mut().enumerate() {
                line.0 = [i as u8 + 1; 128];
            }
        })
        .unwrap(),
    )
}

fn check_lines(got: Pun, n: usize) {
    let Pun::Bytes(b) = got else {
        panic!("received as lines")
    };
    assert_eq!(b.len(), n);
    for (i, l) in b.iter().enumerate() {
        assert!(l == &[i as u8 + 1; 128], "line {i} shifted: {:?}", &l[..8]);
    }
}

/// A buffer received as another type of the same size and another alignment, from a process,
/// a pool task and a pipe: the receiver reads the sender's elements, not elements shifted by
/// the difference between where each type starts them.
fn a_buffer_received_as_another_alignment_keeps_its_elements(m: StartMethod) {
    let mut p = Process::new(lines, (5,)).start_method(m);
    p.start().unwrap();
    check_lines(p.join_timeout(PATIENCE).unwrap(), 5);
    let workers = pool(m, 1);
    check_lines(workers.apply(lines, (7,)).unwrap(), 7);
    let (a, b) = pipe::<Pun>().unwrap();
    a.send(lines(3)).unwrap();
    check_lines(b.recv_timeout(PATIENCE).unwrap(), 3);
}

/// Bytes sent as a buffer made on the fly while the value is encoded (`serialize_with`), and
/// read back into a `Vec` on the other side: an idiom for large fields.
mod as_buffer {
    use mproc::Buffer;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
        // The buffer lives while it is encoded, then is dropped: its descriptor's number is
        // free again for the next field's buffer.
        Buffer::from_slice(v)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        Ok(Buffer::<u64>::deserialize(d)?.to_vec())
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct TwoFields {
    #[serde(with = "as_buffer")]
    a: Vec<u64>,
    #[serde(with = "as_buffer")]
    b: Vec<u64>,
    many: Vec<OnTheFly>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct OnTheFly(#[serde(with = "as_buffer")] Vec<u64>);

fn two_fields(seed: u64) -> TwoFields {
    TwoFields {
        a: vec![seed; 10],
        b: vec![seed + 1; 20],
        many: (0..5).map(|k| OnTheFly(vec![seed + 2 + k; 3])).collect(),
    }
}

fn echo_fields(f: TwoFields) -> TwoFields {
    f
}

/// Values whose buffers are made on the fly as they are encoded, each dropped before the
/// next is made (so the next may get the same descriptor number): every field arrives with
/// its own bytes, not another field's, whichever way it travels.
fn buffers_made_while_encoding_keep_their_own_bytes(m: StartMethod) {
    let (a, b) = pipe::<TwoFields>().unwrap();
    a.send(two_fields(10)).unwrap();
    assert_eq!(b.recv_timeout(PATIENCE).unwrap(), two_fields(10));
    let workers = pool(m, 1);
    assert_eq!(
        workers.apply(echo_fields, (two_fields(20),)).unwrap(),
        two_fields(20)
    );
    assert_eq!(workers.apply(two_fields, (30,)).unwrap(), two_fields(30));
    let got = workers
        .chunksize(3)
        .map(echo_fields, (0..6).map(|k| two_fields(100 * k)))
        .unwrap();
    assert_eq!(got, (0..6).map(|k| two_fields(100 * k)).collect::<Vec<_>>());
    let mut p = Process::new(echo_fields, (two_fields(40),)).start_method(m);
    p.start().unwrap();
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), two_fields(40));
}

/// Children started while another thread receives buffers through a pipe, as fast as a
/// sender makes them, hold none of their descriptors: a descriptor the kernel has put in this
/// process but mproc has not listed yet (a receive under way) would pin that buffer's memory
/// for the child's life. Before the receives were fenced from forks, 2-3% of `Fork` children
/// held one.
fn children_started_beside_a_receiving_thread_inherit_no_buffer(m: StartMethod) {
    // Alone: the count is of every buffer's descriptor in the child.
    if !alone() {
        return;
    }
    let (tx, rx) = pipe::<Buffer<u64>>().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut got = 0u64;
        while let Ok(b) = rx.recv_timeout(Duration::from_secs(2)) {
            check_table(&b, got, 16);
            got += 1;
        }
        got
    });
    // At least 150 children, and for as long as it takes 150 buffers to go by meanwhile.
    let (leaked, sent) = crate::common::children_beside(m, buffer_fds_here, 150, 150, move |n| {
        tx.send(table(n, 16)).unwrap()
    });
    let got = receiver.join().unwrap();
    assert_eq!(got, sent, "every buffer sent was received");
    assert!(
        leaked.is_empty(),
        "children holding buffers' descriptors (child, how many): {leaked:?}"
    );
}

per_start_method!(
    children_started_beside_a_receiving_thread_inherit_no_buffer,
    where_a_buffer_cannot_go_says_so,
    children_inherit_no_kept_buffer,
    a_buffer_given_by_the_initializer_survives_worker_deaths,
    workers_hold_no_buffer_after_their_tasks,
    buffers_made_while_encoding_keep_their_own_bytes,
    a_buffer_received_as_another_alignment_keeps_its_elements,
    a_worker_killed_reading_a_buffer_fails_its_task_alone,
    workers_killed_while_buffer_results_are_in_flight,
    buffer_results_outlive_their_pool,
    buffers_left_unread_in_a_pipe_leave_nothing,
    descriptor_limit_gives_clear_errors,
    a_cramped_worker_gives_clear_errors,
    one_buffer_shared_by_many_threads,
    forged_buffers_are_refused,
);
