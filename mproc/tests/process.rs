//! The `Process` API, end to end, under every start method.

use std::time::Duration;

use mproc::{ErrorKind, Process, StartMethod, current_process};

use crate::common::{PATIENCE, has_ended, sleep_ms, wait_until};

fn square(n: u64) -> u64 {
    n * n
}

fn join_returns_the_value(m: StartMethod) {
    let mut p = Process::new(square, (7,)).start_method(m);
    assert_eq!(p.exitcode(), None);
    p.start().unwrap();
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 49);
    assert_eq!(p.exitcode(), Some(0));
    assert!(!p.is_alive());
    // join may be called again and gives the same outcome.
    assert_eq!(p.join().unwrap(), 49);
}

fn zero() -> String {
    "none".into()
}
fn two(a: u8, b: String) -> String {
    format!("{a}{b}")
}
fn six(a: u8, b: u16, c: u32, d: u64, e: i8, f: String) -> String {
    format!("{a}-{b}-{c}-{d}-{e}-{f}")
}

fn every_arity_and_closures(m: StartMethod) {
    let mut p0 = Process::new(zero, ()).start_method(m);
    let mut p2 = Process::new(two, (4, "x".to_string())).start_method(m);
    let mut p6 = Process::new(six, (1, 2, 3, 4, -5, "six".to_string())).start_method(m);
    let mut pc =
        Process::new(|v: Vec<i32>| v.iter().sum::<i32>(), (vec![1, 2, 3],)).start_method(m);
    for r in [p0.start(), p2.start(), p6.start(), pc.start()] {
        r.unwrap();
    }
    assert_eq!(p0.join_timeout(PATIENCE).unwrap(), "none");
    assert_eq!(p2.join_timeout(PATIENCE).unwrap(), "4x");
    assert_eq!(p6.join_timeout(PATIENCE).unwrap(), "1-2-3-4--5-six");
    assert_eq!(pc.join_timeout(PATIENCE).unwrap(), 6);
}

fn whoami() -> (String, u32) {
    (current_process().name().to_owned(), current_process().pid())
}

fn names_and_pids(m: StartMethod) {
    let mut a = Process::new(whoami, ()).start_method(m);
    let mut b = Process::new(whoami, ()).start_method(m).with_name("sq-3");
    let a_name = a.name().to_owned();
    assert!(a_name.starts_with("Process-"), "{a_name}");
    a.start().unwrap();
    b.start().unwrap();
    let (name, pid) = a.join_timeout(PATIENCE).unwrap();
    assert_eq!((name.as_str(), Some(pid)), (a_name.as_str(), a.pid()));
    assert_ne!(pid, std::process::id());
    assert_eq!(b.join_timeout(PATIENCE).unwrap().0, "sq-3");
    assert_eq!(current_process().name(), "MainProcess");
}

fn grandchild_name(m: StartMethod) -> (String, String) {
    let mut p = Process::new(whoami, ()).start_method(m);
    p.start().unwrap();
    let (name, _) = p.join_timeout(PATIENCE).unwrap();
    (p.name().to_owned(), name)
}

fn children_of_children_are_named_like_python(m: StartMethod) {
    let mut p = Process::new(grandchild_name, (m,)).start_method(m);
    p.start().unwrap();
    let parent = p.name().to_owned();
    let (given, seen) = p.join_timeout(PATIENCE).unwrap();
    assert_eq!(given, format!("{parent}:1"));
    assert_eq!(seen, given);
}

fn counters_are_per_process_and_count_up(m: StartMethod) {
    let a = Process::new(square, (1,)).start_method(m);
    let b = Process::new(square, (1,)).start_method(m);
    let n = |p: &Process<u64>| p.name()["Process-".len()..].parse::<u32>().unwrap();
    assert_eq!(n(&b), n(&a) + 1);
}

fn wrong_state_calls_are_errors(m: StartMethod) {
    let mut p = Process::new(square, (2,)).start_method(m);
    assert!(matches!(
        p.join().unwrap_err().kind(),
        ErrorKind::InvalidArgument(_)
    ));
    assert!(p.terminate().is_err());
    assert!(p.kill().is_err());
    assert!(!p.is_alive());
    p.start().unwrap();
    let again = p.start().unwrap_err();
    assert!(again.to_string().contains("already started"), "{again}");
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 4);
    // Signalling a process that has ended is not an error.
    p.terminate().unwrap();
    p.kill().unwrap();
}

fn join_timeout_is_retryable(m: StartMethod) {
    let mut p = Process::new(sleep_ms, (400,)).start_method(m);
    p.start().unwrap();
    assert!(p.is_alive());
    let e = p.join_timeout(Duration::from_millis(20)).unwrap_err();
    assert_eq!(e.kind(), &ErrorKind::Timeout);
    assert_eq!(p.exitcode(), None);
    assert!(p.is_alive());
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 400);
}

fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    let mut v = v;
    v.reverse();
    v
}

fn frames_larger_than_the_socket_buffer(m: StartMethod) {
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let mut p = Process::new(echo_bytes, (big.clone(),)).start_method(m);
    p.start().unwrap();
    let mut back = p.join_timeout(PATIENCE).unwrap();
    back.reverse();
    assert!(back == big);
}

fn drop_without_join_neither_blocks_nor_kills_nor_leaves_a_zombie(m: StartMethod) {
    let mut p = Process::new(sleep_ms, (300,)).start_method(m);
    p.start().unwrap();
    let pid = p.pid().unwrap();
    drop(p);
    assert!(!has_ended(pid), "dropping the handle killed the child");
    // It runs to its end and is then reaped by someone: /proc/<pid> disappears.
    wait_until("the dropped child is reaped", || {
        !crate::common::exists(pid)
    });
}

struct Unencodable;

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be encoded",
        ))
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Unencodable)
    }
}

fn takes(_: Unencodable) {}
fn gives() -> Unencodable {
    Unencodable
}

fn codec_errors_say_which_value_and_side(m: StartMethod) {
    let mut p = Process::new(takes, (Unencodable,)).start_method(m);
    let e = p.start().unwrap_err();
    let ErrorKind::Codec(c) = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(
        (c.direction.as_str(), c.process.as_str()),
        ("encode", "MainProcess")
    );
    assert!(
        c.value.contains("arguments") && c.message.contains("refuses"),
        "{e}"
    );

    let mut p = Process::new(gives, ()).start_method(m);
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).err().unwrap();
    let ErrorKind::Codec(c) = e.kind() else {
        panic!("{e:?}")
    };
    assert_eq!(c.direction, "encode");
    assert_eq!(c.process, p.name());
    assert!(c.value.contains("return value"), "{e}");
    assert_eq!(p.exitcode(), Some(1));
}

/// What a child sees of its surroundings: some variables, its directory; and it writes a line
/// to each stream and reads stdin to its end.
///
/// It writes through `std::io::stdout()` and `stderr()`, not `println!`: under libtest's
/// in-process capture (`cargo test` without `--nocapture`) a Fork child inherits the test
/// thread's capture buffer, so `println!` lands in the child's copy of that buffer and never
/// reaches descriptor 1; `std::io::stdout()` always writes the descriptor.
fn surroundings(vars: Vec<String>) -> (Vec<Option<String>>, String, String) {
    use std::io::Write;
    std::io::stdout().write_all(b"out line\n").unwrap();
    std::io::stdout().flush().unwrap();
    std::io::stderr().write_all(b"err line\n").unwrap();
    let input = std::io::read_to_string(std::io::stdin()).unwrap_or_default();
    let seen = vars.iter().map(|v| std::env::var(v).ok()).collect();
    let dir = std::env::current_dir().unwrap().display().to_string();
    (seen, dir, input)
}

fn the_childs_environment_directory_and_streams(m: StartMethod) {
    let dir = std::env::temp_dir().join(format!("mproc-setup-{}-{m}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let (out, err) = (dir.join("out"), dir.join("err"));
    let vars = vec![
        "MPROC_T_SET".to_string(),
        "HOME".to_string(),
        "PATH".to_string(),
    ];
    let mut p = Process::new(surroundings, (vars.clone(),))
        .start_method(m)
        .env("MPROC_T_SET", "one")
        .env_remove("HOME")
        .current_dir(&dir)
        .stdin(mproc::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    p.start().unwrap();
    let (seen, cwd, input) = p.join_timeout(PATIENCE).unwrap();
    assert_eq!(seen[0].as_deref(), Some("one"));
    assert_eq!(seen[1], None, "HOME removed");
    assert_eq!(seen[2], std::env::var("PATH").ok(), "the rest inherited");
    assert_eq!(cwd, dir.display().to_string());
    assert_eq!(input, "", "stdin is /dev/null");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "out line\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "err line\n");

    // A cleared environment holds only what is set after the clear.
    let mut p = Process::new(surroundings, (vars,))
        .start_method(m)
        .env_clear()
        .env("MPROC_T_SET", "two")
        .stdout(mproc::Stdio::null())
        .stderr(mproc::Stdio::null());
    p.start().unwrap();
    let (seen, _, _) = p.join_timeout(PATIENCE).unwrap();
    assert_eq!(seen, [Some("two".to_string()), None, None]);

    // A directory the child cannot enter: a clear error, and the target never runs.
    let missing = dir.join("missing");
    let mut p = Process::new(surroundings, (Vec::new(),))
        .start_method(m)
        .current_dir(&missing)
        .stdout(std::fs::File::create(&out).unwrap());
    p.start().unwrap();
    let e = p.join_timeout(PATIENCE).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Os(_)), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "",
        "the target never ran"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn pool_surroundings(var: String) -> (Option<String>, String) {
    (
        std::env::var(var).ok(),
        std::env::current_dir().unwrap().display().to_string(),
    )
}

fn a_pools_workers_environment_and_directory(m: StartMethod) {
    let dir = std::env::temp_dir().canonicalize().unwrap();
    let pool = mproc::Pool::builder()
        .processes(2)
        .start_method(m)
        .env("MPROC_T_POOL", "on")
        .current_dir(&dir)
        .build()
        .unwrap();
    let all = pool
        .chunksize(1)
        .map(pool_surroundings, vec!["MPROC_T_POOL".to_string(); 6])
        .unwrap();
    for (var, cwd) in all {
        assert_eq!(var.as_deref(), Some("on"));
        assert_eq!(cwd, dir.display().to_string());
    }
    // A directory workers cannot enter: the pool's calls fail with a clear error.
    let broken = mproc::Pool::builder()
        .processes(1)
        .start_method(m)
        .current_dir(dir.join("mproc-no-such-dir"))
        .build();
    let e = match broken {
        Err(e) => e,
        Ok(pool) => pool
            .apply(pool_surroundings, ("X".to_string(),))
            .unwrap_err(),
    };
    assert!(e.to_string().contains("mproc-no-such-dir"), "{e}");
}

/// Names and values the environment cannot hold (`std::env::set_var` would panic on them in
/// the child): refused before any child is made, never a crash loop.
fn an_environment_that_cannot_be_is_refused(m: StartMethod) {
    let bad: [(&str, &str); 4] = [("", "x"), ("A=B", "x"), ("A\0B", "x"), ("OK", "x\0y")];
    for (k, v) in bad {
        let mut p = Process::new(pool_surroundings, ("OK".to_string(),))
            .start_method(m)
            .env(k, v);
        let e = p.start().unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidArgument(_)),
            "{k:?}={v:?}: {e}"
        );
        assert_eq!(p.pid(), None, "no child made");
        let e = mproc::Pool::builder()
            .processes(1)
            .start_method(m)
            .env(k, v)
            .build()
            .unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidArgument(_)),
            "{k:?}={v:?}: {e}"
        );
    }
    for k in ["", "A=B"] {
        let mut p = Process::new(pool_surroundings, ("OK".to_string(),))
            .start_method(m)
            .env_remove(k);
        assert!(p.start().is_err(), "env_remove({k:?})");
    }
    // A pool's workers read the one stdin they are given.
    let pool = mproc::Pool::builder()
        .processes(1)
        .start_method(m)
        .stdin(mproc::Stdio::null())
        .build()
        .unwrap();
    assert_eq!(pool.apply(read_stdin, (0,)).unwrap(), "");
}

fn read_stdin(_: u8) -> String {
    std::io::read_to_string(std::io::stdin()).unwrap()
}

fn am_i_daemonic(_: u8) -> bool {
    mproc::current_process().daemon()
}

/// Starts a child with the default flag under `method`; what it says of itself.
fn my_child_is_daemonic(method: StartMethod) -> (bool, bool) {
    let mut p = Process::new(am_i_daemonic, (0,)).start_method(method);
    let default = p.is_daemon();
    p.start().unwrap();
    (default, p.join_timeout(PATIENCE).unwrap())
}

/// Python's default: a process is daemonic if the process that created it is; pool workers
/// are.
fn daemon_is_inherited_by_default(m: StartMethod) {
    assert!(!mproc::current_process().daemon());
    assert!(!Process::new(am_i_daemonic, (0,)).is_daemon());
    for daemon in [false, true] {
        let mut p = Process::new(my_child_is_daemonic, (m,))
            .start_method(m)
            .daemon(daemon);
        p.start().unwrap();
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), (daemon, daemon));
    }
    let pool = mproc::Pool::builder()
        .processes(1)
        .start_method(m)
        .build()
        .unwrap();
    assert!(pool.apply(am_i_daemonic, (0,)).unwrap());
}

/// How many pidfds the calling process holds.
fn pidfds_here() -> usize {
    crate::common::open_fds()
        .iter()
        .filter(|(_, l)| l == "anon_inode:[pidfd]")
        .count()
}

/// Children started while another thread drops handles of children it did not join (each drop
/// copies the child's pidfd for the thread that reaps it) hold none of those pidfds.
fn children_started_beside_dropped_handles_hold_no_pidfd(m: StartMethod) {
    // Alone: the count is of every pidfd in the child.
    if !crate::common::alone() {
        return;
    }
    // At least 150 children, and for as long as it takes 50 handles to be dropped meanwhile.
    let (held, _) = crate::common::children_beside(m, pidfds_here, 150, 50, move |_| {
        let mut p = Process::new(sleep_ms, (0,)).start_method(m);
        p.start().unwrap();
        drop(p);
    });
    assert!(
        held.is_empty(),
        "children holding pidfds (child, how many): {held:?}"
    );
}

per_start_method!(
    children_started_beside_dropped_handles_hold_no_pidfd,
    daemon_is_inherited_by_default,
    the_childs_environment_directory_and_streams,
    a_pools_workers_environment_and_directory,
    an_environment_that_cannot_be_is_refused,
    join_returns_the_value,
    every_arity_and_closures,
    names_and_pids,
    children_of_children_are_named_like_python,
    counters_are_per_process_and_count_up,
    wrong_state_calls_are_errors,
    join_timeout_is_retryable,
    frames_larger_than_the_socket_buffer,
    drop_without_join_neither_blocks_nor_kills_nor_leaves_a_zombie,
    codec_errors_say_which_value_and_side,
);

#[test]
fn start_method_default_and_setting() {
    // It changes the process-wide default, which other tests running beside it would see.
    if !crate::common::alone() {
        return;
    }
    assert_eq!(mproc::get_start_method(), StartMethod::Forkserver);
    mproc::set_start_method(StartMethod::Spawn);
    let mut p = Process::new(whoami, ());
    p.start().unwrap();
    p.join_timeout(PATIENCE).unwrap();
    mproc::set_start_method(StartMethod::Forkserver);
    assert_eq!(mproc::get_start_method(), StartMethod::Forkserver);
    assert_eq!(StartMethod::Forkserver.to_string(), "forkserver");
}

fn pin_and_count() -> usize {
    let mut set = std::mem::MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity get a
    // valid pointer to it and its size.
    unsafe {
        let set = set.assume_init_mut();
        libc::CPU_SET(0, set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
    mproc::cpu_count()
}

#[test]
fn cpu_count_respects_affinity() {
    let all = mproc::cpu_count();
    assert!(all >= 1);
    let mut p = Process::new(pin_and_count, ());
    p.start().unwrap();
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 1);
}

fn join_cgroup_and_count(dir: String) -> usize {
    std::fs::write(
        format!("{dir}/cgroup.procs"),
        std::process::id().to_string(),
    )
    .unwrap();
    mproc::cpu_count()
}

/// A CPU quota of one CPU (cgroup v1 `cpu` controller, where this machine has one we may
/// write to) makes cpu_count() 1, even on a bigger machine.
#[test]
fn cpu_count_respects_a_cgroup_cpu_quota() {
    let dir = format!("/sys/fs/cgroup/cpu/mproc-test-{}", std::process::id());
    if std::fs::create_dir(&dir).is_err() {
        eprintln!("no writable cgroup v1 cpu controller here; the affinity test still runs");
        return;
    }
    std::fs::write(format!("{dir}/cpu.cfs_period_us"), "100000").unwrap();
    std::fs::write(format!("{dir}/cpu.cfs_quota_us"), "100000").unwrap();
    let mut p =
        Process::new(join_cgroup_and_count, (dir.clone(),)).start_method(StartMethod::Spawn);
    p.start().unwrap();
    let counted = p.join_timeout(PATIENCE);
    crate::common::wait_until("the cgroup is removed", || {
        std::fs::remove_dir(&dir).is_ok()
    });
    assert_eq!(counted.unwrap(), 1);
}
