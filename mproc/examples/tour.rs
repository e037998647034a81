//! A tour of mproc: runs each example scenario in turn under a short heading.
//!
//! ```text
//! cargo run --release --features remote --example tour
//! ```
//!
//! With the `remote` feature and `redis-server` on PATH, the last stop runs the seed's pool
//! across two agents through Redis (`cluster.rs`).

#[path = "add_many.rs"]
mod add_many;
#[path = "apply_timeout.rs"]
mod apply_timeout;
#[cfg(feature = "remote")]
#[path = "cluster.rs"]
mod cluster;
#[path = "counter.rs"]
mod counter;
#[path = "crash_report.rs"]
mod crash_report;
#[path = "do_math.rs"]
mod do_math;
#[path = "shared_table.rs"]
mod shared_table;
#[path = "speedup.rs"]
mod speedup;
#[path = "squarer.rs"]
mod squarer;
#[path = "start_methods.rs"]
mod start_methods;

/// One stop of the tour: a heading, what it shows, and the scenario.
struct Stop {
    name: &'static str,
    shows: &'static str,
    run: fn() -> mproc::Result<()>,
}

fn main() -> mproc::Result<()> {
    #[cfg_attr(not(feature = "remote"), allow(unused_mut))]
    let mut stops = vec![
        Stop {
            name: "squarer",
            shows: "one Process per number, each printing its name; then all joined",
            run: squarer::main,
        },
        Stop {
            name: "start_methods",
            shows: "fork, spawn and forkserver side by side",
            run: start_methods::main,
        },
        Stop {
            name: "crash_report",
            shows: "panics, signals and early exits reach the parent as clear errors",
            run: crash_report::main,
        },
        Stop {
            name: "do_math",
            shows: "a Pool of 4, apply_async per block, results in submission order",
            run: do_math::main,
        },
        Stop {
            name: "apply_timeout",
            shows: "get_timeout gives up after a second; dropping the pool ends the task",
            run: apply_timeout::main,
        },
        Stop {
            name: "counter",
            shows: "processes increment one shared Value under its lock; the total is exact",
            run: counter::main,
        },
        Stop {
            name: "add_many",
            shows: "two children add half a million random numbers each and put their sums on one Queue",
            run: add_many::main,
        },
        Stop {
            name: "shared_table",
            shows: "a 200 MB table built once in a Buffer; 64 pool tasks read it, nothing copied",
            run: shared_table::main,
        },
        Stop {
            name: "speedup",
            shows: "a CPU-bound job, sequential and then on a Pool of every CPU",
            run: speedup::main,
        },
    ];
    #[cfg(feature = "remote")]
    if redis_server_on_path() {
        stops.push(Stop {
            name: "cluster",
            shows: "the do_math pool on two agents through a private redis-server",
            run: cluster::main,
        });
    }
    println!(
        "mproc tour: {} CPUs available, default start method {}\n",
        mproc::cpu_count(),
        mproc::get_start_method()
    );
    for stop in stops {
        println!("== {} — {}", stop.name, stop.shows);
        (stop.run)()?;
        println!();
    }
    Ok(())
}

/// Whether `redis-server` can be run (the cluster stop starts one of its own).
#[cfg(feature = "remote")]
fn redis_server_on_path() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("redis-server").is_file())
    })
}
