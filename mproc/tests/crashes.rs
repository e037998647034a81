//! Panics, aborts, signals and early exits reach the parent as clear errors.

use mproc::{ErrorKind, Process, StartMethod};

use crate::common::{PATIENCE, sleep_ms};

fn boom(what: String) -> u32 {
    panic!("boom: {what}");
}

fn panic_reports_message_location_and_name(m: StartMethod) {
    let mut p = Process::new(boom, ("cheese".to_string(),))
        .start_method(m)
        .with_name("crasher");
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    let ErrorKind::Panicked(report) = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(report.message, "boom: cheese");
    assert!(
        report
            .location
            .as_deref()
            .unwrap()
            .starts_with("mproc/tests/crashes.rs:")
            || report
                .location
                .as_deref()
                .unwrap()
                .starts_with("tests/crashes.rs:"),
        "{report:?}"
    );
    assert_eq!(report.process, "crasher");
    let asked = std::env::var("RUST_BACKTRACE").is_ok_and(|v| v != "0");
    assert_eq!(
        report.backtrace.is_some(),
        asked,
        "a backtrace exactly when RUST_BACKTRACE asks"
    );
    assert_eq!(p.exitcode(), Some(1));
    let text = e.to_string();
    assert!(
        text.contains("crasher") && text.contains("boom: cheese"),
        "{text}"
    );
    // Joining again gives the same error.
    assert_eq!(p.join().unwrap_err(), e);
}

fn boom_with_backtrace() {
    // SAFETY: the child's only other thread (the parent watcher) never reads the environment.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    panic!("traced");
}

fn panic_carries_a_backtrace_when_asked(m: StartMethod) {
    let mut p = Process::new(boom_with_backtrace, ()).start_method(m);
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    let ErrorKind::Panicked(report) = e.kind() else {
        panic!("{e:?}")
    };
    let bt = report.backtrace.as_deref().expect("a backtrace");
    assert!(bt.contains("boom_with_backtrace"), "{bt}");
    // The user's frames only: mproc's machinery below the target is cut and said to be.
    assert!(
        bt.contains("(mproc's frames that called the target)"),
        "{bt}"
    );
    assert!(!bt.contains("mproc::start::worker"), "{bt}");
}

const PANIC_LINE_DRIVER: &str = "MPROC_TEST_PANIC_LINE_DRIVER";

fn catches_its_own(tag: String) -> bool {
    std::panic::catch_unwind(|| panic!("self-caught: {tag}")).is_err()
}

fn starts_a_crasher(tag: String) -> bool {
    let mut p = Process::new(boom, (format!("nested {tag}"),))
        .start_method(StartMethod::Fork)
        .with_name("grandchild");
    p.start().unwrap();
    p.join_timeout(PATIENCE).is_err()
}

/// A child's panic leaves one line on stderr that names its process and says the parent got
/// it: no `thread '<unnamed>' panicked`, no backtrace of mproc's machinery, even with
/// RUST_BACKTRACE set; a pool task's panic, none. Run in a copy of this binary whose stderr is
/// read here.
#[test]
fn a_childs_panic_line_names_it_and_says_where_it_went() {
    if std::env::var_os(PANIC_LINE_DRIVER).is_some() {
        for m in StartMethod::ALL {
            let mut p = Process::new(boom, (m.to_string(),))
                .start_method(m)
                .with_name("crasher");
            p.start().unwrap();
            assert!(p.join_timeout(PATIENCE).is_err());
            // A pool task's panic is its result's error, and says nothing on stderr (as in
            // Python's pool: a map of many failing items would print a line each).
            let pool = mproc::Pool::builder()
                .processes(1)
                .start_method(m)
                .build()
                .unwrap();
            assert!(pool.map(boom, [format!("pool {m}")]).is_err());
            // A panic the target catches itself went nowhere: no line says it did.
            let mut p = Process::new(catches_its_own, (m.to_string(),)).start_method(m);
            p.start().unwrap();
            assert!(p.join_timeout(PATIENCE).unwrap());
            // A pool task's own child is no pool worker: its panic is told (a fork child must
            // not inherit the worker's silence).
            assert!(pool.apply(starts_a_crasher, (m.to_string(),)).unwrap());
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crashes::a_childs_panic_line_names_it_and_says_where_it_went",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PANIC_LINE_DRIVER, "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for m in StartMethod::ALL {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("boom: {m}")))
            .unwrap_or_else(|| panic!("no line for {m}:\n{stderr}"));
        assert!(line.starts_with("process crasher panicked at "), "{line}");
        assert!(line.contains("sent to the parent"), "{line}");
    }
    for m in StartMethod::ALL {
        let nested = format!("boom: nested {m}");
        let line = stderr
            .lines()
            .find(|l| l.contains(&nested))
            .unwrap_or_else(|| panic!("no line for {nested}:\n{stderr}"));
        assert!(
            line.starts_with("process grandchild panicked at "),
            "{line}"
        );
    }
    assert!(!stderr.contains("self-caught"), "{stderr}");
    assert!(!stderr.contains("boom: pool"), "{stderr}");
    assert!(!stderr.contains("thread '<unnamed>' panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    assert!(!stderr.contains("mproc::"), "{stderr}");
}

fn abort() {
    std::process::abort();
}

fn abort_is_reported_as_sigabrt(m: StartMethod) {
    let mut p = Process::new(abort, ()).start_method(m);
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    let ErrorKind::WorkerLost(lost) = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(
        (lost.signal, lost.pid),
        (Some(libc::SIGABRT), p.pid().unwrap())
    );
    assert!(e.to_string().contains("SIGABRT"), "{e}");
    assert_eq!(p.exitcode(), Some(-libc::SIGABRT));
}

fn kill_self(signal: String) {
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-s", &signal, &pid])
        .status();
    std::thread::sleep(std::time::Duration::from_secs(30));
}

fn segfault(_: String) {
    // A real invalid access, not a signal sent by kill.
    // SAFETY: none; this deliberately writes through a null pointer to die by SIGSEGV.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(7) };
}

fn expect_signal<F: mproc::Target<(String,), Output = ()>>(
    m: StartMethod,
    target: F,
    name: &str,
    number: i32,
) {
    let mut p = Process::new(target, (name.to_string(),)).start_method(m);
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    let ErrorKind::WorkerLost(lost) = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(lost.signal, Some(number), "{e}");
    assert!(e.to_string().contains(&format!("SIG{name}")), "{e}");
    assert_eq!(p.exitcode(), Some(-number));
}

fn death_by_signal_reports_the_signal(m: StartMethod) {
    expect_signal(m, kill_self, "KILL", libc::SIGKILL);
    expect_signal(m, kill_self, "TERM", libc::SIGTERM);
    expect_signal(m, segfault, "SEGV", libc::SIGSEGV);
}

fn kill_and_terminate_from_the_parent(m: StartMethod) {
    for (sig, call) in [(libc::SIGKILL, true), (libc::SIGTERM, false)] {
        let mut p = Process::new(sleep_ms, (60_000,)).start_method(m);
        p.start().unwrap();
        if call {
            p.kill().unwrap()
        } else {
            p.terminate().unwrap()
        }
        let e = p.join_timeout(PATIENCE).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::WorkerLost(l) if l.signal == Some(sig)),
            "{e:?}"
        );
        assert_eq!(p.exitcode(), Some(-sig));
    }
}

fn exit_with(code: i32) -> u8 {
    std::process::exit(code)
}

fn exiting_without_returning_says_so(m: StartMethod) {
    for code in [0, 3] {
        let mut p = Process::new(exit_with, (code,)).start_method(m);
        p.start().unwrap();
        let e = p.join_timeout(PATIENCE).unwrap_err();
        let ErrorKind::WorkerLost(lost) = e.kind() else {
            panic!("{e:?}")
        };
        assert_eq!((lost.signal, lost.exit_code), (None, Some(code)));
        assert!(
            e.to_string()
                .contains(&format!("exited with code {code} without returning")),
            "{e}"
        );
        assert_eq!(p.exitcode(), Some(code));
    }
}

fn square(n: u64) -> u64 {
    n * n
}

fn run_with_sigchld_ignored(m: StartMethod) -> (u64, bool) {
    // SAFETY: installing SIG_IGN for SIGCHLD has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut p = Process::new(square, (9,)).start_method(m);
    p.start().unwrap();
    let value = p.join_timeout(PATIENCE).unwrap();
    (value, p.is_alive())
}

/// A parent that ignores SIGCHLD (so the kernel reaps its children itself) still gets its
/// children's values, and never sees them as alive after they ended.
fn results_survive_a_parent_that_ignores_sigchld(m: StartMethod) {
    let mut middle = Process::new(run_with_sigchld_ignored, (m,)).start_method(StartMethod::Spawn);
    middle.start().unwrap();
    assert_eq!(middle.join_timeout(PATIENCE).unwrap(), (81, false));
}

fn terminate_with_sigterm_blocked_in_the_parent(m: StartMethod) {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `set` is valid storage initialised by sigemptyset; only this test thread's mask
    // changes.
    unsafe {
        let set = set.assume_init_mut();
        libc::sigemptyset(set);
        libc::sigaddset(set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, set, std::ptr::null_mut());
    }
    let mut p = Process::new(sleep_ms, (60_000,)).start_method(m);
    p.start().unwrap();
    p.terminate().unwrap();
    assert!(p.join_timeout(PATIENCE).is_err());
    assert_eq!(
        p.exitcode(),
        Some(-libc::SIGTERM),
        "{m}: the child inherited a blocked SIGTERM"
    );
}

fn catch_then_rethrow() {
    let _ = std::panic::catch_unwind(|| panic!("first, caught"));
    std::panic::resume_unwind(Box::new("second, rethrown"));
}

fn a_rethrown_panic_is_not_reported_as_an_older_one(m: StartMethod) {
    let mut p = Process::new(catch_then_rethrow, ()).start_method(m);
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    let ErrorKind::Panicked(report) = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(report.message, "second, rethrown");
    assert_eq!(report.location, None);
}

/// Another thread holds stderr, or stdout, while a child starts: the child must not inherit a
/// lock held by a thread that does not exist in it.
fn a_child_is_not_stuck_on_output_locks_held_by_other_threads(m: StartMethod) {
    for stream in ["stderr", "stdout"] {
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _held: Box<dyn std::any::Any> = if stream == "stderr" {
                Box::new(std::io::stderr().lock())
            } else {
                Box::new(std::io::stdout().lock())
            };
            tx.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        });
        rx.recv().unwrap();
        let mut p = Process::new(square, (3,)).start_method(m);
        p.start().unwrap();
        holder.join().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), 9, "{m}, {stream} held");
    }
}

per_start_method!(
    panic_reports_message_location_and_name,
    panic_carries_a_backtrace_when_asked,
    abort_is_reported_as_sigabrt,
    death_by_signal_reports_the_signal,
    kill_and_terminate_from_the_parent,
    exiting_without_returning_says_so,
    results_survive_a_parent_that_ignores_sigchld,
    terminate_with_sigterm_blocked_in_the_parent,
    a_rethrown_panic_is_not_reported_as_an_older_one,
    a_child_is_not_stuck_on_output_locks_held_by_other_threads,
);

/// Sets its flag when dropped: a thread that loops until it is set ends even when the test
/// fails meanwhile.
struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a thread it starts panics (and is joined).
fn a_thread_panics() -> bool {
    std::thread::spawn(|| panic!("in a thread of the target"))
        .join()
        .is_err()
}

/// With RUST_BACKTRACE=1 and another thread of the parent capturing backtraces without a
/// pause (so that std's backtrace lock is held at most forks), children that panic each end
/// at once with their report, and a panic in a thread of a target is told of without
/// hanging that thread: a `Fork` child, which inherits that lock held by a thread it does not
/// have, never waits for it (its report says why it has no backtrace).
#[test]
fn a_fork_child_panics_while_another_thread_captures_backtraces() {
    if !crate::common::alone() {
        return;
    }
    // SAFETY: run alone (see `alone`): no other thread of this process reads the environment
    // now.
    unsafe { std::env::set_var("RUST_BACKTRACE", "1") };
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::backtrace::Backtrace::force_capture().to_string();
            }
        });
        for m in StartMethod::ALL {
            for round in 0..10 {
                // A panic the target's own thread has (std's hook tells of it) first.
                // Daemons: a child that hangs is killed when a failed test ends, not waited
                // for.
                let mut p = Process::new(a_thread_panics, ())
                    .start_method(m)
                    .daemon(true);
                p.start().unwrap();
                assert!(p.join_timeout(PATIENCE).unwrap(), "{m}, round {round}");
                let mut p = Process::new(boom, (format!("{m} {round}"),))
                    .start_method(m)
                    .daemon(true);
                p.start().unwrap();
                let e = p.join_timeout(PATIENCE).unwrap_err();
                let ErrorKind::Panicked(report) = e.kind() else {
                    panic!("{m}, round {round}: {e}")
                };
                assert_eq!(report.message, format!("boom: {m} {round}"));
                assert!(
                    report.backtrace.is_some(),
                    "{m}: asked for, or said why not"
                );
            }
        }
    });
}
