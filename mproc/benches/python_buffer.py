"""Python's side of benches/buffer.rs: a numpy array handed to pool tasks, timed here.

Usage: python_buffer.py [--venv DIR] MIB CALLS

The first run makes a virtual environment (default `target/bench-venv-numpy` at the repo root)
with the pinned numpy from PyPI, then runs itself inside it. Prints "name=value" lines with
the unit in the name: `pool.apply` round trips of a task that returns the length of its
argument, for 100 bytes and for a numpy array of MIB MiB (pickled into every task, as
Python does), and the same array through `multiprocessing.shared_memory` (attached by name in
the task: Python's zero-copy way), medians in microseconds.
"""
import os
import subprocess
import sys
import time

from bench_venv import ensure_venv

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Pinned: the figures name this version. Change it here, and the venv is rebuilt.
REQUIREMENTS = ["numpy==2.3.5"]


def length(a):
    return len(a)


def length_shared(name, n):
    from multiprocessing import shared_memory

    import numpy as np

    shm = shared_memory.SharedMemory(name=name)
    # Attaching registers the name with this worker's resource tracker, which would unlink it
    # when the worker exits (cpython gh-82300): the usual workaround.
    from multiprocessing import resource_tracker

    resource_tracker.unregister(shm._name, "shared_memory")
    a = np.ndarray((n,), dtype=np.uint8, buffer=shm.buf)
    k = len(a)
    del a
    shm.close()
    return k


def median_us(pool, f, args, calls):
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        pool.apply(f, args)
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return times[len(times) // 2]


def measure(mib, calls):
    import multiprocessing as mp
    from multiprocessing import shared_memory

    import numpy as np

    big = np.full(mib << 20, 7, dtype=np.uint8)
    with mp.Pool(2) as pool:
        for _ in range(3):
            pool.apply(length, (b"x" * 100,))
        print(f"numpy {np.__version__}")
        print(f"pool.apply 100 B (us)={median_us(pool, length, (b'x' * 100,), calls * 10):.1f}")
        print(f"pool.apply numpy {mib} MiB (us)={median_us(pool, length, (big,), calls):.1f}")
        shm = shared_memory.SharedMemory(create=True, size=big.nbytes)
        try:
            np.ndarray(big.shape, dtype=big.dtype, buffer=shm.buf)[:] = big
            args = (shm.name, big.size)
            print(
                f"pool.apply SharedMemory {mib} MiB by name (us)="
                f"{median_us(pool, length_shared, args, calls * 10):.1f}"
            )
        finally:
            shm.close()
            shm.unlink()


def main():
    args = sys.argv[1:]
    venv = os.path.join(ROOT, "target", "bench-venv-numpy")
    if args and args[0] == "--venv":
        venv, args = args[1], args[2:]
    if args and args[0] == "--in-venv":
        measure(int(args[1]), int(args[2]))
        return
    python = ensure_venv(venv, REQUIREMENTS, "python_buffer.py")
    out = subprocess.run([python, os.path.abspath(__file__), "--in-venv", *args], timeout=1800)
    sys.exit(out.returncode)


if __name__ == "__main__":
    main()
