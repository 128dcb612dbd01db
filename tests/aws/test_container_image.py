"""The real worker image (built from this checkout by ``tests/containers.py``), run as ECS
would run it, and the worker's logging.

ECS semantics emulated by :func:`ecs_docker_run` (Docker's, which ECS passes through): a
container definition's ``entryPoint`` replaces the image's ENTRYPOINT, its ``command``
replaces the image's CMD and is appended to the ENTRYPOINT as arguments; ``environment``,
the RunTask overrides' environment and the resolved ``secrets`` become the container's
environment. The S3 store is SeaweedFS on 127.0.0.1 (``--network host``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from starburst_executor.aws import image
from starburst_executor.aws.client import Aws
from starburst_executor.aws.launcher import ECSLauncher
from starburst_executor.aws.options import EcsOptions
from starburst_executor.errors import ImageBuildError
from starburst_executor.protocol import Codec, SessionManifest, runtime_versions

SECRET_HEX = "ab" * 32
SECRET_ARN = "arn:aws:ssm:us-east-1:123456789012:parameter/starburst/secret-key"
BUCKET = "starburst-test"
RUN_TIMEOUT = 120


def offline_launcher(worker_image: str, session_id: str, store_url: str) -> ECSLauncher:
    """The launcher whose task definition the tests run (no AWS call: the secret is an ARN)."""
    options = EcsOptions(
        region="us-east-1", cluster="starburst", image=worker_image, subnets=("subnet-1",),
        security_group="sg-1", execution_role_arn="arn:aws:iam::123456789012:role/x",
        task_role_arn="arn:aws:iam::123456789012:role/t", secret_parameter=SECRET_ARN,
    )  # fmt: skip
    return ECSLauncher(Aws("us-east-1"), options, session_id, store_url)


def ecs_docker_run(
    docker: str,
    container: dict[str, Any],
    overrides: dict[str, str],
    secrets: dict[str, str],
    extra_env: dict[str, str],
) -> subprocess.CompletedProcess[str]:
    """Run one ECS container definition with Docker, as the ECS agent would (module doc)."""
    env = {e["name"]: e["value"] for e in container.get("environment", [])}
    env.update(overrides)
    env.update({s["name"]: secrets[s["valueFrom"]] for s in container.get("secrets", [])})
    env.update(extra_env)
    cmd = [docker, "run", "--rm", "--network", "host"]
    args: list[str] = []
    if container.get("entryPoint"):
        entry = list(container["entryPoint"])
        cmd += ["--entrypoint", entry[0]]
        args += entry[1:]
    args += list(container.get("command") or [])
    for name, value in env.items():
        cmd += ["-e", f"{name}={value}"]
    cmd += [container["image"], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


@pytest.fixture
def s3_session(seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, dict[str, str]]:
    """A real session (manifest and control record) in SeaweedFS whose workers exit after
    one idle second: ``(store URL, session id, environment a worker needs to reach it)``."""
    from starburst_executor._session import Session, new_session_id
    from starburst_executor.stores.s3 import S3Store

    prefix = f"container/{uuid.uuid4().hex}"
    store = S3Store(BUCKET, prefix=prefix, client=seaweed.client())
    codec = Codec(bytes.fromhex(SECRET_HEX))
    manifest = SessionManifest(
        session_id=new_session_id(), created=store.now(), versions=runtime_versions(),
        idle_timeout=1.0, store_url=store.url, backend="aws",
    )  # fmt: skip
    Session(store, manifest, codec).create()
    store.close()
    reach = {
        "AWS_ENDPOINT_URL": seaweed.endpoint_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    return f"s3://{BUCKET}/{prefix}", manifest.session_id, reach


def worker_records(seaweed: Any, store_url: str, session_id: str) -> list[dict[str, Any]]:
    prefix = store_url.removeprefix(f"s3://{BUCKET}/")
    listed = seaweed.client().list_objects_v2(
        Bucket=BUCKET, Prefix=f"{prefix}/sessions/{session_id}/workers/"
    )
    return [item for item in listed.get("Contents", [])]


# --------------------------------------------------------------------------- the image


@pytest.mark.slow
def test_the_image_entrypoint_is_the_worker_and_its_cmd_is_empty(
    docker: str, worker_image: str
) -> None:
    inspected = subprocess.run(
        [docker, "image", "inspect", "--format", "{{json .Config}}|{{.Architecture}}",
         worker_image], capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    config_json, architecture = inspected.rsplit("|", 1)
    config = json.loads(config_json)
    assert config["Entrypoint"] == list(image.ENTRYPOINT)
    assert not config.get("Cmd")  # nothing appended: the base image's CMD ["python3"] is reset
    assert config["User"] == "starburst"
    assert architecture == "amd64"
    assert config["Labels"]["io.starburst.environment"]
    usage = subprocess.run(
        [docker, "run", "--rm", worker_image, "--help"], capture_output=True, text=True,
        timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith("usage: python -m starburst_executor.worker")


@pytest.mark.slow
def test_the_build_ca_bundle_and_sources_are_gone_from_the_image(
    docker: str, worker_image: str
) -> None:
    # The host's CA bundle (PIP_CERT here) made pip work through this machine's TLS proxy;
    # the image keeps no copy of it, nor of the build's scratch files.
    assert image.host_ca_bundle() is not None
    listing = subprocess.run(
        [docker, "run", "--rm", "--entrypoint", "sh", worker_image, "-c",
         "ls -A /tmp; find / -xdev -name ca-bundle.crt 2>/dev/null; echo end"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True,
    ).stdout.split()  # fmt: skip
    assert listing == ["end"]


# --------------------------------------------------------------------------- as ECS runs it


@pytest.mark.slow
def test_a_container_started_from_the_task_definition_reaches_the_worker(
    docker: str, worker_image: str, seaweed: Any, s3_session: tuple[str, str, dict[str, str]]
) -> None:
    """The ENTRYPOINT/command bug (issue 7): with ``command`` in the task definition, Docker
    appended it to the image's ENTRYPOINT and every worker exited 2 ("unrecognized
    arguments"). This fails against a launcher spec that sets ``command`` or ``entryPoint``
    (aws/task_definition.py before the fix) and passes once the image's ENTRYPOINT is the
    contract."""
    store_url, session_id, reach = s3_session
    launcher = offline_launcher(worker_image, session_id, store_url)
    (container,) = launcher.task_definition_spec()["containerDefinitions"]
    overrides = {
        e["name"]: e["value"] for e in launcher._overrides()["containerOverrides"][0]["environment"]
    }
    done = ecs_docker_run(docker, container, overrides, {SECRET_ARN: SECRET_HEX}, reach)
    output = done.stdout + done.stderr
    assert "unrecognized arguments" not in output
    assert done.returncode == 0, output
    assert f"of session {session_id} starts" in output
    assert f"of session {session_id} exits: idle" in output
    assert "Found credentials" not in output  # botocore's INFO lines stay out of the logs
    assert len(worker_records(seaweed, store_url, session_id)) == 1


@pytest.mark.slow
def test_a_command_in_the_task_definition_is_appended_to_the_entrypoint(
    docker: str, worker_image: str, s3_session: tuple[str, str, dict[str, str]]
) -> None:
    """The emulation reproduces the real-account failure: the old task definition's
    ``command`` became arguments of the worker (what ECS did on every start)."""
    store_url, session_id, reach = s3_session
    container = {
        "image": worker_image,
        "command": ["python", "-m", "starburst_executor.worker"],
        "environment": [{"name": "STARBURST_STORE", "value": store_url},
                        {"name": "STARBURST_SESSION", "value": session_id}],
    }  # fmt: skip
    done = ecs_docker_run(docker, container, {}, {}, reach)
    assert done.returncode == 2
    assert "unrecognized arguments: python -m starburst_executor.worker" in done.stderr


@pytest.mark.slow
def test_an_image_of_the_wrong_architecture_is_refused(docker: str, tmp_path: Path) -> None:
    """This machine cannot emulate arm64: ``--platform linux/arm64`` on the local amd64 base
    must fail the build (Docker refuses the mismatched base at a later step, or the image
    comes out amd64 and build_image refuses it) instead of recording an amd64 image as
    ARM64. A real arm64 build needs qemu/binfmt or an arm64 machine; it is not tested here."""
    from containers import base_image

    reqs = tmp_path / "requirements.txt"
    reqs.write_text("")
    env = image.capture_environment(reqs)
    with pytest.raises(ImageBuildError) as caught:
        image.build_image(
            env, f"starburst-worker-test:arch-{uuid.uuid4().hex[:8]}",
            context_dir=tmp_path / "ctx", base_image=base_image(), platform="linux/arm64",
        )  # fmt: skip
    message = str(caught.value)
    assert "linux/arm64" in message and ("linux/amd64" in message or "X86_64" in message)


# --------------------------------------------------------------------------- worker logging


@pytest.mark.slow
def test_the_worker_logs_botocore_at_warning_and_itself_at_info(
    s3_session: tuple[str, str, dict[str, str]],
) -> None:
    """botocore logs "Found credentials in environment variables" at INFO when the worker
    opens the S3 store: a worker configuring INFO for every logger put that (and every
    connection) into each CloudWatch stream."""
    store_url, session_id, reach = s3_session
    env = {
        "PATH": "/usr/bin:/bin",
        "STARBURST_SECRET_KEY": SECRET_HEX,
        "AWS_DEFAULT_REGION": "us-east-1",
        **reach,
    }
    # Control: with the root logger at INFO, opening the store does log the line.
    control = subprocess.run(
        [sys.executable, "-c", "import logging, sys; logging.basicConfig(level='INFO'); "
         "from starburst_executor.stores import open_store; open_store(sys.argv[1]).list('x')",
         store_url],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=True,
    )  # fmt: skip
    assert "Found credentials in environment variables" in control.stderr
    done = subprocess.run(
        [sys.executable, "-m", "starburst_executor.worker", "--store", store_url,
         "--session", session_id],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f"of session {session_id} starts" in output
    assert "Found credentials" not in output and "botocore" not in output
