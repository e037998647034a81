//! Codec benchmark: which serde wire format should `mproc` use?
//!
//! Measures, on the payloads the `mproc` wire actually carries, each candidate codec's
//! encoded size, encode time, decode time and encode+decode round-trip time, next to a raw
//! `memcpy` floor (copying as many bytes as bincode's fixint encoding into a preallocated
//! buffer). It then feeds every codec malformed input and records the peak heap the decoder
//! holds, to show which codecs bound allocation by input length.
//!
//! Payloads: a small start message struct, `(u64,)`, a 64-byte `(String,)`, a `Vec<u64>` of
//! 1,000,000 elements, a 1 MiB `Vec<u8>` (plain serde, no `serde_bytes`), and a
//! `Result<Vec<u8>, String>` with a 64-byte payload.
//!
//! Codecs: bincode 1.3 through `bincode::Options` (fixint, and varint for reference), plain
//! `bincode::serialize`, postcard (`to_allocvec` / `from_bytes`) and bitcode's serde API.
//!
//! Method: plain `std::time::Instant`, no harness. Each job (codec x encode/decode/round
//! trip, plus the memcpy floor) warms up while calibrating a batch of about 5 ms; then 15
//! samples are taken round-robin across all jobs of a payload, so machine noise hits every
//! candidate alike, and the median time per operation is reported. Encoding uses each
//! codec's allocating API (a fresh `Vec<u8>` per call), decoding yields an owned value from
//! a slice; inputs and outputs go through `std::hint::black_box`. The global allocator is a
//! pass-through that counts heap bytes only during the malformed-input probe (one relaxed
//! atomic load per allocation otherwise, the same for every codec).
//!
//! Run it with:
//!
//! ```text
//! cargo bench -p mproc --bench codec             # everything, about 10-15 s
//! cargo bench -p mproc --bench codec -- vec_u64  # only payloads whose name contains "vec_u64"
//! ```
//!
//! Without `--bench` on its command line (as under `cargo test --benches`) it runs a quick
//! smoke pass: the round-trip checks, the malformed-input probe and single-shot timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use bincode::Options as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// Allocation probe: a pass-through allocator that, only while `TRACKING` is set, keeps the
// live and peak heap bytes. Outside the probe it costs one relaxed load per call.
// ---------------------------------------------------------------------------------------

struct ProbeAlloc;

static TRACKING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn track(delta: isize) {
    let live = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is exactly `System`'s; the bookkeeping only touches atomics.
unsafe impl GlobalAlloc for ProbeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same layout as given to us, which the caller guarantees is non-zero-sized.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && TRACKING.load(Ordering::Relaxed) {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() && TRACKING.load(Ordering::Relaxed) {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if TRACKING.load(Ordering::Relaxed) {
            track(-(layout.size() as isize));
        }
        // SAFETY: `ptr` was allocated by `System` (via us) with this same layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` come from `System` (via us); the caller upholds `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && TRACKING.load(Ordering::Relaxed) {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: ProbeAlloc = ProbeAlloc;

/// Runs `f` and returns its result with the peak heap bytes it held beyond what was live
/// before it started.
fn peak_heap<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    TRACKING.store(true, Ordering::SeqCst);
    let r = f();
    TRACKING.store(false, Ordering::SeqCst);
    (r, PEAK.load(Ordering::Relaxed).max(0) as usize)
}

// ---------------------------------------------------------------------------------------
// Payloads.
// ---------------------------------------------------------------------------------------

/// The start message a parent sends a new child (shape of mproc's real one).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Start {
    identity: u64,
    entry: i64,
    name: String,
    lineage: Vec<u32>,
    args: Vec<u8>,
}

fn start_message() -> Start {
    Start {
        identity: 0x5eed_0000_0001_002a,
        entry: 4_211_712,
        name: "Process-12".to_owned(),
        lineage: vec![1, 3, 12],
        args: (0..16).map(|i| i * 7).collect(),
    }
}

type TaskResult = Result<Vec<u8>, String>;

// ---------------------------------------------------------------------------------------
// Codecs, statically dispatched so the timed loops hold no branches of ours.
// ---------------------------------------------------------------------------------------

trait Codec {
    const NAME: &'static str;
    fn encode<T: Serialize>(v: &T) -> Vec<u8>;
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String>;
}

struct BincodeFixint;
impl Codec for BincodeFixint {
    const NAME: &'static str = "bincode fixint opts";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .serialize(v)
            .expect("bincode encode")
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        bincode::DefaultOptions::new()
            .with_fixint_encoding()
            .deserialize(b)
            .map_err(|e| e.to_string())
    }
}

struct BincodePlain;
impl Codec for BincodePlain {
    const NAME: &'static str = "bincode::serialize";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::serialize(v).expect("bincode encode")
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        bincode::deserialize(b).map_err(|e| e.to_string())
    }
}

struct BincodeVarint;
impl Codec for BincodeVarint {
    const NAME: &'static str = "bincode varint opts";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::DefaultOptions::new()
            .serialize(v)
            .expect("bincode encode")
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        bincode::DefaultOptions::new()
            .deserialize(b)
            .map_err(|e| e.to_string())
    }
}

struct Postcard;
impl Codec for Postcard {
    const NAME: &'static str = "postcard";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        postcard::to_allocvec(v).expect("postcard encode")
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        postcard::from_bytes(b).map_err(|e| e.to_string())
    }
}

struct Bitcode;
impl Codec for Bitcode {
    const NAME: &'static str = "bitcode (serde)";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        bitcode::serialize(v).expect("bitcode encode")
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        bitcode::deserialize(b).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------------
// Timing.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Plan {
    warmup: Duration,
    sample: Duration,
    samples: usize,
}

const FULL: Plan = Plan {
    warmup: Duration::from_millis(10),
    sample: Duration::from_millis(5),
    samples: 15,
};

const SMOKE: Plan = Plan {
    warmup: Duration::ZERO,
    sample: Duration::ZERO,
    samples: 1,
};

/// A timed job: called with a batch size, runs the operation that many times and returns
/// the elapsed time. The loop is monomorphized inside, so the only dynamic call is per batch.
type Job<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

fn job<'a, R>(mut f: impl FnMut() -> R + 'a) -> Job<'a> {
    Box::new(move |n| {
        let t = Instant::now();
        for _ in 0..n {
            black_box(f());
        }
        t.elapsed()
    })
}

/// Median nanoseconds per operation of each job. Every job is warmed up and calibrated
/// first; then samples are taken round-robin across the jobs, so a burst of machine noise
/// hits all candidates alike instead of skewing one of them.
fn measure_all(plan: Plan, jobs: &mut [Job<'_>]) -> Vec<f64> {
    let batch: Vec<u64> = jobs
        .iter_mut()
        .map(|run| {
            // Warm up, doubling the batch until one batch lasts `plan.warmup`; that calibrates.
            let mut iters: u64 = 1;
            let per_iter = loop {
                let el = run(iters);
                if el >= plan.warmup {
                    break el.as_nanos() as f64 / iters as f64;
                }
                iters *= 2;
            };
            ((plan.sample.as_nanos() as f64 / per_iter.max(0.1)) as u64).max(1)
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(plan.samples); jobs.len()];
    for _ in 0..plan.samples {
        for ((run, &n), out) in jobs.iter_mut().zip(&batch).zip(&mut samples) {
            out.push(run(n).as_nanos() as f64 / n as f64);
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect()
}

struct Row {
    codec: &'static str,
    size: usize,
    encode: f64,
    decode: f64,
    round_trip: f64,
}

/// Checks the codec round-trips `value` and returns its encoding.
fn encoding<C: Codec, T>(value: &T) -> Vec<u8>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    let bytes = C::encode(value);
    let back: T = C::decode(&bytes).unwrap_or_else(|e| panic!("{}: decode failed: {e}", C::NAME));
    assert!(back == *value, "{}: round trip changed the value", C::NAME);
    bytes
}

/// The encode, decode and round-trip jobs of one codec.
fn codec_jobs<'a, C: Codec, T>(value: &'a T, bytes: &'a [u8]) -> [Job<'a>; 3]
where
    T: Serialize + DeserializeOwned,
{
    [
        job(move || C::encode(black_box(value))),
        job(move || C::decode::<T>(black_box(bytes))),
        job(move || {
            let b = C::encode(black_box(value));
            C::decode::<T>(black_box(&b))
        }),
    ]
}

fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn bench_payload<T>(plan: Plan, filter: Option<&str>, name: &str, what: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if filter.is_some_and(|f| !name.contains(f)) {
        return;
    }
    let names = [
        BincodeFixint::NAME,
        BincodePlain::NAME,
        BincodeVarint::NAME,
        Postcard::NAME,
        Bitcode::NAME,
    ];
    let encoded = [
        encoding::<BincodeFixint, T>(value),
        encoding::<BincodePlain, T>(value),
        encoding::<BincodeVarint, T>(value),
        encoding::<Postcard, T>(value),
        encoding::<Bitcode, T>(value),
    ];
    let floor_len = encoded[0].len();
    let src: Vec<u8> = (0..floor_len).map(|i| i as u8).collect();
    let mut dst = vec![0u8; floor_len];

    let mut jobs: Vec<Job<'_>> = Vec::new();
    jobs.extend(codec_jobs::<BincodeFixint, T>(value, &encoded[0]));
    jobs.extend(codec_jobs::<BincodePlain, T>(value, &encoded[1]));
    jobs.extend(codec_jobs::<BincodeVarint, T>(value, &encoded[2]));
    jobs.extend(codec_jobs::<Postcard, T>(value, &encoded[3]));
    jobs.extend(codec_jobs::<Bitcode, T>(value, &encoded[4]));
    jobs.push(job(|| {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }));
    let t = measure_all(plan, &mut jobs);
    drop(jobs);
    let floor = t[15];
    let rows: Vec<Row> = (0..5)
        .map(|i| Row {
            codec: names[i],
            size: encoded[i].len(),
            encode: t[3 * i],
            decode: t[3 * i + 1],
            round_trip: t[3 * i + 2],
        })
        .collect();

    let mut out = String::new();
    let _ = writeln!(out, "\n== {name}: {what}");
    let _ = writeln!(
        out,
        "   memcpy floor: {} for {floor_len} B (bincode fixint size)",
        fmt_ns(floor)
    );
    let _ = writeln!(
        out,
        "   {:<20} {:>9} {:>11} {:>11} {:>11} {:>8} {:>8} {:>8}",
        "codec", "bytes", "encode", "decode", "round trip", "enc/cpy", "dec/cpy", "rt/cpy"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "   {:<20} {:>9} {:>11} {:>11} {:>11} {:>8.1} {:>8.1} {:>8.1}",
            r.codec,
            r.size,
            fmt_ns(r.encode),
            fmt_ns(r.decode),
            fmt_ns(r.round_trip),
            r.encode / floor,
            r.decode / floor,
            r.round_trip / floor,
        );
    }
    print!("{out}");
}

// ---------------------------------------------------------------------------------------
// Malformed input: how much heap can a short hostile input make each decoder hold?
// ---------------------------------------------------------------------------------------

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Hostile inputs derived from valid encodings: byte flips, long 0xff runs (huge length
/// prefixes), 0xff-prefixed seeds, truncations, and random short strings.
fn hostile_inputs(seeds: &[Vec<u8>], random: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for seed in seeds {
        for i in 0..seed.len() {
            for b in [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff] {
                let mut m = seed.clone();
                m[i] = b;
                out.push(m);
            }
            let mut m = seed.clone();
            for x in m.iter_mut().skip(i).take(8) {
                *x = 0xff;
            }
            out.push(m);
            out.push(seed[..i].to_vec());
        }
        for k in 1..=16 {
            let mut m = vec![0xff; k];
            m.extend_from_slice(seed);
            out.push(m);
            let mut m = vec![0xff; k];
            m.push(0x01);
            out.push(m);
        }
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..random {
        let len = 1 + (rng.next() % 48) as usize;
        out.push((0..len).map(|_| rng.next() as u8).collect());
    }
    out
}

struct ProbeResult {
    tried: usize,
    worst_peak: usize,
    worst_input_len: usize,
}

fn probe<C: Codec, T: DeserializeOwned>(seeds: &[Vec<u8>], random: usize) -> ProbeResult {
    let inputs = hostile_inputs(seeds, random);
    let mut res = ProbeResult {
        tried: inputs.len(),
        worst_peak: 0,
        worst_input_len: 0,
    };
    for input in &inputs {
        let (_, peak) = peak_heap(|| {
            // Dropped inside the tracked region, so a successful decode's value is counted
            // while it is alive and released before tracking stops.
            drop(black_box(C::decode::<T>(black_box(input))));
        });
        if peak > res.worst_peak {
            res.worst_peak = peak;
            res.worst_input_len = input.len();
        }
    }
    res
}

fn probe_codec<C: Codec>(random: usize) -> Vec<(&'static str, ProbeResult)> {
    let big_u64: Vec<u64> = (0..1_000_000).collect();
    let big_u8: Vec<u8> = vec![0xab; 1 << 20];
    let trunc = |v: Vec<u8>| v[..v.len().min(64)].to_vec();
    let vec_u64_seeds = [
        C::encode(&vec![1u64, 300, 70_000, u64::MAX]),
        trunc(C::encode(&big_u64)),
    ];
    let vec_u8_seeds = [
        C::encode(&(0u8..16).collect::<Vec<u8>>()),
        trunc(C::encode(&big_u8)),
    ];
    let string_seeds = [C::encode(&("Process-12".to_owned(),))];
    let start_seeds = [C::encode(&start_message())];
    let result_seeds = [
        C::encode(&TaskResult::Ok(vec![7; 5])),
        C::encode(&TaskResult::Err("boom".to_owned())),
    ];
    vec![
        ("Vec<u64>", probe::<C, Vec<u64>>(&vec_u64_seeds, random)),
        ("Vec<u8>", probe::<C, Vec<u8>>(&vec_u8_seeds, random)),
        ("(String,)", probe::<C, (String,)>(&string_seeds, random)),
        ("Start", probe::<C, Start>(&start_seeds, random)),
        ("Result", probe::<C, TaskResult>(&result_seeds, random)),
    ]
}

fn print_probe(random: usize) {
    println!(
        "\n== malformed input: worst peak heap held while decoding hostile slices \
         (flips, 0xff length runs, truncations, {random} random strings per type)"
    );
    println!(
        "   {:<20} {:<10} {:>7} {:>13} {:>10}",
        "codec", "type", "inputs", "worst peak B", "from len B"
    );
    let all = [
        (BincodeFixint::NAME, probe_codec::<BincodeFixint>(random)),
        (BincodePlain::NAME, probe_codec::<BincodePlain>(random)),
        (BincodeVarint::NAME, probe_codec::<BincodeVarint>(random)),
        (Postcard::NAME, probe_codec::<Postcard>(random)),
        (Bitcode::NAME, probe_codec::<Bitcode>(random)),
    ];
    for (codec, rows) in &all {
        for (ty, r) in rows {
            println!(
                "   {:<20} {:<10} {:>7} {:>13} {:>10}",
                codec, ty, r.tried, r.worst_peak, r.worst_input_len
            );
        }
    }
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let filter = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);
    let plan = if full { FULL } else { SMOKE };
    let started = Instant::now();

    println!(
        "mproc codec bench ({}): median of {} samples, times per operation; \
         x/cpy = time / memcpy of bincode-fixint's byte count",
        if full {
            "full"
        } else {
            "smoke: single-shot timings, not meaningful"
        },
        plan.samples
    );

    bench_payload(
        plan,
        filter,
        "start",
        "Start { u64, i64, \"Process-12\", [u32; 3], 16 B args }",
        &start_message(),
    );
    bench_payload(
        plan,
        filter,
        "u64",
        "(u64,) = (123_456_789,)",
        &(123_456_789u64,),
    );
    bench_payload(
        plan,
        filter,
        "string64",
        "(String,) of 64 bytes",
        &("x".repeat(64),),
    );
    // The smoke pass shrinks the large payloads so `cargo test --benches` stays quick.
    let (n_u64, n_u8) = if full {
        (1_000_000, 1 << 20)
    } else {
        (10_000, 1 << 14)
    };
    let big: Vec<u64> = (0..n_u64).collect();
    let what = format!(
        "Vec<u64> of {n_u64} (0..{n_u64}), {} B in memory",
        8 * n_u64
    );
    bench_payload(plan, filter, "vec_u64", &what, &big);
    drop(big);
    let bytes: Vec<u8> = (0..n_u8).map(|i| (i * 31 + 7) as u8).collect();
    let what = format!("Vec<u8> of {n_u8} B via plain serde (no serde_bytes)");
    bench_payload(plan, filter, "vec_u8", &what, &bytes);
    drop(bytes);
    let ok: TaskResult = Ok((0..64).collect());
    bench_payload(
        plan,
        filter,
        "result",
        "Result<Vec<u8>, String>::Ok(64 B)",
        &ok,
    );

    if filter.is_none_or(|f| "malformed".contains(f)) {
        print_probe(if full { 3000 } else { 300 });
    }
    println!(
        "\ntotal bench time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
