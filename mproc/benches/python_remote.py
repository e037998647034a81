"""Python side of mproc's `remote` bench: trivial-task throughput of Celery and RQ on a Redis.

    python3 mproc/benches/python_remote.py --redis URL --count N [--tools celery,rq,rq-simple]
                                           [--timeout SECS] [--venv DIR]

`--redis`: the Redis to use, a Unix socket (`/path/redis.sock`, `unix:///path/redis.sock`,
`redis+unix:///path/redis.sock`) or TCP (`host:port`, `redis://host:port[/db]`). The bench's own
redis-server, not one holding data: each tool's queue is named for this run and its keys are
left to expire, nothing is flushed.

Each tool runs its trivial task `add(x, y)` (x + y) N times, end to end (submitted one by one,
every result collected), with 2 worker processes started here as subprocesses and warmed up
before the clock starts:
- `celery`: one `celery worker --pool=prefork --concurrency=2`, tasks sent with `add.delay(i, i)`,
  results collected with `ResultSet.join_native` (the Redis backend's fast path);
- `rq`: two `rq worker` (the default worker, one forked work horse per job), jobs sent with
  `queue.enqueue(add, i, i)`, done when the finished registry holds all N;
- `rq-simple`: the same with `--worker-class rq.worker.SimpleWorker` (jobs run in the worker).

The first run makes a virtual environment (default `target/bench-venv-remote` at the repo root)
and installs the pinned versions below from PyPI into it, then re-runs itself there.

Prints one JSON line per tool:
  {"tool": "celery", "version": "5.7.0", "tasks": N, "secs": S, "tasks_per_s": R, ...}
with the versions of the client libraries and of redis-server; a tool that fails or runs past
`--timeout` prints {"tool": ..., "error": "..."} instead, and the exit status is 1. Workers run in
process groups of their own and are killed (SIGTERM, then SIGKILL) when the script ends, however
it ends.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

from bench_venv import ensure_venv

# Pinned: the figures name these versions. Change them here, and the venv is rebuilt.
REQUIREMENTS = ["celery[redis]==5.7.0", "rq==3.0.0"]
WORKERS = 2
WARMUP = 20
POLL_S = 0.005

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def die(msg):
    print(f"python_remote.py: {msg}", file=sys.stderr)
    sys.exit(2)


# --- arguments and the virtual environment -------------------------------------------------


def parse_args(argv):
    opts = {
        "redis": None,
        "count": None,
        "tools": "celery,rq,rq-simple",
        "timeout": 300.0,
        "venv": os.path.join(ROOT, "target", "bench-venv-remote"),
        "in_venv": False,
    }
    it = iter(argv)
    for a in it:
        if a == "--in-venv":
            opts["in_venv"] = True
            continue
        if a in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        if not a.startswith("--") or a[2:].replace("-", "_") not in opts:
            die(f"unknown argument {a!r} (see --help)")
        try:
            opts[a[2:].replace("-", "_")] = next(it)
        except StopIteration:
            die(f"{a} needs a value")
    if opts["redis"] is None or opts["count"] is None:
        die("--redis and --count are required (see --help)")
    opts["count"] = int(opts["count"])
    opts["timeout"] = float(opts["timeout"])
    opts["tools"] = [t for t in opts["tools"].split(",") if t]
    for t in opts["tools"]:
        if t not in ("celery", "rq", "rq-simple"):
            die(f"unknown tool {t!r}")
    return opts


# --- where Redis is, in each tool's spelling -------------------------------------------------


class Where:
    def __init__(self, spec):
        self.socket = None
        self.host, self.port, self.db = None, None, 0
        if spec.startswith("/") or spec.startswith(("unix://", "redis+unix://")):
            u = urllib.parse.urlparse(spec) if "://" in spec else None
            self.socket = u.path if u else spec
            q = urllib.parse.parse_qs(u.query) if u else {}
            self.db = int(q.get("db", ["0"])[0])
        else:
            u = urllib.parse.urlparse(spec if "://" in spec else f"redis://{spec}")
            self.host, self.port = u.hostname or "127.0.0.1", u.port or 6379
            self.db = int(u.path.strip("/") or 0)
            self.user, self.password = u.username, u.password

    def redis_py_url(self):
        if self.socket:
            return f"unix://{self.socket}?db={self.db}"
        auth = ""
        if getattr(self, "password", None):
            auth = f"{self.user or ''}:{self.password}@"
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"

    def kombu_url(self):
        if self.socket:
            return f"redis+socket://{self.socket}?virtual_host={self.db}"
        return self.redis_py_url()


# --- workers ---------------------------------------------------------------------------------

STARTED = []  # Popen of every worker, each the leader of its own process group


def start_worker(cmd, cwd, log):
    env = dict(os.environ, PYTHONPATH=cwd, PYTHONUNBUFFERED="1")
    p = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    STARTED.append(p)
    return p


def stop_workers():
    """SIGTERM every worker's group, wait up to 5 s, then SIGKILL what is left and reap."""
    for p in STARTED:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    for p in STARTED:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in STARTED:
        # Also the group: prefork children may outlive their leader.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    STARTED.clear()


def on_signal(signum, _frame):
    stop_workers()
    sys.exit(128 + signum)


def check_alive(procs, log_path):
    for p in procs:
        if p.poll() is not None:
            with open(log_path, errors="replace") as f:
                raise RuntimeError(f"a worker exited ({p.returncode}): {f.read()[-2000:]}")


# --- the tools ---------------------------------------------------------------------------------

CELERY_APP = """
import os
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BROKER"])
app.conf.update(
    task_default_queue=os.environ["BENCH_QUEUE"],
    broker_connection_retry_on_startup=True,
    result_expires=600,
    worker_hijack_root_logger=False,
)


@app.task
def add(x, y):
    return x + y
"""

RQ_TASKS = """
def add(x, y):
    return x + y
"""


def bench_celery(where, n, deadline, work):
    import celery
    from celery.result import ResultSet

    queue = f"mproc-bench-celery-{os.getpid()}"
    os.environ["BENCH_BROKER"] = where.kombu_url()
    os.environ["BENCH_QUEUE"] = queue
    with open(os.path.join(work, "bench_celery_app.py"), "w") as f:
        f.write(CELERY_APP)
    sys.path.insert(0, work)
    import bench_celery_app

    log_path = os.path.join(work, "celery.log")
    with open(log_path, "w") as log:
        worker = start_worker(
            [os.path.join(os.path.dirname(sys.executable), "celery"), "-A", "bench_celery_app",
             "worker", "--pool=prefork", f"--concurrency={WORKERS}", "--loglevel=WARNING",
             "-Q", queue, "-n", f"bench-{os.getpid()}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            work, log)
    add = bench_celery_app.add

    def collect(results):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        check_alive([worker], log_path)
        return ResultSet(results).join_native(timeout=left, interval=POLL_S)

    warm = collect([add.delay(i, i) for i in range(WARMUP)])
    assert warm == [2 * i for i in range(WARMUP)], warm
    t0 = time.perf_counter()
    results = [add.delay(i, i) for i in range(n)]
    values = collect(results)
    secs = time.perf_counter() - t0
    if values != [2 * i for i in range(n)]:
        raise RuntimeError("celery returned wrong values")
    return secs, {"version": celery.__version__, "pool": "prefork", "workers": WORKERS,
                  "collect": "ResultSet.join_native"}


def bench_rq(where, n, deadline, work, simple):
    import redis
    import rq
    from rq import Queue
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    with open(os.path.join(work, "bench_rq_tasks.py"), "w") as f:
        f.write(RQ_TASKS)
    sys.path.insert(0, work)
    import bench_rq_tasks

    conn = redis.Redis.from_url(where.redis_py_url())
    queue_name = f"mproc-bench-rq-{'simple-' if simple else ''}{os.getpid()}"
    q = Queue(queue_name, connection=conn)
    finished = FinishedJobRegistry(queue=q)
    failed = FailedJobRegistry(queue=q)
    log_path = os.path.join(work, "rq.log")
    workers = []
    with open(log_path, "w") as log:
        for i in range(WORKERS):
            cmd = [os.path.join(os.path.dirname(sys.executable), "rq"), "worker",
                   "--url", where.redis_py_url(), "--name", f"{queue_name}-{i}",
                   "--logging_level", "WARNING", queue_name]
            if simple:
                cmd[2:2] = ["--worker-class", "rq.worker.SimpleWorker"]
            workers.append(start_worker(cmd, work, log))

    def wait_done(total, base):
        while True:
            done, bad = finished.count, failed.count
            if bad:
                raise RuntimeError(f"{bad} rq jobs failed")
            if done >= total:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done - base} of {total - base} done")
            check_alive(workers, log_path)
            time.sleep(POLL_S)

    for i in range(WARMUP):
        q.enqueue(bench_rq_tasks.add, i, i)
    wait_done(WARMUP, 0)
    t0 = time.perf_counter()
    jobs = [q.enqueue(bench_rq_tasks.add, i, i) for i in range(n)]
    wait_done(WARMUP + n, WARMUP)
    secs = time.perf_counter() - t0
    for i in (0, n // 2, n - 1):
        jobs[i].refresh()
        if jobs[i].return_value() != 2 * i:
            raise RuntimeError(f"rq job {i} returned {jobs[i].return_value()!r}")
    return secs, {"version": rq.__version__, "worker": "SimpleWorker" if simple else "Worker",
                  "workers": WORKERS}


def run(opts):
    from importlib.metadata import version

    import redis

    where = Where(opts["redis"])
    server = redis.Redis.from_url(where.redis_py_url()).info("server")["redis_version"]
    common = {"redis_py": version("redis"), "kombu": version("kombu"),
              "redis_server": server, "python": sys.version.split()[0]}
    n, status = opts["count"], 0
    for tool in opts["tools"]:
        deadline = time.monotonic() + opts["timeout"]
        with tempfile.TemporaryDirectory(prefix=f"mproc-bench-{tool}-") as work:
            try:
                if tool == "celery":
                    secs, info = bench_celery(where, n, deadline, work)
                else:
                    secs, info = bench_rq(where, n, deadline, work, tool == "rq-simple")
                line = {"tool": tool, "version": info.pop("version"), "tasks": n,
                        "secs": round(secs, 4), "tasks_per_s": round(n / secs, 1),
                        **info, **common}
            except Exception as e:  # reported, and the next tool still runs
                status = 1
                msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                line = {"tool": tool, "tasks": n, "error": msg, **common}
            finally:
                stop_workers()
        print(json.dumps(line), flush=True)
    return status


def main():
    opts = parse_args(sys.argv[1:])
    if not opts["in_venv"]:
        python = ensure_venv(opts["venv"], REQUIREMENTS, "python_remote.py")
        os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:], "--in-venv"])
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sys.exit(run(opts))
    finally:
        stop_workers()


if __name__ == "__main__":
    main()
