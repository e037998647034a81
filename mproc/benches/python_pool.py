"""Python side of mproc's `pool` bench (benches/pool.rs runs this file).

Each argument names one measurement, `NAME=COUNT`; the pool starts run first, the others
after them in the order given:

- `apply=N`: on a warm `Pool(2)`, N round trips `pool.apply_async(f, (x,)).get()`, each timed;
- `map1=N:R`: R runs of `pool.map(f, range(N), chunksize=1)` on a warm `Pool(2)`;
- `map=N:R`: R runs of `pool.map(f, range(N))` (default chunksize) on a warm `Pool(2)`;
- `start_fork=R`, `start_spawn=R`, `start_forkserver=R`: R times `Pool(2)` created with that
  start method plus its first `apply(f, (1,))`, timed together (the pool's `terminate()`
  afterwards is not timed); samples round-robin across the methods given.

`--warmup W` sets the untimed repetitions before each measurement (round trips for `apply`,
whole runs otherwise). The warm pools use the default context (fork on Linux before 3.14).

Prints `version X.Y.Z`, `method M` (the default start method), then one line per measurement:
`samples NAME N V V ...`, N the items per sample (1 for latencies), each V a sample's elapsed
time in microseconds.

Run alone:  python3 mproc/benches/python_pool.py --warmup 2 apply=2000 map=1000000:2
"""

import multiprocessing
import sys
import time


def f(x):
    return x


def us_since(t0):
    return (time.perf_counter_ns() - t0) / 1000.0


def apply_round_trips(pool, n, warmup):
    for i in range(warmup):
        pool.apply_async(f, (i,)).get()
    out = []
    for i in range(n):
        t0 = time.perf_counter_ns()
        r = pool.apply_async(f, (i,)).get()
        out.append(us_since(t0))
        if r != i:
            raise SystemExit(f"apply returned {r}, not {i}")
    return out


def map_runs(pool, n, runs, warmup, chunksize):
    for _ in range(warmup):
        pool.map(f, range(min(n, 10000)), chunksize=chunksize)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        r = pool.map(f, range(n), chunksize=chunksize)
        out.append(us_since(t0))
        if len(r) != n or r[-1] != n - 1:
            raise SystemExit("map returned wrong values")
    return out


def start_once(ctx):
    t0 = time.perf_counter_ns()
    pool = ctx.Pool(2)
    r = pool.apply(f, (1,))
    elapsed = us_since(t0)
    pool.terminate()
    pool.join()
    if r != 1:
        raise SystemExit(f"apply returned {r}")
    return elapsed


def main():
    warmup = 2
    plan = []
    args = sys.argv[1:]
    i = 0
    while i < len(args):
        if args[i] == "--warmup":
            warmup = int(args[i + 1])
            i += 2
            continue
        name, count = args[i].split("=")
        plan.append((name, count))
        i += 1

    print("version", sys.version.split()[0])
    print("method", multiprocessing.get_start_method())
    sys.stdout.flush()

    # Pool starts first, while this process is small: a fork copies its page tables.
    starts = {
        name[len("start_"):]: int(count)
        for name, count in plan
        if name.startswith("start_")
    }
    if starts:
        contexts = {m: multiprocessing.get_context(m) for m in starts}
        for m, ctx in contexts.items():
            for _ in range(warmup):
                start_once(ctx)
        samples = {m: [] for m in starts}
        rounds = max(starts.values())
        for r in range(rounds):
            for m, n in starts.items():
                # Spread method m's n samples evenly over the rounds.
                if (r + 1) * n // rounds != r * n // rounds:
                    samples[m].append(start_once(contexts[m]))
        for m, xs in samples.items():
            print("samples", f"start_{m}", 1, *(f"{x:.3f}" for x in xs))
        sys.stdout.flush()

    warm = None
    for name, count in plan:
        if name.startswith("start_"):
            continue
        if warm is None:
            warm = multiprocessing.Pool(2)
        if name == "apply":
            samples = apply_round_trips(warm, int(count), warmup * 500)
            items = 1
        elif name in ("map1", "map"):
            n, runs = (int(x) for x in count.split(":"))
            samples = map_runs(warm, n, runs, warmup, 1 if name == "map1" else None)
            items = n
        else:
            raise SystemExit(f"unknown measurement {name}")
        print("samples", name, items, *(f"{x:.3f}" for x in samples))
        sys.stdout.flush()
    if warm is not None:
        warm.terminate()
        warm.join()


if __name__ == "__main__":
    main()
