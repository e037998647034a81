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
#[allow(
    dead_code,
    reason = "only the pool and ipc benches measure such a floor"
)]
pub(crate) fn shared_page() -> *mut libc::c_void {
    shared_mapping(4096)
}

/// `len` fresh bytes (zeroed, page-aligned) of anonymous memory shared with the children this
/// process forks; the caller unmaps them.
#[allow(
    dead_code,
    reason = "only the pool and ipc benches measure such a floor"
)]
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
