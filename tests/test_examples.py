"""The examples run end to end, as a user runs them: ``python examples/NAME.py ...``.

Each runs in a subprocess (with small sizes) on the embedded local store in the test's own
``STARBURST_HOME``, and the test reads the printed report back: exit status, plausible
statistics, and (for Monte Carlo) results that do not depend on how the work was chunked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest
from servers import SeaweedServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.slow


def run_example(name: str, args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["STARBURST_HOME"] = str(home)
    # The working tree's package, for the example and (inherited) for its workers.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return proc


def report_value(stdout: str, label: str) -> float:
    """The number after ``label:`` in the report, without ``$``, ``,`` or ``%``."""
    match = re.search(rf"^{re.escape(label)}:\s+\$?(-?[\d,]+(?:\.\d+)?)%?", stdout, re.MULTILINE)
    assert match, f"no {label!r} line in:\n{stdout}"
    return float(match.group(1).replace(",", ""))


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MC_STATS = (
    "Mean final value",
    "Median final value",
    "Std deviation",
    "5% VaR (95% conf.)",
    "1% VaR (99% conf.)",
    "Probability of loss",
)


def test_monte_carlo_report_is_plausible_and_verified(tmp_path: Path) -> None:
    proc = run_example(
        "monte_carlo.py",
        ["--simulations", "500", "--workers", "2", "--verify"],
        tmp_path / "home",
    )
    out = proc.stdout
    assert "map(simulate)" not in proc.stderr  # its progress bar: only on a terminal

    assert "500 x 252 trading days" in out
    initial = report_value(out, "Initial value")
    assert initial == 1_000_000
    mean = report_value(out, "Mean final value")
    median = report_value(out, "Median final value")
    std = report_value(out, "Std deviation")
    var_95 = report_value(out, "5% VaR (95% conf.)")
    var_99 = report_value(out, "1% VaR (99% conf.)")
    p_loss = report_value(out, "Probability of loss")
    # A diversified portfolio with ~6% drift and ~12% volatility over one year.
    assert 0.95 * initial < mean < 1.2 * initial
    assert 0.9 * initial < median < 1.2 * initial
    assert 0.05 * initial < std < 0.25 * initial
    assert 0 < var_95 < var_99 < 0.6 * initial
    assert 10 < p_loss < 60
    assert report_value(out, "Workers") == 2
    assert report_value(out, "Elapsed") > 0
    assert "verified" in out
    assert "MISMATCH" not in out


def test_monte_carlo_results_do_not_depend_on_chunking(tmp_path: Path) -> None:
    args = ["--simulations", "300", "--seed", "11"]
    first = run_example("monte_carlo.py", [*args, "--workers", "2"], tmp_path / "home").stdout
    second = run_example(
        "monte_carlo.py", [*args, "--workers", "1", "--chunksize", "7"], tmp_path / "home"
    ).stdout
    for label in MC_STATS:
        assert report_value(first, label) == report_value(second, label), label
    assert "chunksize 7, 43 tasks" in second


def test_monte_carlo_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "monte_carlo.py"), "--simulations", "1"],
        check=False,
        cwd=ROOT,
        env={**os.environ, "STARBURST_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--simulations must be at least 2" in proc.stderr


def test_grid_search_finds_a_grid_point(tmp_path: Path) -> None:
    proc = run_example(
        "grid_search.py", ["--samples", "150", "--folds", "3", "--workers", "2"], tmp_path / "home"
    )
    out = proc.stdout
    grid = load_example("grid_search").build_grid()

    match = re.search(r"^Best parameters: (\{.*\})$", out, re.MULTILINE)
    assert match, out
    best = json.loads(match.group(1))
    assert best in grid

    rows = re.findall(
        r"^\s+(\d)\s+(ridge|knn)\s+.*?\s(\d+\.\d+)\s+(\d+\.\d+)\s+(-?\d+\.\d+)$", out, re.MULTILINE
    )
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5], out
    rmses = [float(r[2]) for r in rows]
    assert rmses == sorted(rmses)
    assert rows[0][1] == best["model"]
    baseline_match = re.search(r"predicting the mean scores (\d+\.\d+)", out)
    assert baseline_match, out
    baseline = float(baseline_match.group(1))
    best_rmse = report_value(out, "Best CV RMSE")
    assert 0 < best_rmse < baseline  # the winner beats predicting the mean
    assert f"{len(grid)} parameter sets" in out
    assert f"{len(grid)}/{len(grid)}" in proc.stderr  # the tqdm bar reached the end


def test_sklearn_grid_search_through_joblib(tmp_path: Path) -> None:
    """scikit-learn's GridSearchCV on the "starburst" joblib backend, embedded defaults."""
    out = run_example(
        "sklearn_grid_search.py", ["--workers", "2", "--folds", "2"], tmp_path / "home"
    ).stdout
    grid = load_example("sklearn_grid_search").GRID
    match = re.search(r"^Best parameters:\s+(\{.*\})$", out, re.MULTILINE)
    assert match, out
    best = json.loads(match.group(1).replace("'", '"'))
    assert best["svc__C"] in grid["svc__C"] and best["svc__gamma"] in grid["svc__gamma"]
    assert report_value(out, "Fits") == 2 * len(grid["svc__C"]) * len(grid["svc__gamma"])
    assert 0.9 < report_value(out, "Best CV accuracy") <= 1
    assert 0.9 < report_value(out, "Held-out accuracy") <= 1
    assert report_value(out, "Search wall time") > 0


def test_monte_carlo_through_an_s3_store(tmp_path: Path, seaweed: SeaweedServer) -> None:
    """``--store s3://...``: the same report with tasks and results travelling through S3
    (SeaweedFS on loopback; the ``seaweed`` fixture created the bucket)."""
    url = f"s3://starburst-test/examples/{uuid.uuid4().hex}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", seaweed.endpoint_url)
        out = run_example(
            "monte_carlo.py",
            ["--simulations", "200", "--workers", "2", "--store", url, "--verify"],
            tmp_path / "home",
        ).stdout
    assert f"Store:                {url}" in out
    assert "verified" in out
    assert 0 < report_value(out, "5% VaR (95% conf.)") < report_value(out, "1% VaR (99% conf.)")
