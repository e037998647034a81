//! No orphans, no zombies, no leaked descriptors.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproc::{Process, StartMethod};

use crate::common::{PATIENCE, alone, has_ended, open_fds, sleep_ms};

const ORPHAN_DRIVER: &str = "MPROC_TEST_ORPHAN_DRIVER";

/// Run as a separate copy of this test binary: starts two long sleepers with the method named
/// in the environment, prints their pids, and waits to be killed.
fn drive_orphans(method: &str) {
    let m = match method {
        "fork" => StartMethod::Fork,
        "spawn" => StartMethod::Spawn,
        _ => StartMethod::Forkserver,
    };
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit(')').next().unwrap();
    after.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn parent_death_by_sigkill_takes_children_and_fork_server_within_a_second() {
    if let Ok(method) = std::env::var(ORPHAN_DRIVER) {
        return drive_orphans(&method);
    }
    for method in ["fork", "spawn", "forkserver"] {
        let mut driver = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lifecycle::parent_death_by_sigkill_takes_children_and_fork_server_within_a_second",
                "--nocapture",
            ])
            .env(ORPHAN_DRIVER, method)
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
            assert!(
                Instant::now() < deadline,
                "{method}: the driver never printed its children"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let line = reader
            .join()
            .unwrap()
            .expect("the driver printed its children");
        let mut pids: Vec<u32> = line.split(' ').map(|p| p.parse().unwrap()).collect();
        if method == "forkserver" {
            let server = parent_pid_of(pids[0]);
            assert_ne!(server, driver.id(), "forkserver children are the server's");
            pids.push(server);
        }
        driver.kill().unwrap();
        driver.wait().unwrap();
        let killed = Instant::now();
        while !pids.iter().all(|&p| has_ended(p)) {
            assert!(
                killed.elapsed() < Duration::from_secs(1),
                "{method}: still alive a second after their parent was killed: {:?}",
                pids.iter().filter(|&&p| !has_ended(p)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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
            if let Ok(s) = std::fs::read_to_string(&path) {
                if !s.is_empty() {
                    break s.split(' ').map(|p| p.parse().unwrap()).collect();
                }
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
    let before = open_fds();
    for _ in 0..1000 {
        let mut p = Process::new(nothing, ()).start_method(m);
        p.start().unwrap();
        p.join_timeout(PATIENCE).unwrap();
    }
    let after = open_fds();
    assert_eq!(
        before, after,
        "descriptors before and after 1000 start+join cycles"
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

per_start_method!(
    no_descriptor_leaks_over_1000_cycles,
    children_hold_only_the_descriptors_meant_for_them,
    a_forked_grandchild_keeps_its_parents_files,
);
