//! Drives both sides of a pool lane with arbitrary operations and a peer's arbitrary writes
//! into the shared memory (see `mproc::__fuzz::lane`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::__fuzz::lane(data);
});
