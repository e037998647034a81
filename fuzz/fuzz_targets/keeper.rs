//! Feeds arbitrary bytes to everything the shared-memory keeper parses from others (see
//! `mproc::__fuzz::keeper`): a request from a process, a record another keeper left (its bytes
//! and its file name), and inotify events.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc::__fuzz::keeper(data);
});
