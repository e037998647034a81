//! Scale-out: the same [`Pool`](crate::Pool) with its workers on many hosts, through Redis
//! Streams (the `remote` feature). Design and measured figures: `SCALEOUT.md` in the design
//! notes, and the README's "Many machines".
//!
//! - [`config`]: [`Remote`], and the builder options `remote` and `max_retries`;
//! - `submitter`: the pool's side: writes chunks within its window, reads results, reaps;
//! - `agent`: a worker host's side: reads entries, runs them in a local pool, records;
//! - `bootstrap`: an agent started by `MPROC_REMOTE`, before `main`;
//! - `auth`: the key and the MAC on every frame; `frame`: frames and key names;
//! - `scripts`: the atomic steps, as server-side scripts; `conn`: connections and replies.
//!
//! Delivery is at least once with exactly one recorded result: a task runs again only when
//! the host running it was declared dead (its heartbeat expired) and `max_retries` allows,
//! and a second run's answer is never recorded after the first. A pool lives in Redis while its
//! submitter refreshes it: a program killed (or stopped) holding one leaves nothing behind once
//! it has been silent past four heartbeat TTLs, and agents stop its tasks.

mod agent;
mod auth;
mod bootstrap;
pub(crate) mod config;
mod conn;
mod frame;
pub(crate) mod resp;
mod scripts;
mod submitter;

pub use config::Remote;

impl Remote {
    /// Serves remote pools on this host until SIGTERM (it finishes the tasks it runs, hands
    /// back those it holds, and returns `Ok`), or the process is killed: what an executable
    /// started with `MPROC_REMOTE` does before `main`, for a program that prefers to decide in
    /// code. Blocks. Redis lost meanwhile (a dropped connection, a server down or restarted)
    /// is dialled again, for as long as [`redial_for`](Self::redial_for) allows (for ever by
    /// default): the agent keeps its workers and their tasks, and serves on once Redis
    /// answers. A Redis not there yet when it starts (not started, loading its data) is
    /// waited for the same way, so that agents may start before their Redis; SIGTERM while
    /// it waits returns `Ok` between two tries. It reads SIGTERM from a `signalfd`: the
    /// calling thread has SIGTERM blocked from its start, and still once it returns.
    ///
    /// # Errors
    ///
    /// `InvalidArgument` without a key (or a bad one); `Broker` at once if Redis refuses the
    /// agent at its start (a wrong password or user, a certificate rejected) or the URL is
    /// bad, and if Redis stays out of reach past `redial_for`.
    ///
    /// ```no_run
    /// mproc::Remote::redis("redis://10.0.0.5:6379/0")?
    ///     .key_file("/etc/myapp/mproc.key")
    ///     .processes(8)
    ///     .serve()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn serve(self) -> Result<(), crate::Error> {
        agent::serve(self)
    }
}
