"""scikit-learn's ``GridSearchCV`` on starburst workers, through joblib's ``"starburst"`` backend.

What it shows
-------------
scikit-learn parallelises through joblib: every ``n_jobs`` in it (``GridSearchCV``,
``cross_val_score``, random forests...) goes to joblib's active backend. Importing
``starburst_executor.joblib`` registers a backend called ``"starburst"``, so one ``with`` block
sends the whole search to a ``StarburstExecutor``, unchanged::

    with joblib.parallel_config(backend="starburst", n_jobs=8):
        search.fit(X_train, y_train)

Inside the block one executor (one session, one pool of workers) serves every joblib call the
search makes; at the end of the block it is shut down and its data deleted. joblib groups the
small fits into batches (one batch = one task in the store) from how long they take.

The task: recognise handwritten digits (scikit-learn's bundled 8x8 ``digits`` data set, 1,797
images, no download) with an RBF support-vector machine, choosing ``C`` and ``gamma`` by
``--folds``-fold cross-validation on 75% of the images, then scoring the winner on the other 25%.

Run it
------
From the repository root, after ``python -m pip install '.[joblib]' scikit-learn``::

    python examples/sklearn_grid_search.py                    # one worker per CPU, local
    python examples/sklearn_grid_search.py --workers 2 --compare-loky
    python examples/sklearn_grid_search.py --store s3://my-bucket/starburst
    python examples/sklearn_grid_search.py --backend aws --workers 20   # after `starburst setup`

``--compare-loky`` runs the same search with joblib's default ``loky`` backend (processes on
this machine) and prints both wall times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import joblib
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import starburst_executor.joblib  # noqa: F401  (registers the "starburst" joblib backend)

GRID: dict[str, list[float]] = {
    "svc__C": [0.3, 1.0, 3.0, 10.0],
    "svc__gamma": [0.003, 0.01, 0.03, 0.1],
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="GridSearchCV of an SVM on scikit-learn's digits, on StarburstExecutor."
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="joblib's n_jobs: the most workers at once (default: os.cpu_count())",
    )
    parser.add_argument("--folds", type=int, default=3, metavar="K", help="CV folds (default 3)")
    parser.add_argument(
        "--store", default=None, metavar="URL", help="store URL (default: a local directory)"
    )
    parser.add_argument(
        "--backend",
        default="local",
        choices=["local", "aws"],
        help="where the workers run (default: local processes)",
    )
    parser.add_argument(
        "--compare-loky",
        action="store_true",
        help="also run the search on joblib's default loky backend and compare wall times",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    return args


def search(folds: int) -> GridSearchCV:
    model = make_pipeline(StandardScaler(), SVC(kernel="rbf"))
    return GridSearchCV(model, GRID, cv=folds)


def timed_fit(estimator: GridSearchCV, X: Any, y: Any) -> float:
    started = time.perf_counter()
    estimator.fit(X, y)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=0, stratify=y
    )
    fits = len(GRID["svc__C"]) * len(GRID["svc__gamma"]) * args.folds

    on_starburst = search(args.folds)
    started = time.perf_counter()
    with joblib.parallel_config(
        backend="starburst", n_jobs=args.workers, store=args.store, executor_backend=args.backend
    ):
        fit_seconds = timed_fit(on_starburst, X_train, y_train)
    elapsed = time.perf_counter() - started  # with the executor's shutdown

    rule = "-" * 60
    print(rule)
    print("GridSearchCV: RBF SVM on scikit-learn's digits (8x8 images, 10 classes)")
    print(rule)
    print(f"Grid:                 C {GRID['svc__C']}, gamma {GRID['svc__gamma']}")
    print(f"Fits:                 {fits} ({args.folds}-fold CV on {len(X_train)} images)")
    print(f"Best parameters:      {on_starburst.best_params_}")
    print(f"Best CV accuracy:     {on_starburst.best_score_:.4f}")
    print(f"Held-out accuracy:    {on_starburst.score(X_test, y_test):.4f} ({len(X_test)} images)")
    print(f"Workers:              {args.workers} ({args.backend})")
    print(f"Search wall time:     {fit_seconds:.2f} s (starburst)")
    print(f"With start/shutdown:  {elapsed:.2f} s")
    if args.compare_loky:
        on_loky = search(args.folds)
        with joblib.parallel_config(backend="loky", n_jobs=args.workers):
            loky_seconds = timed_fit(on_loky, X_train, y_train)
        same = on_loky.best_params_ == on_starburst.best_params_ and bool(
            (
                on_loky.cv_results_["mean_test_score"]
                == on_starburst.cv_results_["mean_test_score"]
            ).all()
        )
        print(f"Search wall time:     {loky_seconds:.2f} s (loky, {args.workers} processes)")
        print(f"starburst / loky:     {fit_seconds / loky_seconds:.2f}x")
        print(f"Same results as loky: {'yes' if same else 'NO'}")
        if not same:
            return 1
    print(rule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
