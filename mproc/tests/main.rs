//! mproc's integration tests: one binary, one module per area. Every cross-process scenario
//! runs under each start method (see [`per_start_method!`]), and every wait is bounded.

#[macro_use]
mod common;

mod apply_waited;
mod bootstrap;
mod buffer;
mod chaos_buffer;
mod chaos_forkserver;
mod chaos_ipc;
mod chaos_manager;
mod chaos_pool;
mod chaos_process;
mod chaos_queue;
mod chaos_shared;
mod completion;
mod crashes;
mod fork_locks;
mod lifecycle;
mod manager;
mod memory;
mod pipes;
mod pool;
mod process;
mod queues;
mod shared_memory;
mod signals;
mod state;
mod stats;
mod sync;
#[cfg(feature = "tracing")]
mod tracing;
mod wire_limits;
