//! An agent started by its environment, before `main`: the same executable, run with
//! `MPROC_REMOTE=<url>` and `MPROC_KEY_FILE=<path>` (and optionally `MPROC_PROCESSES=<n>`,
//! `MPROC_CA_FILE=<pem>`), serves remote pools and never runs `main`, as a spawned local
//! worker never does (`start/bootstrap.rs` has the mechanism and its reasons).
//!
//! It exits 0 once drained (SIGTERM; with Redis out of reach then, it tries for one
//! heartbeat TTL and leaves what it held to the reaper; with Redis not reached yet, at once),
//! and 1 with a message on stderr if it cannot start (no key, bad URL, a password or
//! certificate refused), or when Redis stays out of reach longer than `MPROC_REDIAL_MS`
//! (unset: it keeps dialling for ever; see `Remote::redial_for`): a Redis not there yet at its
//! start, a lost connection, or a Redis that went down or restarted, is dialled again, and the
//! agent serves once Redis answers.

#![allow(unsafe_code)]

use std::time::Duration;

use super::config::Remote;
use crate::start::StartMethod;
use crate::sys::proc;

/// The variables that make this process an agent.
pub(crate) const REMOTE: &str = "MPROC_REMOTE";
pub(crate) const KEY_FILE: &str = "MPROC_KEY_FILE";
pub(crate) const PROCESSES: &str = "MPROC_PROCESSES";
pub(crate) const CA_FILE: &str = "MPROC_CA_FILE";
pub(crate) const TTL_MS: &str = "MPROC_HEARTBEAT_MS";
pub(crate) const REDIAL_MS: &str = "MPROC_REDIAL_MS";
pub(crate) const METHOD: &str = "MPROC_START_METHOD";

// SAFETY: placing a function pointer in `.init_array` is sound because `agent_before_main`
// has the signature the loader calls (it reads no arguments).
#[used]
#[unsafe(link_section = ".init_array")]
static AGENT: extern "C" fn() = agent_before_main;

extern "C" fn agent_before_main() {
    let Some(url) = std::env::var_os(REMOTE) else {
        return;
    };
    // Single-threaded still: the local workers this agent starts must not be agents too.
    proc::remove_env_before_main(REMOTE);
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let remote = Remote::redis(&url.to_string_lossy()).map(|mut r| {
        if let Some(k) = env(KEY_FILE) {
            r = r.key_file(k);
        }
        if let Some(ca) = env(CA_FILE) {
            r = r.ca_file(ca);
        }
        if let Some(n) = env(PROCESSES).and_then(|n| n.parse().ok()) {
            r = r.processes(n);
        }
        let method = match env(METHOD).as_deref() {
            Some("fork") => Some(StartMethod::Fork),
            Some("spawn") => Some(StartMethod::Spawn),
            Some("forkserver") => Some(StartMethod::Forkserver),
            _ => None,
        };
        if let Some(m) = method {
            r = r.start_method(m);
        }
        if let Some(ms) = env(TTL_MS).and_then(|n| n.parse().ok()) {
            r = r.heartbeat_ttl(Duration::from_millis(ms));
        }
        if let Some(ms) = env(REDIAL_MS).and_then(|n| n.parse().ok()) {
            r = r.redial_for(Some(Duration::from_millis(ms)));
        }
        r
    });
    let served = remote.and_then(|r| r.serve());
    match served {
        Ok(()) => proc::exit_now(0),
        Err(e) => {
            proc::write_stderr(&format!("mproc agent ({REMOTE} is set): {e}\n"));
            proc::exit_now(1)
        }
    }
}
