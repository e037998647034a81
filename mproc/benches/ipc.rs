//! Queues, pipes, locks and events between processes, next to the operating system's floor and
//! to Python's `multiprocessing`, in the same run.
//!
//! Sections, each with its target (checked at the end, PASS or MISS):
//!
//! 1. `q64`: a child puts N messages of 64 bytes (`[u64; 8]`) on a `Queue`, the parent gets
//!    them; messages/s over the parent's gets, after warm-up messages (child start, the
//!    queue's first growth) that are not timed. Floor: a forked child that
//!    `write`s each 64-byte message to a Unix socketpair, the parent reading in bulk (one
//!    system call per message, the least a socket-based queue pays). Target: >= 2,000,000/s.
//! 2. `big`: 10 MiB messages of the types users send (`Vec<u8>`, `Vec<f64>`, `String`) and of
//!    `ByteBuf`: a child puts them on a `Queue::bounded(2)`, a child sends them on a pipe, and a
//!    one-worker `Pool` echoes them (`apply`, in as the argument and out as the result); GB/s at
//!    the parent, after 4 warm-up messages. Floor: `memcpy` of 10 MiB between two warm buffers.
//!    Targets, each way: `Vec<u8>` >= 1.5 GB/s; `Vec<f64>` and `ByteBuf` >= 0.5x memcpy. One
//!    more row runs the `Vec<f64>` pool echo alone in a fresh copy of this binary
//!    (`--echo-alone CALLS`): as a program that does nothing else sees it, without the memory
//!    the allocator kept from the rows before. Beside them, the floors of the ways themselves:
//!    the speed of a copy of 10 MiB along a chain of buffers larger than the cache (a queue or
//!    a pipe makes two per message, on two CPUs at once), and half of it, the floor of an echo
//!    through shared memory, which makes four such copies one after the other; a queue's and a
//!    pipe's design with nothing else (a forked child copies whole messages into message-sized
//!    slots of shared memory, three, two or six of them, and the parent copies each out into a
//!    new `Vec`, both spinning), each `Queue` and pipe row's ratio to it (three held for a
//!    `Queue::bounded(2)`; two for a pipe, which holds from two, its reader keeping up, to six,
//!    the most it sends ahead); and, for comparison, a streaming design mproc does not use
//!    (1 MiB pieces through a 3 MiB ring the cache holds).
//! 3. `mid`: 1 MiB messages of `Vec<u8>` (past the 64 KiB a pipe keeps in its message, well
//!    under the 64 MiB a receiver keeps mapped) through the same `Queue` and pipe; GB/s at the
//!    parent. Floor: `memcpy` of 1 MiB (warm). No target: it shows the sizes between.
//! 4. `lock`: uncontended `Lock::acquire` + drop, ns per pair; `std::sync::Mutex` beside it.
//!    Target: <= 50 ns.
//! 5. `event`: a ping-pong between two processes over two `Event`s (set, wait, clear), half a
//!    round trip per wake-up. Floor: the same ping-pong over two raw futex words in shared
//!    memory with a forked child. Target: <= 2x the floor.
//!
//! Python's side (`benches/python_ipc.py`, `$PYTHON` or `python3`) runs after the Rust
//! sections. Run it with:
//!
//! ```text
//! cargo bench -p mproc --bench ipc                 # everything, about a minute
//! cargo bench -p mproc --bench ipc -- q64 lock     # only the sections named (q64 big mid ...)
//! cargo bench -p mproc --bench ipc -- --no-python  # skip Python
//! cargo bench -p mproc --bench ipc -- --pin 0      # everything on CPU 0 only
//! ```
//!
//! Without `--bench` on its command line (as under `cargo test --benches`) it does a smoke run.

mod common;
use common::{machine, pin_to};

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use mproc::{Connection, Event, Lock, Pool, Process, Queue, pipe};

const SECTIONS: [&str; 5] = ["q64", "big", "mid", "lock", "event"];
const BIG: usize = 10 << 20;
const MID: usize = 1 << 20;

struct Plan {
    q64: u64,
    big: usize,
    mid: usize,
    locks: u64,
    pings: u64,
    rounds: usize,
}

const FULL: Plan = Plan {
    q64: 2_000_000,
    big: 40,
    mid: 400,
    locks: 10_000_000,
    pings: 20_000,
    rounds: 5,
};
const SMOKE: Plan = Plan {
    q64: 10_000,
    big: 2,
    mid: 4,
    locks: 10_000,
    pings: 100,
    rounds: 1,
};

/// Messages put and taken before the clock starts (process start, first growth).
const WARM_SMALL: u64 = 10_000;
const WARM_BIG: usize = 4;

/// Puts [`WARM_SMALL`] messages, waits for `go`, then puts `n` 64-byte messages.
fn put_small(q: Queue<[u64; 8]>, go: Event, n: u64) {
    for i in 0..WARM_SMALL {
        q.put([i; 8]).unwrap();
    }
    go.wait().unwrap();
    for i in 0..n {
        q.put([i; 8]).unwrap();
    }
}

/// A 10 MiB message of one of the types users send.
trait Payload: Serialize + DeserializeOwned + Send + 'static {
    /// Its name in the report.
    const NAME: &'static str;
    /// A message of `size` bytes.
    fn make(size: usize) -> Self;
    /// Its size in bytes.
    fn size(&self) -> usize;
}

impl Payload for ByteBuf {
    const NAME: &'static str = "ByteBuf";
    fn make(size: usize) -> Self {
        ByteBuf::from(vec![7u8; size])
    }
    fn size(&self) -> usize {
        self.len()
    }
}

impl Payload for Vec<u8> {
    const NAME: &'static str = "Vec<u8>";
    fn make(size: usize) -> Self {
        vec![7u8; size]
    }
    fn size(&self) -> usize {
        self.len()
    }
}

impl Payload for Vec<f64> {
    const NAME: &'static str = "Vec<f64>";
    fn make(size: usize) -> Self {
        (0..size / 8).map(|i| i as f64 * 0.5).collect()
    }
    fn size(&self) -> usize {
        self.len() * 8
    }
}

impl Payload for String {
    const NAME: &'static str = "String";
    fn make(size: usize) -> Self {
        "mproc ".repeat(size / 6) + &".".repeat(size % 6)
    }
    fn size(&self) -> usize {
        self.len()
    }
}

/// Puts [`WARM_BIG`] messages, waits for `go`, then puts `n` messages of `size` bytes.
fn put_big<P: Payload>(q: Queue<P>, go: Event, n: usize, size: usize) {
    let v = P::make(size);
    for _ in 0..WARM_BIG {
        q.put(&v).unwrap();
    }
    go.wait().unwrap();
    for _ in 0..n {
        q.put(&v).unwrap();
    }
}

/// Sends [`WARM_BIG`] messages, waits for `go`, then sends `n` messages of `size` bytes.
fn send_big<P: Payload>(c: Connection<P>, go: Event, n: usize, size: usize) {
    let v = P::make(size);
    for _ in 0..WARM_BIG {
        c.send(&v).unwrap();
    }
    go.wait().unwrap();
    for _ in 0..n {
        c.send(&v).unwrap();
    }
}

/// A pool task that hands its argument back.
fn echo<P: Payload>(v: P) -> P {
    v
}

/// The other side of the event ping-pong: `n` times, wait for ping, answer pong.
fn pong(ping: Event, pong: Event, n: u64) {
    for _ in 0..n {
        ping.wait().unwrap();
        ping.clear();
        pong.set();
    }
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

struct Report {
    checks: Vec<(String, bool)>,
    /// Headline figures by Python's line names, to print ratios.
    ours: Vec<(&'static str, f64)>,
}

impl Report {
    fn row(&mut self, name: &str, value: String) {
        println!("{name:<58} {value}");
    }
    fn check(&mut self, what: String, ok: bool) {
        self.checks.push((what, ok));
    }
}

fn main() -> Result<(), mproc::Error> {
    let cli = common::Cli::new();
    if let Some(calls) = cli.value("--echo-alone", "--echo-alone CALLS") {
        println!("{}", pool_echo::<Vec<f64>>(calls)?);
        return Ok(());
    }
    let python = cli.python();
    let on = |s: &str| cli.on(&SECTIONS, s);
    let plan = if cli.full() { FULL } else { SMOKE };
    if let Some(cpu) = cli.value("--pin", "--pin CPU") {
        pin_to(cpu);
    }
    println!("{}", machine());
    let mut r = Report {
        checks: Vec::new(),
        ours: Vec::new(),
    };
    let mut py_args = Vec::new();
    if on("q64") {
        q64(&plan, &mut r)?;
        py_args.push(format!("q64={}", plan.q64 / 10));
    }
    if on("big") {
        big(&plan, &mut r)?;
        py_args.push(format!("big={}", plan.big.min(20)));
    }
    if on("mid") {
        mid(&plan, &mut r)?;
        py_args.push(format!("mid={}", plan.mid.min(200)));
    }
    if on("lock") {
        lock(&plan, &mut r)?;
        py_args.push(format!("lock={}", plan.locks / 10));
    }
    if on("event") {
        event(&plan, &mut r)?;
        py_args.push(format!("event={}", plan.pings / 4));
    }
    if python && !py_args.is_empty() {
        match common::python_stdout(Path::new("python_ipc.py"), &py_args) {
            Ok(out) => {
                let ours = r.ours.clone();
                // Rates: higher is better; times (ns, us): lower is better.
                let compare = |name: &str, ours: f64, py: f64| {
                    let x = if name.contains("/s") {
                        ours / py
                    } else {
                        py / ours
                    };
                    format!("  (mproc {x:.1}x faster)")
                };
                common::python_rows(&out, &ours, compare, |name, value| r.row(name, value));
            }
            Err(e) => println!("python skipped: {e}"),
        }
    }
    common::print_checks(&r.checks);
    Ok(())
}

fn q64(plan: &Plan, r: &mut Report) -> Result<(), mproc::Error> {
    let mut ours = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..plan.rounds {
        let q = Queue::<[u64; 8]>::new()?;
        let go = Event::new()?;
        let mut p = Process::new(put_small, (q.clone(), go.clone(), plan.q64));
        p.start()?;
        for _ in 0..WARM_SMALL {
            q.get()?;
        }
        go.set();
        let t = Instant::now();
        for i in 0..plan.q64 {
            let m = q.get()?;
            debug_assert_eq!(m[0], i);
            std::hint::black_box(m);
        }
        ours.push(plan.q64 as f64 / t.elapsed().as_secs_f64());
        p.join()?;
        floor.push(socket_stream(plan.q64));
    }
    let (ours, floor) = (median(&mut ours), median(&mut floor));
    r.row(
        "socketpair, one write(2) per 64 B message (floor)",
        format!("{:>12.0} msgs/s", floor),
    );
    r.row(
        "Queue<[u64; 8]> child -> parent",
        format!("{:>12.0} msgs/s  ({:.1}x the floor)", ours, ours / floor),
    );
    r.check(format!("q64: {ours:.0} msgs/s >= 2,000,000"), ours >= 2e6);
    r.ours.push(("Queue 64 B child -> parent (msgs/s)", ours));
    Ok(())
}

/// A forked child writes `n` 64-byte messages, one `write` each; the parent reads them all.
/// Messages per second at the parent.
fn socket_stream(n: u64) -> f64 {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    // SAFETY: the child only writes to a socket and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        drop(a);
        let msg = [1u8; 64];
        for _ in 0..n {
            b.write_all(&msg).unwrap();
        }
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(b);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = n as usize * 64;
    let t = Instant::now();
    while left > 0 {
        let k = a.read(&mut buf).unwrap();
        assert!(k > 0);
        left -= k;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    // SAFETY: reaps the child forked above.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    rate
}

fn big(plan: &Plan, r: &mut Report) -> Result<(), mproc::Error> {
    let mut copy = Vec::new();
    let mut cold = Vec::new();
    let mut cold_pairs = Vec::new();
    let mut whole = Vec::new();
    let mut whole_two = Vec::new();
    let mut whole_six = Vec::new();
    let mut streamed = Vec::new();
    let src = vec![3u8; BIG];
    let mut dst = vec![0u8; BIG];
    // Per payload, per way (queue, pipe, pool): a rate per round.
    let mut rates: [[Vec<f64>; 3]; 4] = Default::default();
    let mut alone = Vec::new();
    for _ in 0..plan.rounds {
        alone.push(echo_in_a_fresh_process(plan.big.div_ceil(2)));
        dst.copy_from_slice(&src);
        let t = Instant::now();
        for _ in 0..plan.big {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        copy.push(gb(plan.big * BIG, t));
        cold.push(cold_copies(plan.big.div_ceil(2)));
        cold_pairs.push(cold_copies_two_at_once(plan.big.div_ceil(2)));
        whole.push(handed_over(plan.big, 3 * BIG, BIG));
        whole_two.push(handed_over(plan.big, 2 * BIG, BIG));
        whole_six.push(handed_over(plan.big, 6 * BIG, BIG));
        streamed.push(handed_over(plan.big, 3 << 20, 1 << 20));
        big_of::<ByteBuf>(plan, &mut rates[0])?;
        big_of::<Vec<u8>>(plan, &mut rates[1])?;
        big_of::<Vec<f64>>(plan, &mut rates[2])?;
        big_of::<String>(plan, &mut rates[3])?;
    }
    let copy = median(&mut copy);
    r.row("memcpy of 10 MiB (floor)", format!("{copy:>8.2} GB/s"));
    let names = [
        ByteBuf::NAME,
        <Vec<u8>>::NAME,
        <Vec<f64>>::NAME,
        String::NAME,
    ];
    let cold = beside_memcpy(
        r,
        copy,
        "copy of 10 MiB along a chain of five buffers (cold)",
        &mut cold,
    );
    beside_memcpy(
        r,
        copy,
        "two such copies at once on two CPUs, each (a Queue's and pipe's)",
        &mut cold_pairs,
    );
    beside_memcpy(
        r,
        copy,
        "four such copies in a row (an echo's floor, in + out)",
        &mut [cold / 2.0],
    );
    let whole = beside_memcpy(
        r,
        copy,
        "their design alone: whole messages through shared memory, three held (a Queue's)",
        &mut whole,
    );
    let whole_two = beside_memcpy(
        r,
        copy,
        "the same, two held (a pipe whose reader keeps up)",
        &mut whole_two,
    );
    beside_memcpy(
        r,
        copy,
        "the same, six held (a pipe whose reader falls behind: the most it sends ahead)",
        &mut whole_six,
    );
    beside_memcpy(
        r,
        copy,
        "1 MiB pieces through a 3 MiB ring instead (a streaming design, not mproc's)",
        &mut streamed,
    );
    beside_memcpy(
        r,
        copy,
        "Pool::apply echo of Vec<f64>, 10 MiB, alone in a fresh process",
        &mut alone,
    );
    let ways = ["Queue", "pipe Connection", "Pool::apply echo (in + out)"];
    for (name, per_way) in names.into_iter().zip(&mut rates) {
        for (way, rates) in ways.into_iter().zip(per_way.iter_mut()) {
            let rate = median(rates);
            let alone = match way {
                "Queue" => format!(", {:.2}x its design alone", rate / whole),
                "pipe Connection" => format!(", {:.2}x its design alone", rate / whole_two),
                _ => String::new(),
            };
            r.row(
                &format!("{way} of {name}, 10 MiB messages"),
                format!("{rate:>8.2} GB/s  ({:.2}x memcpy{alone})", rate / copy),
            );
            let (target, ok) = match name {
                "Vec<u8>" => ("1.5 GB/s".to_owned(), rate >= 1.5),
                "String" => continue,
                _ => (format!("0.5 x memcpy {copy:.2} GB/s"), rate >= 0.5 * copy),
            };
            r.check(
                format!("big: {way} of {name} {rate:.2} GB/s >= {target}"),
                ok,
            );
        }
        if name == "Vec<u8>" {
            r.ours.push((
                "Queue 10 MiB child -> parent (GB/s)",
                median(&mut per_way[0]),
            ));
            r.ours.push((
                "Pipe 10 MiB child -> parent (GB/s)",
                median(&mut per_way[1]),
            ));
            r.ours
                .push(("Pool apply 10 MiB echo (GB/s)", median(&mut per_way[2])));
        }
    }
    Ok(())
}

/// A row of the median of `samples` (GB/s) and its ratio to `copy` (`memcpy`'s); the median.
fn beside_memcpy(r: &mut Report, copy: f64, name: &str, samples: &mut [f64]) -> f64 {
    let rate = median(samples);
    r.row(
        name,
        format!("{rate:>8.2} GB/s  ({:.2}x memcpy)", rate / copy),
    );
    rate
}

/// A `Queue`'s and a pipe's way of moving a message, with nothing else: a forked child copies
/// each 10 MiB message into a ring of `cap` bytes of shared memory in pieces of `piece` bytes
/// (publishing each piece with a counter), and this process copies the pieces out into a new
/// `Vec` per message, both sides spinning on the other's counter. With whole messages
/// (`piece` = [`BIG`]) and a ring of two, three or six, it is mproc's design (a message is
/// written whole before it is read, and so many are held) with nothing else: a reference, not
/// a lower bound (a `Queue` or pipe can do a little better where its timing suits the cache).
/// With small pieces through a ring the cache holds, it is a streaming design mproc does not
/// use (a message then never lies whole in shared memory, so a reader that dies in it loses
/// it). `calls` messages, written once the clock runs, after [`WARM_BIG`]; GB/s at this side.
fn handed_over(calls: usize, cap: usize, piece: usize) -> f64 {
    assert!(
        cap.is_multiple_of(piece) && BIG.is_multiple_of(piece),
        "pieces that never wrap"
    );
    let len = 4096 + cap;
    // Unmapped below.
    let mem = common::shared_mapping(len).cast::<u8>();
    // SAFETY: the mapping is zeroed, page-aligned and lives until munmap; the two counters,
    // on their own cache lines, are only accessed atomically, and the ring past the first page
    // is only touched in the ranges the counters hand from one side to the other.
    let (written, read, go, ring) = unsafe {
        (
            &*(mem as *const AtomicU64),
            &*(mem.add(64) as *const AtomicU64),
            &*(mem.add(128) as *const AtomicU64),
            mem.add(4096),
        )
    };
    let messages = WARM_BIG + calls;
    // Made before the fork: the child does not allocate (the parent may have threads).
    let src = vec![7u8; BIG];
    // SAFETY: the child only copies into the shared ring, touches the shared words and leaves
    // with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let mut at = 0u64;
        for m in 0..messages {
            // As the rows it is compared with: the timed messages are written once the clock
            // runs, not during the warm-up.
            while m == WARM_BIG && go.load(Ordering::Acquire) == 0 {
                std::hint::spin_loop();
            }
            for off in (0..BIG).step_by(piece) {
                let k = piece.min(BIG - off);
                while at + k as u64 - read.load(Ordering::Acquire) > cap as u64 {
                    std::hint::spin_loop();
                }
                // SAFETY: the reader has released these `k` bytes of the ring (the loop
                // above), and `cap` is a multiple of `piece`, so they do not wrap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr().add(off),
                        ring.add(at as usize % cap),
                        k,
                    );
                }
                at += k as u64;
                written.store(at, Ordering::Release);
            }
        }
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(src);
    let mut at = 0u64;
    let mut t = Instant::now();
    for m in 0..messages {
        if m == WARM_BIG {
            t = Instant::now();
            go.store(1, Ordering::Release);
        }
        let mut v = Vec::<u8>::with_capacity(BIG);
        for off in (0..BIG).step_by(piece) {
            let k = piece.min(BIG - off);
            while written.load(Ordering::Acquire) < at + k as u64 {
                std::hint::spin_loop();
            }
            // SAFETY: the writer has published these `k` bytes of the ring (the loop above),
            // and `v` has room for the message.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    ring.add(at as usize % cap),
                    v.as_mut_ptr().add(off),
                    k,
                );
            }
            at += k as u64;
            read.store(at, Ordering::Release);
        }
        // SAFETY: every byte of the message was copied in above.
        unsafe { v.set_len(BIG) };
        std::hint::black_box(v);
    }
    let rate = gb(calls * BIG, t);
    let mut status = 0;
    // SAFETY: reaps the child; unmaps the mapping made above, which nothing uses any more.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::munmap(mem.cast(), len);
    }
    assert_eq!(status, 0, "the writing child failed");
    rate
}

/// [`cold_copies`] on two threads at once (each with its own buffers), the slower one's speed:
/// what each of a queue's two copies (the sender's in, the receiver's out) runs at when they
/// overlap on two CPUs, sharing the memory bus.
fn cold_copies_two_at_once(calls: usize) -> f64 {
    let other = std::thread::spawn(move || cold_copies(calls));
    let here = cold_copies(calls);
    here.min(other.join().expect("the other copying thread"))
}

/// The speed of a copy of 10 MiB into a buffer the cache no longer holds, as a message's are
/// (the `memcpy` row copies between two warm buffers): four copies in a row along a chain of
/// five buffers (50 MiB, more than this VM's cache; each copy reads what the last one wrote),
/// `calls` times, in GB/s copied. An echo of an owned value makes four such copies
/// one after the other (the caller's value into shared memory, out of it into the worker's
/// own value, and the same back), so half of this is its floor (in + out); a queue or a pipe
/// makes two, on two CPUs at once, so this is theirs.
fn cold_copies(calls: usize) -> f64 {
    // Written (not the kernel's zero page), each with its own bytes.
    let mut bufs: Vec<Vec<u8>> = (1..=5u8).map(|i| vec![i; BIG]).collect();
    let t = Instant::now();
    for _ in 0..calls {
        for i in 0..4 {
            let (from, to) = bufs.split_at_mut(i + 1);
            to[0].copy_from_slice(std::hint::black_box(&from[i]));
            std::hint::black_box(&mut to[0]);
        }
    }
    gb(calls * 4 * BIG, t)
}

/// The pool echo of `Vec<f64>` as a program that does nothing else sees it: this binary run
/// again with `--echo-alone` (in this process, the rows before have left the allocator holding
/// memory that a fresh program would fault in afresh at each call).
fn echo_in_a_fresh_process(calls: usize) -> f64 {
    let exe = std::env::current_exe().expect("this binary's path");
    let out = std::process::Command::new(exe)
        .args(["--echo-alone", &calls.to_string()])
        .output()
        .expect("running this binary again");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("--echo-alone printed {text:?}"))
}

/// A one-worker pool echoes a 10 MiB `P` `calls` times after warm-up calls, the message in as
/// the argument and back as the result, moved each time (no clone in the loop): 20 MiB a
/// call; GB/s (in + out).
fn pool_echo<P: Payload>(calls: usize) -> Result<f64, mproc::Error> {
    let pool = Pool::new(1)?;
    let mut v = P::make(BIG);
    for _ in 0..WARM_BIG {
        v = pool.apply(echo::<P>, (v,))?;
    }
    let (t, mut bytes) = (Instant::now(), 0);
    for _ in 0..calls {
        v = pool.apply(echo::<P>, (v,))?;
        bytes += 2 * v.size();
    }
    Ok(gb(bytes, t))
}

/// GB/s for `bytes` moved since `t`.
fn gb(bytes: usize, t: Instant) -> f64 {
    bytes as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// One round of 10 MiB messages of `P`: through a `Queue` and a pipe ([`queue_and_pipe`]),
/// and echoed by a one-worker pool; GB/s of each, at the parent.
fn big_of<P: Payload>(plan: &Plan, rates: &mut [Vec<f64>; 3]) -> Result<(), mproc::Error> {
    let (queue, pipe) = queue_and_pipe::<P>(plan.big, BIG)?;
    rates[0].push(queue);
    rates[1].push(pipe);
    rates[2].push(pool_echo::<P>(plan.big.div_ceil(2))?);
    Ok(())
}

/// A child puts `n` messages of `P` of `size` bytes on a `Queue::bounded(2)`, then a child
/// sends as many on a pipe; GB/s of each, at the parent, after [`WARM_BIG`] messages.
fn queue_and_pipe<P: Payload>(n: usize, size: usize) -> Result<(f64, f64), mproc::Error> {
    let q = Queue::<P>::bounded(2)?;
    let go = Event::new()?;
    let mut p = Process::new(put_big::<P>, (q.clone(), go.clone(), n, size));
    p.start()?;
    for _ in 0..WARM_BIG {
        q.get()?;
    }
    go.set();
    let (t, mut bytes) = (Instant::now(), 0);
    for _ in 0..n {
        bytes += q.get()?.size();
    }
    let queue = gb(bytes, t);
    p.join()?;

    let (here, there) = pipe::<P>()?;
    let go = Event::new()?;
    let mut p = Process::new(send_big::<P>, (there, go.clone(), n, size));
    p.start()?;
    for _ in 0..WARM_BIG {
        here.recv()?;
    }
    go.set();
    let (t, mut bytes) = (Instant::now(), 0);
    for _ in 0..n {
        bytes += here.recv()?.size();
    }
    let pipe = gb(bytes, t);
    p.join()?;
    Ok((queue, pipe))
}

/// 1 MiB messages of `Vec<u8>` through a `Queue` and a pipe, beside a `memcpy` of 1 MiB.
fn mid(plan: &Plan, r: &mut Report) -> Result<(), mproc::Error> {
    let (mut copy, mut queue, mut pipe) = (Vec::new(), Vec::new(), Vec::new());
    let src = vec![3u8; MID];
    let mut dst = vec![0u8; MID];
    for _ in 0..plan.rounds {
        let t = Instant::now();
        for _ in 0..plan.mid {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        copy.push(gb(plan.mid * MID, t));
        let (q, p) = queue_and_pipe::<Vec<u8>>(plan.mid, MID)?;
        queue.push(q);
        pipe.push(p);
    }
    let copy = median(&mut copy);
    r.row("memcpy of 1 MiB (floor)", format!("{copy:>8.2} GB/s"));
    for (way, rates, name) in [
        ("Queue", &mut queue, "Queue 1 MiB child -> parent (GB/s)"),
        (
            "pipe Connection",
            &mut pipe,
            "Pipe 1 MiB child -> parent (GB/s)",
        ),
    ] {
        let rate = median(rates);
        r.row(
            &format!("{way} of Vec<u8>, 1 MiB messages"),
            format!("{rate:>8.2} GB/s  ({:.2}x memcpy)", rate / copy),
        );
        r.ours.push((name, rate));
    }
    Ok(())
}

fn lock(plan: &Plan, r: &mut Report) -> Result<(), mproc::Error> {
    let lock = Lock::new()?;
    let std_lock = std::sync::Mutex::new(0u64);
    let (mut ours, mut std_ns) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        let t = Instant::now();
        for _ in 0..plan.locks {
            drop(std::hint::black_box(lock.acquire()?));
        }
        ours.push(t.elapsed().as_nanos() as f64 / plan.locks as f64);
        let t = Instant::now();
        for _ in 0..plan.locks {
            drop(std::hint::black_box(std_lock.lock().unwrap()));
        }
        std_ns.push(t.elapsed().as_nanos() as f64 / plan.locks as f64);
    }
    let (ours, std_ns) = (median(&mut ours), median(&mut std_ns));
    r.row(
        "std::sync::Mutex lock+unlock (in-process floor)",
        format!("{std_ns:>8.1} ns"),
    );
    r.row(
        "Lock acquire+release, uncontended",
        format!("{ours:>8.1} ns"),
    );
    r.check(format!("lock: {ours:.1} ns <= 50 ns"), ours <= 50.0);
    r.ours.push(("Lock acquire+release (ns)", ours));
    Ok(())
}

fn event(plan: &Plan, r: &mut Report) -> Result<(), mproc::Error> {
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        let (ping, pong_e) = (Event::new()?, Event::new()?);
        let mut p = Process::new(pong, (ping.clone(), pong_e.clone(), plan.pings + 10));
        p.start()?;
        for _ in 0..10 {
            ping.set();
            pong_e.wait()?;
            pong_e.clear();
        }
        let t = Instant::now();
        for _ in 0..plan.pings {
            ping.set();
            pong_e.wait()?;
            pong_e.clear();
        }
        ours.push(t.elapsed().as_nanos() as f64 / plan.pings as f64 / 2.0 / 1000.0);
        p.join()?;
        floor.push(futex_ping_pong(plan.pings));
    }
    let (ours, floor) = (median(&mut ours), median(&mut floor));
    r.row(
        "raw futex wake-up across processes (floor)",
        format!("{floor:>8.2} µs"),
    );
    r.row(
        "Event wake-up across processes",
        format!("{ours:>8.2} µs  ({:.2}x the floor)", ours / floor),
    );
    r.ours.push(("Event wake-up across processes (us)", ours));
    r.check(
        format!("event: {ours:.2} µs <= 2 x {floor:.2} µs"),
        ours <= 2.0 * floor,
    );
    Ok(())
}

/// A ping-pong over two futex words in a shared anonymous mapping with a forked child, each
/// side sleeping in FUTEX_WAIT until the other wakes it. Microseconds per one-way wake-up.
fn futex_ping_pong(n: u64) -> f64 {
    // Unmapped below.
    let mem = common::shared_page();
    // SAFETY: the page is zeroed, aligned and lives until munmap; both words only accessed
    // atomically.
    let (ping, pong) = unsafe {
        (
            &*(mem as *const AtomicU32),
            &*(mem.cast::<u8>().add(64) as *const AtomicU32),
        )
    };
    let wait = |w: &AtomicU32| {
        while w.load(Ordering::Acquire) == 0 {
            // SAFETY: FUTEX_WAIT on a valid word, no timeout.
            unsafe {
                libc::syscall(libc::SYS_futex, w.as_ptr(), libc::FUTEX_WAIT, 0, 0, 0, 0);
            }
        }
        w.store(0, Ordering::Release);
    };
    let wake = |w: &AtomicU32| {
        w.store(1, Ordering::Release);
        // SAFETY: FUTEX_WAKE on a valid word.
        unsafe { libc::syscall(libc::SYS_futex, w.as_ptr(), libc::FUTEX_WAKE, 1, 0, 0, 0) };
    };
    let rounds = n + 10;
    // SAFETY: the child only touches the shared words and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        for _ in 0..rounds {
            wait(ping);
            wake(pong);
        }
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    for _ in 0..10 {
        wake(ping);
        wait(pong);
    }
    let t = Instant::now();
    for _ in 0..n {
        wake(ping);
        wait(pong);
    }
    let us = t.elapsed().as_nanos() as f64 / n as f64 / 2.0 / 1000.0;
    // SAFETY: reaps the child; unmaps the page mapped above.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), 0);
        libc::munmap(mem, 4096);
    }
    us
}
