//! Chaos for `Process` control: odd exits, misuse, shared handles, signals, parents that
//! leave while their children run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproc::{ErrorKind, Process, StartMethod};

use crate::common::{PATIENCE, has_ended, start, wait_for};

fn exit_with(code: i32) -> u8 {
    std::process::exit(code)
}

/// `exit(256)` is 0 to the kernel, `exit(-1)` 255: the code seen is the kernel's.
fn odd_exit_codes_are_the_kernels(m: StartMethod) {
    for (code, seen) in [(0, 0), (1, 1), (255, 255), (256, 0), (-1, 255), (257, 1)] {
        let mut p = start(m, exit_with, (code,));
        let e = p.join_timeout(PATIENCE).unwrap_err();
        let ErrorKind::WorkerLost(lost) = e.kind() else {
            panic!("{code}: {e:?}")
        };
        assert_eq!((lost.signal, lost.exit_code), (None, Some(seen)), "{code}");
        assert_eq!(p.exitcode(), Some(seen), "{code}");
        assert!(!p.is_alive());
    }
}

fn sleepy() {
    std::thread::sleep(Duration::from_secs(30));
}

fn signalling_at_every_stage(m: StartMethod) {
    let p = Process::new(sleepy, ()).start_method(m);
    for e in [p.terminate().unwrap_err(), p.kill().unwrap_err()] {
        assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e:?}");
    }
    assert_eq!(p.exitcode(), None);
    let mut p = p;
    p.start().unwrap();
    p.terminate().unwrap();
    p.terminate().unwrap();
    p.kill().unwrap();
    assert!(p.join_timeout(PATIENCE).is_err());
    let code = p.exitcode();
    assert!(code == Some(-15) || code == Some(-9), "{code:?}");
    // Ended: signals do nothing, and the code stays.
    p.terminate().unwrap();
    p.kill().unwrap();
    assert_eq!(p.exitcode(), code);
    assert!(p.start().is_err());
}

fn quick() -> u8 {
    5
}

/// A signal sent after the child ended but before anyone looked is nothing (a fork server's
/// child may have been reaped by the server already).
fn signalling_an_ended_child_that_nobody_looked_at(m: StartMethod) {
    for _ in 0..20 {
        let mut p = start(m, quick, ());
        let pid = p.pid().unwrap();
        let deadline = Instant::now() + PATIENCE;
        while !has_ended(pid) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(1));
        }
        p.terminate().unwrap();
        p.kill().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), 5);
        assert_eq!(p.exitcode(), Some(0));
    }
}

fn deaf_to_sigterm(ready: String) {
    // SAFETY: ignoring SIGTERM has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    std::fs::write(&ready, "x").unwrap();
    std::thread::sleep(Duration::from_secs(30));
}

fn a_target_that_ignores_sigterm(m: StartMethod) {
    let ready = std::env::temp_dir().join(format!("mproc-chaos-deaf-{}-{m}", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let mut p = start(m, deaf_to_sigterm, (ready.to_string_lossy().into_owned(),));
    crate::common::wait_until("it ignores SIGTERM", || ready.exists());
    let _ = std::fs::remove_file(&ready);
    p.terminate().unwrap();
    let e = p.join_timeout(Duration::from_millis(200)).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout);
    assert!(p.is_alive());
    assert_eq!(p.exitcode(), None);
    p.kill().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WorkerLost(l) if l.signal == Some(9)),
        "{e:?}"
    );
    assert_eq!(p.exitcode(), Some(-9));
}

fn big(n: usize) -> Vec<u8> {
    crate::common::pattern(7, n)
}

/// Joined with tiny timeouts over and over while a large value arrives in pieces.
fn join_in_tiny_slices_while_a_large_value_arrives(m: StartMethod) {
    let n = 6 << 20;
    let mut p = start(m, big, (n,));
    let deadline = Instant::now() + PATIENCE;
    let mut tries = 0u64;
    let got = loop {
        tries += 1;
        match p.join_timeout(Duration::from_micros(tries % 3)) {
            Ok(v) => break v,
            Err(e) if *e.kind() == ErrorKind::Timeout => {}
            Err(e) => panic!("after {tries} tries: {e:?}"),
        }
        if tries.is_multiple_of(5) {
            let _ = p.is_alive();
            let _ = p.exitcode();
        }
        assert!(Instant::now() < deadline);
    };
    assert!(got == crate::common::pattern(7, n));
    assert_eq!(p.exitcode(), Some(0));
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Threads query and signal one `Process` at once while it ends on its own or is killed.
fn one_process_many_threads(m: StartMethod) {
    for round in 0..6u64 {
        let mut p = start(m, nap, (round * 3,));
        std::thread::scope(|s| {
            let p = &p;
            for t in 0..4 {
                s.spawn(move || {
                    let until = Instant::now() + Duration::from_millis(60);
                    while Instant::now() < until {
                        let _ = p.is_alive();
                        let _ = p.exitcode();
                        if t == 3 && round % 2 == 1 {
                            p.kill().unwrap();
                        }
                        if t == 2 {
                            p.terminate().unwrap();
                        }
                    }
                });
            }
        });
        let r = p.join_timeout(PATIENCE);
        let code = p.exitcode();
        match r {
            Ok(ms) => {
                assert_eq!(ms, round * 3);
                // A signal may land after the value was sent, before the child's `_exit`.
                assert!(matches!(code, Some(0 | -15 | -9)), "{code:?}");
            }
            Err(e) => {
                assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e:?}");
                assert!(code == Some(-15) || code == Some(-9), "{code:?}");
            }
        }
        assert!(!p.is_alive());
    }
}

struct Bomb;
impl Drop for Bomb {
    fn drop(&mut self) {
        panic!("second panic, while unwinding");
    }
}

fn panic_while_panicking() {
    let _b = Bomb;
    panic!("first panic");
}

fn panic_any_number() {
    std::panic::panic_any(42u32);
}

fn abort_on_double_panic_and_odd_payloads(m: StartMethod) {
    let mut p = start(m, panic_while_panicking, ());
    let e = p.join_timeout(PATIENCE).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WorkerLost(l) if l.signal == Some(libc::SIGABRT)),
        "{e:?}"
    );
    assert_eq!(p.exitcode(), Some(-libc::SIGABRT));
    let mut p = start(m, panic_any_number, ());
    let e = p.join_timeout(PATIENCE).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Panicked(_)), "{e:?}");
    assert_eq!(p.exitcode(), Some(1));
}

extern "C" fn cannot_unwind() {
    panic!("out of an extern C function");
}

fn panic_through_extern_c() {
    cannot_unwind();
}

/// What a child that aborts on a panic wrote on its stderr, and how it ended.
fn stderr_of_an_abort<F: mproc::Target<(), Output = ()>>(
    m: StartMethod,
    target: F,
    tag: &str,
) -> (String, Option<i32>) {
    let path = std::env::temp_dir().join(format!(
        "mproc-chaos-abort-{}-{m}-{tag}",
        std::process::id()
    ));
    let file = std::fs::File::create(&path).unwrap();
    let mut p = Process::new(target, ()).start_method(m).stderr(file);
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WorkerLost(l) if l.signal == Some(libc::SIGABRT)),
        "{e:?}"
    );
    let err = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    (err, p.exitcode())
}

/// A panic that aborts the child (one in a destructor while unwinding, one out of an
/// `extern "C"` function) reaches the parent only as SIGABRT: the child's stderr says what
/// panicked, as it would outside mproc, instead of only "aborting".
fn a_panic_that_aborts_says_what_panicked(m: StartMethod) {
    let (err, code) = stderr_of_an_abort(m, panic_while_panicking, "double");
    assert_eq!(code, Some(-libc::SIGABRT));
    assert!(err.contains("first panic"), "{err}");
    assert!(err.contains("second panic, while unwinding"), "{err}");
    let (err, _) = stderr_of_an_abort(m, panic_through_extern_c, "extern");
    assert!(err.contains("out of an extern C function"), "{err}");
}

fn close_everything() -> u8 {
    // SAFETY: close_range(2) on descriptors this process owns; nothing uses them after.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    std::thread::sleep(Duration::from_millis(50));
    9
}

fn dup_null_over_stdio() -> u8 {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    println!("into the void");
    11
}

/// A target that closes all its descriptors cannot report: a clear error, no hang. One that
/// points its standard streams elsewhere returns as usual.
fn descriptor_vandalism(m: StartMethod) {
    let mut p = start(m, close_everything, ());
    let e = p.join_timeout(PATIENCE).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::WorkerLost(_)), "{e:?}");
    assert!(p.exitcode().is_some());
    let mut p = start(m, dup_null_over_stdio, ());
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 11);
}

fn fork_a_lingering_grandchild() -> u32 {
    // SAFETY: the forked child only sleeps and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls only.
        unsafe {
            libc::sleep(3);
            libc::_exit(0);
        }
    }
    pid as u32
}

/// A grandchild that holds the child's control socket open does not delay the join.
fn a_grandchild_holding_the_socket_does_not_delay_join(m: StartMethod) {
    let t = Instant::now();
    let mut p = start(m, fork_a_lingering_grandchild, ());
    let grandchild = p.join_timeout(PATIENCE).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // SAFETY: kill(2) of the grandchild this test made.
    unsafe { libc::kill(grandchild as i32, libc::SIGKILL) };
}

per_start_method!(
    odd_exit_codes_are_the_kernels,
    signalling_at_every_stage,
    signalling_an_ended_child_that_nobody_looked_at,
    a_target_that_ignores_sigterm,
    join_in_tiny_slices_while_a_large_value_arrives,
    one_process_many_threads,
    abort_on_double_panic_and_odd_payloads,
    a_panic_that_aborts_says_what_panicked,
    descriptor_vandalism,
    a_grandchild_holding_the_socket_does_not_delay_join,
);

// ---- parents that leave while their children run ------------------------------------------

const EXIT_DRIVER: &str = "MPROC_CHAOS_EXIT_DRIVER";
const MARK: &str = "MPROC_CHAOS_MARK";

fn method_named(name: &str) -> StartMethod {
    match name {
        "fork" => StartMethod::Fork,
        "spawn" => StartMethod::Spawn,
        _ => StartMethod::Forkserver,
    }
}

fn nap_and_note(ms: u64, path: String) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, "done").unwrap();
}

/// In a copy of this binary: starts a non-daemonic napper, a daemonic sleeper, and a daemonic
/// one deaf to SIGTERM, prints their pids, and leaves with `exit(0)`.
fn drive_exit(spec: &str) {
    let (method, path) = spec.split_once(':').unwrap();
    let m = method_named(method);
    let mut napper = Process::new(nap_and_note, (400, path.to_owned())).start_method(m);
    let mut daemon = Process::new(sleepy, ()).start_method(m).daemon(true);
    let deaf_ready = format!("{path}.deaf");
    let mut deaf = Process::new(deaf_to_sigterm, (deaf_ready.clone(),))
        .start_method(m)
        .daemon(true);
    for p in [&mut napper, &mut daemon] {
        p.start().unwrap();
    }
    deaf.start().unwrap();
    while !std::path::Path::new(&deaf_ready).exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = std::fs::remove_file(&deaf_ready);
    println!(
        "PIDS {} {} {}",
        napper.pid().unwrap(),
        daemon.pid().unwrap(),
        deaf.pid().unwrap()
    );
    std::process::exit(0);
}

/// Processes (not zombies) whose environment holds `MARK=value`.
fn marked(value: &str) -> Vec<u32> {
    let needle = format!("{MARK}={value}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) && !has_ended(pid) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn a_parent_that_exits_waits_for_its_children_and_leaves_no_daemon_behind() {
    if let Ok(spec) = std::env::var(EXIT_DRIVER) {
        return drive_exit(&spec);
    }
    for method in ["fork", "spawn", "forkserver"] {
        let note =
            std::env::temp_dir().join(format!("mproc-chaos-exit-{}-{method}", std::process::id()));
        let _ = std::fs::remove_file(&note);
        let mark = format!("exit-{}-{method}", std::process::id());
        let mut driver = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "chaos_process::a_parent_that_exits_waits_for_its_children_and_leaves_no_daemon_behind",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(EXIT_DRIVER, format!("{method}:{}", note.display()))
            .env(MARK, &mark)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = driver.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| l.split_once("PIDS ").map(|(_, p)| p.to_owned()))
        });
        let status = wait_for(&mut driver, PATIENCE);
        let ended = Instant::now();
        let line = reader.join().unwrap().expect("the driver's pids");
        let pids: Vec<u32> = line.split(' ').map(|p| p.parse().unwrap()).collect();
        assert!(status.success(), "{method}: {status:?}");
        assert_eq!(
            std::fs::read_to_string(&note).ok().as_deref(),
            Some("done"),
            "{method}: the non-daemonic child was not waited for"
        );
        let _ = std::fs::remove_file(&note);
        assert!(has_ended(pids[0]));
        // The daemonic ones: terminated, or (deaf) gone with their parent's liveness pipe.
        while !(pids.iter().all(|&p| has_ended(p)) && marked(&mark).is_empty()) {
            assert!(
                ended.elapsed() < Duration::from_secs(2),
                "{method}: outlived their parent: {:?}",
                marked(&mark)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

const STORM_DRIVER: &str = "MPROC_CHAOS_STORM_DRIVER";

fn storm_child(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// In a copy of this binary: four threads start children as fast as they can until killed.
fn drive_storm(method: &str) {
    let m = method_named(method);
    // The fork server (and its first spare) first, so it carries the mark.
    let mut first = Process::new(storm_child, (0,)).start_method(m);
    first.start().unwrap();
    first.join().unwrap();
    println!("PIDS ready");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let mut kept = Vec::new();
                loop {
                    let mut p = Process::new(storm_child, (10_000 + t,))
                        .start_method(m)
                        .daemon(t % 2 == 0);
                    p.start().unwrap();
                    kept.push(p);
                    if kept.len() > 6 {
                        kept.remove(0).kill().unwrap();
                    }
                }
            });
        }
    });
}

/// A parent killed by SIGTERM or SIGINT while four threads start children: nothing it
/// started (in flight or not, nor its fork server) outlives it by more than a second.
#[test]
fn a_parent_signalled_while_starting_children_from_many_threads_leaves_nothing() {
    if let Ok(method) = std::env::var(STORM_DRIVER) {
        return drive_storm(&method);
    }
    for (i, method) in ["fork", "spawn", "forkserver"].into_iter().enumerate() {
        let sig = if i % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        let mark = format!("storm-{}-{method}", std::process::id());
        let mut driver = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "chaos_process::a_parent_signalled_while_starting_children_from_many_threads_leaves_nothing",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(STORM_DRIVER, method)
            .env(MARK, &mark)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = driver.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        loop {
            match rx.recv_timeout(PATIENCE) {
                Ok(l) if l.contains("PIDS ready") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = driver.kill();
                    panic!("{method}: the driver never got ready");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) of the driver this test started.
        assert_eq!(unsafe { libc::kill(driver.id() as i32, sig) }, 0);
        let status = wait_for(&mut driver, PATIENCE);
        let died = Instant::now();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(sig), "{method}: {status:?}");
        loop {
            let left = marked(&mark);
            if left.is_empty() {
                break;
            }
            if died.elapsed() > Duration::from_secs(1) {
                for &p in &left {
                    // SAFETY: kill(2) of a process this test's driver made.
                    unsafe { libc::kill(p as i32, libc::SIGKILL) };
                }
                panic!("{method}: outlived their parent by a second: {left:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
