"""GridSearchCV wall time: joblib's "starburst" backend against its default loky backend.

The same scikit-learn grid search (an RBF SVM on the bundled digits, 4 x 4 parameters,
``--folds``-fold CV: 48 fits by default) runs, in one process, on:

- ``sequential``: ``n_jobs=1``, no parallelism (the floor of the work itself);
- ``loky``: joblib's default backend, ``--workers`` processes on this machine;
- ``starburst``: ``parallel_config(backend="starburst", n_jobs=--workers)`` on local workers
  (a directory store in a temporary ``STARBURST_HOME``, or ``--store``).

Each backend runs ``--repeat`` times; the figure is the median wall time of ``fit()``. For loky
and starburst it is printed twice: ``warm`` (the pool exists: loky reuses its executor across
calls, starburst's block is entered once and the search repeated inside it) and ``cold`` (the
first fit, pool start-up included). One line per backend, the ratio against loky alongside::

    python bench/joblib_grid.py                   # 2 workers, 3 repetitions (~1 min)
    python bench/joblib_grid.py --workers 8 --repeat 5 --folds 5

Every fit's cv_results_ is checked equal across backends (``results: same`` on the last line).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

import joblib  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

import starburst_executor.joblib  # noqa: E402, F401  (registers "starburst")

GRID = {"svc__C": [0.3, 1.0, 3.0, 10.0], "svc__gamma": [0.003, 0.01, 0.03, 0.1]}


def fit_once(folds: int, X: Any, y: Any) -> tuple[float, Any]:
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC()), GRID, cv=folds)
    started = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - started, search.cv_results_["mean_test_score"]


def run(
    config: dict[str, Any], repeat: int, folds: int, X: Any, y: Any
) -> tuple[list[float], float, Any]:
    """Fit ``repeat + 1`` times in one ``parallel_config`` block: (warm times, the cold
    first time including the block's start-up, the scores)."""
    started = time.perf_counter()
    with joblib.parallel_config(**config):
        _, scores = fit_once(folds, X, y)
        cold = time.perf_counter() - started
        warm = [fit_once(folds, X, y)[0] for _ in range(repeat)]
    return warm, cold, scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="n_jobs (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="warm fits per backend (default 3)")
    parser.add_argument("--folds", type=int, default=3, help="CV folds (default 3)")
    parser.add_argument("--store", default=None, help="starburst store URL (default: a temp dir)")
    args = parser.parse_args(argv)

    X, y = load_digits(return_X_y=True)
    fits = len(GRID["svc__C"]) * len(GRID["svc__gamma"]) * args.folds
    with tempfile.TemporaryDirectory(prefix="starburst-bench-joblib-") as home:
        os.environ.setdefault("STARBURST_HOME", home)
        store = args.store or Path(home, "store").as_uri()
        configs: dict[str, dict[str, Any]] = {
            "sequential": {"backend": "sequential", "n_jobs": 1},
            "loky": {"backend": "loky", "n_jobs": args.workers},
            "starburst": {"backend": "starburst", "n_jobs": args.workers, "store": store},
        }
        results = {name: run(cfg, args.repeat, args.folds, X, y) for name, cfg in configs.items()}

    print(
        f"joblib grid search: {fits} fits (SVC on digits, {args.folds}-fold), "
        f"n_jobs={args.workers}, {os.cpu_count()} CPUs, median of {args.repeat} warm fits"
    )
    loky_warm = statistics.median(results["loky"][0])
    loky_cold = results["loky"][1]
    for name, (warm, cold, _) in results.items():
        median = statistics.median(warm)
        print(
            f"{name:<11} warm {median:7.2f} s  ({median / loky_warm:5.2f}x loky)   "
            f"cold {cold:7.2f} s  ({cold / loky_cold:5.2f}x loky)   "
            f"runs {' '.join(f'{t:.2f}' for t in warm)}"
        )
    reference = results["sequential"][2]
    same = all(np.array_equal(r[2], reference) for r in results.values())
    print(f"results: {'same' if same else 'DIFFERENT'} cv_results_ on every backend")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
