//! Drives a queue's shared-memory ring with arbitrary operations and a peer's arbitrary writes
//! into its header and ring (see `mproc::__fuzz::ring`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::__fuzz::ring(data);
});
