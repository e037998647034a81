//! `Manager`'s shared `Dict`: `get` and `insert` of one key among 1000 (`String` keys, `u64`
//! values, as a Python program would use `Manager().dict()`), next to the floor and to Python.
//!
//! Rows, nanoseconds per operation (the median of 7 rounds of N operations):
//!
//! - `floor/lock`: an uncontended `mproc::Lock` taken and released (the robust
//!   process-shared mutex every dict call takes once): what a call cannot go below;
//! - `mproc/get`, `mproc/insert`: `Dict<String, u64>` with 1000 entries, one key;
//! - `mproc/update_with`: an atomic read-modify-write of that key;
//! - `mproc/items 3@64K`, `mproc/items 3@1M`: `items()` of a `Dict<String, u64>` holding 3
//!   entries, made with the default capacity (65 536 entries: 131 072 slots) and with 786 432
//!   entries (1 M slots): what a read of a small dict costs beside its capacity;
//! - `python/get`, `python/set`, `python/items`: `multiprocessing.Manager().dict()` the same
//!   way (`items` of a dict of 3), timed by `python3` itself (`benches/python_manager.py`;
//!   `$PYTHON` if set).
//!
//! The target (issue 13): `get` and `insert` at least 10x faster than Python's.
//!
//! ```text
//! cargo bench -p mproc --bench manager
//! ```

#[allow(dead_code, reason = "this bench pins nothing")]
mod common;

use std::process::Command;
use std::time::Instant;

use mproc::{Lock, Manager};

fn median_ns(n: u32, mut op: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        op();
    }
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                op();
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

/// `median_ns` with as many calls a round as fit in about 20 ms (at least 10): for rows
/// whose cost spans microseconds to milliseconds.
fn median_ns_timed(full: bool, mut op: impl FnMut()) -> f64 {
    let t = Instant::now();
    op();
    let one = t.elapsed().as_nanos().max(1) as f64;
    let budget = if full { 20e6 } else { 2e6 };
    median_ns((budget / one).clamp(10.0, 200_000.0) as u32, op)
}

/// `items()` of a dict of 3 entries made for `entries`.
fn items_of_three(full: bool, entries: usize) -> f64 {
    let d = Manager::new()
        .unwrap()
        .dict_with_capacity::<String, u64>(entries, 32 << 20)
        .unwrap();
    for i in 0..3u64 {
        d.insert(format!("key-{i}"), i).unwrap();
    }
    median_ns_timed(full, || assert_eq!(d.items().unwrap().len(), 3))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 200_000 } else { 1_000 };
    println!("manager bench on {}", common::machine());
    let lock = Lock::new().unwrap();
    let floor = median_ns(n, || drop(lock.acquire().unwrap()));
    let d = Manager::new().unwrap().dict::<String, u64>().unwrap();
    for i in 0..1000u64 {
        d.insert(format!("key-{i}"), i).unwrap();
    }
    let key = "key-500".to_string();
    let get = median_ns(n, || assert_eq!(d.get(&key).unwrap(), Some(500)));
    let insert = median_ns(n, || {
        d.insert(key.clone(), 500).unwrap();
    });
    let update = median_ns(n, || {
        d.update_with(key.clone(), |v| v.unwrap_or(0)).unwrap();
    });
    let items_small = items_of_three(full, 1 << 16);
    let items_big = items_of_three(full, 3 << 18);
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/python_manager.py");
    let py_n = if full { 20_000 } else { 200 };
    let out = Command::new(python)
        .args([script, &py_n.to_string()])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let py = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let (py_get, py_set, py_items) = (py("get "), py("set "), py("items "));
    println!(
        "{:<18} {:>10} {:>12} {:>12}",
        "row", "ns/op", "x floor", "Python / it"
    );
    println!(
        "{:<18} {:>10.0} {:>12.2} {:>12}",
        "floor/lock", floor, 1.0, ""
    );
    for (name, ns, against) in [
        ("mproc/get", get, py_get),
        ("mproc/insert", insert, py_set),
        ("mproc/update_with", update, py_set),
        ("mproc/items 3@64K", items_small, py_items),
        ("mproc/items 3@1M", items_big, py_items),
    ] {
        println!(
            "{:<18} {:>10.0} {:>12.2} {:>12.1}",
            name,
            ns,
            ns / floor,
            against / ns
        );
    }
    println!("{:<18} {:>10.0}", "python/get", py_get);
    println!("{:<18} {:>10.0}", "python/set", py_set);
    println!("{:<18} {:>10.0}", "python/items", py_items);
    let ok = |b: bool| if b { "MET" } else { "MISSED" };
    println!(
        "target: get >= 10x Python: {} ({:.1}x); insert >= 10x Python: {} ({:.1}x)",
        ok(py_get / get >= 10.0),
        py_get / get,
        ok(py_set / insert >= 10.0),
        py_set / insert
    );
}
