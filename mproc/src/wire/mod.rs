//! What travels between processes, as pure code: no system calls here.
//!
//! - [`frame`]: length-prefixed frames and their incremental decoder;
//! - [`codec`]: the serde codec every message and value goes through;
//! - [`target`]: functions as references valid in any process running the same build;
//! - [`message`]: the messages of the start-up and result protocol.

pub(crate) mod codec;
pub(crate) mod frame;
pub(crate) mod message;
pub(crate) mod target;

/// The fuzz target's body: split `data` at its first byte, feed the frame decoder in pieces of
/// that size, and decode every frame as each message a peer may send.
pub(crate) fn fuzz(data: &[u8]) {
    use message::{Forked, Hello, Outcome, Start, Welcome};
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
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}
