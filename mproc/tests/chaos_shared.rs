//! Chaos for the shared-memory types: `Buffer`, `SharedMemory` and the managed containers,
//! used carelessly and by a hostile peer, with processes killed at random.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mproc::{Buffer, Process, StartMethod};

use crate::common::PATIENCE;

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Threads that start fork children (which live a while) while another thread builds buffers:
/// a child forked between the buffer's writable mapping and its fork-private advice would hold
/// the writable mapping, and the write seal would then be refused.
#[test]
fn buffers_built_while_other_threads_fork() {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let forker = s.spawn(|| {
            let mut started = 0;
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                let mut batch: Vec<Process<()>> = (0..4)
                    .map(|_| {
                        let mut p = Process::new(sleep_ms, (30,)).start_method(StartMethod::Fork);
                        p.start().unwrap();
                        p
                    })
                    .collect();
                started += batch.len();
                for p in &mut batch {
                    p.join_timeout(PATIENCE).unwrap();
                }
            }
            started
        });
        let mut failures = Vec::new();
        let mut built = 0;
        while !forker.is_finished() {
            match Buffer::new_with(1000, |b: &mut [u64]| b.fill(7)) {
                Ok(b) => assert!(b.iter().all(|&x| x == 7)),
                Err(e) => failures.push(e.to_string()),
            }
            built += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let forks = forker.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} of {built} buffers failed while {forks} fork children started: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
    });
}

/// The names in /dev/shm that start with `prefix`.
fn shm_names(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Waits (at most 5 s) until no name in /dev/shm starts with `prefix`; panics naming those left.
fn wait_until_no_names(prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = shm_names(prefix);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} names still in /dev/shm 5 s after every holder let go: {:?}",
            left.len(),
            &left[..left.len().min(5)]
        );
        sleep_ms(5);
    }
}

/// The processes other than this one that have open a file named in /dev/shm with a name
/// that starts with `prefix` (found by device and inode: a keeper's own opening of a file it
/// made shows the unnamed file's path): the keepers, and any child holding one.
fn openers_of(prefix: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let files: Vec<(u64, u64)> = shm_names(prefix)
        .iter()
        .filter_map(|n| std::fs::metadata(std::path::Path::new("/dev/shm").join(n)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds.flatten().any(|fd| {
            std::fs::metadata(fd.path()).is_ok_and(|m| files.contains(&(m.dev(), m.ino())))
        }) {
            found.push(pid);
        }
    }
    found
}

/// The keeper SIGKILLed again and again while a thread creates, writes and drops segments:
/// every create succeeds (a dead keeper is replaced) or fails clearly, and no name is left.
#[test]
fn keepers_killed_while_segments_are_made() {
    let prefix = format!("chaos4-k-{}-", std::process::id());
    let done = AtomicBool::new(false);
    let errors = std::thread::scope(|s| {
        let maker = s.spawn(|| {
            let mut errors = Vec::new();
            for i in 0.. {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let name = format!("{prefix}{i}");
                match mproc::SharedMemory::create_named(&name, 4096) {
                    Ok(shm) => {
                        shm.write_at(0, &[1; 64]).unwrap();
                        let again = mproc::SharedMemory::open(&name);
                        drop(shm);
                        drop(again);
                    }
                    Err(e) => errors.push(format!("{name}: {e}")),
                }
            }
            errors
        });
        // Twelve kills, or as many as four seconds allow.
        let mut kills = 0;
        let deadline = Instant::now() + Duration::from_secs(4);
        while kills < 12 && Instant::now() < deadline {
            for pid in openers_of(&prefix) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                if unsafe { libc::kill(pid, libc::SIGKILL) } == 0 {
                    kills += 1;
                }
            }
            sleep_ms(3);
        }
        done.store(true, Ordering::Relaxed);
        let errors = maker.join().unwrap();
        eprintln!("{kills} keepers killed; errors: {errors:?}");
        errors
    });
    wait_until_no_names(&prefix);
    assert!(
        errors.iter().all(|e| e.contains("keeper ended")),
        "{} creates failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

/// Adds one to `key` `times` times from each of `threads` threads.
fn add_from_threads(d: mproc::Dict<String, u64>, key: String, threads: u32, times: u32) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..times {
                    d.update_with(key.clone(), |n| n.unwrap_or(0) + 1).unwrap();
                }
            });
        }
    });
}

/// Pushes `(who, 0..)` forever, recording in `acked[who]` each push acknowledged.
fn push_forever(l: mproc::List<(u32, u64)>, acked: mproc::Dict<u32, u64>, who: u32) {
    for seq in 0u64.. {
        l.push((who, seq)).unwrap();
        acked.insert(who, seq + 1).unwrap();
    }
}

/// Updates from processes and threads at once lose nothing (update_with is atomic), and list
/// pushers killed at random leave every acknowledged push, in order, each once.
fn manager_updates_from_everywhere_with_kills(m: StartMethod) {
    let manager = mproc::Manager::new().unwrap();
    let d = manager.dict::<String, u64>().unwrap();
    let mut adders: Vec<Process<()>> = (0..3)
        .map(|_| {
            let mut p = Process::new(add_from_threads, (d.clone(), "n".to_string(), 3, 300))
                .start_method(m);
            p.start().unwrap();
            p
        })
        .collect();
    add_from_threads(d.clone(), "n".into(), 2, 300);
    for p in &mut adders {
        p.join_timeout(PATIENCE).unwrap();
    }
    assert_eq!(
        d.get(&"n".to_string()).unwrap(),
        Some(3 * 3 * 300 + 2 * 300)
    );

    let l = manager
        .list_with_capacity::<(u32, u64)>(1 << 16, 4 << 20)
        .unwrap();
    let acked = manager.dict::<u32, u64>().unwrap();
    for round in 0..4u32 {
        let mut pushers: Vec<Process<()>> = (0..3)
            .map(|i| {
                let who = round * 10 + i;
                let mut p =
                    Process::new(push_forever, (l.clone(), acked.clone(), who)).start_method(m);
                p.start().unwrap();
                p
            })
            .collect();
        std::thread::sleep(Duration::from_millis(30 + 11 * u64::from(round)));
        for p in &pushers {
            p.kill().unwrap();
        }
        for p in &mut pushers {
            let _ = p.join_timeout(PATIENCE);
        }
    }
    let items = l.to_vec().unwrap();
    assert_eq!(items.len(), l.len().unwrap());
    let mut next = std::collections::HashMap::<u32, u64>::new();
    for (who, seq) in items {
        let n = next.entry(who).or_default();
        assert_eq!(
            seq, *n,
            "pusher {who}: an item lost, doubled or out of order"
        );
        *n += 1;
    }
    for (who, n) in next {
        let a = acked.get(&who).unwrap().unwrap_or(0);
        assert!(
            n == a || n == a + 1,
            "pusher {who}: {n} items, {a} acknowledged"
        );
    }
}

/// A panic inside `update_with` in one thread lets go of the container: the others go on,
/// and the value it was computing is not stored.
#[test]
fn a_panic_inside_update_with_blocks_nobody() {
    let d = mproc::Manager::new().unwrap().dict::<u8, u64>().unwrap();
    d.insert(1, 10).unwrap();
    let d2 = d.clone();
    let r = std::thread::spawn(move || {
        d2.update_with(1, |_| panic!("on purpose")).ok();
    })
    .join();
    assert!(r.is_err(), "the panic went through");
    assert_eq!(d.update_with(1, |v| v.unwrap() + 1).unwrap(), 11);
    assert_eq!(d.len().unwrap(), 1);
}

/// Entries as large as the container allows, then one too large: values come back whole,
/// a replacement that cannot fit is a clear `Full`, and the container stays usable.
#[test]
fn huge_entries() {
    let m = mproc::Manager::new().unwrap();
    let d = m.dict_with_capacity::<u8, Vec<u8>>(4, 3 << 20).unwrap();
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    d.insert(1, big.clone()).unwrap();
    assert_eq!(d.get(&1).unwrap().as_deref(), Some(&big[..]));
    let bigger = vec![7u8; (2 << 20) + 100];
    let e = d.insert(2, bigger).unwrap_err();
    assert_eq!(*e.kind(), mproc::ErrorKind::Full, "{e}");
    assert!(d.insert(3, vec![0; 4 << 20]).is_err());
    // Replaced many times over: compactions keep it whole.
    for i in 0..20u8 {
        d.insert(1, vec![i; 1 << 20]).unwrap();
    }
    assert_eq!(d.get(&1).unwrap(), Some(vec![19; 1 << 20]));
    assert_eq!(d.len().unwrap(), 1);
    let l = m.list_with_capacity::<String>(2, 100).unwrap();
    assert!(l.push("x".repeat(200)).is_err());
    l.push("ok".into()).unwrap();
    assert_eq!(l.to_vec().unwrap(), ["ok"]);
}

per_start_method!(manager_updates_from_everywhere_with_kills);

/// Creates `n` segments named `{prefix}{i}`, says so, then holds them until told to let go
/// (or killed).
fn make_and_hold(prefix: String, n: u32, talk: mproc::Connection<u32>) {
    let segs: Vec<mproc::SharedMemory> = (0..n)
        .map(|i| {
            let shm = mproc::SharedMemory::create_named(&format!("{prefix}{i}"), 8192).unwrap();
            shm.write_at(0, &i.to_le_bytes()).unwrap();
            shm
        })
        .collect();
    talk.send(n).unwrap();
    let _ = talk.recv_timeout(PATIENCE);
    drop(segs);
}

/// Many processes of every start method create segments; the test opens them, SIGKILLs some
/// creators and some keepers, and lets the rest end: every name stays while anyone holds it,
/// and none is left once nobody does.
#[test]
fn many_creators_some_killed_with_their_keepers() {
    let prefix = format!("chaos4-m-{}-", std::process::id());
    let mut children = Vec::new();
    for c in 0..6u32 {
        let (mine, theirs) = mproc::pipe::<u32>().unwrap();
        let m = StartMethod::ALL[c as usize % StartMethod::ALL.len()];
        let mut p =
            Process::new(make_and_hold, (format!("{prefix}{c}-"), 15, theirs)).start_method(m);
        p.start().unwrap();
        children.push((c, p, mine));
    }
    let mut opened = Vec::new();
    for (c, p, ready) in &mut children {
        assert_eq!(ready.recv_timeout(PATIENCE).unwrap(), 15);
        for i in (0..15).step_by(3) {
            let shm = mproc::SharedMemory::open(&format!("{prefix}{c}-{i}")).unwrap();
            opened.push((i, shm));
        }
        if *c % 2 == 0 {
            p.kill().unwrap();
        } else {
            ready.send(0).unwrap();
        }
        if *c == 2 {
            for pid in openers_of(&format!("{prefix}{c}-")) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    for (_, p, _) in &mut children {
        let _ = p.join_timeout(PATIENCE);
    }
    sleep_ms(100); // time a keeper would need to act
    for (i, shm) in &opened {
        assert!(
            std::path::Path::new("/dev/shm").join(shm.name()).exists(),
            "{} removed while this process holds it",
            shm.name()
        );
        let mut b = [0u8; 4];
        shm.read_at(0, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), *i as u32);
    }
    drop(opened);
    wait_until_no_names(&prefix);
}

fn make_buffer(n: u64) -> Buffer<u64> {
    Buffer::new_with(n as usize, |b: &mut [u64]| {
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u64;
        }
    })
    .unwrap()
}

/// A received buffer's memory cannot be written by any route a process has: its descriptor
/// reopened for writing through /proc, a new writable mapping, `mprotect` of its own mapping,
/// `/proc/self/mem`, punching a hole. Its `&[T]` never changes.
#[test]
fn a_received_buffer_cannot_be_written_by_any_route() {
    use std::os::unix::fs::FileExt;
    let mut p = Process::new(make_buffer, (4096,)).start_method(StartMethod::Spawn);
    p.start().unwrap();
    let b = p.join_timeout(PATIENCE).unwrap();
    let before: Vec<u64> = b.to_vec();
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| l.to_string_lossy().contains("mproc-buffer"))
        })
        .map(|fd| fd.path().to_string_lossy().into_owned())
        .collect();
    assert!(!fds.is_empty(), "the buffer's descriptor is here");
    for path in &fds {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path);
        if let Ok(f) = f {
            assert!(
                f.write_at(&[0xff; 8], 64).is_err(),
                "written through {path}"
            );
            assert!(f.set_len(0).is_err(), "shrunk through {path}");
            use std::os::fd::AsRawFd;
            // SAFETY: a fresh mapping the kernel places; unmapped below if made.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f.as_raw_fd(),
                    0,
                )
            };
            assert_eq!(ptr, libc::MAP_FAILED, "a writable mapping of {path}");
            // SAFETY: fallocate on an open descriptor.
            let punched = unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    4096,
                )
            };
            assert_eq!(punched, -1, "a hole punched in {path}");
        }
    }
    let page = (b.as_ptr() as usize) & !4095;
    // SAFETY: asks for write access to the buffer's own mapping; refused, it changes nothing.
    let r = unsafe { libc::mprotect(page as *mut _, 4096, libc::PROT_READ | libc::PROT_WRITE) };
    assert_eq!(r, -1, "mprotect made the buffer writable");
    let mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .unwrap();
    assert!(
        mem.write_at(&[0xff; 8], b.as_ptr() as u64).is_err(),
        "written through /proc/self/mem"
    );
    assert_eq!(b.to_vec(), before);
}

/// A page-sized element aligned beyond a page.
#[derive(Clone, Copy)]
#[repr(C, align(65536))]
struct Huge([u8; 65536]);
// SAFETY: plain bytes, no padding (size equals the array's), any bit pattern valid.
unsafe impl bytemuck::Zeroable for Huge {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for Huge {}

/// Elements aligned beyond a page (which a page-aligned mapping cannot promise): a clear
/// error, never a panic (bytemuck's, casting the bytes at whatever address the kernel chose).
#[test]
fn elements_aligned_beyond_a_page_are_refused() {
    for len in [0usize, 1, 3] {
        for _ in 0..4 {
            let r = std::panic::catch_unwind(|| Buffer::new_with(len, |_: &mut [Huge]| {}));
            let e = r
                .unwrap_or_else(|_| panic!("Buffer::new_with panicked for {len} elements"))
                .unwrap_err();
            assert!(
                matches!(e.kind(), mproc::ErrorKind::InvalidArgument(_)),
                "{e}"
            );
            assert!(e.to_string().contains("aligned"), "{e}");
        }
    }
    // Up to a page is fine, and the elements are where `&[T]` says.
    let b = Buffer::new_with(3, |b: &mut [Page]| b[2].0[0] = 9).unwrap();
    assert_eq!(b.as_ptr() as usize % 4096, 0);
    assert_eq!(b[2].0[0], 9);
}

/// A page, aligned to one.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; 4096]);
// SAFETY: plain bytes, no padding, any bit pattern valid.
unsafe impl bytemuck::Zeroable for Page {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for Page {}

/// `Array` and `Value` of elements aligned beyond a page (which a page-aligned mapping cannot
/// promise), or zero-sized (a `Value` of one has no element to lend): a clear error, never a
/// panic.
#[test]
fn arrays_of_odd_elements_are_refused() {
    let invalid = |e: mproc::Error| matches!(e.kind(), mproc::ErrorKind::InvalidArgument(_));
    for _ in 0..4 {
        let r = std::panic::catch_unwind(|| {
            let a = mproc::Array::<Huge>::new(2)?;
            let first = a.lock()?[1].0[0];
            Ok::<u8, mproc::Error>(first)
        });
        let r = r.unwrap_or_else(|_| panic!("an Array of elements aligned beyond a page panicked"));
        assert!(r.is_err_and(invalid));
    }
    let r = std::panic::catch_unwind(|| mproc::Value::new(())?.get());
    let r = r.unwrap_or_else(|_| panic!("a Value of a zero-sized type panicked"));
    assert!(r.is_err_and(invalid));
    assert!(mproc::Array::<()>::new(3).is_err_and(invalid));
    let v = mproc::Value::new(Page([3; 4096])).unwrap();
    assert_eq!(v.get().unwrap().0[4095], 3);
}

fn small_buffer(n: u64) -> Buffer<u64> {
    Buffer::from_slice(&[n; 4]).unwrap()
}

/// Buffers coming back from pool tasks into a process out of descriptors: a clear error (the
/// kernel drops the descriptors it cannot install), never a hang, a panic or a wrong buffer;
/// and the pool serves on once descriptors are free again.
#[test]
fn buffers_returned_to_a_process_out_of_descriptors() {
    if !crate::common::alone() {
        return; // it lowers this process's limit for a while
    }
    let pool = mproc::Pool::builder()
        .processes(2)
        .start_method(StartMethod::Spawn)
        .build()
        .unwrap();
    assert_eq!(pool.apply(small_buffer, (1,)).unwrap()[..], [1; 4]);
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct; this test runs in a process of its own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let low = libc::rlimit {
            rlim_cur: open + 40,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    let began = Instant::now();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.map(small_buffer, 0..200u64)
    }));
    // SAFETY: as above.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &old), 0) };
    assert!(began.elapsed() < PATIENCE, "took {:?}", began.elapsed());
    match r.unwrap_or_else(|_| panic!("panicked out of descriptors")) {
        Ok(bufs) => {
            for (i, b) in bufs.iter().enumerate() {
                assert_eq!(b[..], [i as u64; 4]);
            }
            panic!("200 buffers held with 40 descriptors to spare");
        }
        Err(e) => eprintln!("out of descriptors: {e}"),
    }
    assert_eq!(pool.apply(small_buffer, (5,)).unwrap()[..], [5; 4]);
    let bufs = pool.map(small_buffer, 0..50u64).unwrap();
    assert!(bufs.iter().enumerate().all(|(i, b)| b[..] == [i as u64; 4]));
}

/// A keeper that runs out of descriptors (it inherits this process's low hard limit, and
/// holds two for each name it keeps): every create either works or fails clearly, a name that a create
/// reported failed does not exist, and none is left once the handles go.
#[test]
fn a_keeper_out_of_descriptors() {
    if !crate::common::alone() {
        return; // it lowers this process's limit for good
    }
    let prefix = format!("chaos4-fd-{}-", std::process::id());
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    // SAFETY: setrlimit on a valid struct; this test runs in a process of its own.
    unsafe {
        let low = libc::rlimit {
            rlim_cur: open + 100,
            rlim_max: open + 100,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    let mut held = Vec::new();
    let mut errors = Vec::new();
    for i in 0..70 {
        let name = format!("{prefix}{i}");
        match mproc::SharedMemory::create_named(&name, 4096) {
            Ok(shm) => held.push(shm),
            Err(e) => {
                sleep_ms(20);
                assert!(
                    !std::path::Path::new("/dev/shm").join(&name).exists(),
                    "{name}: create failed ({e}) but the name exists"
                );
                errors.push(e.to_string());
            }
        }
    }
    eprintln!(
        "{} held, {} errors: {:?}",
        held.len(),
        errors.len(),
        errors.first()
    );
    for shm in &held {
        assert!(std::path::Path::new("/dev/shm").join(shm.name()).exists());
    }
    drop(held);
    wait_until_no_names(&prefix);
}

/// Openers race the last holder's drop, over and over: an open that succeeds holds a name
/// that stays while it is held; one that loses finds nothing (ENOENT); and no name is left.
#[test]
fn opens_racing_the_last_drop() {
    let prefix = format!("chaos4-o-{}-", std::process::id());
    for round in 0..150 {
        let name = format!("{prefix}{round}");
        let shm = mproc::SharedMemory::create_named(&name, 4096).unwrap();
        let go = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    go.wait();
                    for _ in 0..20 {
                        match mproc::SharedMemory::open(&name) {
                            Ok(held) => {
                                std::thread::yield_now();
                                let path = std::path::Path::new("/dev/shm").join(&name);
                                assert!(path.exists(), "{name} removed while held");
                                drop(held);
                            }
                            Err(e) => {
                                let os = match e.kind() {
                                    mproc::ErrorKind::Os(os) => os.errno,
                                    _ => None,
                                };
                                assert_eq!(os, Some(libc::ENOENT), "{e}");
                                break;
                            }
                        }
                    }
                });
            }
            go.wait();
            drop(shm);
        });
    }
    wait_until_no_names(&prefix);
}

fn echo_len(b: Buffer<u16>) -> (usize, Buffer<u16>) {
    (b.len(), b)
}

/// Empty buffers and a sparse gigabyte cross processes both ways, and read as they should.
#[test]
fn empty_and_sparse_buffers_cross_processes() {
    for m in StartMethod::ALL {
        let empty = Buffer::<u16>::from_slice(&[]).unwrap();
        let mut p = Process::new(echo_len, (empty,)).start_method(m);
        p.start().unwrap();
        let (n, back) = p.join_timeout(PATIENCE).unwrap();
        assert_eq!((n, back.len(), back.is_empty()), (0, 0, true), "{m}");
        assert_eq!(&back[..], &[] as &[u16]);
        let sparse = Buffer::new_with(1 << 29, |b: &mut [u16]| b[(1 << 29) - 1] = 7).unwrap();
        let mut p = Process::new(echo_len, (sparse,)).start_method(m);
        p.start().unwrap();
        let (n, back) = p.join_timeout(PATIENCE).unwrap();
        assert_eq!((n, back[0], back[(1 << 29) - 1]), (1 << 29, 0, 7), "{m}");
    }
}

/// Creates each of `names` and says so, then waits to be killed.
fn create_these_and_hang(names: Vec<String>, ready: mproc::Connection<usize>) {
    let held: Vec<mproc::SharedMemory> = names
        .iter()
        .map(|n| mproc::SharedMemory::create_named(n, 100).unwrap())
        .collect();
    ready.send(held.len()).unwrap();
    sleep_ms(PATIENCE.as_millis() as u64);
}

/// Odd but valid names (the longest, spaces, a newline, non-ASCII) survive their keeper's and
/// creator's SIGKILL in its records: the next keeper adopts and removes them.
#[test]
fn odd_names_are_adopted_after_their_keeper_dies() {
    let tag = format!("chaos4-n-{}-", std::process::id());
    let names = vec![
        format!("{tag}{}", "x".repeat(255 - tag.len())),
        format!("{tag} a\nb\tc"),
        format!("{tag}é✓"),
    ];
    let (mine, theirs) = mproc::pipe::<usize>().unwrap();
    let mut p = Process::new(create_these_and_hang, (names.clone(), theirs))
        .start_method(StartMethod::Spawn);
    p.start().unwrap();
    assert_eq!(mine.recv_timeout(PATIENCE).unwrap(), 3);
    // The keeper first, then the creator: the names outlive both, with only their records.
    let creator = p.pid().unwrap() as i32;
    let keepers: Vec<i32> = openers_of(&tag)
        .into_iter()
        .filter(|&k| k != creator)
        .collect();
    assert!(!keepers.is_empty(), "the keeper holds them");
    for &pid in &keepers {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + PATIENCE;
    while openers_of(&tag).iter().any(|k| keepers.contains(k)) {
        assert!(Instant::now() < deadline, "the keeper outlived SIGKILL");
        sleep_ms(5);
    }
    sleep_ms(50); // time another keeper of this user would need to adopt them
    for n in &names {
        let path = std::path::Path::new("/dev/shm").join(n);
        assert!(path.exists(), "{n:?} removed while its creator holds it");
    }
    p.kill().unwrap();
    let _ = p.join_timeout(PATIENCE);
    // The next keeper (this process's first, unless another process of this user started one
    // meanwhile) adopts them, and nobody holds them.
    drop(mproc::SharedMemory::create(10).unwrap());
    wait_until_no_names(&tag);
}
