#!/usr/bin/env python3
"""Times twenty-starts-in-a-row (the process-start bench's `mproc/forkserver-x20` row) phase
by phase, from a scheduler trace (BENCHMARKS.md, "Twenty starts in a row, phase by phase").

Record the trace (root or perf_event_paranoid <= -1), then read it:

    B=$(ls target/release/deps/process_start-* | grep -v '\\.d$' | head -1)
    perf record -q -m 32M -o /tmp/x20.data -a \\
        -e sched:sched_switch -e sched:sched_wakeup -e sched:sched_process_exit \\
        -e raw_syscalls:sys_enter \\
        --filter 'id==13||id==46||id==47||id==61||id==157||id==202||id==231' \\
        -- $B --bench --no-python forkserver-x20 --iters 6000
    perf script -i /tmp/x20.data -F comm,pid,cpu,time,event,trace > /tmp/x20.txt
    python3 scripts/start_phases.py /tmp/x20.txt process_start

The second argument is the start of the starting program's name as the trace shows it (at
most its first 15 characters). A cycle runs from one child's exit to the next's; its phases:
- teardown: the child's exit begins (`sched_process_exit`, before its memory is freed) until it
  is a zombie (switched out in state Z);
- zombie -> report: until the fork server, woken by SIGCHLD, reaps it (`wait4`) and sends its
  status to the client (`sendmsg`);
- report -> client runs: until the client is switched in;
- client -> wake: until the client's `futex` call that wakes the next spare (its start);
- spare -> exit: until that child's exit begins.
A child's own path, from the client's wake-up to its exit, is split at its first `prctl` (the
parent-death signal cleared), its last `rt_sigaction` (the caught signals' actions put back),
its `recvmsg` (the start message), its `sendmsg` (the result) and its `exit_group`.
Cycles where the client asked the server to fork (no spare lent) are left out.
"""

import bisect
import re
import statistics
import sys

NR = {"rt_sigaction": 13, "sendmsg": 46, "recvmsg": 47, "wait4": 61, "prctl": 157,
      "futex": 202, "exit_group": 231}
LINE = re.compile(r"\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def read(path):
    events = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                comm, pid, _cpu, t, event, rest = m.groups()
                events.append((float(t) * 1e6, comm, int(pid), event.split(":")[-1], rest))
    return events


def syscall(e, name):
    return e[3] == "sys_enter" and e[4].startswith(f"NR {NR[name]} ")


def report(title, columns, rows):
    print(f"{title}: {len(rows)}")
    for i, name in enumerate(columns):
        values = [r[i] for r in rows]
        print(f"  {name:28s} p50 {statistics.median(values):7.1f} µs"
              f"   mean {statistics.mean(values):7.1f} µs")


def main():
    events = read(sys.argv[1])
    client_comm = sys.argv[2][:15]
    times = [e[0] for e in events]
    clients = {e[2] for e in events if e[1].startswith(client_comm)}
    waits = {}
    for e in events:
        if syscall(e, "wait4"):
            waits[e[2]] = waits.get(e[2], 0) + 1
    server = max(waits, key=waits.get)
    exits = [(e[0], e[2]) for e in events
             if e[3] == "sched_process_exit" and e[2] not in clients and e[2] != server]

    def after(t, pred, within=5000.0):
        for i in range(bisect.bisect_right(times, t), len(events)):
            e = events[i]
            if e[0] > t + within:
                return None
            if pred(e):
                return e[0]
        return None

    def zombie(t, pid):
        return after(t, lambda e: e[3] == "sched_switch" and f"prev_pid={pid} " in e[4]
                     and "prev_state=Z" in e[4])

    cycles = []
    for (t1, c1), (t2, c2) in zip(exits, exits[1:]):
        tz = zombie(t1, c1)
        trep = tz and after(tz, lambda e: e[2] == server and syscall(e, "sendmsg"))
        tcr = trep and after(trep, lambda e: e[3] == "sched_switch"
                             and any(f"next_pid={c} " in e[4] for c in clients))
        twake = trep and after(trep, lambda e: e[2] in clients and e[3] == "sched_wakeup"
                               and f"pid={c2} " in e[4])
        if None in (tz, trep, tcr, twake) or not (tz < trep < tcr <= twake < t2):
            continue
        cycles.append((tz - t1, trep - tz, tcr - trep, twake - tcr, t2 - twake, t2 - t1))
    report("cycles (one start+join each)",
           ["teardown", "zombie -> report", "report -> client runs", "client -> wake spare",
            "spare -> exit", "whole cycle"], cycles)

    by_pid, woken = {}, {}
    for e in events:
        by_pid.setdefault(e[2], []).append(e)
        if e[2] in clients and e[3] == "sched_wakeup":
            m = re.search(r" pid=(\d+) ", e[4])
            if m:
                woken.setdefault(int(m.group(1)), []).append(e[0])
    children = []
    for tx, pid in exits:
        wakes = [t for t in woken.get(pid, []) if t < tx]
        if not wakes:
            continue
        tw = wakes[-1]
        mine = [e for e in by_pid[pid] if tw <= e[0] <= tx]

        def first(name):
            return next((e[0] for e in mine if syscall(e, name)), None)

        restored = [e[0] for e in mine if syscall(e, "rt_sigaction")]
        truns = after(tw, lambda e: e[3] == "sched_switch" and f"next_pid={pid} " in e[4])
        tp, trecv, tsend, teg = first("prctl"), first("recvmsg"), first("sendmsg"), first("exit_group")
        tz = zombie(tx, pid)
        marks = (truns, tp, restored[-1] if restored else None, trecv, tsend, teg, tx, tz)
        if None in marks or list(marks) != sorted(marks):
            continue
        steps = [tw, *marks]
        children.append(tuple(b - a for a, b in zip(steps, steps[1:])) + (tz - tw,))
    report("children started from a lent spare",
           ["woken -> runs", "runs -> prctl", "prctl -> actions back", "-> start message read",
            "read -> result sent", "sent -> exit_group", "exit_group -> exit begins",
            "exit begins -> zombie", "woken -> zombie"], children)


if __name__ == "__main__":
    main()
