//! Helpers shared by the bench binaries (included with `mod common;`).

/// Restricts this process, and so every process it starts, to one CPU.
#[allow(dead_code, reason = "the scaling bench runs on every CPU")]
pub(crate) fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    assert!(cpu < libc::CPU_SETSIZE as usize, "--pin: no CPU {cpu}");
    // SAFETY: `set` is a valid cpu_set_t and `cpu` is below its capacity.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is an initialised cpu_set_t of the size passed; pid 0 means this thread,
    // the only one, whose mask new threads and processes inherit.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(rc, 0, "--pin {cpu}: {}", std::io::Error::last_os_error());
}

/// CPU count, model, kernel and load, for the record.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned());
    // Other work on the machine skews every row; the load average shows whether there was any.
    let load = std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".to_owned(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    format!("{cpus} CPUs, {model}, Linux {kernel}, load average {load}")
}

/// A fresh page (4096 bytes, zeroed, page-aligned) of anonymous memory shared with the
/// children this process forks, for the benches' raw floors; the caller unmaps it.
#[allow(dead_code, reason = "only some benches measure such a floor")]
pub(crate) fn shared_page() -> *mut libc::c_void {
    shared_mapping(4096)
}

/// `len` fresh bytes (zeroed, page-aligned) of anonymous memory shared with the children this
/// process forks; the caller unmaps them.
#[allow(dead_code, reason = "only the ipc bench measures such a floor")]
pub(crate) fn shared_mapping(len: usize) -> *mut libc::c_void {
    // SAFETY: a fresh anonymous shared mapping; the kernel picks the address, so no existing
    // memory is replaced.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(
        page,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    page
}

/// Sleeps while `*word == seen` (or returns at once if it is not).
#[allow(
    dead_code,
    reason = "only the pool and process_start benches sleep on a word"
)]
pub(crate) fn futex_wait(word: &std::sync::atomic::AtomicU32, seen: u32) {
    // SAFETY: `word` is a live, aligned u32 in a shared mapping; FUTEX_WAIT only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

/// Wakes a process sleeping on `word`.
#[allow(
    dead_code,
    reason = "only the pool and process_start benches sleep on a word"
)]
pub(crate) fn futex_wake(word: &std::sync::atomic::AtomicU32) {
    // SAFETY: as in `futex_wait`; FUTEX_WAKE touches no memory.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

/// Forks a child that runs `body` and exits (`_exit(0)`, or `_exit(1)` if `body` panics),
/// killed with this process if this process dies first (`PR_SET_PDEATHSIG`): a raw floor's
/// helper, which may spin on a core, never outlives the bench. Returns the child's pid.
///
/// The bench must have no other thread yet, or `body` must touch nothing another thread might
/// have held at the fork (no allocation, no lock).
#[allow(
    dead_code,
    reason = "only the pool and process_start benches fork such children"
)]
pub(crate) fn fork_child(body: impl FnOnce()) -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the child runs only `body` (under the caller's contract above) and `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: prctl and getppid have no memory arguments; `_exit` ends the child without
        // running the parent's destructors.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_ok();
        // SAFETY: as above.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    pid
}

/// Waits for child `pid` to end, then unmaps the shared page it used.
///
/// # Safety
/// `page` is a page from [`shared_page`], not used by this process after this call.
#[allow(dead_code, reason = "only the pool bench keeps such children")]
pub(crate) unsafe fn reap_and_unmap(pid: libc::pid_t, page: *mut libc::c_void) {
    let mut status = 0;
    // SAFETY: `status` is a writable int; after the child has ended, nothing uses the page,
    // which the caller gives up and is unmapped once.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::munmap(page, 4096);
    }
}

/// Whether child `pid` has ended (reaped here if so).
#[allow(
    dead_code,
    reason = "only the pool bench watches its spinning children"
)]
pub(crate) fn has_ended(pid: libc::pid_t) -> bool {
    let mut status = 0;
    // SAFETY: `status` is a writable int for waitpid.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == pid }
}

/// Runs Python (`$PYTHON`, or `python3`) on `script` (in `benches/` unless an absolute path)
/// with `args`; what it printed.
#[allow(dead_code, reason = "only some benches run Python through it")]
pub(crate) fn python_stdout(script: &std::path::Path, args: &[String]) -> Result<String, String> {
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join(script);
    println!("running python...");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args(args)
        .output()
        .map_err(|e| format!("could not run {}: {e}", python.to_string_lossy()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Python's `name=value` lines (`out`) as rows named `python NAME`, passed to `row`; each
/// followed by `compare(name, ours, python)` where `ours` holds mproc's figure of that name.
#[allow(dead_code, reason = "only some benches run Python through it")]
pub(crate) fn python_rows<S: AsRef<str>>(
    out: &str,
    ours: &[(S, f64)],
    compare: impl Fn(&str, f64, f64) -> String,
    mut row: impl FnMut(&str, String),
) {
    for line in out.lines() {
        let (name, value) = line.split_once('=').unwrap_or((line, ""));
        let ratio = value.parse::<f64>().ok().and_then(|py| {
            let ours = ours.iter().find(|(n, _)| n.as_ref() == name)?.1;
            Some(compare(name, ours, py))
        });
        row(
            &format!("python {name}"),
            format!("{value}{}", ratio.unwrap_or_default()),
        );
    }
}

/// A deterministic integer loop of `iters` rounds (xorshift plus a counter): the benches'
/// CPU-bound task.
#[allow(dead_code, reason = "only the pool and scaling benches run it")]
pub(crate) fn spin(iters: u64) -> u64 {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..std::hint::black_box(iters) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x = x.wrapping_add(i);
    }
    x
}

/// Rounds of [`spin`] that take about `ms` milliseconds here: the fastest of a few probes of a
/// fixed count, scaled.
#[allow(dead_code, reason = "only the pool and scaling benches run it")]
pub(crate) fn spin_rounds_for(ms: f64) -> u64 {
    let probe = 2_000_000;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        std::hint::black_box(spin(probe));
        best = best.min(t.elapsed().as_secs_f64());
    }
    (probe as f64 * ms / 1e3 / best) as u64
}

/// The verdicts, `PASS` or `MISS` each, after a blank line.
#[allow(dead_code, reason = "only some benches keep their checks so")]
pub(crate) fn print_checks(checks: &[(String, bool)]) {
    println!();
    for (what, ok) in checks {
        println!("{} {what}", if *ok { "PASS" } else { "MISS" });
    }
}

/// A bench's command line: `--bench` (a full run), `--no-python`, section names, and flags
/// with a value.
#[allow(
    dead_code,
    reason = "only some benches read their command line through it"
)]
pub(crate) struct Cli(Vec<String>);

#[allow(
    dead_code,
    reason = "only some benches read their command line through it"
)]
impl Cli {
    /// This process's arguments.
    pub(crate) fn new() -> Cli {
        Cli(std::env::args().skip(1).collect())
    }

    /// Whether it is a full run (`--bench`, as `cargo bench` passes), not a smoke run.
    pub(crate) fn full(&self) -> bool {
        self.0.iter().any(|a| a == "--bench")
    }

    /// Whether Python runs too (no `--no-python`).
    pub(crate) fn python(&self) -> bool {
        !self.0.iter().any(|a| a == "--no-python")
    }

    /// Whether section `s` of `sections` runs: it is named, or none of them is.
    pub(crate) fn on(&self, sections: &[&str], s: &str) -> bool {
        let named = |s: &str| self.0.iter().any(|a| a == s);
        named(s) || !sections.iter().any(|&s| named(s))
    }

    /// The value after `flag`, if the flag is given; a missing or bad one panics with `usage`.
    pub(crate) fn value<T: std::str::FromStr>(&self, flag: &str, usage: &str) -> Option<T> {
        let at = self.0.iter().position(|a| a == flag)?;
        Some(
            self.0
                .get(at + 1)
                .and_then(|v| v.parse().ok())
                .expect(usage),
        )
    }
}
