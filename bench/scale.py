"""The store protocol at scale: the real worker loop, W workers, SeaweedFS, every request counted.

::

    python bench/scale.py                          # 4, 48, 200 and 500 workers (~6 min)
    python bench/scale.py --quick                  # shorter idle windows, fewer tasks (~3 min)
    python bench/scale.py --workers 48 --procs 4   # one size
    python bench/scale.py --json-out /tmp/x.json   # also save every figure

Each run starts ``W`` workers (the real ``Worker`` class, ``--procs`` worker processes of
``W/procs`` threads each, so one GIL does not cap them) against SeaweedFS
(``tests/servers.py``) through the counting proxy (``bench/s3proxy.py``), on one session of a
``StarburstExecutor`` whose launcher is this pre-started pool. Then, per run:

1. **idle**: the workers sit without work for ``--settle`` seconds (their polling backs off),
   then every request of ``--idle-window`` seconds is counted: requests and LISTs per second
   per idle worker, and of the client (which has nothing outstanding).
2. **wake-up**: one ``submit(noop)`` into the backed-off pool: the time from the batch's PUT
   (end) to the winning claim's PUT (start), and submit -> result.
3. **work**: after a warm-up (one 2 s task per worker, so that every worker is working and
   the wall time measures the claims, not the idle backoff that step 2 measures),
   ``map(nap, [0.05] * (4 * tasks), chunksize=4)``: ``tasks-per-worker * W`` map
   chunks (tasks) of 4 x 0.05 s. Ideal wall = ``tasks-per-worker * 0.2`` s. Printed: requests
   per batch (a batch is one object under ``batches/``; the client puts several chunks in one)
   by role, operation, condition and status, losing claim writes (412 answers to claim PUTs),
   requests by key kind, wall against the ideal, and S3 dollars per 10,000 tasks at S3
   Standard prices (PUT/COPY/POST/LIST $0.005 per 1,000; GET and others $0.0004 per 1,000;
   DELETE free).

Figures on a shared 2-core machine are noisy (SeaweedFS, the proxy, the client and all the
workers share the cores); at 200+ workers the machine, not the protocol, limits the wall time.
The last stdout line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUCKET = "starburst-scale"
ITEM_SECONDS = 0.05
CHUNK = 4
WARM_SECONDS = 2.0  # the warm-up task: longer than the wait of a worker idle 28 s (1.4 s)
# S3 Standard request prices (us-east-1), dollars per request.
PRICE_WRITE = 0.005 / 1000  # PUT, COPY, POST, LIST
PRICE_READ = 0.0004 / 1000  # GET, HEAD and the rest
KINDS = ("batches", "claims", "results", "partial", "done", "control", "workers", "manifest")


# -- the worker processes ---------------------------------------------------------------------


def _s3_store(url: str, pool: int) -> Any:
    """An ``S3Store`` for ``url`` whose connection pool fits ``pool`` threads (boto3 clients
    are thread-safe; the default pool of 32 would make a hundred threads queue for sockets)."""
    import boto3
    from botocore.config import Config

    from starburst_executor.stores.s3 import S3Store

    parts = urlsplit(url)
    config = Config(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=pool,
        s3={"addressing_style": "path"},
    )
    client = boto3.session.Session(region_name="us-east-1").client(
        "s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], config=config
    )
    return S3Store(parts.netloc, parts.path.strip("/"), client=client)


def worker_process(store_url: str, session_id: str, ids: list[str]) -> int:
    """Run one ``Worker`` per id in threads until stdin closes (then stop them as SIGTERM
    would) or the session ends."""
    import logging

    from starburst_executor.config import secret_key
    from starburst_executor.protocol import Codec
    from starburst_executor.worker.loop import Worker, WorkerGone, WorkerOptions

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    store = _s3_store(store_url, 2 * len(ids) + 4)
    codec = Codec(secret_key())
    workers: list[Worker] = []

    def gone(code: int) -> NoReturn:
        raise WorkerGone

    def restart() -> NoReturn:
        raise WorkerGone

    options = WorkerOptions(capture_output=False)
    for wid in ids:
        workers.append(
            Worker(store, session_id, wid, codec, options, on_exit=gone, on_restart=restart)
        )

    def run(worker: Worker) -> None:
        with contextlib.suppress(WorkerGone):
            worker.run()

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    print("ready", flush=True)

    def watch_stdin() -> None:
        sys.stdin.read()
        for w in workers:
            w.request_stop()

    threading.Thread(target=watch_stdin, daemon=True).start()
    for t in threads:
        t.join(timeout=60)
    return 0


class PoolLauncher:
    """A launcher whose ``W`` workers are started up front, in ``procs`` processes.

    The executor asks it for workers as work arrives; they are all running already (the
    benchmark measures the protocol on a warm pool, not start-up), so ``start`` adds none.
    """

    def __init__(self, store_url: str, session_id: str, workers: int, procs: int, logdir: Path):
        self.workers = workers
        self._procs: list[subprocess.Popen[str]] = []
        env = {**os.environ, "AWS_SDK_UA_APP_ID": "sb-worker", "PYTHONPATH": str(REPO)}
        per = math.ceil(workers / procs)
        ids = [f"p{i // per}-w{i % per}" for i in range(workers)]
        for p in range(procs):
            mine = ids[p * per : (p + 1) * per]
            if not mine:
                break
            log = open(logdir / f"workers-{session_id}-{p}.log", "w")  # noqa: SIM115
            self._procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.scale",
                        "--worker-proc",
                        store_url,
                        session_id,
                        ",".join(mine),
                    ],
                    cwd=REPO,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )  # fmt: skip
            )
        for proc in self._procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a worker process did not start: see {logdir}")

    def start(self, count: int) -> list[str]:
        return []

    def running(self) -> int:
        return self.workers

    def poll(self) -> list[Any]:
        return []

    def stop(self, timeout: float = 10.0) -> None:
        for proc in self._procs:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=timeout + 20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- measuring ---------------------------------------------------------------------------------


def _kind(record: dict[str, Any]) -> str:
    """Which part of the session a request touched: batches, claims, done, ... ."""
    parts = urlsplit(record["target"])
    path = parts.path
    if record["op"] == "LIST":
        path = parse_qs(parts.query).get("prefix", [""])[0]
    segments = path.strip("/").split("/")
    if "sessions" in segments:
        i = segments.index("sessions")
        if len(segments) > i + 2:
            return segments[i + 2]
        return "sessions"
    return "other"


def _label(record: dict[str, Any]) -> str:
    cond = f"?{record['cond']}" if record["cond"] else ""
    return f"{record['op']}{cond} {record['status']}"


def _dollars(records: list[dict[str, Any]]) -> float:
    total = 0.0
    for r in records:
        if r["op"] == "DELETE":
            continue
        total += PRICE_WRITE if r["op"] in ("PUT", "LIST", "OTHER") else PRICE_READ
    return total


def _losing_claims(records: list[dict[str, Any]]) -> int:
    return sum(
        1
        for r in records
        if r["op"] == "PUT"
        and r["status"] == 412
        and _kind(r) == "claims"
        and r["role"] != "sb-client"
    )


def summarise_work(records: list[dict[str, Any]], batches: int, tasks: int) -> dict[str, Any]:
    per = max(batches, 1)
    by_label: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    by_role: Counter[str] = Counter()
    for r in records:
        role = "client" if r["role"] == "sb-client" else "workers"
        by_label[f"{role} {_label(r)}"] += 1
        by_kind[f"{role} {r['op']} {_kind(r)}"] += 1
        by_role[role] += 1
    dollars = _dollars(records)
    claims = [r for r in records if r["op"] == "PUT" and r["cond"] == "if-none-match"
              and _kind(r) == "claims"]  # fmt: skip
    latency = {
        str(status): sorted(r["end"] - r["start"] for r in claims if r["status"] == status)
        for status in (200, 412)
    }
    return {
        "claim_put_seconds": {
            k: {"median": v[len(v) // 2], "max": v[-1], "sum": sum(v)}
            for k, v in latency.items()
            if v
        },
        "batches": batches,
        "tasks": tasks,
        "requests": len(records),
        "requests_per_batch": len(records) / per,
        "client_per_batch": by_role["client"] / per,
        "workers_per_batch": by_role["workers"] / per,
        "losing_claims_per_batch": _losing_claims(records) / per,
        "by_op_status_per_batch": {k: v / per for k, v in sorted(by_label.items())},
        "by_kind_per_batch": {k: v / per for k, v in sorted(by_kind.items())},
        "dollars": dollars,
        "dollars_per_10k_tasks": dollars / max(tasks, 1) * 10_000,
    }


def summarise_idle(records: list[dict[str, Any]], seconds: float, workers: int) -> dict[str, Any]:
    worker = [r for r in records if r["role"] != "sb-client"]
    client = [r for r in records if r["role"] == "sb-client"]
    ops: Counter[str] = Counter(f"{_label(r)} {_kind(r)}" for r in worker)
    return {
        "seconds": seconds,
        "worker_requests_per_s": len(worker) / seconds / workers,
        "worker_lists_per_s": sum(r["op"] == "LIST" for r in worker) / seconds / workers,
        "client_requests_per_s": len(client) / seconds,
        "client_lists_per_s": sum(r["op"] == "LIST" for r in client) / seconds,
        "worker_ops_per_s": {k: v / seconds / workers for k, v in sorted(ops.items())},
    }


def wake_latency(records: list[dict[str, Any]]) -> float | None:
    """Seconds from the end of the batch's PUT to the start of the winning claim's PUT."""
    written = [r["end"] for r in records if r["op"] == "PUT" and _kind(r) == "batches"]
    claimed = [
        r["start"]
        for r in records
        if r["op"] == "PUT" and _kind(r) == "claims" and r["cond"] == "if-none-match"
        and r["status"] == 200
    ]  # fmt: skip
    if not written or not claimed:
        return None
    return min(claimed) - min(written)


def _count_batches(client: Any, prefix: str, session_id: str) -> int:
    """Batch objects of the session (requeue keys aside), listed without the proxy."""
    keys = _keys(client, f"{prefix}/sessions/{session_id}/batches/")
    return sum(1 for key in keys if "-requeue-" not in key)


def one_run(
    workers: int, args: argparse.Namespace, proxy: Any, direct: Any, logdir: Path
) -> dict[str, Any]:
    from bench.env import patched_env
    from bench.tasks import nap, noop
    from starburst_executor import StarburstExecutor
    from starburst_executor import executor as executor_module

    procs = args.procs or max(1, min(8, math.ceil(workers / 64)))
    url = f"s3://{BUCKET}/w{workers}-{time.strftime('%H%M%S')}"
    made: list[PoolLauncher] = []

    def make_launcher(manifest: Any, *, poll_max: float) -> PoolLauncher:
        launcher = PoolLauncher(url, manifest.session_id, workers, procs, logdir)
        made.append(launcher)
        return launcher

    progress(f"{workers} workers: starting {procs} worker processes ...")
    original = executor_module.make_launcher
    executor_module.make_launcher = make_launcher  # type: ignore[assignment]
    try:
        with patched_env(AWS_SDK_UA_APP_ID="sb-client"):
            ex = StarburstExecutor(store=url, max_workers=workers, idle_timeout=3600)
    finally:
        executor_module.make_launcher = original
    out: dict[str, Any] = {"workers": workers, "procs": procs}
    failed = False
    try:
        sid = ex.session_id
        prefix = urlsplit(url).path.strip("/")
        wait_for(lambda: _count(direct, f"{prefix}/sessions/{sid}/workers/") >= workers, 120)
        progress(f"{workers} workers: all running; idle for {args.settle:g} s ...")
        time.sleep(args.settle)
        proxy.start_trace()
        time.sleep(args.idle_window)
        out["idle"] = summarise_idle(proxy.take_trace(), args.idle_window, workers)
        out["idle"]["idle_for"] = args.settle
        proxy.start_trace()
        t0 = time.perf_counter()
        ex.submit(noop).result(timeout=120)
        roundtrip = time.perf_counter() - t0
        out["wake"] = {
            "claim_after_batch": wake_latency(proxy.take_trace()),
            "roundtrip": roundtrip,
        }
        progress(f"{workers} workers: woke in {roundtrip * 1000:.0f} ms; warming the pool ...")
        # One task of WARM_SECONDS per worker: every backed-off worker notices work within
        # that (its idle wait is idle_ratio of the time idle), so the map below measures the
        # claims of a working pool; the wake-up above measures the backed-off one.
        try:
            list(ex.map(nap, [WARM_SECONDS] * workers, timeout=args.timeout))
        except TimeoutError:  # a machine too small for this pool: measure the map anyway
            progress(f"{workers} workers: the warm-up timed out")
        progress(f"{workers} workers: the map ...")
        tasks = args.tasks_per_worker * workers
        items = [ITEM_SECONDS] * (tasks * CHUNK)
        before = _count_batches(direct, prefix, sid)
        proxy.start_trace()
        t0 = time.perf_counter()
        done_items = 0
        try:
            for _ in ex.map(nap, items, chunksize=CHUNK, timeout=args.timeout):
                done_items += 1
        except TimeoutError:  # figures up to the timeout: the protocol collapsed
            failed = True
        wall = time.perf_counter() - t0
        records = proxy.take_trace()
        batches = _count_batches(direct, prefix, sid) - before
        out["work"] = summarise_work(records, batches, tasks)
        ideal = math.ceil(tasks / workers) * CHUNK * ITEM_SECONDS
        out["work"].update(
            wall=wall,
            ideal=ideal,
            wall_over_ideal=wall / ideal,
            finished_tasks=done_items // CHUNK,
            timed_out=done_items < len(items),
        )
    except BaseException:
        failed = True
        raise
    finally:
        progress(f"{workers} workers: shutting down ...")
        if failed and made:  # workers may hold batches the manager would wait for
            made[0].stop()
        ex.shutdown(wait=not failed, cancel_futures=True)
    return out


def _keys(client: Any, prefix: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def _count(client: Any, prefix: str) -> int:
    return sum(1 for _ in _keys(client, prefix))


def wait_for(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout}s")
        time.sleep(0.2)


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def print_run(run: dict[str, Any]) -> None:
    w, idle, wake, work = run["workers"], run["idle"], run["wake"], run["work"]
    print(f"== {w} workers ({run['procs']} processes)")
    print(
        f"  work: {work['tasks']} tasks (map chunks of {CHUNK} x {ITEM_SECONDS:g} s) in "
        f"{work['batches']} batches; wall {work['wall']:.2f} s, ideal {work['ideal']:.2f} s: "
        f"{work['wall_over_ideal']:.2f}x"
        + (f" (TIMED OUT: {work['finished_tasks']} tasks finished)" if work["timed_out"] else "")
    )
    print(
        f"  requests per batch: {work['requests_per_batch']:.2f} (client "
        f"{work['client_per_batch']:.2f}, workers {work['workers_per_batch']:.2f}); losing claim "
        f"writes (PUT 412 on claims/) {work['losing_claims_per_batch']:.2f}"
    )
    for label, n in work["by_op_status_per_batch"].items():
        print(f"    {label:<34} {n:8.2f} per batch")
    print(
        "  by key kind: " + ", ".join(f"{k} {v:.2f}" for k, v in work["by_kind_per_batch"].items())
    )
    for status, lat in work["claim_put_seconds"].items():
        print(
            f"  claim PUTs answered {status}: median {lat['median'] * 1000:.0f} ms, max "
            f"{lat['max'] * 1000:.0f} ms, {lat['sum']:.1f} s in all"
        )
    print(
        f"  S3 cost: ${work['dollars_per_10k_tasks']:.4f} per 10,000 tasks "
        f"(${work['dollars']:.5f} for this run)"
    )
    print(
        f"  idle (after {idle['idle_for']:g} s without work, {idle['seconds']:g} s window): "
        f"{idle['worker_requests_per_s']:.3f} requests/s per worker "
        f"({idle['worker_lists_per_s']:.3f} LIST/s); client {idle['client_requests_per_s']:.3f} "
        f"requests/s ({idle['client_lists_per_s']:.3f} LIST/s)"
    )
    print("    " + ", ".join(f"{k} {v:.3f}/s" for k, v in idle["worker_ops_per_s"].items()))
    claim = wake["claim_after_batch"]
    print(
        "  wake-up of a backed-off pool: batch written -> claimed "
        + ("n/a" if claim is None else f"{claim * 1000:.0f} ms")
        + f"; submit -> result {wake['roundtrip'] * 1000:.0f} ms"
    )
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="4,48,200,500", help="comma-separated sizes")
    parser.add_argument("--quick", action="store_true", help="shorter idle windows, fewer tasks")
    parser.add_argument("--procs", type=int, default=0, help="worker processes (default W/64)")
    parser.add_argument("--tasks-per-worker", type=int, default=0, help="map chunks per worker")
    parser.add_argument("--settle", type=float, default=0.0, help="idle seconds before counting")
    parser.add_argument("--idle-window", type=float, default=0.0, help="seconds counted idle")
    parser.add_argument("--timeout", type=float, default=600.0, help="for the map")
    parser.add_argument("--json-out", default="", help="also write the figures here")
    parser.add_argument("--worker-proc", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_proc:
        url, sid, ids = args.worker_proc
        return worker_process(url, sid, ids.split(","))
    args.tasks_per_worker = args.tasks_per_worker or (5 if args.quick else 10)
    args.settle = args.settle or (20.0 if args.quick else 40.0)
    args.idle_window = args.idle_window or (8.0 if args.quick else 15.0)
    sizes = [int(s) for s in args.workers.split(",") if s.strip()]

    import boto3

    from bench.env import s3_env
    from bench.s3proxy import ProxyProcess
    from tests.servers import SeaweedServer

    logdir = Path(os.environ.get("STARBURST_SCALE_LOGS", "/tmp/starburst-scale"))
    logdir.mkdir(parents=True, exist_ok=True)
    runs = []
    progress("starting SeaweedFS ...")
    with SeaweedServer() as server:
        server.create_bucket(BUCKET)
        direct = boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
        ).client("s3", endpoint_url=server.endpoint_url)
        with (
            ProxyProcess(server.endpoint_url) as proxy,
            s3_env(proxy.endpoint_url),
        ):
            for workers in sizes:
                try:
                    run = one_run(workers, args, proxy, direct, logdir)
                except Exception as exc:  # the next size may still run
                    progress(f"{workers} workers: failed: {exc!r}")
                    runs.append({"workers": workers, "error": repr(exc)})
                    continue
                print_run(run)
                runs.append(run)
        progress("stopping SeaweedFS ...")
    meta = {"quick": args.quick, "settle": args.settle, "idle_window": args.idle_window,
            "tasks_per_worker": args.tasks_per_worker, "commit": _commit()}  # fmt: skip
    text = json.dumps({"meta": meta, "runs": runs}, sort_keys=True)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text, flush=True)
    return 0


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # A run that timed out leaves its executor's threads retrying a store that is gone now.
    os._exit(code)
