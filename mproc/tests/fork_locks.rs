//! A `Fork` start takes the standard streams' locks before its other locks, so a thread that
//! holds one of them (`stdout().lock()`) while it makes a queue or starts a process cannot
//! deadlock against a concurrent `Fork` start (which held the list of queues or the fork
//! server's slot, and waited for the streams).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Process, Queue, StartMethod};

use crate::common::PATIENCE;

fn nothing() {}

/// Starts `Fork` children one after another while another thread, `rounds` times each, holds
/// the standard output's lock and makes a queue, holds the standard error's and makes a queue,
/// and holds the standard output's and starts a `Fork` child itself. Returns how many
/// children were started.
fn streams_held_while_forking(rounds: u32) -> u32 {
    let started = AtomicU32::new(0);
    let fork_once = || {
        let mut p = Process::new(nothing, ()).start_method(StartMethod::Fork);
        p.start().unwrap();
        p.join_timeout(PATIENCE).unwrap();
        started.fetch_add(1, Ordering::Relaxed);
    };
    let make_queue = || drop(Queue::<u8>::new().unwrap());
    for phase in 0..3 {
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..rounds {
                    match phase {
                        0 => {
                            let _out = std::io::stdout().lock();
                            make_queue();
                        }
                        1 => {
                            let _err = std::io::stderr().lock();
                            make_queue();
                        }
                        _ => {
                            let _out = std::io::stdout().lock();
                            fork_once();
                        }
                    }
                }
                done.store(true, Ordering::Release);
            });
            while !done.load(Ordering::Acquire) {
                fork_once();
            }
        });
    }
    started.into_inner()
}

#[test]
fn a_fork_start_does_not_deadlock_with_a_thread_holding_a_standard_stream() {
    // The race runs in a process of its own, so that a deadlock is a process to kill, not a
    // hung test.
    let mut p = Process::new(streams_held_while_forking, (300,)).start_method(StartMethod::Spawn);
    p.start().unwrap();
    let begun = Instant::now();
    // A few tenths of a second when it works; before the fix it deadlocked in every run.
    match p.join_timeout(Duration::from_secs(10)) {
        // The holding thread's own starts, and at least one more per phase.
        Ok(started) => assert!(started >= 303, "only {started} forks"),
        Err(e) if matches!(e.kind(), ErrorKind::Timeout) => {
            let _ = p.kill();
            let _ = p.join_timeout(PATIENCE);
            panic!(
                "deadlocked: a Fork start and a thread holding a standard stream, after {:?}",
                begun.elapsed()
            );
        }
        Err(e) => panic!("the race failed: {e}"),
    }
}

/// Two threads start and join `Fork` children side by side, `rounds` times each: every start
/// and join takes the list of children kept for the exit-time wait, and every child takes it
/// again before it leaves, so a fork that copied it locked by the other thread would leave a
/// child that never ends. Returns how many children ended.
fn children_listed_while_forking(rounds: u32) -> u32 {
    crate::common::from_two_threads(rounds, || {
        let mut p = Process::new(nothing, ()).start_method(StartMethod::Fork);
        p.start().unwrap();
        p.join_timeout(PATIENCE).unwrap();
    })
}

#[test]
fn a_fork_child_never_inherits_the_list_of_children_locked() {
    let mut p =
        Process::new(children_listed_while_forking, (400,)).start_method(StartMethod::Spawn);
    p.start().unwrap();
    let ended = crate::common::join_race(&mut p, Duration::from_secs(20));
    assert_eq!(ended, 800);
}

fn echo_len(v: serde_bytes::ByteBuf) -> usize {
    v.len()
}

/// Runs `body` while two threads pass large values (each a memory file's descriptor) through
/// a pipe and a pool's worker (started with `m`) answers large tasks: receives of descriptors
/// under way in other threads all along. Returns what `body` returned.
fn beside_receives<R>(m: StartMethod, body: impl FnOnce() -> R) -> R {
    let (tx, rx) = mproc::pipe::<serde_bytes::ByteBuf>().unwrap();
    let workers = crate::common::pool(m, 1);
    let big = serde_bytes::ByteBuf::from(vec![3u8; 300 << 10]);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                tx.send(big.clone()).unwrap();
                assert_eq!(rx.recv_timeout(PATIENCE).unwrap().len(), big.len());
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(workers.apply(echo_len, (big.clone(),)).unwrap(), big.len());
            }
        });
        let got = body();
        stop.store(true, Ordering::Relaxed);
        got
    })
}

/// In a child: starts 20 `Fork` grandchildren one after another beside receives of
/// descriptors; how many ended.
fn forks_beside_receives(m: StartMethod) -> u32 {
    beside_receives(m, || {
        let mut ended = 0;
        for _ in 0..20 {
            let mut p = Process::new(nothing, ()).start_method(StartMethod::Fork);
            p.start().unwrap();
            p.join_timeout(PATIENCE).unwrap();
            ended += 1;
        }
        ended
    })
}

/// A `Fork` start waits for the receives of descriptors under way in other threads, and holds
/// new ones off while it forks: in children started (with `m`) while this process receives,
/// which then receive, start a pool and fork in turn, no fork waits for a receive that exists
/// only in its parent, and none for ever.
fn children_receive_and_fork_beside_receives(m: StartMethod) {
    let ended = beside_receives(m, || {
        (0..8)
            .map(|_| {
                let mut p = Process::new(forks_beside_receives, (m,)).start_method(m);
                p.start().unwrap();
                p.join_timeout(PATIENCE).unwrap()
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(ended, [20; 8]);
}

per_start_method!(children_receive_and_fork_beside_receives);
