//! What travels between processes, as pure code: no system calls here.
//!
//! - [`frame`]: length-prefixed frames and their incremental decoder;
//! - [`codec`]: the serde codec every message and value goes through, in mproc's own
//!   [`format`](mod@format) (its two halves: `ser` and `de`);
//! - [`target`]: functions as references valid in any process running the same build;
//! - [`message`]: the messages of the start-up and result protocol.

pub(crate) mod codec;
mod de;
pub(crate) mod format;
mod ser;
pub(crate) mod shared;
pub(crate) mod frame;
pub(crate) mod message;
pub(crate) mod target;

/// The fuzz target's body: split `data` at its first byte, feed the frame decoder in pieces of
/// that size, and decode every frame as each message a peer may send.
pub(crate) fn fuzz(data: &[u8]) {
    use message::{Forked, FromWorker, FromWorkerOf, Hello, Outcome, Start, ToWorker, Welcome};
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = frame::FrameDecoder::with_limit(1 << 20);
    for piece in rest.chunks(usize::from(split).max(1)) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(f)) => {
                    let _ = codec::decode::<Start>(&f);
                    let _ = codec::decode::<Outcome>(&f);
                    let _ = codec::decode::<Hello>(&f);
                    let _ = codec::decode::<Welcome>(&f);
                    let _ = codec::decode::<Forked>(&f);
                    let _ = codec::decode::<crate::sys::proc::Exit>(&f);
                    let _ = codec::decode::<ToWorker<Vec<u8>>>(&f);
                    let _ = codec::decode_borrowed::<ToWorker<&[u8]>>(&f);
                    let _ = codec::decode::<FromWorker>(&f);
                    let _ = codec::decode_borrowed::<FromWorkerOf<&serde_bytes::Bytes>>(&f);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// The fuzz seeds and many cheap mutations of them, on every `cargo test`: the long run is
    /// `cargo fuzz` (fuzz/README.md); this keeps the decoder honest between runs.
    #[test]
    fn fuzz_seeds_and_their_mutations_never_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds");
        let mut next = crate::sys::shm::testing::xorshift(0x9e37_79b9_7f4a_7c15);
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).expect("fuzz/seeds exists") {
            let seed = std::fs::read(entry.unwrap().path()).unwrap();
            seeds += 1;
            super::fuzz(&seed);
            for _ in 0..2000 {
                super::fuzz(&crate::sys::shm::testing::mutate(&seed, &mut next));
            }
        }
        assert!(seeds >= 3, "fuzz seeds missing");
    }
}
