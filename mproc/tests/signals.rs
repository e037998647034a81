//! Ctrl-C and SIGTERM, sent for real to a process group made for each test (the program is a
//! copy of this test binary, running one driver test). Pool workers share the program's
//! process group, so a terminal's Ctrl-C (and a service manager's SIGTERM to the group)
//! reaches them too:
//! - with no handler in the program, it ends at once, silently, leaving no process behind
//!   (no worker respawned while it dies, no orphan);
//! - with a handler (the `ctrlc` crate here), the workers are untouched: the pool works on
//!   until the program closes it.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mproc::{Pool, StartMethod};

use crate::common::wait_for;

const DRIVER: &str = "MPROC_TEST_SIGNALS_DRIVER";

fn slow(n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    n
}

fn square(n: u64) -> u64 {
    n * n
}

/// The driver's start method, from its environment.
fn driver_method() -> Option<StartMethod> {
    let m = std::env::var(DRIVER).ok()?;
    StartMethod::ALL.into_iter().find(|s| s.to_string() == m)
}

/// A pool busy with a long map; says `ready` once its workers run.
fn busy_pool(m: StartMethod) -> (Pool, mproc::Imap<'static, u64>) {
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let it = pool.chunksize(1).imap(slow, 0..1_000_000).unwrap();
    (pool, it)
}

#[test]
fn driver_without_a_handler() {
    let Some(m) = driver_method() else { return };
    let (_pool, mut it) = busy_pool(m);
    it.next().unwrap().unwrap();
    println!("ready");
    for r in it {
        r.unwrap();
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

#[test]
fn driver_with_a_handler() {
    let Some(m) = driver_method() else { return };
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst)).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let mut it = pool.chunksize(1).imap(slow, 0..150).unwrap();
    it.next().unwrap().unwrap();
    println!("ready");
    let mut done = 1;
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The test sends SIGTERM after SIGINT: both are past once it is.
    std::thread::sleep(Duration::from_millis(300));
    println!("stopped at the signal");
    // The pool works on: the rest of the map, then another task.
    for r in it {
        r.unwrap();
        done += 1;
    }
    println!("done {done}");
    println!("square {}", pool.apply(square, (7,)).unwrap());
    println!("restarts {}", pool.stats().restarts.total());
    pool.close();
    pool.join().unwrap();
    // Children started after the signals never get them: a fork server's spare child,
    // forked ahead, was waiting (its signals blocked) while they came.
    for _ in 0..3 {
        let mut p = mproc::Process::new(square, (3,)).start_method(m);
        p.start().unwrap();
        assert_eq!(p.join_timeout(Duration::from_secs(20)).unwrap(), 9);
    }
    let late = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    println!("late square {}", late.apply(square, (5,)).unwrap());
}

/// Runs `driver` under method `m` in a process group of its own; returns the child once it
/// said `ready`, with the lines it printed so far and the rest to come.
fn start_driver(driver: &str, m: StartMethod) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &format!("signals::{driver}"), "--nocapture"])
        .args(["--test-threads=1"])
        .env(DRIVER, m.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            // libtest writes "test <name> ... " before it, on the same line.
            Ok(line) if line.ends_with("ready") => return (child, rx),
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("the driver never said ready");
            }
        }
    }
}

/// What the driver wrote on stderr (once it has ended).
fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

fn signal_group(child: &Child, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group the child leads.
    assert_eq!(unsafe { libc::kill(-(child.id() as i32), sig) }, 0);
}

/// The live processes of process group `pgid` (zombies not counted).
fn group_members(pgid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // state is field 3, pgrp field 5: the 1st and 3rd after the command.
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            found.push(pid);
        }
    }
    found
}

fn ctrl_c_without_a_handler_ends_everything_quietly(m: StartMethod) {
    let (mut child, _lines) = start_driver("driver_without_a_handler", m);
    let pgid = child.id();
    let sent = Instant::now();
    signal_group(&child, libc::SIGINT);
    let status = wait_for(&mut child, Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    let stderr = stderr_of(&mut child);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("mproc"), "{stderr}");
    // Nothing of the program is left: no worker, no replacement, no fork server.
    let until = Instant::now() + Duration::from_millis(1500);
    loop {
        let left = group_members(pgid);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn with_a_handler_the_pool_works_on(m: StartMethod) {
    let (mut child, lines) = start_driver("driver_with_a_handler", m);
    signal_group(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(100));
    signal_group(&child, libc::SIGTERM);
    let status = wait_for(&mut child, Duration::from_secs(20));
    let said: Vec<String> = lines.try_iter().collect();
    let stderr = stderr_of(&mut child);
    assert!(status.success(), "{status:?}: {said:?}\n{stderr}");
    assert!(
        said.contains(&"stopped at the signal".to_string()),
        "{said:?}"
    );
    assert!(
        said.contains(&"done 150".to_string()),
        "every item: {said:?}"
    );
    assert!(said.contains(&"square 49".to_string()), "{said:?}");
    assert!(
        said.contains(&"restarts 0".to_string()),
        "no worker died: {said:?}"
    );
    assert!(
        said.contains(&"late square 25".to_string()),
        "children started after the signals: {said:?}\n{stderr}"
    );
}

per_start_method!(
    ctrl_c_without_a_handler_ends_everything_quietly,
    with_a_handler_the_pool_works_on,
);
