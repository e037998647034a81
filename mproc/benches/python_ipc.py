"""Python's side of benches/ipc.rs: multiprocessing Queue, Pipe, Lock and Event, timed here.

Arguments: q64=N big=N mid=N lock=N event=N (each optional). Prints one line per measurement,
"name=value" with the unit in the name.
"""
import multiprocessing as mp
import sys
import time

BIG = 10 << 20
MID = 1 << 20


WARM_SMALL = 10_000
WARM_BIG = 4


def feed(out, size, warm, go, n):
    """Sends `warm` messages of `size` bytes, waits for `go`, then sends `n` more: on a Queue
    (put) or a Pipe end (send_bytes)."""
    send = out.send_bytes if hasattr(out, "send_bytes") else out.put
    msg = bytes(size)
    for _ in range(warm):
        send(msg)
    go.wait()
    for _ in range(n):
        send(msg)


def echo(v):
    return v


def pong(ping, pong_e, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong_e.set()


def main():
    args = dict(a.split("=") for a in sys.argv[1:])
    if "q64" in args:
        n = int(args["q64"])
        q, go = mp.Queue(), mp.Event()
        p = mp.Process(target=feed, args=(q, 64, WARM_SMALL, go, n))
        p.start()
        for _ in range(WARM_SMALL):
            q.get()
        go.set()
        t = time.perf_counter()
        for _ in range(n):
            q.get()
        print(f"Queue 64 B child -> parent (msgs/s)={n / (time.perf_counter() - t):.0f}")
        p.join()
    if "big" in args:
        n = int(args["big"])
        q, go = mp.Queue(2), mp.Event()
        p = mp.Process(target=feed, args=(q, BIG, WARM_BIG, go, n))
        p.start()
        for _ in range(WARM_BIG):
            q.get()
        go.set()
        t = time.perf_counter()
        for _ in range(n):
            q.get()
        print(f"Queue 10 MiB child -> parent (GB/s)={n * BIG / (time.perf_counter() - t) / 1e9:.2f}")
        p.join()
        here, there = mp.Pipe()
        go = mp.Event()
        p = mp.Process(target=feed, args=(there, BIG, WARM_BIG, go, n))
        p.start()
        for _ in range(WARM_BIG):
            here.recv_bytes()
        go.set()
        t = time.perf_counter()
        for _ in range(n):
            here.recv_bytes()
        print(f"Pipe 10 MiB child -> parent (GB/s)={n * BIG / (time.perf_counter() - t) / 1e9:.2f}")
        p.join()
        with mp.Pool(1) as pool:
            msg = bytes(BIG)
            for _ in range(WARM_BIG):
                msg = pool.apply(echo, (msg,))
            calls = (n + 1) // 2
            t = time.perf_counter()
            for _ in range(calls):
                msg = pool.apply(echo, (msg,))
            print(f"Pool apply 10 MiB echo (GB/s)={calls * 2 * BIG / (time.perf_counter() - t) / 1e9:.2f}")
    if "mid" in args:
        n = int(args["mid"])
        q, go = mp.Queue(2), mp.Event()
        p = mp.Process(target=feed, args=(q, MID, WARM_BIG, go, n))
        p.start()
        for _ in range(WARM_BIG):
            q.get()
        go.set()
        t = time.perf_counter()
        for _ in range(n):
            q.get()
        print(f"Queue 1 MiB child -> parent (GB/s)={n * MID / (time.perf_counter() - t) / 1e9:.2f}")
        p.join()
        here, there = mp.Pipe()
        go = mp.Event()
        p = mp.Process(target=feed, args=(there, MID, WARM_BIG, go, n))
        p.start()
        for _ in range(WARM_BIG):
            here.recv_bytes()
        go.set()
        t = time.perf_counter()
        for _ in range(n):
            here.recv_bytes()
        print(f"Pipe 1 MiB child -> parent (GB/s)={n * MID / (time.perf_counter() - t) / 1e9:.2f}")
        p.join()
    if "lock" in args:
        n = int(args["lock"])
        lock = mp.Lock()
        t = time.perf_counter()
        for _ in range(n):
            lock.acquire()
            lock.release()
        print(f"Lock acquire+release (ns)={(time.perf_counter() - t) / n * 1e9:.1f}")
    if "event" in args:
        n = int(args["event"])
        ping, pong_e = mp.Event(), mp.Event()
        p = mp.Process(target=pong, args=(ping, pong_e, n))
        p.start()
        t = time.perf_counter()
        for _ in range(n):
            ping.set()
            pong_e.wait()
            pong_e.clear()
        print(f"Event wake-up across processes (us)={(time.perf_counter() - t) / n / 2 * 1e6:.2f}")
        p.join()


if __name__ == "__main__":
    main()
