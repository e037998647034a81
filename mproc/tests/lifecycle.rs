//! No orphans, no zombies, no leaked descriptors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproc::{Barrier, ErrorKind, Event, Pool, Process, StartMethod};

use crate::common::{PATIENCE, alone, exists, has_ended, held, open_fds, sleep_ms, wait_until};

const ORPHAN_DRIVER: &str = "MPROC_TEST_ORPHAN_DRIVER";

/// Run as a separate copy of this test binary: runs one short child to its end, starts two long
/// sleepers with the method named in the environment, prints their pids, and waits to be
/// killed. (A fork server hands the short child's tie to the liveness pipe on to a sleeper.)
fn drive_orphans(method: &str) {
    let m = match method {
        "fork" => StartMethod::Fork,
        "spawn" => StartMethod::Spawn,
        _ => StartMethod::Forkserver,
    };
    let mut short = Process::new(sleep_ms, (0,)).start_method(m);
    short.start().unwrap();
    short.join().unwrap();
    let mut kids: Vec<_> = (0..2)
        .map(|_| Process::new(sleep_ms, (60_000,)).start_method(m))
        .collect();
    for k in &mut kids {
        k.start().unwrap();
    }
    let pids: Vec<String> = kids.iter().map(|k| k.pid().unwrap().to_string()).collect();
    println!("PIDS {}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(60));
}

fn parent_pid_of(pid: u32) -> u32 {
    parent_of(pid).unwrap_or_else(|| panic!("no process {pid}"))
}

/// The parent of `pid`, if there is such a process.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    after.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn parent_death_by_sigkill_takes_children_and_fork_server_within_a_second() {
    if let Ok(method) = std::env::var(ORPHAN_DRIVER) {
        return drive_orphans(&method);
    }
    for method in ["fork", "spawn", "forkserver"] {
        let (mut driver, mut pids) = start_driver(
            "lifecycle::parent_death_by_sigkill_takes_children_and_fork_server_within_a_second",
            ORPHAN_DRIVER,
            method,
        );
        if method == "forkserver" {
            let server = parent_pid_of(pids[0]);
            assert_ne!(server, driver.id(), "forkserver children are the server's");
            // Its spare child too, when it has forked one already.
            let others: Vec<u32> = children_of(server)
                .into_iter()
                .filter(|p| !pids.contains(p))
                .collect();
            pids.extend(others);
            pids.push(server);
        }
        driver.kill().unwrap();
        driver.wait().unwrap();
        all_end_within_a_second(method, &pids);
    }
}

/// Runs the test `name` of this binary again as a driver (`var` set to `value` in its
/// environment), and reads the pids it prints on a line `PIDS ...` (bounded).
fn start_driver(name: &str, var: &str, value: &str) -> (std::process::Child, Vec<u32>) {
    let mut driver = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .env(var, value)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = driver.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("PIDS ").map(str::to_owned))
    });
    let deadline = Instant::now() + PATIENCE;
    while !reader.is_finished() {
        if Instant::now() >= deadline {
            let _ = driver.kill();
            panic!("{value}: the driver never printed its children");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let Some(line) = reader.join().unwrap() else {
        let _ = driver.kill();
        panic!(
            "{value}: the driver failed before printing its children: {:?}",
            driver.wait()
        );
    };
    let pids = line.split(' ').map(|p| p.parse().unwrap()).collect();
    (driver, pids)
}

/// Waits until every process of `pids` has ended, failing after a second.
fn all_end_within_a_second(what: &str, pids: &[u32]) {
    let killed = Instant::now();
    while !pids.iter().all(|&p| has_ended(p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "{what}: still alive a second after their parent was killed: {:?}",
            pids.iter().filter(|&&p| !has_ended(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A middle process: forks two sleepers from its main thread (a worker's target runs there),
/// writes their pids to `path`, and waits to be killed.
fn fork_sleepers_and_wait(path: String) {
    let mut kids: Vec<_> = (0..2)
        .map(|_| Process::new(sleep_ms, (60_000,)).start_method(StartMethod::Fork))
        .collect();
    let pids: Vec<String> = kids
        .iter_mut()
        .map(|k| {
            k.start().unwrap();
            k.pid().unwrap().to_string()
        })
        .collect();
    std::fs::write(&path, pids.join(" ")).unwrap();
    std::thread::sleep(Duration::from_secs(60));
}

/// The other path of parent-death detection: children forked from a main thread rely on
/// `PR_SET_PDEATHSIG` instead of a watcher thread.
#[test]
fn children_forked_from_a_main_thread_die_with_it_within_a_second() {
    for method in [StartMethod::Spawn, StartMethod::Forkserver] {
        let path =
            std::env::temp_dir().join(format!("mproc-pdeath-{}-{method}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let path_s = path.to_string_lossy().into_owned();
        let mut middle = Process::new(fork_sleepers_and_wait, (path_s,)).start_method(method);
        middle.start().unwrap();
        let deadline = Instant::now() + PATIENCE;
        let pids: Vec<u32> = loop {
            if let Ok(s) = std::fs::read_to_string(&path)
                && !s.is_empty()
            {
                break s.split(' ').map(|p| p.parse().unwrap()).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{method}: the middle process never wrote its children"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = std::fs::remove_file(&path);
        middle.kill().unwrap();
        let killed = Instant::now();
        while !pids.iter().all(|&p| has_ended(p)) {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "{method}: grandchildren outlived their parent"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = middle.join_timeout(PATIENCE);
    }
}

fn nothing() {}

fn no_descriptor_leaks_over_1000_cycles(m: StartMethod) {
    if !alone() {
        return;
    }
    // The first start creates the liveness pipe and, for forkserver, the server's socket.
    let mut warm = Process::new(nothing, ()).start_method(m);
    warm.start().unwrap();
    warm.join_timeout(PATIENCE).unwrap();
    // Of what kind each is, sockets counted apart: a fork server's client holds the sockets of
    // the spares it makes ahead (see `forkserver::Kit`), from two to five socket pairs of them
    // as spares are lent, used and made, and new ones each time. A leak in 1000 cycles would
    // be hundreds.
    let (before, sockets_before) = held();
    for _ in 0..1000 {
        let mut p = Process::new(nothing, ()).start_method(m);
        p.start().unwrap();
        p.join_timeout(PATIENCE).unwrap();
    }
    let (after, sockets_after) = held();
    assert_eq!(
        before, after,
        "descriptors other than sockets before and after 1000 start+join cycles"
    );
    assert!(
        sockets_after <= sockets_before + 6,
        "{sockets_before} sockets before 1000 start+join cycles, {sockets_after} after"
    );
}

fn child_fds() -> Vec<(i32, String)> {
    open_fds()
}

fn children_hold_only_the_descriptors_meant_for_them(m: StartMethod) {
    if !alone() {
        return;
    }
    let mut warm = Process::new(nothing, ()).start_method(m);
    warm.start().unwrap();
    warm.join_timeout(PATIENCE).unwrap();
    let user_file =
        std::fs::File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let s0 = open_fds();
    let mut a = Process::new(sleep_ms, (60_000,)).start_method(m);
    a.start().unwrap();
    let a_fds: Vec<String> = open_fds()
        .into_iter()
        .filter(|f| !s0.contains(f))
        .map(|(_, t)| t)
        .collect();
    assert!(!a_fds.is_empty());
    let mut b = Process::new(child_fds, ()).start_method(m);
    b.start().unwrap();
    let b_fds = b.join_timeout(PATIENCE).unwrap();
    a.kill().unwrap();
    let _ = a.join_timeout(PATIENCE);
    for (n, target) in &b_fds {
        assert!(
            !a_fds.contains(target),
            "{m}: child B holds {n} -> {target}, which belongs to A"
        );
    }
    let has_user_file = b_fds.iter().any(|(_, t)| t.ends_with("/Cargo.toml"));
    let extra: Vec<_> = b_fds.iter().filter(|(n, _)| *n > 2).collect();
    match m {
        StartMethod::Fork => assert!(has_user_file, "a forked child keeps the parent's files"),
        _ => {
            assert!(
                !has_user_file,
                "{m}: the parent's file leaked into the child"
            );
            assert!(
                extra.len() <= 2,
                "{m}: child has more than its control socket and liveness pipe: {extra:?}"
            );
        }
    }
    drop(user_file);
}

fn sees_manifest() -> bool {
    open_fds().iter().any(|(_, t)| t.ends_with("/Cargo.toml"))
}

fn open_then_fork() -> (bool, bool) {
    let file = std::fs::File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let mut p = Process::new(sees_manifest, ()).start_method(StartMethod::Fork);
    p.start().unwrap();
    let seen = p.join_timeout(PATIENCE).unwrap();
    drop(file);
    (seen, sees_manifest())
}

/// A child opens a file (likely at a descriptor number its start-up used and closed) and forks
/// a grandchild: the grandchild keeps the file, as a forked child keeps its parent's files.
fn a_forked_grandchild_keeps_its_parents_files(m: StartMethod) {
    let mut p = Process::new(open_then_fork, ()).start_method(m);
    p.start().unwrap();
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), (true, false));
}

/// A pool task starts two children of its own, a non-daemonic one and a daemonic one (the
/// default there, as in Python: pool workers are daemonic), and returns at once.
fn leaves_two_children(dir: String) {
    Process::new(write_after, (format!("{dir}/kept"), 300))
        .daemon(false)
        .start()
        .unwrap();
    Process::new(write_after, (format!("{dir}/daemonic"), 300))
        .start()
        .unwrap();
}

/// A pool worker that leaves (the pool closed and joined) settles its own children as a
/// process does: it waits for the non-daemonic ones and terminates the daemonic ones.
fn a_pool_worker_settles_its_children_before_leaving(m: StartMethod) {
    let dir = tempdir_for("settle", m);
    let pool = mproc::Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    pool.apply(leaves_two_children, (dir.display().to_string(),))
        .unwrap();
    pool.close();
    pool.join().unwrap();
    assert!(
        dir.join("kept").exists(),
        "join returned before the worker's child ended"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !dir.join("daemonic").exists(),
        "the daemonic child outlived its worker"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir_for(what: &str, m: StartMethod) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mproc-{what}-{}-{m}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

per_start_method!(
    a_pool_worker_settles_its_children_before_leaving,
    no_descriptor_leaks_over_1000_cycles,
    children_hold_only_the_descriptors_meant_for_them,
    a_forked_grandchild_keeps_its_parents_files,
);

// The fork server's death: its children belong to the user's process, not to the server.
// Each scenario kills a fork server, which every other test of this process would feel, so it
// runs in a process of its own (see `alone`).

/// The children of `pid` that have not ended.
fn live_children_of(pid: u32) -> Vec<u32> {
    children_of(pid)
        .into_iter()
        .filter(|&c| !has_ended(c))
        .collect()
}

/// The pids whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .map_while(Result::ok)
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(pid))
        .collect()
}

/// SIGKILLs `pid` (a fork server: our own child, so its pid cannot have been reused) and
/// waits until it has ended.
fn kill_and_await(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_until("the killed fork server has ended", || has_ended(pid));
}

fn my_parent() -> u32 {
    parent_pid_of(std::process::id())
}

fn wait_then_set(go: Event, done: Event) -> u32 {
    go.wait_timeout(PATIENCE).expect("never told to go");
    std::thread::sleep(Duration::from_millis(500));
    done.set();
    7
}

/// A running `Forkserver` child outlives its server, which is killed under it (CPython's
/// bpo-31308): it finishes its work, its handle joins it with its value and exit code, and the
/// next process starts through a fresh server.
#[test]
fn a_child_outlives_its_killed_fork_server_and_the_next_one_starts() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let (go, done) = (Event::new().unwrap(), Event::new().unwrap());
    let mut p = Process::new(wait_then_set, (go.clone(), done.clone())).start_method(m);
    p.start().unwrap();
    let server = parent_pid_of(p.pid().unwrap());
    assert_ne!(server, std::process::id(), "the child is the server's");
    kill_and_await(server);
    go.set();
    done.wait_timeout(PATIENCE)
        .expect("the child died with its fork server");
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 7);
    assert_eq!(p.exitcode(), Some(0));
    assert!(!p.is_alive());
    let mut next = Process::new(my_parent, ()).start_method(m);
    next.start().unwrap();
    let new_server = next.join_timeout(PATIENCE).unwrap();
    assert_ne!(
        new_server, server,
        "a fresh server started the next process"
    );
    assert_ne!(new_server, std::process::id());
    assert_eq!(next.exitcode(), Some(0));
}

/// A fork server killed with a pool's request for a worker still unread in its socket: the
/// request goes to a fresh server, and the worker it starts is sent again what the first
/// request's child would have found behind its start message (its lane), so the pool serves.
#[test]
fn a_pool_worker_asked_of_a_server_killed_before_it_read_the_request_starts_anyway() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let (server, mut lent) = stopped_fork_server();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let pool = Pool::builder().processes(1).start_method(m).build();
        let _ = tx.send(pool.and_then(|p| p.apply(square, (7,))));
    });
    let tid = tid_rx.recv_timeout(PATIENCE).unwrap();
    wait_until("the pool's start waits for the stopped server", || {
        thread_waits_in_poll(tid)
    });
    assert!(rx.try_recv().is_err(), "answered by a stopped server?");
    kill_and_await(server);
    let got = rx
        .recv_timeout(PATIENCE)
        .expect("the pool never started after its server was killed");
    assert_eq!(got.unwrap(), 49);
    assert_eq!(
        lent.join_timeout(PATIENCE).unwrap(),
        server,
        "ran in the lent spare"
    );
}

/// Run as a separate copy of this test binary: starts two `Forkserver` sleepers and a
/// `Forkserver` pool of two, kills their fork server, starts one more sleeper (through a fresh
/// server), prints every pid that must die with it, and waits to be killed. The killed server's
/// spare child leaves with the server.
fn drive_orphans_of_a_killed_server() {
    let m = StartMethod::Forkserver;
    let mut kids: Vec<_> = (0..2)
        .map(|_| Process::new(sleep_ms, (60_000,)).start_method(m))
        .collect();
    for k in &mut kids {
        k.start().unwrap();
    }
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    assert_eq!(pool.apply(sleep_ms, (0,)).unwrap(), 0);
    let server = parent_pid_of(kids[0].pid().unwrap());
    wait_until(
        "the pool's workers, the sleepers and the spare are the server's",
        || children_of(server).len() == 5,
    );
    let before = children_of(server);
    kill_and_await(server);
    // Its spare child leaves with it (nothing ran there); its other children run on.
    wait_until("the killed server's spare has left", || {
        before.iter().filter(|&&p| has_ended(p)).count() == 1
    });
    let mut pids: Vec<u32> = before.into_iter().filter(|&p| !has_ended(p)).collect();
    let mut late = Process::new(sleep_ms, (60_000,)).start_method(m);
    late.start().unwrap();
    pids.push(late.pid().unwrap());
    pids.push(parent_pid_of(late.pid().unwrap()));
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    println!("PIDS {}", pids.join(" "));
    std::thread::sleep(Duration::from_secs(60));
}

/// Children that outlived their fork server still die with the user's process: a SIGKILLed
/// parent takes its orphaned `Forkserver` processes and pool workers, the fresh server and
/// its child, all within a second.
#[test]
fn orphans_of_a_killed_fork_server_still_die_with_the_parent_within_a_second() {
    const NAME: &str =
        "lifecycle::orphans_of_a_killed_fork_server_still_die_with_the_parent_within_a_second";
    const DRIVER: &str = "MPROC_TEST_SERVER_ORPHANS_DRIVER";
    if std::env::var_os(DRIVER).is_some() {
        return drive_orphans_of_a_killed_server();
    }
    let (mut driver, pids) = start_driver(NAME, DRIVER, "1");
    let all_ran = pids.iter().all(|&p| !has_ended(p));
    driver.kill().unwrap();
    driver.wait().unwrap();
    assert_eq!(pids.len(), 6, "{pids:?}");
    assert!(all_ran, "all ran until their parent was killed: {pids:?}");
    all_end_within_a_second("fork server orphans", &pids);
}

fn kill_myself() {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    std::thread::sleep(PATIENCE);
}

/// Meets another task at `barrier` (so two workers run at once), then says who ran it.
fn meet(barrier: Barrier) -> (u32, u32) {
    barrier.wait_timeout(PATIENCE).unwrap();
    (std::process::id(), my_parent())
}

fn square(n: u64) -> u64 {
    n * n
}

/// A pool whose fork server is killed keeps working with the workers it has, and a worker
/// lost afterwards is replaced through a fresh server.
#[test]
fn a_pool_outlives_its_killed_fork_server() {
    if !alone() {
        return;
    }
    let pool = Pool::builder()
        .processes(2)
        .start_method(StartMethod::Forkserver)
        .build()
        .unwrap();
    let expected: Vec<u64> = (0..1000).map(|n| n * n).collect();
    let barrier = Barrier::new(2).unwrap();
    let meetings: Vec<_> = (0..2)
        .map(|_| pool.apply_async(meet, (barrier.clone(),)).unwrap())
        .collect();
    let workers: Vec<(u32, u32)> = meetings
        .iter()
        .map(|r| r.get_timeout(PATIENCE).unwrap())
        .collect();
    let server = workers[0].1;
    assert_eq!(workers[1].1, server, "both workers are the server's");
    kill_and_await(server);
    let all = pool.map_async(square, 0..1000).unwrap();
    assert_eq!(all.get_timeout(PATIENCE).unwrap(), expected);
    for (pid, _) in &workers {
        assert!(!has_ended(*pid), "worker {pid} died with the fork server");
    }
    let lost = pool.apply_async(kill_myself, ()).unwrap();
    let e = lost.get_timeout(PATIENCE).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e:?}");
    let meetings: Vec<_> = (0..2)
        .map(|_| pool.apply_async(meet, (barrier.clone(),)).unwrap())
        .collect();
    let now: Vec<(u32, u32)> = meetings
        .iter()
        .map(|r| r.get_timeout(PATIENCE).unwrap())
        .collect();
    let fresh: Vec<_> = now
        .iter()
        .filter(|(pid, _)| !workers.iter().any(|w| w.0 == *pid))
        .collect();
    assert_eq!(fresh.len(), 1, "one replacement: {now:?} after {workers:?}");
    let new_server = fresh[0].1;
    assert_ne!(new_server, server);
    assert_eq!(
        parent_pid_of(new_server),
        std::process::id(),
        "a fresh server of ours"
    );
    assert_eq!(pool.map(square, 0..1000).unwrap(), expected);
    pool.close();
    pool.join().unwrap();
}

fn sleep_then_return(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// A process that adopts the orphans of its killed fork server (it is a subreaper, as a
/// container's init is) reaps them itself, so it knows exactly how they ended and leaves no
/// zombie.
#[test]
fn an_adopting_parent_reaps_the_orphans_and_knows_how_they_ended() {
    if !alone() {
        return;
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) has no memory-safety preconditions.
    let made_subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(made_subreaper, 0);
    let m = StartMethod::Forkserver;
    let mut stopped = Process::new(sleep_ms, (60_000,)).start_method(m);
    let mut finishing = Process::new(sleep_then_return, (300,)).start_method(m);
    stopped.start().unwrap();
    finishing.start().unwrap();
    let server = parent_pid_of(stopped.pid().unwrap());
    kill_and_await(server);
    for p in [stopped.pid().unwrap(), finishing.pid().unwrap()] {
        wait_until("the orphan is adopted", || {
            parent_of(p) == Some(std::process::id())
        });
    }
    stopped.terminate().unwrap();
    let e = stopped.join_timeout(PATIENCE).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e:?}");
    assert_eq!(stopped.exitcode(), Some(-libc::SIGTERM));
    assert_eq!(finishing.join_timeout(PATIENCE).unwrap(), 300);
    assert_eq!(finishing.exitcode(), Some(0));
    for p in [stopped.pid().unwrap(), finishing.pid().unwrap()] {
        assert!(!exists(p), "{p} was left a zombie");
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn my_pid() -> u32 {
    std::process::id()
}

/// The fork server keeps one child forked ahead of the next start, and only one: the next
/// start runs in it, and the server forks another; one killed while it waits is replaced, and
/// the start after that still works.
#[test]
fn the_fork_server_keeps_one_spare_child_and_replaces_a_killed_one() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    // The test runner may ignore SIGINT, and the server would inherit that: the default
    // action, so that a signal pending in the spare would end it.
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    // Daemonic: a failing assertion below ends the test at once, not after the sleep.
    let mut sleeper = Process::new(sleep_ms, (60_000,))
        .start_method(m)
        .daemon(true);
    sleeper.start().unwrap();
    let busy = sleeper.pid().unwrap();
    let server = parent_pid_of(busy);
    let spares = || -> Vec<u32> {
        children_of(server)
            .into_iter()
            .filter(|&c| c != busy)
            .collect()
    };
    // One spare, and lent to this process (see `lent_a_spare`).
    let one_lent = || spares().len() == 1 && lent_a_spare(server);
    wait_until("one spare beside the sleeper", || spares().len() == 1);
    let spare = spares()[0];
    let mut next = Process::new(my_pid, ()).start_method(m);
    next.start().unwrap();
    assert_eq!(
        next.join_timeout(PATIENCE).unwrap(),
        spare,
        "the start ran in the spare"
    );
    wait_until("a new spare", || matches!(spares()[..], [s] if s != spare));
    let second = spares()[0];
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(second as i32, libc::SIGKILL) }, 0);
    wait_until(
        "a spare again",
        || matches!(spares()[..], [s] if s != second),
    );
    // A stop signal that reaches a waiting spare (as a Ctrl-C to the process group would)
    // ends it, as it ends the processes that existed then; the server forks another, and
    // the next start runs there, not in the signalled one, even while the signalled one is
    // still going (its sockets open: a dying process frees its memory first).
    for sig in [libc::SIGINT, libc::SIGTERM] {
        wait_until("a spare, lent", one_lent);
        let signalled = spares()[0];
        // SAFETY: kill(2) has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(signalled as i32, sig) }, 0);
        wait_until("the signalled spare is ending", || is_exiting(signalled));
        let mut next = Process::new(my_pid, ()).start_method(m);
        next.start().unwrap();
        assert_ne!(next.join_timeout(PATIENCE).unwrap(), signalled);
    }
    // A lent spare is started by this process itself: its pid is known at once, even when it
    // cannot run (stopped); killed then, it is a child killed as it starts, as with `fork`.
    wait_until("a spare, lent", one_lent);
    let doomed = spares()[0];
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(doomed as i32, libc::SIGSTOP) }, 0);
    let mut stuck = Process::new(my_pid, ()).start_method(m);
    stuck.start().unwrap();
    assert_eq!(stuck.pid(), Some(doomed));
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(doomed as i32, libc::SIGKILL) }, 0);
    let e = stuck.join_timeout(PATIENCE).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e:?}");
    assert_eq!(stuck.exitcode(), Some(-libc::SIGKILL));
    // Killed before it was started, it is passed over: the start runs in another child.
    wait_until("a spare, lent", one_lent);
    let killed = spares()[0];
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(killed as i32, libc::SIGKILL) }, 0);
    wait_until("the killed spare has ended", || has_ended(killed));
    let mut next = Process::new(my_pid, ()).start_method(m);
    next.start().unwrap();
    assert_ne!(next.join_timeout(PATIENCE).unwrap(), killed);
    for _ in 0..20 {
        let mut p = Process::new(my_pid, ()).start_method(m);
        p.start().unwrap();
        p.join_timeout(PATIENCE).unwrap();
    }
    // (Once the last child is reaped: it may still be a zombie when its join returns.)
    wait_until("one spare after twenty starts", || spares().len() == 1);
    sleeper.terminate().unwrap();
    let _ = sleeper.join_timeout(PATIENCE);
}

/// The fork server killed the moment it has lent its spare, and a start at once: the spare
/// either dies with the server, saying so in its word first, and the start goes to a fresh
/// server, or was taken first and runs as the start's child. Either way the start's target
/// runs and its value comes back.
#[test]
fn a_start_right_after_the_server_is_killed_runs_its_target() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    for round in 0..12u64 {
        let server = a_fork_server_with_its_spare_lent();
        // SAFETY: kill(2) has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(server as i32, libc::SIGKILL) }, 0);
        if round % 3 == 1 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut p = Process::new(square, (round,)).start_method(m);
        p.start().unwrap();
        assert_eq!(
            p.join_timeout(PATIENCE).unwrap(),
            round * round,
            "round {round}"
        );
    }
}

/// A stop signal sent the moment a start returns is the child's, even when the child is a spare
/// the start woke that has not run yet (its pid is known before it runs): it is never lost.
/// Sent by the handle and by `kill(2)`, after a rest (a spare waiting long) and back to back.
#[test]
fn a_signal_sent_as_a_start_returns_reaches_the_child() {
    if !alone() {
        return;
    }
    // The test runner may ignore SIGINT, and the server would inherit that.
    // SAFETY: setting a signal's disposition to its default has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    let m = StartMethod::Forkserver;
    for round in 0..30 {
        if round % 3 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut p = Process::new(sleep_ms, (60_000,))
            .start_method(m)
            .daemon(true);
        p.start().unwrap();
        let pid = p.pid().unwrap() as i32;
        // SIGUSR2 is also what a waiting spare takes for its server's death: one sent to the
        // child is the child's all the same.
        let sig = match round % 5 {
            0 | 1 => {
                p.terminate().unwrap();
                libc::SIGTERM
            }
            2 => libc::SIGTERM,
            3 => libc::SIGINT,
            _ => libc::SIGUSR2,
        };
        if round % 5 >= 2 {
            // SAFETY: kill(2) has no memory-safety preconditions.
            assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        }
        let e = p.join_timeout(PATIENCE).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WorkerLost(_)),
            "round {round}: {e:?}"
        );
        assert_eq!(p.exitcode(), Some(-sig), "round {round}");
    }
}

/// A program that starts processes without joining them uses up the sockets it gave the fork
/// server ahead for its spares (see `forkserver::Kit`): the spares forked then are not lent,
/// and starts ask the server for them. Every start still runs its target, before and after
/// the joins that make kits again.
#[test]
fn starts_without_joins_run_every_target() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    for round in 0..3 {
        let mut started: Vec<_> = (0..8u64)
            .map(|i| {
                let mut p = Process::new(add, (i, round)).start_method(m);
                p.start().unwrap();
                p
            })
            .collect();
        for (i, p) in started.iter_mut().enumerate() {
            assert_eq!(p.join_timeout(PATIENCE).unwrap(), i as u64 + round);
        }
        for i in 0..4u64 {
            let mut p = Process::new(add, (i, 100)).start_method(m);
            p.start().unwrap();
            assert_eq!(p.join_timeout(PATIENCE).unwrap(), i + 100);
        }
    }
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Threads start processes back to back while the fork server's children (its spare, lent or
/// not, and the children started) and now and then the server itself are SIGKILLed at random:
/// every start gives its own value, or a child killed, or (only while servers are being
/// killed) an error; nothing hangs, and once the killed are gone every start works. (A child
/// whose server was killed too is reaped by another process: its end is known, how it ended
/// only from the kernel's record, which may not be made yet.)
#[test]
fn starts_from_threads_with_spares_and_servers_killed_at_random() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let mut first = Process::new(my_parent, ()).start_method(m);
    first.start().unwrap();
    assert_eq!(
        first.join_timeout(PATIENCE).unwrap(),
        children_of(my_pid())[0]
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut killed, mut server_kills) = (Vec::new(), 0);
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                std::thread::sleep(Duration::from_micros(500 + rng % 3000));
                // The fork server is this process's only child (a killed one is reaped when
                // the next start finds it dead); its children, the spare and those started.
                let Some(server) = children_of(my_pid()).into_iter().find(|&p| !has_ended(p))
                else {
                    continue;
                };
                let victims = children_of(server);
                let victim = if rng.is_multiple_of(25) {
                    server_kills += 1;
                    server
                } else if victims.is_empty() {
                    continue;
                } else {
                    victims[(rng >> 8) as usize % victims.len()]
                };
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(victim as i32, libc::SIGKILL) };
                killed.push(victim);
            }
            (killed, server_kills)
        })
    };
    let starters: Vec<_> = (0..3u64)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut values, mut killed, mut failed) = (0, 0, 0);
                for i in 0..100u64 {
                    let x = t * 1000 + i;
                    let mut p = Process::new(square, (x,)).start_method(m);
                    match p.start() {
                        Ok(()) => {}
                        // Its child killed as it started, twice (this test kills the server's
                        // children too): nothing ran, and it says so.
                        Err(e) if e.to_string().contains("nothing ran") => continue,
                        Err(_) => {
                            failed += 1;
                            continue;
                        }
                    }
                    match p.join_timeout(PATIENCE) {
                        Ok(v) => {
                            assert_eq!(v, x * x);
                            values += 1;
                        }
                        Err(e) => {
                            assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e:?}");
                            let how = p.exitcode();
                            assert!(matches!(how, None | Some(-9)), "{e:?} {how:?}");
                            killed += 1;
                        }
                    }
                }
                (values, killed, failed)
            })
        })
        .collect();
    let results: Vec<_> = starters.into_iter().map(|s| s.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (killed, server_kills) = killer.join().unwrap();
    // A spare killed just now may not have closed its sockets yet: a start would take it.
    wait_until("every process killed has ended", || {
        killed.iter().all(|&p| has_ended(p))
    });
    let failed: usize = results.iter().map(|r| r.2).sum();
    assert!(
        failed <= 2 * server_kills,
        "{failed} starts failed with {server_kills} servers killed ({results:?})"
    );
    assert!(
        results.iter().map(|r| r.0).sum::<usize>() > 0,
        "{results:?}"
    );
    eprintln!(
        "{} kills ({server_kills} servers): {results:?}",
        killed.len()
    );
    for x in 0..10u64 {
        let mut p = Process::new(square, (x,)).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), x * x);
    }
}

/// The `Size:` and `Rss:` in KiB of this executable's code mapping, in this process.
fn code_mapped() -> (u64, u64) {
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut lines = smaps.lines();
    let header = lines
        .find(|l| l.ends_with(exe) && l.split_ascii_whitespace().nth(1) == Some("r-xp"))
        .unwrap();
    let mut kib = |name: &str| -> u64 {
        let line = lines.find(|l| l.starts_with(name)).expect(header);
        line[name.len()..]
            .split_ascii_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (kib("Size:"), kib("Rss:"))
}

/// Whether no task waits for a CPU now: the runnable tasks in `/proc/loadavg` are no more than
/// the CPUs (as a fork server's spare judges it before it maps the code in).
fn a_cpu_is_free() -> bool {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap();
    let runnable: usize = load
        .split_ascii_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(r, _)| r.parse().ok())
        .unwrap();
    runnable <= std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A fork server's spare left unasked for a while maps the code in, so the child it becomes
/// runs its target without faulting the executable's code in a page at a time.
#[test]
fn a_rested_spare_runs_its_target_with_the_code_mapped_in() {
    // Before Linux 5.14 (no MADV_POPULATE_READ) a spare maps nothing in; nor, but as root,
    // code of a file the user does not own (or could not write: not checked here, as an
    // executable being run cannot be opened for writing).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0u32);
    let exe = std::env::current_exe().unwrap();
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let owned = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&exe).unwrap()) == euid;
    if !alone() || (next(), next()) < (5, 14) || !(owned || euid == 0) {
        return;
    }
    let m = StartMethod::Forkserver;
    let run = || {
        let mut p = Process::new(code_mapped, ()).start_method(m);
        p.start().unwrap();
        p.join_timeout(PATIENCE).unwrap()
    };
    run(); // the server started; its next spare is forked after this start
    // Each try gives a fresh spare a rest (a millisecond, then the time to map some megabytes
    // in). A child of a spare that did not map the code in has only what it ran, a page at a
    // time. A spare maps nothing while every CPU is taken (other tests running): a try counts
    // only if a CPU was free at 27 of the 30 looks during its rest (the spare looks several
    // times), and the test fails after three such tries; a machine never that quiet is said,
    // not failed.
    let deadline = Instant::now() + 3 * PATIENCE;
    let mut quiet_misses = Vec::new();
    loop {
        // All of the executable in the page cache: only cached pages are mapped in.
        std::fs::read(&exe).unwrap();
        let mut free = 0;
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(10));
            free += usize::from(a_cpu_is_free());
        }
        let quiet = free >= 27;
        let (size, rss) = run();
        if rss == size {
            return;
        }
        if quiet {
            quiet_misses.push((rss, size));
        }
        assert!(
            quiet_misses.len() < 3,
            "a quiet machine, yet only {quiet_misses:?} (KiB mapped, of) of the code"
        );
        if Instant::now() >= deadline {
            eprintln!("the machine was never quiet for long: nothing checked");
            return;
        }
    }
}

/// A fork server child is tied to its parent by the kernel (a signal on the liveness pipe's
/// hang-up), not by a watcher thread, which would cost a large share of its start.
#[test]
fn a_fork_server_child_needs_no_watcher_thread() {
    let mut p = Process::new(threads, ()).start_method(StartMethod::Forkserver);
    p.start().unwrap();
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 1);
}

/// This process's fork server, started by a first start (and its join), once it has lent
/// its next spare.
fn a_fork_server_with_its_spare_lent() -> u32 {
    let mut first = Process::new(my_parent, ()).start_method(StartMethod::Forkserver);
    first.start().unwrap();
    let server = first.join_timeout(PATIENCE).unwrap();
    wait_until("the server has lent its next spare", || {
        lent_a_spare(server)
    });
    server
}

/// This process's fork server (found as a first child's parent), stopped once it has lent this
/// process its next spare: it reads no request until it is killed, and then never will. The
/// lent spare starts without it: the second value is that start, returning its parent (the
/// server), to be joined once the server is killed (a stopped server reports no exit).
fn stopped_fork_server() -> (u32, Process<u32>) {
    let m = StartMethod::Forkserver;
    let server = a_fork_server_with_its_spare_lent();
    assert_ne!(server, std::process::id());
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGSTOP) }, 0);
    let ran = Event::new().unwrap();
    let mut lent = Process::new(my_parent_then_set, (ran.clone(),)).start_method(m);
    lent.start().unwrap();
    // Its parent read before the caller kills the server (after which it is init's child).
    ran.wait_timeout(PATIENCE)
        .expect("the lent spare never ran its target");
    (server, lent)
}

fn my_parent_then_set(ran: Event) -> u32 {
    let parent = my_parent();
    ran.set();
    parent
}

/// Whether `pid` is on its way out (`PF_EXITING` in its flags) or gone.
fn is_exiting(pid: u32) -> bool {
    const PF_EXITING: u64 = 0x4;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    // After the name: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags: u64 = after
        .split_whitespace()
        .nth(6)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    flags & PF_EXITING != 0 || has_ended(pid)
}

/// Whether fork server `server` has a spare and has lent it to us: it forks a spare, sends it
/// to its client, and only then waits in poll(2) again.
fn lent_a_spare(server: u32) -> bool {
    !children_of(server).is_empty() && waits_in_poll(&format!("/proc/{server}/syscall"))
}

/// Whether the thread whose `/proc/.../syscall` file is `syscall` waits in poll(2).
fn waits_in_poll(syscall: &str) -> bool {
    let now = std::fs::read_to_string(syscall).unwrap_or_default();
    // poll (7) or ppoll (271) on x86_64, ppoll (73) on aarch64.
    matches!(now.split(' ').next().unwrap_or(""), "7" | "271" | "73")
}

/// Whether thread `tid` of this process waits in poll(2).
fn thread_waits_in_poll(tid: i32) -> bool {
    waits_in_poll(&format!("/proc/self/task/{tid}/syscall"))
}

/// A server killed with a request of ours queued, before it could fork: nothing ran, so the
/// start goes to a fresh server instead of failing.
#[test]
fn a_request_the_killed_server_never_served_goes_to_a_fresh_one() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let (server, mut lent) = stopped_fork_server();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let starter = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let mut p = Process::new(my_parent, ()).start_method(m);
        p.start().map(|()| p.join_timeout(PATIENCE))
    });
    let tid = tid_rx.recv_timeout(PATIENCE).unwrap();
    wait_until("the start waits for the stopped server", || {
        thread_waits_in_poll(tid)
    });
    kill_and_await(server);
    let new_server = starter.join().unwrap().unwrap().unwrap();
    assert_ne!(new_server, server);
    assert_eq!(parent_pid_of(new_server), std::process::id());
    assert_eq!(
        lent.join_timeout(PATIENCE).unwrap(),
        server,
        "ran in the lent spare"
    );
}

const EXIT_DRIVER: &str = "MPROC_TEST_EXIT_DRIVER";

fn write_after(path: String, ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, b"done").unwrap();
}

/// Python's exit behaviour. A program that ends normally (its `main` returns, or it calls
/// `std::process::exit`) first waits for its non-daemonic children, joined or not, handle
/// dropped or not, and terminates its daemonic ones. The program is a copy of this test binary
/// whose test starts the two children and leaves.
#[test]
fn at_exit_non_daemonic_children_are_waited_for_and_daemonic_ones_terminated() {
    const NAME: &str =
        "lifecycle::at_exit_non_daemonic_children_are_waited_for_and_daemonic_ones_terminated";
    if let Ok(how) = std::env::var(EXIT_DRIVER) {
        let parts: Vec<&str> = how.split('|').collect();
        let m = match parts[0] {
            "fork" => StartMethod::Fork,
            "spawn" => StartMethod::Spawn,
            _ => StartMethod::Forkserver,
        };
        let dir = parts[1];
        let mut kept = Process::new(write_after, (format!("{dir}/kept"), 400)).start_method(m);
        kept.start().unwrap();
        drop(kept); // never joined
        let mut daemon = Process::new(write_after, (format!("{dir}/daemon"), 400))
            .start_method(m)
            .daemon(true);
        daemon.start().unwrap();
        if parts[2] == "exit" {
            std::process::exit(0);
        }
        return;
    }
    for m in StartMethod::ALL {
        for ending in ["return", "exit"] {
            let dir = std::env::temp_dir()
                .join(format!("mproc-at-exit-{}-{m}-{ending}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let began = Instant::now();
            let mut driver = Command::new(std::env::current_exe().unwrap())
                .args([NAME, "--exact", "--test-threads=1"])
                .env(EXIT_DRIVER, format!("{m}|{}|{ending}", dir.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let status = loop {
                if let Some(status) = driver.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    began.elapsed() < PATIENCE,
                    "{m} {ending}: the program never ended"
                );
                std::thread::sleep(Duration::from_millis(10));
            };
            let took = began.elapsed();
            assert!(status.success(), "{m} {ending}: {status:?}");
            assert!(
                dir.join("kept").exists(),
                "{m} {ending}: the program ended ({took:?}) before its non-daemonic child"
            );
            std::thread::sleep(Duration::from_millis(700));
            assert!(
                !dir.join("daemon").exists(),
                "{m} {ending}: the daemonic child was not terminated"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

/// A start that takes the lent spare alone (not within a burst of starts) tells the server only
/// later; a wait for the child (`is_alive`) tells it, and the server forks the next spare then,
/// while the child still runs (nothing else would tell it until the child ends). The next start
/// runs in that spare.
#[test]
fn a_wait_for_a_child_started_in_the_lent_spare_tells_the_server() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let server = a_fork_server_with_its_spare_lent();
    let live = || live_children_of(server);
    wait_until("the first child is gone", || live().len() == 1);
    let spare = live()[0];
    // Not a burst: the last start through the server was long before (at least this).
    std::thread::sleep(Duration::from_millis(5));
    let go = Event::new().unwrap();
    let mut held = Process::new(wait_for, (go.clone(),)).start_method(m);
    held.start().unwrap();
    assert_eq!(held.pid(), Some(spare), "the start took the lent spare");
    assert!(held.is_alive());
    wait_until("a new spare beside the running child", || {
        live().iter().any(|&c| c != spare)
    });
    let next_spare = *live().iter().find(|&&c| c != spare).unwrap();
    wait_until("the new spare is lent", || lent_a_spare(server));
    std::thread::sleep(Duration::from_millis(5));
    let mut next = Process::new(my_pid, ()).start_method(m);
    next.start().unwrap();
    assert_eq!(next.join_timeout(PATIENCE).unwrap(), next_spare);
    go.set();
    assert_eq!(held.join_timeout(PATIENCE).unwrap(), 1);
}

fn wait_for(go: Event) -> u32 {
    go.wait_timeout(PATIENCE).unwrap();
    1
}

/// A pool's worker retired (`max_tasks_per_child`) is replaced in the fork server's lent spare,
/// from the pool's thread; the take is told (before that thread sleeps, or as it reaps the
/// retired worker), and the server forks the next spare while the new worker waits for tasks.
#[test]
fn a_pool_tells_the_server_of_a_replacement_worker_started_in_the_lent_spare() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(2)
        .start_method(m)
        .build()
        .unwrap();
    let first = pool.apply(my_pid, ()).unwrap();
    let server = parent_pid_of(first);
    let live = || live_children_of(server);
    wait_until("a spare beside the worker, lent", || {
        live().len() == 2 && lent_a_spare(server)
    });
    let spare = *live().iter().find(|&&c| c != first).unwrap();
    // Not a burst: the last start through the server was long before (at least this).
    std::thread::sleep(Duration::from_millis(5));
    // The worker's second task, its last: it retires, and the pool replaces it.
    assert_eq!(pool.apply(my_pid, ()).unwrap(), first);
    assert_eq!(
        pool.apply(my_pid, ()).unwrap(),
        spare,
        "the replacement ran in the lent spare"
    );
    wait_until("a new spare beside the replacement worker", || {
        live().iter().any(|&c| c != spare && c != first)
    });
}

/// A child started in the lent spare while another thread already waits in a `join`: that
/// join told the server what it had to tell before this start, so the take is told once the
/// joined child has ended (with the kits made then), and the server forks the next spare while
/// the new child still runs (nothing else would tell it until that child ends).
#[test]
fn a_take_made_while_another_thread_joins_is_told_when_that_child_ends() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let go = Event::new().unwrap();
    let mut joined = Process::new(wait_for, (go.clone(),)).start_method(m);
    joined.start().unwrap();
    let server = parent_pid_of(joined.pid().unwrap());
    let live = || live_children_of(server);
    assert!(joined.is_alive());
    wait_until("a spare beside the first child, lent", || {
        live().len() == 2 && lent_a_spare(server)
    });
    let spare = *live().iter().find(|&&c| Some(c) != joined.pid()).unwrap();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let joiner = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        joined.join_timeout(PATIENCE)
    });
    let tid = tid_rx.recv_timeout(PATIENCE).unwrap();
    wait_until("the other thread waits in its join", || {
        thread_waits_in_poll(tid)
    });
    // Not a burst: the last start through the server was long before (at least this).
    std::thread::sleep(Duration::from_millis(5));
    let go2 = Event::new().unwrap();
    let mut held = Process::new(wait_for, (go2.clone(),)).start_method(m);
    held.start().unwrap();
    assert_eq!(held.pid(), Some(spare), "the start took the lent spare");
    go.set();
    assert_eq!(joiner.join().unwrap().unwrap(), 1);
    wait_until("a new spare beside the running child", || {
        live().iter().any(|&c| c != spare)
    });
    go2.set();
    assert_eq!(held.join_timeout(PATIENCE).unwrap(), 1);
}

/// A pool's worker started in the fork server's lent spare (nothing joined or reaped after):
/// the pool's thread tells the server before it sleeps, and the server forks the next spare
/// while the worker waits for tasks (nothing else would tell it).
#[test]
fn a_pool_tells_the_server_of_its_worker_started_in_the_lent_spare() {
    if !alone() {
        return;
    }
    let m = StartMethod::Forkserver;
    let server = a_fork_server_with_its_spare_lent();
    let live = || live_children_of(server);
    wait_until("one spare, lent", || {
        live().len() == 1 && lent_a_spare(server)
    });
    let spare = live()[0];
    // Not a burst: the last start through the server was long before (at least this).
    std::thread::sleep(Duration::from_millis(5));
    let pool = Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    assert_eq!(
        pool.apply(my_pid, ()).unwrap(),
        spare,
        "the worker ran in the lent spare"
    );
    wait_until("a new spare beside the worker", || {
        live().iter().any(|&c| c != spare)
    });
}
