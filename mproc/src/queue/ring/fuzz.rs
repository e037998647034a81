//! The queue fuzz target's body, also run on cheap random inputs by every `cargo test`.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::layout::{DATA_AT, Header};
use super::{FIRST_CAP, Holder, Push, Ring, Wait};
use crate::sys::shared::RobustMutex;
use crate::sys::shm;

/// The queue fuzz target's body (`mproc::__fuzz::ring`): one queue, mapped once or twice in
/// this process, driven by `data` one operation at a time: puts (growing the file), gets, the
/// joinable and holder calls, another mapping opened from the file, the file grown by
/// someone else, and a peer's arbitrary writes to the header (but its locks: a peer that
/// scribbles on a lock can make every holder wait forever, which no check here can prevent)
/// and to the ring. Every call must return: no panic, no fault (`SIGBUS` past the file), no
/// endless loop; what a corrupt header makes impossible is an `InvalidData` error, and only
/// after some stray write. Frames no stray write could have touched come out whole and in
/// order.
pub(crate) fn fuzz(data: &[u8]) {
    use std::collections::VecDeque;

    const KIND: u32 = 7;
    let locks = [
        std::mem::offset_of!(Header, put_mutex),
        std::mem::offset_of!(Header, get_mutex),
        std::mem::offset_of!(Header, reg_mutex),
    ]
    .map(|at| at..at + std::mem::size_of::<RobustMutex>());
    let Ok(first) = Ring::create(KIND, 0) else {
        return;
    };
    let mut rings = vec![first];
    let mut sent: VecDeque<Vec<u8>> = VecDeque::new();
    let mut tampered = false;
    let me = Holder { pid: 1, start: 1 };
    let mut input = data.iter().copied();
    let mut byte = || input.next().unwrap_or(0);
    let word = |byte: &mut dyn FnMut() -> u8, n: usize| {
        (0..n).fold(0u64, |w, i| w | u64::from(byte()) << (8 * i))
    };
    let honest = |tampered: bool, e: &io::Error| {
        assert!(tampered, "an honest queue reported {e}");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    };
    for step in 0..data.len().min(256) {
        let op = byte();
        let ring = &rings[usize::from(op & 1) % rings.len()];
        match (op >> 1) % 8 {
            // A put: small, or large enough to grow the ring.
            0 | 1 => {
                let len = match op >> 4 {
                    0..=12 => word(&mut byte, 1) as usize * 8 + step % 8,
                    _ => FIRST_CAP / 2 + word(&mut byte, 2) as usize * 4,
                };
                let Ok(Some(mut producer)) = ring.producer(None) else {
                    assert!(tampered, "an honest queue's lock failed");
                    continue;
                };
                let body: Vec<u8> = (0..len).map(|i| (i ^ step) as u8).collect();
                let pushed = producer.push(len, op & 0x10 != 0, None, |b| {
                    b.copy_from_slice(&body);
                    Ok::<_, io::Error>(())
                });
                match pushed {
                    Ok(Push::Done) => sent.push_back(body),
                    Ok(_) => assert!(tampered, "an honest, unbounded queue refused a put"),
                    Err(e) => honest(tampered, &e),
                }
            }
            // A get.
            2 | 3 => {
                let Ok(Some(mut consumer)) = ring.consumer(None) else {
                    assert!(tampered, "an honest queue's lock failed");
                    continue;
                };
                match consumer.pop(|b| b.into_vec()) {
                    Ok(Some(Err(e))) => panic!("a copy out of the ring failed: {e}"),
                    Ok(Some(Ok(got))) => {
                        let want = sent.pop_front();
                        assert!(tampered || want.as_ref() == Some(&got), "a frame garbled");
                    }
                    Ok(None) => assert!(tampered || sent.is_empty(), "a frame lost"),
                    Err(e) => honest(tampered, &e),
                }
            }
            // A peer's write of up to 8 bytes anywhere in the header, but on a lock, or in
            // the first part of the ring.
            4 => {
                let at = word(&mut byte, 2) as usize % (DATA_AT + FIRST_CAP);
                let bytes: Vec<u8> = (0..byte() % 9).map(|_| byte()).collect();
                let end = at + bytes.len();
                if !locks.iter().any(|l| at < l.end && l.start < end) {
                    let _ = ring.map.map().write_at(at, &bytes);
                    tampered = true;
                }
            }
            // A peer's write of a word that steers the ring, near its value or anything.
            5 => {
                let words: [fn(&Header) -> &AtomicU64; 14] = [
                    |h| &h.shape.cap,
                    |h| &h.shape.base,
                    |h| &h.get.read,
                    |h| &h.put.written,
                    |h| &h.put.read_seen,
                    |h| &h.get.written_seen,
                    |h| &h.put.puts,
                    |h| &h.get.gets,
                    |h| &h.put.added,
                    |h| &h.rare.done,
                    |h| &h.rare.limit,
                    |h| &h.fixed.maxsize,
                    |h| &h.put.written_before,
                    |h| &h.get.read_before,
                ];
                let at = words[usize::from(byte()) % words.len()](ring.h());
                let now = at.load(Ordering::Relaxed);
                let value = match byte() % 4 {
                    0 => now.wrapping_add(word(&mut byte, 2)),
                    1 => now.wrapping_sub(word(&mut byte, 2)),
                    2 => now.wrapping_mul(word(&mut byte, 1)),
                    _ => word(&mut byte, 8),
                };
                at.store(value, Ordering::Relaxed);
                tampered = true;
            }
            // Another mapping of the same queue, or the file grown by someone else.
            6 => {
                if op & 0x10 == 0 {
                    let opened = ring.file.try_clone().and_then(|f| Ring::open(f, KIND));
                    match opened {
                        Ok(r) if rings.len() < 3 => rings.push(r),
                        Ok(_) => {}
                        Err(e) => assert!(tampered, "an honest queue did not open: {e}"),
                    }
                } else {
                    let to = DATA_AT + word(&mut byte, 2) as usize * 64;
                    let _ = shm::grow_file(ring.file.as_fd(), to);
                }
            }
            // The rest of the calls.
            _ => {
                let _ = (
                    ring.len(),
                    ring.has_frames(),
                    ring.maxsize(),
                    ring.unfinished(),
                );
                let _ = ring.task_done();
                let ticket = ring.ticket(Wait::Put);
                let _ = ring.sleep(Wait::Put, ticket.wrapping_add(1), Some(Instant::now()));
                let _ = ring.attach(me, |_| false, op & 0x20 != 0);
                let _ = ring.shared_beyond(me, |h| h.pid % 2 == 0);
                drop(ring.lend());
                ring.arrived();
                let _ = ring.detach(me);
                if op & 0x10 != 0 {
                    ring.close();
                    assert!(ring.is_closed());
                }
            }
        }
    }
}
