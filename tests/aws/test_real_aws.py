"""Opt-in: the README's AWS quick start against a real AWS account.

Skipped unless ``STARBURST_REAL_AWS=1`` and AWS credentials are configured. It costs a few
cents: it runs `starburst setup` (idempotent), needs a worker image already pushed with
`starburst image build` on a machine with Docker, runs a small job on Fargate Spot, and
checks that no task is left running. Run it as a user would:

    STARBURST_REAL_AWS=1 AWS_PROFILE=... AWS_REGION=us-east-1 python -m pytest -m aws tests/aws/test_real_aws.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.aws, pytest.mark.slow]

# Taken at import, before the autouse fixture swaps in dummy credentials and scrubs the
# profile: this test, alone, wants the user's real AWS settings.
ORIGINAL_ENV = dict(os.environ)
REAL = ORIGINAL_ENV.get("STARBURST_REAL_AWS") == "1"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "aws_quickstart.py"


@pytest.fixture
def real_env(tmp_path: Path) -> dict[str, str]:
    if not REAL:
        pytest.skip("set STARBURST_REAL_AWS=1 (and AWS credentials) to run against real AWS")
    env = {k: v for k, v in ORIGINAL_ENV.items() if not k.startswith("AWS_ENDPOINT_URL")}
    import boto3

    session = boto3.session.Session(profile_name=env.get("AWS_PROFILE"))
    if session.get_credentials() is None:
        pytest.skip("no AWS credentials configured")
    return env


def test_quickstart_on_real_aws(real_env: dict[str, str]) -> None:
    region = real_env.get("AWS_REGION") or real_env.get("AWS_DEFAULT_REGION") or "us-east-1"

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=real_env, capture_output=True, text=True, timeout=1800)

    setup = run(sys.executable, "-m", "starburst_executor.cli", "setup", "--region", region)
    assert setup.returncode == 0, setup.stderr
    image = run(sys.executable, "-m", "starburst_executor.cli", "image", "build")
    assert image.returncode == 0, image.stderr  # needs a local Docker engine
    doctor = run(sys.executable, "-m", "starburst_executor.cli", "doctor")
    assert doctor.returncode == 0, doctor.stdout  # image pushed, permissions in place
    job = run(sys.executable, str(EXAMPLE), "--workers", "2", "--tasks", "10")
    assert job.returncode == 0, job.stderr
    assert "pi ~= 3.1" in job.stdout
    assert "Estimated cost" in job.stderr
