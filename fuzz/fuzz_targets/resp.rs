//! Parses arbitrary bytes as a Redis reply, as a remote pool's connections do (see
//! `mproc::__fuzz::resp`), and checks the value against the `redis` crate's own parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::__fuzz::resp(data);
});
