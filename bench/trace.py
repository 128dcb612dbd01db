"""Print the S3 request timeline of a few starburst operations (a diagnosis aid).

    python bench/trace.py [--latency-ms MS] [--what roundtrip|idle|startup|fat-arg]

Starts SeaweedFS behind the counting proxy, runs the chosen operation on a warm executor
with tracing on, and prints each request: its start and end relative to the operation's
start, who sent it (client / worker), the operation, the key (session prefix stripped) and
the status. The slowest gaps between requests are where the time goes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench.run as br
from bench import tasks
from bench import workloads as wl
from bench.env import s3_env
from bench.s3proxy import ProxyProcess


def _rel(key: str) -> str:
    """A key without its bucket, prefix and session: ``batches/...``, ``claims/...``."""
    return key.split("/sessions/", 1)[-1].split("/", 1)[-1] if "/sessions/" in key else key


def show(trace: list[dict[str, Any]], t0: float, t_end: float) -> None:
    print(f"{'start':>8} {'end':>8}  {'who':<7} {'op':<6} {'status':>6}  key")
    for r in trace:
        who = {br.CLIENT_APP: "client", br.WORKER_APP: "worker"}.get(r["role"], r["role"])
        parts = urlsplit(r["target"])
        path = _rel(unquote(parts.path))
        query = parse_qs(parts.query)
        if "prefix" in query:
            path = f"LIST {_rel(query['prefix'][0])}*"
            if "start-after" in query:
                path += f" after {_rel(query['start-after'][0]).rsplit('/', 1)[-1]}"
        op = r["op"] + ("*" if r["cond"] else "")
        print(
            f"{(r['start'] - t0) * 1000:7.1f}ms {(r['end'] - t0) * 1000:7.1f}ms  {who:<7} "
            f"{op:<6} {r['status']:>6}  {path}"
        )
    print(
        f"operation finished at {(t_end - t0) * 1000:.1f}ms; {len(trace)} requests "
        "(PUT* = conditional)"
    )
    sizes = [
        int(r["target"].split("?")[0].rsplit("-", 1)[-1])
        for r in trace
        if r["op"] == "PUT" and "/batches/" in r["target"] and r["role"] == br.CLIENT_APP
    ]
    if sizes:
        print(f"{len(sizes)} batches uploaded; tasks per batch: {sizes}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--what",
        choices=("roundtrip", "idle", "startup", *wl.WORKLOADS),
        default="roundtrip",
        help="roundtrip: one no-op on a warm executor; idle: the same after "
        f"{wl.IDLE_GAP} s idle; startup: construct + first result; or a workload",
    )
    args = parser.parse_args()
    import tempfile

    from tests.servers import SeaweedServer

    home = tempfile.mkdtemp(prefix="starburst-trace-")
    with SeaweedServer() as server:
        server.create_bucket(br.BUCKET)
        with (
            ProxyProcess(server.endpoint_url, delay=args.latency_ms / 1000) as proxy,
            s3_env(proxy.endpoint_url, STARBURST_HOME=home, STARBURST_STORE=None),
        ):
            make = br.starburst_factory(lambda: f"s3://{br.BUCKET}/trace-{os.getpid()}")
            if args.what == "startup":
                proxy.start_trace()
                t0 = time.time()
                ex, _ = wl.start_executor(make)
                t_end = time.time()
                show(proxy.take_trace(), t0, t_end)
                ex.shutdown()
                return 0
            ex, _ = wl.start_executor(make)
            try:
                wl.warm_up(ex)
                for _ in range(5):
                    ex.submit(tasks.noop).result()
                proxy.start_trace()  # for "idle", the idle gap's polling shows at negative times
                if args.what == "idle":
                    time.sleep(wl.IDLE_GAP)
                t0 = time.time()
                if args.what in wl.WORKLOADS:
                    wl.WORKLOADS[args.what].run(ex, 5)
                else:
                    ex.submit(tasks.noop).result()
                t_end = time.time()
                time.sleep(0.05)
                show(proxy.take_trace(), t0, t_end)
            finally:
                ex.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
