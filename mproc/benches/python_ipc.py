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


def received(source, take, size, warm, n):
    """Starts a child that feeds `source` messages of `size` bytes; takes `warm` of them with
    `take`, then times `n` more. Seconds for the `n`."""
    go = mp.Event()
    p = mp.Process(target=feed, args=(source, size, warm, go, n))
    p.start()
    for _ in range(warm):
        take()
    go.set()
    t = time.perf_counter()
    for _ in range(n):
        take()
    took = time.perf_counter() - t
    p.join()
    return took


def queue_and_pipe(size, label, n):
    """10 MiB or 1 MiB messages through a Queue(2) and a Pipe: GB/s of each, printed."""
    q = mp.Queue(2)
    took = received(q, q.get, size, WARM_BIG, n)
    print(f"Queue {label} child -> parent (GB/s)={n * size / took / 1e9:.2f}")
    here, there = mp.Pipe()
    took = received(there, here.recv_bytes, size, WARM_BIG, n)
    print(f"Pipe {label} child -> parent (GB/s)={n * size / took / 1e9:.2f}")


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
        q = mp.Queue()
        took = received(q, q.get, 64, WARM_SMALL, n)
        print(f"Queue 64 B child -> parent (msgs/s)={n / took:.0f}")
    if "big" in args:
        n = int(args["big"])
        queue_and_pipe(BIG, "10 MiB", n)
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
        queue_and_pipe(MID, "1 MiB", int(args["mid"]))
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
