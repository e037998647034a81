//! `Buffer`: handing a large array to pool tasks without copying it, next to a small argument
//! (the floor: what passing it should cost) and to Python, in the same run.
//!
//! Rows, the median microseconds of one `Pool(2).apply` round trip of a task that returns the
//! length of its argument:
//!
//! - `floor/100 B`: a 100-byte `Vec<u8>` argument;
//! - `Buffer 100 MiB`: a `Buffer<u8>` of 100 MiB (its handle travels; the task reads its
//!   length and its last byte);
//! - `Buffer 100 MiB, in and back`: the task returns the buffer it was given (its handle
//!   travels both ways);
//! - `Vec<u8> 100 MiB`: the same data as a plain `Vec<u8>`, copied into the task;
//! - `python/...`: `multiprocessing.Pool(2).apply` with 100 bytes, with a 100 MiB numpy array
//!   (pickled into the task), and with the array in `multiprocessing.shared_memory`, attached
//!   by name in the task (`benches/python_buffer.py`, which installs numpy from PyPI into
//!   `target/bench-venv-numpy` on its first run; `--no-python` skips it).
//!
//! Then the issue's scenario: a 200 MB table of `u64`s shared once, and 64 tasks on `Pool(2)`
//! each summing one 64th of it.
//!
//! The target (issue 15, item 2): passing a 100 MiB buffer costs the same as passing 100 bytes,
//! at most 50 µs more.
//!
//! ```text
//! cargo bench -p mproc --bench buffer
//! ```

#[allow(dead_code, reason = "this bench pins nothing")]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use mproc::{Buffer, Pool};

const MIB: usize = 100;

fn length_of(v: Vec<u8>) -> usize {
    v.len()
}

fn length_of_buffer(b: Buffer<u8>) -> usize {
    b.len() + usize::from(b.last().copied().unwrap_or(0) == 0xff)
}

fn give_back(b: Buffer<u8>) -> Buffer<u8> {
    b
}

fn sum_part(t: Buffer<u64>, part: usize, parts: usize) -> u64 {
    let n = t.len() / parts;
    t[part * n..(part + 1) * n].iter().sum()
}

/// The median microseconds of `calls` calls of `op`, after a few untimed ones.
fn median_us(calls: usize, mut op: impl FnMut()) -> f64 {
    for _ in 0..3 {
        op();
    }
    let mut times: Vec<f64> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            op();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> Result<(), mproc::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let python = !args.iter().any(|a| a == "--no-python");
    let calls = if full { 200 } else { 3 };
    println!("buffer bench on {}", common::machine());
    let pool = Pool::new(2)?;
    let small = vec![7u8; 100];
    let floor = median_us(calls * 5, || {
        assert_eq!(pool.apply(length_of, (small.clone(),)).unwrap(), 100);
    });
    let big = Buffer::new_with(MIB << 20, |b: &mut [u8]| b.fill(7))?;
    let shared = median_us(calls * 5, || {
        assert_eq!(
            pool.apply(length_of_buffer, (big.clone(),)).unwrap(),
            MIB << 20
        );
    });
    let returned = median_us(calls * 5, || {
        assert_eq!(
            pool.apply(give_back, (big.clone(),)).unwrap().len(),
            MIB << 20
        );
    });
    let plain = vec![7u8; MIB << 20];
    let copied = median_us(calls / 10 + 1, || {
        assert_eq!(pool.apply(length_of, (plain.clone(),)).unwrap(), MIB << 20);
    });
    drop(plain);
    println!("{:<44} {floor:>10.1} µs", "floor/100 B");
    println!(
        "{:<44} {shared:>10.1} µs  ({:+.1} µs over the floor)",
        format!("Buffer {MIB} MiB"),
        shared - floor
    );
    println!(
        "{:<44} {returned:>10.1} µs  ({:+.1} µs over the floor)",
        format!("Buffer {MIB} MiB, in and back as the result"),
        returned - floor
    );
    println!(
        "{:<44} {copied:>10.1} µs  ({:.0}x the Buffer)",
        format!("Vec<u8> {MIB} MiB (copied)"),
        copied / shared
    );

    // A 200 MB table shared once; 64 tasks each sum a 64th.
    let len = 25_000_000;
    let t = Instant::now();
    let table = Buffer::new_with(len, |t: &mut [u64]| {
        for (i, x) in t.iter_mut().enumerate() {
            *x = i as u64;
        }
    })?;
    let built = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let parts = 64;
    let sums = pool.starmap(sum_part, (0..parts).map(|p| (table.clone(), p, parts)))?;
    let ran = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(sums.iter().sum::<u64>(), (len as u64 - 1) * len as u64 / 2);
    println!(
        "{:<44} {ran:>10.1} ms  (the table built in {built:.1} ms, once)",
        "200 MB table, 64 tasks summing a 64th each"
    );

    let within = shared - floor <= 50.0;
    if python {
        match run_python(calls / 10 + 1) {
            Ok(out) => {
                for line in out.lines() {
                    let Some((name, value)) = line.split_once('=') else {
                        println!("python: {line}");
                        continue;
                    };
                    let Ok(us) = value.parse::<f64>() else {
                        continue;
                    };
                    println!(
                        "{:<44} {us:>10.1} µs  (mproc's Buffer {:.1}x faster)",
                        format!("python/{name}"),
                        us / shared
                    );
                }
            }
            Err(e) => println!("python skipped: {e}"),
        }
    }
    println!();
    println!(
        "{} Buffer {MIB} MiB within 50 µs of passing 100 B: {:+.1} µs",
        if within { "PASS" } else { "MISS" },
        shared - floor
    );
    Ok(())
}

fn run_python(calls: usize) -> Result<String, String> {
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python_buffer.py");
    println!("running python (the first run installs numpy into target/bench-venv-numpy)...");
    let out = Command::new(&python)
        .arg(&script)
        .args([MIB.to_string(), calls.to_string()])
        .output()
        .map_err(|e| format!("could not run {}: {e}", python.to_string_lossy()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
