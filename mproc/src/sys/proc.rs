//! Creating, watching, signalling and reaping processes.

// What rustix does not wrap: fork, pthread_atfork, posix_spawn, signal dispositions and masks,
// signalfd, F_SETOWN/F_SETSIG, the PIDFD_GET_INFO ioctl, close_range, _exit; and the
// environment before `main`.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

use serde::{Deserialize, Serialize};

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Exit {
    /// It called `exit` (or returned from `main`) with this code.
    Code(i32),
    /// A signal with this number ended it.
    Signal(i32),
    /// It ended, but its status was lost: something else reaped it (this process ignores
    /// `SIGCHLD`, or other code called `waitpid(-1)`).
    Unknown,
}

impl Exit {
    /// Python's `exitcode`: the code, or minus the signal number; `None` when unknown.
    pub(crate) fn python_code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal(s) => Some(-s),
            Exit::Unknown => None,
        }
    }

    fn from_wait_status(status: libc::c_int) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }
}

/// The symbolic name of a signal number, such as `"SIGKILL"`.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => "a signal",
    }
}

/// The two sides of a `fork`.
pub(crate) enum Forked {
    /// This is the new process.
    Child,
    /// This is the parent; the child has this pid.
    Parent(u32),
}

/// fork(2). The child must confine itself to what the caller documents as fork-safe.
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: fork has no memory-safety preconditions of its own; what the child may do after
    // it in a multithreaded parent is the caller's documented contract (start::fork). (rustix
    // has no fork that runs the pthread_atfork handlers.)
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid as u32)),
    }
}

/// Forks seen by this process's image: bumped in the child of every fork(3) (ours, the user's,
/// a library's), so an object can tell that it was made by the parent's image.
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How many forks separate this process from the image that first called this: an object that
/// records it at birth is foreign wherever it later differs (a fork child that inherited it).
pub(crate) fn fork_generation() -> u64 {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a child handler that only bumps an atomic (async-signal-safe);
        // it stays valid for the life of the process. A failure (ENOMEM) leaves forks
        // uncounted, which only weakens a safety check; nothing to undo.
        unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
    });
    FORKS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Starts `path` as a new process with `argv` and `envp`; each `(fd, target)` in `fds` is
/// duplicated to `target` in the child (clearing close-on-exec there), and every other
/// descriptor above 2 is closed in it, inherited or not. The targets must be 3, 4, ... in
/// order, and no source may be one of them.
///
/// See posix_spawn(3).
pub(crate) fn spawn(
    path: &CStr,
    argv: &[CString],
    envp: &[CString],
    fds: &[(BorrowedFd<'_>, RawFd)],
) -> io::Result<u32> {
    let argv_ptrs = null_terminated(argv);
    let envp_ptrs = null_terminated(envp);
    let mut actions = FileActions::new()?;
    for (fd, target) in fds {
        actions.dup2(fd.as_raw_fd(), *target)?;
    }
    actions.close_from(3 + fds.len() as RawFd)?;
    let attrs = SpawnAttrs::clean_signals()?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: path is a C string, the argv and envp
    // arrays are null-terminated and point into CStrings that outlive the call, and
    // `actions` and `attrs` are initialised objects.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions.0,
            &attrs.0,
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(pid as u32)
}

fn null_terminated(strings: &[CString]) -> Vec<*mut libc::c_char> {
    let mut v: Vec<_> = strings.iter().map(|s| s.as_ptr() as *mut _).collect();
    v.push(ptr::null_mut());
    v
}

/// Spawn attributes that give the child an empty signal mask and the default action for the
/// signals a parent may have ignored that matter to a worker (`SIGCHLD`, which it needs to
/// reap its own children, and `SIGPIPE`), whatever the spawning thread had.
struct SpawnAttrs(libc::posix_spawnattr_t);

impl SpawnAttrs {
    fn clean_signals() -> io::Result<Self> {
        // SAFETY: an all-zero value is valid storage for posix_spawnattr_init to fill.
        let mut raw: libc::posix_spawnattr_t = unsafe { mem::zeroed() };
        // SAFETY: `raw` is writable storage for the object being initialised.
        let rc = unsafe { libc::posix_spawnattr_init(&mut raw) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut attrs = SpawnAttrs(raw);
        let empty = empty_sigset();
        let mut defaults = empty_sigset();
        // SAFETY: `defaults` is an initialised sigset and both signals are valid.
        unsafe {
            libc::sigaddset(&mut defaults, libc::SIGCHLD);
            libc::sigaddset(&mut defaults, libc::SIGPIPE);
        }
        let flags = (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
        // SAFETY: attrs.0 was initialised above; the sigsets are initialised.
        let rcs = unsafe {
            [
                libc::posix_spawnattr_setsigmask(&mut attrs.0, &empty),
                libc::posix_spawnattr_setsigdefault(&mut attrs.0, &defaults),
                libc::posix_spawnattr_setflags(&mut attrs.0, flags),
            ]
        };
        match rcs.into_iter().find(|&rc| rc != 0) {
            Some(rc) => Err(io::Error::from_raw_os_error(rc)),
            None => Ok(attrs),
        }
    }
}

impl Drop for SpawnAttrs {
    fn drop(&mut self) {
        // SAFETY: self.0 was initialised and is destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: an all-zero sigset is valid storage; sigemptyset initialises it.
    let mut set: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `set` is valid storage for a sigset.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<Self> {
        // SAFETY: an all-zero value is valid storage for posix_spawn_file_actions_init to fill.
        let mut raw: libc::posix_spawn_file_actions_t = unsafe { mem::zeroed() };
        // SAFETY: `raw` is writable storage for the object being initialised.
        let rc = unsafe { libc::posix_spawn_file_actions_init(&mut raw) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(FileActions(raw))
    }

    fn dup2(&mut self, fd: RawFd, target: RawFd) -> io::Result<()> {
        // SAFETY: self.0 was initialised by posix_spawn_file_actions_init.
        let rc = unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, target) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }
}

impl FileActions {
    fn close_from(&mut self, first: RawFd) -> io::Result<()> {
        // SAFETY: self.0 was initialised by posix_spawn_file_actions_init.
        let rc = unsafe { libc::posix_spawn_file_actions_addclosefrom_np(&mut self.0, first) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: self.0 was initialised and is destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// A descriptor that refers to a process (pidfd_open(2)): readable once the process has ended,
/// and a race-free target for signals.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = as_pid(pid, Errno::INVAL)?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// `pid` as one process's id; `or` for 0 and for what would be negative (which kill(2) would
/// take for a process group).
fn as_pid(pid: u32, or: Errno) -> io::Result<Pid> {
    let raw = i32::try_from(pid).map_err(|_| or)?;
    Ok(Pid::from_raw(raw).ok_or(or)?)
}

/// `sig` as a signal; `EINVAL` for a number that names none.
fn as_signal(sig: i32) -> io::Result<Signal> {
    Ok(Signal::from_named_raw(sig).ok_or(Errno::INVAL)?)
}

/// Sends `sig` through a pidfd (pidfd_send_signal(2)). A process that has already ended is
/// not an error.
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, as_signal(sig)?) {
        Ok(()) | Err(Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Reaps the child behind `pidfd` if it has ended (waitid(2) with `P_PIDFD` and `WNOHANG`).
pub(crate) fn try_reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<Exit>> {
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
    let status = loop {
        match rustix::process::waitid(WaitId::PidFd(pidfd), options) {
            Ok(status) => break status,
            Err(Errno::INTR) => continue,
            // Reaped by someone else; if the pidfd says it has ended, its status is lost.
            Err(Errno::CHILD) => return Ok(has_ended(pidfd)?.then_some(Exit::Unknown)),
            Err(e) => return Err(e.into()),
        }
    };
    // None: it has not ended yet. Only ends are asked for: not exited is killed (or dumped).
    Ok(status.map(|s| match s.exit_status() {
        Some(code) => Exit::Code(code),
        None => Exit::Signal(s.terminating_signal().unwrap_or(0)),
    }))
}

/// Whether the process behind `pidfd` has ended (its pidfd is readable).
pub(crate) fn has_ended(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    let ready = super::fd::poll_read(&[pidfd], Some(std::time::Instant::now()))?;
    Ok(ready[0].readable || ready[0].hangup)
}

/// How the process behind `pidfd` ended, as the kernel records it for every holder of a pidfd
/// (`PIDFD_INFO_EXIT` of the `PIDFD_GET_INFO` ioctl, Linux 6.15 and later): the one way a
/// process that is not the parent can learn a signal or exit code. The record is made when
/// the process is reaped, by whichever process that is. `None` until then, or on a kernel that
/// keeps no record.
pub(crate) fn exit_record(pidfd: BorrowedFd<'_>) -> Option<Exit> {
    /// `struct pidfd_info` of `<linux/pidfd.h>`, in its first (64-byte) version, which every
    /// kernel with the ioctl accepts.
    #[repr(C)]
    #[derive(Default)]
    struct PidfdInfo {
        mask: u64,
        cgroupid: u64,
        /// pid, tgid, ppid, then the real, effective, saved and file-system uid and gid.
        ids: [u32; 11],
        exit_code: i32,
    }
    const _: () = assert!(mem::size_of::<PidfdInfo>() == 64);
    const PIDFD_INFO_EXIT: u64 = 1 << 3;
    // _IOWR(PIDFS_IOCTL_MAGIC, 11, struct pidfd_info): read-write, the size, 0xFF, 11.
    const PIDFD_GET_INFO: u64 =
        (3 << 30) | ((mem::size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_EXIT,
        ..PidfdInfo::default()
    };
    // SAFETY: `info` is writable storage of exactly the size the request number encodes; an
    // older kernel fails the call (ENOTTY, EINVAL) without touching it. (rustix has no typed
    // wrapper for this request; its generic ioctl is as unsafe.)
    let rc = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
    (rc == 0 && info.mask & PIDFD_INFO_EXIT != 0).then(|| Exit::from_wait_status(info.exit_code))
}

/// Blocks until the child `pid` ends and reaps it (waitpid(2)). For a child that could not be
/// given a pidfd.
pub(crate) fn reap_blocking(pid: u32) -> io::Result<Exit> {
    let pid = as_pid(pid, Errno::CHILD)?;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::empty()) {
            Ok(Some((_, status))) => return Ok(Exit::from_wait_status(status.as_raw())),
            // Only with WNOHANG; never here.
            Ok(None) => return Err(Errno::CHILD.into()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `sig` to `pid` (kill(2)). Only for a process that cannot have been reaped yet (our own
/// child, or the fork server's before it has looked at `SIGCHLD`).
/// Signal 0 only asks whether the process exists. A `pid` that names no single process (0, or
/// one that would be a process group) is `ESRCH`.
pub(crate) fn kill(pid: u32, sig: i32) -> io::Result<()> {
    let pid = as_pid(pid, Errno::SRCH)?;
    Ok(match sig {
        0 => rustix::process::test_kill_process(pid),
        sig => rustix::process::kill_process(pid, as_signal(sig)?),
    }?)
}

/// Restores the default action for `SIGCHLD` (a parent may have ignored it, which would make
/// the kernel reap our children behind our back).
pub(crate) fn default_sigchld() {
    // SAFETY: installing SIG_DFL for SIGCHLD has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
}

/// An ended child, not reaped yet (its pid stays its own until it is): waitid(2) with `P_ALL`,
/// `WNOHANG` and `WNOWAIT`. `None` if no child has ended.
pub(crate) fn ended_child() -> io::Result<Option<u32>> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid storage for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: `info` is writable storage of the type waitid fills; P_ALL ignores the id.
        // (rustix's waitid gives no pid back.)
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) };
        if rc != 0 {
            match Errno::from_raw_os_error(io::Error::last_os_error().raw_os_error().unwrap_or(0))
            {
                Errno::INTR => continue,
                Errno::CHILD => return Ok(None),
                e => return Err(e.into()),
            }
        }
        // SAFETY: waitid filled `info` (a zero pid when no child has ended: WNOHANG).
        let pid = unsafe { info.si_pid() };
        return Ok((pid > 0).then_some(pid as u32));
    }
}

/// Reaps child `pid` if it has ended, without blocking (waitpid(2) with `WNOHANG`).
pub(crate) fn reap_child(pid: u32) -> io::Result<Option<Exit>> {
    let pid = as_pid(pid, Errno::CHILD)?;
    loop {
        match rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            Ok(reaped) => return Ok(reaped.map(|(_, s)| Exit::from_wait_status(s.as_raw()))),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ends this process at once, without running exit handlers or destructors (_exit(2)).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and does not return. (rustix's exit_group is for
    // programs without libc, and skips what libc's _exit does.)
    unsafe { libc::_exit(code) }
}

/// This process's id (see [`super::pid`]: no system call once known).
pub(crate) fn getpid() -> u32 {
    super::pid::getpid()
}

/// The CPU the calling thread runs on (getcpu(2): a few nanoseconds where the vDSO has it,
/// as on x86-64; a system call elsewhere); it may move at any time, so a hint only.
pub(crate) fn current_cpu() -> u32 {
    rustix::thread::sched_getcpu() as u32
}

/// Moves the calling thread off `cpu` to another CPU, for a thread that may run on every CPU
/// its cpuset gives (every online CPU outside a cpuset): its set is narrowed by `cpu` (the
/// kernel moves a thread at once when its CPU leaves its set), then widened to every CPU,
/// which the kernel does not move it back for and narrows to the cpuset's again. Only such a
/// thread moves: a set read back and written again would be kept as the thread's own, and
/// CPUs a cpuset gives later, or that come online later, would never reach it; while "every
/// CPU" is no narrower than the set it had. A thread whose set was narrowed by hand (`taskset`,
/// an initializer) never moves. A set someone else gives it meanwhile (`taskset -p`) is left
/// as they gave it. `false` where it did not move.
pub(crate) fn move_off_cpu(cpu: u32) -> bool {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    let cpu = cpu as usize;
    let Ok(allowed) = sched_getaffinity(None) else {
        return false;
    };
    if cpu >= CpuSet::MAX_CPU
        || !allowed.is_set(cpu)
        || !free_to_move(&allowed, online_cpus(), cpuset_cpus())
    {
        return false;
    }
    let mut elsewhere = allowed;
    elsewhere.unset(cpu);
    if sched_setaffinity(None, &elsewhere).is_err() {
        return false;
    }
    if sched_getaffinity(None).is_ok_and(|now| now == elsewhere) {
        let mut every = CpuSet::new();
        (0..CpuSet::MAX_CPU).for_each(|c| every.set(c));
        // Refused only where no CPU of it may be used, which `allowed` disproves; should it
        // be, the thread keeps every CPU but `cpu`.
        let _ = sched_setaffinity(None, &every);
    }
    true
}

/// Whether a thread that may run on `allowed` may move itself ([`move_off_cpu`]): it has two
/// CPUs or more, and its set is every online CPU (`online` of them) or its cpuset's whole
/// (`cpuset`: in a container or a service given some CPUs of the machine), so that nobody
/// narrowed it by hand.
fn free_to_move(allowed: &rustix::thread::CpuSet, online: usize, cpuset: Option<&rustix::thread::CpuSet>) -> bool {
    let count = allowed.count() as usize;
    count >= 2 && (count == online || cpuset == Some(allowed))
}

/// The CPUs this process's cpuset gives (cgroup v2's `cpuset.cpus.effective`, or v1's
/// `cpuset.effective_cpus`, of its cgroup or the nearest ancestor that says), read once:
/// `None` where there is no cpuset to read.
fn cpuset_cpus() -> Option<&'static rustix::thread::CpuSet> {
    static CPUSET: std::sync::OnceLock<Option<rustix::thread::CpuSet>> = std::sync::OnceLock::new();
    CPUSET
        .get_or_init(|| {
            let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            cpuset_file(&cgroups, |path| std::fs::read_to_string(path).ok())
        })
        .as_ref()
}

/// The CPUs in the cpuset file for the cgroups `cgroups` lists (`/proc/self/cgroup`'s text),
/// each file read by `read`: v1's cpuset hierarchy first, then v2's, each from the process's
/// cgroup up to the root.
fn cpuset_file(cgroups: &str, read: impl Fn(&str) -> Option<String>) -> Option<rustix::thread::CpuSet> {
    let mut places = Vec::new();
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if controllers.split(',').any(|c| c == "cpuset") {
            places.insert(0, ("/sys/fs/cgroup/cpuset", path, "cpuset.effective_cpus"));
        } else if controllers.is_empty() {
            places.push(("/sys/fs/cgroup", path, "cpuset.cpus.effective"));
        }
    }
    for (root, path, file) in places {
        let mut at = path.trim_end_matches('/');
        loop {
            if let Some(cpus) = read(&format!("{root}{at}/{file}")).and_then(|t| parse_cpu_list(&t))
            {
                return Some(cpus);
            }
            match at.rfind('/') {
                Some(cut) => at = &at[..cut],
                None => break,
            }
        }
    }
    None
}

/// A CPU list as the kernel writes one (`0-3,8,10-11`); `None` if malformed, empty, or past
/// the CPUs a set can hold.
fn parse_cpu_list(text: &str) -> Option<rustix::thread::CpuSet> {
    let mut set = rustix::thread::CpuSet::new();
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let one = part.parse::<usize>().ok()?;
                (one, one)
            }
        };
        if first > last || last >= rustix::thread::CpuSet::MAX_CPU {
            return None;
        }
        (first..=last).for_each(|c| set.set(c));
    }
    Some(set)
}

/// How many CPUs are online (sysconf(3) `_SC_NPROCESSORS_ONLN`); 0 where unknown.
fn online_cpus() -> usize {
    // SAFETY: sysconf takes a name and touches no memory of the caller's; -1 on failure.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap_or(0)
}

/// Whether the calling thread is the process's main thread (gettid(2) equals getpid(2)).
pub(crate) fn is_main_thread() -> bool {
    rustix::thread::gettid().as_raw_nonzero().get() as u32 == getpid()
}

/// The parent's process id (getppid(2)).
pub(crate) fn getppid() -> u32 {
    // None: no parent in this pid namespace (getppid(2) says 0).
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// Asks the kernel to SIGKILL this process when the thread that created it ends
/// (PR_SET_PDEATHSIG in prctl(2)). Used in children forked from a main thread.
pub(crate) fn kill_me_with_parent() -> io::Result<()> {
    Ok(rustix::process::set_parent_process_death_signal(Some(
        Signal::KILL,
    ))?)
}

/// A new open file description of the pipe whose read end is `read` (open(2) of
/// `/proc/self/fd/N`, which for a pipe opens the pipe itself, not a copy of the descriptor), for
/// [`hangup_killer`]: the owner of a description's signals is shared by every duplicate.
pub(crate) fn reopen_pipe_reader(read: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", read.as_raw_fd());
    // O_NONBLOCK: opening a pipe for reading may otherwise wait for a writer.
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    Ok(rustix::fs::open(path, flags, Mode::empty())?)
}

/// Clears the owner of `killer` ([`hangup_killer`]), which then signals nobody at the hang-up
/// until a process claims it again with [`kill_me_on_hangup`].
pub(crate) fn disown(killer: BorrowedFd<'_>) -> io::Result<()> {
    set_owner(killer, 0)
}

/// fcntl(2) `F_SETOWN`, which rustix does not wrap.
fn set_owner(fd: BorrowedFd<'_>, pid: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a borrowed, open descriptor, with an integer argument.
    match unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETOWN, pid) } {
        -1 => Err(io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// `F_SETSIG` of `<asm-generic/fcntl.h>`, which no architecture redefines (the libc crate
/// names it only for some targets).
const F_SETSIG: libc::c_int = 10;

/// A new description of the pipe whose read end is `read` ([`reopen_pipe_reader`]), armed to
/// SIGKILL its owner the moment the pipe loses its last writer: `O_ASYNC` with `SIGKILL` as
/// the signal (fcntl(2) `F_SETSIG`), which the pipe raises for its readers' owners when its
/// last writer closes. It has no owner yet, so until one claims it with [`kill_me_on_hangup`]
/// the hang-up signals nobody. Made by a fork server ahead of the fork of the child that claims
/// it, so the child's own start is two system calls, not five.
pub(crate) fn hangup_killer(read: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let own = reopen_pipe_reader(read)?;
    // SAFETY: fcntl on a descriptor this function owns, with an integer argument. (rustix does
    // not wrap F_SETSIG.)
    if unsafe { libc::fcntl(own.as_raw_fd(), F_SETSIG, libc::SIGKILL) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let flags = rustix::fs::fcntl_getfl(&own)?;
    rustix::fs::fcntl_setfl(&own, flags | OFlags::ASYNC)?;
    Ok(own)
}

/// Makes this process, whose id is `me`, the owner of `killer` ([`hangup_killer`], fcntl(2)
/// `F_SETOWN`): the kernel SIGKILLs it the moment the pipe hangs up. `killer` must be a
/// description nobody else claims and stay open for this process's whole life. Returns whether
/// the pipe had already hung up (then no signal will come: the caller must act on its own).
pub(crate) fn kill_me_on_hangup(killer: BorrowedFd<'_>, me: u32) -> io::Result<bool> {
    set_owner(killer, me as libc::c_int)?;
    // A writer that left before the line above signalled nobody: look once. (A plain poll with
    // no deadline: this runs in every new fork server child, where each code page touched
    // costs a page fault.)
    let mut p = [PollFd::from_borrowed_fd(killer, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    loop {
        match rustix::event::poll(&mut p, Some(&now)) {
            Ok(_) => {
                let hung_up = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
                return Ok(p[0].revents().intersects(hung_up));
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ignores `SIGPIPE`, as Rust's runtime does before `main`, so a write to a closed pipe is an
/// `EPIPE` error instead of death. Workers run before `main`, so they set it themselves.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Ignores `SIGIO`, which the kernel sends a process whose file lease someone's `open` breaks
/// (and which would otherwise end it): for the shared-memory keeper, which holds leases for
/// microseconds and needs no notice.
pub(crate) fn ignore_lease_breaks() {
    // SAFETY: installing SIG_IGN for SIGIO has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
}

/// Blocks `SIGCHLD` for this thread and returns a non-blocking signalfd(2) that becomes
/// readable when a child ends. For the single-threaded fork server.
pub(crate) fn sigchld_fd() -> io::Result<OwnedFd> {
    default_sigchld();
    let mask = sigchld_set();
    // SAFETY: blocks one signal for this thread, with an initialised set; no old set asked.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &mask, ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: -1 asks for a new descriptor; `mask` is an initialised set.
    let fd = unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks `SIGINT` and `SIGTERM` for this thread and the threads it starts later: in a pool
/// worker, and in the fork server, which only their pool (or the user's process) stops. A
/// terminal's Ctrl-C and a service manager's SIGTERM to the whole group then stay pending
/// there, never delivered. (A mask, not `SIG_IGN`: `std::process::Command` and mproc's own
/// children start with an empty mask, whereas an ignored disposition survives `exec`.)
pub(crate) fn block_stop_signals() {
    let mut mask = empty_sigset();
    // SAFETY: `mask` is an initialised set; SIGINT and SIGTERM are valid signals.
    unsafe {
        libc::sigaddset(&mut mask, libc::SIGINT);
        libc::sigaddset(&mut mask, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &mask, ptr::null_mut());
    }
}

/// Lets this process's allocator (glibc's) keep up to `bytes` of freed heap for reuse instead of
/// returning it to the system at once, and serve allocations up to half that from its heap, so
/// large buffers freed and allocated again are not faulted in and zeroed each time. glibc's
/// own defaults adapt to the same end but give memory back once 2x the largest block is free.
pub(crate) fn keep_freed_memory(bytes: usize) {
    let bytes = i32::try_from(bytes).unwrap_or(i32::MAX);
    // SAFETY: mallopt takes any values for these parameters (it refuses bad ones itself), and
    // takes the allocator's own lock, so another thread allocating meanwhile (a parent
    // watcher) is no hazard.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, bytes / 2);
        libc::mallopt(libc::M_TRIM_THRESHOLD, bytes);
    }
}

/// Maps into this process's page tables the pages of its executable and shared libraries
/// (their code and constants: private, read-only file mappings) that are in the page cache
/// but not mapped here yet, a slice at a time, stopping as soon as `stop()` says so
/// (`MADV_POPULATE_READ`; before Linux 5.14, nothing is done). A freshly forked process shares
/// its parent's page cache but not these page-table entries, and faults them in, a few at a
/// time, as it first runs each piece of code; mapped ahead while it waits, they cost it
/// nothing later. No memory is used but page tables: the pages are the page cache's, and
/// count in `RssFile`, not in the `RssAnon` the memory caps read ([`resident_bytes`]).
///
/// - Pages not in the page cache are left alone (`mincore`), so a cold cache costs no disk
///   reads. The kernel tells which pages are cached only of a file this process owns or could
///   open for writing (or as root); of any other file it says every page is, so those files
///   (a system's libraries, an executable installed by another user) are left alone.
/// - It runs only if nobody would wait for its CPU when it begins (the runnable tasks in
///   `/proc/loadavg`, this one among them, are no more than the CPUs), so a busy machine pays
///   nothing for it.
/// - At most 64 MiB are looked at, so a huge executable costs a bounded time (about a
///   millisecond of CPU for 15 MiB of code and libraries).
///
/// `false` if it did nothing because the CPUs were busy (it may be asked again later).
pub(crate) fn map_in_code(stop: impl FnMut() -> bool) -> bool {
    if !cpu_free(std::thread::available_parallelism().map_or(1, |n| n.get())) {
        return false;
    }
    map_in(MAP_IN_BUDGET, stop);
    true
}

/// How many bytes of code and libraries [`map_in_code`] looks at, at most.
const MAP_IN_BUDGET: usize = 64 << 20;

/// [`map_in_code`], whatever the machine's load, looking at `budget` bytes at most.
fn map_in(mut budget: usize, mut stop: impl FnMut() -> bool) {
    let page = rustix::param::page_size();
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let exe = std::env::current_exe().ok();
    let mut cached = vec![0u8; MAP_IN_SLICE / page];
    // A file's mappings come one after another: it is asked about once.
    let mut told: Option<(&str, bool)> = None;
    for line in maps.lines() {
        // "start-end perms offset dev inode   path": the path may hold spaces.
        let mut fields = line.splitn(6, ' ');
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3).map_or("", str::trim_start);
        let library = path.starts_with('/') && (path.ends_with(".so") || path.contains(".so."));
        let code = library || exe.as_deref().is_some_and(|e| e.as_os_str() == path);
        if !code || !matches!(perms, "r--p" | "r-xp") {
            continue;
        }
        let tells = match told {
            Some((file, tells)) if file == path => tells,
            _ => mincore_tells(path),
        };
        told = Some((path, tells));
        if !tells {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // Faulting a page in may start a read-ahead of the pages after it, which are not
        // cached (the kernel marks the page a read-ahead window starts at): for the time of
        // this walk the mapping reads nothing ahead (MADV_RANDOM), then it is as before.
        let (from, len) = (start as *mut libc::c_void, end - start);
        // SAFETY: MADV_RANDOM and MADV_NORMAL change only how much the kernel reads ahead on
        // a fault in the range, never its contents or whether it is mapped.
        let _ = unsafe { rustix::mm::madvise(from, len, rustix::mm::Advice::Random) };
        let go_on = map_in_cached(start, end, &mut cached, &mut budget, &mut stop);
        // SAFETY: as above (and code is mapped with the default, MADV_NORMAL).
        let _ = unsafe { rustix::mm::madvise(from, len, rustix::mm::Advice::Normal) };
        if !go_on {
            return;
        }
    }
}

/// Bytes [`map_in_code`] looks at between two looks at its `stop` (a few microseconds).
const MAP_IN_SLICE: usize = 64 * 1024;

/// Whether `mincore` tells the truth of the pages of file `path`: only of a file this process
/// owns or could open for writing, or to root (see `can_do_mincore` in the kernel's
/// mm/mincore.c); of any other it says every page is cached.
fn mincore_tells(path: &str) -> bool {
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        return true;
    }
    let Ok(stat) = rustix::fs::stat(path) else {
        return false; // gone or replaced (" (deleted)"): nothing to tell
    };
    // An executable being run answers "busy" to a write, whatever its permissions: it could
    // be written as far as the kernel's check here goes.
    stat.st_uid == euid.as_raw()
        || rustix::fs::accessat(
            rustix::fs::CWD,
            path,
            rustix::fs::Access::WRITE_OK,
            rustix::fs::AtFlags::EACCESS,
        )
        .map_or_else(|e| e == rustix::io::Errno::TXTBSY, |()| true)
}

/// Whether the runnable tasks, this one among them, are no more than `cpus`: nobody waits for
/// a CPU (`/proc/loadavg`'s fourth field, "runnable/total"). Unreadable: no.
fn cpu_free(cpus: usize) -> bool {
    let Ok(load) = std::fs::read_to_string("/proc/loadavg") else {
        return false;
    };
    let runnable = load
        .split_ascii_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(r, _)| r.parse::<usize>().ok());
    runnable.is_some_and(|r| r <= cpus)
}

/// [`map_in_code`]'s walk of one mapping, `start..end`; `false` when it is to stop.
fn map_in_cached(
    start: usize,
    end: usize,
    cached: &mut [u8],
    budget: &mut usize,
    stop: &mut impl FnMut() -> bool,
) -> bool {
    let page = rustix::param::page_size();
    let mut at = start;
    while at < end {
        if stop() || *budget == 0 {
            return false;
        }
        let len = (end - at).min(cached.len() * page).min(*budget);
        *budget -= len;
        let pages = len.div_ceil(page);
        // SAFETY: `cached` holds a byte for each page of a slice of at most `cached.len()`
        // pages; mincore writes only those and reads no memory of the range.
        let looked = unsafe { libc::mincore(at as *mut libc::c_void, len, cached.as_mut_ptr()) };
        if looked != 0 {
            return false; // something moved (ENOMEM): the child faults the rest in
        }
        // Each run of cached pages, one call each.
        let mut i = 0;
        while i < pages {
            if cached[i] & 1 == 0 {
                i += 1;
                continue;
            }
            let run = cached[i..pages].iter().take_while(|&&c| c & 1 != 0).count();
            let from = at + i * page;
            let run_len = (run * page).min(at + len - from);
            // SAFETY: MADV_POPULATE_READ faults pages in as reading them would, changing no
            // contents and no mapping; a range no longer mapped, or past the end of its file,
            // is an error (EFAULT, ENOMEM), never a signal.
            let populated = unsafe {
                rustix::mm::madvise(
                    from as *mut libc::c_void,
                    run_len,
                    rustix::mm::Advice::LinuxPopulateRead,
                )
            };
            if populated.is_err() {
                return false; // an older kernel, or something moved: the child faults them in
            }
            i += run;
        }
        at += len;
    }
    true
}

/// The signal a fork server's spare gets when the server dies (PR_SET_PDEATHSIG): caught,
/// unlike SIGKILL, so that the spare dies only if nobody has taken it (see
/// [`SpareSignals`]).
const SPARE_PARENT_DEATH: libc::c_int = libc::SIGUSR2;

/// The word a fork server's spare sleeps on, for its signal handler; null in any other
/// process.
static SPARE_WORD: std::sync::atomic::AtomicPtr<std::sync::atomic::AtomicU32> =
    std::sync::atomic::AtomicPtr::new(ptr::null_mut());
/// The word's value while the spare waits, and the state that says it died unasked.
static SPARE_IDLE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// The spare's server: a parent-death signal comes from it (`si_pid`), a user's SIGUSR2 does not.
static SPARE_SERVER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static SPARE_DEAD: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Stop signals that came once the spare was taken (a bit per signal): the child's.
static SPARE_KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The signals a fork server's spare may die of while it waits, caught: the server's death
/// (the parent-death signal), SIGINT and SIGTERM (a Ctrl-C to the process group, a service
/// manager's SIGTERM), and every other signal that ends a process by default and is sent
/// rather than raised by a fault ([`SPARE_CAUGHT`]), unless ignored. The handler decides by
/// the spare's word, atomically:
/// if it moves the word from idle to dead first, the spare was nobody's, and it exits (its
/// client, moving the word later, fails and passes it over); if the client or the server took
/// it first, the signal is the child's: the server's death is then no reason to die (the
/// child is tied to the user's process), and any other signal, a SIGUSR2 that another process
/// sent included (not the server's death: `si_pid` tells them apart; one whose sender is not
/// named is taken for the server's death), is kept and raised again once the child's actions
/// are back ([`SpareSignals::taken`]). Without this, a spare killed outright could still be
/// taken while it died (its sockets close only after its memory is freed, and a signal sent
/// ends it only once it next runs), and the start would return a child that never runs; only
/// SIGKILL, and a fault signal (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS) or a
/// real-time signal sent by someone, can still end it so.
pub(crate) struct SpareSignals {
    /// The actions the handler replaced, to be put back.
    replaced: [(libc::c_int, Option<libc::sigaction>); SPARE_CAUGHT.len()],
}

/// The signals a waiting spare catches (see [`SpareSignals`]): each that ends a process by
/// default, but SIGKILL (which cannot be caught), the fault signals (a fault in the handler's
/// way would come back at once, forever) and the real-time signals (31 more actions to put
/// back at every start, for signals that are sent to a process by its pid only by design).
const SPARE_CAUGHT: [libc::c_int; 16] = [
    SPARE_PARENT_DEATH,
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGABRT,
    libc::SIGPIPE,
    libc::SIGALRM,
    libc::SIGSTKFLT,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
];

/// In a fork server's spare asleep on `word`: ends it at once if nobody has taken it, by moving
/// the word from `idle` to `dead` first (whoever moves it from idle owns the spare).
/// Async-signal-safe: one atomic operation and _exit(2).
pub(crate) fn die_if_untaken(word: &std::sync::atomic::AtomicU32, idle: u32, dead: u32) {
    let claimed = word.compare_exchange(
        idle,
        dead,
        std::sync::atomic::Ordering::AcqRel,
        std::sync::atomic::Ordering::Acquire,
    );
    if claimed.is_ok() {
        exit_now(0);
    }
}

extern "C" fn spare_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let word = SPARE_WORD.load(std::sync::atomic::Ordering::Acquire);
    if word.is_null() {
        return;
    }
    // SAFETY: the kernel passes a valid siginfo to a handler installed with SA_SIGINFO (its
    // sender's pid is 0 when the kernel does not name one: see below).
    let sender = unsafe { info.as_ref().map_or(0, |info| info.si_pid()) };
    let idle = SPARE_IDLE.load(std::sync::atomic::Ordering::Relaxed);
    let dead = SPARE_DEAD.load(std::sync::atomic::Ordering::Relaxed);
    // SAFETY: `word` was set by `SpareSignals::catch` from a `&'static AtomicU32`.
    die_if_untaken(unsafe { &*word }, idle, dead);
    let server = SPARE_SERVER.load(std::sync::atomic::Ordering::Relaxed);
    // A sender the kernel does not name (0: in another pid namespace, or the signal queued
    // without its details when memory ran short, as when the out-of-memory killer takes the
    // server) counts as the server's death: the child lives on.
    let parent_died = sig == SPARE_PARENT_DEATH && (sender as u32 == server || sender == 0);
    if !parent_died && (0..64).contains(&sig) {
        SPARE_KEPT.fetch_or(1 << sig, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The signals a spare catches, held back (blocked) in the fork server around the fork of a
/// spare, until dropped (the server's mask back): the new spare inherits them blocked, so that
/// one sent to it before it catches them ([`SpareSignals::catch`], which lets them in) waits
/// for its handler instead of ending it unsaid.
pub(crate) struct SpareSignalsHeld(libc::sigset_t);

impl Drop for SpareSignalsHeld {
    fn drop(&mut self) {
        // SAFETY: `self.0` is the mask read from the kernel in `hold`; no old mask asked for.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, ptr::null_mut()) };
    }
}

/// The set of the signals a spare catches ([`SPARE_CAUGHT`]).
fn spare_caught_set() -> libc::sigset_t {
    let mut set = empty_sigset();
    for sig in SPARE_CAUGHT {
        // SAFETY: `set` is an initialised set; `sig` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

impl SpareSignals {
    /// In the fork server, about to fork a spare: see [`SpareSignalsHeld`].
    pub(crate) fn hold() -> SpareSignalsHeld {
        let mask = spare_caught_set();
        let mut old = empty_sigset();
        // SAFETY: both sets are initialised storage of the type pthread_sigmask takes.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, &mut old) };
        SpareSignalsHeld(old)
    }

    /// In a spare forked by `server`, asleep on `word` whose value is `idle` while it waits
    /// and `dead` once it died unasked: catches the signals above, asks for the parent-death
    /// signal, and lets the caught signals in (the server keeps SIGINT and SIGTERM blocked). A
    /// server already gone counts as one that died now.
    pub(crate) fn catch(
        word: &'static std::sync::atomic::AtomicU32,
        idle: u32,
        dead: u32,
        server: u32,
    ) -> io::Result<SpareSignals> {
        SPARE_IDLE.store(idle, std::sync::atomic::Ordering::Relaxed);
        SPARE_DEAD.store(dead, std::sync::atomic::Ordering::Relaxed);
        SPARE_SERVER.store(server, std::sync::atomic::Ordering::Relaxed);
        SPARE_WORD.store(
            ptr::from_ref(word).cast_mut(),
            std::sync::atomic::Ordering::Release,
        );
        let mut replaced = SPARE_CAUGHT.map(|sig| (sig, None));
        for (sig, old) in &mut replaced {
            // SAFETY: zeroed sigactions are valid values to fill; the handler only touches
            // atomics and calls _exit; both pointers are to locals that outlive the calls.
            unsafe {
                let mut was: libc::sigaction = mem::zeroed();
                if libc::sigaction(*sig, ptr::null(), &mut was) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // An ignored signal stays ignored: the child would ignore it too.
                if *sig != SPARE_PARENT_DEATH && was.sa_sigaction == libc::SIG_IGN {
                    continue;
                }
                let mut catch: libc::sigaction = mem::zeroed();
                catch.sa_sigaction = spare_signal
                    as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
                    as usize;
                catch.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
                libc::sigemptyset(&mut catch.sa_mask);
                if libc::sigaction(*sig, &catch, ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                *old = Some(was);
            }
        }
        rustix::process::set_parent_process_death_signal(Signal::from_named_raw(
            SPARE_PARENT_DEATH,
        ))?;
        if getppid() != server {
            // Gone before it asked: as if its death came now (dead unless taken meanwhile).
            die_if_untaken(word, idle, dead);
        }
        let mask = spare_caught_set();
        // SAFETY: `mask` is an initialised set of valid signals; the old mask is not asked for
        // (a null pointer, which pthread_sigmask accepts).
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &mask, ptr::null_mut()) };
        Ok(SpareSignals { replaced })
    }

    /// In the spare just taken (its word no longer idle): no parent-death signal any more (the
    /// child is tied to the user's process alone); the replaced actions back; the caught
    /// signals, a SIGUSR2 another process sent among them, that came once it was taken raised
    /// again, for the child. (A signal already
    /// pending when the parent-death signal is cleared is handled before the actions change.)
    pub(crate) fn taken(self) {
        let _ = rustix::process::set_parent_process_death_signal(None);
        for (sig, old) in &self.replaced {
            if let Some(old) = old {
                // SAFETY: `old` is the action read from the kernel in `catch`.
                unsafe { libc::sigaction(*sig, old, ptr::null_mut()) };
            }
        }
        SPARE_WORD.store(ptr::null_mut(), std::sync::atomic::Ordering::Release);
        let kept = SPARE_KEPT.swap(0, std::sync::atomic::Ordering::Relaxed);
        for sig in SPARE_CAUGHT {
            if kept & (1 << sig) != 0 {
                // SAFETY: raise(3) has no memory-safety preconditions.
                unsafe { libc::raise(sig) };
            }
        }
    }
}

/// Blocks every signal for this thread: a helper thread (the parent watcher) never takes a
/// signal meant for the process, so the process's other threads decide what it does.
pub(crate) fn block_all_signals_in_this_thread() {
    // SAFETY: an all-zero sigset is valid storage; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `all` is valid storage; the mask call takes an initialised set and no old one.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, ptr::null_mut());
    }
}

/// Blocks `SIGTERM` for this thread (and the threads it starts later) and returns a blocking
/// signalfd(2) that becomes readable when one arrives: a remote agent drains on it.
#[cfg(feature = "remote")]
pub(crate) fn sigterm_fd() -> io::Result<OwnedFd> {
    let mut mask = empty_sigset();
    // SAFETY: `mask` is an initialised sigset and SIGTERM is a valid signal.
    unsafe { libc::sigaddset(&mut mask, libc::SIGTERM) };
    // SAFETY: blocks one signal for this thread, with an initialised set; no old set asked.
    if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &mask, ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: -1 asks for a new descriptor; `mask` is an initialised set.
    let fd = unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Empties a signalfd of pending `SIGCHLD` records.
pub(crate) fn drain_signalfd(fd: BorrowedFd<'_>) {
    let mut buf = [0u8; mem::size_of::<libc::signalfd_siginfo>() * 8];
    while let Ok(1..) = rustix::io::read(fd, &mut buf) {}
}

/// Unblocks every signal for this thread: every worker starts with a clean mask, whatever
/// the thread that started it had blocked.
pub(crate) fn unblock_all_signals() {
    let empty = empty_sigset();
    // SAFETY: setting the mask to an initialised empty set has no other preconditions.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) };
}

fn sigchld_set() -> libc::sigset_t {
    let mut set = empty_sigset();
    // SAFETY: `set` is an initialised sigset and SIGCHLD is a valid signal.
    unsafe { libc::sigaddset(&mut set, libc::SIGCHLD) };
    set
}

/// Flushes nothing and writes `msg` to standard error with one write(2): safe to call in a
/// freshly forked child or before `main`.
pub(crate) fn write_stderr(msg: &str) {
    let _ = rustix::io::write(rustix::stdio::stderr(), msg.as_bytes());
}

/// Removes an environment variable while the process is still single-threaded (before `main`).
pub(crate) fn remove_env_before_main(name: &str) {
    // SAFETY: only called from the .init_array constructor, before `main` and before any
    // thread exists, so nothing can read the environment concurrently.
    unsafe { std::env::remove_var(name) };
}

/// Closes every descriptor above 2 except those in `keep` (close_range(2)). For a fork server
/// child, whose every other descriptor belongs to the server.
pub(crate) fn close_all_fds_except(keep: &[RawFd]) {
    let close_range = |first: RawFd, last: libc::c_uint| {
        // SAFETY: close_range only closes descriptors; the caller (a freshly forked child that
        // never returns into the server's code) owns none of them through live Rust objects
        // it will drop.
        unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, last, 0) };
    };
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut first = 3;
    for k in keep {
        if k > first {
            close_range(first, (k - 1) as libc::c_uint);
        }
        first = first.max(k + 1);
    }
    close_range(first, libc::c_uint::MAX);
}

/// What `/proc/<pid>/stat` says of a process: whether it still runs (not a zombie) and when
/// it started (clock ticks after boot: with the pid, this names one process even after its
/// pid is reused). `None` when there is no such process.
pub(crate) fn process_start(pid: u32) -> Option<(bool, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything; fields after it
    // are space-separated: state is field 3, starttime field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((!matches!(state, "Z" | "X" | "x"), start))
}

/// How many low bits of a start time [`me`] gives and [`still_runs`] compares at most:
/// clock ticks, centuries' worth (so that a pid and a start time pack into one word).
pub(crate) const START_BITS: u32 = 42;

/// The low `bits` bits of a start time, as [`me`] keeps them.
pub(crate) fn start_key(start: u64, bits: u32) -> u64 {
    start & ((1 << bits) - 1)
}

/// This process: its pid and its start time ([`process_start`], its low [`START_BITS`]),
/// looked up once per process (a fork child looks again); `None` for the start time when
/// `/proc` cannot say.
pub(crate) fn me() -> (u32, Option<u64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ME: AtomicU64 = AtomicU64::new(0);
    let pid = getpid();
    let packed = ME.load(Ordering::Relaxed);
    if packed != 0 && (packed >> START_BITS) as u32 == pid {
        return (pid, Some(start_key(packed, START_BITS)));
    }
    let Some((_, start)) = process_start(pid) else {
        return (pid, None);
    };
    let start = start_key(start, START_BITS);
    ME.store((u64::from(pid) << START_BITS) | start, Ordering::Relaxed);
    (pid, Some(start))
}

/// Whether process `pid`, whose start time's low `bits` bits are `start` ([`me`]), still
/// runs: not a zombie, and not another process with its pid. Without `/proc` to tell,
/// whether kill(2) finds a process `pid` (a zombie included).
pub(crate) fn still_runs(pid: u32, start: u64, bits: u32) -> bool {
    match process_start(pid) {
        Some((running, now)) => running && start_key(now, bits) == start,
        None => kill(pid, 0).map_or_else(|e| e.raw_os_error() != Some(libc::ESRCH), |()| true),
    }
}

/// Process `pid`'s own resident memory in bytes: `RssAnon` in `/proc/<pid>/status`, its heap,
/// stacks and other private memory in RAM. Not the memory files it shares with others (such
/// as a pool's lanes, a large message or a [`Buffer`](crate::Buffer)), nor the pages of files
/// it maps (its executable's and libraries' code, which the page cache holds for every process,
/// and which a fork server's spare maps ahead: [`map_in_code`]). `VmRSS` before Linux 4.5,
/// which has no `RssAnon`. `None` when there is no such process.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_ascii_whitespace().next()?.parse().ok()
    };
    Some(kib("RssAnon:").or_else(|| kib("VmRSS:"))? * 1024)
}

/// This process's effective user id (geteuid(2)): what `SO_PEERCRED` reports of it.
pub(crate) fn geteuid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Ignores the signals that ask a process to stop (`SIGINT`, `SIGTERM`, `SIGHUP`), for a
/// helper whose work is to clean up after the processes that are stopped that way.
pub(crate) fn ignore_stop_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing SIG_IGN has no memory-safety preconditions.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// For a long-lived helper process: starts a new session (so the terminal's signals, such as
/// Ctrl-C's `SIGINT`, and a `kill` of the caller's process group do not reach it), points its
/// standard streams at `/dev/null` (so it holds no pipe a test runner or shell waits on), and
/// raises its descriptor limit as far as it may go.
///
/// See setsid(2), dup2(2), setrlimit(2).
pub(crate) fn detach() {
    // It fails harmlessly for a process that already leads a group.
    let _ = rustix::process::setsid();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdin(&null);
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
    let nofile = rustix::process::Resource::Nofile;
    let mut lim = rustix::process::getrlimit(nofile);
    lim.current = lim.maximum;
    let _ = rustix::process::setrlimit(nofile, lim);
}

/// 64 random bits from the kernel (getrandom(2)), for names nobody can guess.
pub(crate) fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        let flags = rustix::rand::GetRandomFlags::empty();
        match rustix::rand::getrandom(&mut bytes[filled..], flags) {
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(u64::from_ne_bytes(bytes))
}

/// Runs `f` when this process exits normally (its `main` returns, or `exit(3)` /
/// `std::process::exit` is called); not on `_exit`, `abort` or a signal. `f` must not unwind.
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `f` is a plain function with no arguments, valid for the life of the process.
    match unsafe { libc::atexit(f) } {
        0 => Ok(()),
        _ => Err(io::Error::other("atexit: no room for another handler")),
    }
}

/// Sets an environment variable in a child that is about to run its target.
pub(crate) fn set_env(key: &std::ffi::OsStr, value: &std::ffi::OsStr) {
    // SAFETY: called by a new child before its target or pool work starts, from its one thread
    // that touches the environment (its parent watcher never reads it).
    unsafe { std::env::set_var(key, value) };
}

/// Removes an environment variable in a child that is about to run its target.
pub(crate) fn remove_env(key: &std::ffi::OsStr) {
    // SAFETY: as for `set_env`.
    unsafe { std::env::remove_var(key) };
}

/// Removes every environment variable in a child that is about to run its target.
pub(crate) fn clear_env() {
    for (key, _) in std::env::vars_os() {
        remove_env(&key);
    }
}

/// `/dev/null`, for reading (`input`) or writing.
pub(crate) fn open_dev_null(input: bool) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let mode = if input { OFlags::RDONLY } else { OFlags::WRONLY };
    Ok(rustix::fs::open("/dev/null", mode | OFlags::CLOEXEC, Mode::empty())?)
}

/// Makes `fd` this process's standard stream `n` (0 stdin, 1 stdout, 2 stderr).
pub(crate) fn replace_stdio(n: usize, fd: BorrowedFd<'_>) -> io::Result<()> {
    match n {
        0 => rustix::stdio::dup2_stdin(fd)?,
        1 => rustix::stdio::dup2_stdout(fd)?,
        _ => rustix::stdio::dup2_stderr(fd)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::process::Command;

    use super::*;

    /// The `Size:` and `Rss:` of the mappings of `path` with permissions `perms`, in KiB, from
    /// `/proc/self/smaps`.
    fn mapped_kib(path: &str, perms: &str) -> Vec<(u64, u64)> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let mut found = Vec::new();
        while let Some(line) = lines.next() {
            if !(line.ends_with(path) && line.split_ascii_whitespace().nth(1) == Some(perms)) {
                continue;
            }
            let mut kib = |name: &str| -> u64 {
                let line = lines.find(|l| l.starts_with(name)).unwrap();
                line[name.len()..].split_ascii_whitespace().next().unwrap().parse().unwrap()
            };
            let size = kib("Size:");
            let rss = kib("Rss:");
            found.push((size, rss));
        }
        found
    }

    #[test]
    fn code_is_mapped_in_a_slice_at_a_time_until_asked_to_stop() {
        if kernel() < (5, 14) {
            return; // no MADV_POPULATE_READ: map_in_code does nothing
        }
        // Asked to stop at its third look: two slices, then it returns.
        let mut looks = 0;
        map_in(MAP_IN_BUDGET, || {
            looks += 1;
            looks == 3
        });
        assert_eq!(looks, 3);
        // Left to finish: every page of this executable's code is mapped in (smaps: its
        // resident size is its size), once the file is all in the page cache. Only pages the
        // cache holds are mapped, by design, and a machine short of memory (a CI run's tests
        // and builds in parallel, under a memory limit) may drop a few between the read and
        // the mapping (seen once: 2 pages of 2481): a few tries, each reading the file again.
        let exe = std::env::current_exe().unwrap();
        let resident = resident_bytes(std::process::id()).unwrap();
        let mut code = Vec::new();
        for _ in 0..5 {
            std::fs::read(&exe).unwrap();
            map_in(MAP_IN_BUDGET, || false);
            code = mapped_kib(exe.to_str().unwrap(), "r-xp");
            assert_eq!(code.len(), 1, "this executable has one code mapping");
            if code[0].0 == code[0].1 {
                break;
            }
        }
        assert_eq!(code[0].0, code[0].1, "every page of its code is mapped in");
        // None of it counts as the process's own memory, which the caps read.
        let after = resident_bytes(std::process::id()).unwrap();
        assert!(
            after < resident + (code[0].1 * 1024) / 4 + (1 << 20),
            "{resident} -> {after} bytes with {} KiB of code mapped",
            code[0].1
        );
    }

    /// A file made for a test, mapped as code is, unmapped and removed however the test ends.
    struct Mapped {
        path: std::path::PathBuf,
        at: *mut libc::c_void,
        len: usize,
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            // SAFETY: the mapping made in the test, used no more.
            let _ = unsafe { rustix::mm::munmap(self.at, self.len) };
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn pages_not_in_the_page_cache_are_not_read_in() {
        if kernel() < (5, 14) {
            return;
        }
        // A 4 MiB "library" of this user's (so mincore tells the truth of it), its name with a
        // space (as /proc/self/maps shows it), on disk beside the test binary (or in the
        // temporary directory), dropped from the page cache, then mapped as code is.
        let name = format!("mproc cold {}.so", std::process::id());
        let len = 4 << 20;
        let exe_dir = std::env::current_exe().unwrap().parent().unwrap().to_owned();
        let path = [exe_dir, std::env::temp_dir()]
            .into_iter()
            .map(|d| d.join(&name))
            .find(|p| std::fs::write(p, vec![7u8; len]).is_ok())
            .expect("a directory to write in");
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: POSIX_FADV_DONTNEED only drops clean cached pages of this file.
        let dropped = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(dropped, 0);
        // SAFETY: a fresh private read-only mapping of a file nobody changes while it is
        // mapped; unmapped (by `Mapped`) before the file is removed.
        let at = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::PRIVATE,
                &file,
                0,
            )
        }
        .unwrap();
        let mapped = Mapped { path, at, len };
        let shown = mapped.path.to_str().unwrap().to_owned();
        let page = rustix::param::page_size();
        let page_kib = page as u64 / 1024;
        let cached = |from: usize, to: usize| -> usize {
            let mut vec = vec![0u8; (to - from) / page];
            // SAFETY: `vec` has a byte per page of the range, which is mapped.
            let r = unsafe {
                libc::mincore(
                    at.cast::<u8>().add(from).cast(),
                    to - from,
                    vec.as_mut_ptr(),
                )
            };
            assert_eq!(r, 0);
            vec.iter().filter(|&&c| c & 1 != 0).count()
        };
        let before = cached(0, len);
        if before > len / page / 4 {
            // tmpfs and the like keep their pages: nothing here to test.
            eprintln!("{shown}: the page cache kept {before} pages; skipped");
            return;
        }
        // What the drop left cached (nothing, usually) is mapped in; nothing else is read. No
        // budget: run beside other tests, this process may have mapped in its whole
        // executable (to print a backtrace), which would take the budget.
        map_in(usize::MAX, || false);
        assert_eq!(cached(0, len), before, "no page was read in");
        assert_eq!(
            mapped_kib(&shown, "r--p"),
            vec![((len / 1024) as u64, before as u64 * page_kib)]
        );
        // Once the first half is cached (read by another, with no read-ahead), what is cached
        // is mapped in.
        // SAFETY: POSIX_FADV_RANDOM only turns off read-ahead on this description.
        let random = unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_RANDOM) };
        assert_eq!(random, 0);
        let mut half = vec![0u8; len / 2];
        std::io::Read::read_exact(&mut &file, &mut half).unwrap();
        let now = cached(0, len);
        assert!(
            now >= len / 2 / page && now <= len / 2 / page + before,
            "{now} pages cached"
        );
        map_in(usize::MAX, || false);
        assert_eq!(cached(0, len), now, "no page was read in");
        assert_eq!(
            mapped_kib(&shown, "r--p"),
            vec![((len / 1024) as u64, now as u64 * page_kib)]
        );
        drop(mapped);
    }

    /// This kernel's (major, minor) version.
    fn kernel() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (next(), next())
    }

    #[test]
    fn the_kernel_records_how_a_reaped_process_ended() {
        let mut exits = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let mut killed = Command::new("sleep").arg("60").spawn().unwrap();
        let exits_fd = pidfd_open(exits.id()).unwrap();
        let killed_fd = pidfd_open(killed.id()).unwrap();
        assert_eq!(exit_record(killed_fd.as_fd()), None, "it still runs");
        pidfd_signal(killed_fd.as_fd(), libc::SIGTERM).unwrap();
        assert_eq!(exits.wait().unwrap().code(), Some(3));
        assert!(killed.wait().unwrap().code().is_none());
        let records = [
            exit_record(exits_fd.as_fd()),
            exit_record(killed_fd.as_fd()),
        ];
        if kernel() >= (6, 15) {
            assert_eq!(
                records,
                [Some(Exit::Code(3)), Some(Exit::Signal(libc::SIGTERM))]
            );
        }
    }

    #[test]
    fn a_pipe_description_of_its_own_is_the_same_pipe() {
        let (read, write) = crate::sys::fd::pipe().unwrap();
        let own = reopen_pipe_reader(read.as_fd()).unwrap();
        let ready = crate::sys::fd::poll_read(&[own.as_fd()], Some(std::time::Instant::now()));
        assert!(!ready.unwrap()[0].hangup, "a writer is still there");
        drop(write);
        let ready = crate::sys::fd::poll_read(&[own.as_fd()], Some(std::time::Instant::now()));
        assert!(ready.unwrap()[0].hangup, "the last writer left");
    }

    /// What lets a fork server hand a dead child's tie to the next child: a description
    /// disowned after use (or never claimed) signals nobody at the hang-up. If it still named
    /// this process, the hang-up below would SIGKILL this test.
    #[test]
    fn a_disowned_hangup_killer_signals_nobody() {
        let (read, write) = crate::sys::fd::pipe().unwrap();
        let unclaimed = hangup_killer(read.as_fd()).unwrap();
        let handed_on = hangup_killer(read.as_fd()).unwrap();
        assert!(!kill_me_on_hangup(handed_on.as_fd(), getpid()).unwrap());
        disown(handed_on.as_fd()).unwrap();
        drop(write);
        for killer in [&unclaimed, &handed_on] {
            let ready = crate::sys::fd::poll_read(&[killer.as_fd()], None);
            assert!(ready.unwrap()[0].hangup, "the last writer left");
        }
        // A claim that comes after the hang-up is told so: no signal will come for it.
        assert!(kill_me_on_hangup(handed_on.as_fd(), getpid()).unwrap());
        disown(handed_on.as_fd()).unwrap();
    }

    fn cpus(list: &[usize]) -> rustix::thread::CpuSet {
        let mut set = rustix::thread::CpuSet::new();
        list.iter().for_each(|&c| set.set(c));
        set
    }

    #[test]
    fn cpu_lists_are_read_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(cpus(&[0, 1, 2, 3, 8, 10, 11])));
        assert_eq!(parse_cpu_list("5"), Some(cpus(&[5])));
        for bad in ["", "\n", "3-1", "a", "1,", "-2", "0-99999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_thread_moves_when_its_set_is_every_cpu_or_its_cpusets_whole() {
        let four = cpus(&[4, 5, 6, 7]);
        // Every online CPU: as before.
        assert!(free_to_move(&cpus(&[0, 1]), 2, None));
        // A container's cpuset of 4 CPUs of 16, the set untouched: it may move (it never could).
        assert!(free_to_move(&four, 16, Some(&four)));
        // Narrowed by hand within the cpuset, or without one: it stays.
        assert!(!free_to_move(&cpus(&[4, 5]), 16, Some(&four)));
        assert!(!free_to_move(&cpus(&[4, 5]), 16, None));
        // One CPU: nowhere to go.
        assert!(!free_to_move(&cpus(&[4]), 16, Some(&cpus(&[4]))));
    }

    #[test]
    fn the_cpuset_is_found_in_either_cgroup_version_or_an_ancestor() {
        let files = |have: &'static [(&'static str, &'static str)]| {
            move |path: &str| have.iter().find(|(p, _)| *p == path).map(|(_, t)| (*t).to_owned())
        };
        // v1: the process's own cgroup says nothing; its parent does.
        let v1 = "12:pids:/a\n3:cpuset,cpu:/kube/pod1/c\n0::/\n";
        let read = files(&[("/sys/fs/cgroup/cpuset/kube/pod1/cpuset.effective_cpus", "2-3\n")]);
        assert_eq!(cpuset_file(v1, read), Some(cpus(&[2, 3])));
        // v2 only.
        let v2 = "0::/system.slice/app.service\n";
        let read = files(&[(
            "/sys/fs/cgroup/system.slice/app.service/cpuset.cpus.effective",
            "0,2\n",
        )]);
        assert_eq!(cpuset_file(v2, read), Some(cpus(&[0, 2])));
        // The root's file, the cgroup being "/".
        let read = files(&[("/sys/fs/cgroup/cpuset.cpus.effective", "0-1\n")]);
        assert_eq!(cpuset_file("0::/\n", read), Some(cpus(&[0, 1])));
        // Nothing to read.
        assert_eq!(cpuset_file(v2, |_: &str| None), None);
        assert_eq!(cpuset_file("garbage", |_: &str| Some("0".to_owned())), None);
    }

    #[test]
    fn this_process_cpuset_if_any_holds_the_cpu_it_runs_on() {
        // Where this machine has a cpuset to read, it gives every CPU this thread may use.
        if let Some(set) = cpuset_cpus() {
            let allowed = rustix::thread::sched_getaffinity(None).unwrap();
            for cpu in 0..rustix::thread::CpuSet::MAX_CPU {
                assert!(!allowed.is_set(cpu) || set.is_set(cpu), "CPU {cpu} allowed, not in {set:?}");
            }
        }
    }
}
