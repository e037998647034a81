//! The remote pool (feature `remote`) against a real `redis-server` and real agents: this
//! test binary, run again with `MPROC_REMOTE`, turns into an agent before `main`
//! (`remote/harness.rs`). No stand-in for Redis or for the agent. Every wait is bounded.
//!
//! Scenarios that run a pool's workers run under each start method of the agents' local
//! pools (`per_start_method!`).

#[macro_use]
#[path = "common.rs"]
#[allow(dead_code)]
mod common;

#[path = "remote/harness.rs"]
#[allow(dead_code)]
mod harness;

#[path = "remote/cluster.rs"]
mod cluster;

#[path = "remote/api.rs"]
mod api;

#[path = "remote/faults.rs"]
mod faults;

#[path = "remote/security.rs"]
mod security;

#[path = "remote/chaos.rs"]
mod chaos;

#[path = "remote/callers.rs"]
mod callers;

#[path = "remote/redial.rs"]
mod redial;

#[path = "remote/outage.rs"]
mod outage;

#[path = "remote/first_dial.rs"]
mod first_dial;
