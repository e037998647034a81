//! Codec benchmark: which serde wire format should `mproc` use?
//!
//! Measures, on the payloads the `mproc` wire carries and on the values users send, each
//! candidate codec's encoded size, encode time, decode time and encode+decode round-trip
//! time, next to a raw `memcpy` floor (copying as many bytes as bincode's encoding into a
//! preallocated buffer). Each time is also given as a ratio to bincode 1 (mproc's codec until
//! issue 11) measured in the same run, which is what decisions rest on: on a busy machine
//! absolute times move by ±30% from run to run, ratios within one run much less. It then
//! feeds every codec malformed input and records the peak heap the decoder holds and any
//! panic, and shows what each codec keeps of a `Serialize` error's message.
//!
//! Payloads: mproc's own messages (a child's start message, a pool task with its encoded
//! arguments as `serde_bytes`), `(u64,)`, a 64-byte and a 1 MiB `String`, a small task
//! result `(u64, String, Vec<f64>)`, an enum with a struct variant, `Result<Vec<u8>, String>`
//! with 64 bytes, a `Vec<u64>` of 1,000,000, a `Vec<f64>` of 1 Mi, a 1 MiB `Vec<u8>` through
//! plain serde and a 10 MiB `Vec<u8>` through `serde_bytes`.
//!
//! Codecs: bincode 1.3 with the options mproc used until issue 11 (fixint, a limit, no
//! trailing bytes); mproc's own wire format (`src/wire/{codec,format,ser,de}.rs`, compiled
//! into this bench from those files: a sizing pass, then one exact allocation; a decode that
//! must use every byte); postcard driven the same way; rmp-serde (MessagePack, compact
//! structs as arrays); bitcode's serde API.
//!
//! Method: plain `std::time::Instant`, no harness. Each job (codec x encode/decode/round
//! trip, plus the memcpy floor) warms up while calibrating a batch of about 1 ms; then 41
//! samples are taken round-robin across all jobs of a payload, so machine noise hits every
//! candidate alike, and the fastest sample's time per operation is reported (noise only adds
//! time; see `measure_all`). Across runs, take medians. Encoding yields a fresh
//! `Vec<u8>` per call, decoding an owned value from a slice; inputs and outputs go through
//! `std::hint::black_box`. The global allocator is a pass-through that counts heap bytes only
//! during the malformed-input probe (one relaxed atomic load per allocation otherwise, the
//! same for every codec).
//!
//! Run it with (pinned to one core, as BENCHMARKS.md's figures were):
//!
//! ```text
//! taskset -c 1 cargo bench -p mproc --bench codec             # everything, about 40 s
//! taskset -c 1 cargo bench -p mproc --bench codec -- vec_f64  # payloads whose name has "vec_f64"
//! cargo bench -p mproc --bench codec -- --csv                 # also one CSV line per row
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
    #[serde(with = "serde_bytes")]
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

/// A pool task as the dispatcher sends it (shape of mproc's `ToWorker`): the chunk's encoded
/// argument tuples ride as one byte string.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum ToWorker {
    Task {
        id: u64,
        entry: i64,
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        handles: u32,
    },
    Stop,
}

/// A user's enum argument or result, with a struct variant.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Shape {
    Point,
    Circle { r: f64 },
    Rect { w: f64, h: f64, label: String },
}

type TaskResult = Result<Vec<u8>, String>;

// ---------------------------------------------------------------------------------------
// Codecs, statically dispatched so the timed loops hold no branches of ours.
// ---------------------------------------------------------------------------------------

trait Codec {
    const NAME: &'static str;
    fn encode<T: Serialize>(v: &T) -> Vec<u8>;
    fn try_encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String>;
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String>;
}

fn bincode_options() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

struct Bincode;
impl Codec for Bincode {
    const NAME: &'static str = "bincode 1 (before)";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        bincode_options().serialize(v).expect("bincode encode")
    }
    fn try_encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
        bincode_options().serialize(v).map_err(|e| e.to_string())
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        bincode_options()
            .with_limit(b.len() as u64)
            .deserialize(b)
            .map_err(|e| e.to_string())
    }
}

/// Appends to a `Vec` a slice at a time (postcard's own `Extend` flavor goes byte by byte).
struct Append<'a>(&'a mut Vec<u8>);
impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }
    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

struct Postcard;
impl Codec for Postcard {
    const NAME: &'static str = "postcard";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        Self::try_encode(v).expect("postcard encode")
    }
    fn try_encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
        let len = postcard::experimental::serialized_size(v).map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(len);
        postcard::serialize_with_flavor(v, Append(&mut out)).map_err(|e| e.to_string())?;
        Ok(out)
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        match postcard::take_from_bytes(b) {
            Ok((v, [])) => Ok(v),
            Ok(_) => Err("trailing bytes".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// mproc's own wire format, compiled from the library's source files (it is crate-private), so
/// this row measures exactly what mproc runs.
#[allow(dead_code, unreachable_pub)]
#[path = "../src/wire"]
mod wire {
    pub(crate) mod codec;
    mod de;
    pub(crate) mod format;
    mod ser;
}

/// The casts the wire format copies sequences of numbers with (`crate::sys::cast` there).
#[path = "../src/sys"]
mod sys {
    pub(crate) mod cast;
}

struct Wire;
impl Codec for Wire {
    const NAME: &'static str = "mproc wire";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        wire::codec::encode(v).expect("mproc wire encode")
    }
    fn try_encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
        wire::codec::encode(v).map_err(|e| e.to_string())
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        wire::codec::decode(b).map_err(|e| e.to_string())
    }
}

struct Rmp;
impl Codec for Rmp {
    const NAME: &'static str = "rmp-serde";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec(v).expect("rmp encode")
    }
    fn try_encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec(v).map_err(|e| e.to_string())
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        rmp_serde::from_slice(b).map_err(|e| e.to_string())
    }
}

struct Bitcode;
impl Codec for Bitcode {
    const NAME: &'static str = "bitcode (serde)";
    fn encode<T: Serialize>(v: &T) -> Vec<u8> {
        bitcode::serialize(v).expect("bitcode encode")
    }
    fn try_encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
        bitcode::serialize(v).map_err(|e| e.to_string())
    }
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
        bitcode::deserialize(b).map_err(|e| e.to_string())
    }
}

/// Every codec, in the order of the tables; bincode first (the ratios' base).
macro_rules! for_codecs {
    ($m:ident ! ($($arg:tt)*)) => {
        [
            $m!(Bincode, $($arg)*),
            $m!(Wire, $($arg)*),
            $m!(Postcard, $($arg)*),
            $m!(Rmp, $($arg)*),
            $m!(Bitcode, $($arg)*),
        ]
    };
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
    sample: Duration::from_millis(1),
    samples: 41,
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

/// Nanoseconds per operation of each job: its fastest sample. The work is deterministic and
/// single-threaded, so noise (other processes preempting this one) only ever adds time; on a
/// loaded machine the fastest of many short samples is the one that ran undisturbed, where a
/// median would still hold a preemption. Every job is warmed up and calibrated first; then
/// samples are taken round-robin across the jobs, so a burst of noise hits all alike.
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
        .map(|s| s.into_iter().fold(f64::INFINITY, f64::min))
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

struct Options<'a> {
    plan: Plan,
    filter: Option<&'a str>,
    csv: bool,
}

fn bench_payload<T>(opts: &Options<'_>, name: &str, what: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    if opts.filter.is_some_and(|f| !name.contains(f)) {
        return;
    }
    macro_rules! name_of {
        ($c:ident,) => {
            $c::NAME
        };
    }
    macro_rules! encoding_of {
        ($c:ident, $v:expr) => {
            encoding::<$c, T>($v)
        };
    }
    let names = for_codecs!(name_of!());
    let encoded = for_codecs!(encoding_of!(value));
    let floor_len = encoded[0].len();
    let src: Vec<u8> = (0..floor_len).map(|i| i as u8).collect();
    let mut dst = vec![0u8; floor_len];

    let mut jobs: Vec<Job<'_>> = Vec::new();
    macro_rules! jobs_of {
        ($c:ident, $i:expr) => {
            jobs.extend(codec_jobs::<$c, T>(value, &encoded[$i]))
        };
    }
    let mut i = 0;
    macro_rules! next_jobs {
        ($c:ident,) => {{
            jobs_of!($c, i);
            i += 1;
        }};
    }
    let _ = for_codecs!(next_jobs!());
    jobs.push(job(|| {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    }));
    let t = measure_all(opts.plan, &mut jobs);
    drop(jobs);
    let floor = t[3 * i];
    let rows: Vec<Row> = (0..i)
        .map(|i| Row {
            codec: names[i],
            size: encoded[i].len(),
            encode: t[3 * i],
            decode: t[3 * i + 1],
            round_trip: t[3 * i + 2],
        })
        .collect();

    let base = &rows[0];
    let mut out = String::new();
    let _ = writeln!(out, "\n== {name}: {what}");
    let _ = writeln!(
        out,
        "   memcpy floor: {} for {floor_len} B (bincode's size)",
        fmt_ns(floor)
    );
    let _ = writeln!(
        out,
        "   {:<20} {:>9} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7}",
        "codec", "bytes", "encode", "decode", "round trip", "enc/bin", "dec/bin", "rt/bin"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "   {:<20} {:>9} {:>11} {:>11} {:>11} {:>7.2} {:>7.2} {:>7.2}",
            r.codec,
            r.size,
            fmt_ns(r.encode),
            fmt_ns(r.decode),
            fmt_ns(r.round_trip),
            r.encode / base.encode,
            r.decode / base.decode,
            r.round_trip / base.round_trip,
        );
    }
    if opts.csv {
        for r in &rows {
            let _ = writeln!(
                out,
                "csv,{name},{},{},{:.1},{:.1},{:.1},{:.1}",
                r.codec, r.size, r.encode, r.decode, r.round_trip, floor
            );
        }
    }
    print!("{out}");
}

// ---------------------------------------------------------------------------------------
// Malformed input: how much heap can a short hostile input make each decoder hold, and
// does any input make it panic?
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
    panics: usize,
    worst_peak: usize,
    worst_input_len: usize,
}

fn probe<C: Codec, T: DeserializeOwned>(seeds: &[Vec<u8>], random: usize) -> ProbeResult {
    let inputs = hostile_inputs(seeds, random);
    let mut res = ProbeResult {
        tried: inputs.len(),
        panics: 0,
        worst_peak: 0,
        worst_input_len: 0,
    };
    for input in &inputs {
        let (ok, peak) = peak_heap(|| {
            // Dropped inside the tracked region, so a successful decode's value is counted
            // while it is alive and released before tracking stops.
            std::panic::catch_unwind(|| drop(black_box(C::decode::<T>(black_box(input))))).is_ok()
        });
        res.panics += usize::from(!ok);
        if peak > res.worst_peak {
            res.worst_peak = peak;
            res.worst_input_len = input.len();
        }
    }
    res
}

fn probe_codec<C: Codec>(random: usize) -> Vec<(&'static str, ProbeResult)> {
    let big_u64: Vec<u64> = (0..1_000_000).collect();
    let big_u8 = serde_bytes::ByteBuf::from(vec![0xab; 1 << 20]);
    let trunc = |v: Vec<u8>| v[..v.len().min(64)].to_vec();
    let vec_u64_seeds = [
        C::encode(&vec![1u64, 300, 70_000, u64::MAX]),
        trunc(C::encode(&big_u64)),
    ];
    let bytes_seeds = [
        C::encode(&serde_bytes::ByteBuf::from((0u8..16).collect::<Vec<u8>>())),
        trunc(C::encode(&big_u8)),
    ];
    let string_seeds = [
        C::encode(&"Process-12".to_owned()),
        trunc(C::encode(&"y".repeat(1 << 20))),
    ];
    let start_seeds = [C::encode(&start_message())];
    let shape_seeds = [C::encode(&Shape::Rect {
        w: 1.0,
        h: 2.0,
        label: "door".to_owned(),
    })];
    let result_seeds = [
        C::encode(&TaskResult::Ok(vec![7; 5])),
        C::encode(&TaskResult::Err("boom".to_owned())),
    ];
    vec![
        ("Vec<u64>", probe::<C, Vec<u64>>(&vec_u64_seeds, random)),
        (
            "ByteBuf",
            probe::<C, serde_bytes::ByteBuf>(&bytes_seeds, random),
        ),
        ("String", probe::<C, String>(&string_seeds, random)),
        ("Start", probe::<C, Start>(&start_seeds, random)),
        ("Shape", probe::<C, Shape>(&shape_seeds, random)),
        ("Result", probe::<C, TaskResult>(&result_seeds, random)),
    ]
}

fn print_probe(random: usize) {
    println!(
        "\n== malformed input: worst peak heap held while decoding hostile slices \
         (flips, 0xff length runs, truncations, {random} random strings per type)"
    );
    println!(
        "   {:<20} {:<10} {:>7} {:>7} {:>13} {:>10}",
        "codec", "type", "inputs", "panics", "worst peak B", "from len B"
    );
    // A panic would print its message once per input; the count is what matters here.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    macro_rules! probe_of {
        ($c:ident, $random:expr) => {
            ($c::NAME, probe_codec::<$c>($random))
        };
    }
    let all = for_codecs!(probe_of!(random));
    std::panic::set_hook(hook);
    for (codec, rows) in &all {
        for (ty, r) in rows {
            println!(
                "   {:<20} {:<10} {:>7} {:>7} {:>13} {:>10}",
                codec, ty, r.tried, r.panics, r.worst_peak, r.worst_input_len
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Error messages: mproc shows serde's message to the user (`CodecReport::message`).
// ---------------------------------------------------------------------------------------

/// A value whose `Serialize` fails with a message, as mproc's handles do outside a transfer.
struct Refuses;
impl Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "handles travel only as arguments",
        ))
    }
}

fn print_messages() {
    println!("\n== error messages: a failing Serialize, and a u32 decoded as `Shape` (3 variants)");
    macro_rules! messages_of {
        ($c:ident,) => {{
            let enc = $c::try_encode(&Refuses).err().unwrap_or_default();
            let dec = $c::decode::<Shape>(&$c::encode(&7u32))
                .err()
                .unwrap_or_else(|| "(decoded!)".to_owned());
            println!(
                "   {:<20} encode: {enc}\n   {:<20} decode: {dec}",
                $c::NAME,
                ""
            );
        }};
    }
    let _ = for_codecs!(messages_of!());
}

// ---------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let opts = Options {
        plan: if full { FULL } else { SMOKE },
        filter: args
            .iter()
            .find(|a| !a.starts_with('-'))
            .map(String::as_str),
        csv: args.iter().any(|a| a == "--csv"),
    };
    let started = Instant::now();

    println!(
        "mproc codec bench ({}): fastest of {} samples, times per operation; \
         x/bin = time / bincode's time in this run",
        if full {
            "full"
        } else {
            "smoke: single-shot timings, not meaningful"
        },
        opts.plan.samples
    );

    bench_payload(
        &opts,
        "start",
        "Start { u64, i64, \"Process-12\", [u32; 3], 16 B serde_bytes args }",
        &start_message(),
    );
    let task = ToWorker::Task {
        id: 1234,
        entry: 4_211_712,
        payload: (0..64).collect(),
        handles: 0,
    };
    bench_payload(
        &opts,
        "task",
        "ToWorker::Task { u64, i64, 64 B serde_bytes, u32 }",
        &task,
    );
    bench_payload(&opts, "u64", "(u64,) = (123_456_789,)", &(123_456_789u64,));
    bench_payload(
        &opts,
        "string64",
        "(String,) of 64 bytes",
        &("x".repeat(64),),
    );
    let small = (42u64, "item-42".to_owned(), vec![0.25f64; 8]);
    bench_payload(&opts, "small", "(u64, String of 7, Vec<f64> of 8)", &small);
    let shape = Shape::Rect {
        w: 3.5,
        h: 2.0,
        label: "door".to_owned(),
    };
    bench_payload(
        &opts,
        "enum",
        "Shape::Rect { f64, f64, String of 4 }",
        &shape,
    );
    let ok: TaskResult = Ok((0..64).collect());
    bench_payload(&opts, "result", "Result<Vec<u8>, String>::Ok(64 B)", &ok);

    // The smoke pass shrinks the large payloads so `cargo test --benches` stays quick.
    let scale = if full { 1 } else { 64 };
    let n = (1 << 20) / scale;
    let text: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let what = format!("String of {n} B");
    bench_payload(&opts, "string_1m", &what, &text);
    drop(text);
    let n = 1_000_000 / scale;
    let big: Vec<u64> = (0..n as u64).collect();
    let what = format!("Vec<u64> of {n} (0..{n})");
    bench_payload(&opts, "vec_u64", &what, &big);
    drop(big);
    let n = (1 << 20) / scale;
    let floats: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 + 0.1).collect();
    let what = format!("Vec<f64> of {n}");
    bench_payload(&opts, "vec_f64", &what, &floats);
    drop(floats);
    let n = (1 << 20) / scale;
    let bytes: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
    let what = format!("Vec<u8> of {n} B via plain serde (no serde_bytes)");
    bench_payload(&opts, "vec_u8", &what, &bytes);
    drop(bytes);
    let n = (10 << 20) / scale;
    let blob = serde_bytes::ByteBuf::from((0..n).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>());
    let what = format!("Vec<u8> of {n} B via serde_bytes (ByteBuf)");
    bench_payload(&opts, "bytes_10m", &what, &blob);
    drop(blob);

    if opts.filter.is_none_or(|f| "malformed".contains(f)) {
        print_probe(if full { 3000 } else { 300 });
        print_messages();
    }
    println!(
        "\ntotal bench time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
