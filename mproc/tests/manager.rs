//! `Manager`'s shared `Dict` and `List` across real processes, under every start method:
//! handles passed to processes, pool tasks and through a `Connection` (as every handle:
//! a queue's ring carries no descriptors); atomic `update_with` under
//! contention; and processes SIGKILLed mid-call, which must lose nothing acknowledged and
//! block nobody.

use std::time::{Duration, Instant};

use mproc::{Dict, ErrorKind, List, Manager, Pool, Process, StartMethod, Value};

use crate::common::PATIENCE;

fn bump(d: Dict<String, u64>, key: String, times: u32) {
    for _ in 0..times {
        d.update_with(key.clone(), |n| n.unwrap_or(0) + 1).unwrap();
    }
}

fn push_many(l: List<u32>, from: u32, n: u32) {
    for i in from..from + n {
        l.push(i).unwrap();
    }
}

fn shared_between_processes_tasks_and_pipes(m: StartMethod) {
    let manager = Manager::new().unwrap();
    let d = manager.dict::<String, u64>().unwrap();
    // Processes.
    let mut ps: Vec<Process<()>> = (0..3)
        .map(|_| Process::new(bump, (d.clone(), "p".to_string(), 200)).start_method(m))
        .collect();
    for p in &mut ps {
        p.start().unwrap();
    }
    // Pool tasks, at the same time.
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let tasks = (0..8).map(|_| (d.clone(), "p".to_string(), 50));
    pool.starmap(bump, tasks).unwrap();
    for p in &mut ps {
        p.join_timeout(PATIENCE).unwrap();
    }
    assert_eq!(
        d.get(&"p".to_string()).unwrap(),
        Some(1000),
        "no increment lost"
    );
    // A list sent over a pipe.
    let l = manager.list::<u32>().unwrap();
    let (ours, theirs) = mproc::pipe::<List<u32>>().unwrap();
    let mut p = Process::new(take_and_push, (theirs,)).start_method(m);
    p.start().unwrap();
    ours.send(l.clone()).unwrap();
    p.join_timeout(PATIENCE).unwrap();
    assert_eq!(l.to_vec().unwrap(), [10, 11, 12]);
    // Pool tasks push side by side: every item arrives once.
    let l2 = manager.list::<u32>().unwrap();
    pool.starmap(push_many, (0..4).map(|k| (l2.clone(), k * 100, 50)))
        .unwrap();
    let mut all = l2.to_vec().unwrap();
    all.sort_unstable();
    let want: Vec<u32> = (0..4).flat_map(|k| k * 100..k * 100 + 50).collect();
    assert_eq!(all, want);
}

fn take_and_push(c: mproc::Connection<List<u32>>) {
    let l = c.recv_timeout(PATIENCE).unwrap();
    push_many(l, 10, 3);
}

/// Increments `n` forever, recording each acknowledged increment in `acked` afterwards.
fn count_forever(d: Dict<String, u64>, acked: Value<u64>) {
    loop {
        let n = d.update_with("n".into(), |n| n.unwrap_or(0) + 1).unwrap();
        acked.set(n).unwrap();
    }
}

/// Churns a small dict: inserts new keys and removes old ones, so it compacts often.
fn churn_forever(d: Dict<u64, Vec<u8>>) {
    for i in 0u64.. {
        d.insert(i, vec![i as u8; 100]).unwrap();
        if i >= 20 {
            d.remove(&(i - 20)).unwrap();
        }
    }
}

fn killed_mid_call_loses_nothing_and_blocks_nobody(m: StartMethod) {
    let manager = Manager::new().unwrap();
    let d = manager.dict::<String, u64>().unwrap();
    let acked = Value::new(0u64).unwrap();
    // Small: 64 entries, 8 KiB, so the churn compacts every few dozen inserts.
    let small = manager
        .dict_with_capacity::<u64, Vec<u8>>(64, 8 << 10)
        .unwrap();
    for round in 0..12u64 {
        let mut counter = Process::new(count_forever, (d.clone(), acked.clone())).start_method(m);
        let mut churner = Process::new(churn_forever, (small.clone(),)).start_method(m);
        counter.start().unwrap();
        churner.start().unwrap();
        // Kill at a different moment each round.
        std::thread::sleep(Duration::from_millis(20 + 7 * round));
        counter.kill().unwrap();
        churner.kill().unwrap();
        let _ = counter.join_timeout(PATIENCE);
        let _ = churner.join_timeout(PATIENCE);
        let began = Instant::now();
        let n = d.get(&"n".to_string()).unwrap().unwrap_or(0);
        let a = acked.get().unwrap();
        assert!(
            n == a || n == a + 1,
            "round {round}: counter {n}, acknowledged {a}"
        );
        let items = small.items().unwrap();
        assert_eq!(items.len(), small.len().unwrap(), "round {round}");
        for (k, v) in &items {
            assert_eq!(*v, vec![*k as u8; 100], "round {round}: entry {k}");
        }
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "blocked by a dead holder"
        );
        // Usable on: the next round's processes go on from here.
        d.update_with("n".into(), |n| n.unwrap_or(0) + 1).unwrap();
        acked.set(a.max(n) + 1).unwrap();
    }
}

fn uses_itself(d: Dict<u8, u8>) -> bool {
    let inner = d.clone();
    let r = d.update_with(1, move |v| {
        let nested = inner.get(&1);
        assert!(matches!(nested, Err(ref e) if matches!(e.kind(), ErrorKind::InvalidArgument(_))));
        v.unwrap_or(0) + 1
    });
    r.is_ok()
}

fn misuse_and_limits(m: StartMethod) {
    let manager = Manager::new().unwrap();
    let d = manager.dict_with_capacity::<u8, u8>(2, 64).unwrap();
    d.insert(1, 1).unwrap();
    d.insert(2, 2).unwrap();
    assert_eq!(*d.insert(3, 3).unwrap_err().kind(), ErrorKind::Full);
    assert_eq!(d.insert(2, 5).unwrap(), Some(2), "a replacement still fits");
    let big = manager.dict_with_capacity::<u8, Vec<u8>>(4, 64).unwrap();
    assert!(big.insert(1, vec![0; 100]).is_err());
    assert!(manager.dict_with_capacity::<u8, u8>(0, 64).is_err());
    // A call on the same dict from inside update_with: an error, no deadlock.
    let mut p = Process::new(uses_itself, (d.clone(),)).start_method(m);
    p.start().unwrap();
    assert!(p.join_timeout(PATIENCE).unwrap());
    assert_eq!(d.get(&1).unwrap(), Some(2));
    // A list's set past its end.
    let l = manager.list::<u8>().unwrap();
    assert!(matches!(
        l.set(0, 1).unwrap_err().kind(),
        ErrorKind::InvalidArgument(_)
    ));
}

per_start_method!(
    shared_between_processes_tasks_and_pipes,
    killed_mid_call_loses_nothing_and_blocks_nobody,
    misuse_and_limits,
);
