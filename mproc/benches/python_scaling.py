"""Python's side of benches/scaling.rs: multiprocessing Pool and Queue with 1, 2, 4, ...
processes, timed here.

Arguments (each optional): cpu=1,2,4 runs=N map1=1,2,4 queue=1,2 per_producer=N. Prints one
line per measurement, "name=value", with the names benches/scaling.rs gives its own figures.
"""
import multiprocessing as mp
import statistics
import sys
import time

TASK_MS = 5.0
TASKS_PER_WORKER = 8
WARM = 1_000


def spin(iters):
    """An integer loop of `iters` rounds (a 64-bit xorshift plus a counter)."""
    x = 0x9E3779B97F4A7C15
    m = (1 << 64) - 1
    for i in range(iters):
        x ^= (x << 13) & m
        x ^= x >> 7
        x ^= (x << 17) & m
        x = (x + i) & m
    return x


def calibrate():
    probe = 20_000
    best = min(timed(spin, probe) for _ in range(5))
    return int(probe * TASK_MS / 1e3 / best)


def timed(f, *args):
    t = time.perf_counter()
    f(*args)
    return time.perf_counter() - t


def inc(x):
    return x + 1


def produce(q, start, n):
    for i in range(WARM):
        q.put((i,) * 8)
    start.wait()
    for i in range(n):
        q.put((i,) * 8)


def consume(q, start, n):
    for _ in range(WARM):
        q.get()
    start.wait()
    for _ in range(n):
        q.get()


def main():
    args = dict(a.split("=") for a in sys.argv[1:])
    runs = int(args.get("runs", "3"))
    if "cpu" in args:
        iters = calibrate()
        one = statistics.median(
            timed(lambda: [spin(iters) for _ in range(TASKS_PER_WORKER)]) / TASKS_PER_WORKER
            for _ in range(5)
        )
        for n in map(int, args["cpu"].split(",")):
            tasks = [iters] * (TASKS_PER_WORKER * n)
            with mp.Pool(n) as pool:
                pool.map(spin, [iters] * n, chunksize=1)
                took = statistics.median(
                    timed(pool.map, spin, tasks, 1) for _ in range(runs)
                )
            print(f"cpu {n} speed-up={one * len(tasks) / took:.2f}")
    if "map1" in args:
        for n in map(int, args["map1"].split(",")):
            with mp.Pool(n) as pool:
                items = 20_000
                pool.map(inc, range(items), chunksize=1)
                took = statistics.median(
                    timed(pool.map, inc, range(items), 1) for _ in range(runs)
                )
            print(f"map1 {n} tasks/s={items / took:.0f}")
    if "queue" in args:
        n = int(args.get("per_producer", "40000"))
        for k in map(int, args["queue"].split(",")):
            rates = []
            for _ in range(runs):
                q, start = mp.Queue(), mp.Barrier(2 * k + 1)
                producers = [mp.Process(target=produce, args=(q, start, n)) for _ in range(k)]
                consumers = [mp.Process(target=consume, args=(q, start, n)) for _ in range(k)]
                for p in producers + consumers:
                    p.start()
                start.wait()
                t = time.perf_counter()
                for c in consumers:
                    c.join()
                rates.append(k * n / (time.perf_counter() - t))
                for p in producers:
                    p.join()
            print(f"queue {k} msgs/s={statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
