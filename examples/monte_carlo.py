"""Monte Carlo value-at-risk of a small portfolio, fanned out with ``StarburstExecutor.map``.

What it shows
-------------
``StarburstExecutor`` is a drop-in ``concurrent.futures.ProcessPoolExecutor``: the only line
that differs from a stdlib version of this script is the one that creates the executor. Each
simulation below is a plain top-level function of one seed; ``ex.map(simulate, seeds,
chunksize=...)`` ships the seeds in chunks (one chunk = one task in the store) to worker
processes and yields the results in seed order; ``progress=True`` draws a tqdm bar of the
simulations done on stderr while they run (nothing when stderr is not a terminal, e.g. piped).

The model: a buy-and-hold portfolio of four assets worth $1,000,000 today. Each asset follows
a geometric Brownian motion over one year of 252 trading days; the daily shocks are
correlated through the Cholesky factor of a 4x4 correlation matrix, computed by hand below
(no numpy: only ``random``, ``math`` and ``statistics``). Every simulation seeds its own
``random.Random``, so the results depend only on the seeds and not on which worker ran them
or in which order: ``--verify`` recomputes the first 100 in this process and compares.

Run it
------
From the repository root, after ``python -m pip install .`` (or with ``PYTHONPATH=.``, so that
the script and its workers import the package from the working tree)::

    python examples/monte_carlo.py                          # 10,000 simulations, one worker per CPU
    python examples/monte_carlo.py --simulations 2000 --workers 2 --verify
    python examples/monte_carlo.py --store s3://my-bucket/starburst   # tasks travel through S3

Workers run on this machine; ``--store`` only changes where tasks and results are kept. The
default store is a directory under ``$STARBURST_HOME`` (or ``~/.cache/starburst-executor``).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence

from starburst_executor import StarburstExecutor

INITIAL_VALUE = 1_000_000.0
TRADING_DAYS = 252
VERIFY_COUNT = 100

# name, annual drift, annual volatility, portfolio weight
ASSETS: list[tuple[str, float, float, float]] = [
    ("US equities", 0.075, 0.18, 0.45),
    ("Intl equities", 0.065, 0.20, 0.20),
    ("Govt bonds", 0.030, 0.06, 0.25),
    ("Gold", 0.040, 0.15, 0.10),
]

CORRELATION: list[list[float]] = [
    [1.00, 0.75, -0.20, 0.05],
    [0.75, 1.00, -0.15, 0.10],
    [-0.20, -0.15, 1.00, 0.25],
    [0.05, 0.10, 0.25, 1.00],
]


def cholesky(matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """The lower-triangular ``L`` with ``L @ L.T == matrix`` (Cholesky-Banachiewicz).

    Raises:
        ValueError: ``matrix`` is not symmetric positive definite.
    """
    n = len(matrix)
    lower = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            partial = sum(lower[i][k] * lower[j][k] for k in range(j))
            if i == j:
                diagonal = matrix[i][i] - partial
                if diagonal <= 0.0:
                    raise ValueError("correlation matrix is not positive definite")
                lower[i][j] = math.sqrt(diagonal)
            else:
                lower[i][j] = (matrix[i][j] - partial) / lower[j][j]
    return lower


CHOLESKY = cholesky(CORRELATION)


def simulate(seed: int) -> float:
    """One year of daily correlated GBM steps; returns the portfolio's final value."""
    rng = random.Random(seed)
    gauss = rng.gauss
    dt = 1.0 / TRADING_DAYS
    drift = [(mu - 0.5 * sigma * sigma) * dt for _, mu, sigma, _ in ASSETS]
    vol = [sigma * math.sqrt(dt) for _, _, sigma, _ in ASSETS]
    rows = [row[: i + 1] for i, row in enumerate(CHOLESKY)]  # the nonzero part of each row
    n = len(ASSETS)
    log_price = [0.0] * n
    for _ in range(TRADING_DAYS):
        z = [gauss() for _ in range(n)]  # independent N(0, 1) shocks ...
        for i, row in enumerate(rows):  # ... correlated by the Cholesky factor
            shock = sum(l_ik * z_k for l_ik, z_k in zip(row, z))
            log_price[i] += drift[i] + vol[i] * shock
    return sum(
        INITIAL_VALUE * weight * math.exp(lp) for (_, _, _, weight), lp in zip(ASSETS, log_price)
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Monte Carlo value-at-risk of a four-asset portfolio on StarburstExecutor."
    )
    parser.add_argument(
        "--simulations",
        type=int,
        default=10_000,
        metavar="N",
        help="number of simulated years (default: 10000)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="most worker processes at once (default: os.cpu_count())",
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="store URL, e.g. s3://bucket/prefix (default: local directory)",
    )
    parser.add_argument(
        "--chunksize",
        type=int,
        default=None,
        metavar="N",
        help="simulations per task (default: about 4 tasks per worker)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=20_240_101,
        help="seed of the first simulation; simulation i uses seed + i",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help=f"recompute the first {VERIFY_COUNT} simulations here and compare",
    )
    args = parser.parse_args(argv)
    if args.simulations < 2:
        parser.error("--simulations must be at least 2")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.chunksize is not None and args.chunksize < 1:
        parser.error("--chunksize must be at least 1")
    return args


def money(value: float) -> str:
    return f"${value:,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seeds = range(args.seed, args.seed + args.simulations)
    chunksize = args.chunksize or max(1, math.ceil(args.simulations / (4 * args.workers)))

    started = time.perf_counter()
    with StarburstExecutor(max_workers=args.workers, store=args.store) as ex:
        finals = list(ex.map(simulate, seeds, chunksize=chunksize, progress=True))
        store_url = ex.store.url
    elapsed = time.perf_counter() - started

    percentiles = statistics.quantiles(finals, n=100)  # 99 cut points: 1%, 2%, ..., 99%
    var_95 = INITIAL_VALUE - percentiles[4]
    var_99 = INITIAL_VALUE - percentiles[0]
    loss_probability = sum(value < INITIAL_VALUE for value in finals) / len(finals)

    rule = "-" * 60
    print(rule)
    print("Portfolio Monte Carlo (geometric Brownian motion, 1 year)")
    print(rule)
    for name, mu, sigma, weight in ASSETS:
        print(f"  {name:<14} weight {weight:4.0%}   drift {mu:5.1%}   volatility {sigma:5.1%}")
    print(rule)
    print(f"Simulations:          {len(finals):,} x {TRADING_DAYS} trading days")
    print(f"Initial value:        {money(INITIAL_VALUE)}")
    print(f"Mean final value:     {money(statistics.fmean(finals))}")
    print(f"Median final value:   {money(statistics.median(finals))}")
    print(f"Std deviation:        {money(statistics.stdev(finals))}")
    print(f"5% VaR (95% conf.):   {money(var_95)}")
    print(f"1% VaR (99% conf.):   {money(var_99)}")
    print(f"Probability of loss:  {loss_probability:.2%}")
    print(rule)
    print(f"Elapsed:              {elapsed:.2f} s")
    print(
        f"Workers:              {args.workers} (chunksize {chunksize}, "
        f"{math.ceil(len(finals) / chunksize)} tasks)"
    )
    print(f"Store:                {store_url}")
    print(rule)

    if args.verify:
        count = min(VERIFY_COUNT, len(finals))
        expected = [simulate(seed) for seed in seeds[:count]]
        mismatches = [i for i, (a, b) in enumerate(zip(finals, expected)) if a != b]
        if mismatches:
            print(
                f"MISMATCH: {len(mismatches)} of the first {count} results differ from a "
                f"sequential run (first at simulation {mismatches[0]})"
            )
            return 1
        print(f"verified: the first {count} results equal a sequential run in this process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
