"""Burst a Monte Carlo estimate of pi onto AWS Fargate Spot, then collect it.

Run once per account and region (creates the bucket, cluster, roles ...; idempotent):

    starburst setup --region us-east-1
    starburst image build            # the worker image, from this environment
    starburst doctor                 # every check green (or the fix for each)

Then:

    python examples/aws_quickstart.py --workers 10

It shows the cost estimate before launching (the library logs it; this script shows the
library's INFO records on stderr), runs 200 tasks of 1,000,000 draws on ECS workers, prints
the estimate of pi and the cost measured from the workers' runtime, and stops every worker.
``--detach`` starts a detached session instead and prints the commands to check on it and
collect it later (``starburst status SID``, ``starburst collect SID``).
"""

from __future__ import annotations

import argparse
import logging
import random
import time

from starburst_executor import AwsBackend, DetachedExecutor, StarburstExecutor


def draws_inside(seed: int, draws: int = 1_000_000) -> int:
    """How many of ``draws`` random points of the unit square fall in the quarter circle."""
    rng = random.Random(seed)
    return sum(1 for _ in range(draws) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--cpu", type=float, default=1.0)
    parser.add_argument("--memory", default="2GB")
    parser.add_argument(
        "--max-hourly-cost",
        type=float,
        default=5.0,
        help="refuse to launch above this estimate (USD per hour)",
    )
    parser.add_argument("--detach", action="store_true", help="start a detached session")
    args = parser.parse_args(argv)
    # The library logs what it decides (the cost estimate, quota waves, the measured cost) and
    # configures no handler: show its INFO records, as an application chooses to.
    logging.basicConfig(format="%(message)s")
    logging.getLogger("starburst_executor").setLevel(logging.INFO)
    backend = AwsBackend(
        cpu=args.cpu, memory=args.memory, spot=True, max_hourly_cost=args.max_hourly_cost
    )

    if args.detach:
        ex = DetachedExecutor(backend=backend, max_workers=args.workers, name="pi")
        for seed in range(args.tasks):
            ex.submit(draws_inside, seed)
        print(f"session {ex.session_id} started; check on it with:")
        print(f"  starburst status {ex.session_id}")
        print(f"  starburst collect {ex.session_id} --wait -o pi.pkl")
        ex.detach()
        return 0

    start = time.monotonic()
    # Logs the cost estimate before launching (CostLimitError above max_hourly_cost).
    with StarburstExecutor(backend=backend, max_workers=args.workers) as ex:
        inside = sum(ex.map(draws_inside, range(args.tasks), chunksize=5))
    # (leaving the block stopped every worker and logged the measured cost)
    total = args.tasks * 1_000_000
    print(
        f"pi ~= {4 * inside / total:.6f} from {total:,} draws in "
        f"{time.monotonic() - start:.1f} s on up to {args.workers} workers"
    )
    report = ex.cost()  # the same figures as data
    if report is not None:
        print(f"cost: ${report['cost']:.4f} for {report['worker_seconds'] / 3600:.3f} worker-hours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
