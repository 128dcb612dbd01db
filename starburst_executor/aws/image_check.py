"""Whether the worker image will start on ECS, read from the image's own config: its CPU
architecture (against what the task definitions request) and its ENTRYPOINT/CMD (the worker,
with no arguments added). ``starburst doctor`` runs it.

The config is read with ``docker image inspect`` when docker is available (pulling the
image by URI first when it is not local), else from ECR's registry API (BatchGetImage for the
manifest, the config blob's digest, GetDownloadUrlForLayer, then the blob itself). When
neither works the answer is "unknown", which doctor reports as a warning.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from typing import Any

from starburst_executor.aws.client import Aws
from starburst_executor.errors import AwsError

__all__ = [
    "WORKER_ENTRYPOINTS",
    "ImageConfig",
    "ecs_architecture",
    "problems",
    "read_config",
]

logger = logging.getLogger(__name__)

# An ENTRYPOINT that starts the worker: the image's entrypoint script (``worker/entrypoint.sh``
# installed as ``starburst-worker``, which execs ``python -m starburst_executor.worker``) or
# the module itself.
WORKER_ENTRYPOINTS = (("/usr/local/bin/starburst-worker",), ("starburst-worker",))
_WORKER_MODULE = ("-m", "starburst_executor.worker")

_DOCKER_TIMEOUT, _PULL_TIMEOUT, _FETCH_TIMEOUT = 30, 600, 30
_MANIFESTS = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
]
_ARCHITECTURES = {"amd64": "X86_64", "x86_64": "X86_64", "arm64": "ARM64", "aarch64": "ARM64"}


@dataclass(frozen=True)
class ImageConfig:
    """What decides how a container of the image starts.

    Attributes:
        architecture: Docker's name (``amd64``, ``arm64``).
        entrypoint: the ENTRYPOINT (empty: none).
        cmd: the CMD (empty: none).
        source: where it was read ("docker", "ECR").
    """

    architecture: str
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    source: str


def ecs_architecture(docker_architecture: str) -> str:
    """ECS's name (``X86_64`` / ``ARM64``) for Docker's, or the input upper-cased."""
    return _ARCHITECTURES.get(docker_architecture.lower(), docker_architecture.upper())


def _from_config(data: dict[str, Any], source: str) -> ImageConfig:
    config = data.get("Config") or data.get("config") or {}
    return ImageConfig(
        architecture=str(data.get("Architecture") or data.get("architecture") or ""),
        entrypoint=tuple(config.get("Entrypoint") or ()),
        cmd=tuple(config.get("Cmd") or ()),
        source=source,
    )


def _from_docker(image: str, docker: str) -> ImageConfig | None:
    if shutil.which(docker) is None:
        return None

    def inspect() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [docker, "image", "inspect", image],
            capture_output=True,
            text=True,
            timeout=_DOCKER_TIMEOUT,
            check=False,
        )

    try:
        answer = inspect()
        if answer.returncode != 0:
            pulled = subprocess.run(
                [docker, "pull", "--quiet", image],
                capture_output=True,
                text=True,
                timeout=_PULL_TIMEOUT,
                check=False,
            )
            if pulled.returncode != 0:
                logger.info("doctor: docker cannot pull %s: %s", image, pulled.stderr.strip())
                return None
            answer = inspect()
        if answer.returncode != 0:
            return None
        found = json.loads(answer.stdout)
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        logger.info("doctor: docker image inspect %s failed: %s", image, exc)
        return None
    if not isinstance(found, list) or not found:
        return None
    return _from_config(found[0], "docker")


def _from_ecr(aws: Aws, registry: str, repository: str, image_id: dict[str, str]) -> ImageConfig:
    def manifest(ids: dict[str, str]) -> dict[str, Any]:
        images = aws.call(
            "ecr",
            "batch_get_image",
            registryId=registry,
            repositoryName=repository,
            imageIds=[ids],
            acceptedMediaTypes=_MANIFESTS,
        )["images"]
        if not images:
            raise AwsError(f"ECR has no image {ids} in {repository}")
        return dict(json.loads(images[0]["imageManifest"]))

    found = manifest(image_id)
    if "manifests" in found:  # a multi-platform index: the linux/amd64 entry, else the first
        entries = found["manifests"]
        entry = next(
            (m for m in entries if m.get("platform", {}).get("architecture") == "amd64"),
            entries[0],
        )
        found = manifest({"imageDigest": entry["digest"]})
    url = aws.call(
        "ecr",
        "get_download_url_for_layer",
        registryId=registry,
        repositoryName=repository,
        layerDigest=found["config"]["digest"],
    )["downloadUrl"]
    # A pre-signed URL ECR hands out for this very blob.
    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT) as response:  # noqa: S310
        return _from_config(json.loads(response.read()), "ECR")


def read_config(
    aws: Aws,
    image: str,
    ecr: tuple[str, str, dict[str, str]] | None,
    docker: str = "docker",
) -> tuple[ImageConfig | None, str]:
    """The image's config, or None and why not.

    Args:
        aws: for the ECR registry API.
        image: the image URI.
        ecr: (registry id, repository, image id) when the image is in ECR.
        docker: the docker executable.
    """
    config = _from_docker(image, docker)
    if config is not None:
        return config, ""
    if ecr is None:
        return None, "docker cannot inspect it here, and it is not in ECR"
    try:
        return _from_ecr(aws, *ecr), ""
    except (AwsError, OSError, ValueError, KeyError) as exc:
        return None, f"neither docker nor ECR's registry API could read its config ({exc})"


def _runs_worker(entrypoint: tuple[str, ...]) -> bool:
    if entrypoint in WORKER_ENTRYPOINTS:
        return True
    # python -m starburst_executor.worker (any python: python3, /usr/bin/python3.11 ...)
    return (
        len(entrypoint) == 3
        and entrypoint[0].rsplit("/", 1)[-1].startswith("python")
        and entrypoint[1:] == _WORKER_MODULE
    )


def problems(config: ImageConfig, architecture: str) -> list[str]:
    """Why a container of the image would not start as a worker on ECS (none: it would).

    Args:
        config: the image's config.
        architecture: what the task definitions request (``X86_64`` / ``ARM64``).
    """
    found: list[str] = []
    arch = ecs_architecture(config.architecture)
    if arch != architecture:
        found.append(
            f"it is built for {config.architecture or 'an unknown architecture'} ({arch}) but "
            f"tasks run on {architecture}: every task would fail with 'exec format error'"
        )
    if not _runs_worker(config.entrypoint):
        found.append(
            f"its ENTRYPOINT {list(config.entrypoint)} does not start the worker (expected "
            f"{list(WORKER_ENTRYPOINTS[0])} or python -m starburst_executor.worker)"
        )
    if config.cmd:
        found.append(
            f"its CMD {list(config.cmd)} adds arguments to the worker, which exits with "
            "'unrecognized arguments'"
        )
    return found
