"""Entry point of every worker: ``python -m starburst_executor.worker --store URL --session SID``.

The local launcher runs exactly this, and so does the container image. Settings come from
arguments or ``STARBURST_*`` environment variables (never payloads: ECS limits container
overrides to 8,192 characters).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
import sys
import urllib.request

from starburst_executor.config import secret_key
from starburst_executor.errors import StarburstError
from starburst_executor.protocol import Codec, ExitCode
from starburst_executor.stores import open_store
from starburst_executor.worker.loop import Worker, WorkerOptions


def _ecs_worker_id() -> str | None:
    """``ecs-{task id}`` when running as an ECS task (from the task metadata endpoint v4), so
    the launcher, which knows task ARNs, can name the worker of a stopped task."""
    uri = os.environ.get("ECS_CONTAINER_METADATA_URI_V4")
    if not uri:
        return None
    try:
        with urllib.request.urlopen(f"{uri}/task", timeout=5) as response:
            arn = json.load(response)["TaskARN"]
    except (OSError, ValueError, KeyError) as exc:
        logging.getLogger("starburst_executor.worker").warning(
            "cannot read the ECS task metadata (%s); using a host-based worker id", exc
        )
        return None
    return f"ecs-{str(arn).rsplit('/', 1)[-1]}"


def _configure_logging(level: str) -> None:
    """The worker's own loggers (``starburst_executor.*``) at ``level``, every other logger at
    WARNING: botocore, boto3 and urllib3 log each credential lookup and connection at INFO,
    which would bury the worker's lines in every CloudWatch stream."""
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s worker %(process)d %(name)s: %(message)s",
    )
    logging.getLogger("starburst_executor").setLevel(level.upper())


def main(argv: list[str] | None = None, prog: str = "python -m starburst_executor.worker") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a starburst worker for one session until the session ends.",
        epilog="example:\n  starburst worker --session SID            (store from the session "
        "index)\n  starburst worker --store s3://bkt/runs --session SID --worker-id mine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("STARBURST_STORE"),
        help="store URL (file:///path or s3://bucket/prefix); env STARBURST_STORE",
    )
    parser.add_argument(
        "--session",
        default=os.environ.get("STARBURST_SESSION"),
        help="session id; env STARBURST_SESSION",
    )
    parser.add_argument(
        "--worker-id",
        default=os.environ.get("STARBURST_WORKER_ID"),
        help="worker id (default: host-pid-random); env STARBURST_WORKER_ID",
    )
    parser.add_argument(
        "--poll-max",
        type=float,
        default=float(os.environ.get("STARBURST_POLL_MAX", "0.5")),
        help="longest wait between looks for work, seconds",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("STARBURST_LOG_LEVEL", "INFO"),
        help="level of the worker's own log lines (other libraries log at WARNING); "
        "env STARBURST_LOG_LEVEL",
    )
    args = parser.parse_args(argv)
    if not args.store or not args.session:
        parser.error("--store and --session are required (or STARBURST_STORE / STARBURST_SESSION)")
    _configure_logging(args.log_level)
    worker_id = (
        args.worker_id
        or _ecs_worker_id()
        or (f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}")
    )
    try:
        worker = Worker(
            open_store(args.store),
            args.session,
            worker_id,
            Codec(secret_key()),
            WorkerOptions(poll_max=args.poll_max, control_every=max(2.0, 2 * args.poll_max)),
        )
    except (StarburstError, ValueError) as exc:
        logging.getLogger("starburst_executor.worker").error("cannot start: %s", exc)
        return ExitCode.CANNOT_START
    worker.handle_sigterm()
    # The first line of every worker's log: the container reached the worker.
    logging.getLogger("starburst_executor.worker").info(
        "worker %s of session %s starts (store %s, Python %d.%d)",
        worker_id,
        args.session,
        args.store,
        *sys.version_info[:2],
    )
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
