//! Chaos around the fork server's spares (lent to the client, their takes told later): many
//! threads starting at once, starts spaced around the server's delays, handles dropped or
//! forgotten, children, spares and servers killed at random, a `Fork` child of a process with
//! a spare lent, a pool whose workers are killed while processes start. Every target marks a
//! file of its own, so that a target run twice, or a start that returned `Ok` and ran nothing,
//! shows. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool, Process, StartMethod};

use crate::common::{PATIENCE, alone, has_ended, wait_until};

/// Marks that the target `id` ran (once: a second run leaves a `dup-` file); its pid.
fn mark(dir: String, id: u64) -> u32 {
    let me = std::process::id();
    let path = Path::new(&dir).join(id.to_string());
    if std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .is_err()
    {
        let _ = std::fs::write(Path::new(&dir).join(format!("dup-{id}-{me}")), b"");
    }
    me
}

/// [`mark`] after `ms` milliseconds.
fn mark_after(dir: String, id: u64, ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    mark(dir, id)
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn my_pid() -> u32 {
    std::process::id()
}

fn my_parent() -> u32 {
    parent_of(std::process::id()).unwrap()
}

/// A fresh directory for a test's marks.
fn marks_dir(what: &str, m: StartMethod) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mproc-chaos-{what}-{}-{}",
        m.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The ids marked in `dir`, sorted, and the names of the second runs found there.
fn marks(dir: &Path) -> (Vec<u64>, Vec<String>) {
    let (mut ids, mut dups) = (Vec::new(), Vec::new());
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        match name.parse::<u64>() {
            Ok(id) => ids.push(id),
            Err(_) => dups.push(name),
        }
    }
    ids.sort_unstable();
    (ids, dups)
}

/// Waits until exactly `want` (sorted) are marked in `dir`, none twice; removes `dir`.
fn expect_marks(dir: &Path, want: &[u64]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (ids, dups) = marks(dir);
        assert!(dups.is_empty(), "targets run twice: {dups:?}");
        if ids == want {
            break;
        }
        let extra: Vec<_> = ids.iter().filter(|i| !want.contains(i)).collect();
        assert!(
            extra.is_empty(),
            "targets run that should not have: {extra:?}"
        );
        if Instant::now() >= deadline {
            let missing: Vec<_> = want.iter().filter(|i| !ids.contains(i)).collect();
            panic!("targets never ran: {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Second runs that come late.
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        marks(dir).1.is_empty(),
        "targets run twice: {:?}",
        marks(dir).1
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The parent of `pid`, if there is such a process.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    after.split_whitespace().nth(1)?.parse().ok()
}

fn children_of(pid: u32) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    let mut kids: Vec<u32> = tasks
        .map_while(Result::ok)
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    kids.sort_unstable();
    kids.dedup();
    kids
}

fn live_children_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|&c| !has_ended(c))
        .collect()
}

/// This process's fork server: its only child that is a live process with children of its
/// own, or started as one (`None` if there is none).
fn fork_server() -> Option<u32> {
    let mut p = Process::new(my_parent, ()).start_method(StartMethod::Forkserver);
    p.start().unwrap();
    let server = p.join_timeout(PATIENCE).unwrap();
    (server != std::process::id()).then_some(server)
}

/// Whether fork server `server` has a spare and has lent it to us (it waits in poll(2) after).
fn lent_a_spare(server: u32) -> bool {
    let now = std::fs::read_to_string(format!("/proc/{server}/syscall")).unwrap_or_default();
    !children_of(server).is_empty()
        && matches!(now.split(' ').next().unwrap_or(""), "7" | "271" | "73")
}

/// Once every handle is joined or dropped: no child of ours is left but the fork server (under
/// `Forkserver`), whose only child left is its spare, and no zombie is left anywhere.
fn nothing_left_behind(m: StartMethod) {
    let me = std::process::id();
    wait_until("only the fork server and its spare are left", || {
        let kids = children_of(me);
        match m {
            StartMethod::Forkserver => {
                kids.len() <= 1
                    && kids
                        .iter()
                        .all(|&s| !has_ended(s) && children_of(s).len() <= 1)
                    && kids
                        .iter()
                        .all(|&s| children_of(s).iter().all(|&c| !has_ended(c)))
            }
            _ => kids.is_empty(),
        }
    });
}

fn spin_until(t: Instant) {
    while Instant::now() < t {
        std::hint::spin_loop();
    }
}

per_start_method!(
    threads_start_and_join_at_once,
    handles_dropped_or_forgotten_then_more_starts,
    starts_spaced_around_the_servers_delays,
    a_pool_whose_workers_are_killed_while_processes_start,
    a_process_shared_by_threads_that_poll_and_signal_it,
    starts_at_the_descriptor_limit_from_one_thread,
    children_start_through_servers_of_their_own,
    starts_at_the_descriptor_limit_with_the_server_started_under_it,
);

/// Four threads start and join processes back to back, some waiting a little between start and
/// join: every target runs once, each join gives its own pid, and nothing is left behind.
fn threads_start_and_join_at_once(m: StartMethod) {
    if !alone() {
        return;
    }
    let dir = marks_dir("threads", m);
    let d = dir.to_str().unwrap().to_owned();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let d = d.clone();
            s.spawn(move || {
                for i in 0..25u64 {
                    let mut p = Process::new(mark, (d.clone(), t * 100 + i)).start_method(m);
                    p.start().unwrap();
                    if i % 3 == 0 {
                        std::thread::sleep(Duration::from_micros(100 * (i % 12)));
                    }
                    let pid = p.join_timeout(PATIENCE).unwrap();
                    assert_eq!(Some(pid), p.pid());
                    assert_eq!(p.exitcode(), Some(0));
                    assert!(!p.is_alive());
                }
            });
        }
    });
    let want: Vec<u64> = (0..4u64)
        .flat_map(|t| (0..25).map(move |i| t * 100 + i))
        .collect();
    expect_marks(&dir, &want);
    nothing_left_behind(m);
}

/// Handles dropped unjoined, forgotten (`mem::forget`) and joined late, mixed, then more starts:
/// every target runs once, and the later starts work.
fn handles_dropped_or_forgotten_then_more_starts(m: StartMethod) {
    if !alone() {
        return;
    }
    let dir = marks_dir("dropped", m);
    let d = dir.to_str().unwrap().to_owned();
    let mut kept = Vec::new();
    for round in 0..3u64 {
        for i in 0..12u64 {
            let id = round * 100 + i;
            let mut p = Process::new(mark_after, (d.clone(), id, i % 3)).start_method(m);
            p.start().unwrap();
            match i % 4 {
                0 => drop(p),
                1 => std::mem::forget(p),
                2 => assert_eq!(p.join_timeout(PATIENCE).unwrap(), p.pid().unwrap()),
                _ => kept.push(p),
            }
        }
        for i in 50..56u64 {
            let mut p = Process::new(mark, (d.clone(), round * 100 + i)).start_method(m);
            p.start().unwrap();
            assert_eq!(p.join_timeout(PATIENCE).unwrap(), p.pid().unwrap());
        }
    }
    for p in &mut kept {
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), p.pid().unwrap());
    }
    let want: Vec<u64> = (0..3u64)
        .flat_map(|r| (0..12).chain(50..56).map(move |i| r * 100 + i))
        .collect();
    expect_marks(&dir, &want);
    if m == StartMethod::Forkserver {
        // (Forgotten `Fork` and `Spawn` children stay zombies: nobody is left to reap them.)
        nothing_left_behind(m);
    }
}

/// Starts spaced just below and above the fork server's delays (its `TAKEN_DELAY`,
/// `SPARE_DELAY`, `BURST`, and the client's `BURST_STARTS`), joined at once or only after the
/// group: every target runs once, and every join gives its own value.
fn starts_spaced_around_the_servers_delays(m: StartMethod) {
    if !alone() {
        return;
    }
    let dir = marks_dir("spaced", m);
    let d = dir.to_str().unwrap().to_owned();
    let gaps_us = [
        0u64, 50, 95, 100, 105, 150, 290, 300, 310, 590, 600, 610, 950, 999, 1000, 1001, 1050,
        1500, 3000,
    ];
    let mut want = Vec::new();
    for (g, &gap) in gaps_us.iter().enumerate() {
        for join_at_once in [true, false] {
            let mut held = Vec::new();
            let mut next = Instant::now();
            for i in 0..6u64 {
                let id = g as u64 * 100 + u64::from(join_at_once) * 50 + i;
                want.push(id);
                spin_until(next);
                next = Instant::now() + Duration::from_micros(gap);
                let mut p = Process::new(mark, (d.clone(), id)).start_method(m);
                p.start().unwrap();
                if join_at_once {
                    assert_eq!(p.join_timeout(PATIENCE).unwrap(), p.pid().unwrap());
                } else {
                    held.push(p);
                }
            }
            for mut p in held {
                assert_eq!(p.join_timeout(PATIENCE).unwrap(), p.pid().unwrap());
            }
        }
    }
    want.sort_unstable();
    expect_marks(&dir, &want);
    nothing_left_behind(m);
}

/// A pool's workers are SIGKILLed now and then while another thread starts and joins
/// processes: every process gives its value, every pool call gives its value or `WorkerLost`,
/// and the pool serves again after.
fn a_pool_whose_workers_are_killed_while_processes_start(m: StartMethod) {
    if !alone() {
        return;
    }
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let dir = marks_dir("pool", m);
    let d = dir.to_str().unwrap().to_owned();
    std::thread::scope(|s| {
        let starter = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 400 {
                let mut p = Process::new(mark, (d.clone(), n)).start_method(m);
                p.start().unwrap();
                assert_eq!(p.join_timeout(PATIENCE).unwrap(), p.pid().unwrap());
                n += 1;
            }
            n
        });
        let mut killed = 0;
        for round in 0..30u64 {
            match pool.timeout(PATIENCE).apply(my_pid, ()) {
                Ok(worker) => {
                    if round % 3 == 0 {
                        // SAFETY: kill(2) has no memory-safety preconditions.
                        unsafe { libc::kill(worker as i32, libc::SIGKILL) };
                        killed += 1;
                    }
                }
                Err(e) => assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}"),
            }
            let r = pool.timeout(PATIENCE).apply(sleep_ms, (1,));
            if let Err(e) = r {
                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = starter.join().unwrap();
        assert!(killed > 0);
        let want: Vec<u64> = (0..n).collect();
        expect_marks(&dir, &want);
    });
    for x in 0..4u64 {
        assert_eq!(pool.timeout(PATIENCE).apply(sleep_ms, (x,)).unwrap(), x);
    }
    pool.terminate();
}

/// A process shared by reference between threads that poll it (`is_alive`, `exitcode`) and
/// signal it (`terminate`, `kill`) while others start processes: it ends as signalled, and
/// every other start runs its target.
fn a_process_shared_by_threads_that_poll_and_signal_it(m: StartMethod) {
    if !alone() {
        return;
    }
    let dir = marks_dir("shared", m);
    let d = dir.to_str().unwrap().to_owned();
    let mut want = Vec::new();
    for round in 0..12u64 {
        let mut p = Process::new(sleep_ms, (60_000,))
            .start_method(m)
            .daemon(true);
        p.start().unwrap();
        let sig = if round % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        let shared = &p;
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let d = d.clone();
                s.spawn(move || {
                    let id = round * 100 + t * 10;
                    let mut q = Process::new(mark, (d, id)).start_method(m);
                    q.start().unwrap();
                    let _ = shared.exitcode();
                    assert_eq!(q.join_timeout(PATIENCE).unwrap(), q.pid().unwrap());
                    let _ = shared.is_alive();
                    if t == 1 {
                        if sig == libc::SIGTERM {
                            shared.terminate().unwrap();
                        } else {
                            shared.kill().unwrap();
                        }
                    }
                });
            }
            s.spawn(move || {
                let deadline = Instant::now() + PATIENCE;
                while shared.is_alive() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(100));
                }
            });
        });
        for t in 0..2u64 {
            want.push(round * 100 + t * 10);
        }
        let e = p.join_timeout(PATIENCE).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
        assert_eq!(p.exitcode(), Some(-sig), "round {round}");
    }
    want.sort_unstable();
    expect_marks(&dir, &want);
    nothing_left_behind(m);
}

/// In a `Fork` child: starts `n` processes through the fork server, each returning its parent;
/// whether each came from a server of this child's own, and their parents.
fn starts_through_a_server_of_its_own(n: u32) -> (bool, Vec<u32>) {
    let me = std::process::id();
    let parents: Vec<u32> = (0..n)
        .map(|_| {
            let mut p = Process::new(my_parent, ()).start_method(StartMethod::Forkserver);
            p.start().unwrap();
            p.join_timeout(PATIENCE).unwrap()
        })
        .collect();
    let own = parents.iter().all(|&s| parent_of(s) == Some(me));
    (own, parents)
}

/// A `Fork` child of a process whose fork server has lent it a spare starts processes through
/// a server of its own, never the parent's (nor its spare), and the parent's next start still
/// runs in its lent spare. Then the two kinds of start from two threads at once.
#[test]
fn a_fork_child_of_a_process_with_a_lent_spare_uses_a_server_of_its_own() {
    if !alone() {
        return;
    }
    let server = fork_server().expect("a fork server");
    wait_until("the server has lent a spare", || {
        live_children_of(server).len() == 1 && lent_a_spare(server)
    });
    let spare = live_children_of(server)[0];
    std::thread::sleep(Duration::from_millis(5));
    let mut forked =
        Process::new(starts_through_a_server_of_its_own, (3,)).start_method(StartMethod::Fork);
    forked.start().unwrap();
    let (own, parents) = forked.join_timeout(PATIENCE).unwrap();
    assert!(own, "{parents:?}");
    assert!(
        !parents.contains(&server),
        "{parents:?} from the parent's {server}"
    );
    let mut next = Process::new(my_pid, ()).start_method(StartMethod::Forkserver);
    next.start().unwrap();
    assert_eq!(
        next.join_timeout(PATIENCE).unwrap(),
        spare,
        "the lent spare"
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..10 {
                let mut f = Process::new(starts_through_a_server_of_its_own, (2,))
                    .start_method(StartMethod::Fork);
                f.start().unwrap();
                let (own, parents) = f.join_timeout(PATIENCE).unwrap();
                assert!(own, "{parents:?}");
                assert!(!parents.contains(&server));
            }
        });
        for _ in 0..60 {
            let mut p = Process::new(my_parent, ()).start_method(StartMethod::Forkserver);
            p.start().unwrap();
            assert_eq!(p.join_timeout(PATIENCE).unwrap(), server);
        }
    });
    nothing_left_behind(StartMethod::Forkserver);
}

/// Threads start, signal and join processes while the fork server's children (spare, lent or
/// not, and children started) and now and then the server itself are SIGKILLed, or the server
/// stopped for a moment: no target runs twice, every join that gives a value ran its target,
/// every other join says the child was lost; nothing hangs, and once the killing stops every
/// start works.
#[test]
fn spares_children_and_servers_killed_or_stopped_while_threads_start() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let dir = marks_dir("killed", m);
    let d = dir.to_str().unwrap().to_owned();
    fork_server().expect("a fork server");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let me = std::process::id();
    let (results, kills) = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut rng = 0x2545_f491_4f6c_dd1d_u64;
            let (mut kills, mut server_kills) = (0u32, 0u32);
            let mut killed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                std::thread::sleep(Duration::from_micros(200 + rng % 2500));
                let Some(server) = live_children_of(me).into_iter().next() else {
                    continue;
                };
                let kids = children_of(server);
                let roll = rng % 40;
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe {
                    if roll == 0 {
                        libc::kill(server as i32, libc::SIGKILL);
                        server_kills += 1;
                    } else if roll == 1 {
                        libc::kill(server as i32, libc::SIGSTOP);
                        std::thread::sleep(Duration::from_micros(rng % 3000));
                        libc::kill(server as i32, libc::SIGCONT);
                    } else if !kids.is_empty() {
                        let kid = kids[(rng >> 8) as usize % kids.len()];
                        libc::kill(kid as i32, libc::SIGKILL);
                        killed.push(kid);
                        kills += 1;
                    }
                }
            }
            (kills, server_kills, killed)
        });
        let starters: Vec<_> = (0..3u64)
            .map(|t| {
                let d = d.clone();
                s.spawn(move || {
                    let (mut ok, mut lost, mut failed) = (Vec::new(), 0, Vec::new());
                    for i in 0..80u64 {
                        let id = t * 1000 + i;
                        let mut p = Process::new(mark, (d.clone(), id)).start_method(m);
                        if let Err(e) = p.start() {
                            failed.push(format!("{e}"));
                            continue;
                        }
                        if i % 7 == 3 {
                            let _ = p.terminate();
                        }
                        match p.join_timeout(PATIENCE) {
                            Ok(pid) => {
                                assert_eq!(Some(pid), p.pid());
                                ok.push(id);
                            }
                            Err(e) => {
                                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e:?}");
                                lost += 1;
                            }
                        }
                    }
                    (ok, lost, failed)
                })
            })
            .collect();
        let results: Vec<_> = starters.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (results, killer.join().unwrap())
    });
    // Every value given was the target's; none ran twice.
    let (ids, dups) = marks(&dir);
    assert!(dups.is_empty(), "run twice: {dups:?}");
    for (ok, _, _) in &results {
        for id in ok {
            assert!(ids.contains(id), "{id} gave a value but never ran");
        }
    }
    // A start whose child was killed twice before it announced itself fails, saying so; any
    // other failure needs a server killed.
    let failed: Vec<_> = results
        .iter()
        .flat_map(|r| r.2.iter())
        .filter(|e| !e.contains("ended before it could start"))
        .collect();
    assert!(
        failed.len() as u32 <= 2 * kills.1,
        "{} starts failed with {} servers killed: {failed:?}",
        failed.len(),
        kills.1
    );
    eprintln!(
        "kills {:?}; ok {:?}, lost {:?}, failed {failed:?}",
        (kills.0, kills.1),
        results.iter().map(|r| r.0.len()).collect::<Vec<_>>(),
        results.iter().map(|r| r.1).collect::<Vec<_>>(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    // A spare killed just now may still hold its sockets: a start would take it.
    wait_until("every child killed has ended", || {
        kills.2.iter().all(|&k| has_ended(k))
    });
    for x in 0..10u64 {
        let mut p = Process::new(sleep_ms, (x,)).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), x);
    }
    nothing_left_behind(m);
}

/// Sets this process's soft limit on descriptors to `n`; the old one.
fn set_fd_limit(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write or read the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let old = lim.rlim_cur;
        lim.rlim_cur = n;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        old
    }
}

fn fd_count() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

/// Starts at this process's descriptor limit, from `threads` threads: each start either runs
/// its target (and joins with its value) or fails with an error and leaves nothing running;
/// once descriptors are free again every start works.
fn starts_at_the_descriptor_limit(m: StartMethod, threads: u64, server_first: bool) {
    let dir = marks_dir("fdlimit", m);
    let d = dir.to_str().unwrap().to_owned();
    if server_first {
        let mut warm = Process::new(my_pid, ()).start_method(m);
        warm.start().unwrap();
        warm.join_timeout(PATIENCE).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let old = set_fd_limit(fd_count() + 40);
    let (started, failed) = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let d = d.clone();
                s.spawn(move || {
                    let (mut started, mut failed) = (Vec::new(), Vec::new());
                    for i in 0..60u64 {
                        let id = t * 1000 + i;
                        let mut p = Process::new(mark_after, (d.clone(), id, 300))
                            .start_method(m)
                            .daemon(true);
                        match p.start() {
                            Ok(()) => started.push((id, p)),
                            Err(e) => failed.push((id, e.to_string())),
                        }
                    }
                    (started, failed)
                })
            })
            .collect();
        let mut started = Vec::new();
        let mut failed = Vec::new();
        for h in hs {
            let (s, f) = h.join().unwrap();
            started.extend(s);
            failed.extend(f);
        }
        (started, failed)
    });
    eprintln!(
        "{} started, {} failed: {:?}",
        started.len(),
        failed.len(),
        failed
            .iter()
            .map(|f| &f.1)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(!failed.is_empty(), "the limit was never reached");
    let mut want = Vec::new();
    for (id, mut p) in started {
        match p.join_timeout(PATIENCE) {
            Ok(pid) => {
                assert_eq!(Some(pid), p.pid());
                want.push(id);
            }
            Err(e) => panic!("started {id} ({:?}) joined with {e}", p.pid()),
        }
    }
    set_fd_limit(old);
    want.sort_unstable();
    // A start that failed ran nothing.
    expect_marks(&dir, &want);
    for x in 0..5u64 {
        let mut p = Process::new(sleep_ms, (x,)).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), x);
    }
    nothing_left_behind(m);
}

fn starts_at_the_descriptor_limit_from_one_thread(m: StartMethod) {
    if alone() {
        starts_at_the_descriptor_limit(m, 1, true);
    }
}

#[test]
fn starts_at_the_descriptor_limit_from_three_threads_fork() {
    if alone() {
        starts_at_the_descriptor_limit(StartMethod::Fork, 3, true);
    }
}

#[test]
fn starts_at_the_descriptor_limit_from_three_threads_spawn() {
    if alone() {
        starts_at_the_descriptor_limit(StartMethod::Spawn, 3, true);
    }
}

/// A start asked of the server whose child's announcement comes without its pidfd (another
/// thread took the last free descriptor) fails, and its child, which found its start message
/// waiting, is killed at once: it ran its target unwatched before (see
/// `forkserver::Asked::announced`). (Its target sleeps before it marks: one that had begun
/// is killed before it marks.)
#[test]
fn starts_at_the_descriptor_limit_from_three_threads_forkserver() {
    if alone() {
        starts_at_the_descriptor_limit(StartMethod::Forkserver, 3, true);
    }
}

fn starts_at_the_descriptor_limit_with_the_server_started_under_it(m: StartMethod) {
    if alone() {
        starts_at_the_descriptor_limit(m, 1, false);
    }
}

/// The fork server's children (its spare and each child as it starts) killed every 50 µs, the
/// server never: a start either runs (its join gives a value or says the child was lost) or,
/// its child killed twice before it announced itself, fails saying so, not that the fork
/// server did not answer: it did, and lives on.
#[test]
fn starts_whose_children_are_killed_as_they_start_never_blame_the_server() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let server = fork_server().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let killed = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut killed = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for k in children_of(server) {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(k as i32, libc::SIGKILL) };
                    killed.insert(k);
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            killed
        });
        let mut failed = Vec::new();
        for _ in 0..200 {
            let mut p = Process::new(my_pid, ()).start_method(m);
            match p.start() {
                Err(e) => failed.push(e.to_string()),
                Ok(()) => {
                    if let Err(e) = p.join_timeout(PATIENCE) {
                        assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
                    }
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for e in &failed {
            assert!(e.contains("ended before it could start"), "{e}");
        }
        killer.join().unwrap()
    });
    // A spare killed just now may still hold its sockets: a start would take it.
    wait_until("every child killed has ended", || {
        killed.iter().all(|&k| has_ended(k))
    });
    assert_eq!(fork_server(), Some(server), "the server lives on");
}

/// In a child: starts `n` processes through the fork server (a server of the child's own),
/// joins every other one and drops the rest unjoined (waited for as the child exits), and
/// runs a pool of two; the joined ones' pids.
fn nested_starts(dir: String, base: u64, n: u64) -> Vec<u32> {
    let m = StartMethod::Forkserver;
    let mut pids = Vec::new();
    for i in 0..n {
        let mut p = Process::new(mark_after, (dir.clone(), base + i, i % 2)).start_method(m);
        p.start().unwrap();
        if i % 2 == 0 {
            pids.push(p.join_timeout(PATIENCE).unwrap());
        }
    }
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    assert_eq!(pool.map(sleep_ms, [0, 1, 2, 3]).unwrap(), vec![0, 1, 2, 3]);
    pids
}

/// Children (of each start method) that start processes through fork servers of their own,
/// from two threads of the parent at once, which uses its own server meanwhile: every target
/// runs once, and nothing is left behind.
fn children_start_through_servers_of_their_own(m: StartMethod) {
    if !alone() {
        return;
    }
    let dir = marks_dir("nested", m);
    let d = dir.to_str().unwrap().to_owned();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let d = d.clone();
            s.spawn(move || {
                for r in 0..3u64 {
                    let base = 1000 * (t * 10 + r + 1);
                    let mut p = Process::new(nested_starts, (d.clone(), base, 6)).start_method(m);
                    p.start().unwrap();
                    assert_eq!(p.join_timeout(PATIENCE).unwrap().len(), 3);
                }
            });
        }
        for i in 0..20u64 {
            let mut p = Process::new(mark, (d.clone(), i)).start_method(StartMethod::Forkserver);
            p.start().unwrap();
            p.join_timeout(PATIENCE).unwrap();
        }
    });
    let mut want: Vec<u64> = (0..20).collect();
    for t in 0..2u64 {
        for r in 0..3u64 {
            want.extend((0..6).map(|i| 1000 * (t * 10 + r + 1) + i));
        }
    }
    want.sort_unstable();
    expect_marks(&dir, &want);
    nothing_left_behind(StartMethod::Forkserver);
}

/// A fork server started under a low descriptor limit (the client's limit raised again after):
/// starts beyond what the server can hold fail, saying the server could not fork, not that it
/// did not answer; every start that succeeded runs its target, and once the children end the
/// same server serves again.
#[test]
fn a_server_at_its_descriptor_limit_says_it_could_not_fork() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let dir = marks_dir("srvlimit", m);
    let d = dir.to_str().unwrap().to_owned();
    let old = set_fd_limit(40);
    let server = fork_server().unwrap();
    set_fd_limit(old);
    let (mut started, mut failed) = (Vec::new(), Vec::new());
    for id in 0..30u64 {
        let mut p = Process::new(mark_after, (d.clone(), id, 300)).start_method(m);
        match p.start() {
            Ok(()) => started.push((id, p)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    assert!(!failed.is_empty(), "the server's limit was never reached");
    for e in &failed {
        assert!(e.contains("could not fork"), "{e}");
    }
    let mut want = Vec::new();
    for (id, mut p) in started {
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), p.pid().unwrap());
        want.push(id);
    }
    expect_marks(&dir, &want);
    for _ in 0..5 {
        let mut p = Process::new(my_parent, ()).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), server);
    }
    nothing_left_behind(m);
}

fn sum_bytes(v: Vec<u8>) -> u64 {
    v.iter().map(|&b| u64::from(b)).sum()
}

/// A lent spare (stopped by someone) taken for a start whose message is too large to go
/// before its wake-up, and killed while the start waits to send the rest: the start fails
/// saying that the child ended before it read its start message, not a bare "the channel is
/// closed"; the next start works.
#[test]
fn a_lent_spare_killed_while_it_is_sent_a_large_start_says_so() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let server = fork_server().unwrap();
    wait_until("one spare, lent", || {
        live_children_of(server).len() == 1 && lent_a_spare(server)
    });
    let spare = live_children_of(server)[0];
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(spare as i32, libc::SIGSTOP) }, 0);
    let big = crate::common::pattern(3, 4_000_000);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let starter = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let mut p = Process::new(sum_bytes, (big,)).start_method(m);
        p.start().map(|()| p.pid())
    });
    let tid = tid_rx.recv_timeout(PATIENCE).unwrap();
    wait_until("the start waits to send the rest", || {
        let now = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"));
        matches!(
            now.unwrap_or_default().split(' ').next().unwrap_or(""),
            "7" | "271" | "73"
        )
    });
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(spare as i32, libc::SIGKILL) }, 0);
    let e = starter.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("ended before it read it"), "{e}");
    let mut p = Process::new(sum_bytes, (vec![1u8; 300_000],)).start_method(m);
    p.start().unwrap();
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 300_000);
}

/// Eight threads start processes (joining most) while the fork server, its spare (lent or
/// not) and the children started are stopped (SIGSTOP) and continued a moment later at random:
/// every target runs once, every join gives its own pid, and nothing is left behind.
#[test]
fn threads_start_while_the_server_and_its_children_are_stopped_and_continued() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let dir = marks_dir("stopcont", m);
    let d = dir.to_str().unwrap().to_owned();
    let server = fork_server().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let kids = children_of(server);
                let victim = if n.is_multiple_of(5) {
                    Some(server)
                } else {
                    kids.get((n as usize * 31) % kids.len().max(1)).copied()
                };
                if let Some(v) = victim {
                    // SAFETY: kill(2) has no memory-safety preconditions.
                    unsafe { libc::kill(v as i32, libc::SIGSTOP) };
                    std::thread::sleep(Duration::from_micros(100 + (n * 7919) % 2000));
                    // SAFETY: as above.
                    unsafe { libc::kill(v as i32, libc::SIGCONT) };
                }
                std::thread::sleep(Duration::from_micros(100 + (n * 104_729) % 1000));
            }
        });
        let hs: Vec<_> = (0..8u64)
            .map(|t| {
                let d = d.clone();
                s.spawn(move || {
                    for i in 0..40u64 {
                        let id = t * 100 + i;
                        let mut p = Process::new(mark, (d.clone(), id)).start_method(m);
                        p.start().unwrap();
                        if i % 4 != 3 {
                            assert_eq!(p.join_timeout(PATIENCE).unwrap(), p.pid().unwrap());
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let want: Vec<u64> = (0..8u64)
        .flat_map(|t| (0..40).map(move |i| t * 100 + i))
        .collect();
    expect_marks(&dir, &want);
    nothing_left_behind(m);
}

extern "C" fn on_sigint(_: libc::c_int) {}

/// Ctrl-C after Ctrl-C to the process group (its own), which the parent handles, while three
/// threads start and join: the server lives on, its spares die unasked (or, taken, as the
/// child), every start runs its target once or ends with SIGINT (a start whose two children
/// were both interrupted before they announced themselves fails saying so), and nothing hangs.
#[test]
fn ctrl_c_to_the_process_group_while_threads_start() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    // SAFETY: setpgid and signal have no memory-safety preconditions; the handler does nothing.
    unsafe {
        assert_eq!(libc::setpgid(0, 0), 0);
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let dir = marks_dir("ctrlc", m);
    let d = dir.to_str().unwrap().to_owned();
    fork_server().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                std::thread::sleep(Duration::from_micros(500 + (n * 7919) % 3000));
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(0, libc::SIGINT) };
            }
            n
        });
        let hs: Vec<_> = (0..3u64)
            .map(|t| {
                let d = d.clone();
                s.spawn(move || {
                    let (mut ok, mut lost, mut failed) = (0u32, 0u32, Vec::new());
                    for i in 0..100u64 {
                        let mut p = Process::new(mark, (d.clone(), t * 1000 + i)).start_method(m);
                        if let Err(e) = p.start() {
                            failed.push(e.to_string());
                            continue;
                        }
                        match p.join_timeout(PATIENCE) {
                            Ok(_) => ok += 1,
                            Err(e) => {
                                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e}");
                                assert_eq!(p.exitcode(), Some(-libc::SIGINT), "{e}");
                                lost += 1;
                            }
                        }
                    }
                    (ok, lost, failed)
                })
            })
            .collect();
        let r: Vec<_> = hs.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    let (_, dups) = marks(&dir);
    assert!(dups.is_empty(), "{dups:?}");
    for e in out.iter().flat_map(|r| r.2.iter()) {
        assert!(e.contains("ended before it could start"), "{e}");
    }
    assert!(out.iter().map(|r| r.0).sum::<u32>() > 0, "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
    for x in 0..5u64 {
        let mut p = Process::new(sleep_ms, (x,)).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), x);
    }
    nothing_left_behind(m);
}

/// Holds `pid` (a process of ours, traced) at its exit, once `sig` has ended it: its memory
/// and descriptors still there, as while a killed process tears down (longer for a core
/// dump). `false` if it did not end of it (it was not ours to trace, say).
fn held_at_its_exit(pid: u32, sig: i32) -> bool {
    let pid = pid as libc::pid_t;
    let exit_event = libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8);
    // SAFETY: ptrace(2), kill(2) and waitpid(2) have no memory-safety preconditions beyond a
    // valid pointer for the status, a local.
    unsafe {
        let options = libc::PTRACE_O_TRACEEXIT as usize as *mut libc::c_void;
        if libc::ptrace(libc::PTRACE_SEIZE, pid, std::ptr::null_mut::<u8>(), options) != 0 {
            return false;
        }
        assert_eq!(libc::kill(pid, sig), 0);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            let mut status = 0;
            match libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) {
                0 => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                got if got != pid || !libc::WIFSTOPPED(status) => return false,
                _ => {}
            }
            if status >> 8 == exit_event {
                return true;
            }
            // Stopped as the signal came (a tracee's every signal stops it first): delivered.
            let deliver = libc::WSTOPSIG(status) as usize as *mut libc::c_void;
            libc::ptrace(libc::PTRACE_CONT, pid, std::ptr::null_mut::<u8>(), deliver);
        }
    }
    false
}

/// Lets a process held by [`held_at_its_exit`] end.
fn let_it_end(pid: u32) {
    // SAFETY: ptrace(2) has no memory-safety preconditions.
    unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            pid as libc::pid_t,
            std::ptr::null_mut::<u8>(),
            std::ptr::null_mut::<u8>(),
        );
    }
}

/// The lent spare ended by any signal that ends a process by default and can be caught (SIGPIPE
/// but: ignored, as in its parent), and held at its exit (traced): a start passes it over and starts a child that runs its target.
/// (The spare caught only SIGINT, SIGTERM and the server's death; one ending of SIGHUP, say,
/// left its word idle until the server reaped it, and its sockets open until its end: a start
/// took it meanwhile, and returned a child that had died of the signal without running.)
#[test]
fn a_spare_ended_by_any_signal_is_never_taken_for_a_start() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let server = fork_server().expect("a fork server");
    let signals = [
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGUSR2,
        libc::SIGABRT,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGIO,
        libc::SIGPWR,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGSTKFLT,
    ];
    for sig in signals {
        wait_until("the server has lent its next spare", || {
            lent_a_spare(server)
        });
        let [spare] = children_of(server)[..] else {
            panic!(
                "the server has children but its spare: {:?}",
                children_of(server)
            )
        };
        assert!(
            held_at_its_exit(spare, sig),
            "signal {sig}: the spare not held"
        );
        let t = Instant::now();
        let mut p = Process::new(my_pid, ()).start_method(m);
        let started = p.start();
        let took = t.elapsed();
        let_it_end(spare);
        started.unwrap();
        let pid = p
            .join_timeout(PATIENCE)
            .unwrap_or_else(|e| panic!("signal {sig}: {e}"));
        assert_ne!(pid, spare, "signal {sig}");
        assert!(took < PATIENCE / 2, "signal {sig}: the start took {took:?}");
        wait_until("the spare has ended", || has_ended(spare));
    }
    nothing_left_behind(m);
}
