"""The ``"starburst"`` joblib backend on local workers: scikit-learn's grid search and
cross-validation give what they give without it, joblib's batching, generators, errors and
``n_jobs`` work, and one executor serves a ``parallel_config`` block and is shut down after it.

The same grid search on the AWS backend (the real worker image in Docker, enforced IAM) is in
``tests/aws/test_joblib_aws.py``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import types
from pathlib import Path

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed
from joblib_tasks import TaskFailure, fail_on, square, worker_pid
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import starburst_executor.joblib as starburst_joblib
from starburst_executor import RemoteTraceback, StarburstExecutor

TESTS_DIR = Path(__file__).resolve().parent
GRID = {"svc__C": [0.1, 1.0, 10.0], "svc__gamma": [0.01, 0.1, 1.0]}


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh directory store; workers import ``joblib_tasks`` from ``tests/``."""
    paths = [str(TESTS_DIR.parent), str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return (tmp_path / "store").as_uri()


def stored_files(store_url: str) -> list[Path]:
    """The session objects in a directory store (not the store's own lock files)."""
    root = Path(store_url.removeprefix("file://"))
    files = root.rglob("*") if root.exists() else iter(())
    return [p for p in files if p.is_file() and ".starburst-internal" not in p.parts]


def grid_search(**kwargs: object) -> GridSearchCV:
    X, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), SVC())
    return GridSearchCV(model, GRID, cv=3, **kwargs).fit(X, y)


@pytest.mark.slow
def test_grid_search_and_cross_val_score_match_a_sequential_run(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """GridSearchCV (several Parallel calls) and cross_val_score in one block: the results of
    a sequential run, one executor for all of it, its session deleted after the block."""
    X, y = load_iris(return_X_y=True)
    expected = grid_search()
    expected_cv = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=5)

    caplog.set_level(logging.INFO, logger="starburst_executor")
    with joblib.parallel_config(backend="starburst", n_jobs=2, store=store_url):
        found = grid_search()
        cv = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=5)
        assert stored_files(store_url), "the session's objects are in the store meanwhile"

    assert found.best_params_ == expected.best_params_
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_array_equal(found.cv_results_[key], expected.cv_results_[key])
    np.testing.assert_array_equal(cv, expected_cv)
    started = [r for r in caplog.records if "joblib backend with" in r.getMessage()]
    assert len(started) == 1, [r.getMessage() for r in started]
    # The end of the block shut the executor down cleanly: its session's data is gone.
    assert any("deleted its" in r.getMessage() for r in caplog.records)
    assert stored_files(store_url) == []


def test_tasks_run_on_workers_and_small_tasks_are_batched(store_url: str) -> None:
    with joblib.parallel_config(backend="starburst", n_jobs=2, store=store_url):
        pids = Parallel()(delayed(worker_pid)(i) for i in range(4))
        parallel = Parallel(batch_size="auto")
        squares = parallel(delayed(square)(i) for i in range(2000))
    assert os.getpid() not in pids
    assert squares == [i * i for i in range(2000)]
    # joblib grew its batches: far fewer executor tasks than joblib tasks.
    assert parallel.n_dispatched_tasks == 2000
    assert parallel.n_dispatched_batches < 200


def test_return_as_generator_yields_in_order(store_url: str) -> None:
    with joblib.parallel_config(backend="starburst", n_jobs=2, store=store_url):
        out = Parallel(return_as="generator")(delayed(square)(i) for i in range(30))
        assert isinstance(out, types.GeneratorType)
        assert list(out) == [i * i for i in range(30)]
        unordered = Parallel(return_as="generator_unordered")(delayed(square)(i) for i in range(30))
        assert sorted(unordered) == [i * i for i in range(30)]


def test_a_task_error_propagates_with_its_type_and_remote_traceback(store_url: str) -> None:
    with joblib.parallel_config(backend="starburst", n_jobs=2, store=store_url):
        with pytest.raises(TaskFailure, match="task 7 failed on purpose") as info:
            Parallel(batch_size=1)(delayed(fail_on)(i, 7) for i in range(20))
        # The block's executor still works after a failed call.
        assert Parallel()(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_on" in str(cause) and 'raise TaskFailure(f"task {x}' in str(cause)


def test_n_jobs(store_url: str) -> None:
    with joblib.parallel_config(backend="starburst", store=store_url):
        assert joblib.effective_n_jobs() == os.cpu_count()  # default: every CPU, as loky
        assert joblib.effective_n_jobs(-2) == max((os.cpu_count() or 1) - 1, 1)
        assert joblib.effective_n_jobs(3) == 3
        with pytest.raises(ValueError, match="n_jobs == 0"):
            joblib.effective_n_jobs(0)
    with joblib.parallel_config(backend="starburst", n_jobs=1, store=store_url):
        # n_jobs=1 is joblib's "no parallelism": run here, start no workers.
        assert Parallel()(delayed(worker_pid)(i) for i in range(3)) == [os.getpid()] * 3
    assert stored_files(store_url) == []


def test_an_executor_of_your_own_is_used_and_left_running(store_url: str) -> None:
    with StarburstExecutor(max_workers=2, store=store_url) as ex:
        with joblib.parallel_config(backend="starburst", n_jobs=2, executor=ex):
            assert Parallel()(delayed(square)(i) for i in range(6)) == [0, 1, 4, 9, 16, 25]
        assert ex.submit(square, 9).result(timeout=60) == 81


def test_parallel_outside_a_config_block_shuts_its_executor_down(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="starburst_executor")
    out = Parallel(backend="starburst", n_jobs=2)(delayed(square)(i) for i in range(4))
    assert out == [0, 1, 4, 9]
    assert any("deleted its" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_workers": 4}, "n_jobs"),
        ({"backend_options": 1}, "unknown option 'backend_options'"),
        ({"executor_backend": "gpu"}, "backend must be"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        joblib.parallel_config(backend="starburst", **options)


def test_without_joblib_the_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "joblib", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "starburst_executor.joblib")
    with pytest.raises(ImportError, match=r"pip install 'starburst-executor\[joblib\]'"):
        importlib.import_module("starburst_executor.joblib")
    monkeypatch.setitem(sys.modules, "starburst_executor.joblib", starburst_joblib)


def test_register_makes_the_backend_available_again() -> None:
    from joblib.parallel import BACKENDS

    BACKENDS.pop("starburst")
    starburst_joblib.register()
    assert BACKENDS["starburst"] is starburst_joblib.StarburstBackend


def test_a_call_with_more_jobs_gets_a_bigger_pool(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Within a block, a call asking for fewer jobs reuses the executor; one asking for more
    replaces it by a bigger one (the smaller one is shut down first)."""
    caplog.set_level(logging.INFO, logger="starburst_executor")
    with joblib.parallel_config(backend="starburst", n_jobs=3, store=store_url):
        assert Parallel()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
        assert Parallel(n_jobs=4)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    messages = [r.getMessage() for r in caplog.records]
    started = [m for m in messages if "joblib backend with" in m]
    assert [m.rsplit("with ", 1)[1] for m in started] == ["3 workers", "4 workers"]
    # Both of this block's sessions deleted their data (a backend of an earlier test, released
    # by the garbage collector meanwhile, may log its own deletion here too: not counted).
    ours = {m.split(":", 1)[0] for m in started}  # "session {sid}"
    assert sum(m.split(":", 1)[0] in ours and "deleted its" in m for m in messages) == 2
    assert stored_files(store_url) == []
