"""Benchmarks: starburst-executor against ``ProcessPoolExecutor`` on the same machine.

    python bench/run.py [--backend local|seaweed|all] [--quick] [--latency-ms MS]

Every figure is wall-clock seconds on this machine; ``ProcessPoolExecutor(max_workers=2)``
runs the same workloads in the same run, and the previous run's figures (in
``bench/.last/results.json``, gitignored) give the trend. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# Workers are fresh interpreters: they find starburst_executor and bench.tasks the way a
# user's workers find the user's modules, through the environment the launcher passes on.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

from bench import workloads as wl
from bench.env import patched_env, s3_env
from bench.s3proxy import ProxyProcess

LAST = Path(__file__).resolve().parent / ".last" / "results.json"
MAX_WORKERS = 2
BUCKET = "starburst-bench"
CLIENT_APP, WORKER_APP = "sb-client", "sb-worker"  # User-Agent tags: who sent a request
OPS = ("GET", "PUT", "LIST", "DELETE", "HEAD")


# -- plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How many repetitions / trips each workload gets."""

    quick: bool

    def repeats(self, workload: wl.Workload, backend: str) -> int:
        if not workload.cheap:
            return 1
        if self.quick:
            return 1
        return 5 if backend in ("local", "ppe") else 3

    def trips(self, workload: wl.Workload, backend: str) -> int:
        if workload.name == "latency":
            return 20 if self.quick else 40
        if workload.name == "latency-idle":
            return 4 if self.quick else 6
        if workload.name == "wakeup":
            return 2 if self.quick else 4
        return 0

    def workloads(self, backend: str) -> list[str]:
        names = list(wl.WORKLOADS)
        if self.quick:
            names.remove("latency-idle")
        return names


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Measured:
    """One workload on one executor kind: start-up, the steady-state samples, shutdown."""

    workload: str
    backend: str
    startup_s: float = float("nan")
    shutdown_s: float = float("nan")
    samples: list[wl.Sample] = field(default_factory=list)
    tasks: int = 0  # tasks handed to the executor during the steady-state window
    items: int = 0
    requests: dict[str, Any] = field(default_factory=dict)  # window -> proxy snapshot
    error: str = ""

    @property
    def seconds(self) -> float:
        if not self.samples:
            return float("nan")
        return statistics.median(s.seconds for s in self.samples)


class Counting:
    """Proxy windows for the seaweed backends (a no-op for the others)."""

    def __init__(self, proxy: ProxyProcess | None) -> None:
        self.proxy = proxy

    @contextlib.contextmanager
    def window(self, into: dict[str, Any], name: str) -> Iterator[None]:
        if self.proxy is None:
            yield
            return
        self.proxy.reset()
        try:
            yield
        finally:
            into[name] = self.proxy.snapshot()


def measure(
    backend: str,
    workload: wl.Workload,
    factory: Callable[[], Executor],
    plan: Plan,
    counting: Counting,
    timeout: float,
) -> Measured:
    """Start an executor, warm it up, run the repetitions, shut it down; time each part."""
    m = Measured(workload.name, backend)
    repeats, trips = plan.repeats(workload, backend), plan.trips(workload, backend)
    ex: Executor | None = None
    try:
        with counting.window(m.requests, "startup"):
            ex, m.startup_s = _with_timeout(lambda: wl.start_executor(factory), timeout)
        wl.warm_up(ex, MAX_WORKERS)
        warm: Executor = ex
        with counting.window(m.requests, "steady"):
            for _ in range(repeats):
                m.samples.append(_with_timeout(lambda: workload.run(warm, trips), timeout))
                m.tasks += trips if trips else workload.tasks
                m.items += trips if trips else workload.items
        with counting.window(m.requests, "shutdown"):
            t0 = time.perf_counter()
            ex.shutdown(wait=True)
            m.shutdown_s = time.perf_counter() - t0
        ex = None
    except Exception as exc:  # noqa: BLE001 - report it and go on with the other workloads
        m.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    finally:
        if ex is not None:
            with contextlib.suppress(Exception):
                ex.shutdown(wait=False, cancel_futures=True)
    return m


def _with_timeout(fn: Callable[[], Any], timeout: float) -> Any:
    """Run ``fn``; if it takes longer than ``timeout``, dump every thread's stack to stderr
    (the run goes on: a hang shows where it hangs instead of timing out silently)."""
    import faulthandler

    faulthandler.dump_traceback_later(timeout, exit=False)
    try:
        return fn()
    finally:
        faulthandler.cancel_dump_traceback_later()


# -- backends --------------------------------------------------------------------------------


def ppe_factory() -> Executor:
    return ProcessPoolExecutor(max_workers=MAX_WORKERS)


def starburst_factory(store_url: Callable[[], str]) -> Callable[[], Executor]:
    from starburst_executor import StarburstExecutor

    def make() -> Executor:
        # The client's boto3 client is built in the constructor, the workers' later (in
        # their own processes, from the environment the launcher copies): tag each.
        os.environ["AWS_SDK_UA_APP_ID"] = CLIENT_APP
        try:
            return StarburstExecutor(max_workers=MAX_WORKERS, store=store_url())
        finally:
            os.environ["AWS_SDK_UA_APP_ID"] = WORKER_APP

    return make


def run_suite(
    backend: str,
    factory: Callable[[], Executor],
    plan: Plan,
    counting: Counting,
    only: list[str] | None,
    timeout: float,
    progress: Callable[[str], None],
) -> list[Measured]:
    results = []
    for name in only or plan.workloads(backend):
        progress(f"{backend}: {name} ...")
        t0 = time.perf_counter()
        results.append(measure(backend, wl.WORKLOADS[name], factory, plan, counting, timeout))
        progress(f"{backend}: {name} done in {time.perf_counter() - t0:.1f} s")
    return results


def measure_rss(target: str, progress: Callable[[str], None]) -> dict[str, Any] | None:
    """The client's peak RSS growth for one fat-arg repetition, in a fresh process
    (``bench/rss.py``): ``target`` is "ppe" or a store URL."""
    progress(f"fat-arg peak RSS ({target}) ...")
    try:
        done = subprocess.run(
            [sys.executable, str(REPO / "bench" / "rss.py"), target],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        print(f"fat-arg RSS measurement failed for {target}: {exc}", file=sys.stderr)
        return None


def rss_line(backend: str, sb: dict[str, Any] | None, ppe: dict[str, Any] | None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "workload": "fat-arg-rss",
        "backend": backend,
        "rss": sb,
        "ppe_rss": ppe,
    }
    if sb is None:
        line.update(seconds=None, error="the RSS measurement failed (see stderr)")
    return line


def print_rss(line: dict[str, Any]) -> None:
    sb, pp = line.get("rss") or {}, line.get("ppe_rss") or {}
    if not sb:
        print(f"{'fat-arg RSS':<13} {line['backend']:<13} FAILED", flush=True)
        return
    print(
        f"{'fat-arg RSS':<13} {line['backend']:<13} {sb['growth_mib']:>8.1f}MB "
        f"{pp.get('growth_mib', float('nan')):>8.1f}MB {'':>7} {'':>7}  client peak RSS growth "
        "for 20 submits sharing one 20 MB argument (fresh process, bench/rss.py)",
        flush=True,
    )


# -- reporting -------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.3f}s"


def ratio(a: float, b: float | None) -> str:
    if b is None or math.isnan(a) or math.isnan(b) or b <= 0:
        return "n/a"
    return f"{a / b:.2f}"


def per_task(snapshot: dict[str, Any], tasks: int) -> dict[str, Any]:
    """Requests per task by operation, and by who sent them."""
    ops: dict[tuple[str, str], int] = snapshot.get("ops", {})
    by_op = {op: 0 for op in (*OPS, "OTHER")}
    by_role: dict[str, int] = {}
    for (role, op), n in ops.items():
        by_op[op] = by_op.get(op, 0) + n
        by_role[role] = by_role.get(role, 0) + n
    total = sum(by_op.values())
    detail = snapshot.get("detail", {})
    div = max(tasks, 1)
    return {
        "tasks": tasks,
        "total": round(total / div, 3),
        "by_op": {op: round(n / div, 3) for op, n in by_op.items()},
        "by_role": {r: round(n / div, 3) for r, n in sorted(by_role.items())},
        "if_none_match": round(detail.get("PUT?if-none-match", 0) / div, 3),
        "if_match": round(detail.get("PUT?if-match", 0) / div, 3),
        "status_412": detail.get("status:412", 0),
        "errors_5xx": sum(n for k, n in detail.items() if k.startswith("status:5")),
        "raw": {f"{role}:{op}": n for (role, op), n in sorted(ops.items())},
        "bytes_up": snapshot.get("bytes_up", 0),
        "bytes_down": snapshot.get("bytes_down", 0),
    }


def describe_counts(c: dict[str, Any]) -> str:
    ops = " ".join(f"{op} {c['by_op'][op]:.2f}" for op in OPS)
    if c["by_op"].get("OTHER"):
        ops += f" OTHER {c['by_op']['OTHER']:.2f}"
    roles = ", ".join(
        f"{'client' if r == CLIENT_APP else 'workers' if r == WORKER_APP else r} {n:.2f}"
        for r, n in c["by_role"].items()
    )
    extra = f" | 412s {c['status_412']}" if c["status_412"] else ""
    extra += f" | 5xx {c['errors_5xx']}" if c["errors_5xx"] else ""
    return (
        f"{ops} = {c['total']:.2f}  (PUT if-none-match {c['if_none_match']:.2f}, "
        f"if-match {c['if_match']:.2f}; {roles}){extra}"
    )


def load_last() -> dict[str, Any]:
    try:
        data = json.loads(LAST.read_text())
        return dict(data.get("results", {}))
    except (OSError, ValueError):
        return {}


def save_last(previous: dict[str, Any], lines: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    merged = dict(previous)
    for line in lines:
        if line.get("seconds") is not None:
            merged[f"{line['workload']}/{line['backend']}"] = {
                "seconds": line["seconds"],
                "ppe_seconds": line.get("ppe_seconds"),
                "when": meta["when"],
                "commit": meta["commit"],
                "quick": meta["quick"],
            }
    LAST.parent.mkdir(parents=True, exist_ok=True)
    LAST.write_text(json.dumps({"results": merged}, indent=1, sort_keys=True) + "\n")


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_lines(
    backend: str,
    measured: list[Measured],
    ppe: dict[str, Measured],
    plan: Plan,
    previous: dict[str, Any],
) -> list[dict[str, Any]]:
    """One record per output line: the start-up and shutdown lines, then each workload."""
    lines: list[dict[str, Any]] = []

    def prev(name: str) -> float | None:
        entry = previous.get(f"{name}/{backend}")
        return None if entry is None else entry.get("seconds")

    ok = [m for m in measured if not m.error]
    for what, attr, note in (
        ("startup", "startup_s", "construct + first no-op result (cold workers)"),
        ("shutdown", "shutdown_s", "shutdown(wait=True) after the workload"),
    ):
        values = [getattr(m, attr) for m in ok if getattr(m, attr) == getattr(m, attr)]
        pvalues = [getattr(p, attr) for p in ppe.values() if not p.error]
        if not values:
            continue
        sb, pp = statistics.median(values), (statistics.median(pvalues) if pvalues else None)
        line: dict[str, Any] = {
            "workload": what,
            "backend": backend,
            "seconds": round(sb, 5),
            "ppe_seconds": None if pp is None else round(pp, 5),
            "includes": f"{note}; median of {len(values)} executors",
        }
        if what == "startup" and ok and ok[0].requests:
            line["requests"] = per_task(_sum_windows(ok, "startup"), len(ok))
            line["requests_unit"] = "per executor start"
        lines.append(line)
    for m in measured:
        p = ppe.get(m.workload)
        line = {"workload": m.workload, "backend": backend}
        if m.error:
            line.update(seconds=None, error=m.error)
            lines.append(line)
            continue
        pp = p.seconds if p is not None and not p.error else None
        line.update(
            seconds=round(m.seconds, 5),
            ppe_seconds=None if pp is None else round(pp, 5),
            repeats=len(m.samples),
            includes=(
                "steady state on warm workers, start-up excluded; "
                + (
                    f"median trip of {m.samples[0].extra.get('trips')}"
                    if m.workload.startswith("latency") or m.workload == "wakeup"
                    else f"median of {len(m.samples)}"
                )
            ),
            samples=[round(s.seconds, 5) for s in m.samples],
            extra=m.samples[-1].extra if m.samples else {},
        )
        if p is not None and p.samples and "trips" in p.samples[-1].extra:
            line["ppe_extra"] = p.samples[-1].extra
        if m.requests.get("steady") and m.workload == "wakeup":
            # What the client asks while it waits: its requests per second of the window.
            client = sum(
                n
                for (role, _), n in m.requests["steady"].get("ops", {}).items()
                if role == CLIENT_APP
            )
            window = sum(wl.WAKE_NAP + s.seconds for s in m.samples) * m.samples[0].extra["trips"]
            line["client_requests_per_s"] = round(client / max(window, 1e-9), 3)
        if m.requests.get("steady"):
            line["requests"] = per_task(m.requests["steady"], m.tasks)
            line["requests_unit"] = (
                f"per map chunk ({wl.MAP_CHUNK} items)"
                if m.workload == "map"
                else "per round trip"
                if m.workload.startswith("latency") or m.workload == "wakeup"
                else "per task"
            )
            line["requests_shutdown"] = per_task(m.requests.get("shutdown", {}), 1)["raw"]
        lines.append(line)
    for line in lines:
        line["vs_ppe"] = None
        if line.get("seconds") is not None and line.get("ppe_seconds"):
            line["vs_ppe"] = round(line["seconds"] / line["ppe_seconds"], 3)
        last = prev(line["workload"])
        line["vs_last"] = (
            None
            if last is None or line.get("seconds") is None
            else round(line["seconds"] / last, 3)
        )
    return lines


def _sum_windows(measured: list[Measured], window: str) -> dict[str, Any]:
    ops: dict[tuple[str, str], int] = {}
    detail: dict[str, int] = {}
    up = down = 0
    for m in measured:
        snap = m.requests.get(window, {})
        for k, n in snap.get("ops", {}).items():
            ops[k] = ops.get(k, 0) + n
        for k, n in snap.get("detail", {}).items():
            detail[k] = detail.get(k, 0) + n
        up += snap.get("bytes_up", 0)
        down += snap.get("bytes_down", 0)
    return {"ops": ops, "detail": detail, "bytes_up": up, "bytes_down": down}


HEADER = f"{'workload':<13} {'backend':<13} {'starburst':>10} {'ppe':>10} {'sb/ppe':>7} {'vs-last':>7}  included"


def print_line(line: dict[str, Any]) -> None:
    name, backend = line["workload"], line["backend"]
    if line.get("error"):
        print(f"{name:<13} {backend:<13} FAILED: {line['error']}", flush=True)
        return
    sb, pp = line["seconds"], line.get("ppe_seconds")
    last = line.get("vs_last")
    text = (
        f"{name:<13} {backend:<13} {fmt_s(sb):>10} {fmt_s(pp if pp is not None else float('nan')):>10} "
        f"{ratio(sb, pp):>7} {('n/a' if last is None else f'{last:.2f}'):>7}  {line.get('includes', '')}"
    )
    extra = line.get("extra") or {}
    if "p90_s" in extra and name != "wakeup":
        pe = line.get("ppe_extra") or {}
        text += f"; p90 {fmt_s(extra['p90_s'])} (ppe p90 {fmt_s(pe.get('p90_s', float('nan')))})"
    if name == "sleepy":
        text += f"; ideal 5.000s; efficiency {5.0 / sb:.3f}"
        if pp:
            text += f" (ppe {5.0 / pp:.3f})"
    if name in ("tiny", "map") and sb:
        n = 2000 if name == "tiny" else 20_000
        text += f"; {n / sb:,.0f} {'tasks' if name == 'tiny' else 'items'}/s"
    if name == "wakeup" and line.get("client_requests_per_s") is not None:
        text += f"; client {line['client_requests_per_s']:.2f} requests/s while waiting"
    print(text, flush=True)
    if line.get("requests"):
        print(
            f"{'':<13} {'':<13} S3 requests {line['requests_unit']}: "
            f"{describe_counts(line['requests'])}",
            flush=True,
        )


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backend",
        choices=("local", "seaweed", "all"),
        default="all",
        help="local: a directory store; seaweed: SeaweedFS S3 through a counting "
        "proxy (also with --latency-ms added per request); all: both (default)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one repetition each, fewer latency trips, no latency-idle",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=None,
        help="also run the seaweed backend with this much delay added to every S3 "
        "request (default: 30 for a full run, none with --quick; 0: none)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated workloads to run (default: all): " + ", ".join(wl.WORKLOADS),
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="dump thread stacks if one step takes longer than this (s)",
    )
    parser.add_argument(
        "--no-save", action="store_true", help="do not record this run in bench/.last/results.json"
    )
    args = parser.parse_args(argv)
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in only if w not in wl.WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(wl.WORKLOADS)}")
    latency_ms = args.latency_ms if args.latency_ms is not None else (0 if args.quick else 30)
    plan = Plan(quick=args.quick)
    started = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    backends = ["local", "seaweed"] if args.backend == "all" else [args.backend]
    previous = load_last()
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": git_commit(),
        "quick": args.quick,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "max_workers": MAX_WORKERS,
        "latency_ms": latency_ms if "seaweed" in backends else None,
    }
    home = Path(tempfile.mkdtemp(prefix="starburst-bench-"))
    all_lines: list[dict[str, Any]] = []
    with patched_env(STARBURST_HOME=str(home), STARBURST_STORE=None, STARBURST_SECRET_KEY=None):
        try:
            progress("ProcessPoolExecutor(max_workers=2) ...")
            ppe = {
                m.workload: m
                for m in run_suite(
                    "ppe", ppe_factory, plan, Counting(None), only, args.timeout, progress
                )
            }
            print(HEADER, flush=True)
            want_rss = not only or "fat-arg" in only
            ppe_rss = measure_rss("ppe", progress) if want_rss else None
            if "local" in backends:
                store = home / "store"
                lines = build_lines(
                    "local",
                    run_suite(
                        "local",
                        starburst_factory(lambda: store.as_uri()),
                        plan,
                        Counting(None),
                        only,
                        args.timeout,
                        progress,
                    ),
                    ppe,
                    plan,
                    previous,
                )
                for line in lines:
                    print_line(line)
                all_lines += lines
                if want_rss:
                    rss = rss_line(
                        "local", measure_rss((home / "store-rss").as_uri(), progress), ppe_rss
                    )
                    print_rss(rss)
                    all_lines.append(rss)
            if "seaweed" in backends:
                from tests.servers import WeedNotFoundError

                try:
                    all_lines += run_seaweed(
                        plan, ppe, previous, only, latency_ms, args.timeout, progress, ppe_rss
                    )
                except WeedNotFoundError as exc:
                    print(f"seaweed backend skipped: {exc}", flush=True)
                    all_lines.append(
                        {"workload": "*", "backend": "seaweed", "seconds": None, "error": str(exc)}
                    )
        finally:
            import shutil

            shutil.rmtree(home, ignore_errors=True)
    meta["elapsed_s"] = round(time.perf_counter() - started, 1)
    if not args.no_save:
        save_last(previous, all_lines, meta)
    print(json.dumps({"meta": meta, "lines": all_lines}, sort_keys=True), flush=True)
    return 1 if any(line.get("error") for line in all_lines) else 0


def run_seaweed(
    plan: Plan,
    ppe: dict[str, Measured],
    previous: dict[str, Any],
    only: list[str],
    latency_ms: float,
    timeout: float,
    progress: Callable[[str], None],
    ppe_rss: dict[str, Any] | None,
) -> list[dict[str, Any]]:
    from tests.servers import SeaweedServer

    out: list[dict[str, Any]] = []
    progress("starting SeaweedFS ...")
    with SeaweedServer() as server:
        server.create_bucket(BUCKET)
        with (
            ProxyProcess(server.endpoint_url) as proxy,
            s3_env(proxy.endpoint_url, AWS_SDK_UA_APP_ID=None),
        ):
            passes = [("seaweed", 0.0)]
            if latency_ms:
                passes.append((f"seaweed+{latency_ms:g}ms", latency_ms / 1000))
            for name, delay in passes:
                proxy.delay = delay
                url = f"s3://{BUCKET}/{name.replace('+', '-')}-{time.strftime('%H%M%S')}"
                lines = build_lines(
                    name,
                    run_suite(
                        name,
                        starburst_factory(lambda url=url: url),  # type: ignore[misc]
                        plan,
                        Counting(proxy),
                        only,
                        timeout,
                        progress,
                    ),
                    ppe,
                    plan,
                    previous,
                )
                for line in lines:
                    print_line(line)
                out += lines
                if not only or "fat-arg" in only:
                    rss_url = (
                        f"s3://{BUCKET}/rss-{name.replace('+', '-')}-{time.strftime('%H%M%S')}"
                    )
                    rss = rss_line(name, measure_rss(rss_url, progress), ppe_rss)
                    print_rss(rss)
                    out.append(rss)
        progress("stopping SeaweedFS ...")
    return out


if __name__ == "__main__":
    sys.exit(main())
