"""Python's Manager().dict(): get and set of one key among 1000, and items() of a dict of 3,
timed here.

Prints `get <ns>`, `set <ns>` and `items <ns>`: the median of 7 rounds of N operations, in
nanoseconds per operation. Run by benches/manager.rs (N from argv[1]).
"""
import multiprocessing as mp
import statistics
import sys
import time


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with mp.Manager() as m:
        d = m.dict()
        for i in range(1000):
            d[f"key-{i}"] = i
        small = m.dict()
        for i in range(3):
            small[f"key-{i}"] = i
        ops = (
            ("get", lambda: d["key-500"]),
            ("set", lambda: d.__setitem__("key-500", 7)),
            ("items", lambda: small.items()),
        )
        for name, op in ops:
            for _ in range(n // 10):
                op()
            rounds = []
            for _ in range(7):
                t = time.perf_counter_ns()
                for _ in range(n):
                    op()
                rounds.append((time.perf_counter_ns() - t) / n)
            print(name, statistics.median(rounds), flush=True)


if __name__ == "__main__":
    main()
