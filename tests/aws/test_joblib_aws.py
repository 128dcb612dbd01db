"""The ``"starburst"`` joblib backend on ``AwsBackend``: scikit-learn's ``GridSearchCV`` in real
containers of the project's worker image, IAM enforced.

The world (moto with enforced IAM, ``starburst setup`` as an administrator, a user holding the
generated user policy, the container ECS agent running each RunTask as ``docker run``, every
AWS call recorded) is the one of ``test_containers_e2e.py``, whose fixtures this module
reuses; only the image differs: the worker image here is built, through the code path of
``starburst image build``, with the client's scikit-learn, joblib, numpy and scipy pinned in
its requirements (a user's environment sync does the same from ``pip freeze``), because the
grid search's tasks are scikit-learn's own functions, unpickled in the container.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import containers
import joblib
import numpy as np
import pytest
import test_containers_e2e as e2e
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from test_containers_e2e import World

import starburst_executor.joblib  # noqa: F401  (registers the backend)
from starburst_executor import AwsBackend

pytestmark = pytest.mark.slow

# The world of the container e2e tests: module-scoped fixtures, so this module gets its own.
world = e2e.world
as_user = e2e.as_user

GRID = {"svc__C": [0.1, 1.0, 10.0], "svc__gamma": [0.01, 0.1, 1.0]}
# What unpickles the client's tasks and arrays in the container: the client's versions.
PINNED = ("scikit-learn", "joblib", "numpy", "scipy", "threadpoolctl")


def sklearn_image() -> str:
    """The project's worker image with the client's scikit-learn stack, built like
    ``containers.project_image`` (same base, same build code) and reused while unchanged."""
    from starburst_executor.aws.image import build_image, capture_environment

    requirements = "".join(f"{name}=={version(name)}\n" for name in PINNED)
    base = containers.base_image()
    sources = containers._hash_files(containers._project_sources(), containers.REPO_ROOT)
    digest = hashlib.sha256(
        f"{sources}\0{base}\0{sys.version_info[:2]}\0{requirements}".encode()
    ).hexdigest()[:12]
    name = f"{containers.PROJECT_REPOSITORY}:sklearn-{digest}"
    if containers._image_exists(name):
        return name
    with containers._build_lock():
        if containers._image_exists(name):
            return name
        with tempfile.TemporaryDirectory(prefix="starburst-test-image-") as scratch:
            path = Path(scratch) / "requirements.txt"
            path.write_text(requirements)
            started = time.monotonic()
            build_image(
                capture_environment(path),
                name,
                context_dir=Path(scratch) / "context",
                base_image=base,
                source_dir=containers.REPO_ROOT,
            )
            print(f"\nbuilt {name} in {time.monotonic() - started:.1f} s")
    return name


@pytest.fixture(scope="module")
def worker_image(docker: str) -> str:
    """This module's worker image (overrides conftest's, for the reused ``world``)."""
    return sklearn_image()


@contextmanager
def builtin_warning_filters() -> Iterator[None]:
    """Only the warning filters on built-in categories. scikit-learn sends the client's
    ``warnings.filters`` with every task, and pytest's name pytest's own warning classes:
    the image has no pytest, so unpickling such a task fails there ("No module named
    'pytest'"), as it would for any client-only package's warning class."""
    with warnings.catch_warnings():
        filters = cast(list[Any], warnings.filters)
        filters[:] = [f for f in filters if getattr(f[2], "__module__", "") == "builtins"]
        yield


def grid_search() -> GridSearchCV:
    X, y = load_iris(return_X_y=True)
    return GridSearchCV(make_pipeline(StandardScaler(), SVC()), GRID, cv=3).fit(X, y)


def test_grid_search_runs_in_containers_through_joblib(
    as_user: World, caplog: pytest.LogCaptureFixture
) -> None:
    world = as_user
    X, y = load_iris(return_X_y=True)
    expected = grid_search()
    expected_cv = cross_val_score(SVC(), X, y, cv=3)
    caplog.set_level(logging.INFO, logger="starburst_executor")
    started = time.monotonic()
    with (
        builtin_warning_filters(),
        joblib.parallel_config(
            backend="starburst", n_jobs=2, executor_backend=AwsBackend(cpu=0.5, memory="1GB")
        ),
    ):
        found = grid_search()
        cv = cross_val_score(SVC(), X, y, cv=3)
    world.timings["joblib_grid_search_s"] = round(time.monotonic() - started, 2)
    print(
        f"\ngrid search + cross_val_score on 2 containers: {world.timings['joblib_grid_search_s']} s"
    )

    assert found.best_params_ == expected.best_params_
    np.testing.assert_array_equal(
        found.cv_results_["mean_test_score"], expected.cv_results_["mean_test_score"]
    )
    np.testing.assert_array_equal(cv, expected_cv)
    sids = {
        m.group(1)
        for r in caplog.records
        if (m := re.search(r"session (\S+): joblib backend", r.getMessage()))
    }
    assert len(sids) == 1, sids  # one session (one pool of containers) for the whole block
    arns = e2e._session_tasks(world, sids.pop())
    assert 1 <= len(arns) <= 2
    e2e._check_containers(world, arns)
    # The end of the block shut the executor down: its containers exit.
    world.agent.wait_for(
        lambda: all(a in world.agent.exits for a in arns), 60, "the session's containers to exit"
    )
    assert {world.agent.exits[a] for a in arns} <= {0, e2e.EXIT_SIGTERM}
    assert world.agent.errors == []


def test_every_recorded_call_is_allowed_by_the_generated_policies(as_user: World) -> None:
    """The calls the joblib run made (client, workers, ECS) are within the generated
    policies: the e2e module's check, on this module's world."""
    e2e.test_every_recorded_call_is_allowed_by_the_generated_policies(as_user)
