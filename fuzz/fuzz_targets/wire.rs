//! Feeds arbitrary bytes to mproc's frame decoder and message codec (see `mproc::__fuzz::wire`).
//! The first byte picks the chunk size the stream is pushed in; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::__fuzz::wire(data);
});
