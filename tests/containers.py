"""Docker for the tests: the daemon, the offline Python base image, and the project's worker
image built from this checkout.

Stable API (the end-to-end tests and their ECS agent import it)::

    docker_available() -> bool     # a daemon answers `docker info`
    ensure_dockerd() -> None       # start `dockerd` when none answers (root, dockerd on PATH)
    require_docker() -> str        # the docker executable, or fail (CI) / skip (elsewhere)
    base_image() -> str            # "starburst-test-base:<recipe hash>", built once
    project_image() -> str         # "starburst-worker-test:<sources hash>", built once

Images are content-addressed by tag: an image whose tag exists is reused, so a warm run costs
one ``docker image inspect``. Builds hold an exclusive ``fcntl`` lock, so two pytest processes
never build the same image twice at once. In CI (``CI`` set) ``.ci/run`` guarantees a daemon
and a missing one FAILS the tests instead of skipping them.

This module imports pytest only inside :func:`require_docker`, so scripts may use the rest.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER_DIR = REPO_ROOT / "worker"
BASE_RECIPE = WORKER_DIR / "base"
BASE_REPOSITORY = "starburst-test-base"
PROJECT_REPOSITORY = "starburst-worker-test"
DOCKERD_START_TIMEOUT = 60.0
LOCK_PATH = Path(tempfile.gettempdir()) / "starburst-test-images.lock"

logger = logging.getLogger(__name__)

# Seconds each build took in this process, by image: the tests and the report print them.
BUILD_SECONDS: dict[str, float] = {}


def _docker() -> str | None:
    return shutil.which("docker")


def docker_available() -> bool:
    """True when the docker client is installed and a daemon answers it."""
    exe = _docker()
    if exe is None:
        return False
    try:
        done = subprocess.run(
            [exe, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def ensure_dockerd(timeout: float = DOCKERD_START_TIMEOUT) -> None:
    """Start ``dockerd`` in the background when no daemon answers, and wait for it.

    The same logic as ``tests/host-services`` (which also installs docker.io when missing), for
    developer machines. Needs root and ``dockerd`` on PATH; the daemon outlives the tests.

    Raises:
        RuntimeError: docker is not installed, or the daemon did not answer within ``timeout``
            seconds (its log's path is in the message).
    """
    if docker_available():
        return
    dockerd = shutil.which("dockerd")
    if _docker() is None or dockerd is None:
        raise RuntimeError(
            "docker is not installed: run tests/host-services as root (it installs Debian's docker.io "
            "and debootstrap and starts dockerd)"
        )
    if os.geteuid() != 0:
        raise RuntimeError("no docker daemon answers and only root may start dockerd: start it")
    log = Path(tempfile.gettempdir()) / "starburst-dockerd.log"
    with open(log, "ab") as out:
        subprocess.Popen(
            [dockerd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # not a child of pytest's process group: it stays up
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if docker_available():
            return
        time.sleep(0.5)  # polling the daemon's socket: no event to wait for
    raise RuntimeError(f"dockerd did not answer within {timeout:.0f} s: see {log}")


def require_docker() -> str:
    """The docker executable with a daemon answering it (started if need be).

    Fails the calling test when ``CI`` is set (``.ci/run`` must have provided docker), skips
    it elsewhere.
    """
    import pytest

    try:
        ensure_dockerd()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"docker is required in CI: {exc}")
        pytest.skip(f"docker unavailable: {exc}")
    exe = _docker()
    assert exe is not None
    return exe


def _image_exists(name: str) -> bool:
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.returncode == 0


def image_size(name: str) -> int:
    """The image's size in bytes (``docker image inspect --format '{{.Size}}'``)."""
    done = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", name],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout.strip())


def _hash_files(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


@contextmanager
def _build_lock() -> Iterator[None]:
    with open(LOCK_PATH, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def base_image() -> str:
    """The offline Python 3.11 base (``worker/base/build-base-image``: debootstrap'd Debian
    bookworm, a venv first on PATH), tagged with a hash of the recipe; built on first use.

    Raises:
        RuntimeError: the build failed (its output is in the message).
    """
    files = [p for p in BASE_RECIPE.rglob("*") if p.is_file()]
    name = f"{BASE_REPOSITORY}:{_hash_files(files, BASE_RECIPE)}"
    if _image_exists(name):
        return name
    with _build_lock():
        if _image_exists(name):  # another process built it while we waited
            return name
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed: run tests/host-services as root")
        started = time.monotonic()
        done = subprocess.run(
            [str(BASE_RECIPE / "build-base-image"), name],
            capture_output=True, text=True, check=False, timeout=900,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(
                f"building {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
            )
        BUILD_SECONDS[name] = time.monotonic() - started
        logger.info("built %s in %.1f s", name, BUILD_SECONDS[name])
    return name


def _project_sources() -> list[Path]:
    package = REPO_ROOT / "starburst_executor"
    files = [p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [p for p in WORKER_DIR.iterdir() if p.is_file()]
    return [*files, REPO_ROOT / "pyproject.toml"]


def project_image() -> str:
    """The project's worker image built from this checkout on :func:`base_image`, through
    the code path ``starburst image build`` uses (:func:`~starburst_executor.aws.image.
    build_image`, no push), with no client requirements; tagged with a hash of the package
    sources, ``worker/`` and the base image, and reused while they are unchanged.

    Raises:
        ImageBuildError: the build failed (the docker command and its stderr tail).
    """
    from starburst_executor.aws.image import build_image, capture_environment

    base = base_image()
    digest = hashlib.sha256(
        f"{_hash_files(_project_sources(), REPO_ROOT)}\0{base}\0{sys.version_info[:2]}".encode()
    ).hexdigest()[:12]
    name = f"{PROJECT_REPOSITORY}:{digest}"
    if _image_exists(name):
        return name
    with _build_lock():
        if _image_exists(name):
            return name
        with tempfile.TemporaryDirectory(prefix="starburst-test-image-") as scratch:
            requirements = Path(scratch) / "requirements.txt"
            requirements.write_text("")  # the package's own dependencies only
            env = capture_environment(requirements)
            started = time.monotonic()
            build_image(
                env, name, context_dir=Path(scratch) / "context", base_image=base,
                source_dir=REPO_ROOT,
            )  # fmt: skip
        BUILD_SECONDS[name] = time.monotonic() - started
        logger.info("built %s in %.1f s", name, BUILD_SECONDS[name])
    return name
