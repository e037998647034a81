"""Python side of mproc's `process_start` bench (benches/process_start.rs runs this file).

Times `ctx.Process(target=nothing).start(); p.join()` for the start methods named on the
command line, each as `METHOD=SAMPLES` (fork, forkserver, spawn), after `--warmup N` untimed
starts of each (the first forkserver start also launches the fork server). Samples are taken
round-robin across the methods, spread in proportion to their counts, so machine noise hits
every method alike.

Prints one line `version X.Y.Z`, then one line per method:
`samples METHOD US US ...`, each US a start+join time in microseconds.

Run alone:  python3 mproc/benches/python_process_start.py --warmup 3 fork=100 spawn=20
"""

import multiprocessing
import sys
import time


def nothing():
    pass


def start_join(ctx):
    t0 = time.perf_counter_ns()
    p = ctx.Process(target=nothing)
    p.start()
    p.join()
    elapsed = time.perf_counter_ns() - t0
    if p.exitcode != 0:
        raise SystemExit(f"child exited with {p.exitcode}")
    return elapsed / 1000.0


def main():
    args = sys.argv[1:]
    warmup = 3
    plan = {}
    i = 0
    while i < len(args):
        if args[i] == "--warmup":
            warmup = int(args[i + 1])
            i += 2
            continue
        method, count = args[i].split("=")
        plan[method] = int(count)
        i += 1
    contexts = {m: multiprocessing.get_context(m) for m in plan}
    for m, ctx in contexts.items():
        for _ in range(warmup):
            start_join(ctx)
    samples = {m: [] for m in plan}
    rounds = max(plan.values(), default=0)
    for r in range(rounds):
        for m, n in plan.items():
            # Spread method m's n samples evenly over the rounds.
            if (r + 1) * n // rounds != r * n // rounds:
                samples[m].append(start_join(contexts[m]))
    print("version", sys.version.split()[0])
    for m, xs in samples.items():
        print("samples", m, *(f"{x:.3f}" for x in xs))


if __name__ == "__main__":
    main()
