//! Named shared memory across processes, under every start method: bytes shared through a
//! passed handle and through the name, the name removed exactly once when the last holder ends
//! (its creator SIGKILLed included) and never while one still holds it, explicit unlink, and
//! segments made by other programs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mproc::{Connection, ErrorKind, Pool, SharedMemory, StartMethod, pipe};

use crate::common::{PATIENCE, has_ended, pattern, start, wait_until};

fn in_dev_shm(name: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(name)
}

fn errno(e: &mproc::Error) -> Option<i32> {
    match e.kind() {
        ErrorKind::Os(os) => os.errno,
        _ => None,
    }
}

const ENOENT: i32 = 2;
const EEXIST: i32 = 17;

/// Checks what the parent wrote, then writes its own pattern after it; returns whether the
/// parent's bytes were there.
fn check_then_write(shm: SharedMemory) -> bool {
    let mut got = vec![0; 300_000];
    shm.read_at(0, &mut got).unwrap();
    let ok = got == pattern(1, 300_000);
    shm.write_at(300_000, &pattern(2, 700_000)).unwrap();
    ok
}

fn a_passed_handle_shares_bytes_both_ways(m: StartMethod) {
    let shm = SharedMemory::create(1_000_000).unwrap();
    shm.write_at(0, &pattern(1, 300_000)).unwrap();
    let mut p = start(m, check_then_write, (shm.clone(),));
    assert!(
        p.join_timeout(PATIENCE).unwrap(),
        "the child saw the parent's bytes"
    );
    let mut got = vec![0; 700_000];
    shm.read_at(300_000, &mut got).unwrap();
    assert!(
        got == pattern(2, 700_000),
        "the parent sees the child's bytes"
    );
}

/// Opens `name`, writes `byte` at `at`, and returns its length.
fn open_and_write(name: String, at: usize, byte: u8) -> usize {
    let shm = SharedMemory::open(&name).unwrap();
    shm.write_at(at, &[byte]).unwrap();
    shm.len()
}

/// Opens `name`, says so, and waits to be killed.
fn open_and_hang(name: String, ready: Connection<usize>) {
    let shm = SharedMemory::open(&name).unwrap();
    ready.send(shm.len()).unwrap();
    std::thread::sleep(PATIENCE * 2);
}

/// cpython gh-82300: a process that only opened a segment removes it when it exits. Here no
/// opener, ending well or SIGKILLed, removes it; the name goes when its last holder does.
fn openers_that_end_never_remove_the_name(m: StartMethod) {
    let shm = SharedMemory::create(5000).unwrap();
    let name = shm.name().to_owned();
    let mut p = start(m, open_and_write, (name.clone(), 4999, 9u8));
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 5000);

    let (here, there) = pipe().unwrap();
    let p = start(m, open_and_hang, (name.clone(), there));
    assert_eq!(here.recv_timeout(PATIENCE).unwrap(), 5000);
    p.kill().unwrap();
    let pid = p.pid().unwrap();
    wait_until("the opener has ended", || has_ended(pid));
    std::thread::sleep(Duration::from_millis(200)); // time the keeper would need to act

    assert!(in_dev_shm(&name).exists(), "an opener removed the name");
    let again = SharedMemory::open(&name).unwrap();
    let mut last = [0];
    again.read_at(4999, &mut last).unwrap();
    assert_eq!(last, [9]);
    drop((shm, again));
    wait_until("the name is removed after the last handle", || {
        !in_dev_shm(&name).exists()
    });
}

/// Creates a segment, sends its name, and waits to be killed.
fn create_and_hang(size: usize, out: Connection<String>) {
    let shm = SharedMemory::create(size).unwrap();
    shm.write_at(size - 1, &[77]).unwrap();
    out.send(shm.name().to_owned()).unwrap();
    std::thread::sleep(PATIENCE * 2);
}

/// The creator SIGKILLed while it alone holds the segment: nothing stays in /dev/shm.
fn a_killed_creator_leaves_nothing_behind(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let p = start(m, create_and_hang, (4096usize, there));
    let name = here.recv_timeout(PATIENCE).unwrap();
    assert!(in_dev_shm(&name).exists());
    p.kill().unwrap();
    wait_until("the killed creator's segment is removed", || {
        !in_dev_shm(&name).exists()
    });
    assert_eq!(errno(&SharedMemory::open(&name).unwrap_err()), Some(ENOENT));
}

/// The creator SIGKILLed while another process holds the segment: the name stays for the
/// holder, and goes when it lets go.
fn a_killed_creator_leaves_the_name_to_other_holders(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let p = start(m, create_and_hang, (100_000usize, there));
    let name = here.recv_timeout(PATIENCE).unwrap();
    let shm = SharedMemory::open(&name).unwrap();
    p.kill().unwrap();
    let pid = p.pid().unwrap();
    wait_until("the creator has ended", || has_ended(pid));
    std::thread::sleep(Duration::from_millis(200));
    assert!(in_dev_shm(&name).exists(), "removed under a holder");
    let mut last = [0];
    shm.read_at(99_999, &mut last).unwrap();
    assert_eq!(last, [77]);
    // A third process can still open it by name.
    let mut q = start(m, open_and_write, (name.clone(), 0, 1u8));
    assert_eq!(q.join_timeout(PATIENCE).unwrap(), 100_000);
    drop(shm);
    wait_until("the name is removed after the last holder", || {
        !in_dev_shm(&name).exists()
    });
}

/// Holds a received segment until killed, after saying so.
fn hold_received(shm: SharedMemory, ready: Connection<usize>) {
    ready.send(shm.len()).unwrap();
    std::thread::sleep(PATIENCE * 2);
}

/// The creator drops its handle while a child holds the one it was passed: the name stays
/// until the child is killed.
fn a_passed_handle_holds_the_name_until_its_holder_dies(m: StartMethod) {
    let shm = SharedMemory::create(64).unwrap();
    let name = shm.name().to_owned();
    let (here, there) = pipe().unwrap();
    let p = start(m, hold_received, (shm.clone(), there));
    assert_eq!(here.recv_timeout(PATIENCE).unwrap(), 64);
    drop(shm);
    std::thread::sleep(Duration::from_millis(200));
    assert!(in_dev_shm(&name).exists(), "removed while a child holds it");
    p.kill().unwrap();
    wait_until("the name is removed after its last holder died", || {
        !in_dev_shm(&name).exists()
    });
}

/// Unlinks the segment it was passed, then writes into it.
fn unlink_then_write(shm: SharedMemory) -> bool {
    let unlinked = shm.unlink().is_ok();
    shm.write_at(0, b"after").unwrap();
    unlinked
}

fn unlink_removes_the_name_once(m: StartMethod) {
    let shm = SharedMemory::create(10).unwrap();
    let name = shm.name().to_owned();
    let mut p = start(m, unlink_then_write, (shm.clone(),));
    assert!(
        p.join_timeout(PATIENCE).unwrap(),
        "the child's unlink succeeded"
    );
    assert!(!in_dev_shm(&name).exists());
    assert_eq!(errno(&shm.unlink().unwrap_err()), Some(ENOENT), "once only");
    assert_eq!(errno(&SharedMemory::open(&name).unwrap_err()), Some(ENOENT));
    let mut got = [0; 5];
    shm.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"after", "the memory outlives its name");
}

/// Writes its index into the segment (a pool task).
fn mark(shm: SharedMemory, i: usize) -> usize {
    shm.write_at(i, &[i as u8 + 1]).unwrap();
    i
}

fn pool_tasks_receive_the_segment(m: StartMethod) {
    let shm = SharedMemory::create(32).unwrap();
    let pool = Pool::builder()
        .processes(2)
        .start_method(m)
        .build()
        .unwrap();
    let done = pool
        .starmap_async(mark, (0..32).map(|i| (shm.clone(), i)))
        .unwrap()
        .get_timeout(PATIENCE)
        .unwrap();
    assert_eq!(done, (0..32).collect::<Vec<_>>());
    let mut got = [0; 32];
    shm.read_at(0, &mut got).unwrap();
    assert!(
        got.iter().enumerate().all(|(i, &b)| b == i as u8 + 1),
        "{got:?}"
    );
    pool.terminate();
}

/// Receives a segment inside a message and writes into it.
fn write_received(conn: Connection<SharedMemory>) {
    let shm = conn.recv().unwrap();
    shm.write_at(0, b"through a pipe").unwrap();
}

fn a_segment_travels_inside_a_message(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let mut p = start(m, write_received, (there,));
    let shm = SharedMemory::create(14).unwrap();
    here.send(&shm).unwrap();
    p.join_timeout(PATIENCE).unwrap();
    let mut got = [0; 14];
    shm.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"through a pipe");
}

/// A segment another program made (here, plain file calls on /dev/shm): mproc opens it,
/// processes that open it end, and its name stays until someone unlinks it.
fn a_segment_made_elsewhere_is_only_removed_by_unlink(m: StartMethod) {
    /// Removes the file even if the test fails.
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let name = format!("mproc-test-foreign-{}-{}", std::process::id(), m);
    let _remove = Remove(in_dev_shm(&name));
    std::fs::write(in_dev_shm(&name), vec![5u8; 3000]).unwrap();
    let shm = SharedMemory::open(&name).unwrap();
    assert_eq!(shm.len(), 3000);
    let mut p = start(m, open_and_write, (name.clone(), 2999, 6u8));
    assert_eq!(p.join_timeout(PATIENCE).unwrap(), 3000);
    drop(shm);
    std::thread::sleep(Duration::from_millis(100));
    let bytes = std::fs::read(in_dev_shm(&name)).unwrap();
    assert_eq!((bytes[0], bytes[2999]), (5, 6));
    SharedMemory::open(&name).unwrap().unlink().unwrap();
    assert!(!in_dev_shm(&name).exists());
}

/// The keeper of the segment named `name`: the process, other than this one, that has the
/// segment's file open and leads a session of its own (as the keeper does; no child a test
/// starts does). Panics if there is none.
fn keeper_of(name: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(in_dev_shm(name)).unwrap();
    let (dev, ino) = (meta.dev(), meta.ino());
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 6, the session, counts from the state after the command's closing parenthesis.
        let session = stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(3);
        if pid == me || session != Some(pid.to_string().as_str()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino)));
        if holds {
            return pid;
        }
    }
    panic!("no keeper holds {name:?}");
}

/// SIGKILLs the keeper of `name` and waits until it has ended.
fn kill_keeper_of(name: &str) {
    let keeper = keeper_of(name);
    // SAFETY: kill(2) has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(keeper as i32, libc::SIGKILL) }, 0);
    wait_until("the keeper has ended", || has_ended(keeper));
}

/// Polls until `name` is gone from /dev/shm, for at most 5 s.
fn wait_until_removed(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while in_dev_shm(name).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{name:?} is still in /dev/shm 5 s after its last holder let go"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Holds a received segment, says so, and lets go when told (checking on the way that its name
/// was there all along and that it still opens by name).
fn hold_until_told(shm: SharedMemory, talk: Connection<bool>) -> bool {
    talk.send(true).unwrap();
    let _go = talk.recv_timeout(PATIENCE).unwrap();
    let still_there = in_dev_shm(shm.name()).exists() && SharedMemory::open(shm.name()).is_ok();
    drop(shm);
    still_there
}

/// The keeper SIGKILLed (as the out-of-memory killer does) while this process and a child hold
/// the segment: the name stays while either holds it, and goes within a bounded time once both
/// have dropped their handles.
fn a_killed_keeper_leaves_nothing_once_every_holder_lets_go(m: StartMethod) {
    let shm = SharedMemory::create(4096).unwrap();
    let name = shm.name().to_owned();
    let (here, there) = pipe().unwrap();
    let mut p = start(m, hold_until_told, (shm.clone(), there));
    assert!(here.recv_timeout(PATIENCE).unwrap());
    kill_keeper_of(&name);
    drop(shm);
    std::thread::sleep(Duration::from_millis(200)); // time a keeper would need to act
    assert!(in_dev_shm(&name).exists(), "removed while a child holds it");
    here.send(true).unwrap();
    assert!(
        p.join_timeout(PATIENCE).unwrap(),
        "the child saw its name removed while it held it"
    );
    wait_until_removed(&name);
}

/// The keeper and every holder SIGKILLed, so that no handle is ever dropped: the next keeper of
/// this user (started here by a create in a new child) removes the orphaned name.
fn the_next_keeper_adopts_names_whose_holders_all_died(m: StartMethod) {
    let (here, there) = pipe().unwrap();
    let p = start(m, create_and_hang, (4096usize, there));
    let name = here.recv_timeout(PATIENCE).unwrap();
    kill_keeper_of(&name);
    p.kill().unwrap();
    let pid = p.pid().unwrap();
    wait_until("the creator has ended", || has_ended(pid));
    // Nobody is left to remove it here; but a keeper that another test starts meanwhile (the
    // other start methods' runs of this one) adopts it too, so it may be gone already.
    let mut q = start(m, create_in_child, (64usize,));
    assert_eq!(q.join_timeout(PATIENCE).unwrap(), 64);
    wait_until_removed(&name);
}

/// Binds, in this process, the abstract socket addresses that a keeper deriving its address from
/// the device and inode numbers of `/dev/shm` files would use for the next `count` files, says
/// so, and waits to be killed.
fn squat_keeper_addresses(dev: u64, first_ino: u64, count: u64, ready: Connection<u64>) {
    let mut bound = 0;
    for ino in first_ino..first_ino + count {
        let name = format!("mproc-shm:{dev:x}:{ino:x}");
        // SAFETY: plain socket calls on a zeroed sockaddr_un filled within its bounds; the
        // sockets are left open on purpose until this process is killed.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET, 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            for (slot, &b) in addr.sun_path[1..].iter_mut().zip(name.as_bytes()) {
                *slot = b as libc::c_char;
            }
            let len = std::mem::size_of::<libc::sa_family_t>() + 1 + name.len();
            let ok = libc::bind(fd, (&addr as *const libc::sockaddr_un).cast(), len as _) == 0
                && libc::listen(fd, 1) == 0;
            bound += u64::from(ok);
        }
    }
    ready.send(bound).unwrap();
    std::thread::sleep(PATIENCE * 2);
}

/// Another process binds every socket address a keeper could be expected to use next: creates
/// still succeed, and every segment opens by name in another process.
fn squatted_addresses_do_not_stop_a_create(m: StartMethod) {
    use std::os::unix::fs::MetadataExt;
    // The next inode numbers of /dev/shm follow this one's.
    let probe = format!("mproc-test-probe-{}-{m}", std::process::id());
    std::fs::write(in_dev_shm(&probe), b"").unwrap();
    let meta = std::fs::metadata(in_dev_shm(&probe)).unwrap();
    std::fs::remove_file(in_dev_shm(&probe)).unwrap();
    let (here, there) = pipe().unwrap();
    let squatter = start(
        m,
        squat_keeper_addresses,
        (meta.dev(), meta.ino() + 1, 100u64, there),
    );
    assert_eq!(
        here.recv_timeout(PATIENCE).unwrap(),
        100,
        "the squatter bound every address"
    );
    let segments: Vec<SharedMemory> = (0..5)
        .map(|i| SharedMemory::create(100 + i).expect("a create despite the squatter"))
        .collect();
    for (i, shm) in segments.iter().enumerate() {
        let mut p = start(m, open_and_write, (shm.name().to_owned(), i, 7u8));
        assert_eq!(p.join_timeout(PATIENCE).unwrap(), 100 + i);
        let mut got = [0];
        shm.read_at(i, &mut got).unwrap();
        assert_eq!(got, [7]);
    }
    squatter.kill().unwrap();
    let names: Vec<String> = segments.iter().map(|s| s.name().to_owned()).collect();
    drop(segments);
    wait_until("every name is removed", || {
        names.iter().all(|n| !in_dev_shm(n).exists())
    });
}

per_start_method!(
    a_passed_handle_shares_bytes_both_ways,
    openers_that_end_never_remove_the_name,
    a_killed_creator_leaves_nothing_behind,
    a_killed_creator_leaves_the_name_to_other_holders,
    a_passed_handle_holds_the_name_until_its_holder_dies,
    unlink_removes_the_name_once,
    pool_tasks_receive_the_segment,
    a_segment_travels_inside_a_message,
    a_segment_made_elsewhere_is_only_removed_by_unlink,
    a_killed_keeper_leaves_nothing_once_every_holder_lets_go,
    the_next_keeper_adopts_names_whose_holders_all_died,
    squatted_addresses_do_not_stop_a_create,
);

/// A fork child inherits every segment its parent holds (as in Python) and holds its name
/// while it lives, though nobody passed it the segment.
#[test]
fn a_fork_child_holds_the_segments_it_inherits() {
    let shm = SharedMemory::create(9).unwrap();
    let name = shm.name().to_owned();
    let p = start(StartMethod::Fork, crate::common::sleep_ms, (60_000u64,));
    drop(shm);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        in_dev_shm(&name).exists(),
        "removed while a fork child holds it"
    );
    p.kill().unwrap();
    wait_until("the name is removed after the fork child died", || {
        !in_dev_shm(&name).exists()
    });
}

/// Creates a segment while another thread of the parent may be creating one: the child must
/// not inherit the keeper's lock held by a thread it does not have.
fn create_in_child(size: usize) -> usize {
    SharedMemory::create(size).unwrap().len()
}

#[test]
fn fork_children_create_while_the_parent_creates() {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(SharedMemory::create(8 << 20).unwrap());
            }
        });
        for i in 0..5 {
            let mut p = start(StartMethod::Fork, create_in_child, (4096 + i,));
            assert_eq!(p.join_timeout(PATIENCE).unwrap(), 4096 + i);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// A name removed by someone else (`rm`, or Python's resource tracker) is gone for mproc too,
/// and may be created again: the new segment is a new file, never the old one.
#[test]
fn a_name_removed_elsewhere_can_be_made_again() {
    let old = SharedMemory::create(16).unwrap();
    old.write_at(0, b"old").unwrap();
    let name = old.name().to_owned();
    std::fs::remove_file(in_dev_shm(&name)).unwrap();
    assert_eq!(errno(&SharedMemory::open(&name).unwrap_err()), Some(ENOENT));
    let new = SharedMemory::create_named(&name, 16).unwrap();
    new.write_at(0, b"new").unwrap();
    let opened = SharedMemory::open(&name).unwrap();
    let mut got = [0; 3];
    opened.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"new");
    assert_eq!(
        errno(&old.unlink().unwrap_err()),
        Some(ENOENT),
        "not the old one's to remove"
    );
    assert!(in_dev_shm(&name).exists());
    drop((old, new, opened));
    wait_until("the new name is removed after its last holder", || {
        !in_dev_shm(&name).exists()
    });
}

/// An open that waited for a keeper's lease while the keeper removed the name (it found nobody
/// holding the segment) answers `ENOENT`, as if it came just after: never a handle on a segment
/// whose name is gone, which its holder would pass on to processes that cannot open it.
#[test]
fn an_open_that_waited_out_a_removal_finds_nothing() {
    use std::os::fd::AsRawFd;
    let name = format!("mproc-test-lease-{}", std::process::id());
    let path = in_dev_shm(&name);
    std::fs::write(&path, [0u8; 64]).unwrap();
    // This test plays the keeper: a lease on the only opening, its break reported with a
    // signal ignored by default (SIGIO's default would end the test).
    let own = std::fs::File::open(&path).unwrap();
    let fd = own.as_raw_fd();
    const F_SETSIG: libc::c_int = 10; // fcntl.h, not in the libc crate
    // SAFETY: fcntl(2) on a descriptor this test owns, no pointers.
    unsafe {
        assert_eq!(libc::fcntl(fd, F_SETSIG, libc::SIGWINCH), 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK), 0);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let opener = {
        let name = name.clone();
        std::thread::spawn(move || tx.send(SharedMemory::open(&name).map(drop)).unwrap())
    };
    // SAFETY: as above.
    wait_until("the opener waits for the lease", || unsafe {
        libc::fcntl(fd, libc::F_GETLEASE) != libc::F_WRLCK
    });
    std::fs::remove_file(&path).unwrap();
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    let opened = rx.recv_timeout(PATIENCE).expect("the open returned");
    opener.join().unwrap();
    let e = opened.expect_err("opened a segment whose name had gone");
    assert_eq!(errno(&e), Some(ENOENT), "{e}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let e = SharedMemory::create(0).unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
    for bad in ["", "a/b", "x\0y", ".", "..", &"n".repeat(256)] {
        let e = SharedMemory::create_named(bad, 8).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::InvalidArgument(_)),
            "{bad:?}: {e}"
        );
    }
    assert!(matches!(
        SharedMemory::open("a/b").unwrap_err().kind(),
        ErrorKind::InvalidArgument(_)
    ));
    let e = SharedMemory::open("mproc-test-no-such-segment").unwrap_err();
    assert_eq!(errno(&e), Some(ENOENT), "{e}");

    let name = format!("mproc-test-taken-{}", std::process::id());
    let shm = SharedMemory::create_named(&format!("/{name}"), 8).unwrap();
    assert_eq!(shm.name(), name, "a leading slash is not part of the name");
    let e = SharedMemory::create_named(&name, 8).unwrap_err();
    assert_eq!(errno(&e), Some(EEXIST), "{e}");

    let mut buf = [0; 4];
    for (offset, len) in [(5, 4), (9, 0), (usize::MAX, 4)] {
        let e = shm.read_at(offset, &mut buf[..len]).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
        let e = shm.write_at(offset, &buf[..len]).unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::InvalidArgument(_)), "{e}");
    }
    shm.write_at(8, &[]).unwrap();
    shm.write_at(4, &[1; 4]).unwrap();

    // Too large for /dev/shm: an error now, not a SIGBUS later.
    let e = SharedMemory::create(1 << 60).unwrap_err();
    assert!(errno(&e).is_some(), "{e}");
}

/// Many handles in many threads, dropped in any order: the name goes exactly when the last
/// does, and the keeper serves creates concurrently.
#[test]
fn many_segments_and_threads() {
    let names: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|t| {
                s.spawn(move || {
                    let segs: Vec<SharedMemory> = (0..20)
                        .map(|i| {
                            let shm = SharedMemory::create(100 + i).unwrap();
                            shm.write_at(0, &[t as u8]).unwrap();
                            shm
                        })
                        .collect();
                    let again: Vec<SharedMemory> = segs
                        .iter()
                        .map(|s| SharedMemory::open(s.name()).unwrap())
                        .collect();
                    let names: Vec<String> = segs.iter().map(|s| s.name().to_owned()).collect();
                    drop(segs);
                    for (shm, name) in again.iter().zip(&names) {
                        assert!(in_dev_shm(name).exists());
                        let mut b = [9];
                        shm.read_at(0, &mut b).unwrap();
                        assert_eq!(b, [t as u8]);
                    }
                    names
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(names.len(), 160);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left: Vec<&String> = names.iter().filter(|n| in_dev_shm(n).exists()).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // A name left behind with no holder would be a keeper's bug: say who holds them.
            let who: Vec<_> = left.iter().take(4).map(|n| (n, holders_of(n))).collect();
            panic!(
                "{} of 160 names still in /dev/shm {PATIENCE:?} after their holders let go; \
                 some, with the processes that have them open or mapped: {who:?}",
                left.len()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Quick creates, opens and drops on four threads, each name waited for before the next:
/// every name goes. inotify reports a release before the kernel counts it released, and a
/// keeper that asked only at once could be refused by the very opening that went: a few names
/// in 2 000 stayed for good in a release build, and this test, unoptimized, caught it in about
/// one run of three (the keeper's own tests, `keeper_tests.rs`, catch it every time).
#[test]
fn names_released_in_a_hurry_all_go() {
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..1000 {
                    let shm = SharedMemory::create(4096).unwrap();
                    let again = SharedMemory::open(shm.name()).unwrap();
                    let name = shm.name().to_owned();
                    drop(shm);
                    drop(again);
                    let deadline = Instant::now() + PATIENCE;
                    while in_dev_shm(&name).exists() {
                        assert!(
                            Instant::now() < deadline,
                            "{name} still in /dev/shm {PATIENCE:?} after its holders let go; \
                             the processes that have it open or mapped: {:?}",
                            holders_of(&name)
                        );
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            });
        }
    });
}

/// How many sockets this process has open.
fn my_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// `Fork` children started while another thread creates segments keep none of the sockets of
/// those requests to the keeper (a child that kept a reply socket's far end held up its
/// parent's request to a dead keeper until the request's deadline, and kept the keeper alive).
#[test]
fn fork_children_keep_no_socket_of_a_request_to_the_keeper() {
    let quiet: usize = (0..3)
        .map(|_| {
            let mut p = start(StartMethod::Fork, my_sockets, ());
            p.join_timeout(PATIENCE).unwrap()
        })
        .max()
        .unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                drop(SharedMemory::create(4096).unwrap());
            }
        });
        let seen: Vec<usize> = (0..150)
            .map(|_| {
                let mut p = start(StartMethod::Fork, my_sockets, ());
                p.join_timeout(PATIENCE).unwrap()
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let more = seen.iter().filter(|&&n| n > quiet).count();
        assert_eq!(
            more, 0,
            "{more} of 150 children had more than {quiet} sockets: {seen:?}"
        );
    });
}

/// The processes (pid, command) that have the file of segment `name` open or mapped.
fn holders_of(name: &str) -> Vec<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(in_dev_shm(name)) else {
        return Vec::new();
    };
    let (dev, ino) = (meta.dev(), meta.ino());
    let mut holders = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let open = std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::metadata(fd.path()).is_ok_and(|m| (m.dev(), m.ino()) == (dev, ino))
            })
        });
        let mapped = std::fs::read_to_string(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
            maps.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(&ino.to_string()))
        });
        if open || mapped {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            holders.push((pid, comm.trim().to_owned()));
        }
    }
    holders
}

/// The keeper is not this process's child (so never its zombie), and ignores the signals that
/// stop processes politely and the one a lease break sends.
#[test]
fn the_keeper_outlives_stop_signals() {
    let shm = SharedMemory::create(8).unwrap();
    let name = shm.name().to_owned();
    let keeper = keeper_of(&name);
    let stat = std::fs::read_to_string(format!("/proc/{keeper}/stat")).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        ppid,
        std::process::id(),
        "the keeper is this process's child"
    );
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGIO] {
        // SAFETY: kill(2) has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(keeper as i32, sig) }, 0);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!has_ended(keeper), "the keeper died of a signal");
    assert!(in_dev_shm(&name).exists());
    drop(shm);
    wait_until("the name is removed", || !in_dev_shm(&name).exists());
}

/// Python's `SharedMemory(name=...)` opens what mproc made, and the other way round.
#[test]
fn python_opens_the_same_memory() {
    let shm = SharedMemory::create(64).unwrap();
    shm.write_at(0, b"from rust").unwrap();
    // Python 3.11's resource tracker would remove the name when this script exits (cpython
    // gh-82300); the script unregisters it, as Python programs must.
    let script = "import sys\n\
        from multiprocessing import shared_memory, resource_tracker\n\
        s = shared_memory.SharedMemory(name=sys.argv[1])\n\
        assert bytes(s.buf[:9]) == b'from rust', bytes(s.buf[:9])\n\
        s.buf[9:20] = b', in python'\n\
        resource_tracker.unregister(s._name, 'shared_memory')\n\
        s.close()\n";
    let mut python = match std::process::Command::new("python3")
        .args(["-c", script, shm.name()])
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("python3 is not installed: nothing to compare with");
            return;
        }
        Err(e) => panic!("starting python3: {e}"),
    };
    let mut status = None;
    wait_until("python has finished", || {
        status = python.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "the python script failed");
    let mut got = [0; 20];
    shm.read_at(0, &mut got).unwrap();
    assert_eq!(&got, b"from rust, in python");
    assert!(in_dev_shm(shm.name()).exists());
}
