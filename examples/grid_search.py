"""Hyper-parameter grid search with k-fold cross-validation, one ``submit`` per grid point.

What it shows
-------------
The classic ``concurrent.futures`` pattern, unchanged on ``StarburstExecutor``: submit one
call per parameter set, then collect with ``concurrent.futures.as_completed`` as they finish
(here behind a ``tqdm`` progress bar). Every call receives the same dataset as an argument;
the executor stores identical arguments once (they are content-addressed), so sending it with
each of the grid's calls costs one upload, not one per call.

The task: predict a noisy, partly non-linear target from six features, with two models
written in plain Python (no numpy):

- ridge regression on polynomial features of degree 1 or 2, for several penalties ``alpha``
  (solved through a hand-written Cholesky factorisation of ``X'X + alpha I``);
- k-nearest-neighbours regression for several ``k``, with uniform or inverse-distance weights.

Each grid point is scored by its mean root-mean-square error over ``--folds``-fold
cross-validation; the report lists the five best and the winning parameters. The dataset,
the folds and so the whole report (except timings) are determined by ``--seed``.

Run it
------
From the repository root, after ``python -m pip install .`` (or with ``PYTHONPATH=.``)::

    python examples/grid_search.py                       # one worker per CPU
    python examples/grid_search.py --workers 2 --samples 300 --folds 3
    python examples/grid_search.py --store s3://my-bucket/starburst
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, as_completed
from typing import Any

from tqdm import tqdm

from starburst_executor import StarburstExecutor

Matrix = list[list[float]]
Params = dict[str, Any]

N_FEATURES = 6
RIDGE_DEGREES = (1, 2)
RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)
KNN_KS = (1, 3, 5, 8, 13, 21)
KNN_WEIGHTS = ("uniform", "distance")


def build_grid() -> list[Params]:
    """Every parameter set the search tries."""
    grid: list[Params] = [
        {"model": "ridge", "degree": degree, "alpha": alpha}
        for degree, alpha in itertools.product(RIDGE_DEGREES, RIDGE_ALPHAS)
    ]
    grid += [
        {"model": "knn", "k": k, "weights": weights}
        for k, weights in itertools.product(KNN_KS, KNN_WEIGHTS)
    ]
    return grid


# -- data ---------------------------------------------------------------------------------------


def make_dataset(n_samples: int, seed: int, noise: float = 0.3) -> tuple[Matrix, list[float]]:
    """Features ~ N(0, 1); the target mixes a periodic surface (which suits k-NN), an
    interaction, a linear and a square term (which suit degree-2 ridge), plus noise."""
    rng = random.Random(seed)
    features: Matrix = []
    target: list[float] = []
    for _ in range(n_samples):
        x = [rng.gauss(0.0, 1.0) for _ in range(N_FEATURES)]
        y = (
            3.0 * math.sin(1.5 * x[0]) * math.cos(x[1])
            + 1.5 * x[2] * x[3]
            + x[4]
            - 0.5 * x[5] ** 2
            + rng.gauss(0.0, noise)
        )
        features.append(x)
        target.append(y)
    return features, target


def make_folds(n_samples: int, n_folds: int, seed: int) -> list[list[int]]:
    """A shuffled partition of ``range(n_samples)`` into ``n_folds`` near-equal test folds."""
    order = list(range(n_samples))
    random.Random(seed).shuffle(order)
    return [sorted(order[i::n_folds]) for i in range(n_folds)]


def standardizer(rows: Matrix) -> tuple[list[float], list[float]]:
    """Per-column mean and standard deviation (1.0 for a constant column)."""
    columns = list(zip(*rows))
    means = [statistics.fmean(col) for col in columns]
    stds = [statistics.pstdev(col, mu) or 1.0 for col, mu in zip(columns, means)]
    return means, stds


def standardize(rows: Matrix, means: list[float], stds: list[float]) -> Matrix:
    return [[(v - m) / s for v, m, s in zip(row, means, stds)] for row in rows]


# -- ridge regression ---------------------------------------------------------------------------


def polynomial_features(row: list[float], degree: int) -> list[float]:
    """``row`` plus, for degree 2, every product ``x_i * x_j`` with ``i <= j``."""
    out = list(row)
    if degree >= 2:
        out += [row[i] * row[j] for i in range(len(row)) for j in range(i, len(row))]
    return out


def cholesky_solve(a: Matrix, b: list[float]) -> list[float]:
    """Solve ``a x = b`` for a symmetric positive definite ``a``."""
    n = len(a)
    lower = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            partial = sum(lower[i][k] * lower[j][k] for k in range(j))
            if i == j:
                lower[i][i] = math.sqrt(a[i][i] - partial)
            else:
                lower[i][j] = (a[i][j] - partial) / lower[j][j]
    z = [0.0] * n  # forward: L z = b
    for i in range(n):
        z[i] = (b[i] - sum(lower[i][k] * z[k] for k in range(i))) / lower[i][i]
    x = [0.0] * n  # backward: L' x = z
    for i in reversed(range(n)):
        x[i] = (z[i] - sum(lower[k][i] * x[k] for k in range(i + 1, n))) / lower[i][i]
    return x


def ridge_predict(
    train_x: Matrix, train_y: list[float], test_x: Matrix, degree: int, alpha: float
) -> list[float]:
    train_p = [polynomial_features(row, degree) for row in train_x]
    test_p = [polynomial_features(row, degree) for row in test_x]
    means, stds = standardizer(train_p)
    train_p = standardize(train_p, means, stds)
    test_p = standardize(test_p, means, stds)
    y_mean = statistics.fmean(train_y)  # the intercept; not penalised
    centred = [y - y_mean for y in train_y]
    p = len(train_p[0])
    gram = [[0.0] * p for _ in range(p)]
    rhs = [0.0] * p
    for row, y in zip(train_p, centred):
        for i in range(p):
            ri = row[i]
            rhs[i] += ri * y
            gram_i = gram[i]
            for j in range(i + 1):
                gram_i[j] += ri * row[j]
    for i in range(p):
        gram[i][i] += alpha
        for j in range(i):
            gram[j][i] = gram[i][j]
    weights = cholesky_solve(gram, rhs)
    return [y_mean + sum(w * v for w, v in zip(weights, row)) for row in test_p]


# -- k-nearest neighbours -----------------------------------------------------------------------


def knn_predict(
    train_x: Matrix, train_y: list[float], test_x: Matrix, k: int, weights: str
) -> list[float]:
    means, stds = standardizer(train_x)
    train_s = standardize(train_x, means, stds)
    test_s = standardize(test_x, means, stds)
    k = min(k, len(train_s))
    predictions = []
    for query in test_s:
        distances = ((math.dist(query, row), y) for row, y in zip(train_s, train_y))
        nearest = heapq.nsmallest(k, distances, key=lambda pair: pair[0])
        if weights == "distance":
            exact = [y for d, y in nearest if d == 0.0]
            if exact:
                predictions.append(statistics.fmean(exact))
                continue
            inverse = [1.0 / d for d, _ in nearest]
            predictions.append(sum(w * y for w, (_, y) in zip(inverse, nearest)) / sum(inverse))
        else:
            predictions.append(statistics.fmean(y for _, y in nearest))
    return predictions


# -- one grid point -----------------------------------------------------------------------------


def cross_validate(
    params: Params, features: Matrix, target: list[float], folds: list[list[int]]
) -> dict[str, Any]:
    """Score ``params`` by k-fold cross-validation; this is the function sent to the workers."""
    started = time.perf_counter()
    rmses = []
    r2s = []
    for test_idx in folds:
        test_set = set(test_idx)
        train_idx = [i for i in range(len(target)) if i not in test_set]
        train_x = [features[i] for i in train_idx]
        train_y = [target[i] for i in train_idx]
        test_x = [features[i] for i in test_idx]
        test_y = [target[i] for i in test_idx]
        if params["model"] == "ridge":
            predicted = ridge_predict(train_x, train_y, test_x, params["degree"], params["alpha"])
        elif params["model"] == "knn":
            predicted = knn_predict(train_x, train_y, test_x, params["k"], params["weights"])
        else:
            raise ValueError(f"unknown model {params['model']!r}")
        sse = sum((p - y) ** 2 for p, y in zip(predicted, test_y))
        mean_y = statistics.fmean(test_y)
        sst = sum((y - mean_y) ** 2 for y in test_y)
        rmses.append(math.sqrt(sse / len(test_y)))
        r2s.append(1.0 - sse / sst if sst else 0.0)
    return {
        "params": params,
        "rmse": statistics.fmean(rmses),
        "rmse_std": statistics.stdev(rmses) if len(rmses) > 1 else 0.0,
        "r2": statistics.fmean(r2s),
        "seconds": time.perf_counter() - started,
    }


# -- command line -------------------------------------------------------------------------------


def describe(params: Params) -> str:
    return ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in params.items()
        if key != "model"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Cross-validated grid search over ridge and k-NN models on StarburstExecutor."
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=1000,
        metavar="N",
        help="size of the synthetic dataset (default: 1000)",
    )
    parser.add_argument(
        "--folds", type=int, default=5, metavar="K", help="cross-validation folds (default: 5)"
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
    parser.add_argument("--seed", type=int, default=7, help="seed of the dataset and the folds")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    if args.samples < 2 * args.folds or args.samples < 30:
        parser.error("--samples must be at least 30 and at least twice --folds")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    features, target = make_dataset(args.samples, args.seed)
    folds = make_folds(args.samples, args.folds, args.seed)
    grid = build_grid()
    print(
        f"Grid search: {len(grid)} parameter sets x {args.folds}-fold cross-validation "
        f"on {args.samples} samples with {N_FEATURES} features"
    )

    started = time.perf_counter()
    results = []
    with StarburstExecutor(max_workers=args.workers, store=args.store) as ex:
        futures: dict[Future[dict[str, Any]], Params] = {
            ex.submit(cross_validate, params, features, target, folds): params for params in grid
        }
        for future in tqdm(
            as_completed(futures),
            total=len(futures),
            desc="grid points",
            unit="fit",
            disable=args.no_progress,
        ):
            results.append(future.result())
    elapsed = time.perf_counter() - started

    results.sort(key=lambda r: (r["rmse"], json.dumps(r["params"], sort_keys=True)))
    best = results[0]
    baseline = statistics.pstdev(target)  # the RMSE of always predicting the mean

    print()
    print(
        f"Top 5 of {len(results)} (mean CV RMSE, lower is better; "
        f"predicting the mean scores {baseline:.3f})"
    )
    print(f"{'rank':>4}  {'model':<6} {'parameters':<26} {'RMSE':>7} {'± std':>7} {'R²':>7}")
    for rank, result in enumerate(results[:5], start=1):
        params = result["params"]
        print(
            f"{rank:>4}  {params['model']:<6} {describe(params):<26} {result['rmse']:7.3f} "
            f"{result['rmse_std']:7.3f} {result['r2']:7.3f}"
        )
    print()
    for model in sorted({r["params"]["model"] for r in results}):
        top = next(r for r in results if r["params"]["model"] == model)  # results are sorted
        print(f"Best {model + ':':<7}     {describe(top['params']):<26} RMSE {top['rmse']:.3f}")
    print()
    print(f"Best parameters: {json.dumps(best['params'])}")
    print(f"Best CV RMSE:    {best['rmse']:.4f} (R² {best['r2']:.3f})")
    cpu = sum(r["seconds"] for r in results)
    print(
        f"Elapsed:         {elapsed:.2f} s on {args.workers} worker(s) "
        f"({cpu:.2f} s of model fitting)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
