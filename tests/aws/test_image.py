"""The worker image: environment capture, worker/Dockerfile and the build context,
build-and-push against moto's ECR, the wheel's package data, and a session's code shipped as
a zip.

The build-and-push tests here use a fake ``docker`` that records its command lines: they
prove which commands run in which order with which arguments (login on stdin, --platform,
BASE_IMAGE, the digest read back from ``docker push``), NOT that the image builds or starts.
That is proven with real Docker in tests/aws/test_container_image.py and by
:func:`test_an_installed_wheel_builds_a_working_image` below."""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from starburst_executor import code_files
from starburst_executor.aws import image
from starburst_executor.aws.client import Aws
from starburst_executor.aws.image import (
    ENTRYPOINT,
    Environment,
    WorkerImage,
    build_and_push,
    capture_environment,
    ecr_registry,
)
from starburst_executor.code_files import install_code, pack_code
from starburst_executor.errors import AwsNotSetUpError, ImageBuildError

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/starburst-worker"
MINOR = f"{sys.version_info.major}.{sys.version_info.minor}"


# --------------------------------------------------------------------------- environment


def test_capture_of_installed_distributions_is_deterministic() -> None:
    first, second = capture_environment(), capture_environment()
    assert first == second and first.digest == second.digest
    assert re.fullmatch(r"[0-9a-f]{12}", first.digest)
    assert first.tag == f"py{MINOR}-{first.digest}"
    assert first.python == ".".join(map(str, sys.version_info[:3]))
    assert first.source == "installed distributions"
    names = [
        re.sub(r"[-_.]+", "-", re.split(r"==| @ ", line)[0]).lower() for line in first.requirements
    ]
    assert names == sorted(names)
    assert "boto3" in names and "starburst-executor" not in names
    assert not {"pip", "setuptools", "wheel"} & set(names)  # the base image brings its own
    skipped = {line.split(" ", 1)[0].lower(): line for line in first.skipped}
    for tool in ("pip", "setuptools"):
        assert skipped[tool].endswith("(packaging tool: the base image brings its own)")
    pinned = dict(line.split("==", 1) for line in first.requirements if "==" in line)
    assert pinned["boto3"] == importlib.metadata.version("boto3")


def test_capture_excludes_named_distributions() -> None:
    env = capture_environment(exclude=["MOTO"])
    assert not any(line.lower().startswith("moto") for line in env.requirements)


def test_requirements_file_digest_follows_requirements_not_formatting(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.1.0\npandas==2.2.3\n")
    base = capture_environment(reqs)
    assert base.requirements == ("numpy==2.1.0", "pandas==2.2.3")
    assert base.source == str(reqs)

    reqs.write_text("# pinned by pip-compile\nnumpy==2.1.0   # via pandas\n\npandas==2.2.3\n")
    assert capture_environment(reqs).digest == base.digest

    reqs.write_text("numpy==2.1.0\npandas==2.2.4\n")
    changed = capture_environment(reqs)
    assert changed.digest != base.digest and changed.tag != base.tag


def test_requirements_file_joins_hash_continuations(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(
        "numpy==2.1.0 \\\n    --hash=sha256:abc \\\n    --hash=sha256:def\nsix==1.16.0\n"
    )
    env = capture_environment(reqs, exclude=["six"])
    assert env.requirements == ("numpy==2.1.0 --hash=sha256:abc --hash=sha256:def",)


def test_requirements_the_build_cannot_follow_are_refused(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("numpy==2.1.0\n-r base.txt\n-e ./mylib\n")
    with pytest.raises(ValueError, match=r"-r base\.txt, -e \./mylib"):
        capture_environment(reqs)


def test_digest_ignores_the_patch_version_and_follows_the_minor() -> None:
    env = Environment(
        python="3.11.7",
        requirements=("a==1",),
        source="x",
        starburst_version="0.1.0",
        package_digest="p",
    )
    patched = Environment(
        python="3.11.9",
        requirements=("a==1",),
        source="y",
        starburst_version="0.1.0",
        package_digest="p",
    )
    assert patched.digest == env.digest
    newer = Environment(
        python="3.12.1",
        requirements=("a==1",),
        source="x",
        starburst_version="0.1.0",
        package_digest="p",
    )
    assert newer.digest != env.digest and newer.tag.startswith("py3.12-")


def write_dist(site_dir: Path, name: str, version: str, tag: str) -> None:
    info = site_dir / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")


def test_capture_skips_packages_for_other_platforms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site_dir = tmp_path / "site"
    write_dist(site_dir, "pywin32", "306", "cp311-cp311-win_amd64")
    write_dist(site_dir, "macthing", "1.0", "cp311-cp311-macosx_11_0_arm64")
    write_dist(site_dir, "pyobjc-core", "10.0", "py3-none-any")
    write_dist(site_dir, "linuxthing", "1.0", "cp311-cp311-manylinux_2_17_x86_64")
    monkeypatch.setattr(sys, "path", [str(site_dir), *sys.path])
    env = capture_environment()
    assert "pywin32 (for Windows or macOS only)" in env.skipped
    assert "pyobjc-core (for Windows or macOS only)" in env.skipped
    assert "macthing (built for macosx only)" in env.skipped
    # (not in site-packages, so left out too, but for that reason, not its platform)
    assert "linuxthing (not in site-packages: ship it with code_files)" in env.skipped
    assert not any(line.startswith(("pywin32", "macthing", "pyobjc")) for line in env.requirements)


def test_requirements_file_drops_platform_only_lines_without_a_marker(tmp_path: Path) -> None:
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(
        "numpy==2.1.0\npywin32==306\nappnope==0.1.4 ; sys_platform == 'darwin'\npip==24.0\n"
    )
    env = capture_environment(reqs)
    # A marker lets pip decide in the image; a lock file's own pip pin is the user's choice.
    assert env.requirements == (
        "numpy==2.1.0",
        "appnope==0.1.4 ; sys_platform == 'darwin'",
        "pip==24.0",
    )
    assert env.skipped == ("pywin32 (for Windows or macOS only)",)


# --------------------------------------------------------------------------- worker/


def dockerfile_lines() -> list[str]:
    return (REPO_ROOT / "worker" / "Dockerfile").read_text().splitlines()


def test_the_one_dockerfile_is_worker_dockerfile() -> None:
    assert not (REPO_ROOT / "Dockerfile").exists()  # no second copy to keep equal
    assert image.worker_files().resolve() == (REPO_ROOT / "worker").resolve()
    lines = dockerfile_lines()
    assert lines[lines.index("ARG BASE_IMAGE=python:3.11-slim") + 1] == "FROM ${BASE_IMAGE}"
    assert f"ENTRYPOINT {json.dumps(list(ENTRYPOINT))}" in lines
    assert "CMD []" in lines  # a base image's CMD would be appended to the ENTRYPOINT
    entry = (REPO_ROOT / "worker" / "entrypoint.sh").read_text()
    assert 'exec python -m starburst_executor.worker "$@"' in entry


def test_the_dockerfile_runs_nothing_as_the_user_and_layers_requirements_first() -> None:
    lines = dockerfile_lines()
    assert [line for line in lines if line.startswith("USER ")] == ["USER starburst"]
    assert lines.index("USER starburst") > max(
        i for i, line in enumerate(lines) if line.startswith("RUN ")
    )  # no RUN as the user
    requirements_at = next(i for i, line in enumerate(lines) if "-r /tmp/starburst-build" in line)
    package_at = next(
        i for i, line in enumerate(lines) if "pip-install.sh /tmp/starburst-src" in line
    )
    assert requirements_at < package_at  # the requirements layer survives package edits
    # The environment label comes last: a new digest must not rebuild the layers above.
    assert lines[-1].startswith("LABEL io.starburst.environment=")


def test_the_build_context_mirrors_a_checkout_with_the_ca_bundle(
    captured: Environment, tmp_path: Path
) -> None:
    bundle = tmp_path / "corp-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    dockerfile = image.write_context(captured, tmp_path / "ctx", ca_bundle=bundle)
    ctx = tmp_path / "ctx"
    assert dockerfile == ctx / "worker" / "Dockerfile"
    assert dockerfile.read_text() == (REPO_ROOT / "worker" / "Dockerfile").read_text()
    assert (ctx / "worker" / "requirements.txt").read_text() == "six==1.16.0\n"
    assert (ctx / "worker" / "ca-bundle.crt").read_bytes() == bundle.read_bytes()
    for script in ("entrypoint.sh", "pip-install.sh"):
        assert os.access(ctx / "worker" / script, os.X_OK)
    assert not (ctx / "starburst_executor" / "_worker_image").exists()


def test_the_host_ca_bundle_is_the_first_existing_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = tmp_path / "ssl.pem"
    second.write_text("x")
    monkeypatch.setenv("PIP_CERT", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(second))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/hostname")
    assert image.host_ca_bundle() == second
    for name in image.CA_BUNDLE_VARIABLES:
        monkeypatch.delenv(name)
    assert image.host_ca_bundle() is None


def test_ecr_registries_are_partition_aware() -> None:
    assert (
        ecr_registry("123456789012", "us-east-1") == "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    )
    cn = ecr_registry("123456789012", "cn-north-1")
    assert cn == "123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn"
    assert image._split_uri(f"{cn}/starburst-worker") == (cn, "starburst-worker")
    with pytest.raises(ValueError, match="not an ECR repository URI"):
        image._split_uri(f"{cn}/starburst-worker:tag")


def test_ecs_architectures() -> None:
    assert image.ecs_architecture("amd64") == "X86_64"
    assert image.ecs_architecture("linux/arm64") == "ARM64"
    assert image.ecs_architecture("linux/arm64/v8") == "ARM64"
    with pytest.raises(ImageBuildError, match="neither amd64 nor arm64"):
        image.ecs_architecture("s390x")


# --------------------------------------------------------------------------- build and push

FAKE_DOCKER = """\
#!{python}
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if "--password-stdin" in args else None
with open(os.environ["FAKE_DOCKER_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "stdin": stdin}}) + "\\n")
if args and args[0] == os.environ.get("FAKE_DOCKER_FAIL"):
    sys.stderr.write("step 1/9\\nERROR: failed to solve: no space left on device\\n")
    sys.exit(1)
if args[:2] == ["image", "inspect"]:
    print(os.environ.get("FAKE_DOCKER_ARCH", "amd64"))
if args[:1] == ["push"]:
    print(args[1].rsplit(":", 1)[1] + ": digest: sha256:" + "d" * 64 + " size: 1570")
"""


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``docker`` on PATH that records each call's argv (and stdin for login)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(FAKE_DOCKER.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "docker-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    return log


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture
def ecr(aws_env: str) -> Iterator[tuple[Aws, str]]:
    aws = Aws("us-east-1", retry_sleep=lambda _: None)
    repo = aws.call("ecr", "create_repository", repositoryName="starburst-worker")
    yield aws, repo["repository"]["repositoryUri"]


@pytest.fixture
def captured(tmp_path: Path) -> Environment:
    # (not named `env`: that is the autouse fixture isolating tests from the machine)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("six==1.16.0\n")
    return capture_environment(reqs)


@pytest.mark.slow
def test_build_and_push_logs_in_builds_and_pushes(
    ecr: tuple[Aws, str],
    captured: Environment,
    fake_docker: Path,
    tmp_path: Path,
) -> None:
    aws, repo_uri = ecr
    context = tmp_path / "context"
    messages: list[str] = []
    built = build_and_push(
        aws,
        repo_uri,
        captured,
        context_dir=context,
        notify=messages.append,
        base_image="example.com/python:3.11",
    )

    uri = f"{repo_uri}:{captured.tag}-amd64"
    assert built == WorkerImage(f"{repo_uri}@sha256:{'d' * 64}", uri, "X86_64")
    registry = repo_uri.split("/", 1)[0]
    token = aws.call("ecr", "get_authorization_token")["authorizationData"][0]
    password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)[1]
    assert calls(fake_docker) == [
        {
            "argv": ["login", "--username", "AWS", "--password-stdin", registry],
            "stdin": password,
        },  # the password travels on stdin, never in argv
        {
            "argv": [
                "build",
                "--platform",
                "linux/amd64",
                "--build-arg",
                "BASE_IMAGE=example.com/python:3.11",
                "--build-arg",
                f"STARBURST_ENVIRONMENT={captured.digest}",
                "-t",
                uri,
                "-f",
                str(context / "worker" / "Dockerfile"),
                str(context),
            ],
            "stdin": None,
        },
        {"argv": ["image", "inspect", "--format", "{{.Architecture}}", uri], "stdin": None},
        {"argv": ["push", uri], "stdin": None},
    ]
    assert (context / "worker" / "requirements.txt").read_text() == "six==1.16.0\n"
    assert (context / "pyproject.toml").is_file() and (context / "README.md").is_file()
    assert (context / "starburst_executor" / "worker" / "__main__.py").is_file()
    assert not list(context.rglob("__pycache__"))
    assert messages[-1] == f"pushing {uri}"


@pytest.mark.slow
def test_an_image_already_in_ecr_is_reused_without_docker(
    ecr: tuple[Aws, str],
    captured: Environment,
    fake_docker: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    aws, repo_uri = ecr
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 7023,
            "digest": "sha256:" + "a" * 64,
        },
        "layers": [],
    }
    put = aws.call(
        "ecr",
        "put_image",
        repositoryName="starburst-worker",
        imageManifest=json.dumps(manifest),
        imageTag=f"{captured.tag}-amd64",
    )
    digest = put["image"]["imageId"]["imageDigest"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # docker is not even needed
    messages: list[str] = []
    built = build_and_push(
        aws, repo_uri, captured, context_dir=tmp_path / "ctx", notify=messages.append
    )
    assert built == WorkerImage(
        f"{repo_uri}@{digest}", f"{repo_uri}:{captured.tag}-amd64", "X86_64"
    )
    assert messages == [f"environment unchanged: reusing {built.tag_uri}"]
    assert calls(fake_docker) == [] and not (tmp_path / "ctx").exists()


def offline() -> Aws:
    """An Aws client with no endpoint behind it: the tests using it must make no AWS call
    (``push=False`` builds locally only)."""
    return Aws("us-east-1", retry_sleep=lambda _: None)


def test_missing_docker_is_a_clear_error(
    captured: Environment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ImageBuildError) as caught:
        build_and_push(offline(), REPO_URI, captured, context_dir=tmp_path / "ctx", push=False)
    assert str(caught.value) == (
        "docker is not installed (or not on PATH): install Docker, or "
        "build the image elsewhere and pass image=..."
    )


def test_a_failed_docker_command_shows_its_stderr(
    captured: Environment,
    fake_docker: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_FAIL", "build")
    with pytest.raises(
        ImageBuildError,
        match=r"(?s)building the worker image failed \(exit "
        r"status 1\) running `.*docker build --platform linux/amd64 .*no space left on device",
    ):
        build_and_push(offline(), REPO_URI, captured, context_dir=tmp_path / "ctx", push=False)
    assert [c["argv"][0] for c in calls(fake_docker)] == ["build"]


def test_build_only_makes_no_aws_call(
    captured: Environment, fake_docker: Path, tmp_path: Path
) -> None:
    built = build_and_push(offline(), REPO_URI, captured, context_dir=tmp_path / "ctx", push=False)
    assert [c["argv"][0] for c in calls(fake_docker)] == ["build", "image"]
    assert built == WorkerImage(
        f"{REPO_URI}:{captured.tag}-amd64", f"{REPO_URI}:{captured.tag}-amd64", "X86_64"
    )


def test_an_arm64_build_is_tagged_and_recorded_arm64(
    captured: Environment,
    fake_docker: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_DOCKER_ARCH", "arm64")
    built = build_and_push(
        offline(),
        REPO_URI,
        captured,
        context_dir=tmp_path / "ctx",
        push=False,
        platform="linux/arm64",
    )
    assert built.architecture == "ARM64" and built.uri.endswith("-arm64")
    assert calls(fake_docker)[0]["argv"][1:3] == ["--platform", "linux/arm64"]


def test_a_missing_repository_points_at_setup(
    aws_env: str,
    captured: Environment,
    tmp_path: Path,
) -> None:
    aws = Aws("us-east-1", retry_sleep=lambda _: None)
    with pytest.raises(AwsNotSetUpError, match="starburst setup"):
        build_and_push(
            aws,
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/nope",
            captured,
            context_dir=tmp_path / "ctx",
        )


def test_a_source_dir_that_is_not_a_checkout_is_refused(
    captured: Environment, tmp_path: Path
) -> None:
    with pytest.raises(ImageBuildError, match="not a starburst-executor checkout"):
        image.write_context(captured, tmp_path / "ctx", source_dir=tmp_path)


# --------------------------------------------------------------------------- session code


@pytest.fixture
def restore_imports() -> Iterator[None]:
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def write_code(root: Path) -> list[Path]:
    (root / "sb_helper_mod.py").write_text("def double(x):\n    return 2 * x\n")
    package = root / "sb_helper_pkg"
    (package / "__pycache__").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub.py").write_text(
        "from importlib.resources import files\n"
        "def greeting():\n    return files(__package__).joinpath('data.txt').read_text()\n"
    )
    (package / "data.txt").write_text("hello from the zip")
    (package / "__pycache__" / "sub.cpython-311.pyc").write_bytes(b"junk")
    return [root / "sb_helper_mod.py", package]


def test_pack_and_install_code_round_trip(tmp_path: Path, restore_imports: None) -> None:
    source = tmp_path / "src"
    source.mkdir()
    paths = write_code(source)
    blob = pack_code(paths)
    assert pack_code(paths) == blob  # deterministic: same code, same blob
    assert sorted(zipfile.ZipFile(io.BytesIO(blob)).namelist()) == [
        "sb_helper_mod.py",
        "sb_helper_pkg/__init__.py",
        "sb_helper_pkg/data.txt",
        "sb_helper_pkg/sub.py",
    ]

    target = tmp_path / "worker"
    target.mkdir()
    directory = install_code(blob, target)
    assert sys.path[0] == directory and Path(directory).parent == target
    assert importlib.import_module("sb_helper_mod").double(21) == 42
    assert importlib.import_module("sb_helper_pkg.sub").greeting() == "hello from the zip"


def test_pack_code_refuses_what_it_cannot_ship(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a Python module"):
        pack_code([tmp_path / "notes.txt"])
    with pytest.raises(FileNotFoundError):
        pack_code([tmp_path / "missing.py"])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "m.py").write_text("")
    (tmp_path / "b" / "m.py").write_text("")
    with pytest.raises(ValueError, match="would both be 'm.py'"):
        pack_code([tmp_path / "a" / "m.py", tmp_path / "b" / "m.py"])
    (tmp_path / "big.py").write_bytes(os.urandom(4096))
    monkeypatch.setattr(code_files, "MAX_CODE_BYTES", 1024)
    with pytest.raises(ValueError, match=r"over 0\.000976562 MB zipped \(largest: big\.py"):
        pack_code([tmp_path / "big.py"])


def test_install_code_refuses_unsafe_zips(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../escape.py", "x = 1")
    with pytest.raises(ValueError, match="unsafe entry"):
        install_code(buffer.getvalue(), tmp_path)
    with pytest.raises(ValueError, match="not a zip"):
        install_code(b"not a zip", tmp_path)


def test_context_from_an_installed_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pip install starburst-executor` (no checkout): the image installs the installed files."""

    def no_checkout() -> Path:
        raise ImageBuildError("installed from a wheel")

    monkeypatch.setattr(image, "source_tree", no_checkout)
    env = capture_environment()
    ctx = tmp_path / "ctx"
    assert image.write_context(env, ctx) == ctx / "worker" / "Dockerfile"
    pyproject = (ctx / "pyproject.toml").read_text()
    assert 'name = "starburst-executor"' in pyproject
    assert "cloudpickle" in pyproject and "boto3" in pyproject  # its runtime dependencies
    assert "pytest" not in pyproject  # not the test extra
    assert (ctx / "starburst_executor" / "worker" / "__main__.py").is_file()
    assert (ctx / "worker" / "Dockerfile").is_file() and (
        ctx / "worker" / "entrypoint.sh"
    ).is_file()
    assert not list(ctx.rglob("__pycache__"))


WHEEL_SCRIPT = """
import json, sys
from pathlib import Path
from starburst_executor.aws import image
out = {"worker_files": str(image.worker_files()), "package": image.__file__}
try:
    image.source_tree()
except image.ImageBuildError:
    out["source_tree"] = None
reqs = Path(sys.argv[1]) / "requirements.txt"
reqs.write_text("")
built = image.build_image(image.capture_environment(reqs), sys.argv[2],
                          context_dir=Path(sys.argv[1]) / "ctx", base_image=sys.argv[3])
out["architecture"] = built.architecture
print(json.dumps(out))
"""


@pytest.mark.slow
def test_an_installed_wheel_builds_a_working_image(docker: str, tmp_path: Path) -> None:
    """`pip install starburst-executor` (no checkout): the wheel carries worker/ as package
    data, and the image built from the installed package starts the worker."""
    import subprocess

    from containers import base_image

    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "-q",
            "-w",
            str(wheels),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("starburst_executor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in (
        "Dockerfile",
        "entrypoint.sh",
        "pip-install.sh",
        "requirements.txt",
        "base/build-base-image",
        "base/Dockerfile",
    ):
        assert f"starburst_executor/_worker_image/{name}" in names
    venv = tmp_path / "venv"
    # The dependencies come from this interpreter; the package itself only from the wheel.
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    subprocess.run(
        # --ignore-installed: where this interpreter already has the package (CI installs it
        # with `pip install .`), pip would otherwise call it satisfied and install nothing.
        [str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q", str(wheel)],
        check=True,
        timeout=300,
    )
    tag = f"starburst-worker-test:wheel-{os.getpid()}"
    work = tmp_path / "work"
    work.mkdir()
    try:
        done = subprocess.run(
            [str(python), "-c", WHEEL_SCRIPT, str(work), tag, base_image()],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHONPATH": ""},
        )
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["package"].startswith(str(venv))  # the wheel's copy, not the checkout
        assert out["worker_files"].startswith(str(venv)) and out["source_tree"] is None
        assert out["architecture"] == "X86_64"
        usage = subprocess.run(
            [docker, "run", "--rm", tag, "--help"], capture_output=True, text=True, timeout=120
        )
        assert usage.returncode == 0 and "starburst_executor.worker" in usage.stdout
    finally:
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=120)


@pytest.mark.slow
def test_image_build_command_passes_base_image_and_platform(
    aws_env: str,
    fake_docker: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`starburst image build --no-push --base-image --platform` (fake docker: the command
    line, not the image); in a China region the registry is amazonaws.com.cn."""
    from starburst_executor.aws.settings import AwsSettings
    from starburst_executor.cli import main

    AwsSettings(region="cn-north-1", bucket="b").save()
    monkeypatch.setenv("FAKE_DOCKER_ARCH", "arm64")
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("six==1.16.0\npywin32==306\n")
    code = main(
        [
            "image",
            "build",
            "--no-push",
            "--requirements",
            str(reqs),
            "--base-image",
            "registry.example/python:3.11",
            "--platform",
            "linux/arm64",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "not in the image: pywin32 (for Windows or macOS only)" in out.err
    build: list[str] = next(c["argv"] for c in calls(fake_docker) if c["argv"][0] == "build")
    assert build[1:5] == [
        "--platform",
        "linux/arm64",
        "--build-arg",
        "BASE_IMAGE=registry.example/python:3.11",
    ]
    tag = build[build.index("-t") + 1]
    assert re.fullmatch(
        r"\d{12}\.dkr\.ecr\.cn-north-1\.amazonaws\.com\.cn/starburst-worker:"
        r"py3\.\d+-[0-9a-f]{12}-arm64",
        tag,
    )
    assert f"built {tag} (ARM64); not pushed" in out.out
    assert AwsSettings.load().image == ""  # a local build leaves the profile alone
